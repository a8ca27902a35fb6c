//! DKIM signing (RFC 6376, Ed25519 per RFC 8463) of the mail ringpost
//! accepts.
//!
//! Owns: [`Signer`], built once at start-up from `[dkim]` and the keys it
//! names, and shared read-only by every shard (keys are immutable; ring
//! signs with `&self`); the choice of identities for a message from its
//! `From:` domain ([`Signer::identities_for`]); the outcome of signing one
//! message ([`Signed`], [`DkimOutcome`]). Keys, key generation and DNS
//! records are in [`key`].
//!
//! The reception door (`inbound::Door::accept`) calls [`Signer::sign`]
//! once per message, before the message is written: the spooled bytes are
//! the signed bytes. Canonicalization, hashing and the signature itself
//! are mail-auth's; `From:` is read with mail-parser.
//!
//! May call: `config` (its section), `metrics`; mail-auth, mail-parser.
//! Must not: refuse a message (a message that cannot be signed is queued
//! unsigned, with the reason), do I/O, or block on anything but the CPU.

pub mod key;

use std::sync::OnceLock;
use std::time::Instant;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_parser::{HeaderName, HeaderValue, MessageParser};
use serde::Serialize;

use crate::config::DkimConfig;
pub use key::{KeyError, SigningKey};

/// One `[[dkim.identity]]`, its key loaded.
#[derive(Debug)]
pub struct Identity {
    pub domain: String,
    pub selector: String,
    pub key: SigningKey,
    /// `x=` lifetime in seconds; 0 for none.
    pub expiry_secs: u64,
    /// `ringpost_dkim_signatures_total` for this identity, registered at
    /// its first signature (after the metrics recorder is installed).
    signatures: OnceLock<::metrics::Counter>,
}

impl Identity {
    pub fn new(domain: &str, selector: &str, key: SigningKey, expiry_secs: u64) -> Identity {
        Identity {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            key,
            expiry_secs,
            signatures: OnceLock::new(),
        }
    }
}

/// Why a message was queued unsigned (the `reason` label of
/// `ringpost_dkim_unsigned_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsigned {
    /// No `From:` header field.
    NoFrom,
    /// More than one `From:` field, or one with mailboxes of several
    /// domains: which domain to align with is ambiguous.
    MultipleFrom,
    /// A `From:` without a mailbox with a domain.
    BadFrom,
    /// No identity for the From domain and no fallback.
    NoIdentity,
    /// The From domain is in `dkim.do_not_sign`.
    DoNotSign,
    /// mail-auth could not sign it (logged).
    Error,
}

impl Unsigned {
    pub fn as_str(self) -> &'static str {
        match self {
            Unsigned::NoFrom => "no_from",
            Unsigned::MultipleFrom => "multiple_from",
            Unsigned::BadFrom => "bad_from",
            Unsigned::NoIdentity => "no_identity",
            Unsigned::DoNotSign => "do_not_sign",
            Unsigned::Error => "error",
        }
    }
}

/// What signing did to one message, for its Reception event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DkimOutcome {
    /// `d=/s=/a=` of each signature added.
    Signed(Vec<String>),
    Unsigned(Unsigned),
}

impl DkimOutcome {
    /// One line for the queue's record and `queue show`: `signed d=...
    /// s=... a=...` (each signature, `; ` between), or `unsigned: why`.
    pub fn summary(&self) -> String {
        match self {
            DkimOutcome::Signed(sigs) => format!("signed {}", sigs.join("; ")),
            DkimOutcome::Unsigned(why) => format!("unsigned: {}", why.as_str()),
        }
    }
}

/// The result of [`Signer::sign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The `DKIM-Signature:` fields to put on top of the message (empty
    /// when unsigned).
    pub header: Vec<u8>,
    pub outcome: DkimOutcome,
}

/// Every identity, and the rules that pick them.
pub struct Signer {
    identities: Vec<Identity>,
    domains: Vec<(String, String)>,
    fallback: String,
    do_not_sign: Vec<String>,
    headers: Vec<String>,
    over_sign: Vec<String>,
    header_canon: Canonicalization,
    body_canon: Canonicalization,
    parser: MessageParser,
}

/// Loading `[dkim]`'s keys went wrong: every problem, by config key.
#[derive(Debug)]
pub struct LoadProblems(pub Vec<(String, KeyError)>);

impl Signer {
    /// Loads every identity's key. `None` when nothing is configured.
    pub fn load(cfg: &DkimConfig) -> Result<Option<Signer>, LoadProblems> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let mut identities = Vec::new();
        let mut problems = Vec::new();
        for (i, id) in cfg.identity.iter().enumerate() {
            let loaded = SigningKey::load(id.key_file.as_ref()).and_then(|key| {
                key.expect(id.algorithm.as_deref(), &id.key_file)?;
                Ok(key)
            });
            match loaded {
                Ok(key) => identities.push(Identity::new(
                    &id.domain,
                    &id.selector,
                    key,
                    id.expiry_secs.unwrap_or(cfg.expiry_secs),
                )),
                Err(e) => problems.push((format!("dkim.identity[{i}].key_file"), e)),
            }
        }
        if !problems.is_empty() {
            return Err(LoadProblems(problems));
        }
        Ok(Some(Signer::new(cfg, identities)))
    }

    /// A signer over identities already loaded.
    pub fn new(cfg: &DkimConfig, identities: Vec<Identity>) -> Signer {
        let canon = |c: &str| match c {
            "simple" => Canonicalization::Simple,
            _ => Canonicalization::Relaxed,
        };
        let (h, b) = cfg
            .canonicalization
            .split_once('/')
            .unwrap_or(("relaxed", "relaxed"));
        let lower = |v: &[String]| v.iter().map(|d| d.to_ascii_lowercase()).collect();
        Signer {
            identities,
            domains: cfg
                .domains
                .iter()
                .map(|(f, d)| (f.to_ascii_lowercase(), d.to_ascii_lowercase()))
                .collect(),
            fallback: cfg.fallback.to_ascii_lowercase(),
            do_not_sign: lower(&cfg.do_not_sign),
            headers: cfg.headers.clone(),
            over_sign: cfg.over_sign.clone(),
            header_canon: canon(h),
            body_canon: canon(b),
            // From: as an address; every other field kept raw (only its
            // name is looked at).
            parser: MessageParser::default()
                .header_address(HeaderName::From)
                .default_header_raw(),
        }
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// The identities that sign mail from `from_domain` (lower case).
    pub fn identities_for(&self, from_domain: &str) -> Result<Vec<&Identity>, Unsigned> {
        if nearest(from_domain, &self.do_not_sign, |d| d).is_some() {
            return Err(Unsigned::DoNotSign);
        }
        let signs = |d: &str| -> Vec<&Identity> {
            self.identities.iter().filter(|i| i.domain == d).collect()
        };
        let mapped = nearest(from_domain, &self.domains, |(f, _)| f.as_str());
        let chosen = match mapped {
            Some((_, d)) => signs(d),
            None => parents(from_domain)
                .map(signs)
                .find(|ids| !ids.is_empty())
                .unwrap_or_default(),
        };
        match chosen.is_empty() && !self.fallback.is_empty() {
            true => Ok(signs(&self.fallback)),
            false if chosen.is_empty() => Err(Unsigned::NoIdentity),
            false => Ok(chosen),
        }
    }

    /// Signs `message` (header and body as they will be stored) with every
    /// identity its From domain calls for. Never fails: a message that is
    /// not signed says why.
    pub fn sign(&self, message: &[u8]) -> Signed {
        let started = Instant::now();
        let signed = self.sign_inner(message);
        match &signed.outcome {
            DkimOutcome::Signed(_) => ::metrics::histogram!(crate::metrics::DKIM_SIGN_SECONDS)
                .record(started.elapsed().as_secs_f64()),
            DkimOutcome::Unsigned(why) => {
                ::metrics::counter!(crate::metrics::DKIM_UNSIGNED, "reason" => why.as_str())
                    .increment(1)
            }
        }
        signed
    }

    fn sign_inner(&self, message: &[u8]) -> Signed {
        let unsigned = |why| Signed {
            header: Vec::new(),
            outcome: DkimOutcome::Unsigned(why),
        };
        let scan = match self.scan(message) {
            Ok(scan) => scan,
            Err(why) => return unsigned(why),
        };
        let identities = match self.identities_for(&scan.from_domain) {
            Ok(ids) => ids,
            Err(why) => return unsigned(why),
        };
        let mut header = Vec::with_capacity(identities.len() * 512);
        let mut made = Vec::with_capacity(identities.len());
        for id in identities {
            let signer = DkimSigner::from_key(id.key.shared())
                .domain(id.domain.as_str())
                .selector(id.selector.as_str())
                .headers(scan.h.iter().copied())
                .header_canonicalization(self.header_canon)
                .body_canonicalization(self.body_canon)
                .expiration(id.expiry_secs);
            match signer.sign(message) {
                Ok(sig) => {
                    // Newest on top: the signature goes above the fields it
                    // follows in time, our Received: among them (RFC 6376
                    // 5.6 inserts signatures before other DKIM-Signature
                    // fields; receivers read the block top down).
                    header.extend_from_slice(sig.to_header().as_bytes());
                    made.push(format!(
                        "d={} s={} a={}",
                        id.domain,
                        id.selector,
                        id.key.algorithm_name()
                    ));
                    id.signatures
                        .get_or_init(|| {
                            ::metrics::counter!(
                                crate::metrics::DKIM_SIGNATURES,
                                "domain" => id.domain.clone(),
                                "selector" => id.selector.clone(),
                                "algorithm" => id.key.algorithm_name(),
                            )
                        })
                        .increment(1);
                }
                Err(e) => {
                    log::warn!("dkim: {} {}: cannot sign: {e}", id.domain, id.selector);
                    return unsigned(Unsigned::Error);
                }
            }
        }
        Signed {
            header,
            outcome: DkimOutcome::Signed(made),
        }
    }

    /// The From domain, and `h=`: each configured field present in the
    /// message, then each over-signed field once more.
    fn scan<'m>(&'m self, message: &[u8]) -> Result<Scan<'m>, Unsigned> {
        let parsed = self.parser.parse_headers(message).ok_or(Unsigned::NoFrom)?;
        let mut from: Option<&HeaderValue> = None;
        let mut h: Vec<&'m str> = Vec::with_capacity(self.headers.len() + self.over_sign.len());
        for field in parsed.headers() {
            let name = field.name.as_str();
            if field.name == HeaderName::From {
                if from.is_some() {
                    return Err(Unsigned::MultipleFrom);
                }
                from = Some(&field.value);
            }
            if let Some(listed) = self.headers.iter().find(|l| l.eq_ignore_ascii_case(name))
                && !h.iter().any(|seen| seen.eq_ignore_ascii_case(listed))
            {
                h.push(listed);
            }
        }
        let from = from.ok_or(Unsigned::NoFrom)?;
        let from_domain = from_domain(from)?;
        h.extend(self.over_sign.iter().map(String::as_str));
        Ok(Scan { from_domain, h })
    }
}

struct Scan<'m> {
    from_domain: String,
    h: Vec<&'m str>,
}

/// The one domain of a `From:` field's mailboxes, lower case.
fn from_domain(value: &HeaderValue) -> Result<String, Unsigned> {
    let address = value.as_address().ok_or(Unsigned::BadFrom)?;
    let mut domain: Option<String> = None;
    for addr in address.iter() {
        let Some((_, d)) = addr.address().and_then(|a| a.rsplit_once('@')) else {
            return Err(Unsigned::BadFrom);
        };
        let d = d.trim_end_matches('>').to_ascii_lowercase();
        match &domain {
            Some(seen) if *seen != d => return Err(Unsigned::MultipleFrom),
            _ => domain = Some(d),
        }
    }
    domain.filter(|d| !d.is_empty()).ok_or(Unsigned::BadFrom)
}

/// `domain` and each of its parents, nearest first.
fn parents(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| d.split_once('.').map(|(_, p)| p))
        .filter(|d| d.contains('.'))
}

/// The entry of `list` for `domain` or its nearest parent.
fn nearest<'l, T>(domain: &str, list: &'l [T], key: impl Fn(&T) -> &str) -> Option<&'l T> {
    parents(domain).find_map(|d| list.iter().find(|e| key(e) == d))
}

#[cfg(test)]
mod tests;
