//! The durable queue: one spool per shard, and the only user of sled.
//!
//! Owns: message ids ([`id`]), envelopes ([`envelope`]), the per-shard
//! [`Spool`] (a sled database for queue records plus one file per message
//! body), group commit ([`commit`]), and recovery at start-up with
//! quarantine of damaged records.
//!
//! Layout on disk, per shard `k` under the spool directory:
//!
//! ```text
//!  shard-k/queue/    sled: tree "envelopes" (id -> Envelope JSON),
//!                          tree "quarantine" (id -> {reason, raw record})
//!  shard-k/bodies/   one file per message, named by its id
//! ```
//!
//! Why bodies are files and not sled values (measured on this machine, see
//! `../shared/design/stack.md`): sled 0.34 writes values that do not fit
//! inline in a segment as blob files and never frees them; 100,000 10 KiB
//! messages inserted and deleted left 1.1 GB behind with default segments,
//! and 100 KiB bodies leak even with 8 MiB segments. A body file is freed the
//! moment it is unlinked, and writing + fdatasync of one file per message ran
//! at 12,600 msgs/s from 20 threads. Envelopes (~300 bytes) stay inline in
//! sled, where they are reclaimed, ordered by id, and updated in place.
//!
//! Durability (the 250 rule): [`Spool::enqueue`] writes the body file and
//! fdatasyncs it through io_uring (many in flight per core), inserts the
//! envelope, then waits for a group-commit round (sled flush + bodies
//! directory fsync) that began after the insert. Only then does it return
//! Ok, and only then may the session answer 250. A crash before that leaves
//! either nothing or a body without a record, which recovery removes.
//!
//! Must not: know about SMTP; be touched from any thread but its shard's
//! (the CLI opens a spool only while the server is stopped: sled's file lock
//! enforces it).

pub mod commit;
pub mod envelope;
pub mod id;

use std::fs;
use std::path::{Path, PathBuf};

pub use envelope::{Envelope, Recipient, RecipientStatus};
pub use id::{IdGenerator, MessageId};

use commit::GroupCommit;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path} is locked: is another ringpost running on it?")]
    Locked { path: PathBuf },
    #[error("spool database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("message {id}: {op}: {source}")]
    Body {
        id: MessageId,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("message {id}: queue record: {source}")]
    Record {
        id: MessageId,
        #[source]
        source: sled::Error,
    },
    #[error("message {id}: commit: {reason}")]
    Commit { id: MessageId, reason: String },
}

/// Tunables of one shard's spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// sled's page cache per shard, bytes.
    pub cache_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            cache_bytes: 64 << 20,
        }
    }
}

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub messages: usize,
    pub quarantined: usize,
    pub orphan_bodies_removed: usize,
}

pub struct Spool {
    shard: u16,
    path: PathBuf,
    bodies: PathBuf,
    envelopes: sled::Tree,
    quarantine: sled::Tree,
    commit: GroupCommit,
}

/// The directory of shard `k` under the spool root.
pub fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard}"))
}

/// Shards that exist on disk under `root`, in order.
pub fn existing_shards(root: &Path) -> Vec<u16> {
    let mut v: Vec<u16> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("shard-")?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

impl Spool {
    /// Opens (creating if needed) the spool of `shard`. Blocking: call at
    /// start-up, before the shard serves. Does not recover; see [`Spool::recover`].
    pub fn open(root: &Path, shard: u16, opts: &SpoolOptions) -> Result<Spool, SpoolError> {
        let path = shard_dir(root, shard);
        let bodies = path.join("bodies");
        let io_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&bodies).map_err(io_err)?;
        let db_path = path.join("queue");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| match source {
                sled::Error::Io(ref e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("lock") =>
                {
                    SpoolError::Locked {
                        path: db_path.clone(),
                    }
                }
                source => SpoolError::Db {
                    path: db_path.clone(),
                    source,
                },
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| SpoolError::Db {
                path: db_path.clone(),
                source,
            })
        };
        let envelopes = tree("envelopes")?;
        let quarantine = tree("quarantine")?;
        let dir = fs::File::open(&bodies).map_err(io_err)?;
        Ok(Spool {
            shard,
            commit: GroupCommit::new(db, dir),
            path,
            bodies,
            envelopes,
            quarantine,
        })
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn body_path(&self, id: MessageId) -> PathBuf {
        self.bodies.join(id.to_string())
    }

    /// Makes the queue consistent after a crash. Blocking; start-up only.
    ///
    /// A record that does not decode, or whose body file is missing or has
    /// the wrong size, moves to the quarantine tree (logged, never dropped;
    /// its body file, if any, stays).
    /// A body file without a record is what a crash before the 250 leaves
    /// behind: nobody was told it was queued, so it is removed.
    pub fn recover(&self) -> Result<RecoveryReport, SpoolError> {
        let mut report = RecoveryReport::default();
        for item in self.envelopes.iter() {
            let (key, value) = item.map_err(|source| self.db_err(source))?;
            match self.check_record(&key, &value) {
                Ok(()) => report.messages += 1,
                Err(reason) => {
                    self.quarantine_record(&key, &value, &reason)?;
                    report.quarantined += 1;
                }
            }
        }
        let entries = fs::read_dir(&self.bodies).map_err(|source| SpoolError::Open {
            path: self.bodies.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            // A quarantined record keeps its body: both are evidence.
            let known = name.to_str().and_then(MessageId::parse).is_some_and(|id| {
                let key = id.as_bytes();
                self.envelopes.contains_key(key).unwrap_or(true)
                    || self.quarantine.contains_key(key).unwrap_or(true)
            });
            if !known {
                log::info!(
                    "spool: removing body without a queue record: {:?}",
                    entry.path()
                );
                let _ = fs::remove_file(entry.path());
                report.orphan_bodies_removed += 1;
            }
        }
        if report.quarantined > 0 {
            self.envelopes
                .flush()
                .map_err(|source| self.db_err(source))?;
        }
        Ok(report)
    }

    fn check_record(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let id = MessageId::from_slice(key).ok_or("queue key is not a message id")?;
        let env = Envelope::decode(value).map_err(|e| format!("undecodable record: {e}"))?;
        match fs::metadata(self.body_path(id)) {
            Ok(m) if m.len() == env.size => Ok(()),
            Ok(m) => Err(format!(
                "body has {} bytes, record says {}",
                m.len(),
                env.size
            )),
            Err(e) => Err(format!("body file: {e}")),
        }
    }

    fn quarantine_record(&self, key: &[u8], value: &[u8], reason: &str) -> Result<(), SpoolError> {
        log::error!(
            "spool shard {}: quarantining record {}: {reason}",
            self.shard,
            MessageId::from_slice(key).map_or_else(|| format!("{key:02x?}"), |id| id.to_string())
        );
        let entry = serde_json::json!({
            "reason": reason,
            "record": String::from_utf8_lossy(value),
        });
        self.quarantine
            .insert(key, serde_json::to_vec(&entry).unwrap_or_default())
            .and_then(|_| self.envelopes.remove(key))
            .map(|_| ())
            .map_err(|source| self.db_err(source))
    }

    fn db_err(&self, source: sled::Error) -> SpoolError {
        SpoolError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a message durably. Returns only after the body and the record
    /// are both on disk (see the module doc). On error nothing is queued.
    pub async fn enqueue(
        &self,
        id: MessageId,
        env: &Envelope,
        body: Vec<u8>,
    ) -> Result<(), SpoolError> {
        debug_assert_eq!(env.size, body.len() as u64);
        self.write_body(id, body).await?;
        if let Err(source) = self.envelopes.insert(id.as_bytes(), env.encode()) {
            self.discard(id).await;
            return Err(SpoolError::Record { id, source });
        }
        if let Err(reason) = self.commit.wait().await {
            self.discard(id).await;
            return Err(SpoolError::Commit { id, reason });
        }
        Ok(())
    }

    async fn write_body(&self, id: MessageId, body: Vec<u8>) -> Result<(), SpoolError> {
        let err = |op| {
            move |e: glommio::GlommioError<()>| SpoolError::Body {
                id,
                op,
                source: e.into(),
            }
        };
        let len = body.len();
        let file = glommio::io::OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(self.body_path(id))
            .await
            .map_err(err("create body file"))?;
        let written = file.write_at(body, 0).await.map_err(err("write body"));
        // A short write on a regular file means the disk is full: refuse the
        // message rather than retry with a copy of the rest.
        let synced = match written {
            Ok(n) if n == len => file.fdatasync().await.map_err(err("fdatasync body")),
            Ok(_) => Err(SpoolError::Body {
                id,
                op: "write body",
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            }),
            Err(e) => Err(e),
        };
        let closed = file.close().await.map_err(err("close body"));
        if synced.is_err() || closed.is_err() {
            let _ = glommio::io::remove(self.body_path(id)).await;
        }
        synced.and(closed)
    }

    /// Best-effort removal after a failed enqueue.
    async fn discard(&self, id: MessageId) {
        let _ = self.envelopes.remove(id.as_bytes());
        let _ = glommio::io::remove(self.body_path(id)).await;
    }

    /// Removes a message that is done (delivered or bounced). The record
    /// goes first: a crash in between leaves an orphan body that recovery
    /// removes, never a record without its body.
    pub async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        self.envelopes
            .remove(id.as_bytes())
            .map_err(|source| SpoolError::Record { id, source })?;
        glommio::io::remove(self.body_path(id))
            .await
            .map_err(|e| SpoolError::Body {
                id,
                op: "remove body",
                source: e.into(),
            })
    }

    /// Every queued message, in id (arrival) order. Records that do not
    /// decode are skipped here; recovery quarantines them.
    pub fn list(&self) -> impl Iterator<Item = (MessageId, Envelope)> + '_ {
        self.envelopes.iter().filter_map(|item| {
            let (k, v) = item.ok()?;
            Some((MessageId::from_slice(&k)?, Envelope::decode(&v).ok()?))
        })
    }

    pub fn get(&self, id: MessageId) -> Option<Envelope> {
        let v = self.envelopes.get(id.as_bytes()).ok()??;
        Envelope::decode(&v).ok()
    }

    /// Number of queued messages (walks the tree; not for hot paths).
    pub fn len(&self) -> usize {
        self.envelopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// Quarantined records: (key, reason).
    pub fn quarantined(&self) -> Vec<(Vec<u8>, String)> {
        self.quarantine
            .iter()
            .flatten()
            .map(|(k, v)| {
                let reason = serde_json::from_slice::<serde_json::Value>(&v)
                    .ok()
                    .and_then(|j| j["reason"].as_str().map(str::to_string))
                    .unwrap_or_default();
                (k.to_vec(), reason)
            })
            .collect()
    }
}
