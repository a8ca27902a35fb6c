//! Compaction of the spool's sparse segments: waiting messages whose
//! bodies hold a mostly empty segment are moved into the active one, a few
//! MiB per pass, so that the segment's space comes back. Waiting: deferred
//! (a retry, scheduled mail, mail of a held site or pool) or held in the
//! ready queue of a suspended domain (`state::Waiting`); a domain
//! suspended for days must not pin the segments its mail came in.
//!
//! May call: `queue` (`Spool::relocate`) and the schedule's state
//! (`begin_move`/`end_move`). Must not: move a message in flight.

use std::rc::Rc;

use super::Scheduler;

/// Bodies one compaction pass moves at most (a pass starts every second):
/// compaction never takes more than a few MiB/s of the disk.
const COMPACT_BYTES_PER_PASS: u64 = 4 << 20;

impl Scheduler {
    /// One compaction pass: the waiting messages whose bodies sit in
    /// sparse segments are moved into the active one (`Spool::relocate`),
    /// one at a time, each through a commit round like new mail, up to
    /// [`COMPACT_BYTES_PER_PASS`].
    pub(super) async fn compact(self: Rc<Self>) {
        let percent = self.cfg.spool.compact_below_percent;
        if percent == 0 {
            return;
        }
        let sparse = self.spool.sparse_segments(percent);
        if sparse.is_empty() {
            return;
        }
        self.compacting.set(true);
        let movable = self.state.borrow().movable_in(&sparse);
        let mut moved_bytes = 0;
        for id in movable {
            if moved_bytes >= COMPACT_BYTES_PER_PASS || self.draining.get() {
                break;
            }
            let Some((env, waiting)) = self.state.borrow_mut().begin_move(id) else {
                continue;
            };
            let result = self.spool.relocate(id, &env).await;
            let moved = match result {
                Ok(moved) => {
                    moved_bytes += moved.size();
                    ::metrics::counter!(crate::metrics::SPOOL_COMPACTED_BYTES)
                        .increment(moved.size());
                    Some(moved.body)
                }
                Err(e) => {
                    self.spool_errors_logged
                        .log(log::Level::Error, || format!("compaction: {e}"));
                    None
                }
            };
            self.state.borrow_mut().end_move(id, moved, waiting);
            if waiting == super::state::Waiting::Held {
                self.dispatch(id);
            }
        }
        self.compacting.set(false);
    }
}
