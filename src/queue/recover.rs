//! Recovery at start-up: a shard's spool read back after any stop (sled's
//! records, the journal's frames sled had not persisted replayed,
//! damaged records quarantined), with progress logged; and the taking
//! over of a spool whose shard no longer runs.
//!
//! Owns: the `impl Spool` blocks for [`Spool::recover`] (and
//! [`Spool::recover_each`], which hands each message to its caller as it
//! is read rather than gathering them all: a shard's start streams them
//! into its scheduler) and [`Spool::adopt_orphan`], and their steps.
//!
//! Must not: serve before it has finished (the shard starts its listeners
//! after recovery: `server::parts`).

use super::*;
use std::fs;

/// How often recovery reports its progress.
const RECOVERY_PROGRESS: std::time::Duration = std::time::Duration::from_secs(5);

/// Long start-up work (recovery, taking over a shard) says how far it is
/// once per [`RECOVERY_PROGRESS`].
struct Progress(std::time::Instant);

impl Progress {
    fn new() -> Progress {
        Progress(std::time::Instant::now())
    }

    /// Whether a progress line is due (and if so, the next one is counted
    /// from now).
    fn due(&mut self) -> bool {
        let due = self.0.elapsed() >= RECOVERY_PROGRESS;
        if due {
            self.0 = std::time::Instant::now();
        }
        due
    }
}

/// Removes a spool directory whose sled database was just closed (sled
/// lets go of its files a moment after the last handle is dropped).
fn remove_dir_when_unlocked(dir: &Path) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() >= LOCK_WAIT => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// A replayed frame's record as sled keeps it: its body's place filled
/// in, its rider taken off; a record that does not decode is kept as it
/// is (and quarantined next).
fn replayed_record(env: Option<Envelope>, f: &frame::ReplayedFrame) -> Vec<u8> {
    match env {
        Some(mut env) => {
            env.body = f.body;
            env.rider = None;
            env.encode()
        }
        None => f.record.clone(),
    }
}

impl Spool {
    /// Makes the queue consistent after a crash. Blocking; start-up only.
    ///
    /// A record that does not decode, or whose segment is missing or too
    /// short, moves to the quarantine tree (logged, never dropped), with
    /// whatever of its body is still readable, so that the segment itself
    /// need not be kept. Segments
    /// that no record refers to hold only finished or never-acknowledged
    /// mail and are removed.
    pub fn recover(&self) -> Result<RecoveryReport, SpoolError> {
        Ok(self.recover_messages()?.report)
    }

    /// [`Spool::recover`], keeping what it decoded.
    pub(super) fn recover_messages(&self) -> Result<Recovered, SpoolError> {
        let mut messages = Vec::new();
        let report = self.recover_each(|id, env| messages.push((id, env)))?;
        Ok(Recovered { report, messages })
    }

    /// [`Spool::recover`], handing each message it decoded to `found` as
    /// it goes (the scheduler takes them over one by one: a Vec of a
    /// million envelopes would double the memory a restart needs). Logs
    /// how far it is every few seconds: a queue of millions takes a while.
    pub fn recover_each(
        &self,
        mut found: impl FnMut(MessageId, Envelope),
    ) -> Result<RecoveryReport, SpoolError> {
        let mut report = RecoveryReport {
            replayed: self.replay_journal()?,
            ..RecoveryReport::default()
        };
        let mut watermarks = Vec::new();
        let mut progress = Progress::new();
        for item in self.envelopes.iter() {
            let (key, value) = item.map_err(|source| self.db_err(source))?;
            if progress.due() {
                log::info!(
                    "spool shard {}: recovering, {} messages read so far",
                    self.shard,
                    report.messages
                );
            }
            if key.len() == watermark_key(0).len() {
                watermarks.push(key);
                continue;
            }
            match self.adopt_record(&key, &value) {
                Ok((id, env)) => {
                    found(id, env);
                    report.messages += 1;
                }
                Err(reason) => {
                    self.quarantine_record(&key, &value, &reason)?;
                    report.quarantined += 1;
                }
            }
        }
        self.envelopes
            .flush()
            .map_err(|source| self.db_err(source))?;
        let removed = self.segments.remove_unreferenced();
        report.segments_removed = removed.len();
        // Watermarks of segments that are gone, durably gone before a new
        // segment can take the number: this run numbers segments on from
        // the highest one left, and a stale watermark would make a crash's
        // replay skip the new segment's first frames. (A watermark goes
        // with its segment, but only with the next flush, so a crash can
        // leave one behind.)
        let present = self.segments.sequence_numbers();
        let mut stale = 0;
        for key in watermarks {
            let seq = u32::from_be_bytes(key[2..6].try_into().expect("6-byte key"));
            if !present.contains(&seq) {
                self.envelopes
                    .remove(key)
                    .map_err(|source| self.db_err(source))?;
                stale += 1;
            }
        }
        if stale > 0 {
            self.envelopes
                .flush()
                .map_err(|source| self.db_err(source))?;
        }
        Ok(report)
    }

    /// Puts back into sled the records of frames past each segment's
    /// watermark that sled lost (acknowledged, or at least written, before
    /// a crash that came before sled's flush). Returns how many. A message
    /// removed after its frame's watermark was last written comes back: a
    /// possible duplicate, never a loss.
    fn replay_journal(&self) -> Result<usize, SpoolError> {
        let mut replayed = 0;
        for seq in self.segments.sequence_numbers() {
            let key = watermark_key(seq);
            let from = match self.envelopes.get(key) {
                Ok(Some(v)) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
                Ok(None) => 0,
                Err(source) => return Err(self.db_err(source)),
            };
            let frames = self.segments.replay(seq, from);
            let Some(last) = frames.last().map(|f| f.end) else {
                continue;
            };
            let mut batch = sled::Batch::default();
            for f in frames {
                let env = Envelope::decode(&f.record).ok();
                if let Some(rider) = env.as_ref().and_then(|e| e.rider.as_ref()) {
                    self.replay_rider(rider)?;
                }
                // A record sled kept is as new as the frame's, or newer.
                if self.envelopes.contains_key(f.id).unwrap_or(false) {
                    continue;
                }
                batch.insert(f.id.as_slice(), replayed_record(env, &f));
                replayed += 1;
            }
            batch.insert(&key, &last.to_be_bytes());
            self.envelopes
                .apply_batch(batch)
                .map_err(|source| self.db_err(source))?;
        }
        if replayed > 0 {
            log::warn!(
                "spool shard {}: replayed {replayed} messages from the journal",
                self.shard
            );
        }
        Ok(replayed)
    }

    /// Puts a frame's rider back into its tree if sled lost it (the round
    /// inserted it right after the message's record; a crash before the
    /// next flush can lose either). A record already there is left: it is
    /// the rider's, or newer.
    fn replay_rider(&self, rider: &KeptRider) -> Result<(), SpoolError> {
        let Some((tree, key, value)) = rider.decode() else {
            return Ok(());
        };
        let tree = &self.kept[tree as usize];
        if !tree.contains_key(key).unwrap_or(false) {
            tree.insert(key, value)
                .map_err(|source| self.db_err(source))?;
        }
        Ok(())
    }

    fn adopt_record(&self, key: &[u8], value: &[u8]) -> Result<(MessageId, Envelope), String> {
        let id = MessageId::from_slice(key).ok_or("queue key is not a message id")?;
        let env = Envelope::decode(value).map_err(|e| format!("undecodable record: {e}"))?;
        self.segments.adopt(&env.body)?;
        Ok((id, env))
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
        let body = Envelope::decode(value)
            .map(|env| self.segments.read_available(&env.body))
            .unwrap_or_default();
        self.quarantine_bodies
            .insert(key, body)
            .and_then(|_| {
                self.quarantine
                    .insert(key, serde_json::to_vec(&entry).unwrap_or_default())
            })
            .and_then(|_| self.envelopes.remove(key))
            .map(|_| ())
            .map_err(|source| self.db_err(source))
    }

    /// Takes over the spool of a shard that no longer runs (the server was
    /// started with fewer shards than wrote the spool): every message in
    /// `orphan`'s directory is copied into this spool under its own id, with
    /// its state (recipients, attempts, retry time), durably (the group
    /// commit); then the orphan's directory is removed. Returns what was
    /// moved, for the scheduler to take over.
    ///
    /// Crash-safe: the orphan is removed only after every copy is on disk,
    /// and a copy is keyed by the message's own id, so a crash in between
    /// makes the next start copy the same messages again, overwriting
    /// rather than duplicating them. The id still names the shard that
    /// minted it; `MessageId::shard` maps it to this one (`k % shards`).
    pub async fn adopt_orphan(
        &self,
        root: &Path,
        orphan: u16,
        opts: &SpoolOptions,
    ) -> Result<Vec<(MessageId, Envelope)>, SpoolError> {
        let old = Spool::open(root, orphan, opts)?;
        let found = old.recover_messages()?;
        let total = found.messages.len();
        let mut moved = Vec::with_capacity(total);
        let mut progress = Progress::new();
        for (id, env) in found.messages {
            let body = old.read_body_blocking(id, &env)?;
            moved.push((id, self.enqueue(id, env, body).await?));
            if progress.due() {
                log::info!(
                    "spool shard {}: taking over shard {orphan}: {} of {total} messages",
                    self.shard,
                    moved.len()
                );
            }
        }
        for tree in KeptTree::ALL {
            let (from, to) = (old.kept(tree), self.kept(tree));
            for (key, value) in from.entries() {
                to.put(&key, &value)?;
            }
        }
        self.make_durable().await?;
        let dir = old.path.clone();
        drop(old);
        remove_dir_when_unlocked(&dir).map_err(|source| SpoolError::Open { path: dir, source })?;
        log::info!(
            "spool shard {}: took over shard {orphan}'s {total} messages",
            self.shard
        );
        Ok(moved)
    }
}
