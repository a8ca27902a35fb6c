//! Webhooks: every event reaches the application at least once, through a
//! receiver that refuses connections, answers 500, times out, and a
//! SIGKILL of ringpost; signatures checked by Python's `hmac`
//! (tests/verifiers/webhook_receiver.py), batching, an event refused
//! alone kept and replayed, a receiver answering 404 for a while taken as
//! down, back-pressure.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{http, send_concurrently};
use ringpost::config::Webhook;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The Python receiver on `addr`, appending the events it takes to `out`.
struct Receiver {
    addr: SocketAddr,
    child: Child,
}

impl Receiver {
    fn start(addr: SocketAddr, secret: &Path, out: &Path) -> Receiver {
        Receiver::start_with(addr, secret, out, &[])
    }

    /// `tls`: the certificate and key files, for HTTPS.
    fn start_with(addr: SocketAddr, secret: &Path, out: &Path, tls: &[&Path]) -> Receiver {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers/webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(addr.port().to_string())
            .arg(secret)
            .arg(out)
            .args(tls)
            .spawn()
            .expect("python3 runs the receiver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Receiver { addr, child }
    }

    fn mode(&self, mode: &str) {
        let (status, _) = http(
            self.addr,
            format!("GET /mode/{mode} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 200);
    }

    fn stats(&self) -> serde_json::Value {
        let (_, body) = http(
            self.addr,
            b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events the receiver took, in order (whole lines: the receiver may
/// be writing the next one as we read).
fn taken(out: &Path) -> Vec<serde_json::Value> {
    common::whole_json_lines(out)
}

fn webhook(url: String, secret: &Path) -> Webhook {
    Webhook {
        name: "app".into(),
        url,
        events: vec![],
        batch_size: 100,
        max_wait_ms: 200,
        secret_file: secret.display().to_string(),
        timeout_secs: 2,
        retry_initial_ms: 100,
        retry_max_secs: 1,
        ca_file: String::new(),
    }
}

fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, "a-shared-secret-of-some-length\n").unwrap();
    path
}

fn config_file(dir: &Path, smtp: SocketAddr, sink: SocketAddr, hook: &Webhook) -> PathBuf {
    let path = dir.join("ringpost.toml");
    let text = format!(
        "[server]\nshards = 2\nhostname = \"hooks.test\"\nshutdown_grace_secs = 2\n\
         [spool]\ndir = \"{spool}\"\n[smtp]\nlisten = \"{smtp}\"\n\
         [delivery]\nsmarthost = \"[127.0.0.1]:{port}\"\nlog = \"off\"\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n\
         [admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n\
         [[events.webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nbatch_size = {batch}\n\
         max_wait_ms = {wait}\nsecret_file = \"{secret}\"\ntimeout_secs = {timeout}\n\
         retry_initial_ms = {initial}\nretry_max_secs = {max}\n",
        spool = dir.join("spool").display(),
        port = sink.port(),
        name = hook.name,
        url = hook.url,
        batch = hook.batch_size,
        wait = hook.max_wait_ms,
        secret = hook.secret_file,
        timeout = hook.timeout_secs,
        initial = hook.retry_initial_ms,
        max = hook.retry_max_secs,
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn recipient(i: usize) -> String {
    format!("r{i}@dest.test")
}

/// 10,000 messages; the receiver is down (connections refused), then
/// answers 500, then too slowly (timeouts), then takes batches; ringpost
/// is SIGKILLed while they flow and started again. Every message's
/// Reception and Delivery events reach the receiver at least once, every
/// request's signature checks out in Python, and requests are far fewer
/// than events.
#[test]
fn every_event_arrives_at_least_once_through_failures_and_a_kill() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let (smtp, receiver_addr) = (free_addr(), free_addr());
    let secret = secret_file(dir.path());
    let out = dir.path().join("events.jsonl");
    let hook = webhook(format!("http://{receiver_addr}/hook"), &secret);
    let config = config_file(dir.path(), smtp, sink.addr, &hook);
    let mut mta = common::spawn_binary(&config, smtp);

    // The receiver is not there yet: every post is refused.
    send_concurrently(smtp, N, 20, |i| {
        (
            format!("app{i}@sender.test"),
            recipient(i),
            format!("Subject: {i}\r\n\r\nmessage {i}\r\n"),
        )
    });
    sink.wait_for(N, 120);
    let receiver = Receiver::start(receiver_addr, &secret, &out);
    receiver.mode("fail500");
    std::thread::sleep(Duration::from_millis(1500));
    receiver.mode("slow");
    std::thread::sleep(Duration::from_millis(3000));
    let failing = receiver.stats();
    assert_eq!(failing["taken"], 0, "{failing}");
    assert!(failing["requests"].as_u64().unwrap() >= 3, "{failing}");
    receiver.mode("ok");
    // Some batches are in; then the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.stats()["events"].as_u64().unwrap() < 2_000 {
        assert!(Instant::now() < deadline, "no events arrive");
        std::thread::sleep(Duration::from_millis(5));
    }
    mta.kill().unwrap();
    mta.wait().unwrap();
    let at_kill = receiver.stats()["events"].as_u64().unwrap();
    let mut mta = common::spawn_binary(&config, smtp);

    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let events = taken(&out);
        let delivered: HashSet<String> = events
            .iter()
            .filter(|e| e["event"] == "Delivery")
            .map(|e| e["recipient"].as_str().unwrap().to_string())
            .collect();
        if delivered.len() >= N {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} deliveries reported",
            delivered.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let events = taken(&out);
    assert!(events.len() >= delivered.len());
    let mut kinds: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut repeats = 0;
    for e in &events {
        if !ids.insert(e["event_id"].as_str().unwrap().to_string()) {
            repeats += 1;
            continue;
        }
        kinds
            .entry(e["event"].as_str().unwrap())
            .or_default()
            .insert(e["recipient"].as_str().unwrap().to_string());
    }
    let expected: HashSet<String> = (0..N).map(recipient).collect();
    assert_eq!(kinds["Delivery"], expected, "a delivery was not reported");
    assert_eq!(kinds["Reception"], expected, "a reception was not reported");
    // Distinct event ids: one Delivery per delivery the sink saw (a kill
    // may repeat a delivery, never lose one).
    let stats = receiver.stats();
    assert_eq!(stats["bad_signatures"], 0, "{stats}");
    let requests = stats["requests"].as_u64().unwrap();
    let posted = stats["events"].as_u64().unwrap();
    assert!(
        requests * 20 < posted,
        "batching: {requests} requests for {posted} events"
    );
    eprintln!(
        "{} events taken ({} distinct ids, {repeats} repeats; {at_kill} before the kill) in {requests} requests ({} taken); {} sink deliveries",
        events.len(),
        ids.len(),
        stats["taken"],
        sink.messages().len()
    );
    mta.kill().unwrap();
    mta.wait().unwrap();
}

/// One event the receiver refuses whenever it is in a batch (a 400),
/// while it takes the others: the batch is halved down to that event,
/// which is refused alone while the events after it are taken, so it
/// alone is kept (counted; listed by the admin API while the server
/// runs), and every other event arrives. Replayed once the receiver takes
/// it, it arrives too, and nothing is left kept.
#[test]
fn an_event_refused_alone_is_kept_and_replayed_while_the_rest_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let out = dir.path().join("events.jsonl");
    let receiver = Receiver::start(free_addr(), &secret, &out);
    receiver.mode("poison:r3@dest.test");
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let mut hook = webhook(format!("http://{}/hook", receiver.addr), &secret);
    hook.events = vec!["Delivery".into()];
    hook.batch_size = 10;
    hook.max_wait_ms = 2000;
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.events.webhook = vec![hook];
    });
    let admin = ts.admin_addr.unwrap();
    send_concurrently(ts.addr, 10, 1, |i| {
        (
            "a@sender.test".into(),
            recipient(i),
            "Subject: x\r\n\r\nx\r\n".into(),
        )
    });
    sink.wait_for(10, 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kept = serde_json::Value::Null;
    while taken(&out).len() < 9 || kept.as_array().is_none_or(|k| k.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "taken {:?}, kept {kept}",
            taken(&out).len()
        );
        std::thread::sleep(Duration::from_millis(50));
        kept = serde_json::from_str(
            &http(
                admin,
                b"GET /events/failed?webhook=app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .1,
        )
        .unwrap();
    }
    let got: HashSet<String> = taken(&out)
        .iter()
        .map(|e| e["recipient"].as_str().unwrap().to_string())
        .collect();
    let others: HashSet<String> = (0..10).filter(|&i| i != 3).map(recipient).collect();
    assert_eq!(got, others, "every event but the refused one arrives");
    let kept = kept.as_array().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["webhook"], "app");
    assert_eq!(kept[0]["event"]["recipient"], recipient(3));
    assert!(
        ts.metrics_text()
            .contains("ringpost_webhook_events_total{webhook=\"app\",result=\"refused\"} 1"),
        "{}",
        ts.metrics_text()
    );

    // The receiver is fixed: the operator replays, with the CLI.
    receiver.mode("ok");
    let replay = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["events-failed", "replay", "--webhook", "app", "--admin"])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains("1 events sent again"),
        "{replay:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !taken(&out)
        .iter()
        .any(|e| e["recipient"] == recipient(3).as_str())
    {
        assert!(
            Instant::now() < deadline,
            "the replayed event does not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ls = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["events-failed", "ls", "--admin"])
        .arg(admin.to_string())
        .output()
        .unwrap();
    assert!(ls.status.success(), "{ls:?}");
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "", "nothing is kept");
    assert_eq!(receiver.stats()["bad_signatures"], 0);
}

/// A receiver that answers 404 to everything for a while (a deploy, a
/// path briefly wrong) is down, not refusing: every event arrives once it
/// answers 200 again, and none is kept as failed. The window is
/// `RINGPOST_WEBHOOK_404_SECS` (default 5; the minute: 60).
#[test]
fn a_receiver_answering_404_for_a_while_loses_no_event() {
    let window: u64 = std::env::var("RINGPOST_WEBHOOK_404_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let out = dir.path().join("events.jsonl");
    let receiver = Receiver::start(free_addr(), &secret, &out);
    receiver.mode("refuse404");
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let hook = webhook(format!("http://{}/hook", receiver.addr), &secret);
    let ts = common::start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.events.webhook = vec![hook];
    });
    let started = Instant::now();
    send_concurrently(ts.addr, N, 4, |i| {
        (
            "a@sender.test".into(),
            recipient(i),
            "Subject: x\r\n\r\nx\r\n".into(),
        )
    });
    sink.wait_for(N, 30);
    std::thread::sleep(Duration::from_secs(window).saturating_sub(started.elapsed()));
    let refused_requests = receiver.stats()["requests"].as_u64().unwrap();
    assert_eq!(
        taken(&out).len(),
        0,
        "nothing is taken while it answers 404"
    );
    receiver.mode("ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    let want: HashSet<(String, String)> = (0..N)
        .flat_map(|i| [("Reception", i), ("Delivery", i)])
        .map(|(kind, i)| (kind.to_string(), recipient(i)))
        .collect();
    loop {
        let got: HashSet<(String, String)> = taken(&out)
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    e["recipient"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if got.is_superset(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events arrived",
            got.intersection(&want).count(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, kept) = http(
        ts.admin_addr.unwrap(),
        b"GET /events/failed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(kept.trim(), "[]", "nothing kept as failed");
    eprintln!(
        "404 for {:?}: {refused_requests} requests refused, then {} events expected, every one received",
        started.elapsed(),
        want.len()
    );
}

/// With the receiver down and `max_backlog` reached, new mail is deferred
/// (452 4.3.1) rather than events dropped; mail is taken again once the
/// receiver catches up.
#[test]
fn a_full_backlog_defers_mail_until_the_receiver_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let out = dir.path().join("events.jsonl");
    let receiver_addr = free_addr();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let hook = webhook(format!("http://{receiver_addr}/hook"), &secret);
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.events.webhook = vec![hook];
        c.events.max_backlog = 30;
    });
    let mut client = common::Client::connect(ts.addr);
    client.expect("EHLO app.test", 250);
    let mut taken_msgs = 0;
    let refusal = loop {
        let r = client.cmd("MAIL FROM:<a@sender.test>");
        if r.code != 250 {
            break r;
        }
        client.expect(&format!("RCPT TO:<{}>", recipient(taken_msgs)), 250);
        // A message under way when the backlog fills is still taken:
        // only new transactions are deferred.
        assert_eq!(client.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
        taken_msgs += 1;
        assert!(taken_msgs < 100, "never deferred");
    };
    assert_eq!(refusal.code, 452, "{}", refusal.text());
    assert!(refusal.text().contains("4.3.1"), "{}", refusal.text());
    // A Reception and a Delivery per message: about 15 messages.
    assert!((10..=30).contains(&taken_msgs), "{taken_msgs}");
    let _receiver = Receiver::start(receiver_addr, &secret, &out);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.cmd("MAIL FROM:<a@sender.test>");
        if r.code == 250 {
            break;
        }
        assert!(Instant::now() < deadline, "still deferred: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(taken(&out).len() >= 2 * taken_msgs);
}

/// An https receiver whose certificate chains to `ca_file` gets the
/// events, each with the application's `meta` (from a trusted client's
/// X-Ringpost-Meta header); one whose certificate does not gets nothing.
#[test]
fn https_receivers_are_verified_and_events_carry_meta() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let ca = common::sink::TestCa::new();
    let (cert, key) = ca.leaf_pem("localhost");
    let (cert_file, key_file, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let out = dir.path().join("events.jsonl");
    let receiver = Receiver::start_with(free_addr(), &secret, &out, &[&cert_file, &key_file]);
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let mut good = webhook(
        format!("https://localhost:{}/hook", receiver.addr.port()),
        &secret,
    );
    good.events = vec!["Delivery".into()];
    good.ca_file = ca_file.display().to_string();
    // The same receiver, but trusting only the Web PKI: refused.
    let mut untrusted = good.clone();
    untrusted.name = "untrusted".into();
    untrusted.ca_file = String::new();
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.events.webhook = vec![good, untrusted];
    });
    send_concurrently(ts.addr, 5, 1, |i| {
        (
            "a@sender.test".into(),
            recipient(i),
            format!("X-Ringpost-Meta: {{\"order\": {i}}}\r\nSubject: x\r\n\r\nx\r\n"),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken(&out).len() < 5 {
        assert!(Instant::now() < deadline, "no events over https");
        std::thread::sleep(Duration::from_millis(50));
    }
    for e in taken(&out) {
        let i: u64 = e["recipient"].as_str().unwrap()[1..]
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(e["meta"]["order"], i, "{e}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(taken(&out).len(), 5, "the untrusted webhook sent nothing");
    let metrics = ts.metrics_text();
    assert!(
        metrics
            .contains("ringpost_webhook_requests_total{webhook=\"untrusted\",result=\"failed\"}"),
        "{metrics}"
    );
}

/// With `on_backlog_full = "drop_oldest"` and the receiver away, mail is
/// still taken and the oldest events give way, counted.
#[test]
fn drop_oldest_keeps_taking_mail_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let receiver_addr = free_addr();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let hook = webhook(format!("http://{receiver_addr}/hook"), &secret);
    let ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.events.webhook = vec![hook];
        c.events.max_backlog = 20;
        c.events.on_backlog_full = ringpost::config::BacklogFull::DropOldest;
    });
    send_concurrently(ts.addr, 50, 2, |i| {
        (
            "a@sender.test".into(),
            recipient(i),
            "Subject: x\r\n\r\nx\r\n".into(),
        )
    });
    sink.wait_for(50, 30);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = ts.metrics_text();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringpost_events_dropped_total "))
        .expect("dropped events are counted")
        .trim()
        .parse()
        .unwrap();
    // 100 events (a Reception and a Delivery per message), 20 kept.
    assert_eq!(dropped, 80, "{metrics}");
    let out = dir.path().join("events.jsonl");
    let _receiver = Receiver::start(receiver_addr, &secret, &out);
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken(&out).len() < 20 {
        assert!(Instant::now() < deadline, "the kept events do not arrive");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let events = taken(&out);
    assert_eq!(events.len(), 20, "the newest 20 are kept");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "Delivery" && e["recipient"] == recipient(49).as_str())
    );
}
