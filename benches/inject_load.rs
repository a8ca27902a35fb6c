//! Load for the HTTP injection API from Rust, so that the client is not
//! the limit (benches/inject-load.py is, on 2 cores): `CONNECTIONS`
//! threads each keep one HTTP/1.1 connection alive and post
//! `MESSAGES / CONNECTIONS` messages of `SIZE` bytes on it, one after
//! another, each answered before the next. Prints one JSON line: messages
//! answered 200, seconds, messages per second, request latency p50/p99.
//!
//!     cargo bench --bench inject_load -- [ADDR] [CONNECTIONS] [MESSAGES] [SIZE]
//!
//! Defaults: 127.0.0.1:8025 (benches/relay-bench.toml's injection port),
//! 20 connections, 10000 messages, 10240 bytes. Loopback addresses only.
//! benches/inject-vs-smtp.sh runs it against SMTP at the same load.
//!
//! INJECT_TEMPLATE_RCPTS=R (R > 1): every request is a template for R
//! recipients, each with values of its own, so it makes R messages;
//! MESSAGES counts messages (MESSAGES / R requests). benches/inject-
//! template-ab.sh compares it with single-recipient requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// One request: a JSON body whose content is `size` bytes of message;
/// with `key`, an `Idempotency-Key` header of its own; with `rcpts` > 1, a
/// template with values for each of that many recipients.
fn request(size: usize, key: Option<&str>, rcpts: usize) -> Vec<u8> {
    let subject = match rcpts {
        1 => "Subject: bench\r\n",
        _ => "Subject: bench for {{ name }}\r\n",
    };
    let mut content = format!("{subject}From: s@example.test\r\n\r\n");
    if rcpts > 1 {
        content.push_str("Hello {{ name }}, your code is {{ code }}.\r\n");
    }
    while content.len() + 78 <= size {
        content.push_str(&"x".repeat(76));
        content.push_str("\r\n");
    }
    let body = match rcpts {
        1 => serde_json::json!({
            "envelope_sender": "s@example.test",
            "recipients": [{"email": "r@example.test"}],
            "content": content,
        }),
        _ => serde_json::json!({
            "envelope_sender": "s@example.test",
            "recipients": (0..rcpts).map(|i| serde_json::json!({
                "email": format!("r{i}@example.test"),
                "substitutions": {"name": format!("Reader {i}"), "code": i},
            })).collect::<Vec<_>>(),
            "content": content,
        }),
    };
    let body = serde_json::to_vec(&body).expect("json");
    let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// Reads one answer; its status.
fn answer(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut status = 0;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
            status = rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
        } else if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(status)
}

fn main() {
    // cargo bench passes "--bench"; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let addr: SocketAddr = arg(&args, 0, "127.0.0.1:8025".parse().unwrap());
    assert!(addr.ip().is_loopback(), "loopback only");
    let connections: usize = arg(&args, 1, 20);
    let messages: usize = arg(&args, 2, 10_000);
    let size: usize = arg(&args, 3, 10_240);
    // INJECT_IDEMPOTENCY=1: every request with a key of its own (the
    // cost of keys); the requests are built before the clock starts.
    let keyed = std::env::var("INJECT_IDEMPOTENCY").is_ok_and(|v| v == "1");
    let rcpts: usize = std::env::var("INJECT_TEMPLATE_RCPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let requests = messages / rcpts;
    let run = std::process::id();
    let req = std::sync::Arc::new(request(size, None, rcpts));
    let share = |t: usize| requests / connections + usize::from(t < requests % connections);
    let prebuilt: Vec<Vec<Vec<u8>>> = (0..connections)
        .map(|t| match keyed {
            true => (0..share(t))
                .map(|i| request(size, Some(&format!("bench-{run}-{t}-{i}")), rcpts))
                .collect(),
            false => Vec::new(),
        })
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = prebuilt
        .into_iter()
        .enumerate()
        .map(|(t, requests)| {
            let req = req.clone();
            let mine = share(t);
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                let mut w = stream.try_clone().expect("clone");
                let mut r = BufReader::new(stream);
                let (mut ok, mut latencies) = (0usize, Vec::with_capacity(mine));
                for i in 0..mine {
                    let t0 = Instant::now();
                    w.write_all(requests.get(i).unwrap_or(&req)).expect("write");
                    if answer(&mut r).expect("answer") == 200 {
                        ok += rcpts;
                    }
                    latencies.push(t0.elapsed());
                }
                (ok, latencies)
            })
        })
        .collect();
    let (mut ok, mut latencies) = (0, Vec::new());
    for t in threads {
        let (n, l) = t.join().expect("client thread");
        ok += n;
        latencies.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "connections": connections,
            "messages": messages,
            "recipients_per_request": rcpts,
            "size": size,
            "ok": ok,
            "secs": (secs * 1000.0).round() / 1000.0,
            "msgs_per_s": (ok as f64 / secs * 10.0).round() / 10.0,
            "p50_ms": (pct(0.50) * 100.0).round() / 100.0,
            "p99_ms": (pct(0.99) * 100.0).round() / 100.0,
        })
    );
}
