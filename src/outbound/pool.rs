//! Reusable outbound connections of one shard, keyed by (IP, port).
//!
//! Owns: [`Pool`]: idle connections waiting for their next message, the idle
//! timeout, and the cap on messages per connection. A connection goes back
//! to the pool only if it is still usable and under the cap; idle ones past
//! their timeout are closed with QUIT by [`Pool::reap`].
//!
//! Concurrency: per shard, on its executor (`RefCell`); connections never
//! move between shards.
//!
//! Must not: open connections itself (the caller connects on a miss).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::Client;

pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<(Client, Instant)>>>,
    idle_timeout: Duration,
    max_transactions: u32,
}

impl Pool {
    pub fn new(idle_timeout: Duration, max_transactions: u32) -> Pool {
        Pool {
            idle: RefCell::default(),
            idle_timeout,
            max_transactions,
        }
    }

    /// The most recently used idle connection to `addr`, if one is fresh.
    pub fn take(&self, addr: SocketAddr) -> Option<Client> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((client, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(client);
            }
            glommio::spawn_local(client.quit()).detach();
        }
        None
    }

    /// Returns a connection after use; closes it if it is spent.
    pub fn put(&self, client: Client) {
        if !client.usable {
            return;
        }
        if client.transactions >= self.max_transactions {
            glommio::spawn_local(client.quit()).detach();
            return;
        }
        self.idle
            .borrow_mut()
            .entry(client.peer)
            .or_default()
            .push((client, Instant::now()));
    }

    /// Closes connections idle longer than the timeout. Returns how many.
    pub fn reap(&self) -> usize {
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for list in idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| since.elapsed() < self.idle_timeout);
                *list = keep;
                expired.extend(old.into_iter().map(|(c, _)| c));
            }
            idle.retain(|_, l| !l.is_empty());
        }
        let n = expired.len();
        for c in expired {
            glommio::spawn_local(c.quit()).detach();
        }
        n
    }
}
