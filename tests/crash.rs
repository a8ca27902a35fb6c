//! Durability under SIGKILL: every message that got a 250 (SMTP) or a 200
//! (HTTP injection) is in the spool after a crash and a restart. Runs the
//! real binary as a child process.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 24;
const MESSAGES_PER_CONNECTION: usize = 150;
const KILL_AFTER_ACKS: usize = 1200;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends messages on one connection until it fails; records (id, token)
/// for every 250 received.
fn sender(
    addr: SocketAddr,
    conn: usize,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut read_reply = || -> Option<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.len() < 4 {
                return None;
            }
            if line.as_bytes()[3] == b' ' {
                return Some(line);
            }
        }
    };
    if read_reply().is_none()
        || w.write_all(b"EHLO crash.test\r\n").is_err()
        || read_reply().is_none()
    {
        return;
    }
    for n in 0..MESSAGES_PER_CONNECTION {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let token = format!("token-{conn}-{n}");
        let msg = format!(
            "MAIL FROM:<s@crash.test>\r\nRCPT TO:<r{conn}@dest.example>\r\nDATA\r\n\
             Subject: {token}\r\n\r\n{}\r\n.\r\n",
            "x".repeat(2000)
        );
        if w.write_all(msg.as_bytes()).is_err() {
            return;
        }
        for _ in 0..3 {
            if read_reply().is_none() {
                return;
            }
        }
        let Some(last) = read_reply() else { return };
        if let Some(id) = last.trim_end().strip_prefix("250 2.0.0 Ok: queued as ") {
            acked.lock().unwrap().push((id.to_string(), token));
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            return;
        }
    }
}

/// The tests here pick free ports by binding and letting go, then start
/// a server on them: run side by side, one test's client connections (or
/// its server) could take the other's chosen port (seen once: an SMTP
/// test whose clients got no 250 for 120 s). They take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Both `spool.sync` modes, one after the other (see [`ONE_AT_A_TIME`]).
#[test]
fn no_acknowledged_message_is_lost_on_sigkill() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    sigkill_mid_stream("inline");
    sigkill_mid_stream("io_uring");
}

/// Kills the server with SIGKILL while 24 clients send, restarts it, and
/// checks that every acknowledged message is in the spool, whole.
/// `sync`: the `spool.sync` mode under test.
fn sigkill_mid_stream(sync: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_config(tmp.path(), &spool, sync, addr, "off");
    let mut child = common::spawn_binary(&config, addr);
    let acked = kill_mid_stream(&mut child, addr, CONNECTIONS, sender, KILL_AFTER_ACKS);
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        acked.len() < CONNECTIONS * MESSAGES_PER_CONNECTION,
        "the kill must land mid-stream for this test to mean anything"
    );

    restart_and_check(&config, addr, &spool, &acked);
}

/// Injects messages over HTTP, one request per connection, until one
/// fails; records (id, token) for every 200.
fn injector(
    addr: SocketAddr,
    thread: usize,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let token = format!("injected-{thread}-{n}");
        let body = serde_json::to_vec(&serde_json::json!({
            "envelope_sender": "s@crash.test",
            "recipients": [{ "email": format!("r{thread}@dest.example") }],
            "content": format!("Subject: {token}\n\n{}\n", "x".repeat(2000)),
        }))
        .unwrap();
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return;
        };
        let head = format!(
            "POST /api/inject/v1 HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut answer = String::new();
        if stream.write_all(head.as_bytes()).is_err()
            || stream.write_all(&body).is_err()
            || std::io::Read::read_to_string(&mut stream, &mut answer).is_err()
        {
            return;
        }
        // A 200 whose body did not arrive whole (the kill) is not an
        // acknowledgement the client could act on.
        let id = answer
            .strip_prefix("HTTP/1.1 200")
            .and_then(|a| a.split_once("\r\n\r\n"))
            .and_then(|(_, json)| serde_json::from_str::<serde_json::Value>(json).ok())
            .and_then(|v| v["id"].as_str().map(str::to_string));
        let Some(id) = id else { return };
        acked.lock().unwrap().push((id, token));
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// As for SMTP: 8 clients inject over HTTP, SIGKILL after 300 answers of
/// 200, restart, and every one of them is in the spool.
#[test]
fn no_injected_message_is_lost_on_sigkill() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const INJECTORS: usize = 8;
    const KILL_AFTER: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let inject: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(tmp.path(), &spool, "inline", addr, &inject.to_string());
    let mut child = common::spawn_binary(&config, inject);
    let acked = kill_mid_stream(&mut child, inject, INJECTORS, injector, KILL_AFTER);
    assert!(acked.len() >= KILL_AFTER);
    // The restart needs only SMTP (its readiness is checked there).
    let config = write_config(tmp.path(), &spool, "inline", addr, "off");
    restart_and_check(&config, addr, &spool, &acked);
}

/// A client thread: sends to `addr` as client number `n` until it fails or
/// `stop` is set, recording (id, token) for each acknowledged message.
type ClientFn =
    fn(SocketAddr, usize, Arc<Mutex<Vec<(String, String)>>>, Arc<AtomicUsize>, Arc<AtomicBool>);

/// Runs `clients` threads of `client` against `addr`, SIGKILLs `child` once
/// `kill_after` messages are acknowledged, and returns every (id, token)
/// acknowledged before the kill.
fn kill_mid_stream(
    child: &mut std::process::Child,
    addr: SocketAddr,
    clients: usize,
    client: ClientFn,
    kill_after: usize,
) -> Vec<(String, String)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (a, c, s) = (acked.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || client(addr, i, a, c, s))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < kill_after {
        assert!(
            Instant::now() < deadline,
            "only {} acks in 120 s",
            count.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    acked.lock().unwrap().clone()
}

/// A two-shard config with 1 MiB segments (the least: segments rotate
/// during a run, so recovery crosses segment boundaries and new-segment
/// directory syncs), delivery to a closed port, SMTP on `addr`.
fn write_config(
    dir: &std::path::Path,
    spool: &std::path::Path,
    sync: &str,
    addr: SocketAddr,
    inject: &str,
) -> std::path::PathBuf {
    let config = dir.join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nhostname = \"crash.test\"\n[spool]\ndir = \"{}\"\nsegment_bytes = 1048576\nsync = \"{sync}\"\n[smtp]\nlisten = \"{addr}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"{inject}\"\n",
            spool.display(),
            common::closed_port()
        ),
    )
    .unwrap();
    config
}

/// Restarts the server (recovery runs; it must come up and serve again),
/// stops it, and checks that every acknowledged (id, token) is in the
/// spool with its own content.
fn restart_and_check(
    config: &std::path::Path,
    addr: SocketAddr,
    spool: &std::path::Path,
    acked: &[(String, String)],
) {
    // Restart: recovery runs; the server must come up and serve again.
    // The killed process's listening socket can outlive it briefly (the
    // kernel tears its io_uring down in the background, and a pending
    // accept holds the socket): wait until the port is free, as systemd's
    // RestartSec does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} still taken 10 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = common::spawn_binary(config, addr);
    let mut c = common::Client::connect(addr);
    c.expect("NOOP", 250);
    drop(c);
    child.kill().unwrap();
    child.wait().unwrap();

    // Every body reads back and passes its CRC (read_spool checks it).
    let queued: HashMap<String, Vec<u8>> = common::read_spool(spool)
        .into_iter()
        .map(|(id, _, body)| (id.to_string(), body))
        .collect();
    let mut missing = Vec::new();
    for (id, token) in acked {
        let Some(body) = queued.get(id) else {
            missing.push(id.clone());
            continue;
        };
        assert!(
            body.windows(token.len()).any(|w| w == token.as_bytes()),
            "message {id} does not hold its own content {token}"
        );
    }
    eprintln!(
        "crash test: {} acknowledged before SIGKILL, {} in the spool after restart, {} missing",
        acked.len(),
        queued.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged but lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
