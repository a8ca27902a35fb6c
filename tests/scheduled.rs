//! Scheduled delivery (issue 33): mail injected with `deliver_after` or
//! sent with `MAIL FROM ... HOLDFOR=`/`HOLDUNTIL=` (RFC 4865, trusted
//! clients) is kept, shown as scheduled, and first tried at its time, on
//! a clock the test drives, across a restart and across a SIGKILL of the
//! real binary; it can be deleted before then; requests beyond
//! `delivery.max_hold_secs`, or from untrusted clients, are refused.
//! `MT-PRIORITY=` (RFC 6710) from a trusted client picks the lane.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{TestServer, http};

fn post(addr: SocketAddr, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(body).unwrap();
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, text) = http(addr, &req);
    (status, serde_json::from_str(&text).unwrap_or_default())
}

fn injection(rcpt: &str, deliver_after: &str) -> serde_json::Value {
    serde_json::json!({
        "envelope_sender": "app@sender.test",
        "recipients": [{"email": rcpt}],
        "content": format!("Subject: for {rcpt}\n\nhello\n"),
        "deliver_after": deliver_after,
    })
}

fn rfc3339(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .unwrap()
        .to_rfc3339()
}

fn admin_get(ts: &TestServer, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, body) = http(ts.admin_addr.unwrap(), req.as_bytes());
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The state `queue ls` gives each queued message, by its first recipient.
fn states(ts: &TestServer) -> Vec<(String, String)> {
    let list = admin_get(ts, "/queue/messages?limit=100");
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["recipients"][0]["address"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the sink has `n` messages; the wall time it took.
fn delivered_within(sink: &Sink, n: usize) -> Duration {
    let started = Instant::now();
    sink.wait_for(n, 10);
    started.elapsed()
}

#[test]
fn scheduled_mail_waits_for_its_time_across_a_restart() {
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let t0 = 1_800_000_000;
    let clock = ringpost::shard::clock::Clock::manual(t0);
    let mut ts = common::start_with_clock(2, clock.clone(), |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
    });
    let inject = ts.inject_addr.unwrap();
    let (status, a) = post(inject, &injection("in-1h@dest.test", &rfc3339(t0 + 3600)));
    assert_eq!(status, 200, "{a}");
    let (status, b) = post(
        inject,
        &injection("in-3h@dest.test", &rfc3339(t0 + 3 * 3600)),
    );
    assert_eq!(status, 200, "{b}");
    let (status, gone) = post(inject, &injection("deleted@dest.test", &rfc3339(t0 + 3600)));
    assert_eq!(status, 200, "{gone}");
    // SMTP, a trusted client (127.0.0.1): FUTURERELEASE is offered.
    let mut c = ts.client();
    let ehlo = c.expect("EHLO app.test", 250).text();
    assert!(
        ehlo.contains(&format!(
            "FUTURERELEASE 2592000 {}",
            chrono::DateTime::from_timestamp((t0 + 2_592_000) as i64, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
        )),
        "{ehlo}"
    );
    c.expect("MAIL FROM:<app@sender.test> HOLDFOR=7200", 250);
    c.expect("RCPT TO:<in-2h@dest.test>", 250);
    let r = c.data(b"Subject: held for 2h\r\n\r\nhello\r\n");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("MAIL FROM:<app@sender.test> HOLDFOR=2592001", 501);
    c.expect(
        &format!(
            "MAIL FROM:<app@sender.test> HOLDUNTIL={}",
            rfc3339(t0 + 4 * 3600)
        ),
        250,
    );
    c.expect("RCPT TO:<in-4h@dest.test>", 250);
    assert_eq!(c.data(b"Subject: until\r\n\r\nhello\r\n").code, 250);
    drop(c);

    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(sink.accepts(), 0, "nothing goes before its time");
    assert!(
        states(&ts).iter().all(|(_, s)| s == "scheduled"),
        "{:?}",
        states(&ts)
    );
    let gone_id = gone["id"].as_str().unwrap();
    let req = format!("DELETE /queue/messages/{gone_id} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(http(ts.admin_addr.unwrap(), req.as_bytes()).0, 200);

    clock.advance(3600);
    let took = delivered_within(&sink, 1);
    println!("released 1 h later: delivered {took:?} after the clock reached its time");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(sink.messages()[0].rcpts, ["in-1h@dest.test"]);

    ts.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 1, "a restart releases nothing early");
    assert_eq!(
        states(&ts),
        [
            ("in-2h@dest.test".to_string(), "scheduled".to_string()),
            ("in-3h@dest.test".to_string(), "scheduled".to_string()),
            ("in-4h@dest.test".to_string(), "scheduled".to_string()),
        ]
    );
    for (hour, rcpt) in [
        (2, "in-2h@dest.test"),
        (3, "in-3h@dest.test"),
        (4, "in-4h@dest.test"),
    ] {
        clock.advance(3600);
        let took = delivered_within(&sink, hour);
        assert!(took < Duration::from_secs(1), "{rcpt}: {took:?}");
        assert_eq!(sink.messages()[hour - 1].rcpts, [rcpt]);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 4, "the deleted one never went");
}

#[test]
fn scheduling_is_refused_beyond_the_limit_and_to_untrusted_clients() {
    let ts = common::start_with(1, |c| {
        c.delivery.max_hold_secs = 3600;
        c.smtp.relay_networks = vec!["127.0.0.1/32".parse().unwrap()];
        c.smtp.local_domains = vec!["inbound.test".into()];
    });
    let far = rfc3339(ringpost::shard::clock::unix_now() + 7200);
    let (status, answer) = post(ts.inject_addr.unwrap(), &injection("a@dest.test", &far));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("max_hold_secs"));
    let (status, _) = post(
        ts.inject_addr.unwrap(),
        &injection("a@dest.test", "tomorrow"),
    );
    assert_eq!(status, 400);

    let mut c = ts.client();
    c.expect("EHLO app.test", 250);
    let r = c
        .expect("MAIL FROM:<app@sender.test> HOLDFOR=3601", 501)
        .text();
    assert!(r.starts_with("5.5.4 Future release in 3601 seconds"), "{r}");
    c.expect("MAIL FROM:<app@sender.test> HOLDFOR=x", 501);

    // 127.0.0.3 is outside relay_networks: not offered, refused.
    let mut s = common::connect_from("127.0.0.3", ts.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut said = String::new();
    r.read_line(&mut said).unwrap();
    s.write_all(b"EHLO outside.test\r\n").unwrap();
    let mut ehlo = String::new();
    loop {
        said.clear();
        r.read_line(&mut said).unwrap();
        ehlo.push_str(&said);
        if said.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    assert!(!ehlo.contains("FUTURERELEASE"), "{ehlo}");
    s.write_all(b"MAIL FROM:<x@outside.test> HOLDFOR=60\r\n")
        .unwrap();
    said.clear();
    r.read_line(&mut said).unwrap();
    assert!(said.starts_with("555"), "{said}");
}

/// The real binary, killed with SIGKILL right after it took a message
/// scheduled a few seconds ahead: after the restart the message is still
/// there and goes at its time, not before.
#[test]
fn scheduled_mail_survives_sigkill_and_goes_at_its_time() {
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let tmp = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (smtp, inject) = (free(), free());
    let config = tmp.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nhostname = \"sched.test\"\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"{inject}\"\n",
            tmp.path().join("spool").display(),
            sink.addr.port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, inject);
    let release = ringpost::shard::clock::unix_now() + 4;
    let (status, answer) = post(inject, &injection("later@dest.test", &rfc3339(release)));
    assert_eq!(status, 200, "{answer}");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(smtp).is_err() {
        assert!(Instant::now() < deadline, "{smtp} still taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = common::spawn_binary(&config, smtp);
    let got = sink.wait_for(1, 15);
    let at = ringpost::shard::clock::unix_now();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got[0].rcpts, ["later@dest.test"]);
    println!("scheduled for {release}, delivered at {at} after a SIGKILL and a restart");
    assert!(at >= release, "not before its time: {at} < {release}");
    assert!(at <= release + 2, "on time: {at} > {release} + 2");
}

#[test]
fn mt_priority_from_a_trusted_client_picks_the_lane() {
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", common::closed_port());
        c.delivery.retry_initial_secs = 3600;
    });
    let mut c = ts.client();
    let ehlo = c.expect("EHLO app.test", 250).text();
    assert!(ehlo.contains("MT-PRIORITY"), "{ehlo}");
    for (n, rcpt) in [
        ("6", "urgent@dest.test"),
        ("-4", "news@dest.test"),
        ("0", "plain@dest.test"),
    ] {
        c.expect(&format!("MAIL FROM:<app@sender.test> MT-PRIORITY={n}"), 250);
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        assert_eq!(c.data(b"Subject: p\r\n\r\nx\r\n").code, 250);
    }
    c.expect("MAIL FROM:<app@sender.test> MT-PRIORITY=10", 501);
    let list = admin_get(&ts, "/queue/messages?limit=10");
    let mut lanes: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["recipients"][0]["address"].as_str().unwrap().to_string(),
                m["priority"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lanes.sort();
    assert_eq!(
        lanes,
        [
            ("news@dest.test".to_string(), "bulk".to_string()),
            ("plain@dest.test".to_string(), "normal".to_string()),
            ("urgent@dest.test".to_string(), "high".to_string()),
        ]
    );
}
