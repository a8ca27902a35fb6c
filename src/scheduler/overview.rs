//! What the status page shows of one shard beside the admin API's views:
//! its traffic over the last minute and hour, the queue by destination
//! domain and age (as Postfix's `qshape`), and the spool's and the
//! webhooks' state.
//!
//! Owns: [`Traffic`] (a ring of per-minute counts, bumped as messages
//! arrive and recipients' attempts end; one for the shard and one per
//! path, [`PathStats`]) and the views [`Overview`], [`PathRow`] and
//! [`DomainAges`].
//!
//! Must not: block the shard for long: the age table comes from the
//! running per-domain totals (`tally`), the next retries from the start
//! of the due-time index; nothing walks every queued message.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Scheduler;
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

impl Flow {
    /// What a recipient's outcome counts as.
    pub fn of(outcome: &crate::outbound::DeliveryOutcome) -> Flow {
        use crate::outbound::DeliveryOutcome::*;
        match outcome {
            Delivered { .. } => Flow::Delivered,
            Temporary { .. } => Flow::Deferred,
            Permanent { .. } => Flow::Bounced,
        }
    }
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

    /// Counts each of [`Flow`]'s `counts` (indexed by flow) at `now`.
    pub fn count_all(&self, now: u64, counts: [u64; 4]) {
        for (i, n) in counts.into_iter().enumerate() {
            if n > 0 {
                let flow = [Flow::In, Flow::Delivered, Flow::Deferred, Flow::Bounced][i];
                self.count(now, flow, n);
            }
        }
    }

    /// Delivered, deferred and bounced over the last `minutes` minutes
    /// (the current one included).
    pub fn recent(&self, now: u64, minutes: u64) -> [u64; 3] {
        let minute = now / 60;
        let mut out = [0; 3];
        for (m, counts) in self.minutes.borrow().iter() {
            if *m + minutes > minute && *m <= minute {
                for (o, n) in out.iter_mut().zip(&counts[1..]) {
                    *o += n;
                }
            }
        }
        out
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

/// What one path (an egress source to a site) did lately.
#[derive(Default)]
pub struct PathStats {
    pub traffic: Traffic,
    /// The last reply that was not a delivery, and when (Unix seconds).
    pub last_failure: Option<(u64, String)>,
}

/// Minutes of a path's recent traffic on the status page.
pub const RECENT_MINUTES: u64 = 10;

/// One path on the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathRow {
    /// The egress source ("default": the kernel's choice of address).
    pub source: String,
    pub site: String,
    pub rule: Option<String>,
    pub connections: usize,
    /// The path's connection limit, node-wide.
    pub max_connections: Option<usize>,
    pub waiting: usize,
    pub throttled_per_second: Option<f64>,
    /// Messages counted today, and the daily cap (a warm-up's) if any.
    pub sent_today: u64,
    pub max_per_day: Option<u64>,
    /// Delivered, deferred and bounced over the last [`RECENT_MINUTES`].
    pub recent: [u64; 3],
    pub last_failure: Option<String>,
    pub last_failure_at: u64,
    /// Its site, source or the path itself suspended: which.
    pub held: Option<String>,
    /// The earliest retry due for mail waiting for its site (Unix
    /// seconds).
    pub next_retry: Option<u64>,
}

/// Ages of the buckets of the age table, in minutes (qshape's).
pub const AGE_BUCKETS: [u64; 9] = [0, 5, 10, 20, 40, 80, 160, 320, 640];

/// One destination domain's queued messages (with pending recipients
/// there) by age, as qshape counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAges {
    pub domain: String,
    pub total: usize,
    /// Messages at least `AGE_BUCKETS[i]` minutes old (and younger than
    /// the next bucket).
    pub buckets: [usize; 9],
}

/// One shard's part of the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub traffic: TrafficSums,
    /// The top domains by pending recipients (at most `top` of this
    /// shard's).
    pub ages: Vec<DomainAges>,
    /// Every path with a gate or recent traffic.
    pub paths: Vec<PathRow>,
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
        let st = self.state.borrow();
        // From the running totals: O(domains x distinct acceptance
        // times), never a walk over a million messages.
        let mut ages: Vec<DomainAges> = st
            .tallies
            .iter()
            .map(|(domain, t)| DomainAges {
                domain: domain.clone(),
                total: t.messages,
                buckets: t.by_age(now, &AGE_BUCKETS),
            })
            .collect();
        let next_retry = next_retry_by_site(&st);
        drop(st);
        ages.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
        ages.truncate(top);
        Overview {
            traffic: self.traffic.sums(now),
            paths: self.path_rows(now, &next_retry),
            ages,
            webhook_backlog: self.outbox.backlog(),
            spool_free_bytes: self.spool.free_bytes().unwrap_or(0),
            spool_reserve_bytes: self.cfg.spool.min_free_bytes,
        }
    }
}

/// Deferred messages looked at, at most, for the next retry of each
/// site: the due-time index is walked from the earliest, so the first
/// ones found are the answers.
const NEXT_RETRY_SCAN: usize = 10_000;

/// The earliest retry due per site (by the site of each recipient's last
/// attempt), from the start of the due-time index.
fn next_retry_by_site(st: &super::state::State) -> HashMap<String, u64> {
    let mut found: HashMap<String, u64> = HashMap::new();
    for (due, id) in st.deferred.iter().take(NEXT_RETRY_SCAN) {
        let Some(entry) = st.messages.get(id) else {
            continue;
        };
        for r in &entry.env.recipients {
            if let (RecipientStatus::Pending, Some(site)) = (r.status, &r.site)
                && !found.contains_key(&**site)
            {
                found.insert(site.to_string(), *due);
            }
        }
    }
    found
}

impl Scheduler {
    /// Counts a recipient's attempt on its path (the status page's rows).
    /// Counts one attempt's recipients (`counts`, indexed by [`Flow`]) on
    /// its path, with the attempt's last failure reply, if any.
    pub(super) fn count_on_path(
        &self,
        path: &super::gate::PathKey,
        counts: [u64; 4],
        failure: Option<&str>,
    ) {
        let now = self.clock.now();
        let mut paths = self.path_stats.borrow_mut();
        if !paths.contains_key(path) {
            paths.insert(path.clone(), PathStats::default());
        }
        let stats = paths.get_mut(path).expect("just made sure");
        stats.traffic.count_all(now, counts);
        if let Some(reply) = failure {
            stats.last_failure = Some((now, reply.to_string()));
        }
    }

    fn path_rows(&self, now: u64, next_retry: &HashMap<String, u64>) -> Vec<PathRow> {
        use super::state::Hold;
        let st = self.state.borrow();
        let gates = self.gates.borrow();
        let stats = self.path_stats.borrow();
        let instant = std::time::Instant::now();
        let mut keys: Vec<&super::gate::PathKey> = gates.iter().map(|(k, _)| k).collect();
        keys.extend(stats.keys().filter(|k| !gates.iter().any(|(g, _)| g == *k)));
        keys.into_iter()
            .map(|key| {
                let source = key.source.clone().unwrap_or_else(|| "default".into());
                let gate = gates.iter().find(|(k, _)| *k == key).map(|(_, g)| g);
                let stat = stats.get(key);
                let held = [
                    (Hold::Site, key.site.clone(), "site suspended"),
                    (Hold::Source, source.clone(), "source suspended"),
                    (
                        Hold::Path,
                        format!("{source}|{}", key.site),
                        "path suspended",
                    ),
                ]
                .into_iter()
                .find(|(kind, name, _)| st.is_held(*kind, name))
                .map(|(_, _, why)| why.to_string());
                PathRow {
                    source,
                    site: key.site.clone(),
                    rule: gate.and_then(|g| g.rule.clone()),
                    connections: gate.map_or(0, |g| g.in_use()),
                    max_connections: gate.and_then(|g| g.limits()).map(|l| l.max_connections),
                    waiting: gate.map_or(0, |g| g.waiting()),
                    throttled_per_second: gates.throttled_rate(key, instant),
                    sent_today: gates.sent_today(key, now),
                    max_per_day: gate
                        .and_then(|g| g.limits())
                        .and_then(|l| l.max_messages_per_day),
                    recent: stat.map_or([0; 3], |s| s.traffic.recent(now, RECENT_MINUTES)),
                    last_failure: stat.and_then(|s| s.last_failure.as_ref().map(|f| f.1.clone())),
                    last_failure_at: stat
                        .and_then(|s| s.last_failure.as_ref())
                        .map_or(0, |f| f.0),
                    held,
                    next_retry: next_retry.get(&key.site).copied(),
                }
            })
            .collect()
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
