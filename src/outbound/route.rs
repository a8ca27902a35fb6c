//! Where mail for a destination domain goes: a static route, the
//! smarthost, or the domain's MX hosts, as an ordered list of targets.
//!
//! Owns: [`Router`], built once per shard from `[delivery]` (routes and
//! the smarthost parsed once), and [`targets`], the pure expansion of hosts
//! with their addresses into targets on a port.
//!
//! A next hop the operator configured (route, smarthost, drain peer) that
//! cannot be looked up is the operator's or the network's problem, never
//! the recipient's: it comes back as [`RouteError::NextHop`], a temporary
//! failure, while the recipient domain's own DNS answers
//! ([`RouteError::Domain`]) may be permanent (NXDOMAIN, null MX).
//!
//! May call: `dns` (MX, A/AAAA). Must not: connect to anything.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::Target;
use crate::config::{DeliveryConfig, NextHop};
use crate::dns::{DnsError, Resolver};

/// Why no targets could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The recipient domain's MX or addresses.
    #[error(transparent)]
    Domain(#[from] DnsError),
    /// A configured next hop's name did not resolve: always temporary.
    #[error("configured next hop {host} cannot be looked up: {why}")]
    NextHop { host: String, why: String },
}

pub struct Router {
    /// Per-domain routes, keys lower-case.
    routes: HashMap<String, NextHop>,
    smarthost: Option<NextHop>,
    /// The port for MX deliveries (MX records carry none).
    remote_port: u16,
    dns: Resolver,
    /// While the node is drained (`queue drain --to`): every domain goes
    /// to this next hop.
    handover: std::cell::RefCell<Option<NextHop>>,
}

impl Router {
    /// From a validated config (routes that do not parse were refused by
    /// `check-config`; any left are ignored).
    pub fn new(d: &DeliveryConfig, dns: Resolver) -> Router {
        Router {
            routes: d
                .routes
                .iter()
                .filter_map(|(domain, hop)| {
                    Some((domain.to_ascii_lowercase(), NextHop::parse(hop).ok()?))
                })
                .collect(),
            smarthost: Some(&d.smarthost)
                .filter(|s| !s.is_empty())
                .and_then(|s| NextHop::parse(s).ok()),
            remote_port: d.remote_port,
            dns,
            handover: std::cell::RefCell::new(None),
        }
    }

    /// From now on, mail for every domain goes to `hop` (a drain).
    pub fn hand_over_to(&self, hop: NextHop) {
        *self.handover.borrow_mut() = Some(hop);
    }

    /// The peer of a drain, if the node is drained.
    pub fn handed_over_to(&self) -> Option<NextHop> {
        self.handover.borrow().clone()
    }

    /// The hosts to try for mail to `domain` (lower-case), in order.
    pub async fn targets_for(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let handover = self.handover.borrow().clone();
        match handover
            .as_ref()
            .or(self.routes.get(domain))
            .or(self.smarthost.as_ref())
        {
            Some(hop) => self.targets_of(hop).await,
            None => {
                let hosts = self.dns.mx(domain).await?;
                let list: Vec<_> = hosts
                    .into_iter()
                    .map(|h| (h.name, h.addrs, h.secure))
                    .collect();
                Ok(targets(&list, self.remote_port))
            }
        }
    }

    /// The resolver, for what a destination publishes beside its MX
    /// hosts (DANE's TLSA records).
    pub fn resolver(&self) -> &Resolver {
        &self.dns
    }

    /// Whether mail for `domain` goes to its MX hosts (no route, smarthost
    /// or drain applies): the case MTA-STS (`sts`) is for.
    pub fn is_mx(&self, domain: &str) -> bool {
        self.handover.borrow().is_none()
            && !self.routes.contains_key(domain)
            && self.smarthost.is_none()
    }

    /// The hosts of a configured next hop (looked up as A/AAAA if named).
    pub async fn targets_of(&self, hop: &NextHop) -> Result<Vec<Target>, RouteError> {
        match hop {
            NextHop::Addr(addr) => Ok(vec![Target::new(addr.ip().to_string(), *addr)]),
            NextHop::Host(host, port) => {
                let addrs = self.dns.host(host).await.map_err(|e| RouteError::NextHop {
                    host: host.clone(),
                    why: match e {
                        DnsError::NoSuchDomain => "no such name (NXDOMAIN)".into(),
                        DnsError::NoAddress | DnsError::NullMx => "no A or AAAA records".into(),
                        DnsError::Temporary(why) => why,
                    },
                })?;
                Ok(targets(&[(host.clone(), addrs, false)], *port))
            }
        }
    }
}

/// Pure: hosts with their addresses (and whether their DNS answers were
/// DNSSEC-secure) → ordered targets on `port`.
pub fn targets(hosts: &[(String, Vec<IpAddr>, bool)], port: u16) -> Vec<Target> {
    hosts
        .iter()
        .flat_map(|(host, addrs, secure)| {
            addrs.iter().map(move |ip| Target {
                secure: *secure,
                ..Target::new(host.clone(), SocketAddr::new(*ip, port))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_expand_in_order() {
        let t = targets(
            &[
                (
                    "mx1.example".into(),
                    vec!["192.0.2.1".parse().unwrap()],
                    true,
                ),
                (
                    "mx2.example".into(),
                    vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                    false,
                ),
            ],
            2525,
        );
        let got: Vec<_> = t
            .iter()
            .map(|t| (t.host.as_str(), t.addr.to_string(), t.secure))
            .collect();
        assert_eq!(
            got,
            [
                ("mx1.example", "192.0.2.1:2525".to_string(), true),
                ("mx2.example", "192.0.2.2:2525".to_string(), false),
                ("mx2.example", "[2001:db8::2]:2525".to_string(), false)
            ]
        );
    }
}
