//! One-click unsubscribe (RFC 8058), end to end over loopback: injected
//! mail gets `List-Unsubscribe` and `List-Unsubscribe-Post` (one message
//! per recipient: a link names its recipient), read at a real SMTP sink;
//! the link's page (`GET`) changes nothing; forged, altered, expired and
//! malformed links are refused and change nothing; Gmail's POST (exact
//! body `List-Unsubscribe=One-Click`) makes the next RCPT to that
//! recipient from that sender domain `550` (and only from that domain),
//! an `Unsubscribe` event reaches a webhook receiver (Python, checking
//! every signature), the delivery log and the message's trace; the mailto
//! link does the same through the feedback intake; each client address
//! has its allowance. That the fields are signed: tests/dkim.rs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{TestServer, start_with};
use ringpost::config::{Listen, Webhook};

const SECRET: &str = "unsubscribe-secret-of-some-length-0123456789";
const BASE: &str = "https://unsub.shop.test";

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The Python webhook receiver on `addr`, appending what it takes to `out`.
fn receiver(addr: SocketAddr, secret: &Path, out: &Path) -> Receiver {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers/webhook_receiver.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(addr.port().to_string())
        .arg(secret)
        .arg(out)
        .spawn()
        .expect("python3 runs the receiver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Receiver(child)
}

struct Setup {
    server: TestServer,
    sink: Sink,
    log: PathBuf,
    events_out: PathBuf,
    _receiver: Receiver,
    _tmp: tempfile::TempDir,
}

fn setup(per_minute: u32) -> Setup {
    setup_with(per_minute, None)
}

/// `tls`: the listener's certificate and key (PEM).
fn setup_with(per_minute: u32, tls: Option<(String, String)>) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    if let Some((cert, key)) = &tls {
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
    }
    let secret_file = tmp.path().join("unsubscribe.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let hook_secret = tmp.path().join("hook.secret");
    std::fs::write(&hook_secret, "a-shared-secret-of-some-length\n").unwrap();
    let events_out = tmp.path().join("events.jsonl");
    let hook_addr = free_addr();
    let receiver = receiver(hook_addr, &hook_secret, &events_out);
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let log = tmp.path().join("delivery.jsonl");
    let server = start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.delivery.log = log.display().to_string();
        c.smtp.local_domains = vec!["shop.test".into()];
        c.unsubscribe.listen = Listen::at("127.0.0.1:0");
        c.unsubscribe.base_url = BASE.into();
        c.unsubscribe.secret_file = secret_file.display().to_string();
        c.unsubscribe.mailto = "unsubscribe@shop.test".into();
        c.unsubscribe.max_requests_per_ip_per_minute = per_minute;
        if tls.is_some() {
            c.unsubscribe.cert_file = cert_file.display().to_string();
            c.unsubscribe.key_file = key_file.display().to_string();
        }
        c.events.webhook = vec![Webhook {
            name: "app".into(),
            url: format!("http://{hook_addr}/hook"),
            events: vec!["Unsubscribe".into()],
            batch_size: 100,
            max_wait_ms: 100,
            secret_file: hook_secret.display().to_string(),
            timeout_secs: 2,
            retry_initial_ms: 100,
            retry_max_secs: 1,
            ca_file: String::new(),
        }];
    });
    Setup {
        server,
        sink,
        log,
        events_out,
        _receiver: receiver,
        _tmp: tmp,
    }
}

fn inject(server: &TestServer, request: serde_json::Value) -> serde_json::Value {
    let body = request.to_string();
    let head = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = common::http(server.inject_addr.unwrap(), head.as_bytes());
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// A request to the unsubscribe listener: (status, body).
fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: unsub.shop.test\r\nUser-Agent: Mozilla/5.0 (compatible; Google-Unsubscribe)\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    common::http(server.unsubscribe_addr.unwrap(), head.as_bytes())
}

/// Gmail's one-click request (RFC 8058 §3.2).
fn one_click(server: &TestServer, path: &str) -> (u16, String) {
    request(
        server,
        "POST",
        path,
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "List-Unsubscribe=One-Click",
    )
}

/// The reply to `RCPT TO:<rcpt>` after `MAIL FROM:<sender>`.
fn rcpt_reply(server: &TestServer, sender: &str, rcpt: &str) -> u16 {
    let mut c = server.client();
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{sender}>"), 250);
    let code = c.cmd(&format!("RCPT TO:<{rcpt}>")).code;
    c.cmd("QUIT");
    code
}

/// The `List-Unsubscribe` fields of a message as the sink got it.
fn fields(data: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split_once("\r\n\r\n").unwrap().0.replace("\r\n ", " ");
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_string())
        .collect()
}

/// The path (`/u/TOKEN`) of the HTTPS link in a message to `rcpt`.
fn link_path(received: &[common::sink::Received], rcpt: &str) -> String {
    let m = received.iter().find(|m| m.rcpts == [rcpt]).unwrap();
    let value = &fields(&m.data, "List-Unsubscribe")[0];
    let url = value.split(['<', '>']).nth(1).unwrap();
    url.strip_prefix(BASE).unwrap().to_string()
}

fn taken_events(out: &Path) -> Vec<serde_json::Value> {
    common::whole_json_lines(out)
}

#[test]
fn one_click_suppresses_for_the_sender_domain_and_nothing_else_does() {
    let s = setup(1000);
    let content = "From: News <news@shop.test>\nTo: reader\nSubject: spring\n\nhello\n";
    let answer = inject(
        &s.server,
        serde_json::json!({
            "envelope_sender": "news@shop.test",
            "recipients": [{"email": "bob@example.net"}, {"email": "carol@example.net"}],
            "content": content,
            "unsubscribe": true,
        }),
    );
    let ids = answer["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2, "a message per recipient: {answer}");
    // Without asking (no pool wants links), and with the application's own.
    inject(
        &s.server,
        serde_json::json!({"envelope_sender": "news@shop.test",
            "recipients": [{"email": "dave@example.net"}], "content": content}),
    );
    inject(
        &s.server,
        serde_json::json!({"envelope_sender": "news@shop.test",
            "recipients": [{"email": "erin@example.net"}], "unsubscribe": true,
            "content": format!("List-Unsubscribe: <https://app.shop.test/x>\n{content}")}),
    );
    let received = s.sink.wait_for(4, 30);
    for m in &received {
        let (links, post) = (
            fields(&m.data, "List-Unsubscribe"),
            fields(&m.data, "List-Unsubscribe-Post"),
        );
        match m.rcpts[0].as_str() {
            "dave@example.net" => assert!(links.is_empty() && post.is_empty()),
            "erin@example.net" => assert_eq!(links, ["<https://app.shop.test/x>"], "kept"),
            rcpt => {
                assert_eq!(links.len(), 1, "{rcpt}");
                assert!(links[0].starts_with(&format!("<{BASE}/u/")), "{links:?}");
                assert!(
                    links[0].contains(", <mailto:unsubscribe@shop.test?subject=unsubscribe%20"),
                    "{links:?}"
                );
                assert_eq!(post, ["List-Unsubscribe=One-Click"]);
            }
        }
    }
    let bob = link_path(&received, "bob@example.net");
    let carol = link_path(&received, "carol@example.net");
    assert_ne!(bob, carol);
    let token = bob.strip_prefix("/u/").unwrap();

    // The page: a button, and nothing changed.
    let (status, page) = request(&s.server, "GET", &bob, "", "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("bob@example.net") && page.contains("shop.test"));
    assert!(
        page.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
        "{page}"
    );
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "bob@example.net"),
        250
    );

    // Links that are not ours, or no longer, change nothing.
    let mut altered: Vec<u8> = token.bytes().collect();
    let at = altered.len() / 2;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let other_secret = ringpost::unsubscribe::Secrets::parse("t", &"z".repeat(40)).unwrap();
    let ours = ringpost::unsubscribe::Secrets::parse("t", SECRET).unwrap();
    let claim = |issued| ringpost::unsubscribe::Claim {
        message: ringpost::queue::MessageId::parse(ids[0].as_str().unwrap()).unwrap(),
        recipient: "bob@example.net".into(),
        sender_domain: "shop.test".into(),
        issued,
    };
    let now = ringpost::shard::clock::unix_now();
    let forged = ringpost::unsubscribe::mint(&other_secret, &claim(now));
    let expired = ringpost::unsubscribe::mint(&ours, &claim(now - 91 * 86_400));
    for (path, want) in [
        (format!("/u/{altered}"), 404),
        (format!("/u/{forged}"), 404),
        (format!("/u/{expired}"), 404),
        ("/u/not-a-token!".to_string(), 400),
    ] {
        let (status, body) = one_click(&s.server, &path);
        assert_eq!(status, want, "{path}: {body}");
        let (status, _) = request(&s.server, "GET", &path, "", "");
        assert_eq!(status, want, "GET {path}");
    }
    let (status, _) = request(&s.server, "POST", &bob, "", "unsubscribe=yes");
    assert_eq!(status, 400, "not RFC 8058's body");
    let (status, _) = request(&s.server, "PUT", &bob, "", "");
    assert_eq!(status, 405);
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "bob@example.net"),
        250
    );

    // Gmail's POST.
    let (status, body) = one_click(&s.server, &bob);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "bob@example.net"),
        550
    );
    assert_eq!(
        rcpt_reply(&s.server, "offers@shop.test", "Bob@Example.NET"),
        550
    );
    assert_eq!(
        rcpt_reply(&s.server, "news@other.test", "bob@example.net"),
        250,
        "scoped to the sender domain"
    );
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "carol@example.net"),
        250
    );
    let (status, _) = one_click(&s.server, &bob);
    assert_eq!(status, 200, "a repeat is answered the same");

    // The event: at the webhook (once), in the log, in the message's trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let e = taken_events(&s.events_out);
        if !e.is_empty() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no Unsubscribe event at the webhook"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let e = &events[0];
    assert_eq!(e["event"], "Unsubscribe", "{e}");
    assert_eq!(e["recipient"], "bob@example.net");
    assert_eq!(e["sender_domain"], "shop.test");
    assert_eq!(e["via"], "one-click");
    assert_eq!(e["id"], ids[0], "the message the link came in");
    let logged = common::wait_for_log_event(&s.log, "bob@example.net", "Unsubscribe");
    assert_eq!(logged["id"], ids[0]);
    let trace = format!(
        "GET /queue/messages/{}/trace HTTP/1.1\r\nHost: x\r\n\r\n",
        ids[0].as_str().unwrap()
    );
    let (status, trace) = common::http(s.server.admin_addr.unwrap(), trace.as_bytes());
    assert_eq!(status, 200, "{trace}");
    assert!(trace.contains("\"Unsubscribe\""), "{trace}");
    let (_, listed) = common::http(
        s.server.admin_addr.unwrap(),
        b"GET /suppressions?address=bob@example.net HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        listed.contains("\"reason\":\"Unsubscribe\"") && listed.contains("\"scope\":\"shop.test\""),
        "{listed}"
    );

    // The mailto link: mail whose subject ends in carol's token.
    let carol_token = carol.strip_prefix("/u/").unwrap();
    let mut c = s.server.client();
    c.begin("carol@example.net", &["unsubscribe@shop.test"]);
    let subject = format!("Subject: unsubscribe {carol_token}\r\n\r\n\r\n");
    assert_eq!(c.data(subject.as_bytes()).code, 250);
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "carol@example.net"),
        550
    );
    std::thread::sleep(Duration::from_millis(500));
    let events = taken_events(&s.events_out);
    let vias: Vec<_> = events.iter().map(|e| e["via"].as_str().unwrap()).collect();
    assert_eq!(vias, ["one-click", "mailto"], "one event each: {events:?}");
    // Counted (the recorder is the process's: other tests count too).
    let metrics = s.server.metrics_text();
    let counted = metrics.lines().any(|l| {
        l.starts_with("ringpost_unsubscribe_requests_total{")
            && l.contains("via=\"mailto\"")
            && l.contains("result=\"unsubscribed\"")
            && !l.ends_with(" 0")
    });
    assert!(counted, "{metrics}");
}

#[test]
fn each_client_address_has_its_allowance() {
    let s = setup(5);
    let mut answered = Vec::new();
    for _ in 0..7 {
        answered.push(request(&s.server, "GET", "/u/not-a-token!", "", "").0);
    }
    assert_eq!(answered, [400, 400, 400, 400, 400, 429, 429]);
    let (status, _) = request(&s.server, "GET", "/elsewhere", "", "");
    assert_eq!(status, 404, "other paths: not found, not counted");
}

/// The public listener's bad input: a clear status, and nothing else.
#[test]
fn hostile_requests_get_a_status_and_change_nothing() {
    let s = setup(1000);
    let addr = s.server.unsubscribe_addr.unwrap();
    let big = "x".repeat(64 * 1024);
    let (status, _) = request(&s.server, "POST", "/u/abc", "", &big);
    assert_eq!(status, 413, "bodies over 8 KiB");
    let long_token = format!("/u/{}", "A".repeat(5000));
    let (status, _) = request(&s.server, "GET", &long_token, "", "");
    assert_eq!(status, 400, "a token longer than any we make");
    let (status, _) = common::http(addr, b"\x00\x01 nonsense\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _) = request(
        &s.server,
        "POST",
        "/u/abc",
        "Content-Type: multipart/form-data; boundary=\r\n",
        "--\r\n\r\n",
    );
    assert_eq!(status, 400);
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "bob@example.net"),
        250
    );
    assert!(
        s.server
            .metrics_text()
            .contains("ringpost_unsubscribe_requests_total")
    );
}

/// With `cert_file` and `key_file` the listener speaks HTTPS: the
/// one-click POST over TLS (a client trusting only the test CA)
/// unsubscribes; plain HTTP is not answered.
#[test]
fn the_listener_speaks_https_with_a_certificate() {
    use std::io::{Read, Write};
    let ca = common::sink::TestCa::new();
    let s = setup_with(1000, Some(ca.leaf_pem("localhost")));
    inject(
        &s.server,
        serde_json::json!({"envelope_sender": "news@shop.test",
            "recipients": [{"email": "tls@example.net"}], "unsubscribe": true,
            "content": "From: news@shop.test\nSubject: tls\n\nhello\n"}),
    );
    let received = s.sink.wait_for(1, 30);
    let path = link_path(&received, "tls@example.net");
    let body = "List-Unsubscribe=One-Click";
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let addr = s.server.unsubscribe_addr.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(common::rustls_client_trusting(&ca.pem), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
    tls.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        rcpt_reply(&s.server, "news@shop.test", "tls@example.net"),
        550
    );
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain.write_all(request.as_bytes()).unwrap();
    let mut text = Vec::new();
    let _ = plain.read_to_end(&mut text);
    assert!(!text.starts_with(b"HTTP/1.1"), "plain HTTP was answered");
}
