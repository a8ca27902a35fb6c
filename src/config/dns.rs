//! `[dns]`: the resolver used for MX and address lookups.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Problems;

section! {
    /// The resolver used for MX and address lookups. Answers are cached
    /// per their TTL.
    DnsConfig = "dns" {
        /// Nameservers as `"ip:port"` (UDP, then TCP). Empty: those in
        /// `/etc/resolv.conf`.
        nameservers: Vec<SocketAddr> = Vec::new(),
        /// Seconds per query attempt (two attempts).
        timeout_secs: u64 = 5,
        /// Validate answers with DNSSEC (RFC 4035), from the trust anchors.
        /// Needed for DANE (`tls.dane`): TLSA records count only in a
        /// secure answer. An answer that fails validation (bogus) is a
        /// temporary failure for the domain, never used unvalidated. Off by
        /// default: validation needs nameservers that pass DNSSEC records
        /// on (most recursive resolvers do; some home routers do not).
        dnssec: bool = false,
        /// A file of DNSKEY records in zone-file syntax, with TTL and
        /// class (`example. 3600 IN DNSKEY 257 3 13 ...`), trusted as
        /// anchors instead of the root's built-in keys (for a private
        /// signed zone, or tests). Read at start-up.
        trust_anchor_file: String = String::new(),
    }
}

impl DnsConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.timeout_secs == 0 {
            p.at("dns.timeout_secs", "must be at least 1");
        }
        if !self.trust_anchor_file.is_empty() {
            if !self.dnssec {
                p.at(
                    "dns.trust_anchor_file",
                    "is read only with dns.dnssec = true",
                );
            } else if let Err(e) = std::fs::metadata(&self.trust_anchor_file) {
                p.at("dns.trust_anchor_file", format!("cannot be read: {e}"));
            }
        }
    }

    /// The trust anchors' file, if one is set (None: the root's keys).
    pub fn trust_anchors(&self) -> Option<PathBuf> {
        Some(&self.trust_anchor_file)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
    }
}
