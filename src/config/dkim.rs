//! `[dkim]`: the DKIM signing identities, and which of them signs what.
//!
//! Only the values are checked here; the key files are read and judged
//! (format, algorithm, size) by `dkim::Keys::load`, which `check-config`
//! and `serve` both run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Problems;

/// One signing identity: a `d=` domain, a selector and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimIdentity {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8, at least 2048 bits) or
    /// Ed25519 (PKCS#8, RFC 8463). `ringpost dkim keygen` writes one.
    pub key_file: String,
    /// `"rsa-sha256"` or `"ed25519-sha256"`; the key's own type when
    /// unset. When set, the key must be of that type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// This identity's signature lifetime (`x=`), overriding
    /// `dkim.expiry_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_secs: Option<u64>,
}

/// The algorithms a signing identity may name.
pub const DKIM_ALGORITHMS: &[&str] = &["rsa-sha256", "ed25519-sha256"];

/// The canonicalizations (`c=`) that may be configured.
pub const DKIM_CANONICALIZATIONS: &[&str] = &[
    "relaxed/relaxed",
    "relaxed/simple",
    "simple/relaxed",
    "simple/simple",
];

section! {
    /// DKIM signing (RFC 6376; Ed25519 per RFC 8463). Every message is
    /// signed once, as it is accepted (SMTP, HTTP injection and our own
    /// DSNs alike), before it is written to the spool: every delivery
    /// attempt sends the signed bytes, and no key work is repeated.
    ///
    /// Which identities sign a message follows the domain of its `From:`
    /// (so that `d=` aligns with it for DMARC): a domain in `do_not_sign`
    /// (or under one) is not signed; else `domains` maps it (or its
    /// nearest parent listed there) to a signing domain; else the
    /// identities whose `domain` is the From domain or its nearest parent
    /// sign; else those of `fallback`. Every identity of the chosen domain
    /// signs, so an RSA and an Ed25519 identity of one domain give two
    /// signatures side by side.
    ///
    /// A message with no `From:`, several, or one whose domain nothing
    /// signs is queued unsigned, never refused for that; the reason is in
    /// its Reception event and in `ringpost_dkim_unsigned_total{reason}`.
    /// A key that does not load, an RSA key under 2048 bits (ring, the
    /// signing library, signs with nothing smaller) or an unknown
    /// algorithm stops `serve` and is reported by `check-config`.
    ///
    /// Example: `[[dkim.identity]]` with `domain = "example.com"`,
    /// `selector = "s2026r"`, `key_file = "/etc/ringpost/dkim/example.com.s2026r.pem"`;
    /// a second with `selector = "s2026e"` and an Ed25519 key.
    DkimConfig = "dkim" {
        /// The signing identities, as `[[dkim.identity]]` tables with
        /// `domain`, `selector`, `key_file`, and optionally `algorithm`
        /// (`"rsa-sha256"`, `"ed25519-sha256"`) and `expiry_secs`. None:
        /// nothing is signed.
        identity: Vec<DkimIdentity> = Vec::new(),
        /// From domain (and its subdomains) → signing domain, for From
        /// domains whose identities are not their own or a parent's, e.g.
        /// `domains = { "brand.example" = "example.com" }`. Each signing
        /// domain named must have identities.
        domains: BTreeMap<String, String> = BTreeMap::new(),
        /// Signing domain for mail whose From domain nothing else matches
        /// (e.g. the sending service's own domain); empty: such mail is
        /// queued unsigned (`reason="no_identity"`). It must have
        /// identities.
        fallback: String = String::new(),
        /// From domains (and their subdomains) never signed
        /// (`reason="do_not_sign"`).
        do_not_sign: Vec<String> = Vec::new(),
        /// Header fields signed when present, in this order (`h=`; a field
        /// that occurs several times is signed every time). Must include
        /// From. The default is current practice: the fields a reader
        /// sees, the threading and MIME fields, RFC 8058's one-click
        /// unsubscribe pair, which Gmail and Yahoo require to be signed,
        /// and Google's Feedback-ID.
        headers: Vec<String> = [
            "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
            "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
            "In-Reply-To", "References", "List-Unsubscribe",
            "List-Unsubscribe-Post", "Feedback-ID",
        ].map(String::from).to_vec(),
        /// Header fields signed once more than they occur (RFC 6376 8.15):
        /// nobody can then add one (a second From:) without breaking the
        /// signature.
        over_sign: Vec<String> = vec!["From".to_string()],
        /// Header and body canonicalization (`c=`): `"relaxed/relaxed"`
        /// (what large senders use: survives re-folding and trailing
        /// white space), `"relaxed/simple"`, `"simple/relaxed"`,
        /// `"simple/simple"`.
        canonicalization: String = "relaxed/relaxed".into(),
        /// Signature lifetime in seconds: `x=` is the signing time plus
        /// this. 0: no `x=`. Must outlast the queue's lifetime
        /// (`delivery.max_age_secs`) if set, or mail delivered late fails.
        expiry_secs: u64 = 0,
    }
}

impl DkimConfig {
    /// Whether anything is signed.
    pub fn enabled(&self) -> bool {
        !self.identity.is_empty()
    }

    pub fn check(&self, p: &mut Problems) {
        for (i, id) in self.identity.iter().enumerate() {
            let key = |k: &str| format!("dkim.identity[{i}].{k}");
            if !is_domain(&id.domain) {
                p.at(
                    key("domain"),
                    format!("{:?} is not a domain name", id.domain),
                );
            }
            if !is_label_list(&id.selector) {
                p.at(
                    key("selector"),
                    format!("{:?} is not a selector (dot-separated labels)", id.selector),
                );
            }
            if id.key_file.is_empty() {
                p.at(key("key_file"), "set the private key file");
            }
            if let Some(a) = &id.algorithm
                && !DKIM_ALGORITHMS.contains(&a.as_str())
            {
                p.at(
                    key("algorithm"),
                    format!("unknown algorithm {a:?}: use one of {DKIM_ALGORITHMS:?}"),
                );
            }
            let twin = self.identity[..i].iter().any(|o| {
                o.domain.eq_ignore_ascii_case(&id.domain)
                    && o.selector.eq_ignore_ascii_case(&id.selector)
            });
            if twin {
                p.at(
                    key("selector"),
                    format!("{} and {} is configured twice", id.domain, id.selector),
                );
            }
        }
        let signs = |d: &str| {
            self.identity
                .iter()
                .any(|id| id.domain.eq_ignore_ascii_case(d))
        };
        for (from, d) in &self.domains {
            if !signs(d) {
                p.at(
                    "dkim.domains",
                    format!("{from:?} maps to {d:?}, which has no [[dkim.identity]]"),
                );
            }
        }
        if !self.fallback.is_empty() && !signs(&self.fallback) {
            p.at(
                "dkim.fallback",
                format!("{:?} has no [[dkim.identity]]", self.fallback),
            );
        }
        if !self.headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            p.at("dkim.headers", "must include From (RFC 6376 5.4)");
        }
        for h in self.headers.iter().chain(&self.over_sign) {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                p.at("dkim.headers", format!("{h:?} is not a header field name"));
            }
        }
        if !DKIM_CANONICALIZATIONS.contains(&self.canonicalization.as_str()) {
            p.at(
                "dkim.canonicalization",
                format!("use one of {DKIM_CANONICALIZATIONS:?}"),
            );
        }
    }
}

fn is_label_list(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_domain(s: &str) -> bool {
    s.len() <= 253 && is_label_list(s) && s.contains('.')
}
