//! Reusable outbound connections of one shard, keyed by what each was
//! established for.
//!
//! Owns: [`Pool`]: idle connections waiting for their next message. A
//! connection goes back to the pool only if it is still usable and under
//! its path's cap on messages per connection; idle ones past their path's
//! idle timeout are closed with QUIT by [`Pool::reap`], and
//! [`Pool::trim`] closes the oldest idle ones of a path (source, site)
//! before a new connection would take it over its connection limit.
//!
//! The key is [`PoolKey`]: the MX host name, its address, the TLS policy
//! the connection was opened under, the DANE TLSA set its certificate was
//! checked against (if any), its egress source and its site. A connection opened under
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
    /// The site (`scheduler::shaping`) it counts against.
    pub site: String,
    /// The TLSA set its certificate was checked against (DANE): such a
    /// connection carries mail only for that same set, and a destination
    /// with TLSA records takes no other connection.
    pub dane: Option<u64>,
}

impl PoolKey {
    /// The key of `client`, as a connection of `site`.
    pub fn of(client: &Client, site: &str) -> PoolKey {
        PoolKey {
            host: client.host.clone(),
            addr: client.peer,
            policy: client.policy,
            source: client.source.clone(),
            site: site.to_string(),
            dane: client.dane,
        }
    }

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

/// An idle connection, and until when it may wait.
struct Idle {
    client: Client,
    since: Instant,
    until: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>>>,
}

impl Pool {
    /// The most recently used fresh idle connection to `host` at `addr`
    /// from `source` for `site` that may carry mail under `policy` (and,
    /// with DANE, was checked against the TLSA set `dane`).
    pub fn take(
        &self,
        (host, addr): (&str, SocketAddr),
        (policy, dane): (OutboundTls, Option<u64>),
        source: Option<&str>,
        site: &str,
    ) -> Option<Client> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        for &opened_under in PoolKey::serves(policy) {
            let key = PoolKey {
                host: host.to_string(),
                addr,
                policy: opened_under,
                source: source.map(str::to_string),
                site: site.to_string(),
                dane,
            };
            let Some(list) = idle.get_mut(&key) else {
                continue;
            };
            while let Some(entry) = list.pop() {
                if entry.until > now {
                    return Some(entry.client);
                }
                glommio::spawn_local(entry.client.quit()).detach();
            }
        }
        None
    }

    /// Returns a connection of `site` after use; closes it if it is spent
    /// (`max_transactions`), else keeps it for up to `idle_timeout`.
    pub fn put(&self, client: Client, site: &str, max_transactions: u32, idle_timeout: Duration) {
        if !client.usable {
            return;
        }
        if client.transactions >= max_transactions {
            glommio::spawn_local(client.quit()).detach();
            return;
        }
        let now = Instant::now();
        self.idle
            .borrow_mut()
            .entry(PoolKey::of(&client, site))
            .or_default()
            .push(Idle {
                client,
                since: now,
                until: now + idle_timeout,
            });
    }

    /// Takes out the oldest idle connections from `source` to `site`
    /// beyond `keep`, for the caller to close (and wait for) before a new
    /// connection opens, so that those in use and those idle together
    /// stay within the path's limit.
    #[must_use = "the connections taken out are to be closed"]
    pub fn trim(&self, source: Option<&str>, site: &str, keep: usize) -> Vec<Client> {
        let mut closing = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            let mut of_path: Vec<(Instant, PoolKey)> = idle
                .iter()
                .filter(|(k, _)| k.site == site && k.source.as_deref() == source)
                .flat_map(|(k, list)| list.iter().map(move |e| (e.since, k.clone())))
                .collect();
            if of_path.len() <= keep {
                return closing;
            }
            of_path.sort_by_key(|(since, _)| *since);
            for (_, key) in &of_path[..of_path.len() - keep] {
                if let Some(list) = idle.get_mut(key) {
                    // Oldest first within a key too: they were pushed in order.
                    closing.push(list.remove(0).client);
                }
            }
            idle.retain(|_, l| !l.is_empty());
        }
        closing
    }

    /// Closes connections idle longer than their timeout. Returns how many.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for list in idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list.drain(..).partition(|e| e.until > now);
                *list = keep;
                expired.extend(old.into_iter().map(|e| e.client));
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
