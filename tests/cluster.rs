//! Nodes that share their limits through Redis (`[cluster]`): three
//! ringpost processes with their own spools, a real `redis-server`, and
//! one sink standing for a provider's MX. The fleet is held to 100
//! messages a second and 5 connections however its mail is spread; a
//! node SIGKILLed gives its leases back within their TTL; with Redis
//! stopped each node keeps its 1/3 share and no client sees an error;
//! with Redis back, the shared limits hold again. The suppression list
//! is the fleet's; a graceful stop gives its leases back at once; and
//! the same works on a three-node Redis Cluster, through a failover of
//! one of its primaries.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::redis_server::{RedisCluster, RedisServer};
use common::sink::{Script, Sink};
use common::{send_concurrently, sink::Received};

const RATE: f64 = 100.0;
const CONNECTIONS: usize = 5;
const TTL_SECS: u64 = 3;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Node {
    name: &'static str,
    smtp: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(dir: &Path, name: &'static str, sink: SocketAddr, redis: &str) -> Node {
        Node::start_with(dir, name, sink, &format!("redis = \"{redis}\"\n"))
    }

    /// With `cluster` (lines of `[cluster]` naming Redis).
    fn start_with(dir: &Path, name: &'static str, sink: SocketAddr, cluster: &str) -> Node {
        let (smtp, admin) = (free_addr(), free_addr());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nshards = 2\nhostname = \"{name}.test\"\nshutdown_grace_secs = 2\n\
                 [spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
                 [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n\
                 max_connections = {CONNECTIONS}\nmax_messages_per_second = {RATE}\n\
                 [dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n\
                 [admin]\nlisten = \"{admin}\"\n[inject]\nlisten = \"off\"\n\
                 [cluster]\n{cluster}nodes = 3\nlease_ttl_secs = {TTL_SECS}\n",
                dir.join(format!("spool-{name}")).display(),
                sink.port()
            ),
        )
        .unwrap();
        let child = Some(common::spawn_binary(&config, smtp));
        Node {
            name,
            smtp,
            admin,
            child,
        }
    }

    fn admin_post(&self, path: &str) {
        let (status, body) = common::http(
            self.admin,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status, 200, "{body}");
    }

    /// A request to the admin API: (status, body).
    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        common::http(
            self.admin,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    /// The reply code to `RCPT TO:<rcpt>`.
    fn rcpt(&self, rcpt: &str) -> u16 {
        let mut c = common::Client::connect(self.smtp);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<app@sender.test>", 250);
        c.cmd(&format!("RCPT TO:<{rcpt}>")).code
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Messages the sink took in `[from, to)`, in all and from `node`s.
fn taken(messages: &[Received], from: Instant, to: Instant, nodes: &[&str]) -> usize {
    messages
        .iter()
        .filter(|m| m.at >= from && m.at < to)
        .filter(|m| nodes.iter().any(|n| m.helo == format!("{n}.test")))
        .count()
}

/// The live leases in Redis (score: expiry in ms, Redis time) whose name
/// starts with `prefix`.
fn live_leases(redis: &RedisServer, prefix: &str) -> usize {
    let Ok(mut c) = redis.connection() else {
        return 0;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ringpost:*:conns")
        .query(&mut c)
        .unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c).unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    keys.iter()
        .map(|k| {
            let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(k)
                .arg(now_ms)
                .arg("+inf")
                .query(&mut c)
                .unwrap();
            live.iter().filter(|m| m.starts_with(prefix)).count()
        })
        .sum()
}

fn load(node: &Node, n: usize) -> std::thread::JoinHandle<()> {
    let (smtp, name) = (node.smtp, node.name);
    std::thread::spawn(move || {
        send_concurrently(smtp, n, 12, move |i| {
            (
                "app@sender.test".into(),
                format!("r{i}@dest{}.test", i % 5),
                format!("Subject: {name} {i}\r\n\r\nfrom {name}\r\n"),
            )
        })
    })
}

fn rate(n: usize, window: Duration) -> f64 {
    n as f64 / window.as_secs_f64()
}

#[test]
fn three_nodes_share_a_rate_and_connections_through_redis_kills_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let mut a = Node::start(dir.path(), "node-a", sink.addr, &redis.url());
    let b = Node::start(dir.path(), "node-b", sink.addr, &redis.url());
    let c = Node::start(dir.path(), "node-c", sink.addr, &redis.url());
    // More mail than the fleet may send in the test: the limit, not the
    // queue, sets the pace.
    let loaders: Vec<_> = [&a, &b, &c].iter().map(|n| load(n, 8000)).collect();
    for l in loaders {
        l.join().unwrap();
    }
    assert!(!sink.messages().is_empty(), "nothing reaches the sink");
    // 60 s of shared limits, node A SIGKILLed half way.
    let w0 = Instant::now() + Duration::from_secs(2);
    std::thread::sleep(Duration::from_secs(32));
    let killed = Instant::now();
    a.kill();
    let mut gone_after = None;
    while gone_after.is_none() {
        if live_leases(&redis, "node-a.test-") == 0 {
            gone_after = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(TTL_SECS * 3),
            "node A's leases outlive their TTL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone_after = gone_after.unwrap();
    let w1 = w0 + Duration::from_secs(60);
    std::thread::sleep(w1.saturating_duration_since(Instant::now()));
    let messages = sink.messages();
    let minute = taken(&messages, w0, w1, &["node-a", "node-b", "node-c"]);
    let after_kill = killed + Duration::from_secs(TTL_SECS + 1);
    let others = taken(&messages, after_kill, w1, &["node-b", "node-c"]);
    let others_rate = rate(others, w1 - after_kill);
    let per_node: Vec<usize> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| taken(&messages, w0, killed, &[n]))
        .collect();
    let max_open = sink.state.lock().unwrap().max_open.values().copied().max();
    eprintln!(
        "shared: {minute} messages in 60 s ({:.1}/s; before the kill by node {per_node:?}); \
         node A's leases gone {gone_after:?} after its SIGKILL (TTL {TTL_SECS} s); \
         B and C after it: {others_rate:.1}/s; most connections at once: {max_open:?}",
        rate(minute, Duration::from_secs(60))
    );
    let shared = rate(minute, Duration::from_secs(60));
    assert!(
        (shared - RATE).abs() <= RATE * 0.05,
        "{shared:.1}/s over 60 s"
    );
    assert!(gone_after <= Duration::from_secs(TTL_SECS) + Duration::from_millis(500));
    assert!(
        (others_rate - RATE).abs() <= RATE * 0.05,
        "B and C: {others_rate:.1}/s"
    );
    assert!(
        max_open.unwrap() <= CONNECTIONS,
        "{max_open:?} connections at once"
    );

    // Redis stopped: B and C each keep their 1/3 share, and take mail.
    redis.stop();
    let down = Instant::now();
    let during = [load(&b, 600), load(&c, 600)];
    std::thread::sleep(Duration::from_secs(12));
    for l in during {
        l.join()
            .expect("no client saw an error while Redis was down");
    }
    let (f0, f1) = (
        down + Duration::from_secs(2),
        down + Duration::from_secs(12),
    );
    redis.restart();
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let (s0, s1) = (
        back + Duration::from_secs(2),
        back + Duration::from_secs(12),
    );
    let messages = sink.messages();
    let fallback = rate(taken(&messages, f0, f1, &["node-b", "node-c"]), f1 - f0);
    let resumed = rate(taken(&messages, s0, s1, &["node-b", "node-c"]), s1 - s0);
    let max_open = sink.state.lock().unwrap().max_open.values().copied().max();
    eprintln!(
        "Redis down: B and C {fallback:.1}/s (1/3 each: {:.1}/s); Redis back: {resumed:.1}/s; \
         most connections at once: {max_open:?}",
        RATE * 2.0 / 3.0
    );
    let per_second: Vec<(usize, usize)> = (0..24)
        .map(|i| {
            let t = down + Duration::from_secs(i);
            let t1 = t + Duration::from_secs(1);
            (
                taken(&messages, t, t1, &["node-b"]),
                taken(&messages, t, t1, &["node-c"]),
            )
        })
        .collect();
    eprintln!("per second from Redis's stop: {per_second:?}");
    let expected = RATE * 2.0 / 3.0;
    assert!(
        (fallback - expected).abs() <= expected * 0.07,
        "fallback {fallback:.1}/s"
    );
    assert!(
        (resumed - RATE).abs() <= RATE * 0.07,
        "resumed {resumed:.1}/s"
    );
    assert!(
        max_open.unwrap() <= CONNECTIONS,
        "{max_open:?} connections at once"
    );
    drop((b, c));
}

#[test]
fn a_suspension_on_one_node_holds_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let a = Node::start(dir.path(), "node-a", sink.addr, &redis.url());
    let b = Node::start(dir.path(), "node-b", sink.addr, &redis.url());
    a.admin_post("/queue/domains/held.test/suspend");
    // Within the sync interval (1 s), node B holds it too.
    std::thread::sleep(Duration::from_millis(1500));
    send_concurrently(b.smtp, 10, 2, |i| {
        let domain = if i % 2 == 0 { "held.test" } else { "free.test" };
        (
            "app@sender.test".into(),
            format!("r{i}@{domain}"),
            format!("Subject: {i}\r\n\r\nm{i}\r\n"),
        )
    });
    sink.wait_for(5, 10);
    std::thread::sleep(Duration::from_secs(2));
    let held = |sink: &Sink| {
        sink.messages()
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r.ends_with("@held.test")))
            .count()
    };
    assert_eq!(sink.messages().len(), 5, "only free.test's mail went");
    assert_eq!(held(&sink), 0);
    // Resumed on node B: node A's suspension ends too, and the mail goes.
    b.admin_post("/queue/domains/held.test/resume");
    sink.wait_for(10, 10);
    assert_eq!(held(&sink), 5);
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = redis.connection().unwrap();
    let published: Vec<String> = redis::cmd("HKEYS")
        .arg("ringpost:holds")
        .query(&mut c)
        .unwrap();
    assert!(published.is_empty(), "{published:?}");
    // Node A took the resumption from the cluster: its mail goes too.
    send_concurrently(a.smtp, 2, 1, |i| {
        (
            "app@sender.test".into(),
            format!("a{i}@held.test"),
            format!("Subject: a{i}\r\n\r\na{i}\r\n"),
        )
    });
    sink.wait_for(12, 10);

    // A bounce rule made on node A refuses on node B within the sync
    // interval, and bounces what node B had queued (held by a
    // suspension here); lifted on node B, node A takes the mail again.
    b.admin_post("/queue/domains/bounced.test/suspend");
    send_concurrently(b.smtp, 1, 1, |_| {
        (
            "app@sender.test".into(),
            "queued@bounced.test".into(),
            "Subject: q\r\n\r\nq\r\n".into(),
        )
    });
    let rule =
        r#"{"selector": {"domain": "bounced.test"}, "reason": "wrong list", "for_secs": 3600}"#;
    let (status, made) = a.admin("POST", "/queue/bounce-rules", rule);
    assert_eq!(status, 200, "{made}");
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let id = made["rule"]["id"].as_str().unwrap().to_string();
    assert_eq!(a.rcpt("u@bounced.test"), 550);
    assert!(eventually(5, || b.rcpt("u@bounced.test") == 550));
    // Its DSN comes to the sender, through the sink, with the reason.
    assert!(eventually(10, || sink.messages().iter().any(|m| {
        m.from.is_empty()
            && m.rcpts == ["app@sender.test"]
            && String::from_utf8_lossy(&m.data).contains("wrong list")
    })));
    b.admin_post("/queue/domains/bounced.test/resume");
    let (status, lifted) = b.admin("DELETE", &format!("/queue/bounce-rules/{id}"), "");
    assert_eq!(status, 200, "{lifted}");
    assert!(eventually(5, || a.rcpt("u@bounced.test") == 250));
}

#[test]
fn a_node_stopped_gracefully_gives_its_leases_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    // A slow receiver: every connection is busy for a while.
    let script = Script {
        delay: Duration::from_millis(200),
        ..Script::default()
    };
    let sink = Sink::start("127.0.0.1", 0, script);
    let mut a = Node::start(dir.path(), "node-a", sink.addr, &redis.url());
    send_concurrently(a.smtp, 60, 6, |i| {
        (
            "app@sender.test".into(),
            format!("r{i}@dest.test"),
            format!("Subject: {i}\r\n\r\nslow\r\n"),
        )
    });
    assert!(eventually(10, || live_leases(&redis, "node-a.test") == CONNECTIONS));
    let term = Instant::now();
    let child = a.child.as_mut().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let stopped_in = term.elapsed();
    assert!(status.success(), "{status:?}");
    // Given back, not left to expire (their TTL is 3 s).
    assert_eq!(live_leases(&redis, "node-a.test"), 0);
    // Within the grace period (2 s), the keeper's last round (at most
    // 1 s) and the release.
    assert!(stopped_in < Duration::from_millis(4500), "{stopped_in:?}");
}

/// Nodes a and b on the Redis Cluster `redis`, relaying to `sink`,
/// answering.
fn two_nodes_on(redis: &RedisCluster, dir: &Path, sink: SocketAddr) -> [Node; 2] {
    let cluster = format!("redis = \"{}\"\nredis_cluster = true\n", redis.urls());
    let nodes = ["node-a", "node-b"].map(|name| Node::start_with(dir, name, sink, &cluster));
    for n in &nodes {
        wait_for_http(n.admin);
    }
    nodes
}

#[test]
fn the_shared_limits_and_lists_work_on_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisCluster::start(3);
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let [a, b] = two_nodes_on(&redis, dir.path(), sink.addr);

    // The shared rate and connections: 1,000 messages, half from each
    // node, to one site.
    let start = Instant::now();
    let loads = [load(&a, 500), load(&b, 500)];
    for l in loads {
        l.join().unwrap();
    }
    let got = sink.wait_for(1000, 60);
    let (first, last) = (got[0].at, got[got.len() - 1].at);
    let measured = rate(got.len() - 1, last - first);
    println!(
        "Redis Cluster: 1,000 messages in {:.1} s, {measured:.1}/s; most connections at once: {:?}",
        (last - start).as_secs_f64(),
        sink.state.lock().unwrap().max_open.values().max()
    );
    assert!((95.0..=105.0).contains(&measured), "{measured:.1}/s");
    let max_open = sink.state.lock().unwrap().max_open.values().max().copied();
    assert!(max_open.unwrap() <= CONNECTIONS, "{max_open:?}");
    assert!(taken(&got, first, last + Duration::from_millis(1), &["node-a"]) > 0);

    // A suppression and a suspension made on one node hold on the other.
    let body = r#"[{"address": "gone@example.net"}]"#;
    assert_eq!(a.admin("POST", "/suppressions", body).0, 200);
    assert!(eventually(5, || b.rcpt("gone@example.net") == 550));
    b.admin_post("/queue/domains/held.test/suspend");
    let mut c = redis.connection().unwrap();
    assert!(eventually(5, || {
        redis::cmd("HEXISTS")
            .arg("ringpost:holds")
            .arg("held.test")
            .query::<bool>(&mut c)
            .unwrap_or(false)
    }));

    // The keys are spread over the cluster's nodes, so commands went
    // to more than one of them.
    let per_node = redis.keys_per_node();
    println!("keys per Redis node: {per_node:?}");
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "{per_node:?}"
    );
}

/// A Redis Cluster failover (issue 35): three primaries with a replica
/// each (`cluster-node-timeout` 2 s); two nodes share the 100/s rate and
/// 5 connections; 8 s into a run of 3,000 messages the primary holding
/// the most keys is SIGKILLed. While the cluster fails over the nodes
/// fall back to their shares; after it, the shared rate holds again
/// within 10%; never more than the limit; nothing lost; a suppression made
/// before the kill still holds on both nodes, and one made after it
/// reaches the other node.
#[test]
fn a_redis_cluster_failover_keeps_the_limits_and_loses_nothing() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisCluster::start_with_replicas(3, 1);
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let [a, b] = two_nodes_on(&redis, dir.path(), sink.addr);
    let before = r#"[{"address": "before@example.net"}]"#;
    assert_eq!(a.admin("POST", "/suppressions", before).0, 200);
    assert!(eventually(5, || b.rcpt("before@example.net") == 550));

    let start = Instant::now();
    let loads = [load(&a, N / 2), load(&b, N / 2)];
    std::thread::sleep(Duration::from_secs(8));
    let primaries = redis.primaries();
    let per_node = redis.keys_per_node();
    let victim = *primaries.iter().max_by_key(|&&i| per_node[i]).unwrap();
    let killed = Instant::now();
    redis.kill(victim);
    // Until a replica took over: three live primaries, and every node ok.
    assert!(eventually(60, || redis.primaries().len() == primaries.len()));
    redis.wait_until_ok_within(60);
    let failover = killed.elapsed();
    println!(
        "killed primary {} ({} keys) at {:.1} s; the cluster was ok again after {:.1} s",
        redis.nodes[victim],
        per_node[victim],
        (killed - start).as_secs_f64(),
        failover.as_secs_f64()
    );
    for l in loads {
        l.join().unwrap();
    }
    let got = sink.wait_for(N, 120);
    let mut subjects: Vec<String> = got
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.split("\r\n")
                .find(|l| l.starts_with("Subject: "))
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), N, "every message delivered");

    // Per second, from the first delivery.
    let first = got[0].at;
    let mut per_second = vec![0usize; (got[got.len() - 1].at - first).as_secs() as usize + 1];
    for m in &got {
        per_second[(m.at - first).as_secs() as usize] += 1;
    }
    println!("per second: {per_second:?}");
    // Outside the failover, the shared rate; during it, a node whose link
    // is down keeps its 1/3 share while the other's may still be shared:
    // at most a third over.
    let settled = killed + failover + Duration::from_secs(TTL_SECS + 2);
    let disturbed = |s: usize| {
        let at = first + Duration::from_secs(s as u64);
        at + Duration::from_secs(1) > killed && at < settled
    };
    for (s, &n) in per_second[..per_second.len() - 1].iter().enumerate() {
        let bound = if disturbed(s) {
            RATE * (1.0 + 1.0 / 3.0)
        } else {
            RATE
        };
        assert!(n as f64 <= bound * 1.1, "second {s}: {n} over {bound}");
    }
    // After the failover (and the leases' TTL), up to the last second.
    let last = got[got.len() - 1].at - Duration::from_secs(1);
    assert!(
        last > settled + Duration::from_secs(5),
        "load long enough to measure"
    );
    let after = rate(
        taken(&got, settled, last, &["node-a", "node-b"]),
        last - settled,
    );
    println!("after the failover: {after:.1}/s");
    assert!((RATE * 0.9..=RATE * 1.05).contains(&after), "{after:.1}/s");
    let max_open = sink.state.lock().unwrap().max_open.values().max().copied();
    assert!(max_open.unwrap() <= CONNECTIONS, "{max_open:?}");

    // The list, after the failover.
    assert_eq!(a.rcpt("before@example.net"), 550);
    assert_eq!(b.rcpt("before@example.net"), 550);
    let later = r#"[{"address": "after@example.net"}]"#;
    assert_eq!(b.admin("POST", "/suppressions", later).0, 200);
    assert!(eventually(10, || a.rcpt("after@example.net") == 550));
}

/// Whether `check` holds within `secs` (tried every 100 ms).
fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The fields (`scope address`) of the suppression list's entries in
/// Redis (not its tombstones, the removed ones).
fn suppressions_in_redis(redis: &RedisServer) -> Vec<String> {
    let mut c = redis.connection().unwrap();
    let all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("ringpost:{suppressions}:entries")
        .query(&mut c)
        .unwrap();
    let mut fields: Vec<String> = all
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(f, _)| f)
        .collect();
    fields.sort();
    fields
}

#[test]
fn the_suppression_list_is_shared_by_every_node_through_outages_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let script = Script {
        reject_rcpts: ["dead@dest.test".to_string()].into_iter().collect(),
        ..Script::default()
    };
    let sink = Sink::start("127.0.0.1", 0, script);
    let a = Node::start(dir.path(), "node-a", sink.addr, &redis.url());
    let mut b = Node::start(dir.path(), "node-b", sink.addr, &redis.url());
    wait_for_http(a.admin);
    wait_for_http(b.admin);
    assert_eq!(b.rcpt("gone@example.net"), 250);

    // Added on node A by an operator: node B refuses the recipient too.
    let add = |node: &Node, address: &str| {
        let body = format!(r#"[{{"address": "{address}", "reason": "operator"}}]"#);
        let (status, answer) = node.admin("POST", "/suppressions", &body);
        assert_eq!(status, 200, "{answer}");
    };
    let added = Instant::now();
    add(&a, "gone@example.net");
    assert!(eventually(5, || b.rcpt("gone@example.net") == 550));
    println!(
        "an add on node A refused at node B after {:?}",
        added.elapsed()
    );
    let (status, entry) = b.admin("GET", "/suppressions/gone@example.net", "");
    assert_eq!(status, 200, "{entry}");
    assert!(
        entry.contains("operator") && entry.contains("admin"),
        "{entry}"
    );

    // Removed on node B: node A takes mail for it again.
    let (status, answer) = b.admin("DELETE", "/suppressions/gone@example.net", "");
    assert_eq!((status, answer.contains("true")), (200, true), "{answer}");
    let removed = Instant::now();
    assert!(eventually(5, || a.rcpt("gone@example.net") == 250));
    println!(
        "a removal on node B taken at node A after {:?}",
        removed.elapsed()
    );

    // A hard bounce on node A suppresses the recipient on node B.
    send_concurrently(a.smtp, 1, 1, |_| {
        (
            "app@sender.test".into(),
            "dead@dest.test".into(),
            "Subject: to the dead\r\n\r\nhello\r\n".into(),
        )
    });
    assert!(eventually(10, || b.rcpt("dead@dest.test") == 550));

    // Redis down: an add on node A is answered and holds there, not on
    // node B.
    redis.stop();
    add(&a, "offline@example.net");
    assert_eq!(a.rcpt("offline@example.net"), 550);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.rcpt("offline@example.net"), 250);

    // Redis back, empty (it lost everything): node A publishes what
    // waited, every node publishes its list again, node B takes the new
    // entry, and Redis has the fleet's whole list.
    redis.restart();
    assert!(eventually(10, || b.rcpt("offline@example.net") == 550));
    let want = ["* dead@dest.test", "* offline@example.net"];
    assert!(
        eventually(5, || suppressions_in_redis(&redis) == want),
        "{:?}",
        suppressions_in_redis(&redis)
    );

    // Node B SIGKILLed; changes made meanwhile reach it after its restart
    // although the log was trimmed past its place, what it had stays, and
    // what was removed while it was away does not come back (the
    // removal's tombstone tells it).
    // Its place in the log is on disk by now (sled's flush, 500 ms).
    std::thread::sleep(Duration::from_secs(1));
    b.kill();
    add(&a, "later@example.net");
    let (status, _) = a.admin("DELETE", "/suppressions/dead@dest.test", "");
    assert_eq!(status, 200);
    let want = ["* later@example.net", "* offline@example.net"];
    assert!(eventually(5, || suppressions_in_redis(&redis) == want));
    // And the log trimmed past node B's place: it reads the whole list.
    let mut c = redis.connection().unwrap();
    redis::cmd("XTRIM")
        .arg("ringpost:{suppressions}:log")
        .arg("MAXLEN")
        .arg(0)
        .query::<()>(&mut c)
        .unwrap();
    b = Node::start(dir.path(), "node-b", sink.addr, &redis.url());
    wait_for_http(b.admin);
    assert!(eventually(5, || b.rcpt("later@example.net") == 550
        && b.rcpt("dead@dest.test") == 250));
    assert_eq!(b.rcpt("offline@example.net"), 550);
    let (status, list) = b.admin("GET", "/suppressions", "");
    assert_eq!(status, 200);
    assert!(!list.contains("gone@example.net"), "{list}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.rcpt("dead@dest.test"), 250);
    assert_eq!(suppressions_in_redis(&redis), want);
}

/// A node with the injection API on, relaying to `sink`; `redis` empty:
/// alone.
fn inject_node(
    dir: &Path,
    name: &str,
    sink: SocketAddr,
    redis: &str,
) -> (PathBuf, SocketAddr, Child) {
    let (smtp, inject) = (free_addr(), free_addr());
    let config = dir.join(format!("{name}.toml"));
    let cluster = match redis {
        "" => String::new(),
        url => format!("[cluster]\nredis = \"{url}\"\nnodes = 2\n"),
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nhostname = \"{name}.test\"\nshutdown_grace_secs = 2\n\
             [spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n\
             [admin]\nlisten = \"off\"\n[inject]\nlisten = \"{inject}\"\n{cluster}",
            dir.join(format!("spool-{name}")).display(),
            sink.port()
        ),
    )
    .unwrap();
    let child = common::spawn_binary(&config, inject);
    (config, inject, child)
}

fn inject_request(i: usize) -> Vec<u8> {
    let body = format!(
        "{{\"envelope_sender\": \"app@sender.test\", \"recipients\": [{{\"email\": \"r{i}@dest.test\"}}], \
         \"content\": \"Subject: m{i}\\r\\n\\r\\nmessage m{i}\\r\\n\"}}"
    );
    format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Idempotency-Key: order-{i}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends the request and resets the connection (RST) before the answer,
/// after `after`.
fn send_and_reset(addr: SocketAddr, request: &[u8], after: Duration) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    std::thread::sleep(after);
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Until the injection API answers: just after a SIGKILL the dead
/// process's sockets may still take connections for a few ms.
fn wait_for_http(addr: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text.starts_with("HTTP/1.1 "))
        });
        if matches!(answered, Ok(true)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the injection API does not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The message id of a 200 answer.
fn injected_id(addr: SocketAddr, request: &[u8]) -> String {
    let (status, body) = common::http(addr, request);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).expect("a JSON answer");
    v["id"].as_str().expect("an id").to_string()
}

/// Every sent request twice, the first cut off before its answer, over
/// 8 client threads: the ids the second ones got.
fn send_twice(
    first: SocketAddr,
    second: SocketAddr,
    range: std::ops::Range<usize>,
) -> Vec<(usize, String)> {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let range = range.clone();
            std::thread::spawn(move || {
                range
                    .filter(|i| i % 8 == t)
                    .map(|i| {
                        let request = inject_request(i);
                        send_and_reset(first, &request, Duration::from_millis((i % 4) as u64));
                        (i, injected_id(second, &request))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<(usize, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort();
    ids
}

/// How many times each message `m0..mN` was queued (distinct queue ids
/// in its `Received:`: a message delivered again after a SIGKILL keeps
/// its id), once the sink has had `n` and a moment more for any extra.
fn copies(sink: &Sink, n: usize) -> Vec<usize> {
    sink.wait_for(n, 60);
    std::thread::sleep(Duration::from_millis(1500));
    let mut ids = vec![std::collections::HashSet::new(); n];
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data);
        let i: usize = text
            .split("message m")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .expect("the message's mark");
        let id = text
            .split(" with HTTP id ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .expect("the queue id")
            .to_string();
        ids[i].insert(id);
    }
    ids.iter().map(|s| s.len()).collect()
}

#[test]
fn an_idempotency_key_queues_once_across_resets_restarts_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    // One node: each request twice, the first reset before its answer.
    let (config, addr, mut node) = inject_node(dir.path(), "solo", sink.addr, "");
    let first = send_twice(addr, addr, 0..1000);
    // Across a restart (SIGKILL): the same requests again get the same ids.
    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = common::spawn_binary(&config, addr);
    wait_for_http(addr);
    let again: Vec<(usize, String)> = (0..1000)
        .step_by(7)
        .map(|i| (i, injected_id(addr, &inject_request(i))))
        .collect();
    for (i, id) in &again {
        assert_eq!(&first[*i].1, id, "request {i} after the restart");
    }
    // A different request under a used key is refused.
    let mut other = inject_request(1);
    let at = other.len() - 10;
    other[at] = b'X';
    let (status, _) = common::http(addr, &other);
    assert_eq!(status, 422);
    let counts = copies(&sink, 1000);
    let extra: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
    eprintln!(
        "one node: 1,000 requests sent twice (first reset), {} more after a SIGKILL: {} messages, {extra} extra",
        again.len(),
        counts.iter().sum::<usize>()
    );
    assert!(
        counts.iter().all(|&c| c == 1),
        "{extra} messages queued twice"
    );
    node.kill().unwrap();
    node.wait().unwrap();

    // Two nodes with Redis: the first request to node A, its retry to node B.
    let redis = RedisServer::start();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let (_, a_addr, mut a) = inject_node(dir.path(), "node-a", sink.addr, &redis.url());
    let (_, b_addr, mut b) = inject_node(dir.path(), "node-b", sink.addr, &redis.url());
    std::thread::sleep(Duration::from_millis(500));
    let ids = send_twice(a_addr, b_addr, 0..1000);
    let from_a: Vec<(usize, String)> = (0..1000)
        .step_by(7)
        .map(|i| (i, injected_id(a_addr, &inject_request(i))))
        .collect();
    for (i, id) in &from_a {
        assert_eq!(&ids[*i].1, id, "request {i} on the other node");
    }
    let counts = copies(&sink, 1000);
    let extra: usize = counts.iter().map(|c| c.saturating_sub(1)).sum();
    eprintln!(
        "two nodes: 1,000 requests, first to A (reset), retry to B: {} messages, {extra} extra",
        counts.iter().sum::<usize>()
    );
    assert!(
        counts.iter().all(|&c| c == 1),
        "{extra} messages queued twice"
    );
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
