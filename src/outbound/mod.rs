//! Outbound SMTP: one delivery attempt of one message to one destination
//! domain, with an outcome per recipient.
//!
//! Owns: [`Delivery::attempt`]: walk the destination's hosts in order (MX
//! preference, or a static route), take a pooled connection or connect,
//! fall through to the next host on a refused connection or a bad greeting,
//! apply the destination's TLS policy (none, opportunistic with plaintext
//! fallback, require), and run one transaction carrying all the domain's
//! recipients. Files:
//! `client` (the SMTP client), `outcome` (the one reply/error → outcome
//! mapping), `pool` (idle connections), `route` (static routes, smarthost
//! or MX → the targets to try).
//!
//! Must not: write the queue, retry or bounce; it returns values and the
//! scheduler decides.

pub mod client;
pub mod egress;
pub mod outcome;
pub mod pool;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, Outgoing};
pub use outcome::DeliveryOutcome;

use crate::config::{Config, OutboundTls};
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
    pub outcomes: Vec<DeliveryOutcome>,
    /// The host that answered, if any did.
    pub remote: Option<Target>,
    /// The egress source the attempt went from, if sources are set up.
    pub source: Option<String>,
    /// TLS protocol and cipher of the connection used, if encrypted.
    pub tls: Option<String>,
}

/// How outbound connections are made: read from the config and the CA
/// file once at start-up, shared by every shard.
#[derive(Clone)]
pub struct OutboundSettings {
    pub helo: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub max_messages_per_connection: u32,
    /// For opportunistic STARTTLS (any certificate).
    pub opportunistic: Arc<rustls::ClientConfig>,
    /// For destinations that require a verified certificate, if any do.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// `[egress]`: the sources and pools.
    pub egress: crate::config::EgressConfig,
}

impl OutboundSettings {
    /// From the config and the verified-TLS client config (loaded from
    /// `tls.ca_file` by the caller when some destination requires it).
    pub fn new(cfg: &Config, verified: Option<Arc<rustls::ClientConfig>>) -> OutboundSettings {
        let d = &cfg.delivery;
        OutboundSettings {
            helo: cfg.helo_name().to_string(),
            connect_timeout: Duration::from_secs(d.connect_timeout_secs),
            timeout: Duration::from_secs(d.reply_timeout_secs),
            idle_timeout: Duration::from_secs(d.idle_timeout_secs),
            max_messages_per_connection: d.max_messages_per_connection,
            opportunistic: crate::tls::opportunistic_client(),
            verified,
            egress: cfg.egress.clone(),
        }
    }
}

/// One shard's outbound side: its connection pool and the settings.
pub struct Delivery {
    pub helo: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool: Pool,
    /// For opportunistic STARTTLS (any certificate).
    pub opportunistic: Arc<rustls::ClientConfig>,
    /// For destinations that require a verified certificate, if any do.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// This shard's sources and pool rotations.
    pub egress: egress::Egress,
}

impl Delivery {
    pub fn new(s: &OutboundSettings) -> Delivery {
        Delivery {
            helo: s.helo.clone(),
            connect_timeout: s.connect_timeout,
            timeout: s.timeout,
            pool: Pool::new(s.idle_timeout, s.max_messages_per_connection),
            opportunistic: s.opportunistic.clone(),
            verified: s.verified.clone(),
            egress: egress::Egress::new(&s.egress, &s.helo),
        }
    }

    /// Tries `targets` in order until one takes the transaction, under the
    /// destination's TLS `policy`, from a source of egress `pool` (if
    /// sources are configured). A source whose address cannot be bound is
    /// down: it is skipped for [`egress::DOWN_FOR`] and the attempt goes
    /// at once from the pool's next source.
    pub async fn attempt(
        &self,
        targets: &[Target],
        msg: &Outgoing<'_>,
        policy: OutboundTls,
        pool: &str,
    ) -> Attempt {
        let mut last = DeliveryOutcome::Temporary {
            reply: "no egress source of the pool could be used".into(),
        };
        for _ in 0..self.egress.source_count().max(1) {
            let source = self.egress.pick(pool, Instant::now());
            match self
                .attempt_from(targets, msg, policy, source.as_deref())
                .await
            {
                Ok(attempt) => return attempt,
                Err(why) => {
                    if let Some(s) = &source
                        && self.egress.mark_down(&s.name, Instant::now())
                    {
                        log::warn!(
                            "egress source {} is down for {} s: {}",
                            s.name,
                            egress::DOWN_FOR.as_secs(),
                            why.reply()
                        );
                    }
                    last = why;
                }
            }
        }
        Attempt {
            outcomes: vec![last; msg.recipients.len()],
            remote: None,
            tls: None,
            source: None,
        }
    }

    /// [`Delivery::attempt`] from one source; Err when the source is down.
    async fn attempt_from(
        &self,
        targets: &[Target],
        msg: &Outgoing<'_>,
        policy: OutboundTls,
        source: Option<&egress::Source>,
    ) -> Result<Attempt, DeliveryOutcome> {
        let source_name = source.map(|s| s.name.clone());
        let mut last = DeliveryOutcome::Temporary {
            reply: "no host to deliver to".into(),
        };
        for target in targets {
            // Only a connection opened for this host under this policy (or
            // a stricter one) serves it: see `pool`.
            let pooled = self.pool.take(
                &target.host,
                target.addr,
                policy,
                source.map(|s| s.name.as_str()),
            );
            let reused = pooled.is_some();
            let mut client = match pooled {
                Some(c) => c,
                None => match self.connect(target, policy, source).await {
                    Ok(c) => c,
                    Err(e) if e.source_down => return Err(e.outcome),
                    Err(e) => {
                        log::debug!("{}: {}", target.host, e.outcome.reply());
                        last = e.outcome;
                        continue;
                    }
                },
            };
            let mut result = client.send(msg).await;
            if reused && client.failed_before_mail() {
                // The pooled connection had died while idle: nothing of
                // the message was accepted, so it goes again at once on a
                // fresh connection, as if the pool had been empty.
                ::metrics::counter!(crate::metrics::OUTBOUND_STALE_CONNECTIONS).increment(1);
                match self.connect(target, policy, source).await {
                    Ok(fresh) => {
                        client = fresh;
                        result = client.send(msg).await;
                    }
                    Err(e) => {
                        last = e.outcome;
                        continue;
                    }
                }
            }
            let tls = client.tls.clone();
            self.pool.put(client);
            let outcomes = match result {
                Ok(outcomes) => outcomes,
                Err(why) => vec![why; msg.recipients.len()],
            };
            return Ok(Attempt {
                outcomes,
                remote: Some(target.clone()),
                tls,
                source: source_name,
            });
        }
        Ok(Attempt {
            outcomes: vec![last; msg.recipients.len()],
            remote: None,
            tls: None,
            source: source_name,
        })
    }

    /// A new connection under `policy`. Opportunistic: if the TLS handshake
    /// fails, the same host again in plaintext (rustls has no CBC or RSA key
    /// exchange, so some old servers cannot talk to it). Require: verified
    /// TLS or a temporary failure, never plaintext.
    async fn connect(
        &self,
        target: &Target,
        policy: OutboundTls,
        source: Option<&egress::Source>,
    ) -> Result<Client, client::ConnectError> {
        let helo = source.map_or(self.helo.as_str(), |s| s.ehlo.as_str());
        let connect = |tls| {
            Client::connect(
                client::Dial {
                    peer: target.addr,
                    source: source.map(|s| (s.name.as_str(), s.address)),
                    host: &target.host,
                    helo,
                },
                self.connect_timeout,
                self.timeout,
                tls,
                policy,
            )
        };
        let require = policy == OutboundTls::Require;
        let config = match policy {
            OutboundTls::None => None,
            OutboundTls::Opportunistic => Some(&self.opportunistic),
            OutboundTls::Require => match &self.verified {
                Some(v) => Some(v),
                None => {
                    return Err(DeliveryOutcome::Temporary {
                        reply: "TLS is required but no CA file is loaded".into(),
                    }
                    .into());
                }
            },
        };
        let result = connect(config).await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        ::metrics::counter!(crate::metrics::OUTBOUND_CONNECTIONS_TOTAL, "result" => label)
            .increment(1);
        match result {
            Ok(c) => Ok(c),
            Err(e) if e.tls_handshake && !require => {
                log::info!(
                    "{}: {}; retrying without TLS",
                    target.host,
                    e.outcome.reply()
                );
                connect(None).await
            }
            Err(e) => Err(e),
        }
    }
}
