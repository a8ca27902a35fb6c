//! Tasks a shard must be able to cancel when it stops.
//!
//! Owns: [`TaskSet`]. glommio keeps detached tasks alive past the end of the
//! executor's main future, so anything holding the spool (sessions, delivery
//! workers, timers) is spawned through a `TaskSet` and cancelled on stop;
//! otherwise the spool's sled lock would outlive the shard.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use glommio::task::JoinHandle;

#[derive(Clone, Default)]
pub struct TaskSet {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    tasks: HashMap<u64, JoinHandle<()>>,
    closed: bool,
}

impl TaskSet {
    /// Spawns `fut` on this executor, to run after the current task yields;
    /// it leaves the set when it finishes. After [`TaskSet::cancel_all`],
    /// nothing new is spawned.
    ///
    /// Why not `spawn_local`: glommio runs a task spawned that way at once,
    /// inside the spawner's poll. A session that queues a message would then
    /// run the delivery worker (read the body, write to the next hop) before
    /// it sends its own 250, putting delivery on the client's critical path
    /// (seen in strace, one session at a time). Queued behind the spawner,
    /// the worker runs once the session waits for its next command.
    ///
    /// The future is boxed first: a delivery worker's is 13 KiB and a
    /// session's 5 KiB, and each move on the way into glommio's task (the
    /// wrapper below, the spawn call, the task's allocation) copied all of
    /// it; boxed, the copies are of a pointer (seen as memcpy under
    /// `spawn` in the flame graphs, benches/flame.sh).
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        let fut = Box::pin(fut);
        let id = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return;
            }
            inner.next += 1;
            inner.next
        };
        let set = self.inner.clone();
        let here = glommio::executor().current_task_queue();
        let task = glommio::spawn_local_into(
            async move {
                fut.await;
                let handle = set.borrow_mut().tasks.remove(&id);
                drop(handle);
            },
            here,
        )
        .expect("the current task queue exists");
        // `spawn_local_into` only schedules the task, so it cannot have
        // finished (and tried to leave the set) before it is in the set.
        self.inner.borrow_mut().tasks.insert(id, task.detach());
    }

    pub fn cancel_all(&self) {
        let tasks: Vec<_> = {
            let mut inner = self.inner.borrow_mut();
            inner.closed = true;
            inner.tasks.drain().map(|(_, t)| t).collect()
        };
        // Cancelled outside the borrow, for the same reason.
        for t in tasks {
            t.cancel();
        }
    }

    /// Waits until at most `keep` tasks are left, or until `deadline`.
    pub async fn wait_until_at_most(&self, keep: usize, deadline: std::time::Instant) {
        while self.len() > keep && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.borrow().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
