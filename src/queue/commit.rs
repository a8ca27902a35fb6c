//! Group commit: one fdatasync serves every message waiting for it.
//!
//! Owns: [`GroupCommit`], one per shard: the order in which new messages
//! become durable, the commit rounds, and the periodic sled flush.
//!
//! A new message is one *frame* (its queue record and body) appended to the
//! active segment (`queue::segment`). Frames are registered in the order
//! their room was reserved, which is their order in the segment. A round
//! takes the longest run of frames, from the oldest, whose writes are
//! complete, and:
//!
//! 1. fdatasyncs the segments its frames are in (and the segment
//!    directory if a segment was created), on the shard's thread or through
//!    io_uring ([`SyncMode`]): the frames, records included, are now
//!    durable;
//! 2. inserts their records into sled (no flush);
//!
//! then answers every waiter: only now may the session say 250. sled is not
//! flushed in the round. It is flushed every [`FLUSH_INTERVAL`] (and on
//! stop); a crash before that loses sled's newest writes but not the
//! frames: recovery replays every frame past its segment's *watermark*.
//!
//! A watermark says "every frame of this segment below this offset had its
//! record in sled at a flush that completed". The flush takes note of how
//! far rounds have inserted, flushes, and only then writes the watermarks
//! (made durable by the next flush). So "below the watermark but not in
//! sled" can only mean "removed", whatever order sled writes its log in.
//! (Records are single inserts, not `apply_batch`: in sled 0.34 that writes
//! out the log buffer twice per call, which cost more than everything else
//! in a round.)
//!
//! Why a run from the oldest frame: a frame may finish writing before an
//! earlier one. Were it acknowledged first, a crash could leave a hole
//! (the earlier frame unwritten) in front of it, and replay stops at the
//! first spot that is not a whole frame. A failed write therefore also
//! fails every later frame of the same segment, and the segment is sealed;
//! so does a failed sync (after which the kernel may report later syncs of
//! the file as good although the failed pages never reached the disk).
//!
//! With [`SyncMode::IoUring`], rounds overlap: up to [`ROUNDS_IN_FLIGHT`]
//! run at once, so a message
//! written just after a round began starts its own sync at once instead of
//! waiting for that round to end and then for a whole round of its own
//! (that wait was most of the p99 acceptance latency). Rounds still
//! *finish* in order: each waits for the one before it before it inserts
//! its records and answers. That keeps sled's inserts, the watermarks and
//! the failure rule above in frame order, and a round never answers before
//! an earlier round's directory sync (a new segment's name) is done.
//!
//! State changes and removals (`Spool::update`, `Spool::remove`) go to sled
//! directly and become durable with the next flush: a crash can lose the
//! last ones, which repeats a delivery attempt but never loses a message
//! (a duplicate, never a loss). Segments are unlinked only after a flush
//! that covers the removal of their last record.
//!
//! Concurrency: the frame queue is `Rc<RefCell<_>>` on the shard's
//! executor. Only the periodic sled flush runs on the blocking thread. An
//! inline sync blocks the shard for one fdatasync; sessions that send data
//! meanwhile find their bytes in the socket afterwards and join the next
//! round, which is group commit at its plainest.
//!
//! Must not: call sled's `flush_async` (it deadlocks with 8 or more
//! concurrent callers in sled 0.34.7, upstream sled#1308).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use futures::channel::oneshot;
use glommio::io::BufferedFile;

use super::segment::Segments;

/// How often sled is flushed: the most recent state changes a crash can
/// lose (they only cause a repeated attempt: the deliveries of the last
/// interval are made again after a SIGKILL), and how long a finished
/// segment lingers on disk. One scheduler tick (200 ms); at 400 ms a kill
/// under load cost twice the duplicates for no measurable throughput
/// (benches/results/README.md, 2026-12-07).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

pub use crate::config::SyncMode;

/// Commit rounds that may be under way at once (see the module doc). Two
/// are enough to take the round-boundary wait out of the latency; more
/// would mostly split batches into more syncs.
pub const ROUNDS_IN_FLIGHT: usize = 2;

/// The sled key of segment `seq`'s watermark. Message keys are 16 bytes;
/// these are 6, so they never collide.
pub fn watermark_key(seq: u32) -> [u8; 6] {
    let mut k = [0u8; 6];
    k[..2].copy_from_slice(b"wm");
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

enum Slot {
    /// Room reserved, write under way.
    Writing,
    /// Written; waiting for a round.
    Written {
        key: [u8; 16],
        record: Vec<u8>,
        rider: Option<RiderWrite>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Its write failed, or an earlier one in its segment did.
    Failed,
}

struct Frame {
    segment: u32,
    /// Offset just past the frame.
    end: u64,
    slot: Slot,
}

/// A record for another tree of the spool that rides in a message's
/// frame (`kept::KeptRider`): inserted in the same round as the message's
/// record, so a watermark that covers the one covers the other.
pub type RiderWrite = (sled::Tree, Vec<u8>, Vec<u8>);

/// A frame's place in the queue, from [`GroupCommit::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTicket(u64);

/// How far a shard's event outbox (`outbox`) is written and durable: a
/// flush makes durable what was written when it began.
#[derive(Debug, Default)]
pub struct FlushMark {
    pub written: std::cell::Cell<u64>,
    pub durable: std::cell::Cell<u64>,
}

#[derive(Clone)]
pub struct GroupCommit {
    db: sled::Db,
    mark: Rc<FlushMark>,
    envelopes: sled::Tree,
    segments: Rc<Segments>,
    sync: SyncMode,
    state: Rc<RefCell<CommitQueue>>,
}

#[derive(Default)]
struct CommitQueue {
    /// Frames in reservation order; `first` is the ticket of the front one.
    frames: VecDeque<Frame>,
    first: u64,
    /// Rounds under way.
    rounds: usize,
    /// Resolves when the newest round under way has finished.
    tail: Option<oneshot::Receiver<()>>,
    /// Segments with a failed sync: no frame in them is acknowledged.
    poisoned: HashSet<u32>,
    /// sled was written since the last flush.
    dirty: bool,
    /// Per segment, the end of the frames whose records rounds inserted.
    applied: HashMap<u32, u64>,
    /// Per segment, the watermark last written to sled.
    marked: HashMap<u32, u64>,
    flushing: bool,
    /// Told when the flush under way ends.
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Whether the last flush succeeded.
    last_flush_ok: bool,
}

impl GroupCommit {
    pub fn new(
        db: sled::Db,
        envelopes: sled::Tree,
        segments: Rc<Segments>,
        sync: SyncMode,
        mark: Rc<FlushMark>,
    ) -> GroupCommit {
        GroupCommit {
            db,
            mark,
            envelopes,
            segments,
            sync,
            state: Rc::default(),
        }
    }

    /// Registers a frame just reserved at the end of `segment` (call it
    /// right after the reservation, with no await in between).
    pub fn register(&self, segment: u32, end: u64) -> CommitTicket {
        let mut st = self.state.borrow_mut();
        let ticket = CommitTicket(st.first + st.frames.len() as u64);
        st.frames.push_back(Frame {
            segment,
            end,
            slot: Slot::Writing,
        });
        ticket
    }

    /// The frame's write is complete: resolves once a round has synced it
    /// and applied `record` under `key` to sled (and `rider` to its tree,
    /// right after).
    pub async fn written(
        &self,
        ticket: CommitTicket,
        key: [u8; 16],
        record: Vec<u8>,
        rider: Option<RiderWrite>,
    ) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        {
            let mut st = self.state.borrow_mut();
            let frame = st.frame(ticket).ok_or("frame lost")?;
            if matches!(frame.slot, Slot::Failed) {
                return Err("an earlier write to the segment failed".into());
            }
            frame.slot = Slot::Written {
                key,
                record,
                rider,
                done,
            };
        }
        self.kick();
        rx.await
            .unwrap_or_else(|_| Err("group commit dropped".into()))
    }

    /// The frame's write failed: it and every later frame of its segment
    /// fail (replay could not get past the hole).
    pub fn failed(&self, ticket: CommitTicket) {
        let segment = self.state.borrow_mut().frame(ticket).map(|f| f.segment);
        if let Some(segment) = segment {
            self.fail_segment_from(ticket.0, segment);
        }
    }

    /// Fails the frames of `segment` from ticket `from` on and seals it.
    fn fail_segment_from(&self, from: u64, segment: u32) {
        let mut st = self.state.borrow_mut();
        let skip = from.saturating_sub(st.first) as usize;
        for frame in st.frames.iter_mut().skip(skip) {
            if frame.segment != segment {
                continue;
            }
            if let Slot::Written { done, .. } = std::mem::replace(&mut frame.slot, Slot::Failed) {
                let _ = done.send(Err("an earlier write to the segment failed".into()));
            }
        }
        drop(st);
        self.segments.seal(segment);
        self.kick();
    }

    /// Starts a round if frames at the front are ready and fewer than
    /// [`ROUNDS_IN_FLIGHT`] are under way.
    fn kick(&self) {
        let start = {
            let mut st = self.state.borrow_mut();
            let ready = st
                .frames
                .front()
                .is_some_and(|f| !matches!(f.slot, Slot::Writing));
            let start = ready && st.rounds < ROUNDS_IN_FLIGHT;
            st.rounds += usize::from(start);
            start
        };
        if start {
            glommio::spawn_local(self.clone().run_rounds()).detach();
        }
    }

    /// Whether a round or a flush is queued or running.
    pub fn busy(&self) -> bool {
        let st = self.state.borrow();
        st.rounds > 0 || st.flushing
    }

    /// A state change or removal went to sled directly.
    pub fn touched(&self) {
        self.state.borrow_mut().dirty = true;
    }

    /// Makes every change to sled so far durable: returns once a flush
    /// that began after this call has completed. For changes whose caller
    /// must be told they are durable (the admin's suspensions).
    pub async fn flush_durably(&self) -> Result<(), String> {
        loop {
            let in_flight = {
                let mut st = self.state.borrow_mut();
                match st.flushing {
                    true => {
                        let (tx, rx) = oneshot::channel();
                        st.flush_waiters.push(tx);
                        Some(rx)
                    }
                    false => None,
                }
            };
            let Some(done) = in_flight else {
                // No flush under way: start one that covers everything.
                self.touched();
                self.flush().await;
                return match self.state.borrow().last_flush_ok {
                    true => Ok(()),
                    false => Err("sled flush failed".into()),
                };
            };
            // That flush began before this call: wait, then flush again.
            let _ = done.await;
        }
    }

    /// Runs rounds while frames are ready; one of [`ROUNDS_IN_FLIGHT`].
    async fn run_rounds(self) {
        loop {
            if self.sync == SyncMode::Inline {
                // Let every task that is ready to run write its frame
                // first: an inline sync blocks the shard, so whatever is
                // not in this round waits for all of it. Without this a
                // round started by the first writer (glommio may run a new
                // task at once) would carry one frame.
                futures_lite::future::yield_now().await;
            }
            let (ready, before, finished) = {
                let mut st = self.state.borrow_mut();
                let ready = st.take_ready();
                if ready.is_empty() {
                    st.rounds -= 1;
                    return;
                }
                let (tx, rx) = oneshot::channel();
                (ready, st.tail.replace(rx), tx)
            };
            let start = Instant::now();
            let mut segments: Vec<u32> = ready.iter().map(|r| r.segment).collect();
            segments.sort_unstable();
            segments.dedup();
            let synced = self.sync(&segments).await;
            // Finish in order: the round before this one answers first.
            if let Some(before) = before {
                let _ = before.await;
            }
            let answers = self.finish_round(ready, &segments, synced);
            record_round(answers, start.elapsed().as_secs_f64());
            let _ = finished.send(());
        }
    }

    /// Makes the frames of `segments` durable: fdatasync of the segment
    /// files (and of the directory if it gained a segment), as `spool.sync`
    /// says.
    async fn sync(&self, segments: &[u32]) -> Result<(), String> {
        let (files, dir_changed) = self.segments.sync_handles(segments);
        if self.sync == SyncMode::Inline {
            return sync_inline(&files, dir_changed.then(|| self.segments.dir()));
        }
        let syncs = files.iter().map(|f| f.fdatasync());
        for r in futures::future::join_all(syncs).await {
            r.map_err(|e| format!("fdatasync segment: {e}"))?;
        }
        if dir_changed {
            let dir = glommio::io::Directory::open(self.segments.dir())
                .await
                .map_err(|e| format!("open segment directory: {e}"))?;
            dir.sync()
                .await
                .map_err(|e| format!("fsync segment directory: {e}"))?;
            let _ = dir.close().await;
        }
        Ok(())
    }

    /// After the sync (and every earlier round): inserts the records into
    /// sled and answers each frame. Returns how many were answered.
    fn finish_round(
        &self,
        ready: Vec<Ready>,
        segments: &[u32],
        synced: Result<(), String>,
    ) -> usize {
        if synced.is_err() {
            let mut st = self.state.borrow_mut();
            st.poisoned.extend(segments);
            let next = st.first;
            drop(st);
            for &seg in segments {
                self.fail_segment_from(next, seg);
            }
        }
        let mut st = self.state.borrow_mut();
        st.dirty = true;
        let count = ready.len();
        for Ready {
            segment,
            end,
            key,
            record,
            rider,
            done,
        } in ready
        {
            let result = match &synced {
                Err(e) => Err(e.clone()),
                Ok(()) if st.poisoned.contains(&segment) => {
                    Err("an earlier sync of the segment failed".to_string())
                }
                // In memory and sled's log buffer: no I/O to wait for here.
                Ok(()) => self.insert(key, &record, rider),
            };
            if result.is_ok() {
                let mark = st.applied.entry(segment).or_default();
                *mark = (*mark).max(end);
            }
            let _ = done.send(result);
        }
        count
    }

    /// A round's inserts for one frame: its record, then its rider's.
    fn insert(
        &self,
        key: [u8; 16],
        record: &[u8],
        rider: Option<RiderWrite>,
    ) -> Result<(), String> {
        let sled_err = |e: sled::Error| format!("sled insert: {e}");
        self.envelopes.insert(key, record).map_err(sled_err)?;
        if let Some((tree, k, v)) = rider {
            tree.insert(k, v).map_err(sled_err)?;
        }
        Ok(())
    }

    /// Flushes sled if it changed, then unlinks (or recycles) the segments
    /// that were finished before the flush began. Called every
    /// [`FLUSH_INTERVAL`], and at once by `Spool::remove` when a finished
    /// segment's file is wanted as the next spare.
    ///
    /// The flush itself runs in a task of its own, which the caller only
    /// waits for: a caller cancelled at shutdown (a delivery worker, the
    /// flush timer) must not cut a flush off between setting `flushing` and
    /// clearing it, or [`Spool::quiesce`](super::Spool::quiesce), which
    /// waits for `flushing` to clear, would wait for ever (the graceful
    /// stop hang: a shard sleeping a millisecond at a time in `quiesce`).
    pub async fn flush(&self) {
        {
            let mut st = self.state.borrow_mut();
            if !st.dirty || st.flushing {
                return;
            }
            st.dirty = false;
            st.flushing = true;
        }
        let (done, finished) = oneshot::channel();
        let me = self.clone();
        glommio::spawn_local(async move {
            me.flush_in_background().await;
            let _ = done.send(());
        })
        .detach();
        let _ = finished.await;
    }

    /// The body of [`GroupCommit::flush`]: never cancelled.
    async fn flush_in_background(&self) {
        let doomed = self.segments.take_doomed();
        let covered = self.state.borrow().applied.clone();
        let written = self.mark.written.get();
        let db = self.db.clone();
        let result = glommio::executor().spawn_blocking(move || db.flush()).await;
        if result.is_ok() {
            self.mark.durable.set(written);
        }
        {
            let mut st = self.state.borrow_mut();
            st.flushing = false;
            st.last_flush_ok = result.is_ok();
            for waiter in st.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        match result {
            Ok(_) => self.after_flush(&doomed, covered),
            Err(e) => {
                FLUSH_ERRORS.with(|l| {
                    l.log(log::Level::Error, || {
                        format!("spool: sled flush failed: {e}")
                    })
                });
                self.state.borrow_mut().dirty = true;
            }
        }
    }

    /// After a flush: unlinks (or recycles) the segments doomed before it,
    /// and writes the watermarks it covered (durable with the next flush).
    /// A segment's watermark goes when the segment does; one a crash leaves
    /// behind is deleted at recovery (`Spool::recover` says why it must be).
    fn after_flush(&self, doomed: &[u32], covered: HashMap<u32, u64>) {
        self.segments.unlink_doomed(doomed);
        let mut st = self.state.borrow_mut();
        for seq in doomed {
            st.applied.remove(seq);
            st.marked.remove(seq);
            let _ = self.envelopes.remove(watermark_key(*seq));
            st.dirty = true;
        }
        for (seq, end) in covered {
            if doomed.contains(&seq) || st.marked.get(&seq) == Some(&end) {
                continue;
            }
            if self
                .envelopes
                .insert(watermark_key(seq), &end.to_be_bytes())
                .is_ok()
            {
                st.marked.insert(seq, end);
                st.dirty = true;
            }
        }
    }

    /// Blocking flush for shutdown, after the last round: twice, so that
    /// the watermarks are durable too and a restart replays nothing.
    pub fn flush_now(&self) {
        for _ in 0..2 {
            let doomed = self.segments.take_doomed();
            let covered = self.state.borrow().applied.clone();
            match self.db.flush() {
                Ok(_) => self.after_flush(&doomed, covered),
                Err(e) => log::error!("spool: sled flush failed: {e}"),
            }
        }
    }
}

/// [`SyncMode::Inline`]: blocking fdatasync of each file, then fsync of
/// `dir` if given, on the calling (shard) thread.
fn sync_inline(files: &[Rc<BufferedFile>], dir: Option<&std::path::Path>) -> Result<(), String> {
    for f in files {
        // SAFETY: a plain syscall on a descriptor the BufferedFile keeps open.
        if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("fdatasync segment: {e}"));
        }
    }
    if let Some(dir) = dir {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("fsync segment directory: {e}"))?;
    }
    Ok(())
}

/// A written frame taken for a round.
struct Ready {
    segment: u32,
    end: u64,
    key: [u8; 16],
    record: Vec<u8>,
    rider: Option<RiderWrite>,
    done: oneshot::Sender<Result<(), String>>,
}

impl CommitQueue {
    fn frame(&mut self, t: CommitTicket) -> Option<&mut Frame> {
        let i = t.0.checked_sub(self.first)?;
        self.frames.get_mut(i as usize)
    }

    /// Pops the frames at the front that are written (or failed, which are
    /// dropped), up to the first still being written.
    fn take_ready(&mut self) -> Vec<Ready> {
        let mut ready = Vec::new();
        while let Some(front) = self.frames.front() {
            if matches!(front.slot, Slot::Writing) {
                break;
            }
            let frame = self.frames.pop_front().expect("front exists");
            self.first += 1;
            if let Slot::Written {
                key,
                record,
                rider,
                done,
            } = frame.slot
            {
                ready.push(Ready {
                    segment: frame.segment,
                    end: frame.end,
                    key,
                    record,
                    rider,
                    done,
                });
            }
        }
        ready
    }
}

thread_local! {
    /// A failing disk fails every flush: logged once per interval.
    static FLUSH_ERRORS: crate::shard::log_limit::LogLimit =
        const { crate::shard::log_limit::LogLimit::new(Duration::from_secs(10)) };
    static ROUNDS: RefCell<(u64, u64)> = const { RefCell::new((0, 0)) };
}

fn record_round(batch: usize, seconds: f64) {
    ::metrics::histogram!(crate::metrics::SPOOL_COMMIT_SECONDS).record(seconds);
    ::metrics::histogram!(crate::metrics::SPOOL_COMMIT_BATCH).record(batch as f64);
    ROUNDS.with(|r| {
        let mut r = r.borrow_mut();
        r.0 += 1;
        r.1 += batch as u64;
    });
    log::trace!("group commit: {batch} messages in {seconds:.6}s");
}

/// Rounds run and messages committed on this thread since it started: their
/// ratio is the mean batch size (reported by the commit bench).
pub fn thread_round_totals() -> (u64, u64) {
    ROUNDS.with(|r| *r.borrow())
}
