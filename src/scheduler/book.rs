//! The node's own book of path limits: what Redis keeps for a fleet
//! (`cluster::scripts`), kept in memory for the shards of one node, each
//! path by one owner shard.
//!
//! Why: a path's limits (connections, messages a second) are the node's,
//! but its mail sits on whichever shards took it. A static 1/N share per
//! shard leaves a shard with all the mail at 1/N of the rate. Instead the
//! shards hold leases and take rate tokens from one book per path, as
//! nodes do from Redis: a shard with mail gets what the others do not
//! use, and a fair share while others want.
//!
//! Owns: [`LimitBook`], one per shard, served over its own mesh
//! (`shard::mesh`, one request at a time, none awaiting); the paths it
//! owns ([`owner_of`]) each with their leases (name -> expiry, names
//! `asker:n`), the askers left wanting (for fair shares), the rate's
//! theoretical arrival time (GCRA), and the node's [`Counts`] against a
//! capped path's hourly and daily caps. Those caps are the node's, not
//! the fleet's, so the book keeps them with or without Redis. The counts
//! it keeps start from what every shard stored before a restart: until
//! each shard has told its own ([`LimitBook::seed_counts`]), a cap is
//! not answered ([`CapTurn::Unseeded`]). The answers are the same as Redis's
//! ([`crate::cluster::Tokens`], [`crate::cluster::Renewal`]), so the lease
//! keeper (`scheduler::shared`) speaks to either the same way.
//!
//! Concurrency: state in a `RefCell` on the owner shard; every method runs
//! to completion. Time is given (`now`), never read, so the unit tests
//! drive it.
//!
//! Must not: know about gates, connections or messages; call anything.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cluster::{Renewal, Tokens};

/// An asker that got fewer leases than it asked for is counted as
/// wanting for this long (it asks again within milliseconds).
const WANTING: Duration = Duration::from_secs(2);

/// The shard that keeps `path`'s limits: a hash of its name (FNV-1a, the
/// same on every shard and every run).
pub fn owner_of(path: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The paths one shard keeps.
#[derive(Debug, Default)]
pub struct LimitBook {
    paths: RefCell<HashMap<String, PathBook>>,
    /// Capped paths' counts, node-wide (kept apart from `paths`, which
    /// forgets a path when idle).
    caps: RefCell<HashMap<String, Counts>>,
    /// Shards that have told their stored counts.
    seeded: Cell<usize>,
}

/// One capped path's messages in the current clock hour and day (UTC):
/// (window number since the epoch, messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub hour: (u64, u64),
    pub day: (u64, u64),
}

impl Counts {
    /// As four numbers, for the spool.
    pub fn to_array(self) -> [u64; 4] {
        [self.hour.0, self.hour.1, self.day.0, self.day.1]
    }

    pub fn from_array(a: [u64; 4]) -> Counts {
        Counts {
            hour: (a[0], a[1]),
            day: (a[2], a[3]),
        }
    }

    /// The counts at `unix` (seconds): a window that has passed starts
    /// again from 0.
    pub fn roll(&mut self, unix: u64) {
        let (hour, day) = (unix / 3600, unix / 86_400);
        if self.hour.0 != hour {
            self.hour = (hour, 0);
        }
        if self.day.0 != day {
            self.day = (day, 0);
        }
    }

    /// Whether one more message stays within `per_hour` and `per_day`.
    pub fn has_room(&self, per_hour: Option<u64>, per_day: Option<u64>) -> bool {
        per_hour.is_none_or(|cap| self.hour.1 < cap) && per_day.is_none_or(|cap| self.day.1 < cap)
    }

    pub fn add_one(&mut self) {
        self.hour.1 += 1;
        self.day.1 += 1;
    }

    /// Adds another shard's counts: of the same window they add up; of a
    /// later one they replace these.
    pub fn merge(&mut self, other: Counts) {
        for (mine, theirs) in [(&mut self.hour, other.hour), (&mut self.day, other.day)] {
            if mine.0 == theirs.0 {
                mine.1 += theirs.1;
            } else if theirs.0 > mine.0 {
                *mine = theirs;
            }
        }
    }
}

/// The book's answer to one message on a capped path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapTurn {
    /// Counted: it may go.
    Taken,
    /// The path is at its cap for this hour or day.
    Capped,
    /// Not every shard has told its stored counts yet (start-up): ask
    /// again in a moment.
    Unseeded,
}

#[derive(Debug, Default)]
struct PathBook {
    /// Lease name -> expiry.
    leases: HashMap<String, Instant>,
    /// Asker -> until when it counts as wanting.
    wanting: HashMap<String, Instant>,
    /// GCRA's theoretical arrival time.
    tat: Option<Instant>,
}

impl PathBook {
    fn sweep(&mut self, now: Instant) {
        self.leases.retain(|_, until| *until > now);
        self.wanting.retain(|_, until| *until > now);
    }

    fn idle(&self, now: Instant) -> bool {
        self.leases.is_empty() && self.wanting.is_empty() && self.tat.is_none_or(|t| t <= now)
    }
}

/// The asker a lease name belongs to (`asker:n`).
fn asker_of(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(asker, _)| asker)
}

impl LimitBook {
    /// GCRA, as `cluster::scripts::GCRA`: up to `want` tokens at once of
    /// a rate whose emission interval is `interval`, a burst of
    /// `tolerance` allowed; when none, how long until the next.
    pub fn take_tokens(
        &self,
        path: &str,
        interval: Duration,
        tolerance: Duration,
        want: u32,
        now: Instant,
    ) -> Tokens {
        let mut paths = self.paths.borrow_mut();
        let book = paths.entry(path.to_string()).or_default();
        let interval = interval.max(Duration::from_micros(1));
        let tat = book.tat.map_or(now, |t| t.max(now));
        let room = (now + tolerance).saturating_duration_since(tat).as_nanos()
            / interval.as_nanos()
            + u128::from(now + tolerance >= tat);
        let n = room.min(u128::from(want)) as u32;
        if n == 0 {
            return Tokens {
                granted: 0,
                wait: tat.saturating_duration_since(now + tolerance),
            };
        }
        book.tat = Some(tat + interval * n);
        Tokens {
            granted: n,
            wait: Duration::ZERO,
        }
    }

    /// As `cluster::scripts::ACQUIRE`: grants the leases `names` (in
    /// order) while fewer than `limit` are held, each for `ttl`; an asker
    /// granted fewer than it asked for is noted as wanting. How many.
    pub fn acquire(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        names: Vec<String>,
        ttl: Duration,
        now: Instant,
    ) -> u32 {
        let mut paths = self.paths.borrow_mut();
        let book = paths.entry(path.to_string()).or_default();
        book.sweep(now);
        let asked = names.len();
        let free = limit.saturating_sub(book.leases.len());
        let mut granted = 0;
        for name in names.into_iter().take(free) {
            book.leases.insert(name, now + ttl);
            granted += 1;
        }
        if granted < asked {
            book.wanting.insert(asker.to_string(), now + WANTING);
        } else {
            book.wanting.remove(asker);
        }
        granted as u32
    }

    /// As `cluster::scripts::RENEW`: renews `names` for `ttl` (one that
    /// expired is taken again if there is room), and tells the asker its
    /// fair share (the limit over the askers holding or wanting, at least
    /// 1) and whether another asker wants.
    pub fn renew(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        names: Vec<String>,
        ttl: Duration,
        now: Instant,
    ) -> Renewal {
        let mut paths = self.paths.borrow_mut();
        let book = paths.entry(path.to_string()).or_default();
        book.sweep(now);
        let mut lost = Vec::new();
        for name in names {
            if book.leases.contains_key(&name) || book.leases.len() < limit {
                book.leases.insert(name, now + ttl);
            } else {
                lost.push(name);
            }
        }
        let mut askers: Vec<&str> = book.leases.keys().map(|n| asker_of(n)).collect();
        askers.extend(book.wanting.keys().map(String::as_str));
        askers.sort_unstable();
        askers.dedup();
        let others_want = book.wanting.keys().any(|w| w != asker);
        Renewal {
            lost,
            fair: (limit / askers.len().max(1)).max(1),
            others_want,
        }
    }

    /// Gives leases back; forgets paths with nothing left.
    pub fn release(&self, path: &str, names: &[String], now: Instant) {
        let mut paths = self.paths.borrow_mut();
        if let Some(book) = paths.get_mut(path) {
            for name in names {
                book.leases.remove(name);
            }
            book.sweep(now);
        }
        paths.retain(|_, b| !b.idle(now));
    }

    /// Adds one shard's stored counts (its own messages on the capped
    /// paths this book keeps, possibly none); called once by every shard
    /// at start.
    pub fn seed_counts(&self, counts: Vec<(String, Counts)>) {
        let mut caps = self.caps.borrow_mut();
        for (path, c) in counts {
            caps.entry(path).or_default().merge(c);
        }
        self.seeded.set(self.seeded.get() + 1);
    }

    /// Counts one message on `path` at `unix` (seconds) if the node's
    /// counts of its hour and day are under `per_hour` and `per_day`,
    /// once all `shards` have told theirs.
    pub fn take_count(
        &self,
        path: &str,
        per_hour: Option<u64>,
        per_day: Option<u64>,
        unix: u64,
        shards: usize,
    ) -> CapTurn {
        if self.seeded.get() < shards {
            return CapTurn::Unseeded;
        }
        let mut caps = self.caps.borrow_mut();
        let c = caps.entry(path.to_string()).or_default();
        c.roll(unix);
        if !c.has_room(per_hour, per_day) {
            return CapTurn::Capped;
        }
        c.add_one();
        CapTurn::Taken
    }

    /// Paths the book holds anything for (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.paths.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(asker: &str, from: usize, n: usize) -> Vec<String> {
        (from..from + n).map(|i| format!("{asker}:{i}")).collect()
    }

    #[test]
    fn every_shard_finds_the_same_owner() {
        let owners: Vec<usize> = ["|mx.a", "ip1|mx.a", "|mx.b", "ip2|gmail"]
            .iter()
            .map(|p| owner_of(p, 2))
            .collect();
        assert_eq!(
            owners,
            ["|mx.a", "ip1|mx.a", "|mx.b", "ip2|gmail"]
                .iter()
                .map(|p| owner_of(p, 2))
                .collect::<Vec<_>>()
        );
        assert!(owners.iter().all(|&o| o < 2));
        assert_eq!(owner_of("anything", 1), 0);
        // Paths spread over the shards.
        let spread: std::collections::HashSet<usize> =
            (0..64).map(|i| owner_of(&format!("|mx{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn tokens_come_at_the_rate_with_a_burst_of_the_batch() {
        let book = LimitBook::default();
        let t0 = Instant::now();
        // 50/s: one per 20 ms; batches of 3 (a tolerance of 2 intervals).
        let interval = Duration::from_millis(20);
        let take = |at: Instant| book.take_tokens("p", interval, interval * 2, 3, at);
        assert_eq!(take(t0).granted, 3, "a full batch at first");
        let t = take(t0);
        assert_eq!(t.granted, 0);
        assert_eq!(t.wait, Duration::from_millis(20));
        assert_eq!(take(t0 + Duration::from_millis(20)).granted, 1);
        // Over one second from t0, asking all the time: 50 + the burst.
        let mut granted = 3 + 1;
        let mut at = t0 + Duration::from_millis(20);
        while at < t0 + Duration::from_secs(1) {
            at += Duration::from_millis(1);
            granted += take(at).granted;
        }
        assert!((51..=53).contains(&granted), "{granted}");
        // Idle for a while: a burst of the batch, no more.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(take(later).granted, 3);
        assert_eq!(take(later).granted, 0);
    }

    #[test]
    fn leases_go_to_the_shards_that_ask_and_fair_shares_follow_demand() {
        let book = LimitBook::default();
        let t0 = Instant::now();
        let ttl = Duration::from_millis(1500);
        // Shard 0 alone with mail: all 10 connections.
        assert_eq!(book.acquire("p", 10, "s0", names("s0", 0, 10), ttl, t0), 10);
        let r = book.renew("p", 10, "s0", names("s0", 0, 10), ttl, t0);
        assert_eq!((r.fair, r.others_want, r.lost.len()), (10, false, 0));
        // Shard 1 gets mail: nothing free, it is noted as wanting, and
        // shard 0 learns its fair share is 5.
        assert_eq!(book.acquire("p", 10, "s1", names("s1", 0, 5), ttl, t0), 0);
        let r = book.renew("p", 10, "s0", names("s0", 0, 10), ttl, t0);
        assert_eq!((r.fair, r.others_want), (5, true));
        // Shard 0 gives 5 back; shard 1 takes them.
        book.release("p", &names("s0", 5, 5), t0);
        assert_eq!(book.acquire("p", 10, "s1", names("s1", 0, 5), ttl, t0), 5);
        let r = book.renew("p", 10, "s1", names("s1", 0, 5), ttl, t0);
        assert_eq!((r.fair, r.others_want), (5, false));
        // Shard 1 runs out of mail and gives its leases back: shard 0 may
        // take them all again once the wanting note is over.
        book.release("p", &names("s1", 0, 5), t0);
        let t1 = t0 + Duration::from_secs(1);
        let r = book.renew("p", 10, "s0", names("s0", 0, 5), ttl, t1);
        assert_eq!((r.fair, r.others_want), (10, false));
        assert_eq!(book.acquire("p", 10, "s0", names("s0", 5, 5), ttl, t1), 5);
        // Leases not renewed expire; a renewal after that takes them again
        // if there is room.
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(book.acquire("p", 10, "s1", names("s1", 9, 10), ttl, t2), 10);
        let r = book.renew("p", 10, "s0", names("s0", 0, 10), ttl, t2);
        assert_eq!(r.lost.len(), 10);
        // A path with nothing held is forgotten.
        book.release("p", &names("s1", 9, 10), t2);
        let t3 = t2 + Duration::from_secs(3);
        book.release("p", &[], t3);
        assert!(book.is_empty());
    }

    #[test]
    fn a_cap_holds_for_the_node_from_the_counts_every_shard_stored() {
        let book = LimitBook::default();
        let day = 20_000 * 86_400 + 8 * 3600;
        let take = |unix| book.take_count("ip|mx.a", Some(4), Some(6), unix, 2);
        // Day 20,000, 08:00: shard 0 stored 2 this hour, shard 1 stored 1
        // this hour and 3 earlier today; shard 1 also stored yesterday's.
        let c = |h, d| Counts {
            hour: (day / 3600, h),
            day: (day / 86_400, d),
        };
        book.seed_counts(vec![("ip|mx.a".into(), c(2, 2))]);
        assert_eq!(take(day), CapTurn::Unseeded, "shard 1 has not told");
        let yesterday = Counts::from_array([day / 3600 - 24, 9, day / 86_400 - 1, 9]);
        book.seed_counts(vec![
            ("ip|mx.a".into(), yesterday),
            ("ip|mx.a".into(), c(1, 4)),
        ]);
        // 3 this hour of 4, 6 today of 6: the day's cap holds.
        assert_eq!(take(day), CapTurn::Capped);
        // The next day: the hour's cap of 4, however the shards ask.
        let next = day + 86_400;
        let taken = (0..10).filter(|_| take(next) == CapTurn::Taken).count();
        assert_eq!(taken, 4);
        assert_eq!(take(next + 3600), CapTurn::Taken, "a new hour");
        // Another path is counted apart; no cap, no count needed.
        assert_eq!(
            book.take_count("|mx.b", None, Some(0), next, 2),
            CapTurn::Capped
        );
        assert_eq!(
            book.take_count("|mx.b", Some(1), None, next, 2),
            CapTurn::Taken
        );
    }

    #[test]
    fn counts_of_a_later_window_replace_older_ones() {
        let mut a = Counts::from_array([10, 3, 1, 5]);
        a.merge(Counts::from_array([10, 2, 1, 4]));
        assert_eq!(a, Counts::from_array([10, 5, 1, 9]));
        a.merge(Counts::from_array([11, 1, 1, 1]));
        assert_eq!(a, Counts::from_array([11, 1, 1, 10]));
        a.merge(Counts::from_array([9, 7, 0, 7]));
        assert_eq!(a, Counts::from_array([11, 1, 1, 10]), "older: ignored");
        a.roll(12 * 3600);
        assert_eq!(a, Counts::from_array([12, 0, 0, 0]));
    }
}
