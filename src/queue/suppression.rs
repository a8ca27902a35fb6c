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
//! Durability: [`SuppressionList::add_durably`] returns after sled's
//! flush (an fsync), so what the admin API reported as added survives a
//! SIGKILL. Entries the scheduler adds after a bounce are flushed by
//! sled's own timer (within 500 ms); one lost to a crash comes back with
//! the next bounce.
//!
//! Must not: decide when to suppress (the scheduler and the admin API do)
//! or how to answer (the reception door does).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SpoolError, domain_of};

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
}

fn key(scope: &str, address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 1 + address.len());
    k.extend_from_slice(scope.to_ascii_lowercase().as_bytes());
    k.push(0);
    k.extend_from_slice(address.to_lowercase().as_bytes());
    k
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
        expires: if cfg.expiry_secs == 0 {
            0
        } else {
            now + cfg.expiry_secs
        },
    }
}

impl SuppressionList {
    /// Opens (or creates) the list at `path`.
    pub fn open(path: &Path) -> Result<SuppressionList, SpoolError> {
        let err = |source| SpoolError::Db {
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
        Ok(SuppressionList {
            path: path.to_path_buf(),
            db,
            tree,
        })
    }

    /// The live entry that refuses mail from `sender` to `rcpt`, if any:
    /// the global one first, then the sender domain's.
    pub fn check(&self, sender: &str, rcpt: &str, now: u64) -> Option<Suppression> {
        let sender_domain = domain_of(sender);
        [GLOBAL, sender_domain.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .find_map(|scope| self.get(scope, rcpt).filter(|s| s.is_live(now)))
    }

    pub fn get(&self, scope: &str, address: &str) -> Option<Suppression> {
        let value = self.tree.get(key(scope, address)).ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Adds (or replaces) entries; sled writes them out within its flush
    /// interval.
    pub fn add(&self, entries: &[Suppression]) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        for s in entries {
            let value = serde_json::to_vec(s).expect("serializable");
            batch.insert(key(&s.scope, &s.address), value);
        }
        self.tree.apply_batch(batch).map_err(|e| self.db_err(e))
    }

    /// Adds entries and returns once they are on disk.
    pub fn add_durably(&self, entries: &[Suppression]) -> Result<(), SpoolError> {
        self.add(entries)?;
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }

    /// Removes an entry (durably); whether there was one.
    pub fn remove(&self, scope: &str, address: &str) -> Result<bool, SpoolError> {
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

    fn db_err(&self, source: sled::Error) -> SpoolError {
        SpoolError::Db {
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
}
