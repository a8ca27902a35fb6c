//! The suppression list: recipients ringpost refuses to send to, because
//! their mail bounced for good or an operator said so.
//!
//! Owns: [`SuppressionList`], one sled database for the whole node
//! (`suppression.path`, by default `suppressions/` under the spool root),
//! and [`Suppression`], one entry. Keys are `scope NUL address`, the scope
//! `*` for every sender or a sender domain; addresses are kept in lower
//! case.
//!
//! Concurrency: unlike the spool, the list is shared by every shard (an
//! `Arc`): a recipient must be refused whichever shard took the session,
//! and a cross-core hop per RCPT would cost more than sled's lock-free
//! read. Writes are rare (bounces, the admin API).
//!
//! Lookups: most recipients are not on the list, and a miss in sled costs
//! a walk down its tree per scope, twice per recipient (at RCPT and before
//! each attempt). A Bloom filter ([`KeyFilter`], `fastbloom`) of every key
//! the list has held since it was opened answers most misses without
//! sled: it is filled from the tree at open and each entry's bits are set
//! before the entry is written, so an entry sled holds is never filtered
//! out. Removals leave their bits (a false positive asks sled, as before).
//!
//! Durability: [`SuppressionList::add_durably`] returns after sled's
//! flush (an fsync), so what the admin API reported as added survives a
//! SIGKILL. Entries the scheduler adds after a bounce are flushed by
//! sled's own timer (within 500 ms); one lost to a crash comes back with
//! the next bounce.
//!
//! Sharing (with `[cluster]`, [`SuppressionList::shared`]): each change
//! made here (an add or a removal, whoever made it) is also put in an
//! outbox (tree `outbox`, in the same database, so it is as durable as
//! the change) until [`share`] has published it to Redis;
//! changes other nodes published are applied with
//! [`SuppressionList::apply_shared`], which puts nothing in the outbox.
//! An entry is named in the fleet by its *field*, `scope SP address`
//! (a scope never holds a space). Tree `sync` keeps where this node is
//! in the fleet's log.
//!
//! May call: `queue` (`domain_of`), `cluster` (in [`share`]), `config` (its
//! section), `metrics`, `shard`.
//! Must not: decide when to suppress (the scheduler and the admin API do) or
//! how to answer (the reception door does); talk to Redis.

use std::path::Path;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::queue::domain_of;

pub mod share;

/// A failure of the list's own database.
#[derive(Debug, thiserror::Error)]
#[error("suppression list {path}: {source}")]
pub struct SuppressionError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: sled::Error,
}

/// The scope that applies to every sender.
pub const GLOBAL: &str = "*";

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The recipient, lower case.
    pub address: String,
    /// `*` (every sender) or the sender domain it applies to.
    pub scope: String,
    /// Why: a bounce category, "complaint", or the operator's words.
    pub reason: String,
    /// Who added it: "bounce", "async_bounce", "complaint", "admin",
    /// "import".
    pub source: String,
    /// Unix seconds.
    pub added: u64,
    /// Unix seconds after which it no longer applies; 0: never.
    pub expires: u64,
}

impl Suppression {
    pub fn is_live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

pub struct SuppressionList {
    path: std::path::PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    filter: KeyFilter,
    /// Changes not yet published to the fleet (sequence -> JSON
    /// `[field, value or null]`); None when the list is not shared.
    outbox: Option<sled::Tree>,
    /// How many changes the outbox holds (sled counts by iterating).
    outbox_len: std::sync::atomic::AtomicUsize,
    sync: sled::Tree,
}

/// A change made on this node and not yet published to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublished {
    pub seq: u64,
    pub field: String,
    /// The entry's JSON; None: removed.
    pub value: Option<String>,
}

/// An entry's name in the fleet: `scope SP address`, lower case.
pub fn field_of(scope: &str, address: &str) -> String {
    format!("{} {}", scope.to_ascii_lowercase(), address.to_lowercase())
}

fn key(scope: &str, address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 1 + address.len());
    k.extend(scope.bytes().map(|b| b.to_ascii_lowercase()));
    k.push(0);
    if address.is_ascii() {
        k.extend(address.bytes().map(|b| b.to_ascii_lowercase()));
    } else {
        k.extend_from_slice(address.to_lowercase().as_bytes());
    }
    k
}

/// Which keys the list may hold: a Bloom filter over every key written
/// since the list was opened (see the module header). Sized at open for
/// four times the entries then held (at least 2^20 keys, 1% false
/// positives: 9.6 bits, about 1.2 bytes a key); once more keys than that
/// have been added it stops answering (every lookup asks sled, as without
/// it) until the next start sizes it again.
struct KeyFilter {
    bloom: fastbloom::AtomicBloomFilter,
    capacity: usize,
    added: std::sync::atomic::AtomicUsize,
}

impl KeyFilter {
    fn for_tree(tree: &sled::Tree) -> KeyFilter {
        let held = tree.len();
        let capacity = (held * 4).max(1 << 20);
        let filter = KeyFilter {
            bloom: fastbloom::AtomicBloomFilter::with_false_pos(0.01).expected_items(capacity),
            capacity,
            added: Default::default(),
        };
        for k in tree.iter().keys().filter_map(Result::ok) {
            filter.note(&k);
        }
        filter
    }

    /// Before a key is written.
    fn note(&self, key: &[u8]) {
        self.added.fetch_add(1, Ordering::Relaxed);
        self.bloom.insert(key);
    }

    /// False only when the list holds no entry under `key`.
    fn may_hold(&self, key: &[u8]) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity || self.bloom.contains(key)
    }
}

/// The domain of an address, lower case.
/// The entry ringpost makes for `rcpt` after a failure or complaint about
/// mail from `sender`, scoped and timed as `[suppression]` says.
pub fn entry_for(
    cfg: &crate::config::SuppressionConfig,
    sender: &str,
    rcpt: &str,
    reason: &str,
    source: &str,
    now: u64,
) -> Suppression {
    let scope = match cfg.scope {
        crate::config::SuppressionScope::Global => GLOBAL.to_string(),
        crate::config::SuppressionScope::SenderDomain => domain_of(sender),
    };
    Suppression {
        address: rcpt.to_lowercase(),
        scope: if scope.is_empty() {
            GLOBAL.into()
        } else {
            scope
        },
        reason: reason.into(),
        source: source.into(),
        added: now,
        expires: match cfg.lifetime(reason) {
            0 => 0,
            secs => now + secs,
        },
    }
}

impl SuppressionList {
    /// Opens (or creates) the list at `path`.
    pub fn open(path: &Path) -> Result<SuppressionList, SuppressionError> {
        let err = |source| SuppressionError {
            path: path.to_path_buf(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 << 20)
            .flush_every_ms(Some(500))
            .open()
            .map_err(err)?;
        let tree = db.open_tree("suppressions").map_err(err)?;
        let sync = db.open_tree("sync").map_err(err)?;
        let filter = KeyFilter::for_tree(&tree);
        Ok(SuppressionList {
            path: path.to_path_buf(),
            db,
            tree,
            filter,
            outbox: None,
            outbox_len: Default::default(),
            sync,
        })
    }

    /// Shares the list with the fleet when `on`: from now on each change
    /// also goes to the outbox.
    pub fn shared(mut self, on: bool) -> Result<SuppressionList, SuppressionError> {
        if on {
            let outbox = self.db.open_tree("outbox").map_err(|e| self.db_err(e))?;
            self.outbox_len = outbox.len().into();
            self.outbox = Some(outbox);
        }
        Ok(self)
    }

    /// The live entry that refuses mail from `sender` to `rcpt`, if any:
    /// the global one first, then the sender domain's.
    pub fn check(&self, sender: &str, rcpt: &str, now: u64) -> Option<Suppression> {
        self.check_domain(&domain_of(sender), rcpt, now)
    }

    /// [`SuppressionList::check`] for mail from a sender at `sender_domain`.
    pub fn check_domain(&self, sender_domain: &str, rcpt: &str, now: u64) -> Option<Suppression> {
        [GLOBAL, sender_domain]
            .into_iter()
            .filter(|s| !s.is_empty())
            .find_map(|scope| self.get(scope, rcpt).filter(|s| s.is_live(now)))
    }

    pub fn get(&self, scope: &str, address: &str) -> Option<Suppression> {
        let k = key(scope, address);
        if !self.filter.may_hold(&k) {
            return None;
        }
        let value = self.tree.get(k).ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Adds (or replaces) entries; sled writes them out within its flush
    /// interval.
    pub fn add(&self, entries: &[Suppression]) -> Result<(), SuppressionError> {
        self.republish(entries)?;
        let mut batch = sled::Batch::default();
        for s in entries {
            let value = serde_json::to_vec(s).expect("serializable");
            let k = key(&s.scope, &s.address);
            self.filter.note(&k);
            batch.insert(k, value);
        }
        self.tree.apply_batch(batch).map_err(|e| self.db_err(e))
    }

    /// Adds entries and returns once they are on disk.
    pub fn add_durably(&self, entries: &[Suppression]) -> Result<(), SuppressionError> {
        self.add(entries)?;
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }

    /// Removes an entry (durably); whether there was one.
    pub fn remove(&self, scope: &str, address: &str) -> Result<bool, SuppressionError> {
        self.to_outbox([(field_of(scope, address), None)].into_iter())?;
        let removed = self
            .tree
            .remove(key(scope, address))
            .map_err(|e| self.db_err(e))?;
        self.db.flush().map_err(|e| self.db_err(e))?;
        Ok(removed.is_some())
    }

    /// Up to `limit` entries in key order, after the entry (scope,
    /// address) `after` if given: pages through the whole list.
    pub fn list(&self, after: Option<(&str, &str)>, limit: usize) -> Vec<Suppression> {
        let start = after.map(|(s, a)| {
            let mut k = key(s, a);
            k.push(0);
            k
        });
        let iter = match start {
            Some(k) => self.tree.range(k..),
            None => self.tree.iter(),
        };
        iter.filter_map(Result::ok)
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .take(limit)
            .collect()
    }

    /// Every entry, with its field, in key order (expired ones too).
    pub fn entries(&self) -> impl Iterator<Item = (String, Suppression)> + '_ {
        self.tree
            .iter()
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| serde_json::from_slice::<Suppression>(&v).ok())
            .map(|s| (field_of(&s.scope, &s.address), s))
    }

    /// Applies changes the fleet published (the value: the entry's JSON,
    /// None: removed), without putting them in the outbox: how many were
    /// understood. sled writes them out within its flush interval; one
    /// lost to a crash is read again (the place in the log is written
    /// after them).
    pub fn apply_shared(
        &self,
        changes: &[(String, Option<String>)],
    ) -> Result<usize, SuppressionError> {
        let mut batch = sled::Batch::default();
        let mut applied = 0;
        for (field, value) in changes {
            let Some((scope, address)) = field.split_once(' ') else {
                continue;
            };
            match value {
                None => batch.remove(key(scope, address)),
                Some(json) => {
                    let Ok(s) = serde_json::from_str::<Suppression>(json) else {
                        continue;
                    };
                    if field_of(&s.scope, &s.address) != *field {
                        continue;
                    }
                    let k = key(&s.scope, &s.address);
                    self.filter.note(&k);
                    batch.insert(k, json.as_bytes());
                }
            }
            applied += 1;
        }
        self.tree.apply_batch(batch).map_err(|e| self.db_err(e))?;
        Ok(applied)
    }

    /// Puts entries in the outbox (they are to be published) as they
    /// stand; [`SuppressionList::add`] does too.
    pub fn republish(&self, entries: &[Suppression]) -> Result<(), SuppressionError> {
        self.to_outbox(entries.iter().map(|s| {
            let value = serde_json::to_string(s).expect("serializable");
            (field_of(&s.scope, &s.address), Some(value))
        }))
    }

    /// Up to `limit` changes not yet published, oldest first.
    pub fn unpublished(&self, limit: usize) -> Vec<Unpublished> {
        let Some(outbox) = &self.outbox else {
            return Vec::new();
        };
        outbox
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let seq = u64::from_be_bytes(k.as_ref().try_into().ok()?);
                let (field, value) = serde_json::from_slice(&v).ok()?;
                Some(Unpublished { seq, field, value })
            })
            .take(limit)
            .collect()
    }

    /// How many changes wait to be published.
    pub fn unpublished_len(&self) -> usize {
        self.outbox_len.load(Ordering::Relaxed)
    }

    /// Forgets changes once published.
    pub fn mark_published(&self, seqs: &[u64]) -> Result<(), SuppressionError> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(&seq.to_be_bytes());
        }
        outbox.apply_batch(batch).map_err(|e| self.db_err(e))?;
        let _ = self
            .outbox_len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(seqs.len()))
            });
        Ok(())
    }

    /// Where this node is in the fleet's log: (epoch, last id applied).
    pub fn sync_place(&self) -> Option<(String, String)> {
        let v = self.sync.get("place").ok()??;
        serde_json::from_slice(&v).ok()
    }

    pub fn set_sync_place(&self, epoch: &str, id: &str) -> Result<(), SuppressionError> {
        let v = serde_json::to_vec(&(epoch, id)).expect("serializable");
        self.sync
            .insert("place", v)
            .map(drop)
            .map_err(|e| self.db_err(e))
    }

    fn to_outbox(
        &self,
        changes: impl Iterator<Item = (String, Option<String>)>,
    ) -> Result<(), SuppressionError> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for change in changes {
            let seq = self.db.generate_id().map_err(|e| self.db_err(e))?;
            let value = serde_json::to_vec(&change).expect("serializable");
            batch.insert(&seq.to_be_bytes(), value);
            n += 1;
        }
        outbox.apply_batch(batch).map_err(|e| self.db_err(e))?;
        self.outbox_len.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn db_err(&self, source: sled::Error) -> SuppressionError {
        SuppressionError {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str, scope: &str, expires: u64) -> Suppression {
        Suppression {
            address: address.into(),
            scope: scope.into(),
            reason: "InvalidRecipient".into(),
            source: "test".into(),
            added: 100,
            expires,
        }
    }

    #[test]
    fn global_and_sender_domain_scopes_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList::open(dir.path()).unwrap();
        list.add_durably(&[
            entry("gone@example.net", GLOBAL, 0),
            entry("optout@example.net", "brand.example", 0),
            entry("later@example.net", GLOBAL, 200),
        ])
        .unwrap();
        assert!(list.check("a@x.example", "Gone@Example.NET", 150).is_some());
        assert!(
            list.check("a@brand.example", "optout@example.net", 150)
                .is_some()
        );
        assert!(
            list.check("a@other.example", "optout@example.net", 150)
                .is_none()
        );
        assert!(
            list.check("a@x.example", "later@example.net", 199)
                .is_some()
        );
        assert!(
            list.check("a@x.example", "later@example.net", 200)
                .is_none()
        );
        assert!(
            list.check("", "gone@example.net", 150).is_some(),
            "null sender too"
        );
        assert!(list.remove(GLOBAL, "GONE@example.net").unwrap());
        assert!(list.check("a@x.example", "gone@example.net", 150).is_none());
        let all = list.list(None, 10);
        assert_eq!(all.len(), 2);
        let next = list.list(Some((&all[0].scope, &all[0].address)), 10);
        assert_eq!(next, all[1..]);
    }

    #[test]
    fn the_key_filter_never_hides_an_entry_written_before_or_after_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let list = SuppressionList::open(dir.path()).unwrap();
            list.add_durably(&[entry("before@example.net", GLOBAL, 0)])
                .unwrap();
        }
        let list = SuppressionList::open(dir.path()).unwrap();
        assert!(list.check("a@x.example", "Before@example.net", 1).is_some());
        list.add(&[entry("after@example.net", "brand.example", 0)])
            .unwrap();
        assert!(
            list.check("a@brand.example", "after@example.net", 1)
                .is_some()
        );
        let fleet = entry("fleet@example.net", GLOBAL, 0);
        let json = serde_json::to_string(&fleet).unwrap();
        list.apply_shared(&[(field_of(GLOBAL, "fleet@example.net"), Some(json))])
            .unwrap();
        assert!(list.check("a@x.example", "fleet@example.net", 1).is_some());
        // Misses: nearly all answered by the filter without sled.
        let k = key(GLOBAL, "never@example.net");
        assert!(!list.filter.may_hold(&k));
        assert!(list.check("a@x.example", "never@example.net", 1).is_none());
        // Past its size the filter lets every lookup through to sled.
        list.filter
            .added
            .store(list.filter.capacity + 1, Ordering::Relaxed);
        assert!(list.filter.may_hold(&k));
        assert!(list.check("a@x.example", "never@example.net", 1).is_none());
        assert!(list.check("a@x.example", "before@example.net", 1).is_some());
    }

    #[test]
    fn a_shared_list_keeps_its_own_changes_until_published_and_applies_the_fleets() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList::open(dir.path())
            .unwrap()
            .shared(true)
            .unwrap();
        list.add(&[entry("Gone@Example.net", GLOBAL, 0)]).unwrap();
        list.remove("brand.example", "optout@example.net").unwrap();
        let out = list.unpublished(10);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].field, "* gone@example.net");
        let published: Suppression = serde_json::from_str(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(published.address, "Gone@Example.net");
        assert_eq!(
            (out[1].field.as_str(), out[1].value.as_ref()),
            ("brand.example optout@example.net", None)
        );
        assert!(out[0].seq < out[1].seq);
        list.mark_published(&[out[0].seq]).unwrap();
        assert_eq!(list.unpublished(10), out[1..]);

        // The fleet's changes: applied, not sent back; a value that does
        // not match its field, or a field without a scope, is ignored.
        let other = serde_json::to_string(&entry("new@example.net", "brand.example", 0)).unwrap();
        let applied = list
            .apply_shared(&[
                ("brand.example new@example.net".into(), Some(other.clone())),
                ("* gone@example.net".into(), None),
                ("* wrong@example.net".into(), Some(other)),
                ("noscope".into(), None),
            ])
            .unwrap();
        assert_eq!(applied, 2);
        assert!(
            list.check("a@brand.example", "new@example.net", 150)
                .is_some()
        );
        assert!(list.check("a@x.example", "gone@example.net", 150).is_none());
        assert!(
            list.check("a@x.example", "wrong@example.net", 150)
                .is_none()
        );
        assert_eq!(list.unpublished_len(), 1);
        let fields: Vec<String> = list.entries().map(|(f, _)| f).collect();
        assert_eq!(fields, ["brand.example new@example.net"]);

        assert_eq!(list.sync_place(), None);
        list.set_sync_place("e1", "17-3").unwrap();
        assert_eq!(list.sync_place(), Some(("e1".into(), "17-3".into())));

        // Opened again: the outbox and the place are still there.
        drop(list);
        let list = SuppressionList::open(dir.path())
            .unwrap()
            .shared(true)
            .unwrap();
        assert_eq!(list.unpublished_len(), 1);
        assert_eq!(list.unpublished(10), out[1..]);
        assert_eq!(list.sync_place(), Some(("e1".into(), "17-3".into())));
    }

    #[test]
    fn a_list_not_shared_keeps_no_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList::open(dir.path()).unwrap();
        list.add(&[entry("gone@example.net", GLOBAL, 0)]).unwrap();
        assert!(list.unpublished(10).is_empty());
        assert_eq!(list.unpublished_len(), 0);
    }
}
