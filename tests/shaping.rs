//! Sites and traffic shaping: domains whose MX records name the same hosts
//! share one site, and a shaping rule's limits hold per (egress source,
//! site) as the sink sees them (connections open at once per client
//! address, messages per 10 s window); the rules reload under load.
//!
//! Real parts: an authoritative DNS server on loopback giving two domains
//! the same MX hosts, a sink that counts open connections per client
//! address, sources on 127.0.0.3/4 (loopback addresses bind without setup).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::{self, Rr};
use common::sink::{Received, Script, Sink};
use common::{Client, TestServer, http, sink_port, start_with};
use ringpost::config::{EgressPool, EgressSource, PoolMember};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// a.site.test and b.site.test: the same two MX hosts (in a different
/// order of records), both at the sink's address.
fn zone() -> SocketAddr {
    dns::serve(
        "site.test",
        vec![
            Rr::Mx("a.site.test", 10, "mx1.site.test"),
            Rr::Mx("a.site.test", 20, "mx2.site.test"),
            Rr::Mx("b.site.test", 20, "mx2.site.test"),
            Rr::Mx("b.site.test", 10, "mx1.site.test"),
            Rr::A("mx1.site.test", ip("127.0.0.2")),
            Rr::A("mx2.site.test", ip("127.0.0.2")),
        ],
    )
}

fn server(
    port: u16,
    shaping_file: &Path,
    tweak: impl FnOnce(&mut ringpost::config::Config),
) -> TestServer {
    let dns = zone();
    let file = shaping_file.to_str().unwrap().to_string();
    start_with(1, move |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.shaping_file = file;
        c.dns.nameservers = vec![dns];
        tweak(c);
    })
}

/// Sends `n` messages over 20 sessions, alternately to a.site.test and
/// b.site.test, each with its own subject ("m<i>").
fn send_many(ts: &TestServer, n: usize) {
    send_from(ts, "news@shop.example", n, "m", 20);
}

/// An egress source at `address` (no warm-up, no forwarder).
fn source(name: &str, address: &str) -> EgressSource {
    EgressSource {
        name: name.into(),
        address: address.parse().unwrap(),
        ehlo: String::new(),
        warmup_start: String::new(),
        warmup_daily: Vec::new(),
        proxy: String::new(),
    }
}

/// A pool of `sources`, each of weight 1.
fn pool(name: &str, sources: &[&str]) -> EgressPool {
    EgressPool {
        name: name.into(),
        sources: sources
            .iter()
            .map(|s| PoolMember {
                source: s.to_string(),
                weight: 1,
            })
            .collect(),
        priority: None,
    }
}

/// Messages taken in `[from, from + len)`.
fn count_in(times: &[Instant], from: Instant, len: Duration) -> usize {
    times
        .iter()
        .filter(|t| **t >= from && **t < from + len)
        .count()
}

fn subject(m: &Received) -> String {
    let text = String::from_utf8_lossy(&m.data);
    let line = text.lines().find(|l| l.starts_with("Subject: ")).unwrap();
    line["Subject: ".len()..].to_string()
}

/// Every message `m0`..`m<n-1>` exactly once.
fn assert_each_once(msgs: &[Received], n: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in msgs {
        *seen.entry(subject(m)).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert_eq!(seen.len(), n);
    assert!((0..n).all(|i| seen.contains_key(&format!("m{i}"))));
}

/// Two domains with the same MX hosts share one site, whose rule allows
/// 3 connections and 100 messages per second per source: over 2,400
/// messages from two sources the sink never sees a fourth connection
/// from one source address, and every 10 s window of each source holds
/// 1,000 messages within 5%.
#[test]
fn two_domains_with_the_same_mx_hosts_share_one_limit_per_source() {
    const N: usize = 2_400;
    let port = sink_port();
    // About 24 ms a message (4 replies): 100/s from one source needs 2 to
    // 3 connections at once, so the connection limit is what holds.
    let slow = Script {
        delay: Duration::from_millis(6),
        ..Script::default()
    };
    let sink = Sink::start("127.0.0.2", port, slow);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(
        &file,
        "[[site]]\nname = \"sitetest\"\nmx_suffix = [\"*.site.test\"]\n\
         max_connections = 3\nmax_messages_per_second = 100\n",
    )
    .unwrap();
    let ts = server(port, &file, |c| {
        c.egress.source = vec![source("ip3", "127.0.0.3"), source("ip4", "127.0.0.4")];
        c.egress.pool = vec![pool("both", &["ip3", "ip4"])];
    });
    send_many(&ts, N);
    let msgs = sink.wait_for(N, 120);
    assert_each_once(&msgs, N);
    let max_open = sink.state.lock().unwrap().max_open.clone();
    println!("most connections open at once, by source: {max_open:?}");
    for source in ["127.0.0.3", "127.0.0.4"] {
        let open = max_open[&ip(source)];
        assert!((2..=3).contains(&open), "{source}: {open} connections");
        let mut times: Vec<Instant> = msgs
            .iter()
            .filter(|m| m.peer.ip() == ip(source))
            .map(|m| m.at)
            .collect();
        times.sort();
        assert_eq!(times.len(), N / 2, "{source}");
        let first = times[0];
        let windows: Vec<usize> = (0..=3)
            .map(|k| {
                let from = first + Duration::from_millis(500 * k);
                count_in(&times, from, Duration::from_secs(10))
            })
            .collect();
        println!("{source}: messages per 10 s window: {windows:?}");
        for n in windows {
            assert!((950..=1050).contains(&n), "{source}: {n} in 10 s");
        }
    }
    let rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpts.clone()).collect();
    assert!(rcpts.iter().any(|r| r.ends_with("@a.site.test")));
    assert!(rcpts.iter().any(|r| r.ends_with("@b.site.test")));
}

fn reload(ts: &TestServer) -> (u16, String) {
    http(
        ts.admin_addr.unwrap(),
        b"POST /config/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
}

/// Under load at 50 messages per second, a shaping file that does not
/// parse is refused (422, the limits stay); a good one raises the limit
/// to 400 per second at once. Nothing is lost or sent twice.
#[test]
fn a_reload_changes_limits_under_load_without_loss_or_duplicates() {
    const N: usize = 1_000;
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    let rule = |rate: u32| {
        format!(
            "[[site]]\nname = \"sitetest\"\nmx_suffix = [\".site.test\"]\n\
             max_connections = 4\nmax_messages_per_second = {rate}\n"
        )
    };
    std::fs::write(&file, rule(50)).unwrap();
    let ts = server(port, &file, |_| {});
    send_many(&ts, N);
    sink.wait_for(100, 30);
    std::fs::write(&file, "[[site]]\nname = \"broken\"\nmax_connections = 0\n").unwrap();
    let (status, text) = reload(&ts);
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("in force stay"), "{text}");
    let refused_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&file, rule(400)).unwrap();
    let (status, text) = reload(&ts);
    let reloaded_at = Instant::now();
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(answer["rules"].as_u64().unwrap() > 1, "{answer}");
    std::thread::sleep(Duration::from_secs(1));
    let times: Vec<Instant> = sink.messages().iter().map(|m| m.at).collect();
    let before = count_in(&times, refused_at, Duration::from_secs(2));
    let after = count_in(
        &times,
        reloaded_at + Duration::from_millis(100),
        Duration::from_millis(500),
    );
    println!("2 s after the refused reload: {before}; 0.5 s after the good one: {after}");
    assert!((90..=110).contains(&before), "50/s for 2 s: {before}");
    assert!(after >= 150, "400/s for 0.5 s: {after}");
    let msgs = sink.wait_for(N, 30);
    std::thread::sleep(Duration::from_millis(300));
    assert_each_once(&sink.messages(), N);
    assert_eq!(msgs.len(), N);
    let metrics = ts.metrics_text();
    assert!(
        metrics.contains("ringpost_config_reloads_total{result=\"failed\"}"),
        "{metrics}"
    );
}

/// `kill -HUP` reloads the shaping file of a running `ringpost serve`:
/// a bad file is counted as failed (the process keeps running), a good
/// one as ok.
#[test]
fn sighup_reloads_the_shaping_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(&file, "[[site]]\nname = \"a\"\ndomains = [\"a.test\"]\n").unwrap();
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (smtp, metrics): (SocketAddr, SocketAddr) = (port(0), port(1));
    let config = dir.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 1\nhostname = \"hup.test\"\n[spool]\ndir = \"{}\"\n\
             [smtp]\nlisten = \"{smtp}\"\n[delivery]\nshaping_file = \"{}\"\n\
             smarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [metrics]\nlisten = \"{metrics}\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n",
            dir.path().join("spool").display(),
            file.display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, smtp);
    let reloads = |result: &str| -> u64 {
        let (_, text) = http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let key = format!("ringpost_config_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let wait_for = |result: &str, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(result) < n {
            assert!(Instant::now() < deadline, "no {result} reload counted");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(&file, "[[site]]\nname = \"a\"\n").unwrap();
    hup(child.id());
    wait_for("failed", 1);
    std::fs::write(&file, "[[site]]\nname = \"b\"\ndomains = [\"b.test\"]\n").unwrap();
    hup(child.id());
    wait_for("ok", 1);
    assert_eq!(reloads("failed"), 1);
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let mut c = Client::connect(smtp);
    c.expect("EHLO app.test.example", 250);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sends `n` messages from `from` over `sessions` sessions, alternately
/// to a.site.test and b.site.test, subjects (and local parts) "<tag><i>".
fn send_from(ts: &TestServer, from: &str, n: usize, tag: &str, sessions: usize) {
    let (from, tag) = (from.to_string(), tag.to_string());
    common::send_concurrently(ts.addr, n, sessions, move |i| {
        let domain = if i % 2 == 0 { "a" } else { "b" };
        (
            from.clone(),
            format!("{tag}{i}@{domain}.site.test"),
            format!("Subject: {tag}{i}\r\n\r\nx\r\n"),
        )
    });
}

/// Messages the sink took from `source`.
fn from_source(sink: &Sink, source: &str) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.peer.ip() == ip(source))
        .count()
}

/// A source warming up (10 messages a day per site on its first day, 25
/// on its second) sends exactly that many, whichever shards have its
/// mail, over a restart, with the
/// rest of its pool's mail going from the other source; mail of a pool
/// with only the warming source waits for the next day. The days pass
/// on a manual clock.
#[test]
fn a_warmup_cap_holds_to_the_message_and_grows_the_next_day() {
    // 2026-12-01 08:00 UTC: the first day of the warm-up.
    let clock = ringpost::shard::clock::Clock::manual(20_788 * 86_400 + 8 * 3600);
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let dns = zone();
    let mut ts = common::start_with_clock(2, clock.clone(), move |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.dns.nameservers = vec![dns];
        let mut warming = source("ip3", "127.0.0.3");
        warming.warmup_start = "2026-12-01".into();
        warming.warmup_daily = vec![10, 25];
        c.egress.source = vec![warming, source("ip4", "127.0.0.4")];
        c.egress.pool = vec![pool("both", &["ip3", "ip4"]), pool("warm", &["ip3"])];
        c.egress
            .sender_domains
            .insert("warm.example".into(), "warm".into());
    });
    // One SMTP session: all of it on one shard, which still gets the
    // node's whole cap (the path's book counts it, not a share per shard).
    send_from(&ts, "news@shop.example", 100, "d1-", 1);
    sink.wait_for(100, 60);
    assert_eq!(from_source(&sink, "127.0.0.3"), 10, "day 1: the cap");
    assert_eq!(from_source(&sink, "127.0.0.4"), 90);
    // Only the warming source in the pool: the mail waits.
    send_from(&ts, "alerts@warm.example", 6, "w-", 10);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 100, "over the cap: waiting");
    // The day's counts survive a restart.
    ts.restart();
    send_from(&ts, "news@shop.example", 20, "d1b-", 10);
    sink.wait_for(120, 60);
    assert_eq!(from_source(&sink, "127.0.0.3"), 10, "still day 1");
    // Day 2: 25. The waiting six go first (their retry is due), then
    // 19 of the next 100.
    clock.advance(86_400);
    sink.wait_for(126, 60);
    assert_eq!(from_source(&sink, "127.0.0.3"), 16);
    send_from(&ts, "news@shop.example", 100, "d2-", 10);
    sink.wait_for(226, 60);
    // The cap counts attempts (exactly 25 today: `sent_today` below); an
    // attempt that failed under load (a refused or stale connection) is
    // counted and its message goes from the other source, so deliveries
    // from the warming source are at most the cap.
    let warming = from_source(&sink, "127.0.0.3");
    assert!(
        (10 + 20..=10 + 25).contains(&warming),
        "day 2: the cap: {warming}"
    );
    assert_eq!(warming + from_source(&sink, "127.0.0.4"), 226);
    let metrics = ts.metrics_text();
    assert!(metrics.contains("ringpost_path_capped_total{"), "{metrics}");
    // `queue summary --by source`: today's count against the caps.
    let req = b"GET /queue/summary?by=source HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, text) = http(ts.admin_addr.unwrap(), req);
    assert_eq!(status, 200, "{text}");
    let by: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ip3 = by["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "ip3")
        .unwrap_or_else(|| panic!("{by}"));
    assert_eq!(ip3["sent_today"], 25, "{by}");
}

fn admin(ts: &TestServer, method: &str, path: &str) -> serde_json::Value {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let (status, text) = http(ts.admin_addr.unwrap(), req.as_bytes());
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn send_one(ts: &TestServer, from: &str, to: &str, subject: &str) {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    c.begin(from, &[to]);
    let body = format!("Subject: {subject}\r\n\r\nx\r\n");
    assert_eq!(c.data(body.as_bytes()).code, 250);
}

/// Suspending a site holds mail to both its domains, across a restart;
/// suspending a source sends its pool's mail from the other source;
/// suspending a pool holds that pool's mail. Each shows in the summary,
/// and resuming delivers what it held at once.
#[test]
fn sites_sources_and_pools_can_be_suspended_and_resumed() {
    const SITE: &str = "mx1.site.test,mx2.site.test";
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let dns = zone();
    let mut ts = start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.retry_initial_secs = 1;
        c.delivery.retry_max_secs = 2;
        c.dns.nameservers = vec![dns];
        c.egress.source = vec![source("ip3", "127.0.0.3"), source("ip4", "127.0.0.4")];
        c.egress.pool = vec![pool("both", &["ip3", "ip4"]), pool("solo", &["ip4"])];
        c.egress
            .sender_domains
            .insert("solo.example".into(), "solo".into());
    });
    // The site is learnt from a first delivery.
    send_one(&ts, "news@shop.example", "first@a.site.test", "first");
    sink.wait_for(1, 30);
    let site = SITE.replace(',', "%2C");
    let answer = admin(&ts, "POST", &format!("/queue/sites/{site}/suspend"));
    assert_eq!(answer["site"], SITE, "{answer}");
    for (i, d) in ["a", "b", "a", "b"].iter().enumerate() {
        send_one(
            &ts,
            "news@shop.example",
            &format!("s{i}@{d}.site.test"),
            "held",
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 1, "the site is held");
    ts.restart();
    let summary = admin(&ts, "GET", "/queue/summary");
    assert_eq!(summary["holds"][0]["kind"], "site", "{summary}");
    assert_eq!(summary["holds"][0]["name"], SITE, "{summary}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sink.messages().len(), 1, "still held after the restart");
    admin(&ts, "POST", &format!("/queue/sites/{site}/resume"));
    sink.wait_for(5, 10);

    // A source: the pool's other one takes all.
    admin(&ts, "POST", "/queue/sources/ip3/suspend");
    for i in 0..10 {
        send_one(
            &ts,
            "news@shop.example",
            &format!("src{i}@a.site.test"),
            "src",
        );
    }
    let msgs = sink.wait_for(15, 20);
    assert!(msgs[5..].iter().all(|m| m.peer.ip() == ip("127.0.0.4")));
    admin(&ts, "POST", "/queue/sources/ip3/resume");

    // A pool: its mail waits, the rest flows.
    admin(&ts, "POST", "/queue/pools/solo/suspend");
    send_one(&ts, "alerts@solo.example", "p1@b.site.test", "pool-held");
    send_one(&ts, "news@shop.example", "p2@b.site.test", "pool-free");
    sink.wait_for(16, 20);
    std::thread::sleep(Duration::from_millis(1500));
    let subjects: Vec<String> = sink.messages().iter().map(subject).collect();
    assert!(subjects.contains(&"pool-free".to_string()));
    assert!(
        !subjects.contains(&"pool-held".to_string()),
        "the pool is held"
    );
    let resumed_at = Instant::now();
    admin(&ts, "POST", "/queue/pools/solo/resume");
    sink.wait_for(17, 10);
    println!("held mail out {:?} after the resume", resumed_at.elapsed());
    assert!(
        resumed_at.elapsed() < Duration::from_secs(1),
        "at once, not at its retry"
    );
}
