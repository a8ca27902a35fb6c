//! What the status page shows of one shard beside the admin API's views:
//! its traffic over the last minute and hour, the queue by destination
//! domain and age (as Postfix's `qshape`), and the spool's and the
//! webhooks' state.
//!
//! Owns: [`Traffic`] (a ring of per-minute counts, bumped as messages
//! arrive and recipients' attempts end) and the views [`Overview`] and
//! [`DomainAges`].
//!
//! Must not: block the shard for long: the age table walks the queue's
//! messages once, in memory; everything else is O(1).

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Scheduler;
use super::state::domain_of;
use crate::queue::RecipientStatus;

/// What [`Traffic`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Flow {
    /// A message accepted.
    In = 0,
    /// A recipient delivered.
    Delivered = 1,
    /// A recipient's attempt deferred.
    Deferred = 2,
    /// A recipient bounced.
    Bounced = 3,
}

/// Counts per minute for the last hour (a ring of 60 minutes).
#[derive(Default)]
pub struct Traffic {
    minutes: RefCell<Vec<(u64, [u64; 4])>>,
}

/// [`Flow`]'s counts over the last minute and the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSums {
    /// In, delivered, deferred, bounced.
    pub minute: [u64; 4],
    pub hour: [u64; 4],
}

impl TrafficSums {
    pub fn add(&mut self, other: TrafficSums) {
        for i in 0..4 {
            self.minute[i] += other.minute[i];
            self.hour[i] += other.hour[i];
        }
    }
}

impl Traffic {
    /// Counts `n` of `flow` at `now` (Unix seconds).
    pub fn count(&self, now: u64, flow: Flow, n: u64) {
        let minute = now / 60;
        let mut ring = self.minutes.borrow_mut();
        if ring.is_empty() {
            ring.resize(60, (0, [0; 4]));
        }
        let slot = &mut ring[(minute % 60) as usize];
        if slot.0 != minute {
            *slot = (minute, [0; 4]);
        }
        slot.1[flow as usize] += n;
    }

    /// The counts of the last 60 seconds' minute (the current one) and of
    /// the last 60 minutes.
    pub fn sums(&self, now: u64) -> TrafficSums {
        let minute = now / 60;
        let mut sums = TrafficSums::default();
        for (m, counts) in self.minutes.borrow().iter() {
            if *m + 60 <= minute || *m > minute {
                continue;
            }
            for (i, n) in counts.iter().enumerate() {
                sums.hour[i] += n;
                if *m == minute {
                    sums.minute[i] += n;
                }
            }
        }
        sums
    }
}

/// Ages of the buckets of the age table, in minutes (qshape's).
pub const AGE_BUCKETS: [u64; 9] = [0, 5, 10, 20, 40, 80, 160, 320, 640];

/// One destination domain's pending recipients by age of their message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAges {
    pub domain: String,
    pub total: usize,
    /// Recipients whose message is at least `AGE_BUCKETS[i]` minutes old
    /// (and younger than the next bucket).
    pub buckets: [usize; 9],
}

/// One shard's part of the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub traffic: TrafficSums,
    /// The top domains by pending recipients (at most `top` of this
    /// shard's).
    pub ages: Vec<DomainAges>,
    /// Webhook events waiting to be sent.
    pub webhook_backlog: u64,
    /// The spool's file system: free bytes and the reserve.
    pub spool_free_bytes: u64,
    pub spool_reserve_bytes: u64,
}

impl Scheduler {
    /// This shard's overview (`top`: domains in the age table).
    pub fn overview(&self, top: usize) -> Overview {
        let now = self.clock.now();
        let mut by_domain: HashMap<String, DomainAges> = HashMap::new();
        {
            let st = self.state.borrow();
            for entry in st.messages.values() {
                let age_min = now.saturating_sub(entry.env.created) / 60;
                let bucket = AGE_BUCKETS.iter().rposition(|&b| age_min >= b).unwrap_or(0);
                for r in &entry.env.recipients {
                    if r.status != RecipientStatus::Pending {
                        continue;
                    }
                    let d = by_domain.entry(domain_of(&r.address)).or_default();
                    d.total += 1;
                    d.buckets[bucket] += 1;
                }
            }
        }
        let mut ages: Vec<DomainAges> = by_domain
            .into_iter()
            .map(|(domain, a)| DomainAges { domain, ..a })
            .collect();
        ages.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
        ages.truncate(top);
        Overview {
            traffic: self.traffic.sums(now),
            ages,
            webhook_backlog: self.outbox.backlog(),
            spool_free_bytes: self.spool.free_bytes().unwrap_or(0),
            spool_reserve_bytes: self.cfg.spool.min_free_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_sums_the_current_minute_and_the_last_hour_only() {
        let t = Traffic::default();
        let t0 = 6_000_000;
        t.count(t0, Flow::In, 2);
        t.count(t0 + 30, Flow::Delivered, 1);
        t.count(t0 + 61 * 60, Flow::In, 5);
        let now = t0 + 61 * 60 + 10;
        let s = t.sums(now);
        // The first minute is more than an hour old now.
        assert_eq!(s.minute, [5, 0, 0, 0]);
        assert_eq!(s.hour, [5, 0, 0, 0]);
        let s = t.sums(t0 + 59);
        assert_eq!(s.hour, [2, 1, 0, 0]);
        // The ring slot of an old minute is reused, not added to.
        t.count(t0 + 60 * 60, Flow::Bounced, 1);
        assert_eq!(t.sums(t0 + 60 * 60).minute, [0, 0, 0, 1]);
    }
}
