//! The durable queue: one spool per shard.
//!
//! Owns: message ids ([`id`]), envelopes ([`envelope`]), body segments
//! ([`segment`]), group commit ([`commit`]), the per-shard [`Spool`] that
//! ties them together, recovery at start-up with quarantine of damaged
//! records, and the trees it keeps for other users ([`kept`]: bytes by
//! key, each tree's format its user's).
//!
//! Layout on disk, per shard `k` under the spool directory:
//!
//! ```text
//!  shard-k/queue/      sled: tree "envelopes" (id -> Envelope JSON, with
//!                            the body's segment, offset, length and CRC;
//!                            and "wm"+segment -> the segment's watermark),
//!                            tree "quarantine" (id -> {reason, record}),
//!                            tree "quarantine_bodies" (id -> what was
//!                            readable of the body),
//!                            and the trees kept for others, each in the
//!                            format of the module that owns it
//!                            ([`kept::KeptTree`]): "suspensions",
//!                            "path_counts", "idempotency", "mta_sts",
//!                            "events", "event_cursors", "events_failed",
//!                            "events_replay" (and "history", emptied: an earlier
//!                            version's)
//!  shard-k/segments/   append-only segments of frames (record + body),
//!                      unlinked or recycled when unreferenced; at most
//!                      one spare (spare.tmp: zeros, recycled.tmp: a
//!                      finished segment) waiting to be the next one
//!  shard-k/history/    what became of the messages that left (the
//!                      `history` module's files, not the spool's)
//! ```
//!
//! Durability (the 250 rule): [`Spool::enqueue`] appends the message as one
//! frame (its record and body) to the active segment, then waits for the
//! group commit round that fdatasyncs the segment and applies the record to
//! sled. `enqueue` returns Ok only after that; only then may the session
//! answer 250. sled itself is flushed every 200 ms: recovery replays
//! the frames it had not persisted ([`commit`] explains why this is
//! exact). A crash before the round leaves at most bytes no record refers
//! to, reclaimed with the segment, or a frame that recovery replays (a
//! message whose client saw no 250: a possible duplicate, never a loss).
//!
//! May call: `config` (its section), `dsn` (a recipient's DSN request in the
//! record), `metrics`, `shard`.
//! Must not: know about SMTP; be touched from any thread but its shard's
//! (the CLI opens a spool only while the server is stopped: sled's file lock
//! enforces it).

pub mod commit;
pub mod envelope;
pub mod frame;
pub mod id;
pub mod kept;
mod recover;
pub mod segment;
mod spare;

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use envelope::{Envelope, Recipient, RecipientStatus, domain_of};
pub use frame::BodyRef;
pub use id::{IdGenerator, MessageId};
pub use kept::{Bytes, FlushMark, Kept, KeptRider, KeptTree};

pub use commit::SyncMode;
use commit::{GroupCommit, watermark_key};
use frame::Frame;
use segment::Segments;

/// Keys of message records (watermarks have shorter keys).
fn is_message_key(key: &[u8]) -> bool {
    key.len() == 16
}

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
    #[error("message {id} is not in the queue")]
    NotFound { id: MessageId },
    #[error("spool: {reason}")]
    Durability { reason: String },
    #[error("spool tree: {source}")]
    Kept {
        #[source]
        source: sled::Error,
    },
}

/// A message on its way into the queue: what a receiver (SMTP, HTTP
/// injection, a DSN the scheduler makes) hands the reception door
/// (`inbound::Door`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Minted by the spool that will hold it ([`Spool::new_id`]).
    pub id: MessageId,
    /// Sender, recipients and flags; the door stamps the arrival time.
    pub envelope: Envelope,
    /// The message as it will be stored: our trace header, then what the
    /// client sent.
    pub body: Vec<u8>,
    /// Where in `body` the message as the client sent it begins (after our
    /// trace header).
    pub content_start: usize,
    /// Whether the client may set `meta.header` (a relay-network or
    /// authenticated SMTP client, an authorized injector).
    pub trusted: bool,
    /// The header fields the door adds when the message has none (a
    /// trusted client's listener's `add_date`, `add_message_id`).
    pub complete: Completion,
}

/// Header fields a submission server adds when missing (RFC 6409 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    pub date: bool,
    pub message_id: bool,
    /// One-click unsubscribe links (`[unsubscribe]`): the injection's own
    /// choice; None: as the message's pool says.
    pub unsubscribe: Option<bool>,
}

/// Tunables of one shard's spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Free space to keep on the spool's file system (see
    /// [`Spool::has_room`]).
    pub min_free_bytes: u64,
    /// sled's page cache per shard, bytes.
    pub cache_bytes: u64,
    /// Size of a body segment; a larger body gets a segment of its own.
    pub segment_bytes: u64,
    /// Where commit rounds run their fdatasync.
    pub sync: SyncMode,
}

impl From<&crate::config::SpoolConfig> for SpoolOptions {
    fn from(c: &crate::config::SpoolConfig) -> SpoolOptions {
        SpoolOptions {
            min_free_bytes: c.min_free_bytes,
            cache_bytes: c.cache_bytes,
            segment_bytes: c.segment_bytes,
            sync: c.sync,
        }
    }
}

impl Default for SpoolOptions {
    /// The configuration's defaults (`[spool]`).
    fn default() -> Self {
        SpoolOptions::from(&crate::config::SpoolConfig::default())
    }
}

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub messages: usize,
    /// Records put back from the segments' journal (sled had not flushed).
    pub replayed: usize,
    pub quarantined: usize,
    pub segments_removed: usize,
}

pub struct Spool {
    shard: u16,
    path: PathBuf,
    envelopes: sled::Tree,
    quarantine: sled::Tree,
    quarantine_bodies: sled::Tree,
    /// The trees kept for others, in [`KeptTree::ALL`]'s order.
    kept: Vec<sled::Tree>,
    segments: Rc<Segments>,
    commit: GroupCommit,
    /// How far the event outbox's numbered records are durable.
    mark: Rc<commit::FlushMark>,
    ids: RefCell<IdGenerator>,
    space: FreeSpace,
}

/// The spool file system's free space, looked at again when the last look
/// is old or much has been written since.
struct FreeSpace {
    reserve: u64,
    free: std::cell::Cell<u64>,
    checked: std::cell::Cell<Option<std::time::Instant>>,
    written: std::cell::Cell<u64>,
}

/// A look at the free space is good for this long...
const SPACE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// ...or for this many bytes written.
const SPACE_CHECK_BYTES: u64 = 4 << 20;

/// What [`Spool::start`] found: the report, and every queued message,
/// decoded once. (A shard's start streams them into its scheduler
/// instead: `Spool::recover_each`.)
pub struct Recovered {
    pub report: RecoveryReport,
    pub messages: Vec<(MessageId, Envelope)>,
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

/// How long a segment stays untouched by compaction after it was sealed:
/// most of its mail is delivered within seconds, and needs no moving.
const COMPACTION_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long `open_db` waits for a lock that a closing spool still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens a shard's sled database. sled releases its file lock only when
/// its last background write has let go of the database, a moment after
/// the last handle is dropped, so a spool reopened right after it was
/// closed (a shard restarted in the same process, as the tests do; a
/// process started while the old one is still exiting) may see the lock
/// held: that is waited out for up to [`LOCK_WAIT`]. A second ringpost on
/// the same spool still gets [`SpoolError::Locked`].
fn open_db(db_path: &Path, cache_bytes: u64) -> Result<sled::Db, SpoolError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(db_path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush on our own schedule (`commit::FLUSH_INTERVAL`).
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(ref e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(SpoolError::Locked {
                        path: db_path.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(source) => {
                return Err(SpoolError::Db {
                    path: db_path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

impl Spool {
    /// Opens (creating if needed) the spool of `shard`. Blocking: call at
    /// start-up, before the shard serves, then [`Spool::recover`].
    pub fn open(root: &Path, shard: u16, opts: &SpoolOptions) -> Result<Spool, SpoolError> {
        let path = shard_dir(root, shard);
        let io_err = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&path).map_err(io_err)?;
        let db_path = path.join("queue");
        let db = open_db(&db_path, opts.cache_bytes)?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| SpoolError::Db {
                path: db_path.clone(),
                source,
            })
        };
        let envelopes = tree("envelopes")?;
        let quarantine = tree("quarantine")?;
        let quarantine_bodies = tree("quarantine_bodies")?;
        let kept = KeptTree::ALL
            .iter()
            .map(|t| tree(t.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let segments =
            Rc::new(Segments::open(&path.join("segments"), opts.segment_bytes).map_err(io_err)?);
        let mark = Rc::new(commit::FlushMark::default());
        let commit = GroupCommit::new(
            db.clone(),
            envelopes.clone(),
            segments.clone(),
            opts.sync,
            mark.clone(),
        );
        Ok(Spool {
            shard,
            commit,
            mark,
            path,
            envelopes,
            quarantine,
            quarantine_bodies,
            kept,
            segments,
            ids: RefCell::new(IdGenerator::new(shard)),
            space: FreeSpace {
                reserve: opts.min_free_bytes,
                free: std::cell::Cell::new(u64::MAX),
                checked: std::cell::Cell::new(None),
                written: std::cell::Cell::new(0),
            },
        })
    }

    /// Whether the spool's file system has more free space than the
    /// reserve (`spool.min_free_bytes`): reception takes a message only
    /// then. Looked up with statvfs at most every 100 ms or 4 MiB written.
    pub fn has_room(&self) -> bool {
        let s = &self.space;
        if s.reserve == 0 {
            return true;
        }
        let stale = s
            .checked
            .get()
            .is_none_or(|t| t.elapsed() >= SPACE_CHECK_INTERVAL)
            || s.written.get() >= SPACE_CHECK_BYTES;
        if stale {
            s.free.set(self.free_bytes().unwrap_or(u64::MAX));
            s.checked.set(Some(std::time::Instant::now()));
            s.written.set(0);
            ::metrics::gauge!(crate::metrics::SPOOL_FREE_BYTES).set(s.free.get() as f64);
        }
        s.free.get().saturating_sub(s.written.get()) > s.reserve
    }

    /// Free bytes on the spool's file system (for unprivileged users).
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes())
            .map_err(std::io::Error::other)?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a NUL-terminated path and a buffer statvfs fills.
        if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        // c_ulong: u64 here, u32 on 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Opens the spool of `shard`, recovers it and prepares the first
    /// segment: everything a shard does before it serves. Blocking.
    pub fn start(
        root: &Path,
        shard: u16,
        opts: &SpoolOptions,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let spool = Spool::open(root, shard, opts)?;
        let recovered = spool.recover_messages()?;
        spool.ready_for_appends()?;
        Ok((spool, recovered))
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// How far a flush has made the records of a numbering user durable
    /// (the event outbox: `events::outbox`). One user per spool.
    pub fn flush_mark(&self) -> Rc<commit::FlushMark> {
        self.mark.clone()
    }

    /// A new id owned by this spool's shard (`MessageId::shard` names
    /// this shard).
    pub fn new_id(&self) -> MessageId {
        self.ids.borrow_mut().next_id()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Prepares the first segment the shard will append to (see
    /// `Segments::ready_spare`). Blocking; start-up only, after `recover`.
    pub fn ready_for_appends(&self) -> Result<(), SpoolError> {
        self.segments
            .ready_spare()
            .map_err(|source| SpoolError::Open {
                path: self.path.clone(),
                source,
            })
    }

    fn db_err(&self, source: sled::Error) -> SpoolError {
        SpoolError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a message durably and returns its envelope as stored. Returns
    /// only after the body and the record are both on disk (see the module
    /// doc), and with them the envelope's rider, if any (`kept::KeptRider`:
    /// in the frame, and in its tree from the same round; the envelope
    /// returned and stored in sled no longer carries it). On error nothing
    /// is queued.
    pub async fn enqueue(
        &self,
        id: MessageId,
        mut env: Envelope,
        body: Vec<u8>,
    ) -> Result<Envelope, SpoolError> {
        let body_err = |source| SpoolError::Body {
            id,
            op: "append body",
            source,
        };
        // The frame's record has no body reference: replay rebuilds it from
        // where the frame is.
        env.body = BodyRef::default();
        let frame = Frame::new(id.as_bytes(), &env.encode(), body);
        let rider = env.rider.take().and_then(|r| self.rider_write(&r));
        self.space
            .written
            .set(self.space.written.get() + frame.len());
        let (body_ref, write) = self.segments.reserve_frame(frame).map_err(body_err)?;
        self.segments.prepare_spare();
        let (segment, frame_offset) = (write.segment, write.offset);
        let ticket = self
            .commit
            .register(segment, body_ref.offset + body_ref.len);
        env.body = body_ref;
        if let Err(e) = self.segments.write(write).await {
            self.commit.failed(ticket);
            self.void(id, segment, frame_offset);
            self.segments.release(&body_ref);
            return Err(body_err(e));
        }
        let key = *id.as_bytes();
        let undo = rider.as_ref().map(|(tree, k, _)| (tree.clone(), k.clone()));
        if let Err(reason) = self.commit.written(ticket, key, env.encode(), rider).await {
            // The round may have inserted the record (and its rider) before
            // failing; the frame may be on disk whole. None may outlive the
            // refusal.
            let _ = self.envelopes.remove(key);
            if let Some((tree, k)) = undo {
                let _ = tree.remove(k);
            }
            self.commit.touched();
            self.void(id, segment, frame_offset);
            self.segments.release(&body_ref);
            return Err(SpoolError::Commit { id, reason });
        }
        Ok(env)
    }

    /// What the commit round inserts for a rider (None: a tree this
    /// version does not know, which only a frame from another version
    /// could name).
    fn rider_write(&self, rider: &kept::KeptRider) -> Option<commit::RiderWrite> {
        let (tree, key, value) = rider.decode()?;
        let tree = self.kept[tree as usize].clone();
        Some((tree, key.as_bytes().to_vec(), value))
    }

    /// Makes sure a refused message's frame is never replayed (see
    /// `Segments::void`).
    fn void(&self, id: MessageId, segment: u32, frame_offset: u64) {
        if let Err(e) = self.segments.void(segment, frame_offset) {
            // Left as it is, replay could bring the refused message back:
            // a duplicate of what the client will send again.
            log::error!("message {id}: cannot void its frame in segment {segment}: {e}");
        }
    }

    /// Waits until no commit round or flush is in flight, then flushes
    /// sled. A shard calls this last on stop: blocking work must not
    /// outlive its executor, and a clean stop leaves nothing to replay.
    pub async fn quiesce(&self) {
        while self.commit.busy() || self.segments.preparing() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.commit.flush_now();
    }

    /// Segments worth compacting (see `Segments::sparse`): their queued
    /// bodies take less than `percent` of them.
    pub fn sparse_segments(&self, percent: u64) -> Vec<u32> {
        self.segments.sparse(percent, COMPACTION_SETTLE)
    }

    /// Compaction of one message: its body is copied into the active
    /// segment as a new frame, with `env` (its current state) as the record,
    /// through the group commit like any new message; then the old body is
    /// released. Returns the new envelope (its new body place).
    ///
    /// Crash-safe at every step: until a sled flush covers the new record,
    /// sled still points to the old frame, whose segment is kept (it is
    /// unlinked only after a flush that covers the release); replay skips
    /// the new frame because sled has the key. After the flush, sled points
    /// to the new frame. Either way the message is there once.
    ///
    /// The caller must keep the message from being delivered, changed or
    /// removed meanwhile (the scheduler takes it out of its due-time index
    /// and counts it in flight).
    pub async fn relocate(&self, id: MessageId, env: &Envelope) -> Result<Envelope, SpoolError> {
        let body = self.read_body(id, env).await?;
        let moved = self.enqueue(id, env.clone(), body).await?;
        self.segments.release(&env.body);
        Ok(moved)
    }

    /// Makes the latest state changes and removals durable, and unlinks
    /// finished segments ([`Spool::run_flusher`] calls it every
    /// [`commit::FLUSH_INTERVAL`]).
    pub async fn flush(&self) {
        self.commit.flush().await;
    }

    /// Flushes every [`commit::FLUSH_INTERVAL`] until `stop` (the last
    /// flush is [`Spool::quiesce`]'s). One task of each shard runs it.
    pub async fn run_flusher(&self, stop: crate::shard::stop::StopSignal) {
        let mut flushed = std::time::Instant::now();
        loop {
            // Timed from the start of the last flush, so the flush's own
            // duration does not stretch the interval.
            let wait = commit::FLUSH_INTERVAL.saturating_sub(flushed.elapsed());
            let tick = futures_lite::future::or(
                async {
                    glommio::timer::sleep(wait).await;
                    true
                },
                async {
                    stop.wait().await;
                    false
                },
            )
            .await;
            if !tick {
                return;
            }
            flushed = std::time::Instant::now();
            self.flush().await;
        }
    }

    /// Stores a changed envelope (recipient states, retry time). Durable
    /// within [`commit::FLUSH_INTERVAL`]; losing it to a crash only
    /// repeats an attempt.
    pub async fn update(&self, id: MessageId, env: &Envelope) -> Result<(), SpoolError> {
        self.envelopes
            .insert(id.as_bytes(), env.encode())
            .map_err(|source| SpoolError::Record { id, source })?;
        self.commit.touched();
        Ok(())
    }

    /// Removes a message that is done (delivered, bounced or deleted) and
    /// releases its body (`body`: where its record says it is; the caller
    /// holds the envelope, so the record is not read back). The segment
    /// goes when its last body does, after the flush that makes the
    /// removal durable. When that segment's file is wanted as the next
    /// spare, the flush is now rather than within
    /// [`commit::FLUSH_INTERVAL`]: at 100 KiB messages a segment fills in
    /// a quarter of a second, and a late recycle means 16 MiB of zeros.
    pub async fn remove(&self, id: MessageId, body: &BodyRef) -> Result<(), SpoolError> {
        self.envelopes
            .remove(id.as_bytes())
            .map_err(|source| SpoolError::Record { id, source })?
            .ok_or(SpoolError::NotFound { id })?;
        self.commit.touched();
        self.segments.release(body);
        if self.segments.recycle_waiting() {
            self.commit.flush().await;
        }
        Ok(())
    }

    /// Makes every change so far durable (removals, state changes): returns
    /// once a flush that began after this call has completed.
    pub async fn make_durable(&self) -> Result<(), SpoolError> {
        self.commit
            .flush_durably()
            .await
            .map_err(|reason| SpoolError::Durability { reason })
    }

    /// The handle on one of the trees the spool keeps for others.
    pub fn kept(&self, tree: KeptTree) -> Kept {
        // `kept` is opened in `KeptTree::ALL`'s order, the variants' own.
        Kept::new(self.kept[tree as usize].clone(), self.commit.clone())
    }

    /// A message's body, read through io_uring and checked against its CRC.
    pub async fn read_body(&self, id: MessageId, env: &Envelope) -> Result<Vec<u8>, SpoolError> {
        self.segments
            .read(&env.body)
            .await
            .map_err(|source| SpoolError::Body {
                id,
                op: "read body",
                source,
            })
    }

    /// Blocking variant of [`Spool::read_body`] for tools and tests.
    pub fn read_body_blocking(&self, id: MessageId, env: &Envelope) -> Result<Vec<u8>, SpoolError> {
        self.segments
            .read_blocking(&env.body)
            .map_err(|source| SpoolError::Body {
                id,
                op: "read body",
                source,
            })
    }

    /// Every queued message, in id (arrival) order. Records that do not
    /// decode are skipped here; recovery quarantines them.
    pub fn list(&self) -> impl Iterator<Item = (MessageId, Envelope)> + '_ {
        self.envelopes.iter().filter_map(|item| {
            let (k, v) = item.ok()?;
            if !is_message_key(&k) {
                return None;
            }
            Some((MessageId::from_slice(&k)?, Envelope::decode(&v).ok()?))
        })
    }

    pub fn get(&self, id: MessageId) -> Option<Envelope> {
        let v = self.envelopes.get(id.as_bytes()).ok()??;
        Envelope::decode(&v).ok()
    }

    /// Number of queued messages (walks the tree; not for hot paths).
    pub fn len(&self) -> usize {
        self.envelopes
            .iter()
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| is_message_key(k)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Body segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.count()
    }

    /// What was saved of a quarantined message's body.
    pub fn quarantined_body(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.quarantine_bodies.get(key).ok()?.map(|v| v.to_vec())
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
