//! `[smtp]`: the inbound SMTP listener.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Listen, Problems};

/// What to do with a line that does not end in CRLF (`smtp.bare_lf`,
/// `smtp.bare_cr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEndings {
    /// Take the line as if it ended in CRLF (Postfix 3.9's `normalize`).
    #[default]
    Normalize,
    /// Answer `550 5.5.2` and close the connection.
    Reject,
}

section! {
    /// The inbound SMTP listener.
    SmtpConfig = "smtp" {
        /// Address and port of the SMTP listener, or `"off"`. Every shard
        /// listens on it (SO_REUSEPORT).
        listen: Listen = Listen::at("127.0.0.1:2525"),
        /// Clients in these networks may send to any domain. Everyone else
        /// may send only to `local_domains` (`554 5.7.1` otherwise). They
        /// may also use HTTP injection without a token.
        relay_networks: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().expect("valid"),
            "::1/128".parse().expect("valid"),
        ],
        /// Domains accepted from any client (ringpost is their inbound MX).
        local_domains: Vec<String> = Vec::new(),
        /// Largest message, in bytes; advertised as `SIZE`. Larger: `552
        /// 5.3.4` (at MAIL for `SIZE=`, else after end of data).
        max_message_size: u64 = 36_700_160,
        /// Recipients per message; more get `452 4.5.3`. At least 100 (RFC
        /// 5321 4.5.3.1.8).
        max_recipients: usize = 1000,
        /// Longest command line in octets including CRLF; longer gets `500
        /// 5.5.2` and the rest of the line is skipped. At least 512.
        max_command_line: usize = 2048,
        /// Longest text line in a message, in octets. Lines over RFC 5321's
        /// 998 are accepted unchanged up to this; longer gets `554 5.6.0`
        /// after end of data. At least 1000.
        max_line_length: usize = 65_536,
        /// Error replies in one session before `421 4.7.0` and close.
        max_errors: u32 = 20,
        /// Seconds a client may stay silent (RFC 5321's 5 minutes) before
        /// `421 4.4.2` and close.
        idle_timeout_secs: u64 = 300,
        /// Lines ending in LF without CR: `"normalize"` takes them as CRLF
        /// (Postfix 3.9's `normalize`); `"reject"` answers `550 5.5.2` and
        /// closes. Either way, only `CRLF . CRLF` ends DATA.
        bare_lf: LineEndings = LineEndings::Normalize,
        /// A CR in a message that is not followed by LF: `"normalize"` ends
        /// the line there (stored and relayed as CRLF, so that a receiver
        /// that takes a bare CR for a line end sees the same lines: the CR
        /// variants of SMTP smuggling); `"reject"` answers `550 5.5.2` and
        /// closes.
        bare_cr: LineEndings = LineEndings::Normalize,
        /// Concurrent SMTP connections, all clients together; each shard
        /// admits its equal share. More get `421 4.7.0` at once, before any
        /// command is read.
        max_connections: usize = 10_000,
        /// Concurrent SMTP connections from one client address (per-shard
        /// share, as above).
        max_connections_per_ip: usize = 100,
        /// Longest session however active; then `421 4.4.2`. With
        /// `idle_timeout_secs` this bounds what a slow client can hold.
        max_session_secs: u64 = 3600,
        /// A message with more `Received:` header fields than this (ours
        /// included) is in a mail loop (RFC 5321 6.3): refused with `554
        /// 5.4.6 Too many hops` (HTTP injection: 400), counted in
        /// `ringpost_reception_refused_total{reason="hops"}`. Postfix's
        /// `hopcount_limit`.
        max_received_headers: usize = 50,
        /// Add `Date:` (the time of reception) to mail from trusted clients
        /// (`relay_networks`, authenticated) whose header has none, as a
        /// submission server does (RFC 6409 8.2; RFC 5322 requires it).
        /// Before DKIM signing, so it is signed. Never added to mail from
        /// others (counted in `ringpost_header_fields_flawed_total`).
        add_date: bool = true,
        /// Add `Message-ID: <queue id@server.hostname>` to mail from
        /// trusted clients whose header has none (RFC 6409 8.3; Gmail
        /// refuses mail without one). Before DKIM signing.
        add_message_id: bool = true,
    }
}

impl SmtpConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.max_command_line < 512 {
            p.at(
                "smtp.max_command_line",
                "must be at least 512 (RFC 5321 4.5.3.1.4)",
            );
        }
        if self.max_line_length < 1000 {
            p.at(
                "smtp.max_line_length",
                "must be at least 1000 (RFC 5321 4.5.3.1.6)",
            );
        }
        if self.max_message_size < 1024 || self.max_message_size > (1 << 32) {
            p.at("smtp.max_message_size", "must be between 1 KiB and 4 GiB");
        }
        if self.max_recipients < 100 {
            p.at(
                "smtp.max_recipients",
                "must be at least 100 (RFC 5321 4.5.3.1.8)",
            );
        }
        if self.max_errors == 0 {
            p.at("smtp.max_errors", "must be at least 1");
        }
        for (key, v) in [
            ("smtp.idle_timeout_secs", self.idle_timeout_secs),
            ("smtp.max_session_secs", self.max_session_secs),
            ("smtp.max_connections", self.max_connections as u64),
            (
                "smtp.max_connections_per_ip",
                self.max_connections_per_ip as u64,
            ),
        ] {
            if v == 0 {
                p.at(key, "must be at least 1");
            }
        }
        for d in &self.local_domains {
            if d.is_empty() || d.ends_with('.') || d.contains(['@', ' ']) {
                p.at("smtp.local_domains", format!("`{d}` is not a domain name"));
            }
        }
    }
}
