//! What happened to messages that left the queue: one record per message
//! (its envelope, meta, and each recipient's outcome with the reply that
//! decided it), indexed by what an operator knows of it ([`lookup`]), kept
//! for `[history]`'s age and count, the oldest dropped first.
//!
//! Owns: [`History`] (one per shard, in a tree of its spool: written by
//! the shard's scheduler when a message leaves, read by `queue find` and
//! `queue trace` through the admin API) and the record, [`Finished`].
//!
//! Layout of the tree (keys sort as bytes; times are Unix seconds, big
//! endian, so keys sort by time):
//!
//! ```text
//!  "r" finished id                  -> the record (JSON)
//!  "i" id                           -> finished (where the record is)
//!  "x" tag value NUL finished id    -> ()  (one per key of the record)
//! ```
//!
//! A record and its index entries are one sled batch: a lookup never
//! finds half a record. Durable with the spool's next flush (a crash may
//! forget the last half second of history, never a message). Trimming
//! ([`History::trim`]) walks the records oldest first and removes each
//! with its entries, a bounded number per call, so it never stalls the
//! shard.
//!
//! May call: `queue` (the kept tree, ids and envelopes), `config`
//! (`[history]`).
//! Must not: decide outcomes (the scheduler tells it), or be read on the
//! hot path (lookups are the operator's).

pub mod lookup;

use std::cell::Cell;

use serde::{Deserialize, Serialize};

pub use lookup::{Lookup, LookupError, LookupKind};

use crate::queue::{Kept, KeptTree, MessageId, Spool, SpoolError};

/// How a recipient's part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Bounced,
    Expired,
    Deleted,
}

/// One recipient of a finished message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedRecipient {
    pub address: String,
    pub outcome: Outcome,
    pub attempts: u32,
    /// The reply that decided it: the remote server's (delivered,
    /// bounced), or ringpost's (expired, deleted, returned by the
    /// administrator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Bounced and expired: the bounce category of the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A message that left the queue, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub id: String,
    /// Empty for the null sender.
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::config::Priority>,
    pub size: u64,
    /// Unix seconds: accepted, and left the queue.
    pub created: u64,
    pub finished: u64,
    /// Delivery rounds of the message.
    pub attempts: u32,
    pub recipients: Vec<FinishedRecipient>,
}

impl Finished {
    /// The record of queued message `id` as it leaves at `finished`; each
    /// recipient's outcome, reply and category from `outcome_of` (the
    /// scheduler knows how it ended).
    pub fn of(
        id: MessageId,
        env: &crate::queue::Envelope,
        finished: u64,
        outcome_of: impl Fn(usize, &crate::queue::Recipient) -> FinishedRecipient,
    ) -> Finished {
        Finished {
            id: id.to_string(),
            sender: env.sender.clone(),
            message_id: env.message_id.clone(),
            idempotency_key: env.idempotency_key.clone(),
            meta: env.meta.clone(),
            pool: env.pool.clone(),
            priority: env.priority,
            size: env.size(),
            created: env.created,
            finished,
            attempts: env.attempts,
            recipients: env
                .recipients
                .iter()
                .enumerate()
                .map(|(i, r)| outcome_of(i, r))
                .collect(),
        }
    }

    /// The keys it is found by.
    pub fn keys(&self) -> Vec<Lookup> {
        let keyed = lookup::Keyed {
            sender: &self.sender,
            message_id: self.message_id.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
            meta: self.meta.as_ref(),
        };
        lookup::keys_of(keyed, self.recipients.iter().map(|r| r.address.as_str()))
    }
}

/// One shard's history (see the module header).
pub struct History {
    tree: Kept,
    max_age_secs: u64,
    /// This shard's share of `history.max_messages`.
    max_records: u64,
    records: Cell<u64>,
}

fn record_key(finished: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(b'r');
    k.extend_from_slice(&finished.to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn id_key(id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'i');
    k.extend_from_slice(id);
    k
}

fn index_key(lookup: &Lookup, finished: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = lookup.index_prefix();
    k.extend_from_slice(&finished.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// (finished, id) from the last 24 bytes of a record or index key.
fn time_and_id(key: &[u8]) -> Option<(u64, [u8; 16])> {
    let tail = key.len().checked_sub(24).map(|at| &key[at..])?;
    let finished = u64::from_be_bytes(tail[..8].try_into().ok()?);
    Some((finished, tail[8..].try_into().ok()?))
}

impl History {
    /// The history in `spool` (`shards`: how many share
    /// `history.max_messages`). Counts the records kept: blocking,
    /// start-up only.
    pub fn open(spool: &Spool, cfg: &crate::config::HistoryConfig, shards: usize) -> History {
        let tree = spool.kept(KeptTree::History);
        let records = tree.with_prefix(b"r").count() as u64;
        History {
            tree,
            max_age_secs: cfg.max_age_secs,
            max_records: cfg.max_messages.div_ceil(shards.max(1) as u64).max(1),
            records: Cell::new(records),
        }
    }

    /// Whether finished messages are written at all.
    pub fn is_on(&self) -> bool {
        self.max_age_secs > 0
    }

    /// Records kept.
    pub fn len(&self) -> u64 {
        self.records.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `rec` (a no-op when the history is off). `id` is the
    /// record's own.
    pub fn record(&self, id: MessageId, rec: &Finished) -> Result<(), SpoolError> {
        if !self.is_on() {
            return Ok(());
        }
        let id = id.as_bytes();
        let json = serde_json::to_vec(rec).expect("a record always serializes");
        let at = rec.finished.to_be_bytes();
        let mut writes: Vec<(Vec<u8>, Option<&[u8]>)> = vec![
            (record_key(rec.finished, id), Some(&json)),
            (id_key(id), Some(&at)),
        ];
        writes.extend(
            rec.keys()
                .iter()
                .map(|k| (index_key(k, rec.finished, id), Some(&[][..]))),
        );
        self.tree.write_all(writes)?;
        self.records.set(self.records.get() + 1);
        Ok(())
    }

    /// The records that `lookup` finds, finished at or after `since`,
    /// newest first, at most `limit`.
    pub fn find(&self, lookup: &Lookup, since: u64, limit: usize) -> Vec<Finished> {
        let mut found = Vec::new();
        for (key, _) in self.tree.with_prefix_descending(&lookup.index_prefix()) {
            if found.len() >= limit {
                break;
            }
            let Some((finished, id)) = time_and_id(&key) else {
                continue;
            };
            if finished < since {
                break;
            }
            // An entry whose record was trimmed by an older build's keys
            // is skipped.
            found.extend(self.read(finished, &id));
        }
        found
    }

    /// The record of message `id`, if it is kept.
    pub fn get(&self, id: MessageId) -> Option<Finished> {
        let id = id.as_bytes();
        let at = self.tree.get(id_key(id))?;
        let finished = u64::from_be_bytes(at.as_ref().try_into().ok()?);
        self.read(finished, id)
    }

    fn read(&self, finished: u64, id: &[u8; 16]) -> Option<Finished> {
        let json = self.tree.get(record_key(finished, id))?;
        serde_json::from_slice(&json).ok()
    }

    /// Drops the records older than `history.max_age_secs` and those over
    /// this shard's share of `history.max_messages`, oldest first, at most
    /// `budget` of them. How many were dropped.
    pub fn trim(&self, now: u64, budget: usize) -> Result<usize, SpoolError> {
        let cutoff = now.saturating_sub(self.max_age_secs);
        let mut dropped = 0;
        let mut writes: Vec<(Vec<u8>, Option<&[u8]>)> = Vec::new();
        for (key, json) in self.tree.with_prefix(b"r") {
            if dropped >= budget {
                break;
            }
            let Some((finished, id)) = time_and_id(&key) else {
                continue;
            };
            let over = self.records.get().saturating_sub(dropped as u64) > self.max_records;
            if finished >= cutoff && !over {
                break;
            }
            if let Ok(rec) = serde_json::from_slice::<Finished>(&json) {
                let keys = rec.keys();
                writes.extend(keys.iter().map(|k| (index_key(k, finished, &id), None)));
            }
            writes.push((id_key(&id), None));
            writes.push((key.to_vec(), None));
            dropped += 1;
        }
        if dropped > 0 {
            self.tree.write_all(writes)?;
            self.records
                .set(self.records.get().saturating_sub(dropped as u64));
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::queue::{Envelope, SpoolOptions};

    fn record(spool: &Spool, rcpt: &str, finished: u64) -> (MessageId, Finished) {
        let id = spool.new_id();
        let mut env = Envelope::new("app@shop.example".into(), vec![rcpt.into()], finished - 5);
        env.message_id = Some(format!("{id}@shop.example"));
        env.meta = Some(serde_json::json!({"campaign": "spring"}));
        let rec = Finished::of(id, &env, finished, |_, r| FinishedRecipient {
            address: r.address.clone(),
            outcome: Outcome::Delivered,
            attempts: 1,
            reply: Some("250 2.0.0 ok".into()),
            category: None,
        });
        (id, rec)
    }

    fn history(dir: &std::path::Path, cfg: &HistoryConfig) -> (Spool, History) {
        let spool = Spool::open(dir, 0, &SpoolOptions::default()).unwrap();
        let history = History::open(&spool, cfg, 1);
        (spool, history)
    }

    #[test]
    fn finds_by_every_key_newest_first_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, h) = history(dir.path(), &HistoryConfig::default());
        let (a, ra) = record(&spool, "Bob@Example.com", 1_000);
        let (b, rb) = record(&spool, "bob@example.com", 2_000);
        let (c, rc) = record(&spool, "Bob@example.COM", 3_000);
        for (id, r) in [(a, &ra), (b, &rb), (c, &rc)] {
            h.record(id, r).unwrap();
        }
        let bob = Lookup::parse("rcpt", "Bob@EXAMPLE.com").unwrap();
        let ids = |v: Vec<Finished>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
        assert_eq!(ids(h.find(&bob, 0, 10)), [c.to_string(), a.to_string()]);
        assert_eq!(ids(h.find(&bob, 2_000, 10)), [c.to_string()]);
        assert_eq!(ids(h.find(&bob, 0, 1)), [c.to_string()]);
        let campaign = Lookup::parse("meta", "campaign=spring").unwrap();
        assert_eq!(h.find(&campaign, 0, 10).len(), 3);
        let mid = Lookup::parse("message_id", &format!("<{b}@shop.example>")).unwrap();
        assert_eq!(ids(h.find(&mid, 0, 10)), [b.to_string()]);
        assert_eq!(h.get(b), Some(rb));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn trimming_drops_the_old_and_the_excess_with_their_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HistoryConfig {
            max_age_secs: 1_000,
            max_messages: 2,
        };
        let (spool, h) = history(dir.path(), &cfg);
        let mut ids = Vec::new();
        for t in [100, 5_000, 5_100, 5_200] {
            let (id, r) = record(&spool, "a@b.example", t);
            h.record(id, &r).unwrap();
            ids.push(id);
        }
        // 100 is too old; of the three left, one is over the count.
        assert_eq!(h.trim(5_300, 1).unwrap(), 1);
        assert_eq!(h.trim(5_300, 100).unwrap(), 1);
        assert_eq!(h.trim(5_300, 100).unwrap(), 0);
        assert_eq!(h.get(ids[0]), None);
        assert_eq!(h.get(ids[1]), None);
        let a = Lookup::parse("rcpt", "a@b.example").unwrap();
        assert_eq!(h.find(&a, 0, 10).len(), 2);
        // Nothing of the dropped records is left behind.
        let left = h.tree.with_prefix(b"x").count();
        assert_eq!(left, 2 * h.find(&a, 0, 10)[0].keys().len());
        // A restart counts what is kept.
        drop(h);
        let h = History::open(&spool, &cfg, 1);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_history_that_is_off_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HistoryConfig {
            max_age_secs: 0,
            ..HistoryConfig::default()
        };
        let (spool, h) = history(dir.path(), &cfg);
        let (id, r) = record(&spool, "a@b.example", 100);
        h.record(id, &r).unwrap();
        assert!(h.is_empty());
        assert_eq!(h.get(id), None);
    }
}
