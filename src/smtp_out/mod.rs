//! Outbound SMTP: one delivery attempt of one message to one destination
//! domain, with an outcome per recipient.
//!
//! Owns: [`Delivery::attempt`]: walk the destination's hosts in order (MX
//! preference, or a static route), take a pooled connection or connect,
//! fall through to the next host on a refused connection or a bad greeting,
//! and run one transaction carrying all the domain's recipients. Files:
//! `client` (the SMTP client), `outcome` (the one reply/error → outcome
//! mapping), `pool` (idle connections).
//!
//! Must not: write the queue, retry or bounce; it returns values and the
//! scheduler decides.

pub mod client;
pub mod outcome;
pub mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use client::{Client, Outgoing};
pub use outcome::Outcome;
use pool::Pool;

/// One host to try: its name (for logs and TLS) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// One per recipient, in the order given.
    pub outcomes: Vec<Outcome>,
    /// The host that answered, if any did.
    pub remote: Option<Target>,
    /// TLS protocol and cipher of the connection used, if encrypted.
    pub tls: Option<String>,
}

pub struct Delivery {
    pub helo: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool: Pool,
    /// Opportunistic STARTTLS when set.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Delivery {
    /// Tries `targets` in order until one takes the transaction.
    pub async fn attempt(&self, targets: &[Target], msg: &Outgoing<'_>) -> Attempt {
        let mut last = Outcome::Temporary {
            reply: "no host to deliver to".into(),
        };
        for target in targets {
            let mut client = match self.pool.take(target.addr) {
                Some(c) => c,
                None => match self.connect(target).await {
                    Ok(c) => c,
                    Err(why) => {
                        log::debug!("{}: {}", target.host, why.reply());
                        last = why;
                        continue;
                    }
                },
            };
            let tls = client.tls.clone();
            let result = client.send(msg).await;
            self.pool.put(client);
            let outcomes = match result {
                Ok(outcomes) => outcomes,
                Err(why) => vec![why; msg.recipients.len()],
            };
            return Attempt {
                outcomes,
                remote: Some(target.clone()),
                tls,
            };
        }
        Attempt {
            outcomes: vec![last; msg.recipients.len()],
            remote: None,
            tls: None,
        }
    }

    /// A new connection; if the TLS handshake fails, the same host again in
    /// plaintext (opportunistic TLS: rustls has no CBC or RSA key exchange,
    /// so some old servers cannot talk to it).
    async fn connect(&self, target: &Target) -> Result<Client, Outcome> {
        let connect = |tls| {
            Client::connect(
                target.addr,
                &target.host,
                &self.helo,
                self.connect_timeout,
                self.timeout,
                tls,
            )
        };
        match connect(self.tls.as_ref()).await {
            Ok(c) => Ok(c),
            Err(e) if e.tls_handshake => {
                log::info!(
                    "{}: {}; retrying without TLS",
                    target.host,
                    e.outcome.reply()
                );
                connect(None).await.map_err(|e| e.outcome)
            }
            Err(e) => Err(e.outcome),
        }
    }
}

/// Hosts with their addresses → ordered targets on `port`.
pub fn targets(hosts: &[(String, Vec<IpAddr>)], port: u16) -> Vec<Target> {
    hosts
        .iter()
        .flat_map(|(host, addrs)| {
            addrs.iter().map(move |ip| Target {
                host: host.clone(),
                addr: SocketAddr::new(*ip, port),
            })
        })
        .collect()
}
