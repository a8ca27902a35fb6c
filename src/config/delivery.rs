//! `[delivery]`: outbound SMTP, scheduling and retries.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::Problems;

section! {
    /// Outbound SMTP, scheduling and retries.
    ///
    /// Outcomes: 2xx after the data is delivered; 4xx, refused or dropped
    /// connections and timeouts are retried; 5xx, a null MX (5.1.10),
    /// NXDOMAIN or a domain without MX and address (5.1.2), a message over
    /// the server's SIZE (5.3.4), or one that needs SMTPUTF8 / 8BITMIME the
    /// server lacks (5.6.7 / 5.6.3) bounce. A DSN (RFC 3464
    /// `multipart/report`) goes from `<>` to the sender; mail from `<>` is
    /// never bounced.
    DeliveryConfig = "delivery" {
        /// Port for MX deliveries (MX records carry no port).
        remote_port: u16 = 25,
        /// Send all mail to this next hop instead of the MX: `"host:port"`
        /// (A/AAAA lookup, no MX) or `"[ip]:port"`. Empty: use MX records.
        smarthost: String = String::new(),
        /// Per-domain next hops that override MX and the smarthost, e.g.
        /// `routes = { "example.com" = "[10.0.0.5]:2525" }`.
        routes: BTreeMap<String, String> = BTreeMap::new(),
        /// Traffic shaping rules (TOML), read before the ones ringpost
        /// ships: per *site* (the set of MX hosts a domain's mail goes to,
        /// so all domains hosted by one provider share it), matched by
        /// recipient domain or MX host suffix, with per egress source
        /// overrides. Their values replace this section's `max_*` and
        /// timeouts for the sites they fit. Read again on `SIGHUP` or
        /// `POST /config/reload`, without a restart. Format and the
        /// shipped rules: docs/shaping.md. Empty: the shipped rules only.
        shaping_file: String = String::new(),
        /// Concurrent connections per path, across all shards: from one
        /// egress source (or the default address) to one site, for sites
        /// no shaping rule sets it for. Each shard gets an equal share
        /// (remainder to the first shards), and at least one, so with more
        /// shards than connections the total is the number of shards.
        /// Idle pooled connections count.
        max_connections: usize = 20,
        /// Messages per second per path (source, site), across all shards
        /// (each shard paces its share). `0`: no limit.
        max_messages_per_second: f64 = 0.0,
        /// Transactions on one connection before it is closed.
        max_messages_per_connection: u32 = 1000,
        /// An unused pooled connection is closed (QUIT) after this many
        /// seconds.
        idle_timeout_secs: u64 = 30,
        /// TCP connect timeout in seconds; on expiry the next MX host is
        /// tried.
        connect_timeout_secs: u64 = 30,
        /// Timeout in seconds for every reply and write (RFC 5321 4.5.3.2
        /// suggests 5 minutes for most).
        reply_timeout_secs: u64 = 300,
        /// First retry delay in seconds after a temporary failure; doubles
        /// per attempt.
        retry_initial_secs: u64 = 60,
        /// Longest retry delay, in seconds.
        retry_max_secs: u64 = 3600,
        /// A message still failing temporarily after this many seconds
        /// expires: a DSN (status 4.4.7) goes to the sender.
        max_age_secs: u64 = 5 * 24 * 3600,
        /// A delay notice (DSN, Action: delayed) goes to the sender of a
        /// message whose recipients asked for one (`NOTIFY=DELAY`, SMTP or
        /// injection) once it has waited this many seconds undelivered;
        /// one per recipient. 0: none.
        delay_notice_after_secs: u64 = 4 * 3600,
        /// Name sent in EHLO/HELO. Empty: `server.hostname`.
        helo_name: String = String::new(),
        /// Delivery log, one JSON object per line: `"stdout"`, `"off"`, or
        /// a file path (appended). Events: Reception, Delivery,
        /// TransientFailure, Bounce, Expiration, Deletion (by `queue
        /// delete`), with `time`, `id`, `sender`, `recipient`, and where
        /// known `remote_host`, `remote_ip`, `reply`, `attempt`, `tls`. Logs
        /// (start-up, errors) go to stderr, so the two never mix.
        log: String = "stdout".into(),
    }
}

impl DeliveryConfig {
    pub fn check(&self, p: &mut Problems) {
        if !self.smarthost.is_empty()
            && let Err(e) = NextHop::parse(&self.smarthost)
        {
            p.at("delivery.smarthost", e);
        }
        for (domain, hop) in &self.routes {
            if let Err(e) = NextHop::parse(hop) {
                p.at("delivery.routes", format!("\"{domain}\": {e}"));
            }
        }
        if !(self.max_messages_per_second >= 0.0 && self.max_messages_per_second.is_finite()) {
            p.at(
                "delivery.max_messages_per_second",
                "must be 0 (no limit) or positive",
            );
        }
        for (key, v) in [
            ("delivery.max_connections", self.max_connections as u64),
            (
                "delivery.max_messages_per_connection",
                self.max_messages_per_connection.into(),
            ),
            ("delivery.connect_timeout_secs", self.connect_timeout_secs),
            ("delivery.reply_timeout_secs", self.reply_timeout_secs),
            ("delivery.idle_timeout_secs", self.idle_timeout_secs),
            ("delivery.retry_initial_secs", self.retry_initial_secs),
        ] {
            if v == 0 {
                p.at(key, "must be at least 1");
            }
        }
        if self.retry_max_secs < self.retry_initial_secs {
            p.at(
                "delivery.retry_max_secs",
                "must be at least retry_initial_secs",
            );
        }
        if self.helo_name.contains(char::is_whitespace) {
            p.at("delivery.helo_name", "must be a name without spaces");
        }
    }
}

/// A static next hop: `host:port` (looked up as A/AAAA, no MX) or
/// `[ip]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    Addr(SocketAddr),
    Host(String, u16),
}

impl NextHop {
    pub fn parse(s: &str) -> Result<NextHop, String> {
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("`{s}`: expected [ip]:port"))?;
            let ip: IpAddr = ip.parse().map_err(|_| format!("`{s}`: bad IP address"))?;
            let port: u16 = port.parse().map_err(|_| format!("`{s}`: bad port"))?;
            return Ok(NextHop::Addr(SocketAddr::new(ip, port)));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("`{s}`: bad port"))?;
        if host.is_empty() || host.contains(['[', ']', ' ']) {
            return Err(format!("`{s}`: bad host name"));
        }
        Ok(NextHop::Host(host.to_string(), port))
    }
}
