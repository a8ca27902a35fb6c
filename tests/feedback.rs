//! Complaint (ARF, RFC 5965) and asynchronous bounce (DSN, RFC 3464)
//! intake end to end: originals go out through ringpost to a sink behind
//! a real DNS server; reports built from the provider formats in
//! tests/data/feedback (around the original exactly as the sink received
//! it) come back over SMTP to the feedback addresses; the delivery log
//! must tie each to its message and recipient, and the suppression list
//! must hold the complainers and the recipients that failed for good.
//! Garbage reports, thousands of mutations of the samples, never panic.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::{self, Rr};
use common::sink::{Script, Sink};
use common::{Client, TestServer, sink_port, start_with};

fn zone() -> SocketAddr {
    dns::serve(
        "test",
        vec![
            Rr::Mx("dest.test", 10, "mx.dest.test"),
            Rr::A("mx.dest.test", "127.0.0.2".parse().unwrap()),
        ],
    )
}

fn server(port: u16, log: &Path, tracking_header: &str) -> TestServer {
    let dns = zone();
    let (log, tracking_header) = (
        log.to_str().unwrap().to_string(),
        tracking_header.to_string(),
    );
    start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.dns.nameservers = vec![dns];
        c.delivery.log = log;
        c.smtp.local_domains = vec!["fb.test".into(), "bounces.fb.test".into()];
        c.feedback.addresses = vec!["fbl@fb.test".into()];
        c.feedback.domains = vec!["bounces.fb.test".into()];
        c.feedback.tracking_header = tracking_header;
    })
}

/// Sends one message over SMTP; the 250's queue id.
fn send(ts: &TestServer, from: &str, rcpts: &[&str], body: &[u8]) -> String {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO reporter.test.example", 250);
    c.begin(from, rcpts);
    let r = c.data(body);
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

fn rcpt_code(ts: &TestServer, from: &str, to: &str) -> u16 {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO client.test.example", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    c.cmd(&format!("RCPT TO:<{to}>")).code
}

/// A sample with its placeholders filled, CRLF line ends.
fn fill(name: &str, original: &[u8], rcpt: &str, rcpt2: &str, sender: &str) -> Vec<u8> {
    let template = std::fs::read_to_string(format!("tests/data/feedback/{name}")).unwrap();
    let original = String::from_utf8_lossy(original);
    let original = original.trim_end_matches("\r\n");
    let headers = original.split("\r\n\r\n").next().unwrap();
    template
        .replace('\n', "\r\n")
        .replace("{{ORIGINAL}}", original)
        .replace("{{HEADERS}}", headers)
        .replace("{{RCPT2}}", rcpt2)
        .replace("{{RCPT}}", rcpt)
        .replace("{{SENDER}}", sender)
        .into_bytes()
}

fn events(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SAMPLES: [&str; 8] = [
    "arf-rfc5965.eml",
    "arf-yahoo-cfl.eml",
    "arf-microsoft-jmrp.eml",
    "arf-headers-only.eml",
    "dsn-rfc3464.eml",
    "dsn-postfix.eml",
    "dsn-exchange-online.eml",
    "dsn-mixed.eml",
];

/// Every sample, tied back by `tracking_header` (or, when empty, by the
/// Received: header ringpost wrote).
fn samples_are_tied_to_their_message_and_recipient(tracking_header: &str) {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let ts = server(port, log.path(), tracking_header);
    let sender = "news@sender.test";
    let mut originals = Vec::new();
    for (i, name) in SAMPLES.iter().enumerate() {
        let rcpt = format!("user{i}@dest.test");
        let body = format!(
            "From: Receipts <{sender}>\r\nTo: <{rcpt}>\r\nSubject: Your receipt {i}\r\nMessage-ID: <r{i}@sender.test>\r\n\r\nThank you.\r\n"
        );
        let id = send(&ts, sender, &[&rcpt], body.as_bytes());
        originals.push((name, rcpt, id));
    }
    let delivered = sink.wait_for(SAMPLES.len(), 30);
    for (name, rcpt, id) in &originals {
        let got = delivered
            .iter()
            .find(|m| m.rcpts == [rcpt.clone()])
            .unwrap_or_else(|| panic!("{rcpt} not delivered"));
        let mut original = String::from_utf8(got.data.clone()).unwrap();
        if !tracking_header.is_empty() {
            let line = format!("{tracking_header}: {id}\r\n");
            assert!(original.contains(&line), "{original}");
            // A reporter that drops our Received: header: the tracking
            // header alone must do.
            // The Received: header: its first line and the folded ones.
            let mut end = original.find("\r\n").unwrap() + 2;
            while original[end..].starts_with([' ', '\t']) {
                end += original[end..].find("\r\n").unwrap() + 2;
            }
            original.replace_range(..end, "");
            assert!(!original.contains("(ringpost)"), "{original}");
        }
        let rcpt2 = rcpt.replace("@", "-2@");
        let report = fill(name, original.as_bytes(), rcpt, &rcpt2, sender);
        let to = match name.starts_with("arf") {
            true => "fbl@fb.test".to_string(),
            false => format!("b-{id}@bounces.fb.test"),
        };
        send(&ts, "", &[&to], &report);
    }
    let all = events(log.path());
    for (name, rcpt, id) in &originals {
        let kind = if name.starts_with("arf") {
            "Complaint"
        } else {
            "AsyncBounce"
        };
        let ev = all
            .iter()
            .find(|e| e["event"] == kind && e["recipient"] == rcpt.as_str())
            .unwrap_or_else(|| panic!("{name}: no {kind} for {rcpt} in {all:#?}"));
        assert_eq!(ev["id"], id.as_str(), "{name}: tied to its message: {ev}");
        assert!(ev["report_id"].is_string(), "{ev}");
        if kind == "Complaint" {
            assert_eq!(ev["feedback_type"], "abuse", "{ev}");
        }
        let expected = match **name {
            "dsn-postfix.eml" | "dsn-exchange-online.eml" => Some("InvalidRecipient"),
            "dsn-mixed.eml" => Some("InactiveMailbox"),
            _ => None,
        };
        if let Some(category) = expected {
            assert_eq!(ev["category"], category, "{name}: {ev}");
        }
        // Complainers and recipients that failed for good (in
        // suppression.categories) are suppressed; a 4.0.0 timeout is not.
        let suppressed = **name != "dsn-rfc3464.eml";
        let code = rcpt_code(&ts, sender, rcpt);
        assert_eq!(code == 550, suppressed, "{name}: RCPT {rcpt} got {code}");
    }
    // The delayed and the delivered recipient of dsn-mixed need nothing.
    assert!(
        !all.iter().any(
            |e| e["event"] == "AsyncBounce" && e["recipient"].as_str().unwrap().contains("-2@")
        ),
        "{all:#?}"
    );
    // Reports are read, never queued or delivered.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), SAMPLES.len());
    assert!(!all.iter().any(|e| {
        e["event"] == "Reception"
            && (e["recipient"] == "fbl@fb.test"
                || e["recipient"]
                    .as_str()
                    .unwrap()
                    .ends_with("@bounces.fb.test"))
    }));
    let metrics = ts.metrics_text();
    for series in [
        "ringpost_feedback_reports_total{kind=\"arf\",result=\"read\"}",
        "ringpost_feedback_reports_total{kind=\"dsn\",result=\"read\"}",
        "ringpost_suppressions_added_total{source=\"complaint\"}",
        "ringpost_suppressions_added_total{source=\"async_bounce\"}",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

#[test]
fn reports_are_tied_back_by_our_received_header() {
    samples_are_tied_to_their_message_and_recipient("");
}

#[test]
fn reports_are_tied_back_by_the_tracking_header() {
    samples_are_tied_to_their_message_and_recipient("X-Ringpost-Id");
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One garbage variant of `sample`: bytes flipped, cut, repeated, or
/// MIME-significant tokens dropped in.
fn mutate(sample: &[u8], rng: &mut Rng) -> Vec<u8> {
    const TOKENS: [&[u8]; 8] = [
        b"\r\n--",
        b"\r\n\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"=?utf-8?B?",
        b"\xff\xfe\x00",
        b"Final-Recipient: rfc822;",
        b";;;;<<<>>>",
    ];
    let mut out = sample.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at),
            2 => {
                let end = (at + rng.below(200)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
            _ => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

#[test]
fn garbage_reports_never_panic() {
    let original = b"Received: from c (c [127.0.0.1])\r\n\tby mx (ringpost) with ESMTP id 0123456789abcdef0123456789abcdef;\r\n\tTue, 1 Dec 2026 05:00:00 +0000\r\nFrom: a@sender.test\r\nTo: u@dest.test\r\nSubject: s\r\n\r\nbody\r\n";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut read, mut malformed) = (0, 0);
    for name in SAMPLES {
        let sample = fill(
            name,
            original,
            "u@dest.test",
            "v@dest.test",
            "a@sender.test",
        );
        for _ in 0..3000 {
            match ringpost::feedback::parse(&mutate(&sample, &mut rng), "X-Ringpost-Id") {
                Ok(_) => read += 1,
                Err(_) => malformed += 1,
            }
        }
    }
    println!("{read} mutations still read, {malformed} malformed");
    assert!(
        read > 0 && malformed > 0,
        "{read} read, {malformed} malformed"
    );
}

/// Reports that cannot be read are answered 250 (the reporter could not do
/// better), counted, and kept for inspection; the server goes on.
#[test]
fn unreadable_reports_are_kept_for_inspection() {
    let port = sink_port();
    let _sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let ts = server(port, log.path(), "");
    let arf = fill(
        "arf-rfc5965.eml",
        b"Subject: x\r\n\r\ny\r\n",
        "u@dest.test",
        "",
        "a@sender.test",
    );
    let arf = String::from_utf8(arf).unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        b"Subject: out of office\r\n\r\nI am away until Monday.\r\n".to_vec(),
        arf.replace("message/feedback-report", "text/plain")
            .into_bytes(),
        arf.replace("Original-Rcpt-To: <u@dest.test>\r\n", "")
            .replace("Subject: x", "To: a@x.test, b@x.test")
            .into_bytes(),
        b"\x00\x01\x02 not even a header\r\n".to_vec(),
    ];
    let started = Instant::now();
    let mut ids = Vec::new();
    for g in &garbage {
        ids.push(send(&ts, "", &["fbl@fb.test"], g));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let dir = ts.spool_dir.join("feedback-malformed");
    for id in &ids {
        let kept = std::fs::read(dir.join(format!("{id}.eml")))
            .unwrap_or_else(|e| panic!("{id} kept in {}: {e}", dir.display()));
        assert!(!kept.is_empty());
    }
    let metrics = ts.metrics_text();
    for reason in ["not_a_report", "no_report_part", "no_recipient"] {
        let series =
            format!("ringpost_feedback_reports_total{{kind=\"unknown\",result=\"{reason}\"}}");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    // Still serving.
    assert_eq!(rcpt_code(&ts, "a@sender.test", "someone@dest.test"), 250);
}
