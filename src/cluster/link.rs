//! The thread that talks to Redis: one blocking connection (to one
//! server, or to a Redis Cluster: the redis crate's cluster client sends
//! each request to the node of its keys' slot), requests taken in order
//! from the shards' channel.
//!
//! Owns: the connection and the up/down flag's transitions (logged once
//! each, and `ringpost_cluster_redis_up`). A request whose asker stopped
//! waiting is skipped. While Redis is down, requests fail at once and the
//! thread tries to connect again every second (also when no request
//! comes), so the limits become shared again soon after Redis is back; a
//! Redis Cluster counts as back only when it says `cluster_state:ok`
//! (after a failover, once a replica took over), and a link that fails
//! again within 10 s of coming back waits 3 s before the next try.
//!
//! Must not: be called from a shard's executor other than through the
//! channel (it blocks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Connection, ConnectionLike, Script};

use super::{Answer, ClusterError, Job, RedisOp, scripts};

const RETRY: Duration = Duration::from_secs(1);
/// Up for less than this, then down again: flapping.
const FLAP: Duration = Duration::from_secs(10);
/// The wait before the next try after a flap.
const FLAP_RETRY: Duration = Duration::from_secs(3);

/// Where Redis is: one server, or (the seed nodes of) a Redis Cluster.
pub(super) enum Target {
    Server(redis::Client),
    Cluster(ClusterClient),
}

impl Target {
    /// Checks the URLs; connects later. `timeout` bounds a cluster
    /// client's connections and answers (a server's: [`Target::connect`]).
    pub(super) fn new(
        urls: &[&str],
        cluster: bool,
        timeout: Duration,
    ) -> redis::RedisResult<Target> {
        match (cluster, urls) {
            (false, [url]) => Ok(Target::Server(redis::Client::open(*url)?)),
            (true, _) => Ok(Target::Cluster(
                ClusterClient::builder(urls.to_vec())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?,
            )),
            _ => Err((redis::ErrorKind::Client, "one Redis URL, unless a cluster").into()),
        }
    }

    /// Connects, with `timeout` for connecting and for each answer.
    fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Target::Server(client) => {
                let conn = client.get_connection_with_timeout(timeout)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                Ok(Conn::Server(conn))
            }
            Target::Cluster(client) => {
                let mut conn = client.get_connection()?;
                // Every slot served: not while a failed primary's replica
                // has yet to take over (its slots' requests would fail).
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
                if !info.contains("cluster_state:ok") {
                    return Err((
                        redis::ErrorKind::ClusterConnectionNotFound,
                        "cluster_state is not ok (a failover under way?)",
                    )
                        .into());
                }
                Ok(Conn::Cluster(Box::new(conn)))
            }
        }
    }
}

/// A connection to one server, or to a cluster (which sends each
/// command to the node of its keys' slot).
enum Conn {
    Server(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Server(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

struct Link {
    client: Target,
    conn: Option<Conn>,
    up: Arc<AtomicBool>,
    timeout: Duration,
    nodes: usize,
    next_try: Instant,
    /// When Redis last came up: a failure soon after means it flaps (a
    /// cluster failing over), and the next try waits longer.
    up_since: Instant,
    /// Whether a failure was logged since Redis last answered (the
    /// first one at start-up is, too).
    failure_logged: bool,
    scripts: Scripts,
}

/// The scripts (sent by hash, loaded again when Redis lost them) and
/// what they are run with.
struct Scripts {
    lease_ttl_ms: u64,
    gcra: Script,
    acquire: Script,
    renew: Script,
    list_publish: Script,
    list_read: Script,
}

pub(super) fn spawn(
    client: Target,
    jobs: flume::Receiver<Job>,
    up: Arc<AtomicBool>,
    timeout: Duration,
    lease_ttl: Duration,
    nodes: usize,
) {
    let mut link = Link {
        client,
        conn: None,
        up,
        timeout,
        nodes,
        next_try: Instant::now(),
        up_since: Instant::now(),
        failure_logged: false,
        scripts: Scripts {
            lease_ttl_ms: lease_ttl.as_millis() as u64,
            gcra: Script::new(scripts::GCRA),
            acquire: Script::new(scripts::ACQUIRE),
            renew: Script::new(scripts::RENEW),
            list_publish: Script::new(scripts::LIST_PUBLISH),
            list_read: Script::new(scripts::LIST_READ),
        },
    };
    ::metrics::gauge!(crate::metrics::CLUSTER_REDIS_UP).set(0.0);
    std::thread::Builder::new()
        .name("ringpost-redis".into())
        .spawn(move || {
            link.connect();
            loop {
                match jobs.recv_timeout(RETRY) {
                    Ok(job) => link.serve(job),
                    Err(flume::RecvTimeoutError::Timeout) => link.check(),
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .expect("the Redis thread starts");
}

impl Link {
    fn serve(&mut self, job: Job) {
        if job.reply.is_canceled() {
            return;
        }
        let op = op_name(&job.command);
        if self.conn.is_none() && Instant::now() >= self.next_try {
            self.connect();
        }
        let scripts = &self.scripts;
        let result = match self
            .conn
            .as_mut()
            .map(|c| run(c.like(), &job.command, scripts))
        {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) if refused_only(&e) => {
                log::debug!("Redis refused a {op} request: {e}");
                Err(ClusterError::Redis(e.to_string()))
            }
            Some(Err(e)) => Err(self.failed(e)),
            None => Err(ClusterError::Down),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ClusterError::Down) => "down",
            Err(_) => "error",
        };
        ::metrics::counter!(crate::metrics::CLUSTER_REQUESTS, "op" => op, "result" => outcome)
            .increment(1);
        let _ = job.reply.send(result);
    }

    /// While down: try again once a second. While up: a PING when idle,
    /// so that a dead Redis is noticed without traffic.
    fn check(&mut self) {
        match self.conn.as_mut() {
            None => {
                if Instant::now() >= self.next_try {
                    self.connect();
                }
            }
            Some(conn) => {
                if let Err(e) = redis::cmd("PING").query::<String>(conn.like()) {
                    self.failed(e);
                }
            }
        }
    }

    fn connect(&mut self) {
        match self.client.connect(self.timeout) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.failure_logged = false;
                if !self.up.swap(true, Ordering::Relaxed) {
                    self.up_since = Instant::now();
                    log::info!("Redis answers: the limits are shared by the cluster");
                    ::metrics::gauge!(crate::metrics::CLUSTER_REDIS_UP).set(1.0);
                }
            }
            Err(e) => {
                self.failed(e);
            }
        }
    }

    /// A failed request or connection: down until the next try (a few
    /// seconds when it was up for less than [`FLAP`]: each change of
    /// authority starts the limits' leases over, so flapping between
    /// Redis and the fallback would stall delivery).
    fn failed(&mut self, e: redis::RedisError) -> ClusterError {
        self.conn = None;
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let flapped = was_up && self.up_since.elapsed() < FLAP;
        self.next_try = Instant::now() + if flapped { FLAP_RETRY } else { RETRY };
        if was_up || !self.failure_logged {
            self.failure_logged = true;
            log::warn!(
                "Redis is unreachable ({e}): each limit falls back to this node's 1/{} share until it answers",
                self.nodes
            );
            ::metrics::gauge!(crate::metrics::CLUSTER_REDIS_UP).set(0.0);
            ::metrics::counter!(crate::metrics::CLUSTER_FALLBACKS).increment(1);
        }
        ClusterError::Redis(e.to_string())
    }
}

/// Whether Redis answered, refusing this one request (an error of the
/// command or script): the connection stays and the limits stay shared.
/// Anything else (I/O, a timeout, a Redis loading or read-only) counts
/// as Redis unreachable.
fn refused_only(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as K};
    matches!(
        e.kind(),
        ErrorKind::Server(K::ResponseError | K::ExecAbort | K::NoScript | K::NoPerm | K::CrossSlot)
    )
}

fn op_name(command: &RedisOp) -> &'static str {
    match command {
        RedisOp::Tokens { .. } => "tokens",
        RedisOp::Acquire { .. } => "acquire",
        RedisOp::Renew { .. } => "renew",
        RedisOp::Release { .. } => "release",
        RedisOp::SetHold { .. } | RedisOp::Holds { .. } => "holds",
        RedisOp::Reserve { .. } | RedisOp::Settle { .. } => "idempotency",
        RedisOp::ListPublish { .. } | RedisOp::ListRead { .. } | RedisOp::ListScan { .. } => {
            "lists"
        }
    }
}

/// One request: its script or commands.
fn run(
    conn: &mut dyn ConnectionLike,
    command: &RedisOp,
    scripts: &Scripts,
) -> redis::RedisResult<Answer> {
    let lease_ttl_ms = scripts.lease_ttl_ms;
    Ok(match command {
        RedisOp::Tokens {
            key,
            interval_us,
            tolerance_us,
            want,
        } => {
            let (granted, wait_us): (u32, i64) = scripts
                .gcra
                .key(key)
                .arg(interval_us)
                .arg(tolerance_us)
                .arg(want)
                .invoke(conn)?;
            Answer::Tokens {
                granted,
                wait_us: wait_us.max(0) as u64,
            }
        }
        RedisOp::Acquire {
            keys,
            limit,
            asker,
            members,
        } => {
            let mut call = scripts.acquire.key(&keys[0]);
            call.key(&keys[1]).arg(limit).arg(lease_ttl_ms).arg(asker);
            for m in members {
                call.arg(m);
            }
            Answer::Granted(call.invoke(conn)?)
        }
        RedisOp::Renew {
            keys,
            limit,
            asker,
            members,
        } => {
            let mut call = scripts.renew.key(&keys[0]);
            call.key(&keys[1]).arg(limit).arg(lease_ttl_ms).arg(asker);
            for m in members {
                call.arg(m);
            }
            let (fair, others_want, lost): (i64, i64, Vec<String>) = renewal(call.invoke(conn)?);
            Answer::Renewed(super::Renewal {
                lost,
                fair: fair.max(1) as usize,
                others_want: others_want != 0,
            })
        }
        RedisOp::ListPublish { .. } | RedisOp::ListRead { .. } => run_list(conn, command, scripts)?,
        _ => run_plain(conn, command)?,
    })
}

/// A log id from Redis.
fn log_id(text: &str) -> redis::RedisResult<super::LogId> {
    super::LogId::parse(text).ok_or_else(|| {
        let kind = redis::ErrorKind::UnexpectedReturnType;
        (kind, "not a stream id").into()
    })
}

/// LIST_READ's answer: `{epoch, last, first, length, added, {{id, {f,
/// field, v, value, n, node}}...}}`.
type RawLogRead = (String, String, String, u64, u64, Vec<(String, Vec<String>)>);

fn log_read(
    (epoch, last, first, length, added, raw): RawLogRead,
) -> redis::RedisResult<super::LogRead> {
    let mut entries = Vec::with_capacity(raw.len());
    for (id, fields) in raw {
        let pairs: std::collections::HashMap<&str, &str> = fields
            .chunks_exact(2)
            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
            .collect();
        let field = pairs.get("f").copied().unwrap_or_default().to_string();
        let value = pairs.get("v").copied().filter(|v| !v.is_empty());
        let change = super::ListChange {
            field,
            value: value.map(str::to_string),
        };
        entries.push((log_id(&id)?, change));
    }
    Ok(super::LogRead {
        epoch,
        last: log_id(&last)?,
        first: (!first.is_empty()).then(|| log_id(&first)).transpose()?,
        length,
        added,
        entries,
    })
}

/// The requests that are plain commands.
fn run_plain(conn: &mut dyn ConnectionLike, command: &RedisOp) -> redis::RedisResult<Answer> {
    Ok(match command {
        RedisOp::Release { key, members } => {
            redis::cmd("ZREM").arg(key).arg(members).query::<()>(conn)?;
            Answer::Done
        }
        RedisOp::SetHold { key, field, until } => {
            match until {
                Some(until) => redis::cmd("HSET")
                    .arg(key)
                    .arg(field)
                    .arg(until.unwrap_or(0))
                    .query::<()>(conn)?,
                None => redis::cmd("HDEL").arg(key).arg(field).query::<()>(conn)?,
            }
            Answer::Done
        }
        RedisOp::Holds { key } => {
            let all: Vec<(String, u64)> = redis::cmd("HGETALL").arg(key).query(conn)?;
            Answer::Holds(
                all.into_iter()
                    .map(|(k, until)| (k, (until != 0).then_some(until)))
                    .collect(),
            )
        }
        RedisOp::Reserve { .. } | RedisOp::Settle { .. } => run_reservation(conn, command)?,
        RedisOp::ListScan { key, cursor, count } => {
            let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(count)
                .query(conn)?;
            let mut page = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(field), Some(v)) = (it.next(), it.next()) {
                let value = (!v.is_empty()).then_some(v);
                page.push(super::ListChange { field, value });
            }
            Answer::Page(next, page)
        }
        RedisOp::Tokens { .. }
        | RedisOp::Acquire { .. }
        | RedisOp::Renew { .. }
        | RedisOp::ListPublish { .. }
        | RedisOp::ListRead { .. } => {
            let kind = redis::ErrorKind::Client;
            return Err((kind, "a script, not a plain command").into());
        }
    })
}

/// The shared list's scripts: publishing changes, reading the log.
fn run_list(
    conn: &mut dyn ConnectionLike,
    command: &RedisOp,
    scripts: &Scripts,
) -> redis::RedisResult<Answer> {
    Ok(match command {
        RedisOp::ListPublish {
            keys,
            node,
            changes,
        } => {
            let mut call = scripts.list_publish.key(&keys[0]);
            call.key(&keys[1]).arg(node).arg(super::LIST_LOG_MAX);
            for c in changes {
                call.arg(&c.field).arg(c.value.as_deref().unwrap_or(""));
            }
            let id: String = call.invoke(conn)?;
            Answer::Logged(log_id(&id)?)
        }
        RedisOp::ListRead {
            keys,
            after,
            count,
            epoch,
        } => {
            let mut call = scripts.list_read.key(&keys[0]);
            call.key(&keys[1])
                .arg(after.to_string())
                .arg(count)
                .arg(epoch);
            Answer::Log(log_read(call.invoke(conn)?)?)
        }
        _ => {
            let kind = redis::ErrorKind::Client;
            return Err((kind, "not a list script").into());
        }
    })
}

/// Injection's idempotency reservations: reserve a key, settle it.
fn run_reservation(conn: &mut dyn ConnectionLike, command: &RedisOp) -> redis::RedisResult<Answer> {
    Ok(match command {
        RedisOp::Reserve {
            key,
            mark,
            window_ms,
        } => {
            let made: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(mark)
                .arg("NX")
                .arg("PX")
                .arg(window_ms)
                .query(conn)?;
            match made {
                Some(_) => Answer::Existing(None),
                None => Answer::Existing(Some(
                    redis::cmd("GET")
                        .arg(key)
                        .query::<Option<String>>(conn)?
                        .unwrap_or_default(),
                )),
            }
        }
        RedisOp::Settle {
            key,
            value,
            window_ms,
        } => {
            match value {
                Some(v) => redis::cmd("SET")
                    .arg(key)
                    .arg(v)
                    .arg("PX")
                    .arg(window_ms)
                    .query::<()>(conn)?,
                None => redis::cmd("DEL").arg(key).query::<()>(conn)?,
            }
            Answer::Done
        }
        _ => {
            let kind = redis::ErrorKind::Client;
            return Err((kind, "not a reservation").into());
        }
    })
}

/// RENEW's answer: `{fair, others_want, lost...}`.
fn renewal(all: Vec<redis::Value>) -> (i64, i64, Vec<String>) {
    let num = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    let lost = all
        .iter()
        .skip(2)
        .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
        .collect();
    (num(all.first()), num(all.get(1)), lost)
}
