//! The stop signal: how a graceful shutdown reaches every loop of every
//! shard.
//!
//! Owns: [`StopSender`] (held by the server; [`StopSender::request`] fires
//! it once, from any thread) and [`StopSignal`] (a shard's side, cloned
//! into each of its loops). Firing drops the senders: every waiting loop
//! wakes at once, and a loop that looks later sees it fired. The moment of
//! the request is kept, so that every loop of every shard counts its grace
//! period from the same instant ([`StopSignal::deadline`]).
//!
//! Must not: decide what a loop does on stop.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The server's side: fires every shard's signal.
#[derive(Clone)]
pub struct StopSender {
    txs: Arc<Mutex<Vec<flume::Sender<()>>>>,
    at: Arc<OnceLock<Instant>>,
}

/// One shard's side. Cheap to clone.
#[derive(Clone)]
pub struct StopSignal {
    rx: flume::Receiver<()>,
    at: Arc<OnceLock<Instant>>,
}

/// A sender and one signal per shard.
pub fn channel(shards: usize) -> (StopSender, Vec<StopSignal>) {
    let at = Arc::new(OnceLock::new());
    let (txs, signals) = (0..shards)
        .map(|_| {
            let (tx, rx) = flume::bounded(1);
            let signal = StopSignal { rx, at: at.clone() };
            (tx, signal)
        })
        .unzip();
    let sender = StopSender {
        txs: Arc::new(Mutex::new(txs)),
        at,
    };
    (sender, signals)
}

impl StopSender {
    /// Fires the signal (the first call; later ones do nothing).
    pub fn request(&self) {
        let _ = self.at.set(Instant::now());
        self.txs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn is_requested(&self) -> bool {
        self.at.get().is_some()
    }
}

impl StopSignal {
    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        // Nothing is ever sent: the only thing that ends this is the
        // senders going away.
        let _ = self.rx.recv_async().await;
    }

    pub fn is_stopped(&self) -> bool {
        self.rx.is_disconnected()
    }

    /// The end of a grace period of `grace` counted from the request (from
    /// now if it has not fired).
    pub fn deadline(&self, grace: Duration) -> Instant {
        self.at.get().copied().unwrap_or_else(Instant::now) + grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_reaches_every_signal_and_keeps_its_moment() {
        let (sender, signals) = channel(2);
        assert!(!signals[0].is_stopped());
        sender.request();
        let first = signals[1].deadline(Duration::ZERO);
        sender.request();
        assert!(signals.iter().all(StopSignal::is_stopped));
        assert_eq!(signals[0].deadline(Duration::ZERO), first);
        futures::executor::block_on(signals[1].wait());
    }
}
