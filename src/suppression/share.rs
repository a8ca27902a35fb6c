//! The suppression list a fleet shares through Redis (`[cluster]`): one
//! task per node (on shard 0) that publishes this node's changes and
//! applies the others', every `cluster.sync_interval_ms`.
//!
//! Owns: [`run`]. In Redis the list is a hash of its entries (`field ->
//! entry JSON`, the field `scope SP address`; a removed entry keeps an
//! empty value, a tombstone) and a log of changes (a
//! stream, trimmed to about `cluster::LIST_LOG_MAX`), both written at
//! once by one script, with an epoch that Redis makes anew if it lost
//! them. Each round:
//!
//! 1. **Publish**: the outbox (changes made here, whoever made them: a
//!    bounce, a complaint, the admin API) goes to Redis in batches; a
//!    change leaves the outbox only once Redis took it, so a change made
//!    while Redis was unreachable (or before a crash) goes out later.
//! 2. **Catch up**: the log after this node's place, applied in log
//!    order (this node's own changes too, so that every node ends with
//!    the state the log's order gives, even when two changed one entry
//!    at once). The place (epoch, id) is stored after the changes.
//! 3. **Read the whole list** instead, when the place means nothing,
//!    applying every entry and tombstone: no place yet (the first sync,
//!    which also publishes the entries this node had that the fleet
//!    has no word on: *union*), another epoch or a log behind the place
//!    (Redis lost its data, or this node lost its place in a crash:
//!    union again, so the fleet's list is rebuilt from the nodes'), or
//!    the log trimmed past the place (this node missed changes:
//!    *mirror*, removing entries the fleet has no word on, but not those
//!    waiting in the outbox). Tombstones are what keep a union from
//!    bringing back an entry removed while this node was away; only
//!    Redis losing its data loses them.
//!
//! Reception reads only the local list: a change reaches the other
//! nodes within a sync interval or two; while Redis is unreachable each
//! node keeps its own list and what it adds.
//!
//! May call: cluster (the Redis kit), the suppression list. Must not:
//! block the shard (each Redis call is bounded by `cluster.timeout_ms`).

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;

use super::{SuppressionError, SuppressionList, Unpublished};
use crate::cluster::{Cluster, ClusterError, ListChange, LogId};
use crate::shard::clock::Clock;
use crate::shard::stop::StopSignal;

/// The list's name in Redis.
const LIST: &str = "suppressions";
/// Changes per request.
const PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
enum ShareError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    List(#[from] SuppressionError),
}

/// How a whole read of the fleet's list meets this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// Keep this node's entries the fleet lacks, and publish them.
    Union,
    /// Remove them (unless they wait in the outbox).
    Mirror,
}

struct Share {
    list: Arc<SuppressionList>,
    cluster: Arc<Cluster>,
    clock: Clock,
    /// A round failed since the last that did (logged once).
    failing: Cell<bool>,
}

/// Shares `list` until `stop`.
pub async fn run(
    list: Arc<SuppressionList>,
    cluster: Arc<Cluster>,
    clock: Clock,
    stop: StopSignal,
) {
    let share = Share {
        list,
        cluster,
        clock,
        failing: Cell::new(false),
    };
    loop {
        // A round stops where it is when the node stops: each step it
        // made is stored, and the next start goes on from there.
        let go_on = futures_lite::future::or(
            async {
                share.tick().await;
                glommio::timer::sleep(share.cluster.sync_interval()).await;
                true
            },
            async {
                stop.wait().await;
                false
            },
        )
        .await;
        if !go_on {
            return;
        }
    }
}

impl Share {
    /// One round if Redis answers; a failure logged once until a round
    /// succeeds.
    async fn tick(&self) {
        if self.cluster.is_up() {
            match self.round().await {
                Ok(()) => self.failing.set(false),
                Err(e) if !self.failing.replace(true) => {
                    log::warn!("suppression list: not in step with the fleet yet: {e}");
                }
                Err(_) => {}
            }
        }
        ::metrics::gauge!(crate::metrics::CLUSTER_SUPPRESSION_UNPUBLISHED)
            .set(self.list.unpublished_len() as f64);
    }

    async fn round(&self) -> Result<(), ShareError> {
        self.publish().await?;
        self.catch_up().await
    }

    /// Sends the outbox to Redis.
    async fn publish(&self) -> Result<(), ShareError> {
        loop {
            let batch = self.list.unpublished(PAGE);
            if batch.is_empty() {
                return Ok(());
            }
            let seqs: Vec<u64> = batch.iter().map(|u| u.seq).collect();
            let changes = batch
                .into_iter()
                .map(|Unpublished { field, value, .. }| ListChange { field, value })
                .collect();
            self.cluster.publish_list(LIST, changes).await?;
            self.list.mark_published(&seqs)?;
            ::metrics::counter!(crate::metrics::CLUSTER_SUPPRESSION_CHANGES, "direction" => "published")
                .increment(seqs.len() as u64);
        }
    }

    /// Applies the log after this node's place (or reads the whole list
    /// when the place means nothing).
    async fn catch_up(&self) -> Result<(), ShareError> {
        let Some((epoch, place)) = self.list.sync_place() else {
            return self.resync(Merge::Union, "first sync").await;
        };
        let mut after = LogId::parse(&place).unwrap_or_default();
        loop {
            let read = self.cluster.read_list_log(LIST, after, PAGE).await?;
            if read.epoch != epoch || read.last < after {
                return self.resync(Merge::Union, "Redis lost the log").await;
            }
            if read.missed(after) {
                return self
                    .resync(Merge::Mirror, "the log was trimmed past this node's place")
                    .await;
            }
            let Some(&(last, _)) = read.entries.last() else {
                return Ok(());
            };
            let changes: Vec<(String, Option<String>)> = read
                .entries
                .into_iter()
                .map(|(_, c)| (c.field, c.value))
                .collect();
            let n = self.list.apply_shared(&changes)?;
            ::metrics::counter!(crate::metrics::CLUSTER_SUPPRESSION_CHANGES, "direction" => "applied")
                .increment(n as u64);
            self.list.set_sync_place(&epoch, &last.to_string())?;
            after = last;
            if changes.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Reads the fleet's whole list and meets this node's with it; the
    /// place becomes the log's end as it was before the read (changes
    /// logged during it are applied again next round: harmless).
    async fn resync(&self, merge: Merge, why: &str) -> Result<(), ShareError> {
        let head = self
            .cluster
            .read_list_log(LIST, LogId::default(), 0)
            .await?;
        let mut fleet = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, page) = self.cluster.scan_list(LIST, cursor, PAGE).await?;
            let changes: Vec<(String, Option<String>)> =
                page.into_iter().map(|c| (c.field, c.value)).collect();
            self.list.apply_shared(&changes)?;
            fleet.extend(changes.into_iter().map(|(f, _)| f));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let pending: HashSet<String> = self
            .list
            .unpublished(usize::MAX)
            .into_iter()
            .map(|u| u.field)
            .collect();
        let now = self.clock.now();
        let (mut republish, mut stale) = (Vec::new(), Vec::new());
        for (field, entry) in self.list.entries() {
            if fleet.contains(&field) || pending.contains(&field) {
                continue;
            }
            match merge {
                Merge::Union if entry.is_live(now) => republish.push(entry),
                Merge::Union => {}
                Merge::Mirror => stale.push((field, None)),
            }
        }
        self.list.republish(&republish)?;
        self.list.apply_shared(&stale)?;
        self.list
            .set_sync_place(&head.epoch, &head.last.to_string())?;
        let label = match merge {
            Merge::Union => "union",
            Merge::Mirror => "mirror",
        };
        ::metrics::counter!(crate::metrics::CLUSTER_SUPPRESSION_RESYNCS, "merge" => label)
            .increment(1);
        log::info!(
            "suppression list: read the fleet's whole list ({why}): {} entries; {} of this node's to publish, {} removed",
            fleet.len(),
            republish.len(),
            stale.len()
        );
        Ok(())
    }
}
