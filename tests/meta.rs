//! The application's own data (`[meta]`) travels with the message into
//! every event: from the injection's `meta` field, or the `X-Ringpost-Meta`
//! header of a trusted SMTP client, which is taken out of the message
//! (whoever sent it) and never reaches the recipient.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{Client, TestServer, http, sink_port, start_with};

fn server(
    port: u16,
    log: &std::path::Path,
    tweak: impl FnOnce(&mut ringpost::config::Config),
) -> TestServer {
    let log = log.to_str().unwrap().to_string();
    start_with(2, move |c| {
        c.delivery.smarthost.clear();
        c.delivery
            .routes
            .insert("dest.test".into(), format!("[127.0.0.2]:{port}"));
        c.delivery.log = log;
        tweak(c);
    })
}

fn events_of(log: &std::path::Path, id: &str, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["id"] == id && e["event"] == kind)
        .collect()
}

fn wait_for_event(log: &std::path::Path, id: &str, kind: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events_of(log, id, kind).pop() {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind} for {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn smtp(ts: &TestServer, body: &str) -> common::Reply {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test.example", 250);
    c.begin("app@sender.test", &["someone@dest.test"]);
    c.data(body.as_bytes())
}

#[test]
fn a_trusted_header_becomes_meta_in_every_event_and_never_reaches_the_recipient() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let ts = server(port, log.path(), |_| {});
    let r = smtp(
        &ts,
        "Subject: receipt\r\nX-Ringpost-Meta: {\"app_id\": \"order-1234\",\r\n  \"customer\": 7}\r\nFrom: app@sender.test\r\n\r\nThanks.\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.queued_id();
    let delivered = wait_for_event(log.path(), &id, "Delivery");
    let meta = serde_json::json!({ "app_id": "order-1234", "customer": 7 });
    assert_eq!(delivered["meta"], meta, "{delivered}");
    assert_eq!(wait_for_event(log.path(), &id, "Reception")["meta"], meta);
    let got = sink.wait_for(1, 10);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        !text.to_ascii_lowercase().contains("x-ringpost-meta"),
        "{text}"
    );
    assert!(
        text.contains("Subject: receipt\r\nFrom: app@sender.test\r\n\r\nThanks."),
        "{text}"
    );
    // Not an object, or too long: a clear 550 5.6.0, nothing queued.
    for bad in [
        "[1, 2]",
        "{not json",
        &format!("{{\"a\": \"{}\"}}", "x".repeat(3000)),
    ] {
        let r = smtp(
            &ts,
            &format!("X-Ringpost-Meta: {bad}\r\nSubject: x\r\n\r\nx\r\n"),
        );
        assert_eq!(
            (r.code, r.text().contains("5.6.0")),
            (550, true),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn an_untrusted_client_cannot_set_meta_but_the_header_is_still_removed() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let ts = server(port, log.path(), |c| {
        c.smtp.relay_networks.clear();
        c.smtp.local_domains = vec!["dest.test".into()];
    });
    let r = smtp(
        &ts,
        "X-Ringpost-Meta: {\"app_id\": \"spoofed\"}\r\nSubject: x\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let delivered = wait_for_event(log.path(), &r.queued_id(), "Delivery");
    assert!(delivered.get("meta").is_none(), "{delivered}");
    let got = sink.wait_for(1, 10);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(!text.contains("spoofed"), "{text}");
}

fn inject(ts: &TestServer, meta: &str) -> (u16, serde_json::Value) {
    let body = format!(
        "{{\"envelope_sender\": \"app@sender.test\", \"recipients\": [{{\"email\": \"someone@dest.test\"}}], \"content\": \"Subject: hi\\r\\n\\r\\nhello\\r\\n\"{meta}}}"
    );
    let req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http(ts.inject_addr.unwrap(), req.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or_default())
}

#[test]
fn injection_meta_is_in_every_event() {
    let port = sink_port();
    let _sink = Sink::start("127.0.0.2", port, Script::default());
    let log = tempfile::NamedTempFile::new().unwrap();
    let ts = server(port, log.path(), |c| c.meta.max_bytes = 100);
    let (status, answer) = inject(
        &ts,
        ", \"meta\": {\"app_id\": \"pw-reset-9\", \"tenant\": \"acme\"}",
    );
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let delivered = wait_for_event(log.path(), &id, "Delivery");
    assert_eq!(
        delivered["meta"],
        serde_json::json!({ "app_id": "pw-reset-9", "tenant": "acme" })
    );
    let (status, answer) = inject(&ts, ", \"meta\": \"a string\"");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = inject(
        &ts,
        &format!(", \"meta\": {{\"a\": \"{}\"}}", "x".repeat(200)),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("meta.max_bytes"), "{answer}");
}
