//! Reusable outbound connections of one shard, keyed by what each was
//! established for.
//!
//! Owns: [`Pool`]: idle connections waiting for their next message, the idle
//! timeout, and the cap on messages per connection. A connection goes back
//! to the pool only if it is still usable and under the cap; idle ones past
//! their timeout are closed with QUIT by [`Pool::reap`].
//!
//! The key is [`PoolKey`]: the MX host name, its address, and the TLS
//! policy the connection was opened under. A connection opened under
//! `require` was verified for that host name, so it also serves an
//! opportunistic destination at the same host; nothing else crosses:
//! an opportunistic connection (any certificate, or plaintext after a
//! failed handshake) never carries mail for a destination that requires
//! verified TLS, and a connection verified for one host name never serves
//! another name at the same address.
//!
//! Concurrency: per shard, on its executor (`RefCell`); connections never
//! move between shards.
//!
//! Must not: open connections itself (the caller connects on a miss), or
//! hand a connection to a policy stricter than the one it was opened under.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::Client;
use crate::config::OutboundTls;

/// What a connection was established for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The MX (or route) host name it was opened to, and verified for when
    /// `policy` is `Require`.
    pub host: String,
    pub addr: SocketAddr,
    pub policy: OutboundTls,
    /// The egress source it was opened from (`[egress]`), if any: it never
    /// carries another source's mail.
    pub source: Option<String>,
}

impl PoolKey {
    /// The policies whose connections may carry mail under `policy`, the
    /// preferred first.
    fn serves(policy: OutboundTls) -> &'static [OutboundTls] {
        match policy {
            OutboundTls::Require => &[OutboundTls::Require],
            OutboundTls::Opportunistic => &[OutboundTls::Opportunistic, OutboundTls::Require],
            OutboundTls::None => &[OutboundTls::None],
        }
    }
}

pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<(Client, Instant)>>>,
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

    /// The most recently used fresh idle connection to `host` at `addr`
    /// that may carry mail under `policy`.
    pub fn take(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: OutboundTls,
        source: Option<&str>,
    ) -> Option<Client> {
        let mut idle = self.idle.borrow_mut();
        for &opened_under in PoolKey::serves(policy) {
            let key = PoolKey {
                host: host.to_string(),
                addr,
                policy: opened_under,
                source: source.map(str::to_string),
            };
            let Some(list) = idle.get_mut(&key) else {
                continue;
            };
            while let Some((client, since)) = list.pop() {
                if since.elapsed() < self.idle_timeout {
                    return Some(client);
                }
                glommio::spawn_local(client.quit()).detach();
            }
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
            .entry(client.pool_key())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stricter_policies_are_never_served_by_weaker_connections() {
        use OutboundTls::*;
        assert_eq!(PoolKey::serves(Require), [Require]);
        assert!(PoolKey::serves(Opportunistic).contains(&Require));
        assert!(!PoolKey::serves(Require).contains(&Opportunistic));
        assert!(!PoolKey::serves(Require).contains(&None));
        assert_eq!(PoolKey::serves(None), [None]);
    }
}
