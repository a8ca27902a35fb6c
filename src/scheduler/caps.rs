//! A path's hourly and daily caps (a shaping rule's
//! `max_messages_per_hour` and `_per_day`, a source's warm-up), held for
//! the node: each message on a capped path is counted by the path's book
//! (`book::LimitBook::take_count`, on its owner shard), so the cap is
//! reached whichever shards have the path's mail. The shard that sends
//! it also counts it in its gates and stores its own counts in its spool
//! (`stored::StoredPathCounts`); at start every shard tells each book
//! the counts it stored for that book's paths ([`Scheduler::seed_caps`]),
//! so the day's counts survive a restart, even one with another number
//! of shards.
//!
//! While a book does not answer (its shard stopping) the asker holds to
//! its 1/shards share of the cap (`gate::Gates::take_share`): never over
//! the cap, possibly under it.
//!
//! May call: `book` (through the book mesh), `gate`, `stored`, `metrics`.
//! Must not: hold a `RefCell` borrow across an await.

use std::time::{Duration, Instant};

use super::book::{CapTurn, Counts, owner_of};
use super::shared::{Authority, path_name};
use super::{Scheduler, gate, shaping, state};
use crate::outbound::egress::Source;

/// How long a cap waits for the books to be seeded (start-up) before
/// the shard holds to its share instead.
const SEEDING: Duration = Duration::from_secs(2);

impl Scheduler {
    /// Tells every shard's book the counts this shard stored for the
    /// paths that book keeps (none, for some: each book waits for every
    /// shard). Run once, at start.
    pub(super) async fn seed_caps(&self, stored: Vec<(gate::PathKey, Counts)>) {
        let shards = self.book.count();
        let mut by_owner: Vec<Vec<(String, Counts)>> = vec![Vec::new(); shards];
        for (path, counts) in stored {
            let name = path_name(&path);
            by_owner[owner_of(&name, shards)].push((name, counts));
        }
        for (owner, counts) in by_owner.into_iter().enumerate() {
            let told = self
                .book
                .ask(owner, move |b| async move { b.seed_counts(counts) })
                .await;
            if told.is_err() {
                log::warn!(
                    "shard {}: the book of shard {owner} did not take the stored path counts",
                    self.shard
                );
            }
        }
    }

    /// Counts one message against the hourly and daily caps of `path`
    /// (the shaping rule's, and its source's warm-up for today), if it
    /// has any; Err (a deferral, for when no source of the pool is left)
    /// when a cap is reached.
    pub(super) async fn within_caps(
        &self,
        source: Option<&Source>,
        path: &gate::PathKey,
        limits: &shaping::Limits,
        rule: Option<&shaping::Rule>,
    ) -> Result<(), state::Held> {
        let unix = self.clock.now();
        let warmup = source.and_then(|s| s.warmup_cap((unix / 86_400) as i64));
        let per_day = match (limits.max_messages_per_day, warmup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let per_hour = limits.max_messages_per_hour;
        if per_day.is_none() && per_hour.is_none() {
            return Ok(());
        }
        let counted = match self.take_count(path, per_hour, per_day, unix).await {
            Some(CapTurn::Taken) => Some(self.gates.borrow_mut().count_one(path, unix)),
            Some(_) => None,
            None => self
                .gates
                .borrow_mut()
                .take_share(path, per_hour, per_day, unix),
        };
        let Some(counts) = counted else {
            let labels = super::attempt::path_labels(path, rule.map(|r| r.name.as_str()));
            ::metrics::counter!(crate::metrics::PATH_CAPPED, &labels).increment(1);
            let from = path.source.as_deref().unwrap_or("the default address");
            let caps = match (per_hour, per_day) {
                (Some(h), Some(d)) => format!("{h} an hour, {d} a day"),
                (Some(h), None) => format!("{h} an hour"),
                (None, d) => format!("{} a day", d.unwrap_or(0)),
            };
            return Err(state::Held(format!(
                "{from} has reached its cap to this site ({caps}{}); waiting",
                if warmup.is_some() { ", warming up" } else { "" }
            )));
        };
        let source = path.source.as_deref().unwrap_or("");
        if let Err(e) = self.path_counts.set(source, &path.site, counts.to_array()) {
            self.spool_errors_logged
                .log(log::Level::Error, || format!("storing path counts: {e}"));
        }
        Ok(())
    }

    /// The book's answer for one message on `path`: Taken or Capped;
    /// None when the book did not answer, or was not seeded within
    /// `SEEDING`.
    async fn take_count(
        &self,
        path: &gate::PathKey,
        per_hour: Option<u64>,
        per_day: Option<u64>,
        unix: u64,
    ) -> Option<CapTurn> {
        let name = path_name(path);
        let shards = self.book.count();
        let since = Instant::now();
        loop {
            let n = name.clone();
            let turn = Authority::at_owner(&self.book, &name, move |b, _| {
                b.take_count(&n, per_hour, per_day, unix, shards)
            })
            .await;
            match turn {
                Ok(CapTurn::Unseeded) if since.elapsed() < SEEDING => {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                Ok(CapTurn::Unseeded) | Err(_) => return None,
                Ok(turn) => return Some(turn),
            }
        }
    }
}

/// Stored counts by path, as `seed_caps` takes them.
pub(super) fn stored_paths(
    stored: Vec<(String, String, [u64; 4])>,
) -> Vec<(gate::PathKey, Counts)> {
    stored
        .into_iter()
        .map(|(source, site, counts)| {
            let path = gate::PathKey {
                source: Some(source).filter(|s| !s.is_empty()),
                site,
            };
            (path, Counts::from_array(counts))
        })
        .collect()
}
