//! What happened to messages that left the queue: one record per message
//! (its envelope, meta, and each recipient's outcome with the reply that
//! decided it), found by what an operator knows of it ([`lookup`]), kept
//! for `[history]`'s age and count, the oldest dropped first.
//!
//! Owns: [`History`] (one per shard, in a tree of its spool: written by
//! the shard's scheduler when a message leaves, read by `queue find` and
//! `queue trace` through the admin API) and the record, [`Finished`].
//!
//! Records are kept in *chunks* of up to [`CHUNK_RECORDS`] and
//! [`CHUNK_BYTES`], in the order they finish. A chunk is appended to the
//! current file of the shard's `history/` directory (beside its spool's
//! `queue/` and `segments/`) when it is sealed (full, or a second old:
//! [`History::tick`]); a file takes chunks up to [`FILE_BYTES`] (a new
//! one at each start), and is deleted when trimming has dropped all its
//! chunks:
//!
//! ```text
//!  history/<file number, 16 hex digits>.hist: chunks, each
//!    "RPH1", table length (u32), records length (u32), then
//!    the key table: first and last finish time (u64 each), the record
//!      count (u32), then each key of each record: its 64-bit xxh3 hash
//!      and the record's slot (u16), sorted by hash;
//!    the records: (u32 length, JSON) each, in order
//! ```
//!
//! So a finished message costs the shard a JSON encoding and a few hashes,
//! and the disk one sequential append per chunk: no index entry per
//! key, no random write into a large tree (what the first version did),
//! and not sled, which rewrites a leaf of up to 16 values whole and puts
//! one over a quarter of its segment in a file of its own, created on
//! every write (what the second did: benches/results/README.md has the
//! costs), nor a file per chunk (creating one cost as much again). The
//! key tables stay in memory (10 bytes per key: about 60 MB
//! for a million one-recipient messages by count, not measured), read at
//! start-up (each file's table only); a lookup binary-searches each
//! chunk's table, newest first, and reads only the chunks that hold a
//! candidate, whose record is then checked against the lookup (a hash
//! collision costs a check, never a wrong answer). The chunk being filled
//! is searched in memory.
//!
//! Durability: none asked. Chunks are written without fsync; a crash
//! forgets the chunk being filled and what the kernel had not written (a
//! second or two of history), never a message; at start-up a file is
//! read up to its first chunk cut short. A clean
//! stop seals the chunk being filled ([`History::seal`]). The writes are
//! plain blocking file writes on the shard's thread, about 100 KiB once
//! per chunk, into the page cache.
//!
//! May call: `queue` (the spool's directory and its old kept tree, ids
//! and envelopes), `config` (`[history]`).
//! Must not: decide outcomes (the scheduler tells it), or be read on the
//! hot path (lookups are the operator's).

pub mod lookup;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use lookup::{Lookup, LookupError, LookupKind};

use crate::queue::{KeptTree, MessageId, Spool};

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

/// A message's record as it is written: borrowed from its envelope (no
/// address or reply copied), encoded as [`Finished`] reads it back.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub id: String,
    pub sender: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub pool: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::config::Priority>,
    pub size: u64,
    pub created: u64,
    pub finished: u64,
    pub attempts: u32,
    pub recipients: Vec<RecipientRecord<'a>>,
}

/// One recipient of a [`Record`] (as [`FinishedRecipient`] reads it).
#[derive(Debug, Serialize)]
pub struct RecipientRecord<'a> {
    pub address: &'a str,
    pub outcome: Outcome,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'a str>,
}

impl<'a> Record<'a> {
    /// The record of queued message `id` as it leaves at `finished`; each
    /// recipient's outcome, reply and category from `outcome_of` (the
    /// scheduler knows how it ended).
    pub fn of(
        id: MessageId,
        env: &'a crate::queue::Envelope,
        finished: u64,
        outcome_of: impl Fn(usize, &'a crate::queue::Recipient) -> RecipientRecord<'a>,
    ) -> Record<'a> {
        Record {
            id: id.to_string(),
            sender: &env.sender,
            message_id: env.message_id.as_deref(),
            idempotency_key: env.idempotency_key.as_deref(),
            meta: env.meta.as_deref(),
            pool: &env.pool,
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

    /// The hashes of the keys it is found by (the history's seed), made
    /// without building the keys.
    fn key_hashes(&self) -> Vec<u64> {
        let keyed = lookup::Keyed {
            sender: self.sender,
            message_id: self.message_id,
            idempotency_key: self.idempotency_key,
            meta: self.meta,
        };
        lookup::hashes_of(0, keyed, self.recipients.iter().map(|r| r.address))
    }
}

impl Finished {
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

/// Records per chunk at most.
pub const CHUNK_RECORDS: usize = 512;

/// Bytes of records per chunk at most: what a lookup reads to check a
/// candidate.
pub const CHUNK_BYTES: usize = 96 * 1024;

/// A chunk's first bytes.
const MAGIC: &[u8; 4] = b"RPH1";

/// A history file takes chunks until it is this long.
pub const FILE_BYTES: u64 = 8 << 20;

/// Why the history could not keep or drop a chunk.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history chunk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long a chunk is filled before it is sealed (seconds).
const SEAL_AFTER_SECS: u64 = 1;

/// A sealed chunk's key table, in memory.
struct Chunk {
    /// Where its records are: file number, offset, length.
    file: u64,
    offset: u64,
    len: u32,
    /// The latest finish time of its records (the first is on disk too).
    last: u64,
    records: u32,
    /// Each key's hash, sorted, and beside it the record's slot.
    hashes: Box<[u64]>,
    slots: Box<[u16]>,
}

/// The chunk being filled.
#[derive(Default)]
struct Open {
    /// The records' JSON, in order, and their bytes.
    records: Vec<Vec<u8>>,
    bytes: usize,
    /// (hash, slot) of each key of each record.
    keys: Vec<(u64, u16)>,
    first: u64,
    last: u64,
    /// When its first record came (clock seconds).
    opened: u64,
}

/// One shard's history (see the module header).
pub struct History {
    /// The shard's `history/` directory.
    dir: PathBuf,
    max_age_secs: u64,
    /// This shard's share of `history.max_messages`.
    max_records: u64,
    /// Sealed chunks, oldest first.
    chunks: RefCell<VecDeque<Chunk>>,
    open: RefCell<Open>,
    /// The file chunks are appended to, once one was: (number, file,
    /// length).
    writer: RefCell<Option<(u64, std::fs::File, u64)>>,
    /// The number of the next file.
    next_file: Cell<u64>,
    records: Cell<u64>,
}

/// A record's own id as a key (for `get`).
const ID_TAG: u8 = b'#';

/// The hash of a record's own id (its 16 bytes).
fn id_hash(id: MessageId) -> u64 {
    lookup::hash_parts(0, ID_TAG, &[id.as_bytes()])
}

/// The hash a key is kept under (`lookup::hash_parts` with seed 0: the
/// tables on disk outlive the process).
fn lookup_hash(l: &Lookup) -> u64 {
    l.hash(0)
}

/// History file number `n`.
fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.hist"))
}

/// The chunks of history file `n`, up to the first one cut short.
fn scan_file(dir: &Path, n: u64) -> Vec<Chunk> {
    use std::io::{Read, Seek, SeekFrom};
    let mut chunks = Vec::new();
    let Ok(mut f) = std::fs::File::open(file_path(dir, n)) else {
        return chunks;
    };
    let size = f.metadata().map_or(0, |m| m.len());
    let mut at = 0u64;
    let mut head = [0u8; 12];
    while at + 12 <= size && f.read_exact(&mut head).is_ok() && &head[..4] == MAGIC {
        let table_len = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        let records_len = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let offset = at + 12 + u64::from(table_len);
        let end = offset + u64::from(records_len);
        if end > size {
            break;
        }
        let mut table = vec![0u8; table_len as usize];
        if f.read_exact(&mut table).is_err() {
            break;
        }
        let Some(chunk) = Chunk::decode(n, offset, records_len, &table) else {
            break;
        };
        chunks.push(chunk);
        if f.seek(SeekFrom::Start(end)).is_err() {
            break;
        }
        at = end;
    }
    chunks
}

/// The records part of `chunk` (None: gone or damaged).
fn read_records(dir: &Path, chunk: &Chunk) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file_path(dir, chunk.file)).ok()?;
    let mut records = vec![0u8; chunk.len as usize];
    f.read_exact_at(&mut records, chunk.offset).ok()?;
    Some(records)
}

impl Chunk {
    /// Reads a key table as stored (None: damaged), of the chunk whose
    /// records are `len` bytes at `offset` in file `file`.
    fn decode(file: u64, offset: u64, len: u32, table: &[u8]) -> Option<Chunk> {
        let last = u64::from_be_bytes(table.get(8..16)?.try_into().ok()?);
        let records = u32::from_be_bytes(table.get(16..20)?.try_into().ok()?);
        let body = table.get(20..)?;
        if body.len() % 10 != 0 {
            return None;
        }
        let (hashes, slots) = body
            .chunks_exact(10)
            .map(|e| {
                let hash = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
                (hash, u16::from_be_bytes([e[8], e[9]]))
            })
            .unzip::<_, _, Vec<u64>, Vec<u16>>();
        Some(Chunk {
            file,
            offset,
            len,
            last,
            records,
            hashes: hashes.into(),
            slots: slots.into(),
        })
    }

    /// The slots whose keys hash to `hash`, the newest first.
    fn slots_of(&self, hash: u64) -> Vec<u16> {
        let from = self.hashes.partition_point(|&h| h < hash);
        let to = self.hashes.partition_point(|&h| h <= hash);
        let mut slots = self.slots[from..to].to_vec();
        slots.sort_unstable_by(|a, b| b.cmp(a));
        slots.dedup();
        slots
    }
}

/// The records of a chunk's blob, in order.
fn records_of(blob: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = blob.get(at..at + 4) {
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(json) = blob.get(at + 4..at + 4 + len) else {
            break;
        };
        out.push(json);
        at += 4 + len;
    }
    out
}

impl History {
    /// The history in `spool` (`shards`: how many share
    /// `history.max_messages`). Reads every chunk's key table: blocking,
    /// start-up only.
    pub fn open(spool: &Spool, cfg: &crate::config::HistoryConfig, shards: usize) -> History {
        forget_the_kept_tree(spool);
        let dir = spool.path().join("history");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            log::error!("history {}: {e}", dir.display());
        }
        let mut files: Vec<u64> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let name = e.ok()?.file_name();
                        let hex = name.to_str()?.strip_suffix(".hist")?;
                        u64::from_str_radix(hex, 16).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort_unstable();
        let chunks: VecDeque<Chunk> = files.iter().flat_map(|&n| scan_file(&dir, n)).collect();
        let records = chunks.iter().map(|c| c.records as u64).sum();
        let next_file = files.last().map_or(0, |n| n + 1);
        History {
            dir,
            max_age_secs: cfg.max_age_secs,
            max_records: cfg.max_messages.div_ceil(shards.max(1) as u64).max(1),
            chunks: RefCell::new(chunks),
            open: RefCell::default(),
            writer: RefCell::new(None),
            next_file: Cell::new(next_file),
            records: Cell::new(records),
        }
    }

    /// Whether finished messages are written at all.
    pub fn is_on(&self) -> bool {
        self.max_age_secs > 0
    }

    /// Records kept (the chunk being filled included).
    pub fn len(&self) -> u64 {
        self.records.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `rec`, message `id`'s record (a no-op when the history is
    /// off): in memory at once, on disk when its chunk is sealed.
    pub fn record(&self, id: MessageId, rec: &Record<'_>) -> Result<(), HistoryError> {
        if !self.is_on() {
            return Ok(());
        }
        let full = {
            let mut open = self.open.borrow_mut();
            let slot = open.records.len() as u16;
            if open.records.is_empty() {
                open.first = rec.finished;
                open.opened = rec.finished;
            }
            open.last = open.last.max(rec.finished);
            let json = serde_json::to_vec(rec).expect("a record always serializes");
            open.bytes += json.len() + 4;
            open.records.push(json);
            open.keys.push((id_hash(id), slot));
            for hash in rec.key_hashes() {
                open.keys.push((hash, slot));
            }
            open.records.len() >= CHUNK_RECORDS || open.bytes >= CHUNK_BYTES
        };
        self.records.set(self.records.get() + 1);
        if full {
            self.seal()?;
        }
        Ok(())
    }

    /// Writes the chunk being filled (if any) as a sealed chunk. The
    /// scheduler calls it when the chunk is full, a second old, or the
    /// shard stops.
    pub fn seal(&self) -> Result<(), HistoryError> {
        let open = std::mem::take(&mut *self.open.borrow_mut());
        if open.records.is_empty() {
            return Ok(());
        }
        let mut keys = open.keys;
        keys.sort_unstable();
        let table_len = 20 + keys.len() * 10;
        let records_len: usize = open.records.iter().map(|r| r.len() + 4).sum();
        let mut file = Vec::with_capacity(12 + table_len + records_len);
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&(table_len as u32).to_be_bytes());
        file.extend_from_slice(&(records_len as u32).to_be_bytes());
        file.extend_from_slice(&open.first.to_be_bytes());
        file.extend_from_slice(&open.last.to_be_bytes());
        file.extend_from_slice(&(open.records.len() as u32).to_be_bytes());
        for (hash, slot) in &keys {
            file.extend_from_slice(&hash.to_be_bytes());
            file.extend_from_slice(&slot.to_be_bytes());
        }
        for r in &open.records {
            file.extend_from_slice(&(r.len() as u32).to_be_bytes());
            file.extend_from_slice(r);
        }
        match self.append(&file) {
            Ok((n, at)) => {
                let (offset, len) = (at + 12 + table_len as u64, records_len as u32);
                let table = &file[12..12 + table_len];
                let chunk = Chunk::decode(n, offset, len, table).expect("a table just encoded");
                self.chunks.borrow_mut().push_back(chunk);
                Ok(())
            }
            Err(e) => {
                // Not kept: these records are forgotten, not retried.
                self.records
                    .set(self.records.get().saturating_sub(open.records.len() as u64));
                Err(e)
            }
        }
    }

    /// Appends a sealed chunk to the current file (a new one when there
    /// is none yet or it is full): the file's number and the chunk's
    /// offset in it. A failed write closes the file, and the next chunk
    /// goes to a new one.
    fn append(&self, chunk: &[u8]) -> Result<(u64, u64), HistoryError> {
        use std::io::Write;
        let mut writer = self.writer.borrow_mut();
        if writer.as_ref().is_none_or(|(_, _, len)| *len >= FILE_BYTES) {
            let n = self.next_file.get();
            self.next_file.set(n + 1);
            let path = file_path(&self.dir, n);
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|source| HistoryError::Io { path, source })?;
            *writer = Some((n, file, 0));
        }
        let (n, file, len) = writer.as_mut().expect("opened above");
        let (n, at) = (*n, *len);
        if let Err(source) = file.write_all(chunk) {
            *writer = None;
            let path = file_path(&self.dir, n);
            return Err(HistoryError::Io { path, source });
        }
        *len += chunk.len() as u64;
        Ok((n, at))
    }

    /// Every tick of the scheduler's timer: seals a chunk that has been
    /// filled for a second, and drops what is past `[history]`'s age or
    /// count.
    pub fn tick(&self, now: u64) -> Result<(), HistoryError> {
        let stale = {
            let open = self.open.borrow();
            !open.records.is_empty() && now.saturating_sub(open.opened) >= SEAL_AFTER_SECS
        };
        if stale {
            self.seal()?;
        }
        self.trim(now)
    }

    /// The records that `lookup` finds, finished at or after `since`,
    /// newest first, at most `limit`.
    pub fn find(&self, lookup: &Lookup, since: u64, limit: usize) -> Vec<Finished> {
        let hash = lookup_hash(lookup);
        let fits = |rec: &Finished| rec.finished >= since && rec.keys().contains(lookup);
        let mut found = Vec::new();
        {
            let open = self.open.borrow();
            let mut slots: Vec<u16> = open
                .keys
                .iter()
                .filter(|(h, _)| *h == hash)
                .map(|(_, s)| *s)
                .collect();
            slots.sort_unstable_by(|a, b| b.cmp(a));
            slots.dedup();
            for slot in slots {
                let rec = serde_json::from_slice(&open.records[slot as usize]).ok();
                found.extend(rec.filter(fits));
            }
        }
        for chunk in self.chunks.borrow().iter().rev() {
            if found.len() >= limit || chunk.last < since {
                break;
            }
            let slots = chunk.slots_of(hash);
            if slots.is_empty() {
                continue;
            }
            let Some(blob) = read_records(&self.dir, chunk) else {
                continue;
            };
            let records = records_of(&blob);
            for slot in slots {
                let rec = records
                    .get(slot as usize)
                    .and_then(|json| serde_json::from_slice::<Finished>(json).ok());
                found.extend(rec.filter(fits));
            }
        }
        found.truncate(limit);
        found
    }

    /// The record of message `id`, if it is kept.
    pub fn get(&self, id: MessageId) -> Option<Finished> {
        let text = id.to_string();
        let hash = id_hash(id);
        let mine = |rec: &Finished| rec.id == text;
        {
            let open = self.open.borrow();
            for (_, slot) in open.keys.iter().filter(|(h, _)| *h == hash) {
                let rec = serde_json::from_slice(&open.records[*slot as usize]).ok();
                if let Some(rec) = rec.filter(mine) {
                    return Some(rec);
                }
            }
        }
        for chunk in self.chunks.borrow().iter().rev() {
            for slot in chunk.slots_of(hash) {
                let blob = read_records(&self.dir, chunk)?;
                let rec = records_of(&blob)
                    .get(slot as usize)
                    .and_then(|json| serde_json::from_slice::<Finished>(json).ok());
                if let Some(rec) = rec.filter(mine) {
                    return Some(rec);
                }
            }
        }
        None
    }

    /// Drops the oldest chunks while they are past `history.max_age_secs`
    /// or the records are over this shard's share of
    /// `history.max_messages` (a whole chunk at a time).
    fn trim(&self, now: u64) -> Result<(), HistoryError> {
        let cutoff = now.saturating_sub(self.max_age_secs);
        let mut chunks = self.chunks.borrow_mut();
        while let Some(oldest) = chunks.front() {
            let over = self.records.get() > self.max_records;
            if oldest.last >= cutoff && !over {
                break;
            }
            // The file goes with its last chunk (never the one written to).
            let file = oldest.file;
            let next = chunks.get(1).map(|c| c.file);
            let writing = self.writer.borrow().as_ref().map(|w| w.0);
            if next != Some(file) && writing != Some(file) {
                let path = file_path(&self.dir, file);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(HistoryError::Io { path, source: e });
                    }
                    _ => {}
                }
            }
            self.records
                .set(self.records.get().saturating_sub(oldest.records as u64));
            chunks.pop_front();
        }
        Ok(())
    }
}

/// Empties the sled tree an earlier version kept the history in (its
/// records are not carried over).
fn forget_the_kept_tree(spool: &Spool) {
    let tree = spool.kept(KeptTree::History);
    let keys: Vec<_> = tree.with_prefix(b"").map(|(k, _)| k).collect();
    if keys.is_empty() {
        return;
    }
    let gone = keys.iter().map(|k| (k, None::<&[u8]>));
    if let Err(e) = tree.write_all(gone) {
        log::warn!("history: the old records in the spool database stay: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::queue::{Envelope, SpoolOptions};

    /// A delivered message to `rcpt`, finished at `finished`, recorded in
    /// `h`; what the history should give back for it.
    fn record(h: &History, spool: &Spool, rcpt: &str, finished: u64) -> (MessageId, Finished) {
        let id = spool.new_id();
        let mut env = Envelope::new("app@shop.example".into(), vec![rcpt.into()], finished - 5);
        env.message_id = Some(format!("{id}@shop.example").into());
        env.meta = Some(Box::new(serde_json::json!({"campaign": "spring"})));
        let rec = Record::of(id, &env, finished, |_, r| RecipientRecord {
            address: &r.address,
            outcome: Outcome::Delivered,
            attempts: 1,
            reply: Some("250 2.0.0 ok"),
            category: None,
        });
        h.record(id, &rec).unwrap();
        let expected = serde_json::from_value(serde_json::to_value(&rec).unwrap()).unwrap();
        (id, expected)
    }

    fn history(dir: &std::path::Path, cfg: &HistoryConfig) -> (Spool, History) {
        let spool = Spool::open(dir, 0, &SpoolOptions::default()).unwrap();
        let history = History::open(&spool, cfg, 1);
        (spool, history)
    }

    #[test]
    fn finds_by_every_key_newest_first_within_the_window_before_and_after_sealing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, h) = history(dir.path(), &HistoryConfig::default());
        let (a, ra) = record(&h, &spool, "Bob@Example.com", 1_000);
        h.seal().unwrap();
        let (b, rb) = record(&h, &spool, "bob@example.com", 2_000);
        let (c, rc) = record(&h, &spool, "Bob@example.COM", 3_000);
        let bob = Lookup::parse("rcpt", "Bob@EXAMPLE.com").unwrap();
        let ids = |v: Vec<Finished>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
        let campaign = Lookup::parse("meta", "campaign=spring").unwrap();
        let mid = Lookup::parse("message_id", &format!("<{b}@shop.example>")).unwrap();
        // Two in the chunk being filled, one sealed; then all sealed.
        for round in 0..2 {
            assert_eq!(
                ids(h.find(&bob, 0, 10)),
                [c.to_string(), a.to_string()],
                "{round}"
            );
            assert_eq!(ids(h.find(&bob, 2_000, 10)), [c.to_string()]);
            assert_eq!(ids(h.find(&bob, 0, 1)), [c.to_string()]);
            assert_eq!(h.find(&campaign, 0, 10).len(), 3);
            assert_eq!(ids(h.find(&mid, 0, 10)), [b.to_string()]);
            assert_eq!(h.get(b).as_ref(), Some(&rb));
            assert_eq!(h.get(a).as_ref(), Some(&ra));
            assert_eq!(h.len(), 3);
            h.seal().unwrap();
        }
        // A restart reads the sealed chunks' tables; a chunk file cut
        // short (a crash while the kernel wrote it) is skipped.
        drop(h);
        let hist = dir.path().join("shard-0/history");
        let whole = std::fs::read(file_path(&hist, 0)).unwrap();
        std::fs::write(file_path(&hist, 9), &whole[..whole.len() - 3]).unwrap();
        let h = History::open(&spool, &HistoryConfig::default(), 1);
        assert_eq!(h.len(), 3 + 1, "the torn file's whole chunk counts");
        assert_eq!(h.next_file.get(), 10, "a new file at each start");
        drop(h);
        std::fs::remove_file(file_path(&hist, 9)).unwrap();
        let h = History::open(&spool, &HistoryConfig::default(), 1);
        assert_eq!(h.len(), 3);
        assert_eq!(ids(h.find(&bob, 0, 10)), [c.to_string(), a.to_string()]);
        assert_eq!(h.get(c), Some(rc));
    }

    #[test]
    fn a_chunk_is_sealed_when_full_or_a_second_old() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, h) = history(dir.path(), &HistoryConfig::default());
        // Full: by count or by bytes, whichever comes first.
        let mut n = 0;
        while h.chunks.borrow().is_empty() {
            record(&h, &spool, &format!("u{n}@b.example"), 100);
            n += 1;
        }
        assert!(n <= CHUNK_RECORDS);
        assert!(h.open.borrow().records.is_empty());
        let blob = read_records(&h.dir, &h.chunks.borrow()[0]).unwrap();
        assert!(
            n == CHUNK_RECORDS || blob.len() >= CHUNK_BYTES,
            "{n} {}",
            blob.len()
        );
        assert!(blob.len() < CHUNK_BYTES + 4096);
        // A second old.
        record(&h, &spool, "last@b.example", 100);
        h.tick(100).unwrap();
        assert_eq!(h.chunks.borrow().len(), 1);
        h.tick(101).unwrap();
        assert_eq!(h.chunks.borrow().len(), 2);
        assert!(h.open.borrow().records.is_empty());
        let last = Lookup::parse("rcpt", "last@b.example").unwrap();
        assert_eq!(h.find(&last, 0, 10).len(), 1);
    }

    #[test]
    fn trimming_drops_the_old_and_the_excess_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HistoryConfig {
            max_age_secs: 1_000,
            max_messages: 2,
        };
        let (spool, mut h) = history(dir.path(), &cfg);
        let mut ids = Vec::new();
        // Each chunk in a file of its own (a new file at each start).
        for t in [100, 5_000, 5_100, 5_200] {
            let (id, _) = record(&h, &spool, "a@b.example", t);
            h.seal().unwrap();
            ids.push(id);
            drop(h);
            h = History::open(&spool, &cfg, 1);
        }
        // 100 is too old; of the three left, one is over the count.
        h.tick(5_300).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.get(ids[0]), None);
        assert_eq!(h.get(ids[1]), None);
        let a = Lookup::parse("rcpt", "a@b.example").unwrap();
        assert_eq!(h.find(&a, 0, 10).len(), 2);
        // The dropped chunks' files are gone.
        assert_eq!(std::fs::read_dir(&h.dir).unwrap().count(), 2);
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
        let (id, _) = record(&h, &spool, "a@b.example", 100);
        assert!(h.is_empty());
        assert_eq!(h.get(id), None);
    }
}
