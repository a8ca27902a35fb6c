//! `[dns]`: the resolver used for MX and address lookups.

use std::net::SocketAddr;

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
    }
}

impl DnsConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.timeout_secs == 0 {
            p.at("dns.timeout_secs", "must be at least 1");
        }
    }
}
