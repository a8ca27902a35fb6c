//! The status pages in a real browser: headless Chromium (Debian's
//! chromium and chromium-driver) driven over WebDriver by Python selenium
//! (`tests/browser/status_page.py`), against a server (two shards, an
//! admin token) after a known load: mail delivered, mail deferred by a
//! sink that answers 451 (whose path a `[backoff]` rule throttles), mail
//! held by a suspension. The script says what
//! it clicked and read; screenshots go to `$RINGPOST_SCREENSHOTS` (the
//! ones in docs/images were made that way), else to a temporary directory.
//! Also, without the browser: the pages' answers to bad requests.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{TestServer, sink_port, start_with};

const TOKEN: &str = "correct-horse-battery-staple";

fn server(port: u16, token_file: &str) -> TestServer {
    start_with(2, |c| {
        c.delivery.smarthost.clear();
        for (domain, ip) in [
            ("ok.test", "127.0.0.2"),
            ("slow.test", "127.0.0.3"),
            ("held.test", "127.0.0.4"),
        ] {
            c.delivery
                .routes
                .insert(domain.into(), format!("[{ip}]:{port}"));
        }
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.connect_timeout_secs = 2;
        c.admin.token_file = token_file.to_string();
        // The greylisting receiver's replies throttle its path.
        c.backoff.rules = vec![ringpost::config::BackoffRule {
            category: None,
            text: Some("greylisted".into()),
            action: "throttle".into(),
            secs: 600,
            factor: 0.5,
        }];
    })
}

fn admin(ts: &TestServer, method: &str, path: &str, extra: &str) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}Content-Length: 0\r\n\r\n",
        ts.admin_addr.unwrap()
    );
    common::http(ts.admin_addr.unwrap(), head.as_bytes())
}

fn send(ts: &TestServer, rcpt: &str) {
    let mut c = ts.client();
    c.begin("app@shop.test", &[rcpt]);
    let r = c.data(b"Subject: status page\r\n\r\nbody\r\n");
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn the_status_page_in_a_browser_shows_the_api_numbers_finds_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = sink_port();
    let ok = Sink::start("127.0.0.2", port, Script::default());
    let _slow = Sink::start(
        "127.0.0.3",
        port,
        Script::temp_failing(usize::MAX, "451 4.7.1 greylisted, come back later"),
    );
    let _held = Sink::start("127.0.0.4", port, Script::default());
    let ts = server(port, token_file.to_str().unwrap());
    let (status, body) = admin(&ts, "POST", "/queue/domains/held.test/suspend", "");
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        send(&ts, &format!("user{i}@ok.test"));
    }
    for i in 0..4 {
        send(&ts, &format!("user{i}@slow.test"));
    }
    send(&ts, "target@slow.test");
    for i in 0..2 {
        send(&ts, &format!("user{i}@held.test"));
    }
    ok.wait_for(3, 20);
    // Every slow.test message deferred once. The greylisting path is
    // throttled after its first 451 (down to backoff::MIN_RATE, 0.1 msg/s
    // per shard): five messages may take 40 s on one shard.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = admin(&ts, "GET", "/queue/summary", "");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        if s["deferred"] == 5 && s["messages"] == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots =
        std::env::var("RINGPOST_SCREENSHOTS").unwrap_or_else(|_| tmp.path().display().to_string());
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/status_page.py"
        ))
        .args([
            &ts.admin_addr.unwrap().to_string(),
            TOKEN,
            "target@slow.test",
            "held.test",
            &shots,
        ])
        .output()
        .expect("python3 runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all checks passed"), "{said}");
}

#[test]
fn pages_refuse_what_they_cannot_answer_and_changes_from_other_origins() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ts = server(sink_port(), token_file.to_str().unwrap());
    for (path, status, why) in [
        ("/status/find?key=rcpt&value=", 400, "empty"),
        ("/status/find?key=subject&value=x", 400, "unknown key"),
        ("/status/messages/nothex", 400, "not a message id"),
        (
            "/status/messages/0123456789abcdef0123456789abcdef",
            404,
            "not queued",
        ),
        ("/status/elsewhere", 404, "No such page"),
    ] {
        let (got, body) = admin(&ts, "GET", path, "");
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
    // Basic authentication with the token as the password is the
    // browser's way in; a wrong one is refused.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (creds, status) in [(format!("op:{TOKEN}"), 200), ("op:wrong".to_string(), 401)] {
        let head = format!(
            "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
            b64(&creds)
        );
        let (got, _) = common::http(ts.admin_addr.unwrap(), head.as_bytes());
        assert_eq!(got, status, "{creds}");
    }
    // A change asked by a page of another origin is refused; from the
    // page's own origin, or from a client that is no browser, it is not.
    let host = ts.admin_addr.unwrap();
    let (got, body) = admin(
        &ts,
        "POST",
        "/queue/flush",
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(got, 403, "{body}");
    let own = format!("Origin: http://{host}\r\n");
    let (got, body) = admin(&ts, "POST", "/queue/flush", &own);
    assert_eq!(got, 200, "{body}");
    let (got, body) = admin(&ts, "POST", "/queue/flush", "");
    assert_eq!(got, 200, "{body}");
}
