//! `[unsubscribe]`: one-click unsubscribe (RFC 8058) links in the mail
//! ringpost sends, and the public listener that honours them.

use super::{Listen, Problems};

section! {
    /// One-click unsubscribe (RFC 8058), which Gmail and Yahoo ask of bulk
    /// senders: at reception ringpost adds `List-Unsubscribe: <BASE/u/TOKEN>,
    /// <mailto:...>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// (before DKIM signing, so both are signed) to a message of one
    /// recipient whose pool is in `pools` or whose injection asked
    /// (`"unsubscribe": true`); a message that has its own
    /// `List-Unsubscribe` keeps it. TOKEN is an HMAC over the recipient,
    /// the sender's domain, the message's id and the time: no lookup
    /// verifies it. A `POST /u/TOKEN` with `List-Unsubscribe=One-Click` to
    /// `listen` (or mail to `mailto` whose subject ends in the token) puts
    /// the recipient on the suppression list for that sender domain
    /// (reason `Unsubscribe`, no expiry) and writes an `Unsubscribe`
    /// event; `GET /u/TOKEN` shows a page with a button and changes
    /// nothing (link scanners follow links). docs/unsubscribe.md.
    UnsubscribeConfig = "unsubscribe" {
        /// The public listener for `/u/TOKEN`, or `"off"`. Served by shard
        /// 0; no token asked (the link is the credential). Put it behind
        /// `base_url`'s host name.
        listen: Listen = Listen::Off,
        /// Where the links point: `https://host[/prefix]`; a link is
        /// `base_url` + `/u/` + TOKEN (RFC 8058 asks for HTTPS). Empty:
        /// no links are added.
        base_url: String = String::new(),
        /// A file of secrets, one per line (at least 32 characters each):
        /// the first signs new links, every line verifies, so a rotation
        /// puts the new secret first and keeps the old one below it for
        /// `link_lifetime_days`. Read again on SIGHUP.
        secret_file: String = String::new(),
        /// An address for `mailto:` unsubscribes (in `smtp.local_domains`),
        /// e.g. `"unsubscribe@bounce.example.com"`: mail to it is read, not
        /// queued. Empty: links carry only the HTTPS one.
        mailto: String = String::new(),
        /// Egress pools whose messages get the links (`""`: the default
        /// pool, `"*"`: every pool); an injection's `"unsubscribe"` field
        /// overrides. Empty: only injections that ask.
        pools: Vec<String> = Vec::new(),
        /// Days a link keeps working after the message was received.
        link_lifetime_days: u64 = 90,
        /// Requests one client address may make per minute; more get
        /// `429`.
        max_requests_per_ip_per_minute: u32 = 30,
        /// Concurrent connections to `listen`; more get `503`.
        max_connections: usize = 256,
        /// PEM certificate chain for HTTPS on `listen` (with `key_file`).
        /// Empty: plain HTTP (a TLS-terminating proxy in front).
        cert_file: String = String::new(),
        /// PEM private key of `cert_file`.
        key_file: String = String::new(),
    }
}

impl UnsubscribeConfig {
    /// Whether links are added to any mail or honoured.
    pub fn is_on(&self) -> bool {
        !self.base_url.is_empty()
    }

    /// Links' lifetime in seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.link_lifetime_days.saturating_mul(86_400)
    }

    pub fn check(&self, local_domains: &[String], suppression: bool, p: &mut Problems) {
        if self.is_on() && !suppression {
            p.at(
                "unsubscribe.base_url",
                "unsubscribes go on the suppression list: suppression.enabled must be true",
            );
        }
        if self.is_on() {
            let rest = self.base_url.strip_prefix("https://").unwrap_or("");
            if rest.is_empty() || rest.contains(['?', '#', ' ', '<', '>']) || rest.ends_with('/') {
                p.at(
                    "unsubscribe.base_url",
                    "must be https://host[/prefix], without a trailing / (RFC 8058 asks for HTTPS)",
                );
            }
            if self.secret_file.is_empty() {
                p.at(
                    "unsubscribe.secret_file",
                    "links are signed: set a file of secrets",
                );
            }
        } else if self.listen.is_on() || !self.pools.is_empty() || !self.mailto.is_empty() {
            p.at(
                "unsubscribe.base_url",
                "set it: listen, pools and mailto need the links it makes",
            );
        }
        if !self.mailto.is_empty() {
            let domain = self.mailto.rsplit_once('@').map_or("", |(_, d)| d);
            if !local_domains.iter().any(|l| l.eq_ignore_ascii_case(domain)) {
                p.at(
                    "unsubscribe.mailto",
                    format!(
                        "{}: its domain is not in smtp.local_domains, so no one could send to it",
                        self.mailto
                    ),
                );
            }
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            p.at(
                "unsubscribe.cert_file",
                "cert_file and key_file go together",
            );
        }
        for (key, zero) in [
            ("link_lifetime_days", self.link_lifetime_days == 0),
            (
                "max_requests_per_ip_per_minute",
                self.max_requests_per_ip_per_minute == 0,
            ),
            ("max_connections", self.max_connections == 0),
        ] {
            if zero {
                p.at(format!("unsubscribe.{key}"), "must be at least 1");
            }
        }
    }

    /// Whether mail to `rcpt` is an unsubscribe request.
    pub fn is_mailto(&self, rcpt: &str) -> bool {
        !self.mailto.is_empty() && self.mailto.eq_ignore_ascii_case(rcpt)
    }
}
