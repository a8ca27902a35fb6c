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
        /// Send all mail to this next hop instead of the MX: an IP address
        /// (`"192.0.2.1:2525"`, `"[192.0.2.1]:2525"`, `"[2001:db8::1]:25"`)
        /// or a host name (`"relay.example:2525"`, looked up as A/AAAA, no
        /// MX); the port defaults to 25. A next hop that cannot be looked
        /// up or reached defers mail (4.4.x), never bounces it. Empty: use
        /// MX records.
        smarthost: String = String::new(),
        /// Per-domain next hops that override MX and the smarthost, in the
        /// smarthost's forms, e.g. `routes = { "example.com" =
        /// "[10.0.0.5]:2525" }`. Like the smarthost, a route that cannot
        /// be looked up or reached defers mail, never bounces it.
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
        /// no shaping rule sets it for. The shards with mail for the path
        /// lease them from the path's owner shard: one shard with all the
        /// mail may use them all, several share them. Idle pooled
        /// connections count.
        max_connections: usize = 20,
        /// Messages per second per path (source, site), across all shards
        /// (each start takes a token from the path's owner shard, wherever
        /// the mail is). `0`: no limit.
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
        /// expires: a DSN (status 4.4.7) goes to the sender. Scheduled
        /// mail's age counts from its release.
        max_age_secs: u64 = 5 * 24 * 3600,
        /// Scheduled delivery: the furthest ahead a message may be held
        /// for its first attempt (the injection's `deliver_after`, SMTP
        /// `HOLDFOR=`/`HOLDUNTIL=` from trusted clients, RFC 4865, whose
        /// `FUTURERELEASE` advertises it). `0`: scheduling refused.
        max_hold_secs: u64 = 30 * 24 * 3600,
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
        /// delete`), Complaint, AsyncBounce, Unsubscribe (with
        /// `sender_domain` and `via`), with `time`, `id`, `sender`,
        /// `recipient`, `meta`, and where known `remote_host`, `remote_ip`,
        /// `reply`, `attempt`, `tls`, `tls_policy` (dane, mta-sts,
        /// require, opportunistic or none), `tls_failure` (as TLS reports
        /// name it, when TLS was why), `category`, `source` and `site`
        /// (the egress source and the site of an attempt); Reception adds
        /// `priority`, `pool`, `dkim` (signed, or why not) and the DSN
        /// request (`notify`, `orcpt`, `ret`, `envid`). What became of a
        /// message is also kept in the spool (`[history]`) for `queue find`
        /// and `queue trace`. Logs (start-up, errors) go to stderr, so the
        /// two never mix.
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

/// A static next hop the operator names (smarthost, route, drain peer):
/// an IP address, bare or in brackets, or a host name looked up as A/AAAA
/// (never MX), each with an optional port (default 25). Accepted forms:
/// `[192.0.2.1]:2525`, `192.0.2.1:2525`, `192.0.2.1`, `[2001:db8::1]:25`,
/// `2001:db8::1`, `relay.example:2525`, `relay.example`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    Addr(SocketAddr),
    Host(String, u16),
}

impl NextHop {
    pub fn parse(s: &str) -> Result<NextHop, String> {
        let s = s.trim();
        // `ip:port`, `[ipv6]:port`, then a bare `ip`.
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(NextHop::Addr(addr));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NextHop::Addr(SocketAddr::new(ip, 25)));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (inside, port) = match rest.split_once(']') {
                Some((inside, "")) => (inside, 25),
                Some((inside, tail)) => {
                    let port = tail
                        .strip_prefix(':')
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| format!("`{s}`: bad port"))?;
                    (inside, port)
                }
                None => return Err(format!("`{s}`: expected [ip]:port")),
            };
            let ip: IpAddr = inside
                .parse()
                .map_err(|_| format!("`{s}`: bad IP address in brackets"))?;
            return Ok(NextHop::Addr(SocketAddr::new(ip, port)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("`{s}`: bad port"))?,
            ),
            None => (s, 25),
        };
        if !is_host_name(host) {
            return Err(format!(
                "`{s}`: not an IP address nor a host name (letters, digits, '-' and '.')"
            ));
        }
        if port == 0 {
            return Err(format!("`{s}`: bad port"));
        }
        Ok(NextHop::Host(host.trim_end_matches('.').to_string(), port))
    }

    /// The host name to look up, if it is not an address.
    pub fn host_name(&self) -> Option<&str> {
        match self {
            NextHop::Addr(_) => None,
            NextHop::Host(host, _) => Some(host),
        }
    }
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHop::Addr(a) => write!(f, "[{}]:{}", a.ip(), a.port()),
            NextHop::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// A DNS name as a next hop may be: labels of letters, digits and '-',
/// not all digits (that would be a mistyped address).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_in_every_form_an_operator_types() {
        let addr = |s: &str| NextHop::Addr(s.parse().unwrap());
        for (text, want) in [
            ("[127.0.0.1]:2603", addr("127.0.0.1:2603")),
            ("127.0.0.1:2603", addr("127.0.0.1:2603")),
            ("127.0.0.1", addr("127.0.0.1:25")),
            ("[127.0.0.1]", addr("127.0.0.1:25")),
            ("[::1]:2525", addr("[::1]:2525")),
            ("::1", addr("[::1]:25")),
            (" 10.0.0.5:587 ", addr("10.0.0.5:587")),
            (
                "relay.example:2525",
                NextHop::Host("relay.example".into(), 2525),
            ),
            ("relay.example", NextHop::Host("relay.example".into(), 25)),
            (
                "Relay.Example.:25",
                NextHop::Host("Relay.Example".into(), 25),
            ),
        ] {
            assert_eq!(NextHop::parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "[127.0.0.1",
            "[relay.example]:25",
            "300.1.2.3:25",
            "relay example:25",
            "relay.example:0",
            "-relay.example",
            "relay.example:port",
        ] {
            assert!(NextHop::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn a_next_hop_prints_as_it_parses() {
        for text in ["[127.0.0.1]:2603", "[::1]:25", "relay.example:2525"] {
            let hop = NextHop::parse(text).unwrap();
            assert_eq!(hop.to_string(), text);
            assert_eq!(NextHop::parse(&hop.to_string()), Ok(hop));
        }
    }
}
