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
    /// Spawns `fut` on this executor; it leaves the set when it finishes.
    /// After [`TaskSet::cancel_all`], nothing new is spawned.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        let mut inner = self.inner.borrow_mut();
        if inner.closed {
            return;
        }
        inner.next += 1;
        let id = inner.next;
        let set = self.inner.clone();
        let task = glommio::spawn_local(async move {
            fut.await;
            set.borrow_mut().tasks.remove(&id);
        });
        // Not polled yet, so it cannot have removed itself before this insert.
        inner.tasks.insert(id, task.detach());
    }

    pub fn cancel_all(&self) {
        let tasks: Vec<_> = {
            let mut inner = self.inner.borrow_mut();
            inner.closed = true;
            inner.tasks.drain().map(|(_, t)| t).collect()
        };
        for t in tasks {
            t.cancel();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.borrow().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
