//! The admin API: a JSON HTTP interface to the queue of a running server,
//! and the client behind `ringpost queue ...`.
//!
//! Owns: the routes ([`api`]), the fan-out of a request to the shards
//! ([`Shards`]), merging their answers, the bearer-token check, and the
//! client ([`client`]).
//!
//! Concurrency: the API is served by shard 0, but every shard owns its own
//! messages and scheduler state (share-nothing). So a request travels to
//! the shard that owns it as a closure over that shard's [`Scheduler`],
//! through the shard's admin channel (one flume channel per shard, created
//! in `runtime::start`); the closure runs on that shard and sends its
//! answer back on a one-shot channel. A request about one message goes to
//! the shard `runtime::shard_for` names; a queue-wide one goes to every
//! shard at once and the answers are merged here.
//!
//! Must not: read or change scheduler state from shard 0 directly, or open
//! the spool: only the owning shard touches its state.

pub mod api;
pub mod client;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::scheduler::Scheduler;

/// Work for one shard: runs there, with that shard's scheduler.
pub type Task = Box<dyn FnOnce(Rc<Scheduler>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("shard {0} is not answering (stopping?)")]
pub struct ShardGone(pub usize);

/// Senders to every shard's admin channel.
#[derive(Clone)]
pub struct Shards {
    txs: Vec<flume::Sender<Task>>,
}

impl Shards {
    pub fn new(txs: Vec<flume::Sender<Task>>) -> Shards {
        Shards { txs }
    }

    pub fn count(&self) -> usize {
        self.txs.len()
    }

    /// Runs `work` on shard `shard` and returns its answer.
    pub async fn ask<T, F, Fut>(&self, shard: usize, work: F) -> Result<T, ShardGone>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Scheduler>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        let task: Task = Box::new(move |scheduler| {
            Box::pin(async move {
                let _ = tx.send(work(scheduler).await);
            })
        });
        let gone = ShardGone(shard);
        self.txs
            .get(shard)
            .ok_or(gone.clone())?
            .send_async(task)
            .await
            .map_err(|_| gone.clone())?;
        rx.recv_async().await.map_err(|_| gone)
    }

    /// Runs `work` on every shard at once; the answers in shard order.
    pub async fn ask_all<T, F, Fut>(&self, work: F) -> Result<Vec<T>, ShardGone>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Scheduler>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let asks = (0..self.count()).map(|shard| self.ask(shard, work.clone()));
        futures::future::join_all(asks).await.into_iter().collect()
    }
}

/// Runs the admin work sent to this shard, one request at a time, until
/// `stop` is disconnected.
pub async fn serve_shard(
    tasks: flume::Receiver<Task>,
    scheduler: Rc<Scheduler>,
    stop: flume::Receiver<()>,
) {
    loop {
        let next = futures_lite::future::or(async { tasks.recv_async().await.ok() }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        match next {
            Some(task) => task(scheduler.clone()).await,
            None => return,
        }
    }
}
