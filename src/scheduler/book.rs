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
//! `asker:n`), the askers left wanting (for fair shares), and the rate's
//! theoretical arrival time (GCRA). The answers are the same as Redis's
//! ([`crate::cluster::Tokens`], [`crate::cluster::Renewal`]), so the lease
//! keeper (`scheduler::shared`) speaks to either the same way.
//!
//! Concurrency: state in a `RefCell` on the owner shard; every method runs
//! to completion. Time is given (`now`), never read, so the unit tests
//! drive it.
//!
//! Must not: know about gates, connections or messages; call anything.

use std::cell::RefCell;
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
}
