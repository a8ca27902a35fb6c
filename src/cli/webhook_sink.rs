//! `ringpost webhook-sink`: a small HTTP server that takes webhook batches
//! and counts them, for trying `[[events.webhook]]` locally and for the
//! webhook benchmark (fast enough that the receiver is not the limit).
//!
//! Owns: [`run`]. One thread per connection (a test tool, not part of the
//! MTA), HTTP/1.1 with keep-alive, bounded: at most 256 connections, heads
//! of 16 KiB, bodies of 16 MiB, a minute of silence. Each body must be a
//! JSON array; with a secret, its `X-Ringpost-Signature` must match
//! (otherwise 401). Answers 200 and prints the running totals every
//! second.
//!
//! Must not: keep what it receives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const MAX_CONNECTIONS: usize = 256;
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 16 << 20;
const IDLE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
    connections: AtomicUsize,
}

/// Serves on `listen` until killed; `secret`: the shared secret, if the
/// signatures are to be checked.
pub fn run(listen: SocketAddr, secret: Option<String>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    eprintln!("webhook-sink: listening on {listen}");
    let totals = Arc::new(Totals::default());
    let key = secret.map(|s| Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())));
    let t = totals.clone();
    std::thread::spawn(move || {
        let mut last = 0;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let events = t.events.load(Ordering::Relaxed);
            if events != last {
                last = events;
                eprintln!(
                    "webhook-sink: {events} events in {} requests ({} refused)",
                    t.requests.load(Ordering::Relaxed),
                    t.refused.load(Ordering::Relaxed)
                );
            }
        }
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if totals.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        totals.connections.fetch_add(1, Ordering::Relaxed);
        let (totals, key) = (totals.clone(), key.clone());
        std::thread::spawn(move || {
            let _ = serve(conn, &totals, key.as_deref());
            totals.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn serve(conn: TcpStream, totals: &Totals, key: Option<&ring::hmac::Key>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_nodelay(true)?;
    let mut r = BufReader::new(conn);
    loop {
        let Some((length, signature)) = read_head(&mut r)? else {
            return Ok(());
        };
        if length > MAX_BODY {
            r.get_mut().write_all(answer(413).as_bytes())?;
            return Ok(());
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        totals.requests.fetch_add(1, Ordering::Relaxed);
        let status = match (key, signature) {
            (Some(k), Some(sig)) if verified(k, &body, &sig) => 200,
            (Some(_), _) => 401,
            (None, _) => 200,
        };
        let status = match (
            status,
            serde_json::from_slice::<Vec<serde_json::Value>>(&body),
        ) {
            (200, Ok(events)) => {
                totals
                    .events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                200
            }
            (200, Err(_)) => 400,
            (other, _) => other,
        };
        if status != 200 {
            totals.refused.fetch_add(1, Ordering::Relaxed);
        }
        r.get_mut().write_all(answer(status).as_bytes())?;
    }
}

/// The next request's Content-Length and signature header; None at the
/// end of the connection.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(usize, Option<String>)>> {
    let mut head = Vec::new();
    loop {
        let n = r.by_ref().take(4096).read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let length = value("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some((length, value("x-ringpost-signature"))))
}

fn verified(key: &ring::hmac::Key, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.is_some_and(|tag| ring::hmac::verify(key, body, &tag).is_ok())
}

fn answer(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        413 => "Payload Too Large",
        _ => "Bad Request",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n")
}
