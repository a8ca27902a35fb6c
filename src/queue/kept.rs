//! Named trees of a shard's spool for users that own their records'
//! format: what the shard keeps across a restart beside the mail itself
//! (holds, capped paths' counts, injection answers, receivers' MTA-STS
//! policies, the webhooks' event outbox). Bytes in, bytes out, by key
//! (keys sort as bytes): the spool stores them and makes them durable;
//! what the bytes mean is the user's.
//!
//! Owns: [`KeptTree`] (which trees there are, so the spool's layout is
//! listed in one place) and [`Kept`], the handle on one. A write is
//! durable with the spool's next flush (within its flush interval:
//! [`Kept::put`] tells the group commit there is something to flush), or
//! at once with [`Kept::put_durably`]. [`FlushMark`] lets a user that
//! numbers its records (the event outbox) learn how far a flush has made
//! them durable. A record that must be durable exactly when a message is
//! can ride in the message's own journal frame instead ([`KeptRider`]):
//! the commit round that makes the message durable inserts it, and
//! recovery puts it back from the frame, so it costs no write of its own.
//!
//! Must not: hold mail, or interpret a record.

use serde::{Deserialize, Serialize};

use super::SpoolError;
pub use super::commit::FlushMark;
use super::commit::GroupCommit;

/// A record or key as stored (cheap to clone and slice).
pub type Bytes = sled::IVec;

/// The trees the spool keeps for others, each with its sled name and the
/// module that owns its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptTree {
    /// Domain, site, source or pool holds (`scheduler::stored`).
    Suspensions,
    /// Capped paths' hourly and daily counts (`scheduler::stored`).
    PathCounts,
    /// Injection answers by `Idempotency-Key` (`inbound::idempotency`).
    Idempotency,
    /// Receivers' MTA-STS policies (`outbound::sts`).
    MtaSts,
    /// Webhook events by sequence number (`events::outbox`), and each
    /// webhook's cursor, the events refused for good, those to replay.
    Events,
    EventCursors,
    EventsFailed,
    EventsReplay,
    /// Messages that left the queue, and their lookup index
    /// (`history`).
    History,
    /// The shard's counts of outbound TLS sessions for TLS reports
    /// (`scheduler::tls_reports`).
    TlsReports,
}

impl KeptTree {
    pub const ALL: [KeptTree; 10] = [
        KeptTree::Suspensions,
        KeptTree::PathCounts,
        KeptTree::Idempotency,
        KeptTree::MtaSts,
        KeptTree::Events,
        KeptTree::EventCursors,
        KeptTree::EventsFailed,
        KeptTree::EventsReplay,
        KeptTree::History,
        KeptTree::TlsReports,
    ];

    /// The tree named `name` ([`KeptTree::name`]).
    pub fn named(name: &str) -> Option<KeptTree> {
        KeptTree::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The sled tree's name (on disk: keep stable).
    pub fn name(self) -> &'static str {
        match self {
            KeptTree::Suspensions => "suspensions",
            KeptTree::PathCounts => "path_counts",
            KeptTree::Idempotency => "idempotency",
            KeptTree::MtaSts => "mta_sts",
            KeptTree::Events => "events",
            KeptTree::EventCursors => "event_cursors",
            KeptTree::EventsFailed => "events_failed",
            KeptTree::EventsReplay => "events_replay",
            KeptTree::History => "history",
            KeptTree::TlsReports => "tls_reports",
        }
    }
}

/// A record for a kept tree carried in a new message's journal frame
/// (`Envelope::rider`): durable with the message, in the same commit
/// round, and put back by recovery from the frame if sled lost it. Only
/// the frame holds it: the message's record in sled does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRider {
    /// The tree's name ([`KeptTree::name`]).
    pub tree: String,
    pub key: String,
    /// The record, base64 (the frame's record is JSON).
    pub value: String,
}

impl KeptRider {
    pub fn new(tree: KeptTree, key: &str, value: &[u8]) -> KeptRider {
        use base64::Engine;
        KeptRider {
            tree: tree.name().to_string(),
            key: key.to_string(),
            value: base64::engine::general_purpose::STANDARD.encode(value),
        }
    }

    /// Its tree, key and record; None if the frame holds something this
    /// version cannot read (a tree it does not know).
    pub fn decode(&self) -> Option<(KeptTree, &str, Vec<u8>)> {
        use base64::Engine;
        let tree = KeptTree::named(&self.tree)?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(&self.value)
            .ok()?;
        Some((tree, &self.key, value))
    }
}

/// One tree of the spool (see the module header).
#[derive(Clone)]
pub struct Kept {
    tree: sled::Tree,
    commit: GroupCommit,
}

impl Kept {
    pub(super) fn new(tree: sled::Tree, commit: GroupCommit) -> Kept {
        Kept { tree, commit }
    }

    /// The record stored under `key`, if any (and readable).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        self.tree.get(key).ok().flatten()
    }

    /// Stores `value` under `key`; durable with the spool's next flush.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), SpoolError> {
        self.tree
            .insert(key.as_ref(), value.as_ref())
            .map_err(|source| SpoolError::Kept { source })?;
        self.commit.touched();
        Ok(())
    }

    /// Removes the record under `key`; durable with the next flush.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), SpoolError> {
        self.tree
            .remove(key)
            .map_err(|source| SpoolError::Kept { source })?;
        self.commit.touched();
        Ok(())
    }

    /// Removes the records under `keys` in one write.
    pub fn remove_all<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for k in keys {
            batch.remove(k.as_ref());
            any = true;
        }
        if !any {
            return Ok(());
        }
        self.tree
            .apply_batch(batch)
            .map_err(|source| SpoolError::Kept { source })?;
        self.commit.touched();
        Ok(())
    }

    /// Stores each `(key, Some(value))` and removes each `(key, None)`,
    /// all in one write; durable with the next flush.
    pub fn write_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        writes: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k.as_ref(), v.as_ref()),
                None => batch.remove(k.as_ref()),
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|source| SpoolError::Kept { source })?;
        self.commit.touched();
        Ok(())
    }

    /// Stores `value` under `key` (or removes the record, for `None`) and
    /// returns once a flush has made it durable.
    pub async fn put_durably(&self, key: &str, value: Option<&[u8]>) -> Result<(), SpoolError> {
        match value {
            Some(v) => self.put(key, v)?,
            None => self.remove(key)?,
        }
        self.commit
            .flush_durably()
            .await
            .map_err(|reason| SpoolError::Durability { reason })
    }

    /// The records with keys from `from` through `to`, in key order.
    pub fn range(&self, from: &[u8], to: &[u8]) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        self.tree.range(from..=to).filter_map(Result::ok)
    }

    /// The records whose keys begin with `prefix`, in key order.
    pub fn with_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        self.tree.scan_prefix(prefix).filter_map(Result::ok)
    }

    /// The lowest and the highest key stored.
    pub fn first_and_last_keys(&self) -> (Option<Bytes>, Option<Bytes>) {
        let key = |r: sled::Result<Option<(Bytes, Bytes)>>| r.ok().flatten().map(|(k, _)| k);
        (key(self.tree.first()), key(self.tree.last()))
    }

    /// Every record, in key order (keys that are not UTF-8 are skipped).
    pub fn entries(&self) -> Vec<(String, Bytes)> {
        self.tree
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, v)))
            .collect()
    }
}
