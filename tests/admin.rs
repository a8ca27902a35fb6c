//! The admin API and `ringpost queue ...` against a running server (two
//! shards) that delivers to scripted sinks over static routes: every queue
//! command, through the real binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{TestServer, sink_port, start_with};
use mail_parser::{MessageParser, MimeHeaders};

/// A server whose mail for `hold.test` goes to 127.0.0.2 and for
/// `sender.test` (where bounces go) to 127.0.0.6, both on `port`. Retries
/// wait an hour, so a deferred message stays deferred unless flushed.
fn server(port: u16, tweak: impl FnOnce(&mut ringpost::config::Config)) -> TestServer {
    start_with(2, |c| {
        c.delivery.smarthost.clear();
        for (domain, ip) in [
            ("hold.test", "127.0.0.2"),
            ("b.test", "127.0.0.2"),
            ("sender.test", "127.0.0.6"),
        ] {
            c.delivery
                .routes
                .insert(domain.into(), format!("[{ip}]:{port}"));
        }
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.connect_timeout_secs = 2;
        tweak(c);
    })
}

/// A sink that answers every transaction with a 451.
fn always_451() -> Script {
    Script::temp_failing(usize::MAX, "451 4.3.0 try again later")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `ringpost queue <args> --admin <the server's admin address>`.
fn queue(ts: &TestServer, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("queue")
        .args(args)
        .arg("--admin")
        .arg(ts.admin_addr.expect("admin API on").to_string())
        .output()
        .expect("run ringpost queue");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `queue <args> --json`, which must succeed.
fn queue_json(ts: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let run = queue(ts, &args);
    assert!(run.ok, "queue {args:?}: {}", run.stderr);
    serde_json::from_str(&run.stdout).expect("JSON")
}

fn send(ts: &TestServer, from: &str, rcpts: &[&str], subject: &str) -> String {
    let mut c = ts.client();
    c.begin(from, rcpts);
    let r = c.data(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

/// Polls `queue show ID` until `pred` holds of the message (10 s at most).
fn wait_until(ts: &TestServer, id: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = queue_json(ts, &["show", id]);
        if pred(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "message never got there: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_deferred(m: &serde_json::Value) -> bool {
    m["state"] == "deferred"
}

#[test]
fn suspend_holds_delivery_and_resume_releases_it() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let ts = server(port, |_| {});
    let mut ts = ts;
    let run = queue(&ts, &["suspend", "Hold.Test"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, "Hold.Test: suspended until resumed\n");

    let id = send(&ts, "s@sender.test", &["a@hold.test"], "held");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 0, "nothing goes out while suspended");
    // The suspension is on disk: a restart keeps it.
    ts.restart();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sink.messages().len(), 0, "still suspended after a restart");
    let summary = queue_json(&ts, &["summary"]);
    assert_eq!(summary["messages"], 1);
    let d = &summary["domains"][0];
    assert_eq!(
        (
            &d["domain"],
            &d["messages"],
            &d["recipients"],
            &d["suspended"]
        ),
        (
            &"hold.test".into(),
            &1.into(),
            &1.into(),
            &serde_json::Value::Bool(true)
        )
    );
    let table = queue(&ts, &["summary"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hold.test") && l.contains("suspended")),
        "{table}"
    );
    let listed = queue_json(&ts, &["ls", "--domain", "hold.test"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    let run = queue(&ts, &["resume", "hold.test"]);
    assert!(run.ok, "{}", run.stderr);
    let got = sink.wait_for(1, 10);
    assert_eq!(got[0].rcpts, ["a@hold.test"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_json(&ts, &["summary"])["messages"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the delivered message stays queued"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn flush_retries_a_deferred_message_at_once() {
    let port = sink_port();
    let sink = Sink::start(
        "127.0.0.2",
        port,
        Script::temp_failing(1, "451 4.3.0 first try fails"),
    );
    let ts = server(port, |_| {});
    let id = send(&ts, "s@sender.test", &["a@hold.test"], "retry me");
    wait_until(&ts, &id, is_deferred);
    let m = queue_json(&ts, &["show", &id]);
    assert_eq!(m["attempts"], 1);
    assert_eq!(
        m["recipients"][0]["last_reply"],
        "451 4.3.0 first try fails"
    );
    assert!(
        m["next_attempt"].as_u64().unwrap() > ringpost::shard::clock::unix_now() + 3000,
        "the next retry is an hour away: {m}"
    );
    let summary = queue(&ts, &["summary"]).stdout;
    assert!(summary.contains("451 4.3.0 first try fails"), "{summary}");
    let counts = queue_json(&ts, &["summary"]);
    assert_eq!(
        (&counts["messages"], &counts["deferred"]),
        (&1.into(), &1.into()),
        "{counts}"
    );

    // Another domain's flush leaves it alone.
    let other = queue_json(&ts, &["flush", "--domain", "b.test"]);
    assert_eq!(other["flushed"], 0);
    // A suspended domain's message stays, and the flush says so and why.
    assert!(queue(&ts, &["suspend", "hold.test"]).ok);
    let run = queue(&ts, &["flush", "--domain", "hold.test"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "0 deferred messages flushed\n1 message held, not flushed:\n  {id}: domain hold.test is suspended\n"
        )
    );
    let held = queue_json(&ts, &["flush"]);
    assert_eq!(
        (&held["flushed"], &held["held"]),
        (&0.into(), &1.into()),
        "{held}"
    );
    assert!(queue(&ts, &["resume", "hold.test"]).ok);
    let run = queue(&ts, &["flush", "--domain", "hold.test"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, "1 deferred message flushed\n");
    let got = sink.wait_for(1, 5);
    assert_eq!(got[0].rcpts, ["a@hold.test"]);
    // Delivered: the running totals go back to nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = queue_json(&ts, &["summary"]);
        if s["messages"] == 0 && s["domains"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "still counted: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn delete_removes_a_message_for_good() {
    let port = sink_port();
    let _sink = Sink::start("127.0.0.2", port, always_451());
    let mut ts = server(port, |_| {});
    let id = send(&ts, "s@sender.test", &["a@hold.test"], "unwanted");
    let keep = send(&ts, "s@sender.test", &["b@hold.test"], "wanted");
    wait_until(&ts, &id, is_deferred);

    let run = queue(&ts, &["delete", &id]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{id}: deleted\n"));
    let listed = queue_json(&ts, &["ls"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [keep.as_str()]);
    let s = queue_json(&ts, &["summary"]);
    assert_eq!(
        (
            &s["messages"],
            &s["recipients"],
            &s["domains"][0]["messages"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "only the kept message is counted: {s}"
    );
    let again = queue(&ts, &["show", &id]);
    assert!(!again.ok);
    assert!(
        again.stderr.contains(&format!("no queued message {id}")) && again.stderr.contains("404"),
        "{}",
        again.stderr
    );
    let bad = queue(&ts, &["delete", "not-an-id"]);
    assert!(!bad.ok && bad.stderr.contains("400"), "{}", bad.stderr);

    let left: Vec<String> = ts
        .stop_and_list()
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(left, [keep], "the deleted message is gone from disk");
}

#[test]
fn bounce_returns_a_message_to_its_sender_with_a_dsn() {
    let port = sink_port();
    let _dest = Sink::start("127.0.0.2", port, always_451());
    let sender = Sink::start("127.0.0.6", port, Script::default());
    let ts = server(port, |_| {});
    let id = send(&ts, "shop@sender.test", &["a@hold.test"], "give up");
    wait_until(&ts, &id, is_deferred);

    let run = queue(&ts, &["bounce", &id]);
    assert!(run.ok, "{}", run.stderr);
    let dsn = &sender.wait_for(1, 10)[0];
    assert_eq!(dsn.from, "");
    assert_eq!(dsn.rcpts, ["shop@sender.test"]);
    let parsed = MessageParser::default().parse(&dsn.data).unwrap();
    let ct = parsed.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; a@hold.test"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.0.0"), "{text}");
    let gone = queue(&ts, &["show", &id]);
    assert!(!gone.ok, "the bounced message left the queue");
}

#[test]
fn summary_counts_messages_per_domain_and_show_gives_headers() {
    let port = sink_port();
    let ts = server(port, |_| {});
    for d in ["hold.test", "b.test"] {
        assert!(queue(&ts, &["suspend", d]).ok);
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        // Separate connections, so both shards take some.
        let rcpts: &[&str] = match i {
            0 => &["x@hold.test"],
            1 => &["y@hold.test", "p@b.test", "q@b.test"],
            _ => &["z@HOLD.test", "r@b.test"],
        };
        ids.push(send(&ts, "s@sender.test", rcpts, &format!("hello {i}")));
    }
    let s = queue_json(&ts, &["summary"]);
    assert_eq!((&s["messages"], &s["recipients"]), (&3.into(), &6.into()));
    let by_name = |name: &str| {
        s["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {s}"))
            .clone()
    };
    let hold = by_name("hold.test");
    assert_eq!(
        (&hold["messages"], &hold["recipients"]),
        (&3.into(), &3.into())
    );
    let b = by_name("b.test");
    assert_eq!((&b["messages"], &b["recipients"]), (&2.into(), &3.into()));

    let listed = queue_json(&ts, &["ls", "--domain", "b.test"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let limited = queue_json(&ts, &["ls", "--limit", "1"]);
    assert_eq!(limited.as_array().unwrap().len(), 1);
    assert_eq!(limited[0]["id"], ids[0].as_str(), "oldest first");

    let shown = queue(&ts, &["show", &ids[1]]);
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("Subject: hello 1"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("Received: from"), "{}", shown.stdout);
    assert!(shown.stdout.contains("p@b.test"), "{}", shown.stdout);
    let table = queue(&ts, &["ls"]).stdout;
    assert_eq!(
        table.lines().count(),
        5,
        "header, three messages, total: {table}"
    );
}

/// A raw HTTP request to the admin API: (status, body).
fn http(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    common::http(addr, head.as_bytes())
}

#[test]
fn a_configured_token_is_required_and_errors_are_json() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").unwrap();
    let token_path = token_file.display().to_string();
    let ts = server(sink_port(), |c| c.admin.token_file = token_path.clone());

    let without = queue(&ts, &["summary"]);
    assert!(!without.ok);
    assert!(without.stderr.contains("401"), "{}", without.stderr);
    let with = queue(&ts, &["summary", "--token-file", &token_path]);
    assert!(with.ok, "{}", with.stderr);

    let addr = ts.admin_addr.unwrap();
    let auth = "Authorization: Bearer correct-horse-battery-staple\r\n";
    let (status, body) = http(
        addr,
        "GET /queue/summary HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n",
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(addr, &format!("GET /nothing HTTP/1.1\r\n{auth}\r\n"));
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, _) = http(addr, &format!("PUT /queue/flush HTTP/1.1\r\n{auth}\r\n"));
    assert_eq!(status, 405);
    let (status, _) = http(
        addr,
        &format!("GET /queue/messages?limit=x HTTP/1.1\r\n{auth}\r\n"),
    );
    assert_eq!(status, 400);
    let (status, _) = http(addr, "garbage\r\n\r\n");
    assert_eq!(status, 400);
}

/// `queue suspend --for`: the suspension ends by itself when its time is
/// up, by the server's clock (here a manual one), also across a restart;
/// `queue ls` says why a message waits.
#[test]
fn a_timed_suspension_ends_by_itself() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let clock = ringpost::shard::clock::Clock::manual(1_000_000);
    let mut ts = common::start_with_clock(2, clock.clone(), |c| {
        c.delivery.smarthost = format!("[127.0.0.2]:{port}");
    });
    let run = queue(&ts, &["suspend", "hold.test", "--for", "1h"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, "hold.test: suspended for 1h0m\n");
    let summary = queue_json(&ts, &["summary"]);
    assert_eq!(summary["domains"][0]["suspended_until"], 1_000_000 + 3600);
    send(&ts, "s@sender.test", &["a@hold.test"], "timed");
    let table = queue(&ts, &["ls"]).stdout;
    assert!(table.contains("suspended"), "{table}");
    ts.restart();
    clock.advance(3599);
    std::thread::sleep(Duration::from_millis(800));
    assert!(sink.messages().is_empty(), "a second early");
    clock.advance(1);
    assert_eq!(sink.wait_for(1, 5)[0].rcpts, ["a@hold.test"]);
    // Every shard ends its copy of the suspension at its next tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let summary = queue_json(&ts, &["summary"]);
        if summary["domains"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still suspended: {summary}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `queue trace ID`: every event of one message from the delivery log, in
/// order, and where it stands; a message still queued after a deferral
/// shows both, one delivered after a flush shows the whole story.
#[test]
fn trace_shows_every_event_of_a_message_in_order() {
    let port = sink_port();
    let sink = Sink::start(
        "127.0.0.2",
        port,
        Script::temp_failing(1, "451 4.3.0 try again later"),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_str().unwrap().to_string();
    let ts = server(port, |c| c.delivery.log = log_path);
    let id = send(&ts, "a@sender.test", &["x@hold.test", "y@b.test"], "traced");
    let other = send(&ts, "a@sender.test", &["z@hold.test"], "not traced");
    // Wait for the first round: one recipient deferred, one delivered
    // (which of the two domains met the 451 depends on who came first).
    let deadline = Instant::now() + Duration::from_secs(20);
    let deferred = loop {
        let t = queue_json(&ts, &["trace", &id]);
        let kinds: Vec<String> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        if kinds.iter().any(|k| k == "TransientFailure")
            && kinds.len() >= 4
            && t["queued"]["state"] == "deferred"
        {
            break t;
        }
        assert!(Instant::now() < deadline, "{t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(deferred["id"], id.as_str());
    assert_eq!(deferred["queued"]["state"], "deferred", "{deferred}");
    let events = deferred["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["id"] == id.as_str()),
        "only its own"
    );
    assert_eq!(events[0]["event"], "Reception");
    queue(&ts, &["flush"]);
    sink.wait_for(3, 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = queue(&ts, &["trace", &id]);
        assert!(run.ok, "{}", run.stderr);
        if run.stdout.contains("left the queue") {
            let lines: Vec<&str> = run.stdout.lines().collect();
            assert_eq!(lines[0], id);
            // The event lines (a time first), then what became of it.
            let is_event = |l: &&&str| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|t| t.ends_with('Z'))
            };
            let order: Vec<&str> = lines[1..]
                .iter()
                .filter(is_event)
                .filter_map(|l| l.split_whitespace().nth(1))
                .collect();
            // The two domains' first attempts run side by side, so the
            // deferral and the first delivery may come in either order;
            // the retry's delivery comes last, and times never go back.
            assert_eq!(order.len(), 5, "{}", run.stdout);
            assert_eq!(order[..2], ["Reception", "Reception"], "{}", run.stdout);
            let mut middle = order[2..4].to_vec();
            middle.sort();
            assert_eq!(middle, ["Delivery", "TransientFailure"], "{}", run.stdout);
            assert_eq!(order[4], "Delivery", "{}", run.stdout);
            let times: Vec<&str> = lines[1..]
                .iter()
                .filter(is_event)
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{}", run.stdout);
            assert!(
                run.stdout.contains("451 4.3.0 try again later"),
                "{}",
                run.stdout
            );
            // The history's record: both delivered, the deferred one at
            // its second attempt.
            let tail = &run.stdout[run.stdout.find("left the queue").unwrap()..];
            assert_eq!(tail.matches("delivered  2 attempt(s)").count(), 1, "{tail}");
            assert_eq!(tail.matches("delivered  1 attempt(s)").count(), 1, "{tail}");
            break;
        }
        assert!(Instant::now() < deadline, "{}", run.stdout);
        std::thread::sleep(Duration::from_millis(100));
    }
    // An id nobody has seen: a clear 404.
    let run = queue(&ts, &["trace", "0123456789abcdef0123456789abcdef"]);
    assert!(
        !run.ok && run.stderr.contains("not queued"),
        "{}",
        run.stderr
    );
    let _ = other;
}
