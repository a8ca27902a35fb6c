//! Group commit: one round of syncs serves every message waiting for it.
//!
//! Owns: [`GroupCommit`], one per shard. A session whose body is written to
//! its segment hands its queue record to [`GroupCommit::commit`]; the
//! scheduler hands it state changes and removals the same way, so that a
//! recipient recorded as delivered stays delivered after a crash. If no round
//! is running, it starts one; otherwise it waits for the next. A round takes
//! *all* records queued so far and, on the executor's blocking thread:
//!
//! 1. fdatasyncs every segment written since the last round (and the segment
//!    directory if a segment was created): the bodies are now durable;
//! 2. applies the records (inserts and removals) in one sled batch;
//! 3. flushes sled (one fsync): the records are now durable;
//!
//! then answers every waiter. A record joins sled only after its body is on
//! disk, so no crash can leave a record pointing at unsynced bytes. A record
//! that arrives while a round runs waits for the next one, since the syncs
//! in flight may have started before its write: this is what makes "250 only
//! after fsync" hold.
//!
//! Concurrency: the queue of waiters is `Rc<RefCell<_>>` on the shard's
//! executor; only file handles, the sled tree and the batch cross to the
//! blocking thread.
//!
//! Must not: call sled's `flush_async` (it deadlocks with 8 or more
//! concurrent callers in sled 0.34.7, upstream sled#1308).

use std::cell::RefCell;
use std::fs::File;
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;

use super::segment::Segments;

struct Waiter {
    key: [u8; 16],
    /// The new record, or None to remove it.
    record: Option<Vec<u8>>,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    db: sled::Db,
    envelopes: sled::Tree,
    segments: Rc<Segments>,
    state: Rc<RefCell<State>>,
}

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    running: bool,
}

impl GroupCommit {
    pub fn new(db: sled::Db, envelopes: sled::Tree, segments: Rc<Segments>) -> GroupCommit {
        GroupCommit {
            db,
            envelopes,
            segments,
            state: Rc::default(),
        }
    }

    /// Resolves once `record` (None: its removal) is in sled and a round that
    /// began after this call has synced the segments and flushed sled.
    pub async fn commit(&self, key: [u8; 16], record: Option<Vec<u8>>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let start_round = {
            let mut st = self.state.borrow_mut();
            st.waiters.push(Waiter { key, record, done });
            !std::mem::replace(&mut st.running, true)
        };
        if start_round {
            glommio::spawn_local(self.clone().run_rounds()).detach();
        }
        rx.await
            .unwrap_or_else(|_| Err("group commit dropped".into()))
    }

    /// Whether a round is queued or running.
    pub fn busy(&self) -> bool {
        self.state.borrow().running
    }

    async fn run_rounds(self) {
        loop {
            let batch = std::mem::take(&mut self.state.borrow_mut().waiters);
            if batch.is_empty() {
                self.state.borrow_mut().running = false;
                return;
            }
            let start = Instant::now();
            let mut sled_batch = sled::Batch::default();
            let mut answers = Vec::with_capacity(batch.len());
            for w in batch {
                match w.record {
                    Some(r) => sled_batch.insert(&w.key, r),
                    None => sled_batch.remove(&w.key),
                }
                answers.push(w.done);
            }
            let result = self.round(sled_batch).await;
            record_round(answers.len(), start.elapsed().as_secs_f64());
            for a in answers {
                let _ = a.send(result.clone());
            }
        }
    }

    async fn round(&self, batch: sled::Batch) -> Result<(), String> {
        let (files, dir_changed) = self.segments.take_unsynced();
        let dir = self.segments.dir().to_path_buf();
        let (db, envelopes) = (self.db.clone(), self.envelopes.clone());
        glommio::executor()
            .spawn_blocking(move || -> Result<(), String> {
                for f in &files {
                    f.sync_data()
                        .map_err(|e| format!("fdatasync segment: {e}"))?;
                }
                if dir_changed {
                    File::open(&dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("fsync segment directory: {e}"))?;
                }
                envelopes
                    .apply_batch(batch)
                    .map_err(|e| format!("sled insert: {e}"))?;
                db.flush().map_err(|e| format!("sled flush: {e}"))?;
                Ok(())
            })
            .await
    }
}

thread_local! {
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
