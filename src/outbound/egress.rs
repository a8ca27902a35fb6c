//! Egress sources and pools (`[egress]`): which local address, and which
//! EHLO name, each delivery attempt uses.
//!
//! Owns: [`Source`] and [`Egress`], one per shard: each pool's smooth
//! weighted round-robin (nginx's algorithm: every pick adds each member's
//! weight to its running score, takes the highest, and subtracts the total
//! from it), which spreads a pool's messages over its sources in exact
//! proportion to the weights, interleaved rather than in bursts. Pure
//! bookkeeping, unit-tested.
//!
//! Must not: open connections (`outbound::client` binds to the source's
//! address), or know about messages beyond their pool's name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::EgressConfig;

/// One local address to send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    /// The EHLO name to give from it.
    pub ehlo: String,
    /// Its warm-up: the first day (days since the Unix epoch) and the
    /// daily caps per site from then on.
    pub warmup: Option<(i64, Vec<u64>)>,
    /// The PROXY v2 forwarder its connections go through, if any.
    pub proxy: Option<std::net::SocketAddr>,
}

impl Source {
    /// The most messages it may send to one site on `day` (days since the
    /// Unix epoch) while it warms up; None once the schedule is over. A
    /// day before the start counts as the first.
    pub fn warmup_cap(&self, day: i64) -> Option<u64> {
        let (start, daily) = self.warmup.as_ref()?;
        let n = usize::try_from(day - start).unwrap_or(0);
        daily.get(n).copied()
    }
}

/// How long a source whose address could not be bound is left out.
pub const DOWN_FOR: Duration = Duration::from_secs(60);

/// One pool's members: source index, weight, running score.
type Members = Vec<(usize, i64, i64)>;

/// A shard's sources and the state of its pools' rotations.
#[derive(Debug, Default)]
pub struct Egress {
    sources: Vec<Rc<Source>>,
    pools: RefCell<HashMap<String, Members>>,
    default_pool: String,
    /// Sources that are down, by index, until when.
    down: RefCell<HashMap<usize, Instant>>,
}

impl Egress {
    /// From `[egress]` (checked by `EgressConfig::check`); `helo` is the
    /// EHLO name of sources that name none.
    pub fn new(cfg: &EgressConfig, helo: &str) -> Egress {
        let sources: Vec<Rc<Source>> = cfg
            .source
            .iter()
            .map(|s| {
                Rc::new(Source {
                    name: s.name.clone(),
                    address: s.address,
                    ehlo: if s.ehlo.is_empty() {
                        helo.to_string()
                    } else {
                        s.ehlo.clone()
                    },
                    // Checked by `EgressConfig::check`.
                    warmup: s
                        .warmup_start_day()
                        .ok()
                        .flatten()
                        .map(|start| (start, s.warmup_daily.clone())),
                    proxy: s.proxy.parse().ok(),
                })
            })
            .collect();
        let index = |name: &str| sources.iter().position(|s| s.name == name);
        let pools = cfg
            .pool
            .iter()
            .map(|p| {
                let members = p
                    .sources
                    .iter()
                    .filter_map(|m| Some((index(&m.source)?, i64::from(m.weight), 0)))
                    .collect();
                (p.name.clone(), members)
            })
            .collect();
        let default_pool = match cfg.default_pool.as_str() {
            "" => cfg.pool.first().map(|p| p.name.clone()).unwrap_or_default(),
            name => name.to_string(),
        };
        Egress {
            sources,
            pools: RefCell::new(pools),
            default_pool,
            down: RefCell::default(),
        }
    }

    /// How many sources there are.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// The source the next message of `pool` goes from (the default pool
    /// for an empty or unknown name), leaving out sources that are down
    /// unless all of the pool's are; None when no sources are configured.
    fn pick(&self, pool: &str, now: Instant) -> Option<Rc<Source>> {
        let mut pools = self.pools.borrow_mut();
        let name = if pools.contains_key(pool) {
            pool
        } else {
            self.default_pool.as_str()
        };
        let members = pools.get_mut(name)?;
        let mut down = self.down.borrow_mut();
        down.retain(|_, until| *until > now);
        let all_down = members.iter().all(|m| down.contains_key(&m.0));
        let up = |m: &(usize, i64, i64)| all_down || !down.contains_key(&m.0);
        let total: i64 = members.iter().filter(|m| up(m)).map(|m| m.1).sum();
        for m in members.iter_mut().filter(|m| up(m)) {
            m.2 += m.1;
        }
        let best = members
            .iter_mut()
            .filter(|m| up(m))
            .reduce(|a, b| if b.2 > a.2 { b } else { a })?;
        best.2 -= total;
        Some(self.sources[best.0].clone())
    }

    /// The sources to try for the next message of `pool`, in order: the
    /// one it goes from ([`Egress::pick`]), then the pool's other sources
    /// (leaving out those that are down, unless all are), for when that
    /// one is held or capped; empty when no sources are configured. Each
    /// at most once, however other messages pick meanwhile.
    pub fn order(&self, pool: &str, now: Instant) -> Vec<Rc<Source>> {
        let Some(first) = self.pick(pool, now) else {
            return Vec::new();
        };
        let pools = self.pools.borrow();
        let members = pools
            .get(pool)
            .or_else(|| pools.get(&self.default_pool))
            .map_or(&[][..], Vec::as_slice);
        let down = self.down.borrow();
        let all_down = members.iter().all(|m| down.contains_key(&m.0));
        let mut order = vec![first];
        for m in members {
            let source = &self.sources[m.0];
            if (all_down || !down.contains_key(&m.0))
                && !order.iter().any(|s| Rc::ptr_eq(s, source))
            {
                order.push(source.clone());
            }
        }
        order
    }

    /// Leaves source `name` out for [`DOWN_FOR`]; whether it was up.
    pub fn mark_down(&self, name: &str, now: Instant) -> bool {
        let Some(i) = self.sources.iter().position(|s| s.name == name) else {
            return false;
        };
        let was = self.down.borrow_mut().insert(i, now + DOWN_FOR);
        was.is_none_or(|until| until <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EgressPool, EgressSource, PoolMember};

    fn cfg() -> EgressConfig {
        let source = |name: &str, ip: &str| EgressSource {
            name: name.into(),
            address: ip.parse().unwrap(),
            ehlo: String::new(),
            warmup_start: String::new(),
            warmup_daily: Vec::new(),
            proxy: String::new(),
        };
        let member = |name: &str, weight| PoolMember {
            source: name.into(),
            weight,
        };
        EgressConfig {
            source: vec![source("a", "127.0.0.3"), source("b", "127.0.0.4")],
            pool: vec![
                EgressPool {
                    name: "bulk".into(),
                    sources: vec![member("a", 3), member("b", 1)],
                    priority: None,
                },
                EgressPool {
                    name: "vip".into(),
                    sources: vec![member("b", 1)],
                    priority: None,
                },
            ],
            ..EgressConfig::default()
        }
    }

    #[test]
    fn weights_are_met_exactly_and_interleaved() {
        let e = Egress::new(&cfg(), "mx.example");
        let now = Instant::now();
        let picks: Vec<String> = (0..8)
            .map(|_| e.pick("bulk", now).unwrap().name.clone())
            .collect();
        assert_eq!(picks, ["a", "a", "b", "a", "a", "a", "b", "a"]);
        assert_eq!(e.pick("vip", now).unwrap().name, "b");
        assert_eq!(e.pick("vip", now).unwrap().ehlo, "mx.example");
    }

    #[test]
    fn an_order_starts_with_the_pick_and_names_each_source_once() {
        let e = Egress::new(&cfg(), "mx.example");
        let now = Instant::now();
        let names =
            |pool| -> Vec<String> { e.order(pool, now).iter().map(|s| s.name.clone()).collect() };
        assert_eq!(names("bulk"), ["a", "b"]);
        assert_eq!(names("bulk"), ["a", "b"]);
        assert_eq!(names("bulk"), ["b", "a"], "the weighted pick first");
        assert_eq!(names("vip"), ["b"]);
        e.mark_down("a", now);
        assert_eq!(names("bulk"), ["b"], "a source that is down: left out");
        assert!(
            Egress::new(&EgressConfig::default(), "x")
                .order("", now)
                .is_empty()
        );
    }

    #[test]
    fn unknown_and_empty_pools_use_the_default() {
        let e = Egress::new(&cfg(), "mx.example");
        let now = Instant::now();
        let n = (0..400)
            .filter(|i| {
                let pool = if i % 2 == 0 { "" } else { "nope" };
                e.pick(pool, now).unwrap().name == "a"
            })
            .count();
        assert_eq!(n, 300);
        let none = Egress::new(&EgressConfig::default(), "x");
        assert!(none.pick("", now).is_none());
    }

    #[test]
    fn a_warmup_cap_grows_day_by_day_then_ends() {
        let mut c = cfg();
        c.source[0].warmup_start = "2026-12-01".into();
        c.source[0].warmup_daily = vec![10, 20];
        let e = Egress::new(&c, "mx.example");
        let a = e.pick("vip", Instant::now()).unwrap();
        assert_eq!(a.warmup_cap(0), None, "ip b: no warm-up");
        let a = &e.sources[0];
        let first = 20_788; // 2026-12-01
        assert_eq!(a.warmup_cap(first - 3), Some(10));
        assert_eq!(a.warmup_cap(first), Some(10));
        assert_eq!(a.warmup_cap(first + 1), Some(20));
        assert_eq!(a.warmup_cap(first + 2), None);
    }

    #[test]
    fn a_source_that_is_down_is_left_out_for_a_while() {
        let e = Egress::new(&cfg(), "mx.example");
        let t0 = Instant::now();
        assert!(e.mark_down("a", t0));
        assert!(!e.mark_down("a", t0), "already down");
        assert!((0..10).all(|_| e.pick("bulk", t0).unwrap().name == "b"));
        // Every source of the pool down: still one to try.
        assert!(e.mark_down("b", t0));
        assert!(e.pick("vip", t0).is_some());
        // Back after DOWN_FOR.
        let later = t0 + DOWN_FOR;
        let names: Vec<String> = (0..4)
            .map(|_| e.pick("bulk", later).unwrap().name.clone())
            .collect();
        assert!(names.iter().any(|n| n == "a"), "{names:?}");
    }
}
