//! The typed configuration. Its defaults are the embedded default config.
//!
//! Owns: every setting. Each key is defined once, with its type, default
//! and doc comment, by the [`section!`] of its section (one file each);
//! the section's value checks sit beside it. From those definitions come
//! the defaults, reading a TOML file ([`Config::from_toml`]: field by
//! field over the defaults, every problem reported at once with its key
//! and line), and the reference in docs/configuration.md
//! ([`reference_markdown`], which a test holds the file to).
//!
//! May call: nothing else in the crate.
//! Must not: depend on anything else in the crate; do I/O beyond reading
//! the file it is given; bind ports or open the spool (`check-config`
//! relies on that). Checks that need the files a config names (keys,
//! certificates, users) are the server's (`server::preflight`).

use std::net::IpAddr;
use std::path::Path;

/// Defines a config section: the struct, its `Default`, reading it from a
/// TOML table key by key, and its reference entry, all from one list of
/// `doc, key: type = default`.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident = $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $name {
            /// Overrides the defaults with the keys of `table`; a key that
            /// is unknown or of the wrong type is a problem.
            pub fn merge(&mut self, table: toml::Table, problems: &mut $crate::config::Problems) {
                for (key, value) in table {
                    match key.as_str() {
                        $(stringify!($field) => match value.try_into::<$ty>() {
                            Ok(v) => self.$field = v,
                            Err(e) => problems.at(
                                concat!($section, ".", stringify!($field)),
                                e.to_string().trim_end(),
                            ),
                        },)*
                        other => problems.at(format!("{}.{other}", $section), "unknown key"),
                    }
                }
            }

            /// This section's entry in the reference.
            pub fn reference() -> $crate::config::SectionDoc {
                let defaults = Self::default();
                $crate::config::SectionDoc {
                    name: $section,
                    doc: concat!($($sdoc, "\n"),*),
                    keys: vec![$($crate::config::KeyDoc {
                        key: stringify!($field),
                        doc: concat!($($doc, "\n"),*),
                        default: $crate::config::default_text(
                            stringify!($field),
                            &defaults.$field,
                        ),
                    },)*],
                }
            }
        }
    };
}

mod backoff;
mod bounce_classifier;
mod cluster;
mod delivery;
mod dkim;
mod dns;
mod egress;
mod events;
mod feedback;
mod history;
mod http;
mod listen;
mod meta;
mod priority;
mod reference;
mod server;
mod smtp;
mod spool;
mod submission;
mod suppression;
mod tls;
mod tls_reporting;
mod unsubscribe;

pub use backoff::{BackoffConfig, BackoffRule};
pub use bounce_classifier::{BOUNCE_CATEGORIES, BounceClassifierConfig};
pub use cluster::ClusterConfig;
pub use delivery::{DeliveryConfig, NextHop};
pub use dkim::{DKIM_ALGORITHMS, DkimConfig, DkimIdentity};
pub use dns::DnsConfig;
pub use egress::{EgressConfig, EgressPool, EgressSource, PoolMember};
pub use events::{BacklogFull, EVENT_KINDS, EventsConfig, Webhook};
pub use feedback::FeedbackConfig;
pub use history::HistoryConfig;
pub use http::{AdminConfig, InjectConfig, MetricsConfig};
pub use listen::Listen;
pub use meta::MetaConfig;
pub use priority::{Priority, PriorityConfig};
pub use reference::{KeyDoc, SectionDoc, default_text, reference_markdown};
pub use server::ServerConfig;
pub use smtp::{LineEndings, SmtpConfig};
pub use spool::{SpoolConfig, SyncMode};
pub use submission::SubmissionConfig;
pub use suppression::{SuppressionAction, SuppressionConfig, SuppressionScope};
pub use tls::{OutboundTls, TlsConfig};
pub use tls_reporting::TlsReportingConfig;
pub use unsubscribe::UnsubscribeConfig;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub smtp: SmtpConfig,
    pub submission: SubmissionConfig,
    pub inject: InjectConfig,
    pub delivery: DeliveryConfig,
    pub bounce_classifier: BounceClassifierConfig,
    pub suppression: SuppressionConfig,
    pub backoff: BackoffConfig,
    pub feedback: FeedbackConfig,
    pub meta: MetaConfig,
    pub priority: PriorityConfig,
    pub egress: EgressConfig,
    pub events: EventsConfig,
    pub history: HistoryConfig,
    pub cluster: ClusterConfig,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub tls_reporting: TlsReportingConfig,
    pub unsubscribe: UnsubscribeConfig,
    pub dkim: DkimConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
}

/// One problem in a config: the key it is about, what is wrong, and the
/// line of the file where the key is (when there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub line: Option<usize>,
}

/// The problems found so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn at(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
            line: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s problems, and puts them all in the file's order.
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
        self.0.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    }
}

/// Every problem found in a config file, one per line:
/// `line N: section.key: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(&.0.0))]
pub struct ConfigErrors(pub Problems);

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            Some(line) => format!("line {line}: {}: {}", p.key, p.message),
            None => format!("{}: {}", p.key, p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    fn one(key: &str, message: String, line: Option<usize>) -> ConfigErrors {
        ConfigErrors(Problems(vec![Problem {
            key: key.into(),
            message,
            line,
        }]))
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one(&path.display().to_string(), e.to_string(), None))?;
        Config::from_toml(&text)
    }

    /// Overrides the defaults with `text`, key by key, and checks the
    /// result. Every problem is reported, each with its line.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let (cfg, problems) = Config::parse(text)?;
        match problems.is_empty() {
            true => Ok(cfg),
            false => Err(ConfigErrors(problems)),
        }
    }

    /// [`Config::from_toml`], but the config is returned along with its
    /// problems (keys with problems keep their defaults), so that more
    /// checks can run on it (`check-config`). Only a file that is not TOML
    /// at all is an error here.
    pub fn parse(text: &str) -> Result<(Config, Problems), ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_at(text, s.start));
            ConfigErrors::one("file", e.message().to_string(), line)
        })?;
        let mut p = Problems::default();
        let mut cfg = Config::default();
        for (name, value) in table {
            let toml::Value::Table(t) = value else {
                p.at(name, "unknown key (sections are tables: [name])");
                continue;
            };
            match name.as_str() {
                "server" => cfg.server.merge(t, &mut p),
                "spool" => cfg.spool.merge(t, &mut p),
                "smtp" => cfg.smtp.merge(t, &mut p),
                "submission" => cfg.submission.merge(t, &mut p),
                "inject" => cfg.inject.merge(t, &mut p),
                "delivery" => cfg.delivery.merge(t, &mut p),
                "bounce_classifier" => cfg.bounce_classifier.merge(t, &mut p),
                "suppression" => cfg.suppression.merge(t, &mut p),
                "backoff" => cfg.backoff.merge(t, &mut p),
                "feedback" => cfg.feedback.merge(t, &mut p),
                "meta" => cfg.meta.merge(t, &mut p),
                "priority" => cfg.priority.merge(t, &mut p),
                "egress" => cfg.egress.merge(t, &mut p),
                "events" => cfg.events.merge(t, &mut p),
                "history" => cfg.history.merge(t, &mut p),
                "cluster" => cfg.cluster.merge(t, &mut p),
                "dns" => cfg.dns.merge(t, &mut p),
                "tls" => cfg.tls.merge(t, &mut p),
                "tls_reporting" => cfg.tls_reporting.merge(t, &mut p),
                "unsubscribe" => cfg.unsubscribe.merge(t, &mut p),
                "dkim" => cfg.dkim.merge(t, &mut p),
                "metrics" => cfg.metrics.merge(t, &mut p),
                "admin" => cfg.admin.merge(t, &mut p),
                other => p.at(other, "unknown section"),
            }
        }
        cfg.check(&mut p);
        locate(text, &mut p);
        Ok((cfg, p))
    }

    /// Value checks: each section's own, then those across sections.
    pub fn check(&self, p: &mut Problems) {
        self.server.check(p);
        self.spool.check(p);
        self.smtp.check(p);
        self.submission.check(p);
        self.inject.check(p);
        self.delivery.check(p);
        self.bounce_classifier.check(p);
        self.suppression.check(p);
        self.backoff.check(p);
        self.feedback.check(&self.smtp.local_domains, p);
        self.meta.check(p);
        self.priority.check(p);
        self.egress.check(p);
        self.events.check(p);
        self.history.check(p);
        self.cluster.check(p);
        self.dns.check(p);
        self.tls.check(p);
        self.tls_reporting.check(p);
        self.unsubscribe
            .check(&self.smtp.local_domains, self.suppression.enabled, p);
        self.dkim.check(p);
        self.admin.check(p);
        if self.submission.listen.is_on() && !self.tls.inbound() {
            p.at(
                "submission.listen",
                "submission needs tls.cert_file and tls.key_file: AUTH is offered only over TLS",
            );
        }
        self.check_listeners(p);
    }

    /// Every listener on its own address, and some way for mail to come in.
    fn check_listeners(&self, p: &mut Problems) {
        let mut seen: Vec<(&str, std::net::SocketAddr)> = Vec::new();
        for (key, listen) in self.listeners() {
            let Some(addr) = listen.addr() else {
                continue;
            };
            let clash = seen
                .iter()
                .find(|(_, a)| *a == addr && addr.port() != 0)
                .map(|(k, _)| *k);
            match clash {
                Some(other) => p.at(
                    key,
                    format!("{addr} is also {other}: one address per listener"),
                ),
                None => seen.push((key, addr)),
            }
        }
        let receives = [
            &self.smtp.listen,
            &self.submission.listen,
            &self.inject.listen,
        ];
        if !receives.iter().any(|l| l.is_on()) {
            p.at(
                "smtp.listen",
                "smtp, submission and inject are all off: no mail could come in",
            );
        }
    }

    /// Every listener with its key.
    pub fn listeners(&self) -> [(&'static str, &Listen); 6] {
        [
            ("smtp.listen", &self.smtp.listen),
            ("submission.listen", &self.submission.listen),
            ("inject.listen", &self.inject.listen),
            ("metrics.listen", &self.metrics.listen),
            ("admin.listen", &self.admin.listen),
            ("unsubscribe.listen", &self.unsubscribe.listen),
        ]
    }

    /// The name in the greeting, EHLO reply and trace headers:
    /// `server.hostname`, or the machine's host name.
    pub fn hostname(&self) -> &str {
        match self.server.hostname.as_str() {
            "" => server::system_hostname(),
            name => name,
        }
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
        match self.delivery.helo_name.as_str() {
            "" => self.hostname(),
            name => name,
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

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Fills in the line of each problem whose key appears in the file, and
/// puts them in the file's order.
pub fn locate(text: &str, problems: &mut Problems) {
    locate_lines(text, problems);
    problems.0.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
}

fn locate_lines(text: &str, problems: &mut Problems) {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return;
    };
    for p in &mut problems.0 {
        let mut parts = p.key.splitn(2, '.');
        let section = parts.next().unwrap_or("");
        let item = doc.get(section);
        let span = match parts.next() {
            // `identity[3].key_file`: a key of one table of an array of
            // tables (`[[section.identity]]`).
            Some(key) if key.contains('[') => key.split_once('[').and_then(|(array, rest)| {
                let (index, field) = rest.split_once("].")?;
                let table = item?
                    .get(array)?
                    .as_array_of_tables()?
                    .get(index.parse().ok()?)?;
                table.get(field)?.span().or(table.span())
            }),
            Some(key) => item
                .and_then(|t| t.get(key))
                .and_then(|v| v.span())
                .or_else(|| item.and_then(|t| t.as_table_like()?.key(key)?.span())),
            None => doc.as_table().key(section).and_then(|k| k.span()),
        };
        p.line = span.map(|s| line_at(text, s.start));
    }
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
        assert_eq!(c.smtp.listen.addr().unwrap().port(), 2600);
        assert_eq!(c.smtp.max_errors, 5);
        assert_eq!(c.smtp.max_recipients, SmtpConfig::default().max_recipients);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_line() {
        let text = "bogus = 1\n[smtp]\nlisten = \"127.0.0.1:25\"\nmax_errors = 0\nfoo = 2\nlocal_domains = [\"a b\"]\n[spool]\ncache_bytes = \"x\"\nsegment_bytes = \"y\"\n";
        let errs = Config::from_toml(text).unwrap_err();
        let all = errs.to_string();
        assert!(all.contains("line 1: bogus"), "{all}");
        assert!(all.contains("line 5: smtp.foo: unknown key"), "{all}");
        assert!(all.contains("line 8: spool.cache_bytes"), "{all}");
        assert!(all.contains("line 9: spool.segment_bytes"), "{all}");
        assert!(all.contains("line 4: smtp.max_errors"), "{all}");
        assert!(all.contains("line 6: smtp.local_domains: `a b`"), "{all}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let errs = Config::from_toml("[smtp]\nmax_errors = = 3\n").unwrap_err();
        assert!(errs.to_string().starts_with("line 2: "), "{errs}");
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
    fn one_address_per_listener() {
        let text = "[smtp]\nlisten = \"127.0.0.1:3525\"\n[metrics]\nlisten = \"127.0.0.1:3525\"\n[admin]\nlisten = \"127.0.0.1:3525\"\n";
        let all = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            all.contains("line 4: metrics.listen: 127.0.0.1:3525 is also smtp.listen"),
            "{all}"
        );
        assert!(
            all.contains("admin.listen: 127.0.0.1:3525 is also smtp.listen"),
            "{all}"
        );
        let off = "[smtp]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n";
        assert!(
            Config::from_toml(off)
                .unwrap_err()
                .to_string()
                .contains("no mail could come in")
        );
    }

    #[test]
    fn the_hostname_defaults_to_the_machines() {
        let c = Config::default();
        assert!(!c.hostname().is_empty());
        assert_eq!(c.helo_name(), c.hostname());
        let named = Config::from_toml("[server]\nhostname = \"mx.example\"\n").unwrap();
        assert_eq!(named.hostname(), "mx.example");
    }
}
