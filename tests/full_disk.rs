//! A full spool: the spool on a small tmpfs the test mounts, filled by
//! SMTP and HTTP clients while the next hop defers everything. Reception
//! stops with 452 4.3.1 / 507 (the reserve) or 451 / 503 (the disk itself
//! full, with no reserve); the server stays up; an admin delete works and
//! frees space; reception resumes when space comes back; after a restart
//! every acknowledged message is queued and no refused one is.
//!
//! Needs root (it mounts tmpfs); `.ci/run` runs the tests as root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::{Script, Sink};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What each client was told, by the message's subject.
#[derive(Default)]
struct Outcomes {
    /// Subject -> queue id.
    accepted: BTreeMap<String, String>,
    refused: BTreeSet<String>,
    /// The refusal replies seen (code and enhanced code).
    replies: BTreeSet<String>,
}

fn smtp_send(addr: SocketAddr, subject: &str, size: usize) -> Result<String, String> {
    let mut c = common::Client::connect(addr);
    c.expect("EHLO full.test", 250);
    let mail = c.cmd("MAIL FROM:<a@b.example>");
    if mail.code != 250 {
        return Err(format!("{} {}", mail.code, mail.text()));
    }
    c.expect("RCPT TO:<x@y.example>", 250);
    let body = format!("Subject: {subject}\r\n\r\n{}\r\n", "x".repeat(size));
    let r = c.data(body.as_bytes());
    match r.code {
        250 => Ok(r.queued_id()),
        code => Err(format!("{code} {}", r.text())),
    }
}

fn http_send(addr: SocketAddr, subject: &str, size: usize) -> Result<String, String> {
    let body = serde_json::json!({
        "envelope_sender": "a@b.example",
        "recipients": [{"email": "x@y.example"}],
        "content": format!("Subject: {subject}\r\n\r\n{}\r\n", "x".repeat(size)),
    })
    .to_string();
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /api/inject/v1 HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status: u16 = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json: serde_json::Value = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or_default();
    match status {
        200 => Ok(json["id"].as_str().unwrap_or("").to_string()),
        code => Err(format!("{code}")),
    }
}

/// Sends from SMTP and HTTP clients until each has been refused a few
/// times in a row.
fn fill(ts: &common::TestServer, round: &str) -> Outcomes {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let (smtp, http) = (ts.addr, ts.inject_addr.unwrap());
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let outcomes = outcomes.clone();
            let round = round.to_string();
            std::thread::spawn(move || {
                let (mut refusals, started) = (0, Instant::now());
                for n in 0.. {
                    if refusals >= 5 || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let subject = format!("{round}-{t}-{n}");
                    let sent = match t % 3 {
                        0 => http_send(http, &subject, 20_000),
                        _ => smtp_send(smtp, &subject, 20_000),
                    };
                    let mut o = outcomes.lock().unwrap();
                    match sent {
                        Ok(id) => {
                            refusals = 0;
                            o.accepted.insert(subject, id);
                        }
                        Err(reply) => {
                            refusals += 1;
                            o.refused.insert(subject);
                            o.replies.insert(reply.chars().take(9).collect());
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    Arc::try_unwrap(outcomes)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
}

/// Subjects of the queued messages, read from a stopped server's spool.
fn queued_subjects(spool: &Path) -> BTreeSet<String> {
    common::read_spool(spool)
        .iter()
        .filter_map(|(_, _, body)| {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().find(|l| l.starts_with("Subject: "))?;
            Some(line["Subject: ".len()..].to_string())
        })
        .collect()
}

fn run(reserve: u64, segment: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&tmp.path().join("spool"), 48);
    let port = common::sink_port();
    let _next_hop = Sink::start(
        "127.0.0.2",
        port,
        Script::temp_failing(usize::MAX, "451 4.3.0 not today"),
    );
    let spool = mount.0.clone();
    let mut ts = common::start_with(2, |c| {
        c.spool.dir = spool;
        c.spool.segment_bytes = segment;
        c.spool.cache_bytes = 4 << 20;
        c.spool.min_free_bytes = reserve;
        c.delivery.smarthost = format!("[127.0.0.2]:{port}");
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
    });
    let round = format!("r{reserve}");
    let o = fill(&ts, &round);
    assert!(o.accepted.len() > 100, "{} accepted", o.accepted.len());
    assert!(!o.refused.is_empty());
    let want: &[&str] = match reserve {
        0 => &["451 4.3.0", "503", "452 4.3.1", "507"],
        _ => &["452 4.3.1", "507"],
    };
    for r in &o.replies {
        assert!(
            want.contains(&r.as_str()),
            "refused with {r:?}, expected one of {want:?}"
        );
    }
    // Still serving.
    common::Client::connect(ts.addr).expect("NOOP", 250);

    // A delete while full works with a reserve, and is on disk when it
    // says so; without one it may fail, and then it says so.
    let (deleted_subject, deleted_id) = o.accepted.iter().next().unwrap();
    let (status, body) = common::http(
        ts.admin_addr.unwrap(),
        format!("DELETE /queue/messages/{deleted_id} HTTP/1.1\r\n\r\n").as_bytes(),
    );
    let deleted = status == 200;
    match reserve {
        0 => assert!(deleted || status == 500, "{status} {body}"),
        _ => assert!(deleted, "{status} {body}"),
    }

    // Space comes back: reception resumes by itself with a reserve (the
    // queue index never saw the disk full); without one, after a restart.
    mount.resize(200);
    if reserve == 0 {
        ts.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let resumed = loop {
        match smtp_send(ts.addr, &format!("{round}-after"), 100) {
            Ok(id) => break id,
            Err(r) => assert!(Instant::now() < deadline, "still refused: {r}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!resumed.is_empty());

    ts.restart();
    ts.stop();
    let queued = queued_subjects(&ts.spool_dir);
    for subject in o
        .accepted
        .keys()
        .filter(|s| !deleted || *s != deleted_subject)
    {
        assert!(queued.contains(subject), "acknowledged {subject} was lost");
    }
    assert!(
        !deleted || !queued.contains(deleted_subject),
        "the deleted message came back"
    );
    let back: Vec<_> = o.refused.intersection(&queued).collect();
    assert!(back.is_empty(), "refused messages were queued: {back:?}");
    drop(ts);
}

#[test]
fn a_full_spool_with_a_reserve_refuses_early_and_loses_nothing() {
    run(8 << 20, 1 << 20);
}

/// Without a reserve the disk itself fills: frames written into segments
/// made ahead of time are whole on disk when their commit fails (the queue
/// index cannot write), and must not come back as messages after a
/// restart (they did, before refused frames were voided).
#[test]
fn a_spool_that_runs_out_of_space_refuses_and_brings_nothing_back() {
    run(0, 16 << 20);
}
