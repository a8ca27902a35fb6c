//! Egress sources and pools: messages go out from the local addresses of
//! their pool's sources (loopback addresses 127.0.0.x, bound without any
//! setup), spread by weight, each with its source's EHLO name; the sink
//! records the peer address and the EHLO name of every message.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::sink::{Script, Sink};
use common::{Client, TestServer, http, sink_port, start_with};
use ringpost::config::{EgressPool, EgressSource, PoolMember};

fn source(name: &str, ip: &str, ehlo: &str) -> EgressSource {
    EgressSource {
        name: name.into(),
        address: ip.parse().unwrap(),
        ehlo: ehlo.into(),
        warmup_start: String::new(),
        warmup_daily: Vec::new(),
        proxy: String::new(),
    }
}

fn member(name: &str, weight: u32) -> PoolMember {
    PoolMember {
        source: name.into(),
        weight,
    }
}

fn server(port: u16) -> TestServer {
    start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery
            .routes
            .insert("dest.test".into(), format!("[127.0.0.2]:{port}"));
        c.egress.source = vec![
            source("ip3", "127.0.0.3", "mta3.example.com"),
            source("ip4", "127.0.0.4", "mta4.example.com"),
            source("ip5", "127.0.0.5", ""),
        ];
        c.egress.pool = vec![
            EgressPool {
                name: "bulk".into(),
                sources: vec![member("ip3", 3), member("ip4", 1)],
                priority: None,
            },
            EgressPool {
                name: "vip".into(),
                sources: vec![member("ip5", 1)],
                priority: None,
            },
        ];
        c.egress
            .sender_domains
            .insert("vip.example".into(), "vip".into());
    })
}

fn by_peer(sink: &Sink) -> HashMap<String, (usize, String)> {
    let mut counts: HashMap<String, (usize, String)> = HashMap::new();
    for m in sink.messages() {
        let e = counts.entry(m.peer.ip().to_string()).or_default();
        e.0 += 1;
        e.1 = m.helo.clone();
    }
    counts
}

/// 10,000 messages of the default pool (weights 3:1) split within ±5% of
/// the weights; the other pool, chosen by sender domain, by header and by
/// the injection field, uses its own source; EHLO names per source.
#[test]
fn a_pool_spreads_mail_over_its_sources_by_weight() {
    const N: usize = 10_000;
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let ts = server(port);
    // 20 sessions at once: reception's group commit then syncs 20
    // messages at a time, not 4.
    common::send_concurrently(ts.addr, N, 20, |i| {
        (
            "news@shop.example".into(),
            format!("r{i}@dest.test"),
            "Subject: bulk\r\n\r\nx\r\n".into(),
        )
    });
    sink.wait_for(N, 120);
    let counts = by_peer(&sink);
    let (n3, n4) = (counts["127.0.0.3"].0, counts["127.0.0.4"].0);
    println!("127.0.0.3: {n3}, 127.0.0.4: {n4}");
    assert_eq!(n3 + n4, N, "{counts:?}");
    let share = n3 as f64 / N as f64;
    assert!(
        (share - 0.75).abs() <= 0.75 * 0.05,
        "share of the weight-3 source: {share}"
    );
    assert_eq!(counts["127.0.0.3"].1, "mta3.example.com");
    assert_eq!(counts["127.0.0.4"].1, "mta4.example.com");
    // The vip pool: by sender domain, by a trusted client's header (taken
    // out of the message), and by the injection's field.
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    c.begin("alerts@vip.example", &["v1@dest.test"]);
    assert_eq!(c.data(b"Subject: v1\r\n\r\nx\r\n").code, 250);
    c.begin("news@shop.example", &["v2@dest.test"]);
    assert_eq!(
        c.data(b"X-Ringpost-Pool: vip\r\nSubject: v2\r\n\r\nx\r\n")
            .code,
        250
    );
    c.begin("news@shop.example", &["v3@dest.test"]);
    let r = c.data(b"X-Ringpost-Pool: nope\r\nSubject: v3\r\n\r\nx\r\n");
    assert_eq!((r.code, r.text().contains("5.7.0")), (550, true), "{r:?}");
    let body = r#"{"envelope_sender": "news@shop.example", "recipients": [{"email": "v4@dest.test"}], "content": "Subject: v4\r\n\r\nx\r\n", "pool": "vip"}"#;
    let req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(ts.inject_addr.unwrap(), req.as_bytes());
    assert_eq!(status, 200, "{text}");
    let all = sink.wait_for(N + 3, 30);
    for rcpt in ["v1@dest.test", "v2@dest.test", "v4@dest.test"] {
        let m = all.iter().find(|m| m.rcpts == [rcpt.to_string()]).unwrap();
        assert_eq!(m.peer.ip().to_string(), "127.0.0.5", "{rcpt}");
        assert_eq!(m.helo, "mx.test.example", "no ehlo: server.hostname");
        assert!(!String::from_utf8_lossy(&m.data).contains("X-Ringpost-Pool"));
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// A source whose address is not on this machine (192.0.2.1, TEST-NET-1)
/// cannot be bound: it is down, and its share goes at once, in the same
/// attempt, to the pool's other source; nothing is deferred.
#[test]
fn a_source_that_cannot_be_bound_is_skipped() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_str().unwrap().to_string();
    let ts = start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery
            .routes
            .insert("dest.test".into(), format!("[127.0.0.2]:{port}"));
        c.delivery.log = log_path;
        c.egress.source = vec![
            source("good", "127.0.0.3", ""),
            source("gone", "192.0.2.1", ""),
        ];
        c.egress.pool = vec![EgressPool {
            name: "main".into(),
            sources: vec![member("good", 1), member("gone", 1)],
            priority: None,
        }];
    });
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    for i in 0..20 {
        c.begin("news@shop.example", &[&format!("r{i}@dest.test")]);
        assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    }
    let got = sink.wait_for(20, 30);
    assert!(got.iter().all(|m| m.peer.ip().to_string() == "127.0.0.3"));
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(!log.contains("TransientFailure"), "{log}");
    assert!(log.contains("\"source\":\"good\""), "{log}");
}

/// A source that sends through a PROXY v2 forwarder: its connections go
/// to the forwarder (here the sink, playing forwarder and MX at once)
/// and start with a header naming the source's address and the MX; the
/// EHLO is the source's. Its address need not exist on this machine.
#[test]
fn a_proxied_source_names_itself_and_the_mx_in_a_proxy_v2_header() {
    let port = sink_port();
    let sink = Sink::start(
        "127.0.0.2",
        port,
        Script {
            proxy_v2: true,
            ..Script::default()
        },
    );
    let ts = start_with(2, move |c| {
        c.delivery.smarthost.clear();
        // The MX the forwarder is to reach; nothing listens there.
        c.delivery
            .routes
            .insert("dest.test".into(), "[127.0.0.9]:2525".into());
        let mut far = source("far", "192.0.2.55", "mta55.example.com");
        far.proxy = format!("127.0.0.2:{port}");
        c.egress.source = vec![far];
        c.egress.pool = vec![EgressPool {
            name: "main".into(),
            sources: vec![member("far", 1)],
            priority: None,
        }];
    });
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    for i in 0..10 {
        c.begin("news@shop.example", &[&format!("r{i}@dest.test")]);
        assert_eq!(c.data(b"Subject: via proxy\r\n\r\nx\r\n").code, 250);
    }
    let msgs = sink.wait_for(10, 30);
    for m in &msgs {
        let (src, dst) = m.proxy.expect("a PROXY v2 header");
        assert_eq!(src.ip().to_string(), "192.0.2.55");
        assert_eq!(dst.to_string(), "127.0.0.9:2525");
        assert_eq!(m.helo, "mta55.example.com");
    }
    println!("first header: {:?}", msgs[0].proxy);
}

/// A sink at 127.0.0.2 that answers every transaction from 127.0.0.3
/// with `reply`, and a server whose pool spreads dest.test's mail over
/// 127.0.0.3 and 127.0.0.4 (retries after 1 s) under the `[backoff]`
/// `rule`; `log`: the delivery log's path.
fn one_source_refused(
    reply: &str,
    rule: ringpost::config::BackoffRule,
    log: &str,
) -> (Sink, TestServer) {
    let port = sink_port();
    let sink = Sink::start(
        "127.0.0.2",
        port,
        Script {
            temp_fail_peer: Some("127.0.0.3".parse().unwrap()),
            temp_reply: reply.into(),
            ..Script::default()
        },
    );
    let log = log.to_string();
    let ts = start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery.log = log;
        c.delivery.retry_initial_secs = 1;
        c.delivery.retry_max_secs = 1;
        c.delivery
            .routes
            .insert("dest.test".into(), format!("[127.0.0.2]:{port}"));
        c.egress.source = vec![
            source("ip3", "127.0.0.3", ""),
            source("ip4", "127.0.0.4", ""),
        ];
        c.egress.pool = vec![EgressPool {
            name: "both".into(),
            sources: vec![member("ip3", 1), member("ip4", 1)],
            priority: None,
        }];
        c.backoff.rules = vec![rule];
    });
    (sink, ts)
}

/// Sends `n` messages to `<tag><i>@dest.test` on one session.
fn send_to_dest(ts: &TestServer, n: usize, tag: &str) {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    for i in 0..n {
        c.begin("news@shop.example", &[&format!("{tag}{i}@dest.test")]);
        assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    }
}

/// A receiver throttling one source (421 4.7.28 to every transaction
/// from 127.0.0.3): once a `[backoff]` rule throttles that path, the
/// pool's other source takes its turns, so the mail goes out at once
/// from 127.0.0.4 instead of waiting on the throttled one. The delivery
/// log names the source and site of every attempt.
#[test]
fn a_throttled_source_gives_its_turns_to_the_pools_other() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let (sink, ts) = one_source_refused(
        "421 4.7.28 this IP is rate limited, try later",
        ringpost::config::BackoffRule {
            category: Some("RateLimited".into()),
            text: None,
            action: "throttle".into(),
            secs: 60,
            factor: 0.5,
        },
        log.to_str().unwrap(),
    );
    send_to_dest(&ts, N, "r");
    let msgs = sink.wait_for(N, 60);
    assert!(msgs.iter().all(|m| m.peer.ip().to_string() == "127.0.0.4"));
    let refused = sink.state.lock().unwrap().refused_by_peer.clone();
    let from_ip3 = refused.values().sum::<usize>();
    println!("421s to 127.0.0.3: {from_ip3} (of {N} messages)");
    assert!(
        from_ip3 <= 30,
        "{from_ip3} attempts from the throttled source"
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered = events.iter().find(|e| e["event"] == "Delivery").unwrap();
    assert_eq!(delivered["source"], "ip4", "{delivered}");
    assert_eq!(delivered["site"], "127.0.0.2", "{delivered}");
    let deferred = events
        .iter()
        .find(|e| e["event"] == "TransientFailure")
        .unwrap();
    assert_eq!(deferred["source"], "ip3", "{deferred}");
    assert_eq!(deferred["category"], "RateLimited", "{deferred}");
}

/// A `[backoff]` suspend rule with egress sources suspends the path the
/// reply came over (source and site), durably: the pool's other source
/// carries the mail, and the hold is still there after a restart.
#[test]
fn a_suspend_rule_holds_one_sources_path_to_the_site_across_a_restart() {
    const N: usize = 40;
    let (sink, mut ts) = one_source_refused(
        "421 4.7.0 [TSS04] Messages from 127.0.0.3 temporarily deferred",
        ringpost::config::BackoffRule {
            category: None,
            text: Some(r"\[TSS04\]".into()),
            action: "suspend".into(),
            secs: 3600,
            factor: 0.5,
        },
        "off",
    );
    send_to_dest(&ts, N, "r");
    sink.wait_for(N, 60);
    let refused = sink.state.lock().unwrap().refused_by_peer.clone();
    let from_ip3: usize = refused.values().sum();
    println!("[TSS04] replies to 127.0.0.3: {from_ip3}");
    assert!(from_ip3 <= 5, "{from_ip3}");
    ts.restart();
    let req = b"GET /queue/summary HTTP/1.1\r\nHost: x\r\n\r\n";
    let (_, text) = http(ts.admin_addr.unwrap(), req);
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["holds"][0]["kind"], "path", "{summary}");
    assert_eq!(summary["holds"][0]["name"], "ip3|127.0.0.2", "{summary}");
    assert!(summary["holds"][0]["until"].as_u64().is_some(), "{summary}");
    // After the restart, still only ip4.
    send_to_dest(&ts, 10, "later");
    let msgs = sink.wait_for(N + 10, 30);
    assert!(msgs.iter().all(|m| m.peer.ip().to_string() == "127.0.0.4"));
    let refused_after: usize = sink.state.lock().unwrap().refused_by_peer.values().sum();
    assert_eq!(
        refused_after, from_ip3,
        "no attempt from ip3 after the restart"
    );
}
