//! `[egress]`: the local addresses ringpost sends from (sources) and the
//! weighted sets of them a message may use (pools).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Problems;

/// One local address to send from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSource {
    /// How pools, metrics and the delivery log name it.
    pub name: String,
    /// The local address connections from it are bound to (IPv4 or IPv6;
    /// it must be configured on this machine).
    pub address: IpAddr,
    /// The EHLO name to give from it (its PTR name, for receivers that
    /// check). Empty: `server.hostname`.
    #[serde(default)]
    pub ehlo: String,
    /// IP warm-up: the first day (UTC, `"YYYY-MM-DD"`) of the schedule in
    /// `warmup_daily`. Empty: no warm-up.
    #[serde(default)]
    pub warmup_start: String,
    /// IP warm-up: the most messages a day from this source to each site,
    /// for day 1, 2, ... from `warmup_start`; after the last day, no cap.
    /// Over the cap, a message goes from another source of its pool, or
    /// waits for the next day.
    #[serde(default)]
    pub warmup_daily: Vec<u64>,
    /// Send through a forwarder (HAProxy, or anything that speaks the
    /// PROXY protocol v2) at this `ip:port` instead of binding `address`
    /// here: each connection goes to the forwarder and starts with a
    /// PROXY v2 header naming `address` as its source and the MX as its
    /// destination. Empty: bind `address` on this machine.
    #[serde(default)]
    pub proxy: String,
}

impl EgressSource {
    /// The day `warmup_start` names, in days since the Unix epoch.
    pub fn warmup_start_day(&self) -> Result<Option<i64>, String> {
        if self.warmup_start.is_empty() {
            return Ok(None);
        }
        let date =
            chrono::NaiveDate::parse_from_str(&self.warmup_start, "%Y-%m-%d").map_err(|e| {
                format!(
                    "warmup_start {:?}: {e} (want YYYY-MM-DD)",
                    self.warmup_start
                )
            })?;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
        Ok(Some((date - epoch).num_days()))
    }
}

/// One source's share of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    /// A source's `name`.
    pub source: String,
    /// Its share: messages are spread over the pool's sources in
    /// proportion to their weights.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A named, weighted set of sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPool {
    pub name: String,
    pub sources: Vec<PoolMember>,
    /// The priority of its messages that name none (`[priority]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<super::Priority>,
}

section! {
    /// Where outbound connections come from. Without sources, ringpost
    /// connects from the address the kernel picks and says
    /// `server.hostname` in EHLO. With them, each message is sent from a
    /// source of its pool, spread over the pool's sources by weight
    /// (smooth weighted round-robin on each shard: exact proportions, no
    /// bursts). A message's pool is, in order: the HTTP injection's `pool`
    /// field; the `X-Ringpost-Pool` header of a trusted SMTP client
    /// (always taken out of the message); `sender_domains` by the
    /// envelope sender's domain; `default_pool`. Connections are pooled
    /// per source: a connection opened from one source never carries
    /// another's mail.
    ///
    /// A new IP can carry a warm-up schedule: daily caps per site that
    /// grow day by day (`warmup_start`, `warmup_daily`); over a cap, mail
    /// goes from the pool's other sources, or waits.
    ///
    /// Example: `[[egress.source]] name = "ip1" address = "192.0.2.10"
    /// ehlo = "mta1.example.com"`, `[[egress.pool]] name = "transactional"
    /// sources = [{ source = "ip1", weight = 3 }, { source = "ip2" }]`,
    /// `[[egress.source]] name = "ip3" address = "192.0.2.12"
    /// warmup_start = "2026-12-01" warmup_daily = [200, 500, 1000, 2000,
    /// 5000]`.
    EgressConfig = "egress" {
        /// The sources, as `[[egress.source]]` tables.
        source: Vec<EgressSource> = Vec::new(),
        /// The pools, as `[[egress.pool]]` tables.
        pool: Vec<EgressPool> = Vec::new(),
        /// The pool of messages that name none. Empty: the first pool.
        default_pool: String = String::new(),
        /// Envelope-sender domain to pool, e.g. `{ "news.example" =
        /// "bulk" }`.
        sender_domains: BTreeMap<String, String> = BTreeMap::new(),
        /// The header a trusted SMTP client names a pool in.
        pool_header: String = "X-Ringpost-Pool".to_string(),
    }
}

impl EgressConfig {
    pub fn check(&self, p: &mut Problems) {
        let mut names = std::collections::HashSet::new();
        for s in &self.source {
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                p.at(
                    "egress.source",
                    format!("source name {:?} is empty or used twice", s.name),
                );
            }
            if !s.proxy.is_empty() && s.proxy.parse::<std::net::SocketAddr>().is_err() {
                p.at(
                    "egress.source",
                    format!("source {:?}: proxy {:?} is not ip:port", s.name, s.proxy),
                );
            }
            match s.warmup_start_day() {
                Err(e) => p.at("egress.source", format!("source {:?}: {e}", s.name)),
                Ok(start) if start.is_some() == s.warmup_daily.is_empty() => p.at(
                    "egress.source",
                    format!(
                        "source {:?}: warmup_start and warmup_daily go together",
                        s.name
                    ),
                ),
                Ok(_) => {}
            }
        }
        let mut pools = std::collections::HashSet::new();
        for pool in &self.pool {
            if pool.name.is_empty() || !pools.insert(pool.name.as_str()) {
                p.at(
                    "egress.pool",
                    format!("pool name {:?} is empty or used twice", pool.name),
                );
            }
            if pool.sources.is_empty() {
                p.at(
                    "egress.pool",
                    format!("pool {:?} has no sources", pool.name),
                );
            }
            for m in &pool.sources {
                if !names.contains(m.source.as_str()) {
                    p.at(
                        "egress.pool",
                        format!("pool {:?}: no source named {:?}", pool.name, m.source),
                    );
                }
                if m.weight == 0 {
                    p.at(
                        "egress.pool",
                        format!("pool {:?}: weight 0 for {:?}", pool.name, m.source),
                    );
                }
            }
        }
        if !self.source.is_empty() && self.pool.is_empty() {
            p.at(
                "egress.pool",
                "sources are configured but no pool uses them",
            );
        }
        let known = |name: &str| pools.contains(name);
        if !self.default_pool.is_empty() && !known(&self.default_pool) {
            p.at(
                "egress.default_pool",
                format!("no pool named {:?}", self.default_pool),
            );
        }
        for (domain, pool) in &self.sender_domains {
            if !known(pool) {
                p.at(
                    "egress.sender_domains",
                    format!("{domain}: no pool named {pool:?}"),
                );
            }
        }
    }

    /// Whether any source is configured.
    pub fn is_on(&self) -> bool {
        !self.pool.is_empty()
    }

    /// The pool a message naming `name` goes through: that pool, or for
    /// none (or an unknown one) the default pool; None without pools.
    fn pool_named(&self, name: &str) -> Option<&EgressPool> {
        match self.pool.iter().find(|p| p.name == name) {
            Some(p) => Some(p),
            None if self.default_pool.is_empty() => self.pool.first(),
            None => self.pool.iter().find(|p| p.name == self.default_pool),
        }
    }

    /// The name of the pool a message naming `name` goes through.
    pub fn pool_of(&self, name: &str) -> Option<&str> {
        self.pool_named(name).map(|p| p.name.as_str())
    }

    /// The default priority of pool `name`'s messages, if it sets one.
    pub fn pool_priority(&self, name: &str) -> Option<super::Priority> {
        self.pool_named(name)?.priority
    }

    /// The pool of a message that named `pool` (empty: none) from
    /// `sender`: the named one, else the sender domain's
    /// (`sender_domains`), else the default pool ("").
    pub fn pool_for<'a>(&'a self, pool: &'a str, sender: &str) -> &'a str {
        match pool {
            "" if self.sender_domains.is_empty() => "",
            "" => {
                let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
                self.sender_domains
                    .get(&domain.to_ascii_lowercase())
                    .map_or("", String::as_str)
            }
            named => named,
        }
    }

    /// Whether `name` is a configured pool.
    pub fn has_pool(&self, name: &str) -> bool {
        self.pool.iter().any(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Priority;

    #[test]
    fn a_pools_priority_is_the_default_of_its_messages() {
        let pool = |name: &str, priority| EgressPool {
            name: name.into(),
            sources: Vec::new(),
            priority,
        };
        let mut cfg = EgressConfig {
            pool: vec![
                pool("tx", Some(Priority::High)),
                pool("news", Some(Priority::Bulk)),
            ],
            ..EgressConfig::default()
        };
        assert_eq!(cfg.pool_priority("news"), Some(Priority::Bulk));
        assert_eq!(cfg.pool_priority(""), Some(Priority::High), "the first");
        cfg.default_pool = "news".into();
        assert_eq!(cfg.pool_priority(""), Some(Priority::Bulk));
        assert_eq!(cfg.pool_priority("tx"), Some(Priority::High));
        assert_eq!(EgressConfig::default().pool_priority(""), None);
    }
}
