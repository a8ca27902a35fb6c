//! Bulk actions by selector (`POST /queue/actions`, `ringpost queue
//! delete|bounce|flush|ls` with selector flags) against a running server
//! (two shards) whose next hop defers everything: a campaign's messages
//! are counted exactly by a dry run, deleted in steps (none of the others),
//! each with its Deletion event, and do not come back after a restart; a
//! bounce carries the operator's reason; a flush releases the deferred
//! ones; nothing is done without the expected count or `force`, or with
//! a selector that matches everything unless it says `all`. A bounce
//! rule (`queue bounce --for`) refuses new matching mail over SMTP (at
//! RCPT or after DATA) and injection, bounces queued mail it catches
//! without an attempt, survives a restart, ends by itself or when
//! lifted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{Client, TestServer, sink_port, start_with_clock};

/// A server whose mail goes to a sink that answers 451 (returned with
/// it); retries wait an hour; the delivery log is `log`.
fn server(log: &Path) -> (Sink, TestServer) {
    server_on(log, ringpost::shard::clock::Clock::System)
}

/// [`server`] on `clock`.
fn server_on(log: &Path, clock: ringpost::shard::clock::Clock) -> (Sink, TestServer) {
    let port = sink_port();
    let sink = Sink::start(
        "127.0.0.2",
        port,
        Script::temp_failing(usize::MAX, "451 4.3.0 later"),
    );
    let log = log.display().to_string();
    let ts = start_with_clock(2, clock, move |c| {
        c.delivery.smarthost = format!("[127.0.0.2]:{port}");
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.log = log;
    });
    (sink, ts)
}

/// `POST path` with a JSON `body` to `addr`: status and answer; None if
/// the server is gone (killed).
fn post_json(
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    use std::io::Write;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let text = common::read_http_answer(&mut s);
    let status = text.get(9..12)?.parse().ok()?;
    let answer = serde_json::from_str(text.split_once("\r\n\r\n")?.1).unwrap_or_default();
    Some((status, answer))
}

/// Injects one message to `rcpt` with `meta` (a JSON object) at `addr`:
/// its queue id.
fn inject_at(addr: std::net::SocketAddr, rcpt: &str, meta: serde_json::Value) -> String {
    let body = serde_json::json!({
        "envelope_sender": "app@shop.test",
        "recipients": [{"email": rcpt}],
        "content": "Subject: sale\r\n\r\nbuy\r\n",
        "meta": meta,
    });
    let (status, answer) = post_json(addr, "/api/inject/v1", &body).expect("injection answers");
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

fn inject(ts: &TestServer, rcpt: &str, meta: serde_json::Value) -> String {
    inject_at(ts.inject_addr.unwrap(), rcpt, meta)
}

/// `POST /queue/actions` with `body`: status and answer.
fn actions(ts: &TestServer, body: &serde_json::Value) -> (u16, serde_json::Value) {
    post_json(ts.admin_addr.unwrap(), "/queue/actions", body).expect("the admin API answers")
}

/// `ringpost queue <args> --admin ...`: (success, stdout, stderr).
fn cli(ts: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("queue")
        .args(args)
        .arg("--admin")
        .arg(ts.admin_addr.unwrap().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ringpost queue");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

/// Waits until every queued message has had its first attempt (deferred).
fn wait_deferred(ts: &TestServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, p) = actions(
            ts,
            &serde_json::json!({"action": "preview", "selector": {"state": "deferred"}}),
        );
        if p["messages"].as_u64() == Some(n as u64) {
            return;
        }
        assert!(Instant::now() < deadline, "not all deferred: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_campaign_is_counted_then_deleted_in_steps_and_stays_deleted() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (_sink, mut ts) = server(log.path());
    let mut spring = Vec::new();
    for i in 0..30 {
        let (domain, campaign) = if i % 3 == 0 {
            ("a.test", "spring")
        } else {
            ("b.test", "fall")
        };
        let id = inject(
            &ts,
            &format!("u{i}@{domain}"),
            serde_json::json!({"campaign": campaign}),
        );
        if campaign == "spring" {
            spring.push(id);
        }
    }
    wait_deferred(&ts, 30);

    // A dry run counts exactly and shows the oldest.
    let sel = serde_json::json!({"meta": "campaign=spring"});
    let (status, p) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": sel, "dry_run": true}),
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["messages"].as_u64(), p["recipients"].as_u64()),
        (Some(10), Some(10)),
        "{p}"
    );
    assert_eq!(p["examples"].as_array().unwrap().len(), 5);
    // Combined criteria: AND.
    let (_, p) = actions(
        &ts,
        &serde_json::json!({"action": "preview", "selector": {"meta": "campaign=fall", "domain": "A.TEST"}}),
    );
    assert_eq!(p["messages"], 0, "{p}");

    // Nothing without the expected count, or with another one.
    let (status, e) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": sel}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("10 match now"), "{e}");
    let (status, e) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": sel, "expect": 9}),
    );
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["matched"], 10);
    // Everything only when said.
    let (status, e) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": {}, "force": true}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("say all"), "{e}");
    let (status, e) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": {"campaign": "x"}, "force": true}),
    );
    assert_eq!(status, 400, "{e}");

    // In steps of at most 4 (2 a shard): the first call with the count, the rest
    // forced, until none is left.
    let (status, r) = actions(
        &ts,
        &serde_json::json!({"action": "delete", "selector": sel, "expect": 10, "limit": 4}),
    );
    assert_eq!(status, 200, "{r}");
    // (A shard with fewer than its 2 matching does fewer.)
    let mut done = r["done"].as_u64().unwrap();
    assert_eq!(r["matched"], 10, "{r}");
    assert!((1..=4).contains(&done), "{r}");
    assert_eq!(r["left"].as_u64(), Some(10 - done), "{r}");
    while done < 10 {
        let (_, r) = actions(
            &ts,
            &serde_json::json!({"action": "delete", "selector": sel, "force": true, "limit": 4}),
        );
        assert!(r["done"].as_u64().unwrap() > 0, "{r}");
        done += r["done"].as_u64().unwrap();
    }
    assert_eq!(done, 10);
    let (_, p) = actions(
        &ts,
        &serde_json::json!({"action": "preview", "selector": {"all": true}}),
    );
    assert_eq!(p["messages"], 20, "only the campaign went: {p}");
    // One Deletion event per deleted recipient, with the campaign's meta.
    let deletions = events(log.path(), "Deletion");
    assert_eq!(deletions.len(), 10);
    assert!(deletions.iter().all(|e| e["meta"]["campaign"] == "spring"));
    // Durable: after a restart the campaign is still gone.
    ts.restart();
    let (_, p) = actions(
        &ts,
        &serde_json::json!({"action": "preview", "selector": {"all": true}}),
    );
    assert_eq!(p["messages"], 20, "{p}");
    let queued: Vec<String> = ts
        .stop_and_list()
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert!(spring.iter().all(|id| !queued.contains(id)));
    assert_eq!(queued.len(), 20);
}

#[test]
fn the_cli_previews_asks_bounces_with_a_reason_and_flushes() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (_sink, ts) = server(log.path());
    for i in 0..12 {
        let domain = if i < 4 { "a.test" } else { "b.test" };
        inject(
            &ts,
            &format!("u{i}@{domain}"),
            serde_json::json!({"tenant": "acme"}),
        );
    }
    wait_deferred(&ts, 12);

    let (ok, out, _) = cli(&ts, &["delete", "--domain", "a.test", "--dry-run"]);
    assert!(ok);
    assert!(
        out.starts_with("4 messages (4 pending recipients) would be deleted"),
        "{out}"
    );
    // Not on a terminal, without --yes: nothing is done.
    let (ok, _, err) = cli(&ts, &["delete", "--domain", "a.test"]);
    assert!(!ok);
    assert!(err.contains("add --yes"), "{err}");
    let (ok, _, err) = cli(&ts, &["delete"]);
    assert!(!ok && err.contains("--all for every message"), "{err}");
    // `ls` with a selector.
    let (ok, out, _) = cli(
        &ts,
        &[
            "ls",
            "--meta",
            "tenant=acme",
            "--domain",
            "a.test",
            "--json",
        ],
    );
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4, "{out}");

    // A bounce with the operator's reason: in every Bounce event.
    let (ok, out, err) = cli(
        &ts,
        &[
            "bounce",
            "--domain",
            "a.test",
            "--reason",
            "wrong list",
            "--yes",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("4 messages returned to sender"), "{out}");
    let bounces = events(log.path(), "Bounce");
    assert_eq!(bounces.len(), 4, "{bounces:?}");
    assert!(
        bounces.iter().all(|e| e["reply"]
            .as_str()
            .unwrap()
            .ends_with("by the queue administrator: wrong list")),
        "{bounces:?}"
    );

    // A flush by selector releases the deferred ones now.
    let (ok, out, err) = cli(&ts, &["flush", "--meta", "tenant=acme", "--yes"]);
    assert!(ok, "{err}");
    assert!(out.contains("8 messages flushed"), "{out}");
    // The JSON report of a delete of all that is left: the 8 flushed
    // (some may be under an attempt: skipped as busy, and a re-run takes
    // them) and the bounce's DSNs to app@shop.test, queued as they come.
    let (ok, out, err) = cli(&ts, &["delete", "--all", "--yes", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (done, busy) = (
        report["done"].as_u64().unwrap(),
        report["busy"].as_u64().unwrap(),
    );
    assert!(done + busy >= 8, "{report}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = actions(
            &ts,
            &serde_json::json!({"action": "preview", "selector": {"all": true}}),
        );
        if p["messages"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {p}");
        std::thread::sleep(Duration::from_millis(200));
        let (ok, _, err) = cli(&ts, &["delete", "--all", "--yes"]);
        assert!(ok, "{err}");
    }
    assert_eq!(events(log.path(), "Deletion").len() as u64, 8 + 4);
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A bulk delete killed (SIGKILL) in the middle: every delete it reported
/// stays done, no other message is touched, and the same command run
/// again after the restart finishes the job.
#[test]
fn a_bulk_delete_killed_in_the_middle_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (smtp, inject_at_addr, admin) = (free_addr(), free_addr(), free_addr());
    let config = dir.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nhostname = \"bulk.test\"\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\nretry_initial_secs = 3600\nretry_max_secs = 3600\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"{admin}\"\n[inject]\nlisten = \"{inject_at_addr}\"\n",
            spool.display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, inject_at_addr);
    // 1,600 messages, every other one of the campaign, from 4 clients.
    let inject_one = move |i: usize| {
        let campaign = if i.is_multiple_of(2) {
            "spring"
        } else {
            "fall"
        };
        inject_at(
            inject_at_addr,
            &format!("u{i}@b.test"),
            serde_json::json!({"campaign": campaign}),
        );
    };
    let clients: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || (t..1600).step_by(4).for_each(inject_one)))
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let call = move |body: serde_json::Value| -> Option<serde_json::Value> {
        post_json(admin, "/queue/actions", &body).map(|(_, answer)| answer)
    };
    let sel = serde_json::json!({"meta": "campaign=spring"});
    let count = |sel: &serde_json::Value| {
        call(serde_json::json!({"action": "preview", "selector": sel}))
            .and_then(|p| p["messages"].as_u64())
    };
    assert_eq!(count(&sel), Some(800));
    // Deletes in steps of 100 until the kill; the deletes reported done.
    let deleting = std::thread::spawn(move || {
        let mut reported = 0;
        while let Some(r) = call(serde_json::json!({
            "action": "delete", "selector": sel, "force": true, "limit": 100,
        })) {
            reported += r["done"].as_u64().unwrap_or(0);
            if r["left"] == 0 {
                break;
            }
        }
        reported
    });
    // Killed while the deletes go on (after the first few steps).
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&serde_json::json!({"meta": "campaign=spring"})).is_some_and(|n| n > 500) {
        assert!(Instant::now() < deadline, "the deletes did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let reported = deleting.join().unwrap();
    let listed = |spool: &Path| -> (usize, usize) {
        let all = common::read_spool(spool);
        let spring = all
            .iter()
            .filter(|(_, env, _)| env.meta.as_ref().is_some_and(|m| m["campaign"] == "spring"))
            .count();
        (spring, all.len() - spring)
    };
    let (spring, fall) = listed(&spool);
    println!("killed: {reported} deletes reported, {spring} of the campaign left, {fall} others");
    assert_eq!(fall, 800, "no other message was touched");
    assert!(
        spring as u64 <= 800 - reported,
        "{spring} left, {reported} reported deleted"
    );
    assert!(spring < 800, "the kill came after some deletes");
    // Run again after the restart: the rest goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(inject_at_addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{inject_at_addr} still taken after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = common::spawn_binary(&config, inject_at_addr);
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args([
            "queue",
            "delete",
            "--meta",
            "campaign=spring",
            "--yes",
            "--admin",
        ])
        .arg(admin.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match spring {
        0 => assert!(text.contains("nothing to delete"), "{text}"),
        n => assert!(text.contains(&format!("{n} messages deleted")), "{text}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(listed(&spool), (0, 800));
}

/// An SMTP transaction from a trusted (loopback) client to `rcpt` with
/// the meta header `meta`: the reply to RCPT, and to the end of DATA if
/// RCPT was taken.
fn smtp_send(ts: &TestServer, rcpt: &str, meta: &str) -> (u16, Option<String>) {
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<app@shop.test>", 250);
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    if r.code != 250 {
        return (r.code, None);
    }
    let body = format!("X-Ringpost-Meta: {meta}\r\nSubject: sale\r\n\r\nbuy\r\n");
    let end = c.data(body.as_bytes());
    (r.code, Some(format!("{} {}", end.code, end.text())))
}

/// The injection's status and answer for one message to `rcpt`.
fn try_inject(ts: &TestServer, rcpt: &str, meta: serde_json::Value) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "envelope_sender": "app@shop.test",
        "recipients": [{"email": rcpt}],
        "content": "Subject: sale\r\n\r\nbuy\r\n",
        "meta": meta,
    });
    post_json(ts.inject_addr.unwrap(), "/api/inject/v1", &body).expect("injection answers")
}

#[test]
fn a_bounce_rule_catches_new_and_queued_mail_until_lifted_or_over() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let clock = ringpost::shard::clock::Clock::manual(2_000_000);
    let (sink, mut ts) = server_on(log.path(), clock.clone());
    for i in 0..6 {
        let campaign = if i < 4 { "spring" } else { "fall" };
        inject(
            &ts,
            &format!("u{i}@a.test"),
            serde_json::json!({ "campaign": campaign }),
        );
    }
    wait_deferred(&ts, 6);

    // The queued campaign bounced, and the rule in force for an hour.
    let (ok, out, err) = cli(
        &ts,
        &[
            "bounce",
            "--meta",
            "campaign=spring",
            "--reason",
            "wrong list",
            "--for",
            "1h",
            "--yes",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("bounce rule "), "{out}");
    assert!(out.contains("4 messages returned to sender"), "{out}");
    let id = out
        .split("bounce rule ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    // New mail of the campaign: refused after DATA (the meta is in the
    // header), and by the injection; other mail goes on.
    let (rcpt, end) = smtp_send(&ts, "new@a.test", r#"{"campaign":"spring"}"#);
    assert_eq!(rcpt, 250);
    let end = end.unwrap();
    assert!(
        end.starts_with("550 5.7.1 Refused by the administrator: wrong list"),
        "{end}"
    );
    let (status, answer) = try_inject(&ts, "new@a.test", serde_json::json!({"campaign": "spring"}));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("wrong list"),
        "{answer}"
    );
    let (_, end) = smtp_send(&ts, "new@a.test", r#"{"campaign":"fall"}"#);
    assert!(end.unwrap().starts_with("250 "));

    // A rule naming only the envelope refuses at RCPT (the domain in any
    // case), even with nothing queued to bounce.
    let (ok, out, err) = cli(
        &ts,
        &[
            "bounce",
            "--domain",
            "closed.test",
            "--reason",
            "shop closed",
            "--for",
            "10m",
            "--yes",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("bounce rule "), "{out}");
    assert_eq!(smtp_send(&ts, "x@CLOSED.test", "{}").0, 550);
    let (_, summary, _) = cli(&ts, &["summary"]);
    assert_eq!(summary.matches("-- bounce rule ").count(), 2, "{summary}");

    // Stored: both hold after a restart.
    ts.restart();
    assert_eq!(smtp_send(&ts, "x@closed.test", "{}").0, 550);
    let (status, _) = try_inject(&ts, "n2@a.test", serde_json::json!({"campaign": "spring"}));
    assert_eq!(status, 403);

    // Queued mail a new rule catches is bounced before any attempt: a
    // rule made through the API alone, then the fall messages flushed.
    let attempts = sink.messages().len();
    let rule = serde_json::json!({
        "selector": {"meta": "campaign=fall"}, "reason": "fall is off", "for_secs": 60,
    });
    let (status, made) = post_json(ts.admin_addr.unwrap(), "/queue/bounce-rules", &rule).unwrap();
    assert_eq!(status, 200, "{made}");
    let (ok, _, err) = cli(&ts, &["flush", "--meta", "campaign=fall", "--yes"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(log.path(), "Bounce")
        .iter()
        .filter(|e| e["reply"].as_str().unwrap().ends_with("fall is off"))
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the fall messages were not bounced"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sink.messages().len(), attempts, "no attempt for them");

    // The fall rule ends by itself after its 60 s (the clock driven);
    // the spring rule is lifted by its id; closed.test's holds.
    clock.advance(61);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&ts, &["summary"]).1.matches("-- bounce rule ").count() != 2 {
        assert!(Instant::now() < deadline, "the 60 s rule did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out, err) = cli(&ts, &["resume", "--rule", &id]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("bounce rule {id} lifted\n"));
    let (status, answer) = try_inject(&ts, "n3@a.test", serde_json::json!({"campaign": "spring"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(smtp_send(&ts, "x@closed.test", "{}").0, 550);
    // Bad rules are refused with the reason.
    let bad = serde_json::json!({"selector": {"state": "deferred"}, "reason": "x", "for_secs": 60});
    let (status, e) = post_json(ts.admin_addr.unwrap(), "/queue/bounce-rules", &bad).unwrap();
    assert_eq!(status, 400, "{e}");
    let (ok, _, err) = cli(
        &ts,
        &["bounce", "--domain", "a.test", "--for", "1h", "--yes"],
    );
    assert!(!ok && err.contains("--reason"), "{err}");
}
