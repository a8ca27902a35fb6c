//! Outbound SMTP: one delivery attempt of one message to one destination
//! domain, with an outcome per recipient.
//!
//! Owns: [`Delivery::attempt`], over one [`Path`] (an egress source, a
//! site, and the limits the scheduler's shaping gave it): walk the
//! destination's hosts in order (MX preference, or a static route), take
//! a pooled connection or connect (closing the path's oldest idle ones
//! first if it is at its limit),
//! fall through to the next host on a refused connection or a bad greeting,
//! apply the destination's TLS policy (none, opportunistic with plaintext
//! fallback, require), and run one transaction carrying all the domain's
//! recipients. Files:
//! `client` (the SMTP client), `outcome` (the one reply/error → outcome
//! mapping), `pool` (idle connections), `route` (static routes, smarthost
//! or MX → the targets to try), `egress` (sources and pools), `proxy`
//! (PROXY v2 headers), `sts` (receivers' MTA-STS policies, which the
//! scheduler applies before an attempt).
//!
//! May call: `dns` (MX and addresses), `tls`, `mta_sts` (receivers'
//! policies), `dane` (TLSA records as a certificate check), `tlsrpt`
//! (TLS sessions counted for reports), `proto` (replies, dot-stuffing, DSN parameters), `queue` (the
//! envelope's DSN request), `config`, `metrics`, `shard`.
//! Must not: write the queue, retry or bounce; it returns values and the
//! scheduler decides.

pub mod client;
pub mod egress;
pub mod outcome;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod sts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client::{Client, Outgoing};
pub use outcome::DeliveryOutcome;

use crate::config::{Config, OutboundTls};
use crate::dane::TlsaSet;
use crate::tlsrpt::{PolicyKey, Session, Tally};
use mail_auth::report::tlsrpt::ResultType;
use pool::Pool;
use rustls::client::danger::ServerCertVerifier;

/// One host to try: its name (for logs and TLS) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
    /// The host's MX and address answers were DNSSEC-secure: DANE may
    /// apply (`dns.dnssec`).
    pub secure: bool,
    /// The host's TLSA records, when DANE applies: TLS is then mandatory
    /// and the certificate checked against them (`crate::dane`), whatever
    /// the destination's other policy.
    pub dane: Option<Arc<TlsaSet>>,
}

impl Target {
    /// A host with no DNSSEC standing.
    pub fn new(host: String, addr: SocketAddr) -> Target {
        Target {
            host,
            addr,
            secure: false,
            dane: None,
        }
    }
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
    /// The site it went to (`scheduler::shaping::site_name`), once known.
    pub site: Option<String>,
    /// TLS protocol and cipher of the connection used, if encrypted.
    pub tls: Option<String>,
    /// The server that took the message offers DSN (RFC 3461): the
    /// sender's NOTIFY went on with it, so no "relayed" notice is due.
    pub next_hop_dsn: bool,
    /// Not attempted: a hold of the scheduler (a suspension of the site,
    /// pool, source or path, or a cap) kept it. Its recipients go as soon
    /// as the hold ends (`scheduler::state::State::take_held`).
    pub held: bool,
    /// The TLS policy the attempt was held to (the delivery log's
    /// `tls_policy`): `dane`, `mta-sts`, `require`, `opportunistic` or
    /// `none`; set by the scheduler, which knows the destination's.
    pub tls_policy: Option<&'static str>,
    /// When no host took the message and TLS was why at the last one:
    /// the failure as TLS reports name it (`certificate-host-mismatch`,
    /// `starttls-not-supported`, ...).
    pub tls_failure: Option<&'static str>,
    /// Positions in `outcomes` of recipients the scheduler failed without
    /// trying them: they were put on the suppression list after their
    /// message was queued. Their failures are logged and bounced like
    /// any other, but trigger no `[backoff]` rule and suppress nothing.
    pub suppressed: Vec<usize>,
}

impl Attempt {
    /// Every recipient of `rcpts` with the same outcome, nothing reached.
    pub fn all(outcome: DeliveryOutcome, rcpts: usize) -> Attempt {
        Attempt {
            outcomes: vec![outcome; rcpts],
            remote: None,
            source: None,
            site: None,
            tls: None,
            next_hop_dsn: false,
            held: false,
            tls_policy: None,
            tls_failure: None,
            suppressed: Vec::new(),
        }
    }

    /// Whether `outcome` (one of this attempt's) came of trying its
    /// recipient, not of the suppression list ([`Attempt::suppressed`]).
    pub fn tried(&self, outcome: &DeliveryOutcome) -> bool {
        !self
            .suppressed
            .iter()
            .any(|&k| std::ptr::eq(&self.outcomes[k], outcome))
    }

    /// The attempt as a drain sees it: the peer is a hop the operator
    /// chose, so its refusal (or a loop) is a problem of the hop, not of
    /// the recipient. Permanent outcomes become temporary: the message
    /// stays queued, never bounces.
    pub fn kept_for_drain(mut self) -> Attempt {
        for o in &mut self.outcomes {
            if let DeliveryOutcome::Permanent { reply, .. } = o {
                *o = DeliveryOutcome::Temporary {
                    reply: format!("drain peer refused it: {reply}"),
                };
            }
        }
        self
    }
}

/// What this node is, to recognise a next hop that is this node again (a
/// mail loop, RFC 5321 6.3): its host names and its SMTP listening
/// addresses.
#[derive(Clone, Debug, Default)]
pub struct Myself {
    /// `server.hostname` and the EHLO names, lower-case.
    names: Vec<String>,
    listening: Vec<SocketAddr>,
}

impl Myself {
    pub fn new(names: &[&str], listening: &[SocketAddr]) -> Myself {
        let mut names: Vec<String> = names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        Myself {
            names,
            listening: listening.to_vec(),
        }
    }

    /// A server that greets or answers EHLO with this name is this node.
    pub fn is_named(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// One of our own listeners: the address itself, or a loopback
    /// address on the port of a listener bound to every address.
    pub fn listens_on(&self, addr: SocketAddr) -> bool {
        self.listening.iter().any(|l| {
            *l == addr
                || (l.ip().is_unspecified() && l.port() == addr.port() && addr.ip().is_loopback())
        })
    }

    /// The outcome for a next hop that is ourselves: bounced once, with
    /// this reason, never retried in a circle.
    pub fn loop_outcome(what: &str) -> DeliveryOutcome {
        DeliveryOutcome::permanent("5.4.6", &format!("mail loops back to myself ({what})"))
    }
}

/// How outbound connections are made: read from the config and the CA
/// file once at start-up, shared by every shard.
#[derive(Clone)]
pub struct OutboundSettings {
    pub helo: String,
    /// For every reply and write.
    pub timeout: Duration,
    /// For opportunistic STARTTLS (any certificate).
    pub opportunistic: Arc<rustls::ClientConfig>,
    /// For destinations that require a verified certificate, if any do.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// Its verifier, for the TLS reports of MTA-STS testing mode.
    pub webpki: Option<Arc<dyn ServerCertVerifier>>,
    /// `[egress]`: the sources and pools.
    pub egress: crate::config::EgressConfig,
    /// This node, to stop mail loops.
    pub myself: Arc<Myself>,
}

impl OutboundSettings {
    /// From the config and the verified-TLS client config (loaded from
    /// `tls.ca_file` by the caller when some destination requires it).
    pub fn new(
        cfg: &Config,
        verified: Option<Arc<rustls::ClientConfig>>,
        webpki: Option<Arc<dyn ServerCertVerifier>>,
    ) -> OutboundSettings {
        OutboundSettings {
            helo: cfg.helo_name().to_string(),
            timeout: Duration::from_secs(cfg.delivery.reply_timeout_secs),
            opportunistic: crate::tls::opportunistic_client(),
            verified,
            webpki,
            egress: cfg.egress.clone(),
            myself: Arc::new(Myself::new(
                &std::iter::once(cfg.hostname())
                    .chain(std::iter::once(cfg.helo_name()))
                    .chain(cfg.egress.source.iter().map(|s| s.ehlo.as_str()))
                    .collect::<Vec<_>>(),
                &[cfg.smtp.listen.addr(), cfg.submission.listen.addr()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>(),
            )),
        }
    }
}

impl Delivery {
    /// Counts a new connection's TLS for TLS reporting, when its
    /// destination has a policy: DANE's for a target with TLSA records,
    /// else the domain's MTA-STS policy, or the one it publishes but that
    /// could not be had. A connection that failed before TLS was in
    /// question (refused, no greeting) is no session.
    fn count_session(
        &self,
        target: &Target,
        path: &Path<'_>,
        result: &Result<Client, client::ConnectError>,
        observation: Option<rustls::Error>,
    ) {
        let kind = match (&target.dane, path.mta_sts, path.sts_failure) {
            (Some(_), _, _) => "dane",
            (None, true, _) | (None, false, Some(_)) => "mta-sts",
            (None, false, None) => return,
        };
        let Some(failure) = session_failure(target, path, result, observation) else {
            return;
        };
        let result = failure
            .as_ref()
            .map_or("success", |(r, _)| crate::tlsrpt::result_str(*r));
        ::metrics::counter!(crate::metrics::OUTBOUND_TLS_SESSIONS, "policy" => kind, "result" => result)
            .increment(1);
        let Some(r) = &path.reporting else {
            return;
        };
        let policy = match (&target.dane, r.sts) {
            (Some(set), _) => PolicyKey::tlsa(r.domain, set.presentation()),
            (None, Some(sts)) => sts.clone(),
            (None, None) => PolicyKey::sts(r.domain, Vec::new()),
        };
        let session = Session {
            mx_host: Some(target.host.clone()),
            receiving_ip: Some(target.addr.ip()),
            sending_ip: path.source.map(|s| s.address),
            failure,
        };
        self.tls_sessions
            .borrow_mut()
            .record(r.now, &policy, &session);
    }
}

/// How a new connection's session went under its destination's policy:
/// None: no session (it failed before TLS was in question); Some(None):
/// success; else the failure. The policy's own failures come first: an
/// MTA-STS policy that could not be had, TLSA records none of which is
/// usable (RFC 8460 §4.3.2).
fn session_failure(
    target: &Target,
    path: &Path<'_>,
    result: &Result<Client, client::ConnectError>,
    observation: Option<rustls::Error>,
) -> Option<Option<(ResultType, String)>> {
    let failure = match result {
        Ok(c) if c.tls.is_some() => observation.map(|e| {
            let kind = crate::tlsrpt::result_of_tls_error(&e);
            (
                kind,
                format!("{}: the certificate would not verify: {e}", c.host),
            )
        }),
        Ok(c) => Some((
            ResultType::StartTlsNotSupported,
            format!("{} did not offer STARTTLS", c.host),
        )),
        Err(e) => Some((e.tls_failure?, e.outcome.reply().to_string())),
    };
    let policy_failure = match &target.dane {
        Some(set) if set.usable.is_empty() => Some((
            ResultType::TlsaInvalid,
            format!(
                "none of the TLSA records at {} is usable for SMTP (DANE-TA or DANE-EE)",
                set.name
            ),
        )),
        Some(_) => None,
        None => path.sts_failure.cloned(),
    };
    Some(policy_failure.or(failure))
}

impl Delivery {
    /// For a new opportunistic connection under an MTA-STS policy in
    /// testing mode, with reports on: a config that checks the
    /// certificate as `enforce` would, only to report it.
    fn observer(
        &self,
        target: &Target,
        path: &Path<'_>,
        policy: OutboundTls,
    ) -> Option<(
        Arc<rustls::ClientConfig>,
        Arc<crate::tls::CheckedBy<crate::tls::Observe>>,
    )> {
        let testing = path.reporting.as_ref().is_some_and(|r| r.testing);
        if !testing || target.dane.is_some() || policy != OutboundTls::Opportunistic {
            return None;
        }
        self.webpki.as_ref().map(crate::tls::observing_client)
    }
}

/// One path of an attempt: where from, to which site, under which limits.
pub struct Path<'a> {
    pub source: Option<&'a egress::Source>,
    pub site: &'a str,
    /// The destination's TLS policy, after the shaping rule raised it.
    pub policy: OutboundTls,
    pub connect_timeout: Duration,
    pub max_messages_per_connection: u32,
    pub idle_timeout: Duration,
    /// Idle connections of the path that may stay open when this attempt
    /// opens a new one (its limit, less those in use): the oldest others
    /// are closed first.
    pub idle_room: usize,
    /// An MTA-STS policy (enforce or testing) holds for the destination
    /// (its TLS sessions are counted in the metrics).
    pub mta_sts: bool,
    /// The domain publishes an MTA-STS policy that could not be had (its
    /// sessions are counted as that failure).
    pub sts_failure: Option<&'a sts::PolicyFailure>,
    /// Where the attempt's TLS sessions are counted for TLS reporting
    /// (RFC 8460), when reports are on and the destination has a policy.
    pub reporting: Option<Reporting<'a>>,
}

/// What TLS reporting needs to know of an attempt's destination.
pub struct Reporting<'a> {
    /// The recipient domain.
    pub domain: &'a str,
    /// Its MTA-STS policy, as the report names it, if it has one.
    pub sts: Option<&'a PolicyKey>,
    /// That policy is in testing mode: delivery is opportunistic, and
    /// the certificate is checked only to be reported.
    pub testing: bool,
    /// Unix seconds now (the shard's clock): the report's day.
    pub now: u64,
}

/// One shard's outbound side: its connection pool and the settings.
pub struct Delivery {
    pub helo: String,
    pub timeout: Duration,
    pub pool: Pool,
    /// For opportunistic STARTTLS (any certificate).
    pub opportunistic: Arc<rustls::ClientConfig>,
    /// For destinations that require a verified certificate, if any do.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// Its verifier, for the TLS reports of MTA-STS testing mode.
    pub webpki: Option<Arc<dyn ServerCertVerifier>>,
    /// This shard's sources and pool rotations.
    pub egress: egress::Egress,
    pub myself: Arc<Myself>,
    /// This shard's TLS sessions to destinations with a policy, for TLS
    /// reporting (taken by the scheduler to keep and report).
    pub tls_sessions: std::cell::RefCell<Tally>,
}

/// Why a target was not sent to, and what the attempt does next.
enum Instead {
    /// The egress source cannot be used: the attempt fails as a whole.
    Fail(DeliveryOutcome),
    /// The outcome of every recipient (a mail loop).
    Done(DeliveryOutcome),
    /// Try the next target (and what TLS failed, if that was why).
    Next(DeliveryOutcome, Option<ResultType>),
}

impl Delivery {
    pub fn new(s: &OutboundSettings) -> Delivery {
        Delivery {
            helo: s.helo.clone(),
            timeout: s.timeout,
            pool: Pool::default(),
            opportunistic: s.opportunistic.clone(),
            verified: s.verified.clone(),
            webpki: s.webpki.clone(),
            egress: egress::Egress::new(&s.egress, &s.helo),
            myself: s.myself.clone(),
            tls_sessions: std::cell::RefCell::new(Tally::default()),
        }
    }

    /// Tries `targets` in order until one takes the transaction, over
    /// `path`. Err when the path's source is down (its address cannot be
    /// bound): the caller tries another source.
    pub async fn attempt(
        &self,
        targets: &[Target],
        msg: &Outgoing<'_>,
        path: &Path<'_>,
    ) -> Result<Attempt, DeliveryOutcome> {
        let source_name = path.source.map(|s| s.name.clone());
        let mut last = DeliveryOutcome::Temporary {
            reply: "no host to deliver to".into(),
        };
        // The last failure's TLS result type, if TLS was what failed.
        let mut last_tls = None;
        for target in targets {
            let (mut client, reused) = match self.client_for(target, path).await {
                Ok(c) => c,
                Err(Instead::Fail(outcome)) => return Err(outcome),
                Err(Instead::Done(outcome)) => {
                    return Ok(Attempt {
                        source: source_name,
                        site: Some(path.site.to_string()),
                        remote: Some(target.clone()),
                        ..Attempt::all(outcome, msg.recipients.len())
                    });
                }
                Err(Instead::Next(outcome, tls)) => {
                    (last, last_tls) = (outcome, tls);
                    continue;
                }
            };
            let mut result = client.send(msg).await;
            if reused && client.failed_before_mail() {
                // The pooled connection had died while idle: nothing of
                // the message was accepted, so it goes again at once on a
                // fresh connection, as if the pool had been empty.
                ::metrics::counter!(crate::metrics::OUTBOUND_STALE_CONNECTIONS).increment(1);
                match self.connect(target, path).await {
                    Ok(fresh) => {
                        client = fresh;
                        result = client.send(msg).await;
                    }
                    Err(e) => {
                        (last, last_tls) = (e.outcome, e.tls_failure);
                        continue;
                    }
                }
            }
            let tls = client.tls.clone();
            let next_hop_dsn = client.ext.dsn;
            self.pool.put(
                client,
                path.site,
                path.max_messages_per_connection,
                path.idle_timeout,
            );
            let outcomes = match result {
                Ok(outcomes) => outcomes,
                Err(why) => vec![why; msg.recipients.len()],
            };
            return Ok(Attempt {
                outcomes,
                remote: Some(target.clone()),
                tls,
                next_hop_dsn,
                held: false,
                tls_policy: None,
                tls_failure: None,
                source: source_name,
                site: Some(path.site.to_string()),
                suppressed: Vec::new(),
            });
        }
        Ok(Attempt {
            source: source_name,
            site: Some(path.site.to_string()),
            tls_failure: last_tls.map(crate::tlsrpt::result_str),
            ..Attempt::all(last, msg.recipients.len())
        })
    }

    /// A connection to `target` for `path`: a pooled one (true) or a new
    /// one, or what to do instead.
    async fn client_for(
        &self,
        target: &Target,
        path: &Path<'_>,
    ) -> Result<(Client, bool), Instead> {
        if self.myself.listens_on(target.addr) {
            let why = format!("{} is our own listener", target.addr);
            return Err(Instead::Done(Myself::loop_outcome(&why)));
        }
        // Only a connection opened for this host under this policy (or a
        // stricter one) serves it: see `pool`.
        let dane = target.dane.as_ref().map(|set| set.digest);
        let policy = match dane {
            Some(_) => OutboundTls::Require,
            None => path.policy,
        };
        let pooled = self.pool.take(
            (&target.host, target.addr),
            (policy, dane),
            path.source.map(|s| s.name.as_str()),
            path.site,
        );
        if let Some(c) = pooled {
            return Ok((c, true));
        }
        match self.connect(target, path).await {
            Ok(c) => Ok((c, false)),
            Err(e) if e.source_down => Err(Instead::Fail(e.outcome)),
            // A loop: the one permanent failure of a connection.
            Err(e) if matches!(e.outcome, DeliveryOutcome::Permanent { .. }) => {
                Err(Instead::Done(e.outcome))
            }
            Err(e) => {
                log::debug!("{}: {}", target.host, e.outcome.reply());
                Err(Instead::Next(e.outcome, e.tls_failure))
            }
        }
    }

    /// Connects to the first of `targets` that answers, reads its
    /// greeting and says EHLO (no TLS), then QUIT: the peer exists, speaks
    /// SMTP and is not this node. Ok: "host[ip]"; Err: the last failure.
    pub async fn probe(
        &self,
        targets: &[Target],
        connect_timeout: Duration,
    ) -> Result<String, DeliveryOutcome> {
        let mut last = DeliveryOutcome::Temporary {
            reply: "no address to connect to".into(),
        };
        for t in targets {
            if self.myself.listens_on(t.addr) {
                return Err(Myself::loop_outcome(&format!(
                    "{} is our own listener",
                    t.addr
                )));
            }
            let dial = client::Dial {
                peer: t.addr,
                source: None,
                host: &t.host,
                helo: &self.helo,
                myself: &self.myself,
                dane: None,
            };
            let timeout = self.timeout.min(Duration::from_secs(30));
            match Client::connect(dial, connect_timeout, timeout, None, OutboundTls::None).await {
                Ok(c) => {
                    c.quit().await;
                    return Ok(format!("{}[{}]", t.host, t.addr.ip()));
                }
                Err(e) if matches!(e.outcome, DeliveryOutcome::Permanent { .. }) => {
                    return Err(e.outcome);
                }
                Err(e) => last = e.outcome,
            }
        }
        Err(last)
    }

    /// A new connection under `policy`. Opportunistic: if the TLS handshake
    /// fails, the same host again in plaintext (rustls has no CBC or RSA key
    /// exchange, so some old servers cannot talk to it). Require: verified
    /// TLS or a temporary failure, never plaintext. A target with TLSA
    /// records (DANE) is required TLS checked against them, whatever the
    /// path's policy.
    async fn connect(
        &self,
        target: &Target,
        path: &Path<'_>,
    ) -> Result<Client, client::ConnectError> {
        let source = path.source;
        let policy = match target.dane {
            Some(_) => OutboundTls::Require,
            None => path.policy,
        };
        let closing = self
            .pool
            .trim(source.map(|s| s.name.as_str()), path.site, path.idle_room);
        // Closed before the new one opens: the receiver never sees more
        // than the path's limit at once.
        futures::future::join_all(closing.into_iter().map(Client::quit)).await;
        let helo = source.map_or(self.helo.as_str(), |s| s.ehlo.as_str());
        let connect = |tls| {
            Client::connect(
                client::Dial {
                    peer: target.addr,
                    source,
                    host: &target.host,
                    helo,
                    myself: &self.myself,
                    dane: target.dane.as_ref().map(|set| set.digest),
                },
                path.connect_timeout,
                self.timeout,
                tls,
                policy,
            )
        };
        let require = policy == OutboundTls::Require;
        let dane_config = target
            .dane
            .as_ref()
            .map(|set| crate::dane::client_config(TlsaSet::clone(set)));
        let observed = self.observer(target, path, policy);
        let config = match policy {
            _ if dane_config.is_some() => dane_config.as_ref(),
            _ if observed.is_some() => observed.as_ref().map(|(config, _)| config),
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
        let observation = observed.as_ref().and_then(|(_, o)| o.check.found());
        self.count_session(target, path, &result, observation);
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
