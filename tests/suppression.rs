//! The suppression list: recipients refused at RCPT (550 5.7.1) and left
//! out of HTTP injections; hard bounces put their recipient on it; the
//! admin API adds, lists and removes (answering only once on disk, which
//! a SIGKILL test holds it to); scopes, expiry on a driven clock, and the
//! drop action.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{Client, TestServer, http, start_with, start_with_clock};
use ringpost::shard::clock::Clock;

fn admin(ts: &TestServer, method: &str, target: &str, body: &str) -> (u16, serde_json::Value) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(ts.admin_addr.unwrap(), req.as_bytes());
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn rcpt(ts: &TestServer, from: &str, to: &str) -> u16 {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO client.test.example", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    c.cmd(&format!("RCPT TO:<{to}>")).code
}

fn inject(ts: &TestServer, from: &str, to: &[&str]) -> serde_json::Value {
    let recipients: Vec<_> = to
        .iter()
        .map(|r| serde_json::json!({ "email": r }))
        .collect();
    let body = serde_json::json!({
        "envelope_sender": from,
        "recipients": recipients,
        "content": "Subject: hi\r\nFrom: a@brand.example\r\n\r\nhello\r\n",
    })
    .to_string();
    let req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(ts.inject_addr.unwrap(), req.as_bytes());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn suppressed_recipients_are_refused_at_rcpt_and_left_out_of_injections() {
    let ts = start_with(2, |_| {});
    let (status, answer) = admin(
        &ts,
        "POST",
        "/suppressions",
        r#"[{"address": "Gone@Example.NET", "reason": "complaint"},
            {"address": "optout@example.net", "scope": "brand.example"}]"#,
    );
    assert_eq!((status, &answer), (200, &serde_json::json!({"added": 2})));

    let mut c = Client::connect(ts.addr);
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@shop.example>", 250);
    let refused = c.cmd("RCPT TO:<gone@example.net>");
    assert_eq!(
        (refused.code, refused.text()),
        (550, "5.7.1 Recipient suppressed".into())
    );
    c.expect("RCPT TO:<optout@example.net>", 250);
    c.expect("RCPT TO:<fine@example.net>", 250);
    assert_eq!(rcpt(&ts, "news@brand.example", "optout@example.net"), 550);
    assert_eq!(rcpt(&ts, "", "gone@example.net"), 550, "a null sender too");

    let answer = inject(
        &ts,
        "news@brand.example",
        &["gone@example.net", "fine@example.net", "optout@example.net"],
    );
    assert_eq!(answer["success_count"], 1, "{answer}");
    assert_eq!(
        answer["failed_recipients"],
        serde_json::json!(["gone@example.net", "optout@example.net"])
    );
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("recipient suppressed (complaint)")
    );
    let none = inject(&ts, "a@shop.example", &["gone@example.net"]);
    assert_eq!(
        (none["success_count"].clone(), none["id"].clone()),
        (0.into(), "".into())
    );

    let (_, list) = admin(&ts, "GET", "/suppressions", "");
    let entries: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["scope"].as_str().unwrap(), e["address"].as_str().unwrap()))
        .collect();
    assert_eq!(
        entries,
        [
            ("*", "gone@example.net"),
            ("brand.example", "optout@example.net")
        ]
    );
    let (status, one) = admin(&ts, "GET", "/suppressions/gone@example.net", "");
    assert_eq!((status, one["reason"].as_str()), (200, Some("complaint")));

    let (status, removed) = admin(&ts, "DELETE", "/suppressions/gone@example.net", "");
    assert_eq!((status, removed["removed"].as_bool()), (200, Some(true)));
    assert_eq!(rcpt(&ts, "a@shop.example", "gone@example.net"), 250);
    let (status, _) = admin(&ts, "GET", "/suppressions/gone@example.net", "");
    assert_eq!(status, 404);

    for bad in [
        r#"{"address": "x"}"#,
        r#"[{"address": "no-at-sign"}]"#,
        r#"[{"address": "a@b.c", "scope": "@"}]"#,
        r#"[{"address": "a@b.c", "scope": "brand example.net"}]"#,
        "[{]",
    ] {
        assert_eq!(admin(&ts, "POST", "/suppressions", bad).0, 400, "{bad}");
    }
}

#[test]
fn a_hard_bounce_suppresses_the_recipient_and_a_deferral_does_not() {
    let sink = Sink::start(
        "127.0.0.1",
        0,
        Script {
            reject_rcpts: ["dead@dest.example".to_string()].into_iter().collect(),
            ..Script::default()
        },
    );
    let ts = start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
    });
    let mut c = Client::connect(ts.addr);
    c.begin("", &["dead@dest.example", "alive@dest.example"]);
    assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    sink.wait_for(1, 30);
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&ts, "GET", "/suppressions/dead@dest.example", "").0 != 200 {
        assert!(Instant::now() < deadline, "the bounce was not suppressed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, entry) = admin(&ts, "GET", "/suppressions/dead@dest.example", "");
    assert_eq!(
        (entry["reason"].as_str(), entry["source"].as_str()),
        (Some("InvalidRecipient"), Some("bounce"))
    );
    assert_eq!(rcpt(&ts, "a@shop.example", "dead@dest.example"), 550);
    assert_eq!(rcpt(&ts, "a@shop.example", "alive@dest.example"), 250);
}

#[test]
fn an_expiring_suppression_lapses_on_the_clock() {
    let clock = Clock::manual(1_800_000_000);
    let ts = start_with_clock(1, clock.clone(), |_| {});
    let (status, _) = admin(
        &ts,
        "POST",
        "/suppressions",
        r#"[{"address": "later@example.net", "expires_in_secs": 3600}]"#,
    );
    assert_eq!(status, 200);
    assert_eq!(rcpt(&ts, "a@shop.example", "later@example.net"), 550);
    clock.advance(3599);
    assert_eq!(rcpt(&ts, "a@shop.example", "later@example.net"), 550);
    clock.advance(1);
    assert_eq!(rcpt(&ts, "a@shop.example", "later@example.net"), 250);
}

#[test]
fn the_drop_action_answers_250_and_queues_nothing_for_suppressed_recipients() {
    let ts = start_with(1, |c| {
        c.suppression.action = ringpost::config::SuppressionAction::Drop
    });
    admin(
        &ts,
        "POST",
        "/suppressions",
        r#"[{"address": "gone@example.net"}]"#,
    );
    let mut c = Client::connect(ts.addr);
    c.begin("a@shop.example", &["gone@example.net"]);
    let r = c.data(b"Subject: x\r\n\r\nx\r\n");
    assert_eq!(
        (r.code, r.text()),
        (
            250,
            "2.0.0 Ok: not queued, every recipient is suppressed".into()
        )
    );
    c.expect("RSET", 250);
    c.begin("a@shop.example", &["gone@example.net", "fine@example.net"]);
    let id = c.data(b"Subject: y\r\n\r\ny\r\n").queued_id();
    let mut ts = ts;
    let queued = ts.stop_and_list();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.to_string(), id);
    let rcpts: Vec<&str> = queued[0].1.recipients.iter().map(|r| &*r.address).collect();
    assert_eq!(rcpts, ["fine@example.net"]);
}

/// Adds entries one per request from two threads, SIGKILLs ringpost in
/// the middle, restarts it: every entry the API answered `added` for is
/// there.
#[test]
fn sigkill_loses_no_suppression_the_api_reported_added() {
    let tmp = tempfile::tempdir().unwrap();
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (smtp, admin_addr): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", port(())).parse().unwrap(),
        format!("127.0.0.1:{}", port(())).parse().unwrap(),
    );
    let config = tmp.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nhostname = \"kill.test\"\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [metrics]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n[admin]\nlisten = \"{admin_addr}\"\n",
            tmp.path().join("spool").display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let post = move |address: &str| -> bool {
        let body = format!(r#"[{{"address": "{address}"}}]"#);
        let req = format!(
            "POST /suppressions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let Ok(mut s) = std::net::TcpStream::connect(admin_addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::{Read, Write};
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        text.starts_with("HTTP/1.1 200") && text.contains(r#""added":1"#)
    };
    let mut total_acked = 0;
    for round in 0..3 {
        let mut child = common::spawn_binary(&config, smtp);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (acked, stop) = (acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let address = format!("r{round}t{t}n{n}@example.net");
                        if post(&address) {
                            acked.lock().unwrap().push(address);
                        } else if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        stop.store(true, Ordering::Relaxed);
        child.wait().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 200,
            "round {round}: only {} acknowledged in 30 s",
            acked.len()
        );
        total_acked += acked.len();
        // Restart and look every acknowledged entry up.
        let mut child = common::spawn_binary(&config, smtp);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !post(&format!("probe{round}@example.net")) {
            assert!(Instant::now() < deadline, "admin API did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
        let missing: Vec<&String> = acked
            .iter()
            .filter(|a| {
                let req = format!("GET /suppressions/{a} HTTP/1.1\r\nHost: x\r\n\r\n");
                http(admin_addr, req.as_bytes()).0 != 200
            })
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged entries lost: {missing:?}",
            missing.len(),
            acked.len()
        );
    }
    println!("{total_acked} acknowledged suppressions over 3 SIGKILLs, none lost");
}

/// A recipient whose domain did not resolve once (NXDOMAIN from a real
/// DNS server: a BadDomain bounce) is suppressed for
/// `suppression.passing_expiry_secs` (3 days) only, not for good: refused
/// until then, taken after, on a driven clock; `suppression ls` shows the
/// reason, the source and the expiry. An InvalidRecipient bounce stays.
#[test]
fn a_single_nxdomain_suppresses_for_three_days_not_for_good() {
    let dns = common::dns::serve("dead.test", vec![]);
    let clock = Clock::manual(1_800_000_000);
    let ts = start_with_clock(1, clock.clone(), |c| {
        c.delivery.smarthost.clear();
        c.dns.nameservers = vec![dns];
    });
    let mut c = Client::connect(ts.addr);
    c.begin("", &["someone@gone.dead.test"]);
    assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&ts, "GET", "/suppressions/someone@gone.dead.test", "").0 != 200 {
        assert!(Instant::now() < deadline, "the bounce was not suppressed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, entry) = admin(&ts, "GET", "/suppressions/someone@gone.dead.test", "");
    assert_eq!(
        (entry["reason"].as_str(), entry["source"].as_str()),
        (Some("BadDomain"), Some("bounce"))
    );
    assert_eq!(entry["expires"], 1_800_000_000u64 + 3 * 86_400, "{entry}");
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["suppression", "ls", "--admin"])
        .arg(ts.admin_addr.unwrap().to_string())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&ls.stdout);
    eprintln!("{listed}");
    assert!(
        listed.contains("someone@gone.dead.test")
            && listed.contains("BadDomain")
            && listed.contains("bounce")
            && listed.contains("2027-01-18 08:00"),
        "{listed}"
    );
    assert_eq!(rcpt(&ts, "a@shop.example", "someone@gone.dead.test"), 550);
    clock.advance(3 * 86_400 - 1);
    assert_eq!(rcpt(&ts, "a@shop.example", "someone@gone.dead.test"), 550);
    clock.advance(1);
    assert_eq!(rcpt(&ts, "a@shop.example", "someone@gone.dead.test"), 250);
}

/// A recipient suppressed while its message waits in the queue is not
/// sent to: the retry goes to the others, the suppressed one bounces
/// untried (Bounce event, DSN to the sender), and that failure triggers
/// no `[backoff]` rule (one that would suspend the domain is in force).
#[test]
fn a_recipient_suppressed_while_its_message_waits_is_not_sent_to() {
    let sink = Sink::start(
        "127.0.0.1",
        0,
        Script::temp_failing(1, "451 4.3.0 try later"),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let ts = start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.delivery.retry_initial_secs = 3;
        c.delivery.log = log.display().to_string();
        c.backoff.rules = vec![ringpost::config::BackoffRule {
            category: None,
            text: Some("suppressed".into()),
            action: "suspend".into(),
            secs: 3600,
            factor: 0.5,
        }];
    });
    let mut c = Client::connect(ts.addr);
    c.begin(
        "a@shop.example",
        &["kept@dest.example", "gone@dest.example"],
    );
    assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    common::wait_for_log_event(&log, "gone@dest.example", "TransientFailure");
    let (status, _) = admin(
        &ts,
        "POST",
        "/suppressions",
        r#"[{"address": "gone@dest.example", "reason": "complained by phone"}]"#,
    );
    assert_eq!(status, 200);

    let bounce = common::wait_for_log_event(&log, "gone@dest.example", "Bounce");
    let reply = bounce["reply"].as_str().unwrap();
    assert!(
        reply.starts_with("550 5.7.1 Recipient suppressed (complained by phone"),
        "{reply}"
    );
    common::wait_for_log_event(&log, "kept@dest.example", "Delivery");
    let got = sink.wait_for(2, 30);
    let retry = got.iter().find(|m| m.from == "a@shop.example").unwrap();
    assert_eq!(
        retry.rcpts,
        ["kept@dest.example"],
        "only the other one is sent"
    );
    let dsn = got.iter().find(|m| m.from.is_empty()).expect("a DSN");
    assert_eq!(dsn.rcpts, ["a@shop.example"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("Recipient suppressed"), "{text}");
    // No suspension: the next message to the domain goes at once.
    let mut c = Client::connect(ts.addr);
    c.begin("a@shop.example", &["later@dest.example"]);
    assert_eq!(c.data(b"Subject: y\r\n\r\ny\r\n").code, 250);
    common::wait_for_log_event(&log, "later@dest.example", "Delivery");
    assert!(
        ts.metrics_text()
            .contains("ringpost_delivery_suppressed_total 1"),
        "counted"
    );
}
