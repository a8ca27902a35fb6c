//! Group commit: one fsync round serves every message waiting for it.
//!
//! Owns: [`GroupCommit`], one per shard. A session that has written its
//! message calls [`GroupCommit::wait`]. If no flush is running, the caller's
//! task starts a flusher; otherwise it joins the queue for the next round.
//! Each round takes *all* waiters queued so far, runs one `sled::Db::flush()`
//! plus one fsync of the bodies directory on the executor's blocking thread,
//! and answers them all. A waiter that arrives while a round is in flight
//! waits for the next round, because the flush in flight may have started
//! before its write: that is the rule that makes "250 only after fsync" hold.
//!
//! Why a directory fsync: the body files are created in the bodies
//! directory; their names are durable only once the directory is synced.
//! One directory fsync per round covers every file created before it.
//!
//! Concurrency: state is `Rc<RefCell<_>>` on the shard's executor, never
//! shared across threads; only the `Db` handle and the directory's file
//! descriptor cross to the blocking thread.
//!
//! Must not: call `flush_async` (it deadlocks with 8 or more concurrent
//! callers in sled 0.34.7, upstream sled#1308).

use std::cell::RefCell;
use std::fs::File;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct GroupCommit {
    db: sled::Db,
    bodies_dir: Arc<File>,
    state: Rc<RefCell<State>>,
}

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    flushing: bool,
}

/// What one round did, for metrics and benches.
#[derive(Debug, Clone, Copy)]
pub struct RoundStats {
    pub batch: usize,
    pub seconds: f64,
}

impl GroupCommit {
    pub fn new(db: sled::Db, bodies_dir: File) -> GroupCommit {
        GroupCommit {
            db,
            bodies_dir: Arc::new(bodies_dir),
            state: Rc::default(),
        }
    }

    /// Resolves once a flush that began after this call has completed.
    pub async fn wait(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let start_flusher = {
            let mut st = self.state.borrow_mut();
            st.waiters.push(tx);
            !std::mem::replace(&mut st.flushing, true)
        };
        if start_flusher {
            glommio::spawn_local(self.clone().run_rounds()).detach();
        }
        rx.await
            .unwrap_or_else(|_| Err("group commit dropped".into()))
    }

    async fn run_rounds(self) {
        loop {
            let batch = std::mem::take(&mut self.state.borrow_mut().waiters);
            if batch.is_empty() {
                self.state.borrow_mut().flushing = false;
                return;
            }
            let stats_batch = batch.len();
            let start = Instant::now();
            let result = self.flush_once().await;
            record_round(RoundStats {
                batch: stats_batch,
                seconds: start.elapsed().as_secs_f64(),
            });
            for w in batch {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn flush_once(&self) -> Result<(), String> {
        let db = self.db.clone();
        let dir = self.bodies_dir.clone();
        glommio::executor()
            .spawn_blocking(move || -> Result<(), String> {
                dir.sync_all()
                    .map_err(|e| format!("fsync of bodies directory: {e}"))?;
                db.flush().map_err(|e| format!("sled flush: {e}"))?;
                Ok(())
            })
            .await
    }
}

thread_local! {
    static LAST_ROUNDS: RefCell<(u64, u64)> = const { RefCell::new((0, 0)) };
}

fn record_round(stats: RoundStats) {
    LAST_ROUNDS.with(|r| {
        let mut r = r.borrow_mut();
        r.0 += 1;
        r.1 += stats.batch as u64;
    });
    log::trace!(
        "group commit: {} messages in {:.6}s",
        stats.batch,
        stats.seconds
    );
}

/// Rounds run and messages committed on this thread since it started:
/// the ratio is the mean batch size (used by the commit bench).
pub fn thread_round_totals() -> (u64, u64) {
    LAST_ROUNDS.with(|r| *r.borrow())
}
