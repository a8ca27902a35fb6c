//! What a fleet of nodes shares through Redis: per-path message rates
//! (a GCRA throttle), connection leases, suspensions, the keys of
//! injection requests already answered (`Idempotency-Key`), and lists
//! whose entries every node keeps a copy of (the suppression list): a
//! hash of the entries (removed ones kept as tombstones, an empty value)
//! and a log of changes (a stream) that each node
//! reads from where it left off ([`Cluster::publish_list`],
//! [`Cluster::read_list_log`], [`Cluster::scan_list`]).
//!
//! Owns: [`Cluster`], the node's handle, cloned into every shard (it is
//! `Send + Sync`): requests go over a channel to one thread that holds
//! the Redis connection ([`link`]), so a shard's executor never blocks on
//! the network; a shard waits at most `cluster.timeout_ms` for an answer.
//! Whether Redis answers is one flag every shard reads
//! ([`Cluster::is_up`]): while it is down, requests fail at once
//! ([`ClusterError::Down`]) and callers hold their 1/N share of each
//! limit (`cluster.nodes`); the thread tries again every second and
//! raises the flag when Redis answers.
//!
//! May call: `config`, `metrics`.
//! Must not: know about gates, messages or the scheduler (the scheduler's
//! `shared` module maps its paths onto this).

mod link;
mod scripts;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::oneshot;

use crate::config::ClusterConfig;

/// Why a request to Redis got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis is unreachable")]
    Down,
    #[error("no answer from Redis within {0} ms")]
    Timeout(u64),
    #[error("Redis: {0}")]
    Redis(String),
}

/// One request to the Redis thread.
#[derive(Debug)]
enum RedisOp {
    Tokens {
        key: String,
        interval_us: u64,
        tolerance_us: u64,
        want: u32,
    },
    Acquire {
        keys: [String; 2],
        limit: usize,
        asker: String,
        members: Vec<String>,
    },
    Renew {
        keys: [String; 2],
        limit: usize,
        asker: String,
        members: Vec<String>,
    },
    Release {
        key: String,
        members: Vec<String>,
    },
    SetHold {
        key: String,
        field: String,
        until: Option<Option<u64>>,
    },
    Holds {
        key: String,
    },
    Reserve {
        key: String,
        mark: String,
        window_ms: u64,
    },
    Settle {
        key: String,
        value: Option<String>,
        window_ms: u64,
    },
    ListPublish {
        /// Entries, log.
        keys: [String; 2],
        node: String,
        changes: Vec<ListChange>,
    },
    ListRead {
        /// Log, epoch.
        keys: [String; 2],
        after: LogId,
        count: usize,
        epoch: String,
    },
    ListScan {
        key: String,
        cursor: u64,
        count: usize,
    },
}

/// Its answer.
#[derive(Debug)]
enum Answer {
    Tokens {
        granted: u32,
        wait_us: u64,
    },
    Granted(u32),
    Renewed(Renewal),
    Done,
    Holds(Vec<(String, Option<u64>)>),
    /// A reservation: None when it was made, else what the key holds.
    Existing(Option<String>),
    Logged(LogId),
    Log(LogRead),
    Page(u64, Vec<ListChange>),
}

struct Job {
    command: RedisOp,
    reply: oneshot::Sender<Result<Answer, ClusterError>>,
}

/// Tokens from a shared rate: how many were granted, and when none were,
/// how long until the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tokens {
    pub granted: u32,
    pub wait: Duration,
}

/// What renewing a shard's leases on a path found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Renewal {
    /// The leases that could not be renewed (expired, and taken).
    pub lost: Vec<String>,
    /// The shard's fair share: the limit over the shards holding or
    /// wanting leases (at least 1).
    pub fair: usize,
    /// Another shard is left wanting.
    pub others_want: bool,
}

/// A shared list's log keeps about this many changes; a node whose
/// place in it was trimmed away reads the whole list again.
pub const LIST_LOG_MAX: usize = 100_000;

/// One change to a shared list: `value` None removes `field` (Redis
/// keeps an empty value for it, a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListChange {
    pub field: String,
    pub value: Option<String>,
}

/// The id of an entry in a list's log (a Redis stream id: milliseconds
/// and a sequence), in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogId(pub u64, pub u64);

impl LogId {
    pub fn parse(text: &str) -> Option<LogId> {
        let (ms, seq) = text.split_once('-')?;
        Some(LogId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What reading a list's log found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRead {
    /// The log's epoch: another than last time means Redis lost the log
    /// (and perhaps the entries) since.
    pub epoch: String,
    /// The newest entry's id (0-0: none ever).
    pub last: LogId,
    /// The oldest entry left by trimming, if any is left.
    pub first: Option<LogId>,
    /// Entries in the log now.
    pub length: u64,
    /// Entries ever added (so `added - length` were trimmed).
    pub added: u64,
    /// The entries after the id asked for, oldest first.
    pub entries: Vec<(LogId, ListChange)>,
}

impl LogRead {
    /// Whether a reader whose place is `after` (0-0: it applied nothing,
    /// the log had no entry then) missed entries that trimming took:
    /// trimming takes the oldest first, so the entries after a place
    /// are all there as long as the oldest left is not after it. (When
    /// it is, the entry at the place itself may have been the last one
    /// taken: then nothing was missed, but the reader cannot tell.)
    pub fn missed(&self, after: LogId) -> bool {
        match self.first {
            None => self.last > after,
            Some(_) if after == LogId::default() => self.added > self.length,
            Some(first) => first > after,
        }
    }
}

/// The node's handle on the shared state.
pub struct Cluster {
    jobs: flume::Sender<Job>,
    up: Arc<AtomicBool>,
    nodes: usize,
    prefix: String,
    node_id: String,
    timeout: Duration,
    lease_ttl: Duration,
    batch_max: u32,
    sync_interval: Duration,
}

impl Cluster {
    /// Starts the Redis thread (which connects at once, then again each
    /// second while Redis is unreachable). None when `cluster.redis` is
    /// empty.
    pub fn start(
        cfg: &ClusterConfig,
        hostname: &str,
    ) -> Result<Option<Arc<Cluster>>, ClusterError> {
        if !cfg.is_on() {
            return Ok(None);
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let client = link::Target::new(&cfg.redis_urls(), cfg.redis_cluster, timeout)
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        let (tx, rx) = flume::unbounded();
        let up = Arc::new(AtomicBool::new(false));
        let lease_ttl = Duration::from_secs(cfg.lease_ttl_secs);
        link::spawn(client, rx, up.clone(), timeout, lease_ttl, cfg.nodes);
        let node_id = format!("{hostname}-{:08x}", rand::random::<u32>());
        Ok(Some(Arc::new(Cluster {
            jobs: tx,
            up,
            nodes: cfg.nodes,
            prefix: cfg.key_prefix.clone(),
            node_id,
            timeout,
            lease_ttl,
            batch_max: cfg.token_batch_max,
            sync_interval: Duration::from_millis(cfg.sync_interval_ms),
        })))
    }

    /// Whether Redis answered last time: the limits are shared.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Nodes sharing the limits (`cluster.nodes`): each holds 1/N of a
    /// limit while Redis is unreachable.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// This process's name in Redis (leases carry it): the host name and
    /// a random part, so a restarted node never takes a dead one's leases
    /// for its own.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// Tokens a shard asks for at once for `rate` messages a second:
    /// about 50 ms of it, at least one, at most `token_batch_max`.
    pub fn batch_for(&self, rate: f64) -> u32 {
        ((rate * 0.05).ceil() as u32).clamp(1, self.batch_max)
    }

    /// The Redis key of `what` for a path (`source|site`): the path in a
    /// hash tag, so that the keys one script touches (`conns` and `want`)
    /// share a Redis Cluster slot.
    fn path_key(&self, path: &str, what: &str) -> String {
        let tag: String = path.chars().filter(|c| !matches!(c, '{' | '}')).collect();
        format!("{}:{{{tag}}}:{what}", self.prefix)
    }

    async fn call(&self, command: RedisOp) -> Result<Answer, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Down);
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { command, reply })
            .map_err(|_| ClusterError::Down)?;
        let timeout = self.timeout;
        let late = async move {
            glommio::timer::sleep(timeout).await;
            Err(ClusterError::Timeout(timeout.as_millis() as u64))
        };
        let answered = async move { answer.await.unwrap_or(Err(ClusterError::Down)) };
        futures_lite::future::or(answered, late).await
    }

    /// Takes up to `want` tokens from `path`'s shared rate of `rate`
    /// messages a second (a burst of `want` allowed).
    pub async fn take_tokens(
        &self,
        path: &str,
        rate: f64,
        want: u32,
    ) -> Result<Tokens, ClusterError> {
        let interval_us = (1e6 / rate).max(1.0) as u64;
        let command = RedisOp::Tokens {
            key: self.path_key(path, "rate"),
            interval_us,
            tolerance_us: interval_us * u64::from(want.saturating_sub(1)),
            want,
        };
        match self.call(command).await? {
            Answer::Tokens { granted, wait_us } => Ok(Tokens {
                granted,
                wait: Duration::from_micros(wait_us),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Asks, as `asker` (`node:shard`), for the leases named `members`
    /// on `path`, of which at most `limit` may be held fleet-wide: how
    /// many (the first ones) were granted. One left wanting is noted, for
    /// the holders' fair shares.
    pub async fn acquire(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        members: Vec<String>,
    ) -> Result<u32, ClusterError> {
        let keys = [self.path_key(path, "conns"), self.path_key(path, "want")];
        let asker = asker.to_string();
        match self
            .call(RedisOp::Acquire {
                keys,
                limit,
                asker,
                members,
            })
            .await?
        {
            Answer::Granted(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Renews `asker`'s leases on `path`.
    pub async fn renew(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        members: Vec<String>,
    ) -> Result<Renewal, ClusterError> {
        let keys = [self.path_key(path, "conns"), self.path_key(path, "want")];
        let asker = asker.to_string();
        match self
            .call(RedisOp::Renew {
                keys,
                limit,
                asker,
                members,
            })
            .await?
        {
            Answer::Renewed(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn release(&self, path: &str, members: Vec<String>) -> Result<(), ClusterError> {
        if members.is_empty() {
            return Ok(());
        }
        let key = self.path_key(path, "conns");
        self.call(RedisOp::Release { key, members }).await.map(drop)
    }

    /// Publishes a hold (`kind:name`, as the spool keys it) until `until`
    /// (unix seconds; None: until resumed), or ends it (`until` None).
    pub async fn set_hold(
        &self,
        field: &str,
        until: Option<Option<u64>>,
    ) -> Result<(), ClusterError> {
        let (key, field) = (self.holds_key(), field.to_string());
        self.call(RedisOp::SetHold { key, field, until })
            .await
            .map(drop)
    }

    /// Every hold published: (key, until).
    pub async fn holds(&self) -> Result<Vec<(String, Option<u64>)>, ClusterError> {
        match self
            .call(RedisOp::Holds {
                key: self.holds_key(),
            })
            .await?
        {
            Answer::Holds(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Claims an idempotency key for `window`, marking it with `mark`
    /// while the request is under way: None when this claim made it,
    /// else what the key already holds (another's mark, or the answer).
    pub async fn reserve(
        &self,
        key: &str,
        mark: &str,
        window: Duration,
    ) -> Result<Option<String>, ClusterError> {
        let command = RedisOp::Reserve {
            key: format!("{}:idem:{{{}}}", self.prefix, key.replace(['{', '}'], "")),
            mark: mark.to_string(),
            window_ms: window.as_millis() as u64,
        };
        match self.call(command).await? {
            Answer::Existing(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Stores the answer of a claimed key (or, None, frees the key: the
    /// request queued nothing, so a retry may try again).
    pub async fn settle(
        &self,
        key: &str,
        value: Option<String>,
        window: Duration,
    ) -> Result<(), ClusterError> {
        let command = RedisOp::Settle {
            key: format!("{}:idem:{{{}}}", self.prefix, key.replace(['{', '}'], "")),
            value,
            window_ms: window.as_millis() as u64,
        };
        self.call(command).await.map(drop)
    }

    fn holds_key(&self) -> String {
        format!("{}:holds", self.prefix)
    }

    /// Applies `changes` to the shared list `list` (its entries and its
    /// log, at once): the id of the last change logged.
    pub async fn publish_list(
        &self,
        list: &str,
        changes: Vec<ListChange>,
    ) -> Result<LogId, ClusterError> {
        let command = RedisOp::ListPublish {
            keys: [self.path_key(list, "entries"), self.path_key(list, "log")],
            node: self.node_id.clone(),
            changes,
        };
        match self.call(command).await? {
            Answer::Logged(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `count` changes of `list` logged after `after`, with where
    /// the log stands.
    pub async fn read_list_log(
        &self,
        list: &str,
        after: LogId,
        count: usize,
    ) -> Result<LogRead, ClusterError> {
        let command = RedisOp::ListRead {
            keys: [self.path_key(list, "log"), self.path_key(list, "epoch")],
            after,
            count,
            epoch: new_epoch(),
        };
        match self.call(command).await? {
            Answer::Log(read) => Ok(read),
            other => Err(unexpected(other)),
        }
    }

    /// One page of `list`'s entries (an `HSCAN` from `cursor`): the next
    /// cursor (0 at the end) and the entries, removed ones (tombstones)
    /// with no value.
    pub async fn scan_list(
        &self,
        list: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<ListChange>), ClusterError> {
        let command = RedisOp::ListScan {
            key: self.path_key(list, "entries"),
            cursor,
            count,
        };
        match self.call(command).await? {
            Answer::Page(next, page) => Ok((next, page)),
            other => Err(unexpected(other)),
        }
    }
}

/// A fresh epoch for a list's log, used only if it has none (the read
/// makes it).
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn unexpected(answer: Answer) -> ClusterError {
    ClusterError::Redis(format!("unexpected answer {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::{LogId, LogRead};

    #[test]
    fn log_ids_parse_print_and_order_as_redis_does() {
        let id = LogId::parse("1733070000123-7").unwrap();
        assert_eq!(id, LogId(1733070000123, 7));
        assert_eq!(id.to_string(), "1733070000123-7");
        assert!(LogId(5, 10) < LogId(6, 0));
        assert!(LogId(5, 2) < LogId(5, 10), "numbers, not text");
        assert_eq!(LogId::parse("0-0"), Some(LogId::default()));
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(LogId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_reader_knows_when_trimming_took_entries_it_had_not_read() {
        let read = |last, first: Option<u64>, length, added| LogRead {
            last: LogId(last, 0),
            first: first.map(|f| LogId(f, 0)),
            length,
            added,
            ..LogRead::default()
        };
        let place = LogId(20, 0);
        // 10..=30, nothing trimmed; or trimmed up to the place.
        assert!(!read(30, Some(10), 21, 21).missed(place));
        assert!(!read(30, Some(20), 11, 21).missed(place));
        // Trimmed past the place.
        assert!(read(30, Some(25), 6, 21).missed(place));
        // Trimmed to nothing: missed only if something came after.
        assert!(read(30, None, 0, 21).missed(place));
        assert!(!read(20, None, 0, 11).missed(place));
        // A reader that applied nothing (the log had no entry): it
        // missed entries only if any were trimmed.
        assert!(!read(30, Some(10), 21, 21).missed(LogId::default()));
        assert!(read(30, Some(12), 19, 21).missed(LogId::default()));
        assert!(!read(0, None, 0, 0).missed(LogId::default()));
    }
}
