//! Next hops the operator configures (smarthost, routes, a drain's peer)
//! cannot destroy mail, and mail loops stop:
//! - an IP address is an address, with or without brackets;
//! - a smarthost whose name does not resolve defers mail (4.4.3) and
//!   suppresses nobody, and `check-config` names it;
//! - a drain starts only once its peer answered EHLO (a wrong port, or
//!   this node itself, is refused and nothing changes); a peer that
//!   refuses every message keeps them queued (none bounced), the drain
//!   says it cannot finish, and the mail moves once a good peer is named;
//!   new clients get `421 4.3.2` at MAIL, pipelined or not;
//! - a message with too many `Received:` fields is refused (554 5.4.6);
//!   a next hop that is our own listener, or greets with our name, gets
//!   the mail bounced once (5.4.6), and two nodes routing a domain to each
//!   other stop after `smtp.max_received_headers` hops.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dns::serve;
use common::sink::{Script, Sink};
use common::{Client, http, send_concurrently};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn summary(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/queue/summary")
}

/// The delivery log's events of `kind`.
fn events(log: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == kind)
        .collect()
}

fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send_one(addr: SocketAddr, from: &str, to: &str, content: &str) {
    let mut c = Client::connect(addr);
    c.begin(from, &[to]);
    let r = c.data(content.as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
}

fn drain(admin: SocketAddr, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["queue", "drain", "--to", to, "--admin"])
        .arg(admin.to_string())
        .output()
        .expect("ringpost queue drain runs")
}

#[test]
fn a_bare_ip_smarthost_and_route_deliver() {
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("127.0.0.1:{}", sink.addr.port());
        c.delivery.routes.insert(
            "routed.test".into(),
            format!("127.0.0.1:{}", sink.addr.port()),
        );
    });
    send_one(
        ts.addr,
        "a@sender.test",
        "b@dest.test",
        "Subject: 1\r\n\r\nx\r\n",
    );
    send_one(
        ts.addr,
        "a@sender.test",
        "c@routed.test",
        "Subject: 2\r\n\r\nx\r\n",
    );
    let got = sink.wait_for(2, 20);
    assert_eq!(got.len(), 2);
}

/// A smarthost whose name is NXDOMAIN: the mail waits (4.4.3, naming the
/// smarthost), nothing bounces, nobody is suppressed; `check-config`
/// names the host.
#[test]
fn a_smarthost_that_does_not_resolve_defers_and_suppresses_nobody() {
    let dns = serve("hops.test", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let ts = common::start_with(1, |c| {
        c.dns.nameservers = vec![dns];
        c.delivery.smarthost = "nohost.hops.test:2525".into();
        c.delivery.log = log.display().to_string();
    });
    let admin = ts.admin_addr.unwrap();
    send_one(
        ts.addr,
        "a@sender.test",
        "b@dest.test",
        "Subject: 1\r\n\r\nx\r\n",
    );
    wait_until(20, "a deferral", || {
        !events(&log, "TransientFailure").is_empty()
    });
    let deferral = &events(&log, "TransientFailure")[0];
    let reply = deferral["reply"].as_str().unwrap();
    assert!(
        reply.contains("4.4.3") && reply.contains("nohost.hops.test"),
        "{reply}"
    );
    assert!(!reply.contains("domain does not exist"), "{reply}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(events(&log, "Bounce").is_empty(), "nothing bounces");
    let s = summary(admin);
    assert_eq!(s["messages"], 1, "{s}");
    assert_eq!(get(admin, "/suppressions"), serde_json::json!([]));
    // RCPT to that recipient is still taken.
    let mut c = Client::connect(ts.addr);
    c.begin("a@sender.test", &["b@dest.test"]);

    // check-config says which host does not resolve; an address is fine.
    let check = |smarthost: &str| {
        let file = dir.path().join("check.toml");
        std::fs::write(
            &file,
            format!(
                "[delivery]\nsmarthost = \"{smarthost}\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_secs = 2\n"
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_ringpost"))
            .args(["check-config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let bad = check("nohost.hops.test:2525");
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("delivery.smarthost") && said.contains("nohost.hops.test"),
        "{said}"
    );
    let good = check("127.0.0.1:2699");
    assert!(good.status.success(), "{good:?}");
}

/// Drains to a closed port, to this node itself, to a peer that refuses
/// everything, then to a good one: the first two are refused with nothing
/// changed; the refusing peer leaves all mail queued (no bounce, no DSN),
/// the drain says it cannot finish, and new clients get 421 4.3.2; the
/// good peer then takes every message.
#[test]
fn a_drain_to_a_wrong_or_refusing_peer_keeps_the_queue() {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let closed = common::closed_port();
    let ts = common::start_with(2, |c| {
        c.delivery.log = log.display().to_string();
    });
    let admin = ts.admin_addr.unwrap();
    send_concurrently(ts.addr, N, 3, |i| {
        (
            "app@sender.test".into(),
            format!("r{i}@dest{}.test", i % 3),
            format!("Subject: m{i}\r\n\r\nmessage m{i}\r\n"),
        )
    });

    // A typo'd port: nothing changes.
    let out = drain(admin, &format!("127.0.0.1:{closed}"));
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not draining"), "{said}");
    assert!(summary(admin).get("draining_to").is_none());
    send_one(
        ts.addr,
        "app@sender.test",
        "late@dest0.test",
        "Subject: l\r\n\r\nx\r\n",
    );
    // This node itself: a loop, refused.
    let out = drain(admin, &ts.addr.to_string());
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("loops back to myself"), "{said}");
    assert!(summary(admin).get("draining_to").is_none());

    // A peer that refuses every message after its data.
    let refusing = Sink::start(
        "127.0.0.1",
        0,
        Script::temp_failing(usize::MAX, "554 5.7.1 not from you"),
    );
    let out = drain(admin, &format!("127.0.0.1:{}", refusing.addr.port()));
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot finish") && said.contains("554 5.7.1 not from you"),
        "{said}"
    );
    let s = summary(admin);
    assert_eq!(s["messages"], N + 1, "every message still queued: {s}");
    assert_eq!(
        s["draining_to"],
        format!("[127.0.0.1]:{}", refusing.addr.port())
    );
    assert!(events(&log, "Bounce").is_empty(), "nothing bounced");
    assert!(refusing.messages().is_empty());
    // New clients: 421 4.3.2 at MAIL, also when they pipeline the rest.
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test", 250);
    let r = c.cmd("MAIL FROM:<new@sender.test>");
    assert_eq!((r.code, r.text().contains("4.3.2")), (421, true), "{r:?}");
    assert!(c.is_closed());
    let mut raw = std::net::TcpStream::connect(ts.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(
        b"EHLO app.test\r\nMAIL FROM:<new@sender.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n",
    )
    .unwrap();
    let mut text = String::new();
    let read = raw.read_to_string(&mut text);
    assert!(read.is_ok(), "no reset: {read:?}, read {text:?}");
    assert!(text.contains("\r\n421 4.3.2"), "{text}");

    // The right peer: everything moves.
    let good = Sink::start("127.0.0.1", 0, Script::default());
    let out = drain(admin, &format!("[127.0.0.1]:{}", good.addr.port()));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained: the queue is empty"));
    assert_eq!(good.wait_for(N + 1, 30).len(), N + 1);
    assert!(events(&log, "Bounce").is_empty(), "nothing bounced");
}

#[test]
fn a_message_with_too_many_hops_is_refused() {
    let ts = common::start_with(1, |_| {});
    let trace = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "Received: from hop{i}.test by hop{}.test; Sun, 6 Dec 2026 12:00:00 +0000\r\n",
                    i + 1
                )
            })
            .collect()
    };
    // Ours makes 50: taken.
    let mut c = Client::connect(ts.addr);
    c.begin("a@sender.test", &["b@dest.test"]);
    let r = c.data(format!("{}Subject: ok\r\n\r\nx\r\n", trace(49)).as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
    // Ours makes 51: a loop.
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<b@dest.test>", 250);
    let r = c.data(format!("{}Subject: loop\r\n\r\nx\r\n", trace(50)).as_bytes());
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().contains("5.4.6"), "{r:?}");
    // The same over HTTP injection.
    let body = serde_json::json!({
        "envelope_sender": "a@sender.test",
        "recipients": [{"email": "b@dest.test"}],
        "content": format!("{}Subject: loop\r\n\r\nx\r\n", trace(60)),
    })
    .to_string();
    let (status, answer) = http(
        ts.inject_addr.unwrap(),
        format!(
            "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("Received"), "{answer}");
    assert!(
        ts.metrics_text()
            .contains("ringpost_reception_refused_total{reason=\"hops\"}"),
    );
}

/// The smarthost is our own SMTP listener: the message is bounced once
/// (5.4.6), without a single relay to ourselves.
#[test]
fn a_smarthost_that_is_our_own_listener_bounces_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let smtp = free_addr();
    let ts = common::start_with(1, |c| {
        c.smtp.listen = ringpost::config::Listen::At(smtp);
        c.delivery.smarthost = format!("127.0.0.1:{}", smtp.port());
        c.delivery.log = log.display().to_string();
    });
    send_one(
        ts.addr,
        "a@sender.test",
        "b@dest.test",
        "Subject: 1\r\n\r\nx\r\n",
    );
    wait_until(20, "the bounce", || !events(&log, "Bounce").is_empty());
    std::thread::sleep(Duration::from_millis(1000));
    let bounces = events(&log, "Bounce");
    assert!(
        bounces[0]["reply"]
            .as_str()
            .unwrap()
            .contains("5.4.6 mail loops back to myself"),
        "{bounces:?}"
    );
    // The message, and its notice to the sender (which loops too and,
    // from the null sender, is dropped): two receptions, no more.
    assert_eq!(
        events(&log, "Reception").len(),
        2,
        "{:?}",
        events(&log, "Reception")
    );
    assert_eq!(bounces.len(), 2);
    assert!(events(&log, "Delivery").is_empty());
}

/// A next hop that greets with our host name is this node again.
#[test]
fn a_next_hop_that_greets_with_our_name_is_not_sent_to() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let mirror = Sink::start(
        "127.0.0.1",
        0,
        Script {
            greeting: Some("220 mx.test.example ESMTP".into()),
            ..Script::default()
        },
    );
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", mirror.addr.port());
        c.delivery.log = log.display().to_string();
    });
    send_one(ts.addr, "", "b@dest.test", "Subject: 1\r\n\r\nx\r\n");
    wait_until(20, "the bounce", || !events(&log, "Bounce").is_empty());
    let reply = events(&log, "Bounce")[0]["reply"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reply.contains("5.4.6") && reply.contains("greets as mx.test.example"),
        "{reply}"
    );
    assert!(mirror.messages().is_empty());
    drop(ts);
}

/// Two nodes routing a domain to each other: the message goes round
/// until its `Received:` fields pass the limit, then is refused and
/// bounced once: a bounded number of hops, not a storm.
#[test]
fn two_nodes_routing_a_domain_to_each_other_stop_at_the_hop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp_a, smtp_b) = (free_addr(), free_addr());
    let (log_a, log_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let node = |name: &str, me: SocketAddr, peer: SocketAddr, log: &Path| {
        let (name, log) = (name.to_string(), log.display().to_string());
        common::start_with(1, move |c| {
            c.server.hostname = name;
            c.smtp.listen = ringpost::config::Listen::At(me);
            c.delivery
                .routes
                .insert("loop.test".into(), peer.to_string());
            c.delivery.log = log;
        })
    };
    let a = node("a.test", smtp_a, smtp_b, &log_a);
    let b = node("b.test", smtp_b, smtp_a, &log_b);
    let started = Instant::now();
    send_one(
        a.addr,
        "app@sender.test",
        "x@loop.test",
        "Subject: round\r\n\r\nx\r\n",
    );
    wait_until(60, "the bounce", || {
        !events(&log_a, "Bounce").is_empty() || !events(&log_b, "Bounce").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let receptions = events(&log_a, "Reception").len() + events(&log_b, "Reception").len();
    let bounces: Vec<_> = events(&log_a, "Bounce")
        .into_iter()
        .chain(events(&log_b, "Bounce"))
        .collect();
    eprintln!(
        "loop between two nodes: {receptions} receptions, {} bounce(s) in {:?}",
        bounces.len(),
        started.elapsed()
    );
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert!(
        bounces[0]["reply"].as_str().unwrap().contains("5.4.6"),
        "{bounces:?}"
    );
    // 50 hops of the message (its own Received: fields counted), and the
    // notice to the sender, which waits at the closed smarthost.
    assert!(receptions <= 52, "{receptions} receptions");
    drop((a, b));
}
