//! Reply-driven back-off (`[backoff]`): which rule a receiver's reply
//! triggers, and the per-domain throttle that AIMD keeps.
//!
//! Owns: [`Rules`] (the configured rules, compiled), [`Throttle`] (a cut
//! rate that recovers by itself) and [`RateMeter`] (the rate a domain is
//! being sent to, the base a first cut halves). All of it is pure data
//! over the `Instant` its caller passes in, so the tests drive the time.
//!
//! May call: `config`, `classify`. Must not: touch the spool, sockets or
//! the scheduler's state; `Scheduler` applies what these decide.

use std::time::{Duration, Instant};

use crate::classify::BounceCategory;
use crate::config::BackoffRule;

/// The slowest a throttle goes, in messages per second per shard: a
/// receiver that keeps saying "slow down" still hears from us now and
/// then, so we learn when it stops.
pub const MIN_RATE: f64 = 0.1;

/// Cuts closer together than this count as one: the replies of the
/// attempts already under way when the first cut came say nothing new.
pub const CUT_HOLD: Duration = Duration::from_secs(1);

/// What a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackoffAction {
    /// Hold every delivery to the domain for `secs`.
    Suspend { secs: u64 },
    /// Multiply the domain's rate and connections by `factor`; recover
    /// linearly over `secs` after the last cut.
    Throttle { factor: f64, secs: u64 },
    /// Fail the domain's queued recipients (and any queued for it within
    /// `secs`) without trying.
    Bounce { secs: u64 },
}

impl BackoffAction {
    pub fn name(&self) -> &'static str {
        match self {
            BackoffAction::Suspend { .. } => "suspend",
            BackoffAction::Throttle { .. } => "throttle",
            BackoffAction::Bounce { .. } => "bounce",
        }
    }
}

/// The `[backoff]` rules, their expressions compiled once.
#[derive(Default)]
pub struct Rules {
    rules: Vec<(BackoffRule, Option<regex::Regex>)>,
}

impl Rules {
    /// Compiles `rules`; `config::BackoffConfig::check` has already
    /// refused the ones that do not compile.
    pub fn new(rules: &[BackoffRule]) -> Rules {
        let rules = rules
            .iter()
            .map(|r| {
                let re = r.text.as_ref().and_then(|t| {
                    regex::RegexBuilder::new(t)
                        .case_insensitive(true)
                        .build()
                        .ok()
                });
                (r.clone(), re)
            })
            .collect();
        Rules { rules }
    }

    /// The action of the first rule this failure fits, if any.
    pub fn action_for(&self, reply: &str, category: BounceCategory) -> Option<BackoffAction> {
        let (rule, _) = self.rules.iter().find(|(rule, re)| {
            rule.category
                .as_deref()
                .is_none_or(|c| c == category.as_str())
                && re.as_ref().is_none_or(|re| re.is_match(reply))
        })?;
        Some(match rule.action.as_str() {
            "throttle" => BackoffAction::Throttle {
                factor: rule.factor,
                secs: rule.secs,
            },
            "bounce" => BackoffAction::Bounce { secs: rule.secs },
            _ => BackoffAction::Suspend { secs: rule.secs },
        })
    }
}

/// A domain's cut rate: multiplicative decrease on each cut (at most one
/// per [`CUT_HOLD`]), additive (linear) recovery to the rate before the
/// first cut over `recover` after the last one, then gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// Messages per second before the first cut.
    base: f64,
    /// Messages per second right after the last cut.
    cut: f64,
    last_cut: Instant,
    recover: Duration,
}

impl Throttle {
    /// The first cut, from `base` messages per second.
    pub fn new(base: f64, factor: f64, recover: Duration, now: Instant) -> Throttle {
        let base = base.max(MIN_RATE);
        Throttle {
            base,
            cut: (base * factor).max(MIN_RATE),
            last_cut: now,
            recover,
        }
    }

    /// Another matching reply: cut again from where recovery has got to,
    /// unless the last cut was less than [`CUT_HOLD`] ago. Says whether it
    /// cut.
    pub fn cut(&mut self, factor: f64, recover: Duration, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_cut) < CUT_HOLD {
            return false;
        }
        let current = self.rate(now).unwrap_or(self.base);
        self.cut = (current * factor).max(MIN_RATE);
        self.last_cut = now;
        self.recover = recover;
        true
    }

    /// Messages per second allowed at `now`; None once fully recovered.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.last_cut);
        if elapsed >= self.recover {
            return None;
        }
        let done = elapsed.as_secs_f64() / self.recover.as_secs_f64();
        Some(self.cut + (self.base - self.cut) * done)
    }

    /// Connections allowed at `now` out of `limit`: the same share as the
    /// rate, at least one.
    pub fn connections(&self, limit: usize, now: Instant) -> usize {
        let share = self.rate(now).map_or(1.0, |r| r / self.base);
        ((limit as f64 * share).ceil() as usize).clamp(1, limit.max(1))
    }

    /// When the throttle ends by itself.
    pub fn ends(&self) -> Instant {
        self.last_cut + self.recover
    }
}

/// Messages started per second at one domain, over the last whole second
/// or the current part of one.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window: Option<Instant>,
    count: u32,
    last_rate: f64,
}

impl RateMeter {
    /// One message started at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.roll(now);
        self.count += 1;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            // A window with a long gap after it says less about now.
            self.last_rate = match elapsed < Duration::from_secs(2) {
                true => f64::from(self.count) / elapsed.as_secs_f64(),
                false => 0.0,
            };
            self.window = Some(now);
            self.count = 0;
        }
    }

    /// The rate at `now`: the last whole second's, or the current
    /// window's if that is already higher.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let start = self.window.unwrap_or(now);
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let current = match elapsed >= 0.1 {
            true => f64::from(self.count) / elapsed,
            false => 0.0,
        };
        self.last_rate.max(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(category: Option<&str>, text: Option<&str>, action: &str) -> BackoffRule {
        BackoffRule {
            category: category.map(str::to_string),
            text: text.map(str::to_string),
            action: action.to_string(),
            secs: 60,
            factor: 0.5,
        }
    }

    #[test]
    fn first_fitting_rule_wins() {
        let rules = Rules::new(&[
            rule(Some("RateLimited"), Some(r"\[TSS04\]"), "suspend"),
            rule(Some("RateLimited"), None, "throttle"),
            rule(None, Some("blocked using"), "bounce"),
        ]);
        let tss = "421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred";
        assert_eq!(
            rules.action_for(tss, BounceCategory::RateLimited),
            Some(BackoffAction::Suspend { secs: 60 })
        );
        assert_eq!(
            rules.action_for("421 4.7.28 rate limited", BounceCategory::RateLimited),
            Some(BackoffAction::Throttle {
                factor: 0.5,
                secs: 60
            })
        );
        assert_eq!(
            rules.action_for("554 BLOCKED USING zen", BounceCategory::SpamBlock),
            Some(BackoffAction::Bounce { secs: 60 }),
            "expressions ignore case"
        );
        assert_eq!(
            rules.action_for("450 mailbox busy", BounceCategory::TransientFailure),
            None
        );
    }

    #[test]
    fn throttle_cuts_multiplicatively_and_recovers_linearly() {
        let t0 = Instant::now();
        let recover = Duration::from_secs(10);
        let mut t = Throttle::new(100.0, 0.5, recover, t0);
        assert_eq!(t.rate(t0), Some(50.0));
        assert_eq!(t.connections(10, t0), 5);
        // Halfway through recovery: halfway back.
        let mid = t0 + Duration::from_secs(5);
        assert_eq!(t.rate(mid), Some(75.0));
        // A cut within the hold changes nothing.
        assert!(!t.cut(0.5, recover, t0 + Duration::from_millis(500)));
        assert_eq!(t.rate(t0), Some(50.0));
        // A later cut starts from where recovery got to.
        assert!(t.cut(0.5, recover, mid));
        assert_eq!(t.rate(mid), Some(37.5));
        assert_eq!(t.ends(), mid + recover);
        // Fully recovered: gone.
        assert_eq!(t.rate(mid + recover), None);
        assert_eq!(t.connections(10, mid + recover), 10);
    }

    #[test]
    fn throttle_never_goes_below_the_floor() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1.0, 0.1, Duration::from_secs(60), t0);
        for i in 1..20 {
            t.cut(
                0.1,
                Duration::from_secs(60),
                t0 + Duration::from_secs(i * 2),
            );
        }
        assert_eq!(t.rate(t0 + Duration::from_secs(38)), Some(MIN_RATE));
        assert_eq!(t.connections(20, t0 + Duration::from_secs(38)), 2);
    }

    #[test]
    fn meter_reports_the_recent_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..50 {
            m.tick(t0 + Duration::from_millis(i * 20));
        }
        let at = t0 + Duration::from_millis(1000);
        let r = m.rate(at);
        assert!((r - 50.0).abs() < 1.0, "{r}");
        // After a long silence the old rate no longer counts.
        assert_eq!(m.rate(t0 + Duration::from_secs(5)), 0.0);
    }
}
