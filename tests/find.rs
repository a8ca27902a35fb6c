//! `ringpost queue find` and `queue trace` against a running server (two
//! shards, a manual clock, the delivery log off): messages found by every
//! key while queued and after they left, with the remote's reply, through
//! a restart, and forgotten when `[history]` says so.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{TestServer, sink_port, start_with_clock};
use ringpost::shard::clock::Clock;

const START: u64 = 1_800_000_000;

/// A server whose mail for `ok.test` goes to a sink that takes it, for
/// `slow.test` to one that answers 451 and for `gone.test` to one that
/// refuses `nobody@gone.test`; retries wait an hour.
fn server(clock: &Clock, port: u16) -> TestServer {
    start_with_clock(2, clock.clone(), |c| {
        c.delivery.smarthost.clear();
        for (domain, ip) in [
            ("ok.test", "127.0.0.2"),
            ("slow.test", "127.0.0.3"),
            ("gone.test", "127.0.0.4"),
        ] {
            c.delivery
                .routes
                .insert(domain.into(), format!("[{ip}]:{port}"));
        }
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.connect_timeout_secs = 2;
    })
}

/// `ringpost queue <args> --admin ...`: its stdout, which must be a
/// success.
fn queue(ts: &TestServer, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("queue")
        .args(args)
        .arg("--admin")
        .arg(ts.admin_addr.expect("admin API on").to_string())
        .output()
        .expect("run ringpost queue");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "queue {args:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn find(ts: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["find"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&queue(ts, &all)).expect("JSON")
}

fn send(ts: &TestServer, rcpts: &[&str], header: &str) -> String {
    let mut c = ts.client();
    c.begin("App@Shop.test", rcpts);
    let r = c.data(format!("{header}Subject: reset\r\n\r\nyour code\r\n").as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

/// Polls until `key` finds message `id` in `state` (20 s at most).
fn wait_state(ts: &TestServer, key: &[&str], id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = find(ts, key);
        let hit = found["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned();
        if let Some(m) = hit.filter(|m| m["state"] == state) {
            return m;
        }
        assert!(Instant::now() < deadline, "{id} never {state}: {found}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_message_is_found_by_every_key_queued_and_after_it_left_with_the_remote_reply() {
    let port = sink_port();
    let _ok = Sink::start("127.0.0.2", port, Script::default());
    let _slow = Sink::start(
        "127.0.0.3",
        port,
        Script::temp_failing(usize::MAX, "451 4.7.1 greylisted, come back later"),
    );
    let mut gone = Script::default();
    gone.reject_rcpts.insert("nobody@gone.test".into());
    let _gone = Sink::start("127.0.0.4", port, gone);
    let clock = Clock::manual(START);
    let mut ts = server(&clock, port);

    // Delivered: found by recipient (the domain in another case), sender,
    // Message-ID and meta, with the sink's reply; then an hour passes.
    let header = "Message-ID: <reset-1@shop.test>\r\nX-Ringpost-Meta: {\"campaign\": \"resets\", \"user\": 42}\r\n";
    let delivered = send(&ts, &["Bob@ok.test"], header);
    let hit = wait_state(&ts, &["--rcpt", "Bob@OK.TEST"], &delivered, "finished");
    let rcpt = &hit["finished"]["recipients"][0];
    assert_eq!(rcpt["address"], "Bob@ok.test");
    assert_eq!(rcpt["outcome"], "delivered");
    assert_eq!(rcpt["reply"], "250 2.0.0 queued", "{hit}");
    assert_eq!(hit["finished"]["message_id"], "reset-1@shop.test");
    assert_eq!(hit["finished"]["finished"], START);
    clock.advance(3600);
    for key in [
        ["--sender", "App@shop.test"],
        ["--message-id", "<reset-1@shop.test>"],
        ["--meta", "campaign=resets"],
        ["--meta", "user=42"],
    ] {
        let found = find(&ts, &key);
        assert_eq!(
            found["messages"][0]["id"],
            delivered.as_str(),
            "{key:?}: {found}"
        );
    }
    // Not found by a local part in another case, nor within the last 30
    // minutes.
    assert_eq!(
        find(&ts, &["--rcpt", "bob@ok.test"])["messages"],
        serde_json::json!([])
    );
    let recent = find(&ts, &["--rcpt", "Bob@ok.test", "--since", "30m"]);
    assert_eq!(recent["messages"], serde_json::json!([]), "{recent}");
    // The terminal view says what happened, and trace says it without a
    // delivery log.
    let text = queue(&ts, &["find", "--rcpt", "Bob@ok.test"]);
    assert!(text.contains("left the queue 1h0m ago"), "{text}");
    assert!(text.contains("delivered"), "{text}");
    let trace = queue(&ts, &["trace", &delivered]);
    assert!(trace.contains("250 2.0.0 queued"), "{trace}");

    // Deferred: found queued, with its state and the remote's last reply.
    let deferred = send(&ts, &["carol@slow.test"], "");
    let hit = wait_state(&ts, &["--rcpt", "carol@slow.test"], &deferred, "deferred");
    let r = &hit["queued"]["recipients"][0];
    assert_eq!(
        r["last_reply"], "451 4.7.1 greylisted, come back later",
        "{hit}"
    );
    assert!(hit["queued"]["next_attempt"].as_u64().unwrap() > START + 3600);
    // Every attribute of it is shown: its lane, the site and source of
    // its last attempt, its Message-ID (added: the client is trusted).
    let shown: serde_json::Value =
        serde_json::from_str(&queue(&ts, &["show", &deferred, "--json"])).unwrap();
    assert_eq!(shown["priority"], "normal", "{shown}");
    assert!(shown["recipients"][0]["site"].is_string(), "{shown}");
    assert!(
        shown["message_id"].as_str().unwrap().starts_with(&deferred),
        "{shown}"
    );
    let text = queue(&ts, &["show", &deferred]);
    assert!(
        text.contains("priority:  normal") && text.contains("pool:      (default)"),
        "{text}"
    );

    // Bounced: the remote's reply and its category.
    let bounced = send(&ts, &["nobody@gone.test"], "");
    let hit = wait_state(&ts, &["--rcpt", "nobody@gone.test"], &bounced, "finished");
    let r = &hit["finished"]["recipients"][0];
    assert_eq!(r["outcome"], "bounced", "{hit}");
    assert!(
        r["reply"].as_str().unwrap().starts_with("550 5.1.1"),
        "{hit}"
    );
    assert_eq!(r["category"], "InvalidRecipient", "{hit}");
    // ...and the suppression list it is on now.
    let found = find(&ts, &["--rcpt", "nobody@gone.test"]);
    assert_eq!(found["suppressed"]["reason"], "InvalidRecipient", "{found}");

    // Deleted by the administrator: its outcome says so.
    queue(&ts, &["delete", &deferred]);
    let hit = wait_state(&ts, &["--rcpt", "carol@slow.test"], &deferred, "finished");
    assert_eq!(hit["finished"]["recipients"][0]["outcome"], "deleted");

    // A restart keeps the history, and the queue's index is rebuilt.
    let requeued = send(&ts, &["dave@slow.test"], "");
    wait_state(&ts, &["--rcpt", "dave@slow.test"], &requeued, "deferred");
    ts.restart();
    let found = find(&ts, &["--sender", "App@SHOP.test"]);
    let ids: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // Queued first, then the newest finished.
    assert_eq!(ids[0], requeued, "{found}");
    let mut finished = ids[1..].to_vec();
    finished.sort();
    let mut expected = vec![delivered.as_str(), bounced.as_str(), deferred.as_str()];
    expected.sort();
    assert_eq!(finished, expected, "{found}");
}

#[test]
fn history_is_forgotten_after_its_age_and_bad_lookups_get_a_clear_error() {
    let port = sink_port();
    let _ok = Sink::start("127.0.0.2", port, Script::default());
    let clock = Clock::manual(START);
    let ts = server(&clock, port);
    let id = send(&ts, &["erin@ok.test"], "");
    wait_state(&ts, &["--rcpt", "erin@ok.test"], &id, "finished");
    // Seven days and a second later, the timer drops the record.
    clock.advance(7 * 86_400 + 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !find(&ts, &["--rcpt", "erin@ok.test"])["messages"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the record was never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An injection's Idempotency-Key finds its message.
    let body = serde_json::to_vec(&serde_json::json!({
        "envelope_sender": "app@shop.test",
        "recipients": [{"email": "frank@ok.test"}],
        "content": "Subject: receipt\n\nthanks\n",
    }))
    .unwrap();
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nIdempotency-Key: order-77\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, answer) = common::http(ts.inject_addr.unwrap(), &req);
    assert_eq!(status, 200, "{answer}");
    let injected: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = injected["id"].as_str().unwrap();
    wait_state(&ts, &["--idempotency-key", "order-77"], id, "finished");
    let admin = ts.admin_addr.unwrap();
    for (target, why) in [
        ("/queue/find", "name a key"),
        ("/queue/find?rcpt=a@b&sender=c@d", "one key per lookup"),
        ("/queue/find?subject=x", "name a key"),
        ("/queue/find?meta=campaign", "KEY=VALUE"),
        ("/queue/find?rcpt=a@b&limit=0", "limit"),
    ] {
        let (status, body) = common::http(
            admin,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains(why), "{target}: {body}");
    }
}
