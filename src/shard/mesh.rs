//! Asking another shard to do something with its own state.
//!
//! Owns: [`Mesh`], the senders to every shard's work channel, and
//! [`serve`], the loop on each shard that runs what arrives. Share-nothing:
//! a shard's state (`S`, e.g. its scheduler) never leaves its thread; a
//! request travels to it as a closure, runs there, and sends its answer
//! back on a one-shot channel. A request about one message goes to the
//! shard that owns it (`MessageId::shard`); a queue-wide one to every shard at
//! once ([`Mesh::ask_all`]), whose answers the caller merges.
//!
//! Must not: know what the state is or what the work does.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::stop::StopSignal;

/// Work for one shard: runs there, with that shard's `S`.
pub type Work<S> = Box<dyn FnOnce(Rc<S>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("shard {0} is not answering (stopping?)")]
pub struct ShardGone(pub usize);

/// Senders to every shard's work channel.
pub struct Mesh<S> {
    txs: Vec<flume::Sender<Work<S>>>,
}

impl<S> Clone for Mesh<S> {
    fn clone(&self) -> Self {
        Mesh {
            txs: self.txs.clone(),
        }
    }
}

/// A mesh of `shards` and each shard's receiving end, in shard order.
pub fn mesh<S>(shards: usize) -> (Mesh<S>, Vec<flume::Receiver<Work<S>>>) {
    let (txs, rxs) = (0..shards).map(|_| flume::unbounded()).unzip();
    (Mesh { txs }, rxs)
}

impl<S: 'static> Mesh<S> {
    pub fn count(&self) -> usize {
        self.txs.len()
    }

    /// Runs `work` on shard `shard` and returns its answer.
    pub async fn ask<T, F, Fut>(&self, shard: usize, work: F) -> Result<T, ShardGone>
    where
        T: Send + 'static,
        F: FnOnce(Rc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        self.tell(shard, move |state| async move {
            let _ = tx.send(work(state).await);
        })
        .await?;
        rx.recv_async().await.map_err(|_| ShardGone(shard))
    }

    /// Sends `work` to shard `shard` without waiting for it: for work
    /// that answers by a channel of its own (one cross-thread wake fewer
    /// than [`Mesh::ask`]).
    pub async fn tell<F, Fut>(&self, shard: usize, work: F) -> Result<(), ShardGone>
    where
        F: FnOnce(Rc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let task: Work<S> = Box::new(move |state| Box::pin(work(state)));
        self.txs
            .get(shard)
            .ok_or(ShardGone(shard))?
            .send_async(task)
            .await
            .map_err(|_| ShardGone(shard))
    }

    /// Runs `work` on every shard at once; the answers in shard order.
    pub async fn ask_all<T, F, Fut>(&self, work: F) -> Result<Vec<T>, ShardGone>
    where
        T: Send + 'static,
        F: FnOnce(Rc<S>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let asks = (0..self.count()).map(|shard| self.ask(shard, work.clone()));
        futures::future::join_all(asks).await.into_iter().collect()
    }
}

/// Runs the work sent to this shard, one request at a time, until `stop`.
pub async fn serve<S>(work: flume::Receiver<Work<S>>, state: Rc<S>, stop: StopSignal) {
    loop {
        let next = futures_lite::future::or(async { work.recv_async().await.ok() }, async {
            stop.wait().await;
            None
        })
        .await;
        match next {
            Some(task) => task(state.clone()).await,
            None => return,
        }
    }
}
