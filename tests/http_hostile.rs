//! Hostile HTTP clients on the injection, metrics and admin listeners:
//! uploads without permission, slow clients (slowloris), one client holding
//! every connection, and request framing that RFC 9112 calls malformed or
//! conflicting. Each case checks the exact status, that nothing was queued
//! that should not be, and that other clients are still served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TestServer, connect_from, read_http_answer, rss_kib, start_with};

fn message_json(rcpt: &str) -> String {
    serde_json::json!({
        "envelope_sender": "orders@sender.test",
        "recipients": [{ "email": rcpt }],
        "content": "Subject: t\r\n\r\nx\r\n",
    })
    .to_string()
}

fn inject_from(src: &str, addr: SocketAddr, rcpt: &str) -> u16 {
    let body = message_json(rcpt);
    let mut s = connect_from(src, addr);
    write!(
        s,
        "POST /api/inject/v1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    status_of(&read_http_answer(&mut s))
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Whether the server closed `s` (read returns end of stream) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut rest = Vec::new();
    // A server that closes with bytes of ours still unread (what a
    // smuggler sent after the body) makes the kernel send a reset: closed
    // too. A timeout is not.
    match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// The value of `name{labels}` in the server's /metrics (0 when absent).
fn metric(ts: &TestServer, series: &str) -> f64 {
    let mut s = connect_from("127.0.0.3", ts.metrics_addr.unwrap());
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let text = read_http_answer(&mut s);
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A server whose clients at 127.0.0.0/8 may not inject (relay_networks
/// elsewhere, no token).
fn refusing() -> TestServer {
    start_with(1, |c| {
        c.smtp.relay_networks = vec!["10.0.0.0/8".parse().unwrap()];
    })
}

#[test]
fn an_unauthorised_upload_is_refused_from_its_head_before_its_body() {
    let ts = refusing();
    let addr = ts.inject_addr.unwrap();
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut s = connect_from("127.0.0.1", addr);
        let started = Instant::now();
        write!(
            s,
            "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: 50000000\r\n\r\n"
        )
        .unwrap();
        // Not a byte of the body is sent: the answer must come anyway.
        let answer = read_http_answer(&mut s);
        assert_eq!(status_of(&answer), 403, "{expect:?}: {answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            closed_within(&mut s, Duration::from_secs(2)),
            "closed after the 403"
        );
    }
}

#[test]
fn expect_100_continue_is_answered_once_the_head_is_admitted() {
    let mut ts = start_with(1, |_| {});
    let body = message_json("x@elsewhere.test");
    let mut s = connect_from("127.0.0.1", ts.inject_addr.unwrap());
    write!(
        s,
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let answer = read_http_answer(&mut s);
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(ts.stop_and_list().len(), 1);
}

#[test]
fn framing_follows_rfc_9112() {
    let mut ts = start_with(1, |_| {});
    let addr = ts.inject_addr.unwrap();
    let body = message_json("x@elsewhere.test");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let exchange = |request: String| {
        let mut s = connect_from("127.0.0.1", addr);
        s.write_all(request.as_bytes()).unwrap();
        let answer = read_http_answer(&mut s);
        (
            status_of(&answer),
            answer,
            closed_within(&mut s, Duration::from_secs(2)),
        )
    };

    // A chunked body is read as such.
    let (status, answer, _) = exchange(format!(
        "POST /api/inject/v1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
    ));
    assert_eq!(status, 200, "{answer}");

    // Transfer-Encoding and Content-Length: the length is not used (RFC
    // 9112 6.3: the chunked framing wins) and the connection is closed
    // after the answer, so nothing smuggled after the body is read.
    let (status, answer, closed) = exchange(format!(
        "POST /api/inject/v1 HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}\
         GET /smuggled HTTP/1.1\r\n\r\n"
    ));
    assert_eq!(status, 200, "the chunked body was read: {answer}");
    assert!(closed, "closed after a request with both framings");
    assert!(!answer.contains("404"), "{answer}");

    // Malformed or conflicting lengths are 400, and nothing is read after.
    for lengths in [
        format!(
            "Content-Length: {}\r\nContent-Length: {}\r\n",
            body.len(),
            body.len() + 1
        ),
        format!("Content-Length: +{}\r\n", body.len()),
        format!("Content-Length: {}, {}\r\n", body.len(), body.len() + 1),
        "Content-Length: -1\r\n".to_string(),
        "Transfer-Encoding: gzip\r\n".to_string(),
    ] {
        let (status, answer, closed) = exchange(format!(
            "POST /api/inject/v1 HTTP/1.1\r\n{lengths}\r\n{body}"
        ));
        assert_eq!(status, 400, "{lengths:?}: {answer}");
        assert!(closed, "{lengths:?}: closed after the 400");
    }
    assert_eq!(
        ts.stop_and_list().len(),
        2,
        "only the two chunked requests were queued"
    );
}

#[test]
fn slow_clients_are_cut_off_and_one_address_cannot_hold_every_connection() {
    let ts = start_with(2, |c| {
        c.inject.head_timeout_secs = 1;
        c.inject.max_connections_per_ip = 4;
    });
    let addr = ts.inject_addr.unwrap();
    let rejected_before = metric(
        &ts,
        "ringpost_http_connections_rejected_total{listener=\"inject\",reason=\"per_address_limit\"}",
    );
    // 30 slowloris connections from 127.0.0.1: a request line, then one
    // header byte every 200 ms.
    let mut idle = connect_from("127.0.0.4", addr);
    let mut slow: Vec<TcpStream> = (0..30).map(|_| connect_from("127.0.0.1", addr)).collect();
    for s in &mut slow {
        let _ = s.write_all(b"POST /api/inject/v1 HTTP/1.1\r\n");
    }
    let started = Instant::now();
    // Meanwhile another client injects at 10 requests/s: all answered 200.
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(2) {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        statuses.push(inject_from("127.0.0.2", addr, "x@elsewhere.test"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    // Those over the address's limit got 503 at once; the admitted ones
    // were closed at their head deadline.
    let mut refused = 0;
    let mut cut_off = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) if answer.starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(_) => cut_off += 1,
            Err(e) => panic!("a slow connection is still open: {e}"),
        }
    }
    assert!((1..=4).contains(&cut_off), "{cut_off} admitted");
    assert_eq!(refused + cut_off, 30);
    let rejected = metric(
        &ts,
        "ringpost_http_connections_rejected_total{listener=\"inject\",reason=\"per_address_limit\"}",
    );
    assert!(rejected - rejected_before >= refused as f64, "{rejected}");
    assert!(
        metric(
            &ts,
            "ringpost_http_timeouts_total{listener=\"inject\",phase=\"head\"}"
        ) >= 1.0
    );
    // A connection that never sends a request is closed too, as idle.
    assert!(closed_within(&mut idle, Duration::from_secs(3)));
    let idle_closed = metric(
        &ts,
        "ringpost_http_timeouts_total{listener=\"inject\",phase=\"idle\"}",
    );
    assert!(idle_closed >= 1.0);
}

#[test]
fn metrics_and_admin_answer_while_slow_clients_hold_connections() {
    let ts = start_with(1, |_| {});
    let mut slow = Vec::new();
    for addr in [ts.metrics_addr.unwrap(), ts.admin_addr.unwrap()] {
        for _ in 0..64 {
            let mut s = connect_from("127.0.0.1", addr);
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
            slow.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut s = connect_from("127.0.0.2", ts.metrics_addr.unwrap());
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_http_answer(&mut s);
    assert_eq!(
        status_of(&answer),
        200,
        "{}",
        &answer[..answer.len().min(200)]
    );
    let mut s = connect_from("127.0.0.2", ts.admin_addr.unwrap());
    s.write_all(b"GET /queue/summary HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_http_answer(&mut s)), 200);
}

#[test]
fn a_kept_alive_connection_serves_request_after_request() {
    let mut ts = start_with(1, |_| {});
    let body = message_json("x@elsewhere.test");
    let mut s = connect_from("127.0.0.1", ts.inject_addr.unwrap());
    for _ in 0..3 {
        write!(
            s,
            "POST /api/inject/v1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        assert_eq!(status_of(&read_http_answer(&mut s)), 200);
    }
    assert_eq!(ts.stop_and_list().len(), 3);
}

/// The measurement of issue 15 item 1, on the real binary: 100 clients
/// without permission each start a 55 MB upload at once; the server's
/// resident memory stays under 100 MB (it was 4 GB when bodies were read
/// before the permission was checked).
#[test]
fn a_hundred_unauthorised_55_mb_uploads_do_not_grow_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", common::closed_port())
        .parse()
        .unwrap();
    let inject: SocketAddr = format!("127.0.0.1:{}", common::closed_port())
        .parse()
        .unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{smtp}\"\n\
             relay_networks = [\"10.0.0.0/8\"]\nmax_message_size = 60000000\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"{inject}\"\n\
             max_connections = 200\nmax_connections_per_ip = 200\n",
            tmp.path().join("spool").display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, smtp);
    let pid = child.id();
    let rss_before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let uploads: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(inject).unwrap();
                let size = 55_000_000usize;
                let _ = write!(
                    s,
                    "POST /api/inject/v1 HTTP/1.1\r\nContent-Length: {size}\r\n\r\n"
                );
                let chunk = vec![b'x'; 1 << 20];
                let mut sent = 0;
                while sent < size && s.write_all(&chunk).is_ok() {
                    sent += chunk.len();
                }
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                (sent, String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut sent_total = 0;
    for u in uploads {
        let (sent, answer) = u.join().unwrap();
        sent_total += sent;
        statuses.push(status_of(&answer));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "100 unauthorised 55 MB uploads: {} MB written by the clients before the server closed, \
         server RSS {rss_before} KiB before, {peak} KiB at the peak",
        sent_total / 1_000_000
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        statuses.iter().all(|&s| s == 403 || s == 0),
        "403 or a reset: {statuses:?}"
    );
    assert!(statuses.contains(&403), "{statuses:?}");
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
}
