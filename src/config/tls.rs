//! `[tls]`: certificates for inbound STARTTLS, and the outbound policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Problems;

/// How hard to insist on TLS when delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    #[default]
    Opportunistic,
    None,
    Require,
}

section! {
    /// Certificates for inbound STARTTLS, and the outbound policy.
    ///
    /// Inbound, bytes a client sends after `STARTTLS` but before the
    /// handshake are never executed: they are discarded and the session is
    /// closed (`554 5.5.1`), the defence against CVE-2011-0411-style
    /// injection. After the handshake the session starts over (EHLO again);
    /// `Received:` says `ESMTPS`. Outbound, any bytes a server sends after
    /// its `220` to STARTTLS are discarded unread, and a pooled connection
    /// serves only destinations whose policy it was opened for.
    TlsConfig = "tls" {
        /// PEM certificate chain for inbound STARTTLS. With `key_file` set
        /// too, STARTTLS is advertised (until TLS is active). Loaded at
        /// start-up.
        cert_file: String = String::new(),
        /// PEM private key of `cert_file`.
        key_file: String = String::new(),
        /// Default outbound policy. `"opportunistic"`: STARTTLS when a
        /// server offers it, accepting any certificate (RFC 7435), and that
        /// host again in plaintext if the handshake fails. `"require"`: the
        /// certificate must verify against `ca_file` for the MX host name;
        /// no STARTTLS or a failed verification is a temporary failure,
        /// never plaintext. `"none"`: never TLS. The delivery log records
        /// protocol and cipher.
        outbound: OutboundTls = OutboundTls::Opportunistic,
        /// Per destination domain overrides of `outbound`, e.g. `policy = {
        /// "bank.example" = "require", "old.example" = "none" }`.
        policy: BTreeMap<String, OutboundTls> = BTreeMap::new(),
        /// PEM bundle of CAs trusted for `require` (loaded at start-up when
        /// some destination requires TLS; a bundle that does not load stops
        /// the start).
        ca_file: String = "/etc/ssl/certs/ca-certificates.crt".into(),
        /// Apply receivers' MTA-STS policies (RFC 8461) to mail delivered
        /// to their MX hosts: a domain that publishes `_mta-sts` and a
        /// policy in `enforce` mode gets its mail only at the MX hosts the
        /// policy names, over TLS whose certificate verifies against
        /// `ca_file` for the MX host name, else the mail waits (a
        /// temporary failure that says why), never plaintext or another
        /// host; `testing` mode changes nothing. Policies are fetched over
        /// TLS verified against `ca_file`, kept for their `max_age`, and
        /// their record looked at again every 5 minutes. Not for routes or
        /// the smarthost.
        mta_sts: bool = true,
        /// Domains whose MTA-STS policy is not applied (a receiver whose
        /// policy is known to be broken), e.g. `["broken.example"]`.
        mta_sts_ignore: Vec<String> = Vec::new(),
        /// Apply receivers' DANE TLSA records (RFC 7672) to mail delivered
        /// to their MX hosts, when `dns.dnssec` is on: for an MX host whose
        /// MX and address answers are DNSSEC-secure, the TLSA records at
        /// `_PORT._tcp.HOST` make TLS mandatory and the certificate must
        /// match one (DANE-EE: the key or certificate itself; DANE-TA: a
        /// certificate of the chain, with the MX host name checked), else
        /// the host is not used and the mail waits, never plaintext. A TLSA
        /// answer that fails validation or cannot be had also keeps the
        /// host out. DANE wins over MTA-STS for the hosts it covers. Not
        /// for routes or the smarthost.
        dane: bool = true,
        /// Domains whose DANE records are not applied (a receiver whose
        /// records are known to be broken), e.g. `["broken.example"]`.
        dane_ignore: Vec<String> = Vec::new(),
    }
}

impl TlsConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            p.at(
                "tls.cert_file",
                "cert_file and key_file go together: set both or neither",
            );
        }
    }

    /// The outbound policy for mail to `domain`.
    pub fn policy_for(&self, domain: &str) -> OutboundTls {
        self.policy
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map_or(self.outbound, |(_, p)| *p)
    }

    /// Whether any destination requires verified TLS.
    pub fn requires_verification(&self) -> bool {
        self.outbound == OutboundTls::Require
            || self.policy.values().any(|p| *p == OutboundTls::Require)
    }

    /// Whether inbound STARTTLS is configured.
    pub fn inbound(&self) -> bool {
        !self.cert_file.is_empty()
    }
}
