//! Running per-domain totals of one shard's queue.
//!
//! Owns: [`Tallies`], kept up to date as messages enter, change and leave
//! the schedule, so that a queue summary and the per-domain depth gauges
//! cost O(domains) instead of a walk over every queued message (a million
//! of them took ~0.5 s of the shard, stalling its sessions).
//!
//! The rule that keeps the totals right: a message's contribution is taken
//! away before its envelope or its deferred flag changes and added back
//! after (`scheduler::State` does this in one place). A message counts once
//! per domain where it has pending recipients, however many it has there.
//!
//! Must not: look at anything but the envelope it is given; it holds no
//! messages.

use std::collections::{BTreeMap, HashMap};

use crate::queue::{Envelope, RecipientStatus};

/// One destination domain's share of the queue (pending recipients only).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub messages: usize,
    pub recipients: usize,
    /// Of `messages`, those waiting in the due-time index.
    pub deferred: usize,
    /// Messages by acceptance time (Unix seconds), for the oldest one.
    created: BTreeMap<u64, usize>,
}

impl Tally {
    /// Acceptance time of the oldest message counted here.
    pub fn oldest_created(&self) -> Option<u64> {
        self.created.first_key_value().map(|(&t, _)| t)
    }

    fn is_empty(&self) -> bool {
        self.messages == 0 && self.recipients == 0
    }

    /// Its messages by age at `now` in the buckets that begin at
    /// `bounds` (minutes, ascending): one pass over the distinct
    /// acceptance times, not over the messages.
    pub fn by_age<const N: usize>(&self, now: u64, bounds: &[u64; N]) -> [usize; N] {
        let mut out = [0; N];
        for (&created, &n) in &self.created {
            let age_min = now.saturating_sub(created) / 60;
            let bucket = bounds.iter().rposition(|&b| age_min >= b).unwrap_or(0);
            out[bucket] += n;
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct Tallies {
    by_domain: HashMap<String, Tally>,
}

/// Pure: a message's pending recipients per domain, domains as written in
/// the first address (compared without case).
fn pending_by_domain(env: &Envelope) -> Vec<(&str, usize)> {
    let mut found: Vec<(&str, usize)> = Vec::new();
    for r in &env.recipients {
        if r.status != RecipientStatus::Pending {
            continue;
        }
        let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
        match found
            .iter_mut()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
        {
            Some((_, n)) => *n += 1,
            None => found.push((domain, 1)),
        }
    }
    found
}

impl Tallies {
    /// Counts a message in (`add`) or out, with its deferred flag.
    pub fn count(&mut self, env: &Envelope, deferred: bool, add: bool) {
        for (domain, n) in pending_by_domain(env) {
            let t = self.entry(domain);
            let d = usize::from(deferred);
            let created = t.created.entry(env.created).or_default();
            if add {
                t.messages += 1;
                t.recipients += n;
                t.deferred += d;
                *created += 1;
            } else {
                t.messages -= 1;
                t.recipients -= n;
                t.deferred -= d;
                *created -= 1;
                if *created == 0 {
                    t.created.remove(&env.created);
                }
                if t.is_empty() {
                    self.by_domain.remove(&domain.to_ascii_lowercase());
                }
            }
        }
    }

    /// A counted message entered (`true`) or left the due-time index.
    pub fn set_deferred(&mut self, env: &Envelope, deferred: bool) {
        for (domain, _) in pending_by_domain(env) {
            let t = self.entry(domain);
            match deferred {
                true => t.deferred += 1,
                false => t.deferred -= 1,
            }
        }
    }

    /// Domains with pending recipients, keyed lower-case.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tally)> {
        self.by_domain.iter()
    }

    /// Most addresses are lower-case already: look up before allocating.
    fn entry(&mut self, domain: &str) -> &mut Tally {
        let key = match domain.bytes().any(|b| b.is_ascii_uppercase()) {
            true => domain.to_ascii_lowercase(),
            false if self.by_domain.contains_key(domain) => {
                return self.by_domain.get_mut(domain).expect("just checked");
            }
            false => domain.to_string(),
        };
        self.by_domain.entry(key).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rcpts: &[&str], created: u64) -> Envelope {
        Envelope::new(
            "s@x.example".into(),
            rcpts.iter().map(|r| r.to_string()).collect(),
            created,
        )
    }

    #[test]
    fn ages_come_from_the_acceptance_times() {
        let mut t = Tallies::default();
        for created in [0, 0, 500, 3_000] {
            t.count(&env(&["a@a.example"], created), false, true);
        }
        let (_, a) = t.iter().next().unwrap();
        // At 3,600 s: ages 60, 60, 51 and 10 minutes.
        assert_eq!(a.by_age(3_600, &[0, 5, 10, 20, 40, 80]), [0, 0, 1, 0, 3, 0]);
    }

    #[test]
    fn counts_a_message_once_per_domain_folding_case() {
        let mut t = Tallies::default();
        t.count(
            &env(&["a@A.example", "b@a.EXAMPLE", "c@b.example"], 5),
            false,
            true,
        );
        t.count(&env(&["d@a.example"], 3), true, true);
        let a = &t.by_domain["a.example"];
        assert_eq!((a.messages, a.recipients, a.deferred), (2, 3, 1));
        assert_eq!(a.oldest_created(), Some(3));
        assert_eq!(t.by_domain["b.example"].messages, 1);
    }

    #[test]
    fn counting_out_after_a_change_leaves_nothing() {
        let mut t = Tallies::default();
        let mut e = env(&["a@a.example", "b@b.example"], 7);
        t.count(&e, false, true);
        // One recipient delivered: out with the old envelope, in with the new.
        t.count(&e, false, false);
        e.recipients[0].status = RecipientStatus::Delivered;
        t.count(&e, false, true);
        assert!(!t.by_domain.contains_key("a.example"));
        t.set_deferred(&e, true);
        assert_eq!(t.by_domain["b.example"].deferred, 1);
        t.count(&e, true, false);
        assert!(t.by_domain.is_empty());
    }
}
