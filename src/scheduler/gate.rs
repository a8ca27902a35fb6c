//! PathTurn per path: how many connections one shard has open from one
//! egress source to one site, how fast it starts messages there, and who
//! waits for a connection.
//!
//! Owns: [`Gates`], one per shard, a [`Gate`] per [`PathKey`] (source,
//! site): the path's limits (`shaping::Limits`, node- or fleet-wide), the
//! connection leases this shard holds on it, the connections in use, the
//! workers waiting for one (first come, first served within a priority
//! lane, the lanes taking turns: `lanes`), the rate tokens it holds, the
//! measured rate, and a `[backoff]` throttle when a receiver asked to slow
//! down; and, apart from the gates (which are forgotten when idle), the
//! [`Counts`] of capped paths against their hourly and daily caps. A
//! worker holds a connection from [`Gates::enter`] (at once, or when one
//! is handed over) to [`Gates::leave`]; leaving hands the connection
//! straight to the next waiter, so a waiter never misses its turn.
//!
//! Limits are held, not divided: a shard's connections on a path are the
//! leases it holds (`scheduler::shared` takes and gives them back,
//! [`Gates::set_leased`]), and each start takes a rate token ([`Slot::Ask`],
//! [`Gates::add_tokens`]), both from the path's authority ([`Sharing`]):
//! the node's book (`scheduler::book`, the path's owner shard), or Redis
//! for a fleet (`[cluster]`). So a shard with all of a path's mail gets
//! all of its limits, and shards with mail share them. The hourly and
//! daily caps are the node's too: the book counts them (the scheduler
//! asks it), and each shard keeps its own counts here to store and show
//! ([`Gates::count_one`]); only while the book does not answer does a
//! shard hold to its share ([`Gates::take_share`]).
//!
//! Concurrency: per shard, on its executor; the scheduler keeps it in a
//! `RefCell` and never holds the borrow across an await. A waiter is a
//! one-shot channel: a worker cancelled while it waits (shutdown) drops
//! its end, and the connection goes to the next one.
//!
//! Must not: read the clock (callers pass `Instant`s), open connections
//! or know about messages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::backoff::{RateMeter, Throttle};
pub use super::book::Counts;
use super::lanes::{LANES, Lanes};
use super::shaping::Limits;

/// One path: mail from `source` (None: the kernel's choice of address)
/// to `site`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathKey {
    pub source: Option<String>,
    pub site: String,
}

/// One path's admission on this shard.
#[derive(Debug, Default)]
pub struct Gate {
    /// The node-wide (or fleet-wide) limits last configured.
    limits: Option<Limits>,
    /// The shaping rule that gave them, for metrics and the summary.
    pub rule: Option<String>,
    /// This shard's connections: the leases it holds on the path.
    limit: usize,
    /// Message tokens taken from the path's rate and not yet used, and
    /// until when they may be (tokens kept longer would let a shard burst
    /// past its neighbours).
    tokens: u32,
    tokens_until: Option<Instant>,
    in_use: usize,
    /// Workers waiting for a connection, by their message's priority.
    waiters: Lanes<oneshot::Sender<()>>,
    next_slot: Option<Instant>,
    meter: RateMeter,
    throttle: Option<Throttle>,
    /// The rule the path was under when its throttle began: what the
    /// throttle's metric was labelled with, so that its end is too.
    throttled_under: Option<String>,
    /// When a worker last entered or left: idle gates are forgotten.
    last_used: Option<Instant>,
}

/// How a worker gets its connection.
pub enum PathTurn {
    Now,
    /// Wait for a leaving worker (or a raised limit) to hand one over.
    Wait(oneshot::Receiver<()>),
}

/// Who keeps the limits the gates' leases and tokens come from. A change
/// drops every lease and token held (they were the other's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// The node's book (`scheduler::book`): the node alone, or a fleet's
    /// node while Redis is unreachable (then with each limit over the
    /// nodes).
    #[default]
    Node,
    /// Redis, for the fleet (`[cluster]`).
    Redis,
}

/// When a worker that has its connection may start its message.
#[derive(Debug, PartialEq)]
pub enum Slot {
    /// After this wait, if any.
    Go(Option<Duration>),
    /// Ask the path's authority for tokens of its rate (messages a
    /// second) first.
    Ask(f64),
}

/// Tokens are used within this or dropped.
const TOKENS_KEEP: Duration = Duration::from_secs(1);

/// A path's lease bookkeeping, for `scheduler::shared`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub key: PathKey,
    /// The fleet-wide connection limit.
    pub limit: usize,
    pub in_use: usize,
    pub waiting: usize,
    /// How long an unused pooled connection of the path is kept.
    pub idle_timeout: Duration,
}

/// A gate nobody used for this long (and without a throttle) is dropped.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Gates {
    gates: HashMap<PathKey, Gate>,
    /// The priority lanes' weights, for the waiters' turns.
    weights: [u32; LANES],
    /// Messages counted against the hourly and daily caps of capped paths
    /// (kept apart from the gates, which are forgotten when idle).
    counts: HashMap<PathKey, Counts>,
    shard: usize,
    shards: usize,
    sharing: Sharing,
}

/// This shard's part of a node-wide cap when the path's book does not
/// answer (`Gates::take_share`): the shares of all shards add up to the
/// cap exactly (some may be 0).
fn cap_share(cap: u64, shard: usize, shards: usize) -> u64 {
    let (shard, shards) = (shard as u64, shards as u64);
    cap / shards + u64::from(shard < cap % shards)
}

impl Gate {
    /// Connections this shard may use at `now`: its leases, fewer while a
    /// throttle holds.
    fn capacity(&self, now: Instant) -> usize {
        match &self.throttle {
            Some(t) => t.connections(self.limit, now),
            None => self.limit,
        }
    }

    /// Hands connections to waiters while there is room, the lanes
    /// taking turns by `weights`.
    fn wake(&mut self, now: Instant, weights: [u32; LANES]) {
        while self.in_use < self.capacity(now) {
            let Some(tx) = self.waiters.pop(weights) else {
                break;
            };
            if tx.send(()).is_ok() {
                self.in_use += 1;
            }
        }
    }

    /// The node-wide (or fleet-wide) limits last configured, if any.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

impl Gates {
    pub fn new(shard: usize, shards: usize, weights: [u32; LANES]) -> Gates {
        Gates {
            gates: HashMap::new(),
            weights,
            counts: HashMap::new(),
            shard,
            shards: shards.max(1),
            sharing: Sharing::Node,
        }
    }

    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// Redis became reachable or unreachable: the leases and tokens
    /// held were the other authority's, and go (the keeper takes new
    /// ones).
    pub fn set_sharing(&mut self, sharing: Sharing) {
        if self.sharing == sharing {
            return;
        }
        self.sharing = sharing;
        for gate in self.gates.values_mut() {
            gate.limit = 0;
            gate.tokens = 0;
        }
    }

    /// The paths' demand for leases: every gate configured.
    pub fn lease_view(&self) -> Vec<LeaseView> {
        self.gates
            .iter()
            .filter_map(|(key, g)| {
                let limits = g.limits.as_ref()?;
                Some(LeaseView {
                    key: key.clone(),
                    limit: limits.max_connections,
                    in_use: g.in_use,
                    waiting: g.waiters.len(),
                    idle_timeout: limits.idle_timeout(),
                })
            })
            .collect()
    }

    /// This shard may use `n` connections on `key` (the leases it holds,
    /// less any it is giving back); more lets waiters in.
    pub fn set_leased(&mut self, key: &PathKey, n: usize, now: Instant) {
        let weights = self.weights;
        if let Some(gate) = self.gates.get_mut(key) {
            gate.limit = n;
            gate.wake(now, weights);
        }
    }

    /// Whether a worker waits on `key` while this shard holds no lease
    /// there (the keeper should take one now, not at its next round).
    pub fn wants_first_lease(&self, key: &PathKey) -> bool {
        self.gates
            .get(key)
            .is_some_and(|g| g.limit == 0 && !g.waiters.is_empty())
    }

    /// Connections in use on `key`.
    pub fn in_use_on(&self, key: &PathKey) -> usize {
        self.gates.get(key).map_or(0, |g| g.in_use)
    }

    /// Tokens the path's authority granted for `key`.
    pub fn add_tokens(&mut self, key: &PathKey, n: u32, now: Instant) {
        if let Some(gate) = self.gates.get_mut(key) {
            gate.tokens += n;
            gate.tokens_until = Some(now + TOKENS_KEEP);
        }
    }

    /// Sets `key`'s limits (node- or fleet-wide: the keeper leases
    /// connections within them) and the rule they came from.
    pub fn configure(&mut self, key: &PathKey, limits: &Limits, rule: Option<&str>) {
        let gate = self.gates.entry(key.clone()).or_default();
        if gate.limits.as_ref() == Some(limits) && gate.rule.as_deref() == rule {
            return;
        }
        gate.limits = Some(limits.clone());
        gate.rule = rule.map(str::to_string);
    }

    /// A worker asks for a connection on `key` (configured first) for a
    /// message in priority lane `lane`.
    pub fn enter(&mut self, key: &PathKey, lane: usize, now: Instant) -> PathTurn {
        let gate = self.gates.entry(key.clone()).or_default();
        gate.last_used = Some(now);
        if gate.waiters.is_empty() && gate.in_use < gate.capacity(now) {
            gate.in_use += 1;
            return PathTurn::Now;
        }
        let (tx, rx) = oneshot::channel();
        gate.waiters.push(lane, tx);
        PathTurn::Wait(rx)
    }

    /// A worker is done with its connection on `key`: it goes to the
    /// next waiter if the limit still allows it.
    pub fn leave(&mut self, key: &PathKey, now: Instant) {
        let Some(gate) = self.gates.get_mut(key) else {
            return;
        };
        gate.last_used = Some(now);
        gate.in_use = gate.in_use.saturating_sub(1);
        gate.wake(now, self.weights);
    }

    /// Idle connections of `key` that may stay open beside those in use.
    pub fn idle_room(&self, key: &PathKey, now: Instant) -> usize {
        self.gates
            .get(key)
            .map_or(0, |g| g.capacity(now).saturating_sub(g.in_use))
    }

    /// Books the next start time on `key` and says how long to wait for
    /// it. A limited rate takes a token per start (none left:
    /// [`Slot::Ask`]); a throttle paces this shard besides.
    pub fn slot(&mut self, key: &PathKey, now: Instant) -> Slot {
        let Some(gate) = self.gates.get_mut(key) else {
            return Slot::Go(None);
        };
        let rate = gate
            .limits
            .as_ref()
            .map_or(0.0, |l| l.max_messages_per_second);
        if rate > 0.0 {
            if gate.tokens_until.is_some_and(|t| t < now) {
                gate.tokens = 0;
            }
            if gate.tokens == 0 {
                return Slot::Ask(rate);
            }
            gate.tokens -= 1;
        }
        gate.meter.tick(now);
        let Some(throttled) = gate.throttle.as_ref().and_then(|t| t.rate(now)) else {
            return Slot::Go(None);
        };
        let pace = Duration::from_secs_f64(1.0 / throttled);
        let start = gate.next_slot.map_or(now, |t| t.max(now));
        gate.next_slot = Some(start + pace);
        Slot::Go(Some(start - now).filter(|w| !w.is_zero()))
    }

    /// A `[backoff]` throttle on `key`: the first cut from what this
    /// shard measured (never above the path's rate), later cuts from where
    /// recovery has got to. Every shard takes the same cut, so the path's
    /// rate is cut by `factor` wherever its mail is. None if nothing changed (a cut within
    /// `backoff::CUT_HOLD` of the last); else whether this cut began the
    /// throttle.
    pub fn throttle(
        &mut self,
        key: &PathKey,
        factor: f64,
        recover: Duration,
        now: Instant,
    ) -> Option<bool> {
        let gate = self.gates.entry(key.clone()).or_default();
        if let Some(t) = &mut gate.throttle {
            return t.cut(factor, recover, now).then_some(false);
        }
        let measured = gate.meter.rate(now);
        let configured = gate
            .limits
            .as_ref()
            .map(|l| l.max_messages_per_second)
            .filter(|r| *r > 0.0);
        let base = configured.map_or(measured, |c| c.min(measured));
        gate.throttle = Some(Throttle::new(base, factor, recover, now));
        gate.throttled_under = gate.rule.clone();
        Some(true)
    }

    /// The throttled rate of `key` at `now`, if one holds.
    pub fn throttled_rate(&self, key: &PathKey, now: Instant) -> Option<f64> {
        self.gates.get(key)?.throttle.as_ref()?.rate(now)
    }

    /// Counts one message on `key` at `unix` (seconds), which the node's
    /// book let go: this shard's counts (for the caller to store, and for
    /// `sent_today`).
    pub fn count_one(&mut self, key: &PathKey, unix: u64) -> Counts {
        let c = self.counts.entry(key.clone()).or_default();
        c.roll(unix);
        c.add_one();
        *c
    }

    /// As [`Gates::count_one`], but only if this shard's share of the
    /// node-wide caps (`per_hour`, `per_day`) allows it: for when the
    /// path's book does not answer. None when the share is used.
    pub fn take_share(
        &mut self,
        key: &PathKey,
        per_hour: Option<u64>,
        per_day: Option<u64>,
        unix: u64,
    ) -> Option<Counts> {
        let (shard, shards) = (self.shard, self.shards);
        let c = self.counts.entry(key.clone()).or_default();
        c.roll(unix);
        let share = |cap: Option<u64>| cap.map(|cap| cap_share(cap, shard, shards));
        if !c.has_room(share(per_hour), share(per_day)) {
            return None;
        }
        c.add_one();
        Some(*c)
    }

    /// Messages counted on `key` today (by `unix` seconds), if capped.
    pub fn sent_today(&self, key: &PathKey, unix: u64) -> u64 {
        self.counts
            .get(key)
            .filter(|c| c.day.0 == unix / 86_400)
            .map_or(0, |c| c.day.1)
    }

    /// Counts stored before a restart.
    pub fn seed(&mut self, key: PathKey, counts: Counts) {
        self.counts.insert(key, counts);
    }

    /// The shaping rule `key` was last configured under.
    pub fn rule_of(&self, key: &PathKey) -> Option<&str> {
        self.gates.get(key)?.rule.as_deref()
    }

    /// The timer's round: throttles that recovered end (their paths
    /// returned, with the rule each was under when its throttle began),
    /// throttles recovering let waiters in, and gates unused for a long
    /// time are forgotten.
    pub fn tick(&mut self, now: Instant) -> Vec<(PathKey, Option<String>)> {
        let mut recovered = Vec::new();
        let weights = self.weights;
        self.gates.retain(|key, gate| {
            if gate
                .throttle
                .as_ref()
                .is_some_and(|t| t.rate(now).is_none())
            {
                gate.throttle = None;
                recovered.push((key.clone(), gate.throttled_under.take()));
            }
            gate.wake(now, weights);
            let idle = gate.in_use == 0
                && gate.waiters.is_empty()
                && gate.throttle.is_none()
                && gate
                    .last_used
                    .is_none_or(|t| now.saturating_duration_since(t) > FORGET_AFTER);
            !idle
        });
        recovered
    }

    /// Every path, for the summary and the metrics.
    pub fn iter(&self) -> impl Iterator<Item = (&PathKey, &Gate)> {
        self.gates.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryConfig;

    fn key(site: &str) -> PathKey {
        PathKey {
            source: Some("ip1".into()),
            site: site.into(),
        }
    }

    fn limits(connections: usize, rate: f64) -> Limits {
        let mut l = Limits::of(&DeliveryConfig::default());
        l.max_connections = connections;
        l.max_messages_per_second = rate;
        l
    }

    fn waits(a: PathTurn) -> oneshot::Receiver<()> {
        match a {
            PathTurn::Wait(rx) => rx,
            PathTurn::Now => panic!("admitted at once"),
        }
    }

    #[test]
    fn connections_are_handed_over_in_order_within_the_leases() {
        let t0 = Instant::now();
        let mut g = Gates::new(0, 1, [16, 4, 1]);
        let k = key("mx.a");
        g.configure(&k, &limits(5, 0.0), Some("a"));
        // No lease yet: the worker waits, and the keeper is asked for one.
        let mut first = waits(g.enter(&k, 1, t0));
        assert!(g.wants_first_lease(&k));
        g.set_leased(&k, 2, t0);
        assert_eq!(first.try_recv(), Ok(Some(())));
        assert!(!g.wants_first_lease(&k));
        assert!(matches!(g.enter(&k, 1, t0), PathTurn::Now));
        let mut second = waits(g.enter(&k, 1, t0));
        let mut third = waits(g.enter(&k, 1, t0));
        assert_eq!(g.idle_room(&k, t0), 0);
        g.leave(&k, t0);
        assert_eq!(second.try_recv(), Ok(Some(())));
        assert_eq!(third.try_recv(), Ok(None));
        // A waiter that gave up is skipped.
        drop(third);
        let mut fourth = waits(g.enter(&k, 1, t0));
        g.leave(&k, t0);
        assert_eq!(fourth.try_recv(), Ok(Some(())));
        assert_eq!(g.gates[&k].in_use(), 2);
        // One more lease lets the next waiter in at once.
        let mut fifth = waits(g.enter(&k, 1, t0));
        g.set_leased(&k, 3, t0);
        assert_eq!(fifth.try_recv(), Ok(Some(())));
        // Fewer: leaving workers are not replaced until under it.
        let mut sixth = waits(g.enter(&k, 1, t0));
        g.set_leased(&k, 1, t0);
        g.leave(&k, t0);
        g.leave(&k, t0);
        assert_eq!(sixth.try_recv(), Ok(None));
        g.leave(&k, t0);
        assert_eq!(sixth.try_recv(), Ok(Some(())));
        assert_eq!(g.gates[&k].in_use(), 1);
    }

    #[test]
    fn a_throttle_cuts_rate_and_connections_then_ends() {
        let t0 = Instant::now();
        let mut g = Gates::new(0, 1, [16, 4, 1]);
        let k = key("mx.a");
        g.configure(&k, &limits(4, 40.0), None);
        g.set_leased(&k, 4, t0);
        // Sending at the configured 40/s for half a second...
        for _ in 0..20 {
            g.add_tokens(&k, 1, t0);
            g.slot(&k, t0);
        }
        // ...then "slow down": half of that.
        let t0 = t0 + Duration::from_millis(500);
        assert_eq!(g.throttle(&k, 0.5, Duration::from_secs(4), t0), Some(true));
        assert_eq!(
            g.throttle(&k, 0.5, Duration::from_secs(4), t0),
            None,
            "held a second"
        );
        assert_eq!(g.throttled_rate(&k, t0), Some(20.0));
        // Tokens still needed; the throttle paces besides.
        assert_eq!(g.slot(&k, t0), Slot::Ask(40.0));
        g.add_tokens(&k, 2, t0);
        assert_eq!(g.slot(&k, t0), Slot::Go(None));
        assert_eq!(g.slot(&k, t0), Slot::Go(Some(Duration::from_millis(50))));
        for _ in 0..2 {
            assert!(matches!(g.enter(&k, 1, t0), PathTurn::Now));
        }
        let mut third = waits(g.enter(&k, 1, t0));
        let t1 = t0 + Duration::from_secs(2);
        assert!(g.tick(t1).is_empty());
        assert_eq!(third.try_recv(), Ok(Some(())), "recovering: 3 of 4");
        let t2 = t0 + Duration::from_secs(4);
        assert_eq!(g.tick(t2), [(k.clone(), None)]);
        assert_eq!(g.throttled_rate(&k, t2), None);
    }

    #[test]
    fn without_the_book_a_shard_holds_to_its_share_of_a_cap() {
        let k = key("mx.a");
        // A day cap of 5 over 2 shards: 3 here (shard 0), 2 there.
        let mut shard0 = Gates::new(0, 2, [16, 4, 1]);
        let mut shard1 = Gates::new(1, 2, [16, 4, 1]);
        let day = 20_000 * 86_400;
        let taken = |g: &mut Gates, unix| {
            (0..10)
                .filter(|_| g.take_share(&k, None, Some(5), unix).is_some())
                .count()
        };
        assert_eq!(taken(&mut shard0, day) + taken(&mut shard1, day), 5);
        assert_eq!(taken(&mut shard0, day + 86_399), 0, "same day");
        assert_eq!(taken(&mut shard0, day + 86_400), 3, "the next day");
        // An hourly cap within the day's.
        let mut g = Gates::new(0, 1, [16, 4, 1]);
        let n = (0..10)
            .filter(|_| g.take_share(&k, Some(2), Some(3), day).is_some())
            .count();
        assert_eq!(n, 2);
        let c = g.take_share(&k, Some(2), Some(3), day + 3600).unwrap();
        assert_eq!(c.day, (20_000, 3));
        assert!(g.take_share(&k, Some(2), Some(3), day + 7200).is_none());
        // Counts survive as stored.
        let mut fresh = Gates::new(0, 1, [16, 4, 1]);
        fresh.seed(k.clone(), Counts::from_array(c.to_array()));
        assert!(fresh.take_share(&k, None, Some(3), day + 7200).is_none());
        // A cap of 0: never.
        assert!(g.take_share(&key("b"), None, Some(0), day).is_none());
    }

    #[test]
    fn a_throttle_ends_under_the_rule_it_began_under() {
        // Its metric is labelled by rule: a reload between the two must
        // not leave one label up and another down.
        let t0 = Instant::now();
        let mut g = Gates::new(0, 1, [16, 4, 1]);
        let k = key("mx.a");
        g.configure(&k, &limits(2, 10.0), Some("old"));
        assert_eq!(g.throttle(&k, 0.5, Duration::from_secs(1), t0), Some(true));
        g.configure(&k, &limits(2, 20.0), Some("new"));
        let ended = g.tick(t0 + Duration::from_secs(1));
        assert_eq!(ended, [(k.clone(), Some("old".to_string()))]);
    }

    #[test]
    fn starts_take_tokens_and_a_change_of_authority_drops_what_was_held() {
        let t0 = Instant::now();
        // Shard 1 of 2; 5 connections and 100/s for the whole node.
        let mut g = Gates::new(1, 2, [16, 4, 1]);
        let k = key("mx.a");
        g.configure(&k, &limits(5, 100.0), None);
        assert_eq!(
            g.lease_view(),
            [LeaseView {
                key: k.clone(),
                limit: 5,
                in_use: 0,
                waiting: 0,
                idle_timeout: limits(5, 100.0).idle_timeout(),
            }],
            "the whole limit is asked for, not a share"
        );
        let mut first = waits(g.enter(&k, 1, t0));
        g.set_leased(&k, 5, t0);
        assert_eq!(first.try_recv(), Ok(Some(())));
        // No token: ask; tokens granted are spent without pacing.
        assert_eq!(g.slot(&k, t0), Slot::Ask(100.0));
        g.add_tokens(&k, 2, t0);
        assert_eq!(g.slot(&k, t0), Slot::Go(None));
        assert_eq!(g.slot(&k, t0), Slot::Go(None));
        assert_eq!(g.slot(&k, t0), Slot::Ask(100.0));
        // Tokens not used within a second are dropped.
        g.add_tokens(&k, 3, t0);
        assert_eq!(g.slot(&k, t0 + Duration::from_secs(2)), Slot::Ask(100.0));
        // Redis takes over: the node's leases and tokens are gone.
        g.add_tokens(&k, 3, t0);
        g.set_sharing(Sharing::Redis);
        assert_eq!(g.slot(&k, t0), Slot::Ask(100.0));
        g.leave(&k, t0);
        assert!(matches!(g.enter(&k, 1, t0), PathTurn::Wait(_)));
    }

    #[test]
    fn unused_gates_are_forgotten() {
        let t0 = Instant::now();
        let mut g = Gates::new(0, 1, [16, 4, 1]);
        let k = key("mx.a");
        g.configure(&k, &limits(1, 0.0), None);
        g.set_leased(&k, 1, t0);
        assert!(matches!(g.enter(&k, 1, t0), PathTurn::Now));
        g.tick(t0 + FORGET_AFTER * 2);
        assert_eq!(g.iter().count(), 1, "in use");
        g.leave(&k, t0);
        g.tick(t0 + FORGET_AFTER * 2);
        assert_eq!(g.iter().count(), 0);
    }
}
