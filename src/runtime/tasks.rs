//! Tasks a shard must be able to cancel when it stops.
//!
//! Owns: [`TaskSet`]. glommio keeps detached tasks alive past the end of the
//! executor's main future, so anything holding the spool (sessions, delivery
//! workers, timers) is spawned through a `TaskSet` and cancelled on stop;
//! otherwise the spool's sled lock would outlive the shard.

use std::cell::{Cell, RefCell};
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
    /// Spawns `fut` on this executor; it leaves the set when it finishes.
    /// After [`TaskSet::cancel_all`], nothing new is spawned.
    ///
    /// No borrow of the set is held while glommio runs anything: a task may
    /// start (and even finish) inside `spawn_local`, and its completion
    /// takes the same borrow.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        let id = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return;
            }
            inner.next += 1;
            inner.next
        };
        let done = Rc::new(Cell::new(false));
        let (set, finished) = (self.inner.clone(), done.clone());
        let task = glommio::spawn_local(async move {
            fut.await;
            finished.set(true);
            let handle = set.borrow_mut().tasks.remove(&id);
            drop(handle);
        });
        let handle = task.detach();
        if !done.get() {
            self.inner.borrow_mut().tasks.insert(id, handle);
        }
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
