//! DNS for delivery: MX, then A/AAAA, on one resolver thread shared by all
//! shards; TLSA for DANE; and TXT and PTR, for `ringpost dkim check` and
//! `ringpost dns check`.
//!
//! Owns: the resolver thread ([`start`]), the [`Resolver`] handle shards use,
//! and the rules that turn DNS answers into an ordered list of hosts
//! ([`order_mx`]): MX by preference, equal preferences shuffled; no MX → the
//! domain itself (implicit MX, RFC 5321 5.1); null MX (RFC 7505) and NXDOMAIN
//! → permanent failure; timeouts and SERVFAIL → temporary.
//!
//! Why a thread: hickory's runtime wants `Send` sockets and futures; glommio's
//! are `!Send`. So one thread runs a tokio current-thread runtime that owns
//! the hickory `Resolver`; shards send requests over a flume channel and get
//! answers on a oneshot. hickory caches answers per their TTL.
//!
//! DNSSEC: with `dns.dnssec`, hickory validates every answer from the
//! trust anchors (the root's, or `dns.trust_anchor_file`). Each MX host
//! then says whether its MX and address answers were both secure
//! ([`MxHost::secure`]), which is when DANE applies (RFC 7672 §2.2), and
//! [`Resolver::tlsa`] gives the TLSA records of a secure answer. An answer
//! that fails validation (bogus) is a temporary failure, never a fallback
//! to an unauthenticated one.
//!
//! May call: nothing else in the crate; hickory.
//! Must not: open SMTP connections or decide retries.

use std::net::{IpAddr, SocketAddr};

use futures::channel::oneshot;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver as HickoryResolver, TokioResolver};
use rand::seq::SliceRandom;

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
    /// The MX answer (or, for an implicit MX, the domain's own) and the
    /// host's address answer were both DNSSEC-secure.
    pub secure: bool,
}

/// A TLSA record (RFC 6698 §2.1): certificate usage, selector, matching
/// type, and the certificate association data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// The record's data in presentation form: `3 1 1 <hex>`.
    pub fn presentation(&self) -> String {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// RFC 7505: the domain accepts no mail.
    #[error("domain publishes a null MX: it accepts no mail")]
    NullMx,
    #[error("domain does not exist (NXDOMAIN)")]
    NoSuchDomain,
    #[error("domain has no MX, A or AAAA records")]
    NoAddress,
    #[error("DNS lookup failed: {0}")]
    Temporary(String),
}

impl DnsError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::Temporary(_))
    }

    /// The enhanced status code for a DSN.
    pub fn status(&self) -> &'static str {
        match self {
            DnsError::NullMx => "5.1.10",
            DnsError::NoSuchDomain | DnsError::NoAddress => "5.1.2",
            DnsError::Temporary(_) => "4.4.3",
        }
    }
}

enum Request {
    Mx(String, oneshot::Sender<Result<Vec<MxHost>, DnsError>>),
    Host(String, oneshot::Sender<Result<Vec<IpAddr>, DnsError>>),
    Txt(String, oneshot::Sender<Result<Vec<Vec<u8>>, DnsError>>),
    Ptr(IpAddr, oneshot::Sender<Result<Vec<String>, DnsError>>),
    Tlsa(String, oneshot::Sender<Result<Option<Vec<Tlsa>>, DnsError>>),
}

/// A handle to the resolver thread. Cheap to clone, `Send`.
#[derive(Clone)]
pub struct Resolver {
    tx: flume::Sender<Request>,
}

/// DNSSEC validation for the delivery resolver: on, with these trust
/// anchors (None: the root's).
#[derive(Debug, Clone, Default)]
pub struct Dnssec {
    pub validate: bool,
    /// A file of DNSKEY records in zone-file syntax.
    pub trust_anchor_file: Option<std::path::PathBuf>,
}

/// Starts the resolver thread. `nameservers` empty = /etc/resolv.conf.
pub fn start(
    nameservers: &[SocketAddr],
    timeout: std::time::Duration,
    dnssec: &Dnssec,
) -> std::io::Result<Resolver> {
    let resolver = build(nameservers, timeout, Some(dnssec)).map_err(std::io::Error::other)?;
    let (tx, rx) = flume::unbounded::<Request>();
    std::thread::Builder::new()
        .name("ringpost-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("dns: cannot start runtime: {e}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let resolver = std::rc::Rc::new(resolver);
                while let Ok(req) = rx.recv_async().await {
                    let r = resolver.clone();
                    tokio::task::spawn_local(async move {
                        match req {
                            Request::Mx(domain, reply) => {
                                let _ = reply.send(lookup_mx(&r, &domain).await);
                            }
                            Request::Host(host, reply) => {
                                let _ = reply.send(lookup_host(&r, &host).await);
                            }
                            Request::Txt(name, reply) => {
                                let _ = reply.send(lookup_txt(&r, &name).await);
                            }
                            Request::Ptr(ip, reply) => {
                                let _ = reply.send(lookup_ptr(&r, ip).await);
                            }
                            Request::Tlsa(name, reply) => {
                                let _ = reply.send(lookup_tlsa(&r, &name).await);
                            }
                        }
                    });
                }
            });
        })?;
    Ok(Resolver { tx })
}

fn build(
    nameservers: &[SocketAddr],
    timeout: std::time::Duration,
    dnssec: Option<&Dnssec>,
) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        HickoryResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        HickoryResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 2;
    // Names in MX records are absolute; never append a search domain.
    opts.ndots = 0;
    if let Some(d) = dnssec.filter(|d| d.validate) {
        let anchors = match &d.trust_anchor_file {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| format!("reading trust anchors {}: {e}", path.display()))?,
            None => TrustAnchors::default(),
        };
        builder = builder.with_trust_anchor(std::sync::Arc::new(anchors));
    }
    builder.build().map_err(|e| e.to_string())
}

impl Resolver {
    /// The hosts to try for mail to `domain`, in order.
    pub async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Mx(domain.to_string(), tx))?;
        rx.await
            .unwrap_or_else(|_| Err(DnsError::Temporary("resolver thread gone".into())))
    }

    /// The addresses of one host (for static routes given by name).
    pub async fn host(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Host(host.to_string(), tx))?;
        rx.await
            .unwrap_or_else(|_| Err(DnsError::Temporary("resolver thread gone".into())))
    }

    /// The TXT records at `name`, each one's strings joined (as DKIM
    /// reads a key record, RFC 6376 3.6.2.2).
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Txt(name.to_string(), tx))?;
        rx.await
            .unwrap_or_else(|_| Err(DnsError::Temporary("resolver thread gone".into())))
    }

    /// The TLSA records at `name` (`_PORT._tcp.HOST`) when the answer is
    /// DNSSEC-secure; None when there are none or the answer is not
    /// secure (an unsigned zone); Err when it failed validation (bogus)
    /// or could not be had (SERVFAIL, timeout): DANE then cannot be
    /// ruled out, and the host must not be used (RFC 7672 §2.2).
    pub async fn tlsa(&self, name: &str) -> Result<Option<Vec<Tlsa>>, DnsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Tlsa(name.to_string(), tx))?;
        rx.await
            .unwrap_or_else(|_| Err(DnsError::Temporary("resolver thread gone".into())))
    }

    /// The names an address's PTR records give (reverse DNS), without
    /// the trailing dot; empty when it has none.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Ptr(ip, tx))?;
        rx.await
            .unwrap_or_else(|_| Err(DnsError::Temporary("resolver thread gone".into())))
    }

    fn send(&self, req: Request) -> Result<(), DnsError> {
        self.tx
            .send(req)
            .map_err(|_| DnsError::Temporary("resolver thread gone".into()))
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

async fn lookup_mx(r: &TokioResolver, domain: &str) -> Result<Vec<MxHost>, DnsError> {
    let (records, mx_secure): (Vec<(u16, String)>, bool) = match r.mx_lookup(fqdn(domain)).await {
        Ok(lookup) => {
            let secure = proven(lookup.answers(), domain, "MX")?;
            let records = lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            (records, secure)
        }
        Err(e) if e.is_nx_domain() => return Err(DnsError::NoSuchDomain),
        // The implicit MX: the domain's own address answer decides.
        Err(e) if e.is_no_records_found() => (Vec::new(), true),
        Err(e) => return Err(DnsError::Temporary(e.to_string())),
    };
    let implicit = records.is_empty();
    let ordered = order_mx(domain, records, &mut rand::rng())?;
    let mut hosts = Vec::with_capacity(ordered.len());
    let mut last_err = None;
    for (preference, name) in ordered {
        match lookup_addresses(r, &name).await {
            Ok((addrs, secure)) => hosts.push(MxHost {
                name,
                preference,
                addrs,
                secure: mx_secure && secure,
            }),
            Err(e) => last_err = Some(e),
        }
    }
    match (hosts.is_empty(), last_err) {
        (false, _) => Ok(hosts),
        (true, Some(e @ DnsError::Temporary(_))) => Err(e),
        // No MX and the domain itself has no address: this will not change.
        (true, _) if implicit => Err(DnsError::NoAddress),
        // MX hosts without addresses may be a fix in progress: retry.
        (true, _) => Err(DnsError::Temporary(format!(
            "no MX host of {domain} has an address"
        ))),
    }
}

async fn lookup_host(r: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, DnsError> {
    lookup_addresses(r, host).await.map(|(addrs, _)| addrs)
}

/// A host's addresses, and whether their answer was DNSSEC-secure.
async fn lookup_addresses(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, bool), DnsError> {
    match r.lookup_ip(fqdn(host)).await {
        Ok(ips) => {
            let secure = proven(ips.as_lookup().answers(), host, "address")?;
            let v: Vec<IpAddr> = ips.iter().collect();
            if v.is_empty() {
                Err(DnsError::NoAddress)
            } else {
                Ok((v, secure))
            }
        }
        Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain),
        Err(e) if e.is_no_records_found() => Err(DnsError::NoAddress),
        Err(e) => Err(DnsError::Temporary(e.to_string())),
    }
}

async fn lookup_txt(r: &TokioResolver, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
    match r.txt_lookup(fqdn(name)).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(DnsError::Temporary(e.to_string())),
    }
}

/// Whether an answer's records are all DNSSEC-secure; Err when any failed
/// validation (bogus): such an answer is not used at all.
fn proven(
    records: &[hickory_resolver::proto::rr::Record],
    name: &str,
    what: &str,
) -> Result<bool, DnsError> {
    if records.iter().any(|r| r.proof == Proof::Bogus) {
        return Err(DnsError::Temporary(format!(
            "DNSSEC validation failed for the {what} answer of {name} (bogus)"
        )));
    }
    Ok(!records.is_empty() && records.iter().all(|r| r.proof == Proof::Secure))
}

async fn lookup_tlsa(r: &TokioResolver, name: &str) -> Result<Option<Vec<Tlsa>>, DnsError> {
    match r.tlsa_lookup(fqdn(name)).await {
        Ok(lookup) => {
            if !proven(lookup.answers(), name, "TLSA")? {
                return Ok(None);
            }
            Ok(Some(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|rec| match &rec.data {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect(),
            ))
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(None),
        Err(e) => Err(DnsError::Temporary(format!("TLSA lookup of {name}: {e}"))),
    }
}

async fn lookup_ptr(r: &TokioResolver, ip: IpAddr) -> Result<Vec<String>, DnsError> {
    match r.reverse_lookup(ip).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::PTR(name) => Some(name.to_ascii().trim_end_matches('.').to_string()),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(DnsError::Temporary(e.to_string())),
    }
}

/// mail-auth's DNS front (for SPF's `check_host`) over a resolver built
/// as [`start`] builds its own: the same name servers and timeout.
pub fn authenticator(
    nameservers: &[SocketAddr],
    timeout: std::time::Duration,
) -> Result<mail_auth::MessageAuthenticator, String> {
    build(nameservers, timeout, None).map(mail_auth::MessageAuthenticator)
}

/// Orders MX records: by preference, equal preferences in random order (RFC
/// 5321 5.1). No records → the domain itself (implicit MX). A single record
/// whose exchange is the root → null MX.
pub fn order_mx<R: rand::Rng>(
    domain: &str,
    mut records: Vec<(u16, String)>,
    rng: &mut R,
) -> Result<Vec<(u16, String)>, DnsError> {
    if records.is_empty() {
        return Ok(vec![(0, domain.trim_end_matches('.').to_string())]);
    }
    if records
        .iter()
        .any(|(_, name)| name == "." || name.is_empty())
    {
        return Err(DnsError::NullMx);
    }
    records.shuffle(rng);
    records.sort_by_key(|(pref, _)| *pref);
    Ok(records
        .into_iter()
        .map(|(p, n)| (p, n.trim_end_matches('.').to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_ordering_rules() {
        let mut rng = rand::rng();
        assert_eq!(
            order_mx("d.example", vec![], &mut rng),
            Ok(vec![(0, "d.example".into())])
        );
        assert_eq!(
            order_mx("d.example", vec![(0, ".".into())], &mut rng),
            Err(DnsError::NullMx)
        );
        let ordered = order_mx(
            "d.example",
            vec![(20, "c.".into()), (10, "a.".into()), (10, "b.".into())],
            &mut rng,
        )
        .unwrap();
        assert_eq!(ordered[2], (20, "c".into()));
        assert_eq!(ordered[0].0, 10);
        // Equal preferences come in both orders over many draws.
        let firsts: std::collections::HashSet<String> = (0..64)
            .map(|_| {
                order_mx("d", vec![(10, "a.".into()), (10, "b.".into())], &mut rng).unwrap()[0]
                    .1
                    .clone()
            })
            .collect();
        assert_eq!(firsts.len(), 2);
    }
}
