//! The typed configuration. Its `Default` is the embedded default config.
//!
//! Owns: every setting, each with one name, one default and one doc comment
//! (mirrored in docs/configuration.md), and [`Config::from_toml`], which
//! overrides the defaults field by field from a TOML file and reports every
//! problem it finds at once: unknown keys, wrong types (one per section, as
//! serde stops at the first) and invalid values.
//!
//! Must not: do I/O beyond reading the file it is given; bind ports or open
//! the spool (`check-config` relies on that).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::proto::BareLf;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub smtp: SmtpConfig,
    pub delivery: DeliveryConfig,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub submission: SubmissionConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub inject: InjectConfig,
}

/// `[inject]`: the HTTP injection API (`POST /api/inject/v1`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct InjectConfig {
    /// "ip:port" every shard listens on, or "off".
    pub listen: String,
    /// A file whose first line is a bearer token that lets a client outside
    /// `smtp.relay_networks` inject (`Authorization: Bearer ...`); empty:
    /// only clients in `smtp.relay_networks` may inject.
    pub token_file: String,
    /// Concurrent injection connections, all clients together (each shard
    /// admits its equal share); more get 503 at once.
    pub max_connections: usize,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            listen: "127.0.0.1:8025".into(),
            token_file: String::new(),
            max_connections: 100,
        }
    }
}

impl InjectConfig {
    /// The listen address, None when off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[admin]`: the admin HTTP API (JSON) behind `ringpost queue ...`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// "ip:port" to listen on, or "off". Anything but loopback needs
    /// `token_file`.
    pub listen: String,
    /// A file whose first line is the bearer token every request must
    /// carry (`Authorization: Bearer ...`); empty: no token.
    pub token_file: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9465".into(),
            token_file: String::new(),
        }
    }
}

impl AdminConfig {
    /// The listen address, None when off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[metrics]`: the HTTP endpoint for Prometheus (/metrics) and
/// orchestrators (/healthz, /readyz).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// "ip:port" to listen on, or "off".
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// The listen address, None when off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[submission]`: the message submission listener (RFC 6409) for
/// authenticated users, who may relay anywhere.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SubmissionConfig {
    /// Address and port of the submission listener.
    pub listen: SocketAddr,
    /// Users, one `name:argon2-hash` per line (`ringpost hash-password`).
    /// Empty: no submission listener. Needs `[tls]` (AUTH only after TLS).
    pub users_file: String,
    /// Failed AUTH attempts from one IP within `auth_failure_window_secs`
    /// before its sessions are closed with 421.
    pub max_auth_failures: u32,
    pub auth_failure_window_secs: u64,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        SubmissionConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 587)),
            users_file: String::new(),
            max_auth_failures: 5,
            auth_failure_window_secs: 300,
        }
    }
}

impl SubmissionConfig {
    pub fn enabled(&self) -> bool {
        !self.users_file.is_empty()
    }
}

/// `[tls]`: certificates for inbound STARTTLS, and outbound policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key_file`, STARTTLS is offered inbound.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// Outbound default: "opportunistic" (STARTTLS when offered, any
    /// certificate, plaintext to that host if the handshake fails), "none",
    /// or "require" (a certificate that verifies against `ca_file` for the
    /// MX host name, else a temporary failure).
    pub outbound: OutboundTls,
    /// Per destination domain outbound policy, overriding `outbound`.
    pub policy: BTreeMap<String, OutboundTls>,
    /// PEM bundle of trusted CAs for "require".
    pub ca_file: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    #[default]
    Opportunistic,
    None,
    Require,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: String::new(),
            key_file: String::new(),
            outbound: OutboundTls::Opportunistic,
            policy: BTreeMap::new(),
            ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        }
    }
}

impl TlsConfig {
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

/// `[delivery]`: outbound SMTP, scheduling and retries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Port used for MX deliveries (MX records carry no port).
    pub remote_port: u16,
    /// Send everything to this host instead of the MX: "host:port" or
    /// "[ip]:port". Empty: use MX records.
    pub smarthost: String,
    /// Per-domain routes that override MX: domain -> "host:port" or "[ip]:port".
    pub routes: BTreeMap<String, String>,
    /// Concurrent connections per destination domain, across all shards
    /// (each shard gets an equal share, at least one).
    pub max_connections: usize,
    /// Messages per second per destination domain, across all shards (each
    /// shard paces its share). 0: no limit.
    pub max_messages_per_second: f64,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: u32,
    /// Seconds an unused pooled connection stays open.
    pub idle_timeout_secs: u64,
    /// Seconds to wait for a TCP connection.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for any reply (and for each write).
    pub reply_timeout_secs: u64,
    /// First retry delay after a temporary failure; doubles each attempt.
    pub retry_initial_secs: u64,
    /// Longest retry delay.
    pub retry_max_secs: u64,
    /// Age at which a message that still fails temporarily expires and bounces.
    pub max_age_secs: u64,
    /// Name sent in EHLO. Empty: `server.hostname`.
    pub helo_name: String,
    /// Delivery log (JSON lines): "stdout", "off", or a file path.
    pub log: String,
}

/// `[dns]`: the resolver used for MX and address lookups.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Nameservers as "ip:port". Empty: those in /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Seconds per query attempt.
    pub timeout_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            remote_port: 25,
            smarthost: String::new(),
            routes: BTreeMap::new(),
            max_connections: 20,
            max_messages_per_second: 0.0,
            max_messages_per_connection: 1000,
            idle_timeout_secs: 30,
            connect_timeout_secs: 30,
            reply_timeout_secs: 300,
            retry_initial_secs: 60,
            retry_max_secs: 3600,
            max_age_secs: 5 * 24 * 3600,
            helo_name: String::new(),
            log: "stdout".into(),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_secs: 5,
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

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Name used in the greeting, EHLO reply and Received: headers.
    /// Default: the machine's host name.
    pub hostname: String,
    /// Executors (one per core). 0 = one per online CPU.
    pub shards: usize,
    /// On SIGTERM/SIGINT, seconds that open transactions and delivery
    /// attempts get to finish before they are cut off.
    pub shutdown_grace_secs: u64,
}

/// `[spool]`: where and how messages are stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SpoolConfig {
    /// Spool directory; one `shard-N` subdirectory per shard.
    pub dir: PathBuf,
    /// sled page cache per shard, in bytes.
    pub cache_bytes: u64,
    /// Size of a body segment file, in bytes. Space comes back a segment at
    /// a time, when its last message is done.
    pub segment_bytes: u64,
    /// Where group-commit rounds run their fdatasync: "inline" (on the
    /// shard's thread) or "io_uring".
    pub sync: crate::queue::commit::SyncMode,
}

/// `[smtp]`: the inbound SMTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SmtpConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Clients in these networks may relay to any domain.
    pub relay_networks: Vec<IpNet>,
    /// Domains accepted from any client (ringpost is their inbound MX).
    pub local_domains: Vec<String>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per message; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Longest command line, in octets including CRLF; longer gets 500 5.5.2.
    pub max_command_line: usize,
    /// Longest text line in a message, in octets; longer is refused (554 5.6.0)
    /// after end of data. RFC 5321 says 998, but real mail breaks it.
    pub max_line_length: usize,
    /// Error replies in one session before 421 and close.
    pub max_errors: u32,
    /// Seconds a client may stay silent before 421 and close.
    pub idle_timeout_secs: u64,
    /// Lines ending in a bare LF: "normalize" (take as CRLF) or "reject".
    pub bare_lf: BareLf,
    /// Concurrent SMTP connections, all clients together (each shard takes
    /// an equal share); more get 421 4.7.0.
    pub max_connections: usize,
    /// Concurrent SMTP connections from one client IP (per-shard share).
    pub max_connections_per_ip: usize,
    /// Longest SMTP session, in seconds, however active; then 421 4.4.2.
    pub max_session_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: system_hostname(),
            shards: 0,
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("./ringpost-spool"),
            cache_bytes: 64 << 20,
            segment_bytes: 16 << 20,
            sync: crate::queue::commit::SyncMode::default(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            local_domains: Vec::new(),
            max_message_size: 36_700_160,
            max_recipients: 1000,
            max_command_line: 2048,
            max_line_length: 65_536,
            max_errors: 20,
            idle_timeout_secs: 300,
            bare_lf: BareLf::Normalize,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_session_secs: 3600,
        }
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Config::from_toml(&text)
    }

    /// Overrides the defaults with `text`, field by field.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![e.to_string()]))?;
        let mut errors = Vec::new();
        let mut cfg = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => section(&key, value, &mut errors, &mut cfg.server),
                "spool" => section(&key, value, &mut errors, &mut cfg.spool),
                "smtp" => section(&key, value, &mut errors, &mut cfg.smtp),
                "delivery" => section(&key, value, &mut errors, &mut cfg.delivery),
                "dns" => section(&key, value, &mut errors, &mut cfg.dns),
                "tls" => section(&key, value, &mut errors, &mut cfg.tls),
                "submission" => section(&key, value, &mut errors, &mut cfg.submission),
                "metrics" => section(&key, value, &mut errors, &mut cfg.metrics),
                "admin" => section(&key, value, &mut errors, &mut cfg.admin),
                "inject" => section(&key, value, &mut errors, &mut cfg.inject),
                other => errors.push(format!("unknown section or key `{other}`")),
            }
        }
        errors.extend(cfg.problems());
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Value checks that the types alone do not express.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let s = &self.smtp;
        if self.server.hostname.is_empty() || self.server.hostname.contains(char::is_whitespace) {
            p.push("server.hostname must be a non-empty name without spaces".into());
        }
        if s.max_command_line < 512 {
            p.push("smtp.max_command_line must be at least 512 (RFC 5321 4.5.3.1.4)".into());
        }
        if s.max_line_length < 1000 {
            p.push("smtp.max_line_length must be at least 1000 (RFC 5321 4.5.3.1.6)".into());
        }
        if s.max_message_size < 1024 || s.max_message_size > (1 << 32) {
            p.push("smtp.max_message_size must be between 1 KiB and 4 GiB".into());
        }
        if s.max_recipients < 100 {
            p.push("smtp.max_recipients must be at least 100 (RFC 5321 4.5.3.1.8)".into());
        }
        if s.max_errors == 0 {
            p.push("smtp.max_errors must be at least 1".into());
        }
        if s.idle_timeout_secs == 0 || s.max_session_secs == 0 {
            p.push("smtp.idle_timeout_secs and max_session_secs must be at least 1".into());
        }
        if s.max_connections == 0 || s.max_connections_per_ip == 0 {
            p.push("smtp.max_connections and max_connections_per_ip must be at least 1".into());
        }
        for d in &s.local_domains {
            if d.is_empty() || d.ends_with('.') || d.contains(['@', ' ']) {
                p.push(format!("smtp.local_domains: `{d}` is not a domain name"));
            }
        }
        if !(1 << 20..=1 << 30).contains(&self.spool.segment_bytes) {
            p.push("spool.segment_bytes must be between 1 MiB and 1 GiB".into());
        }
        let d = &self.delivery;
        if !d.smarthost.is_empty()
            && let Err(e) = NextHop::parse(&d.smarthost)
        {
            p.push(format!("delivery.smarthost: {e}"));
        }
        for (domain, hop) in &d.routes {
            if let Err(e) = NextHop::parse(hop) {
                p.push(format!("delivery.routes.\"{domain}\": {e}"));
            }
        }
        if !(d.max_messages_per_second >= 0.0 && d.max_messages_per_second.is_finite()) {
            p.push("delivery.max_messages_per_second must be 0 (no limit) or positive".into());
        }
        if d.max_connections == 0 || d.max_messages_per_connection == 0 {
            p.push(
                "delivery.max_connections and max_messages_per_connection must be at least 1"
                    .into(),
            );
        }
        if d.retry_initial_secs == 0 || d.retry_max_secs < d.retry_initial_secs {
            p.push(
                "delivery.retry_initial_secs must be at least 1 and at most retry_max_secs".into(),
            );
        }
        if d.connect_timeout_secs == 0 || d.reply_timeout_secs == 0 || d.idle_timeout_secs == 0 {
            p.push("delivery timeouts must be at least 1 second".into());
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            p.push("tls.cert_file and tls.key_file go together: set both or neither".into());
        }
        if self.submission.enabled() && !self.tls.inbound() {
            p.push("submission.users_file needs tls.cert_file and tls.key_file: AUTH is offered only over TLS".into());
        }
        if self.submission.max_auth_failures == 0 {
            p.push("submission.max_auth_failures must be at least 1".into());
        }
        p.extend(listen_problem("metrics", &self.metrics.listen));
        p.extend(listen_problem("admin", &self.admin.listen));
        if self.admin.listen != "off" {
            match self.admin.addr() {
                None => {}
                Some(a) if !a.ip().is_loopback() && self.admin.token_file.is_empty() => p.push(
                    "admin.listen is not a loopback address: set admin.token_file so that \
                     the queue cannot be changed by anyone who can reach it"
                        .into(),
                ),
                Some(_) => {}
            }
        }
        if self.inject.max_connections == 0 {
            p.push("inject.max_connections must be at least 1".into());
        }
        p.extend(listen_problem("inject", &self.inject.listen));
        if self.dns.timeout_secs == 0 {
            p.push("dns.timeout_secs must be at least 1".into());
        }
        if self.server.shards > 1024 {
            p.push("server.shards must be at most 1024".into());
        }
        p
    }

    /// Whether a client at `ip` may relay (send to non-local domains).
    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.smtp.relay_networks.iter().any(|n| n.contains(&ip))
    }

    /// The EHLO name for outbound connections.
    pub fn helo_name(&self) -> &str {
        if self.delivery.helo_name.is_empty() {
            &self.server.hostname
        } else {
            &self.delivery.helo_name
        }
    }

    /// Whether ringpost accepts mail for `domain` from any client.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.smtp
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Deserializes one section over its defaults, collecting unknown keys and
/// the first type error.
fn section<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
    out: &mut T,
) {
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    for key in unknown {
        errors.push(format!("unknown key `{name}.{key}`"));
    }
    match result {
        Ok(v) => *out = v,
        Err(e) => errors.push(format!("[{name}]: {e}")),
    }
}

/// `[section] listen` must be "ip:port" or "off".
fn listen_problem(section: &str, listen: &str) -> Option<String> {
    (listen != "off" && listen.parse::<SocketAddr>().is_err())
        .then(|| format!("{section}.listen: `{listen}` is neither ip:port nor \"off\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn fields_override_one_by_one() {
        let c = Config::from_toml("[smtp]\nlisten = \"127.0.0.1:2600\"\nmax_errors = 5\n").unwrap();
        assert_eq!(c.smtp.listen.port(), 2600);
        assert_eq!(c.smtp.max_errors, 5);
        assert_eq!(c.smtp.max_recipients, SmtpConfig::default().max_recipients);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errs = Config::from_toml(
            "bogus = 1\n[smtp]\nlisten = \"127.0.0.1:25\"\nmax_errors = 0\nfoo = 2\nlocal_domains = [\"a b\"]\n[spool]\ncache_bytes = \"x\"\n",
        )
        .unwrap_err()
        .0;
        let all = errs.join("\n");
        assert!(all.contains("`bogus`"), "{all}");
        assert!(all.contains("smtp.foo"), "{all}");
        assert!(all.contains("[spool]"), "{all}");
        assert!(all.contains("max_errors"), "{all}");
        assert!(all.contains("`a b`"), "{all}");
    }

    #[test]
    fn spool_sync_is_inline_unless_asked() {
        use crate::queue::commit::SyncMode;
        assert_eq!(Config::default().spool.sync, SyncMode::Inline);
        let c = Config::from_toml("[spool]\nsync = \"io_uring\"\n").unwrap();
        assert_eq!(c.spool.sync, SyncMode::IoUring);
        let bad = Config::from_toml("[spool]\nsync = \"later\"\n").unwrap_err();
        assert!(bad.0.join("\n").contains("inline"), "{:?}", bad.0);
    }

    #[test]
    fn relay_networks_match_mapped_v4() {
        let c = Config::default();
        assert!(c.is_relay_client("127.0.0.1".parse().unwrap()));
        assert!(c.is_relay_client("::ffff:127.0.0.2".parse().unwrap()));
        assert!(c.is_relay_client("::1".parse().unwrap()));
        assert!(!c.is_relay_client("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn an_admin_api_beyond_loopback_needs_a_token() {
        let open = Config::from_toml("[admin]\nlisten = \"0.0.0.0:9465\"\n").unwrap_err();
        assert!(
            open.0.join("\n").contains("admin.token_file"),
            "{:?}",
            open.0
        );
        let ok = "[admin]\nlisten = \"0.0.0.0:9465\"\ntoken_file = \"/etc/ringpost/token\"\n";
        assert!(Config::from_toml(ok).is_ok());
        assert!(Config::from_toml("[admin]\nlisten = \"off\"\n").is_ok());
        assert!(Config::from_toml("[admin]\nlisten = \"nowhere\"\n").is_err());
    }
}
