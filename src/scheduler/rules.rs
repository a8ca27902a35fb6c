//! Administrative bounce rules: `queue bounce SELECTOR --reason R --for
//! 1h`. While a rule is in force, a new message it matches is refused at
//! reception (SMTP `550 5.7.1` with the reason, at RCPT when the rule
//! names only the envelope, else after DATA; injection 403), and a queued
//! one it matches (accepted before the rule, or caught between attempts)
//! is bounced without an attempt, with the reason in its DSN and Bounce
//! events. `queue resume --rule ID` lifts a rule; `queue summary` lists
//! them.
//!
//! Matching is per message, as the bulk actions' selector: `domain` and
//! `rcpt` ask for one (pending) recipient, every given criterion must
//! hold. A rule may name only what a message has when it arrives:
//! domain, sender, rcpt, pool, meta, priority (or `all`).
//!
//! Stored with the suspensions (`stored::StoredHolds`, key `bounce:` and
//! the rule as JSON, value its end), so a rule survives a restart and
//! goes to the fleet through Redis as a suspension does (`shared`): a
//! node that learns of a rule bounces its own matching queued messages.
//!
//! May call: `select` (the selector), `bulk` (the bounce), `operations`.
//! Must not: hold a `RefCell` borrow across an await.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::Scheduler;
use super::bulk::BulkAction;
use super::select::{Compiled, Selector};
use crate::history::Lookup;
use crate::history::lookup::LookupKind;
use crate::queue::{Envelope, MessageId, SpoolError};

/// The stored key of a rule starts with this (a domain suspension's key
/// is a domain name, which has no colon).
const KEY_PREFIX: &str = "bounce:";
/// A reason's length at most (it goes into SMTP replies and DSNs).
pub const MAX_REASON: usize = 200;
/// Messages a node bounces per step when it learns of a rule.
const SWEEP_STEP: usize = 1_000;

/// What a rule is made of, as the API takes it and as it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub selector: Selector,
    /// Why: in the refusals' replies, the DSNs and the Bounce events.
    pub reason: String,
}

/// A rule in force on a shard.
#[derive(Debug, Clone)]
pub struct BounceRule {
    /// Its stored key (`bounce:` and the spec as JSON).
    pub key: String,
    pub spec: RuleSpec,
    sel: Compiled,
    /// When it ends (Unix seconds), if it does.
    pub until: Option<u64>,
}

/// A rule as `queue summary` and `GET /queue/bounce-rules` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSummary {
    /// Short and stable: what `queue resume --rule` takes.
    pub id: String,
    pub selector: Selector,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl RuleSpec {
    /// Checks the rule; Err says what is wrong.
    pub fn check(&self) -> Result<Compiled, String> {
        let s = &self.selector;
        for (name, given) in [
            ("source", s.source.is_some()),
            ("site", s.site.is_some()),
            ("older_than", s.older_than_secs.is_some()),
            ("state", s.state.is_some()),
        ] {
            if given {
                return Err(format!(
                    "{name}: a rule catching new mail may name only what a message has when it arrives (domain, sender, rcpt, pool, meta, priority)"
                ));
            }
        }
        check_reason(&self.reason)?;
        s.compile()
    }

    /// The key it is stored and published under.
    pub fn key(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{KEY_PREFIX}{json}")
    }
}

/// A reason fit for an SMTP reply: one line of printable text.
pub fn check_reason(reason: &str) -> Result<(), String> {
    match reason.trim().is_empty()
        || reason.len() > MAX_REASON
        || reason.chars().any(char::is_control)
    {
        true => Err(format!(
            "reason: one line of 1 to {MAX_REASON} bytes, no control characters"
        )),
        false => Ok(()),
    }
}

/// Whether a stored or published hold key is a rule's.
pub fn is_rule_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// The short id of the rule stored under `key` (16 hex digits).
pub fn rule_id(key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

impl BounceRule {
    /// The rule stored under `key`; None (logged) if it cannot be read.
    pub fn of_key(key: &str, until: Option<u64>) -> Option<BounceRule> {
        let spec: RuleSpec = match serde_json::from_str(key.strip_prefix(KEY_PREFIX)?) {
            Ok(spec) => spec,
            Err(e) => {
                log::warn!("a stored bounce rule that cannot be read is ignored ({e}): {key}");
                return None;
            }
        };
        let sel = spec.check().ok()?;
        Some(BounceRule {
            key: key.to_string(),
            spec,
            sel,
            until,
        })
    }

    pub fn summary(&self) -> RuleSummary {
        RuleSummary {
            id: rule_id(&self.key),
            selector: self.spec.selector.clone(),
            reason: self.spec.reason.clone(),
            until: self.until,
        }
    }

    fn in_force(&self, now: u64) -> bool {
        self.until.is_none_or(|u| u > now)
    }

    /// Whether it names only the envelope (sender, recipient, domain), so
    /// a recipient can be refused at RCPT.
    fn envelope_only(&self) -> bool {
        let s = &self.spec.selector;
        s.pool.is_none() && s.meta.is_none() && s.priority.is_none() && !s.all
    }

    /// Whether mail from `sender` to `rcpt` matches (an envelope-only
    /// rule).
    fn matches_rcpt(&self, sender: &str, rcpt: &str) -> bool {
        let s = &self.spec.selector;
        let same = |kind, want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| {
                Lookup::of(kind, w).is_some() && Lookup::of(kind, w) == Lookup::of(kind, have)
            })
        };
        let domain = crate::queue::domain_of(rcpt);
        same(LookupKind::Sender, &s.sender, sender)
            && same(LookupKind::Rcpt, &s.rcpt, rcpt)
            && s.domain
                .as_deref()
                .is_none_or(|d| d.eq_ignore_ascii_case(&domain))
    }
}

impl Scheduler {
    /// Puts a rule in force on this shard (stored first: it survives a
    /// restart; shard 0 tells the fleet), or renews it.
    pub async fn add_bounce_rule(
        &self,
        spec: &RuleSpec,
        secs: Option<u64>,
    ) -> Result<RuleSummary, String> {
        let key = spec.key();
        let until = secs.map(|s| self.clock.now().saturating_add(s));
        let rule = BounceRule::of_key(&key, until).ok_or("the rule does not check")?;
        self.holds
            .set(&key, Some(until))
            .await
            .map_err(|e| e.to_string())?;
        let summary = rule.summary();
        self.put_rule(rule);
        self.publish_hold(&key, Some(until)).await;
        Ok(summary)
    }

    /// Lifts the rule with this id here; Ok(false) if there is none.
    pub async fn lift_bounce_rule(&self, id: &str) -> Result<bool, SpoolError> {
        let key = self
            .bounce_rules
            .borrow()
            .iter()
            .find(|r| rule_id(&r.key) == id)
            .map(|r| r.key.clone());
        let Some(key) = key else {
            return Ok(false);
        };
        self.holds.set(&key, None).await?;
        self.bounce_rules.borrow_mut().retain(|r| r.key != key);
        self.publish_hold(&key, None).await;
        log::info!("shard {}: bounce rule {id} lifted", self.shard);
        Ok(true)
    }

    /// The rules in force here.
    pub fn bounce_rules(&self) -> Vec<RuleSummary> {
        let now = self.clock.now();
        let rules = self.bounce_rules.borrow();
        rules
            .iter()
            .filter(|r| r.in_force(now))
            .map(BounceRule::summary)
            .collect()
    }

    pub(super) fn put_rule(&self, rule: BounceRule) {
        let mut rules = self.bounce_rules.borrow_mut();
        rules.retain(|r| r.key != rule.key);
        rules.push(rule);
    }

    /// Rules that ended by `now`: forgotten here, in the spool and (shard
    /// 0) in the fleet's list.
    pub(super) async fn end_expired_rules(&self, now: u64) {
        let ended: Vec<String> = {
            let mut rules = self.bounce_rules.borrow_mut();
            let ended: Vec<String> = rules
                .iter()
                .filter(|r| !r.in_force(now))
                .map(|r| r.key.clone())
                .collect();
            rules.retain(|r| r.in_force(now));
            ended
        };
        for key in ended {
            log::info!("bounce rule {} ended", rule_id(&key));
            if let Err(e) = self.holds.set(&key, None).await {
                log::error!("ending bounce rule {}: {e}", rule_id(&key));
            }
            self.publish_hold(&key, None).await;
        }
    }

    /// The reason of the first rule in force that `matches`, if any (no
    /// clock read when there is no rule: the common case).
    fn reason_of_rule(&self, matches: impl Fn(&BounceRule) -> bool) -> Option<String> {
        let rules = self.bounce_rules.borrow();
        if rules.is_empty() {
            return None;
        }
        let now = self.clock.now();
        rules
            .iter()
            .find(|r| r.in_force(now) && matches(r))
            .map(|r| r.spec.reason.clone())
    }

    /// The reason of a rule refusing mail from `sender` to `rcpt` (rules
    /// naming only the envelope): the SMTP front end asks at RCPT.
    pub fn rule_refusing_rcpt(&self, sender: &str, rcpt: &str) -> Option<String> {
        self.reason_of_rule(|r| r.envelope_only() && r.matches_rcpt(sender, rcpt))
    }

    /// The reason of a rule refusing a new message, if one matches it
    /// (the door asks before storing it).
    pub fn rule_refusing(&self, env: &Envelope) -> Option<String> {
        self.reason_of_rule(|r| r.sel.matches_envelope(env))
    }

    /// If a rule matches queued message `id`, bounces it (in a task of
    /// its own) and says so: the message is then not to be attempted.
    pub(super) fn caught_by_rule(self: &Rc<Self>, id: MessageId) -> bool {
        if self.bounce_rules.borrow().is_empty() {
            return false;
        }
        let reason = {
            let st = self.state.borrow();
            let Some(entry) = st.messages.get(&id) else {
                return false;
            };
            match self.reason_of_rule(|r| r.sel.matches_envelope(&entry.env)) {
                Some(reason) => reason,
                None => return false,
            }
        };
        let me = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = me.bounce_message(id, Some(&reason)).await {
                // Back to waiting: its next due time tries again.
                me.spool_errors_logged.log(log::Level::Warn, || {
                    format!("{id}: not bounced by its bounce rule: {e}")
                });
                me.state.borrow_mut().defer(id);
            }
        });
        true
    }

    /// Takes the rules the fleet publishes (`published`: key -> until),
    /// bouncing what a new one matches here; lifts those that were
    /// published (`seen` last time) and no longer are.
    pub(super) async fn sync_rules(
        self: &Rc<Self>,
        published: &HashMap<String, Option<u64>>,
        seen: &HashSet<String>,
    ) {
        for (key, until) in published {
            let local = {
                let rules = self.bounce_rules.borrow();
                rules.iter().find(|r| &r.key == key).map(|r| r.until)
            };
            if local == Some(*until) {
                continue;
            }
            let Some(rule) = BounceRule::of_key(key, *until) else {
                continue;
            };
            if let Err(e) = self.holds.set(key, Some(*until)).await {
                log::error!("storing the cluster's bounce rule {}: {e}", rule_id(key));
                continue;
            }
            log::info!(
                "shard {}: bounce rule {} from the cluster",
                self.shard,
                rule_id(key)
            );
            self.sweep(&rule);
            self.put_rule(rule);
        }
        let ended: Vec<String> = {
            let rules = self.bounce_rules.borrow();
            rules
                .iter()
                .filter(|r| seen.contains(&r.key) && !published.contains_key(&r.key))
                .map(|r| r.key.clone())
                .collect()
        };
        for key in ended {
            if let Err(e) = self.holds.set(&key, None).await {
                log::error!("storing the end of bounce rule {}: {e}", rule_id(&key));
                continue;
            }
            self.bounce_rules.borrow_mut().retain(|r| r.key != key);
            log::info!(
                "shard {}: bounce rule {} lifted by the cluster",
                self.shard,
                rule_id(&key)
            );
        }
    }

    /// Bounces every queued message `rule` matches here, in steps (a rule
    /// this node just learned of from the fleet). Messages under an
    /// attempt are caught when it ends.
    pub(super) fn sweep(self: &Rc<Self>, rule: &BounceRule) {
        let (me, sel, reason) = (self.clone(), rule.sel.clone(), rule.spec.reason.clone());
        self.tasks.spawn(async move {
            loop {
                let r = me
                    .bulk(BulkAction::Bounce, &sel, SWEEP_STEP, Some(&reason))
                    .await;
                if r.left == 0 || r.done == 0 {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl FnOnce(&mut Selector)) -> RuleSpec {
        let mut selector = Selector::default();
        f(&mut selector);
        RuleSpec {
            selector,
            reason: "sent by mistake".into(),
        }
    }

    #[test]
    fn a_rule_names_only_what_a_new_message_has() {
        assert!(spec(|s| s.state = Some("deferred".into())).check().is_err());
        assert!(spec(|s| s.older_than_secs = Some(5)).check().is_err());
        assert!(
            spec(|s| s.meta = Some("campaign=spring".into()))
                .check()
                .is_ok()
        );
        let mut bad = spec(|s| s.domain = Some("x.example".into()));
        bad.reason = "two\r\nlines".into();
        assert!(bad.check().unwrap_err().starts_with("reason"));
        bad.reason = " ".into();
        assert!(bad.check().is_err());
    }

    #[test]
    fn a_rule_reads_back_from_its_key_with_a_stable_id() {
        let s = spec(|s| s.domain = Some("X.example".into()));
        let rule = BounceRule::of_key(&s.key(), Some(9)).unwrap();
        assert_eq!(rule.spec, s);
        assert_eq!(rule.summary().id, rule_id(&s.key()));
        assert_eq!(rule.summary().id.len(), 16);
        assert!(is_rule_key(&s.key()));
        assert!(!is_rule_key("example.com"));
        assert!(BounceRule::of_key("bounce:{not json", None).is_none());
    }

    #[test]
    fn an_envelope_rule_matches_recipients_with_the_domain_in_any_case() {
        let rule = |f: fn(&mut Selector)| BounceRule::of_key(&spec(f).key(), None).unwrap();
        let by_domain = rule(|s| s.domain = Some("Example.COM".into()));
        assert!(by_domain.envelope_only());
        assert!(by_domain.matches_rcpt("a@shop.example", "bob@example.com"));
        assert!(!by_domain.matches_rcpt("a@shop.example", "bob@example.org"));
        let by_rcpt = rule(|s| s.rcpt = Some("Bob@EXAMPLE.com".into()));
        assert!(by_rcpt.matches_rcpt("", "Bob@example.COM"));
        assert!(!by_rcpt.matches_rcpt("", "bob@example.com"));
        let by_sender = rule(|s| {
            s.sender = Some("news@shop.example".into());
            s.domain = Some("example.com".into());
        });
        assert!(by_sender.matches_rcpt("news@SHOP.example", "x@example.com"));
        assert!(!by_sender.matches_rcpt("other@shop.example", "x@example.com"));
        assert!(!rule(|s| s.meta = Some("c=1".into())).envelope_only());
    }
}
