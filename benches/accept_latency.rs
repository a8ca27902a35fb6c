//! Acceptance latency: the time from the client's end of DATA (`CRLF.CRLF`
//! sent) to the `250` under load, which the Postfix harness does not
//! measure. `SESSIONS` client threads each send `MESSAGES / SESSIONS`
//! messages of `SIZE` bytes, one connection per message like smtp-source,
//! to an MTA at `ADDR`, and the p50/p90/p99/max of that interval is printed
//! as one JSON line.
//!
//!     cargo bench --bench accept_latency -- [ADDR] [SESSIONS] [MESSAGES] [SIZE]
//!
//! Defaults: 127.0.0.1:2527 (where benches/loadtest.sh runs ringpost), 20
//! sessions, 10000 messages, 10240 bytes. Loopback addresses only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    // cargo bench passes "--bench"; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let addr: SocketAddr = arg(&args, 0, "127.0.0.1:2527".parse().unwrap());
    assert!(addr.ip().is_loopback(), "loopback only");
    let sessions: usize = arg(&args, 1, 20);
    let messages: usize = arg(&args, 2, 10_000);
    let size: usize = arg(&args, 3, 10_240);
    let body = body(size);

    let started = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            let body = body.clone();
            let n = messages / sessions + usize::from(s < messages % sessions);
            std::thread::spawn(move || (0..n).map(|_| one(addr, &body)).collect::<Vec<_>>())
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .flatten()
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let failed = messages - all.len();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{{\"addr\":\"{addr}\",\"sessions\":{sessions},\"messages\":{messages},\"size\":{size},\
         \"accepted\":{},\"failed\":{failed},\"msgs_per_s\":{:.1},\
         \"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

/// A dot-safe body of `size` bytes in 78-character lines.
fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: latency\r\n\r\n".to_vec();
    while b.len() < size {
        b.extend_from_slice(&[b'x'; 76]);
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// One message on a new connection; the end-of-DATA to 250 time, or None
/// if anything failed.
fn one(addr: SocketAddr, body: &[u8]) -> Option<Duration> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_nodelay(true).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut w = stream.try_clone().ok()?;
    let mut r = BufReader::new(stream);
    (reply(&mut r)? == 220).then_some(())?;
    let mut step = |cmd: &[u8], want: u16| -> Option<()> {
        w.write_all(cmd).ok()?;
        (reply(&mut r)? == want).then_some(())
    };
    step(b"EHLO latency.test\r\n", 250)?;
    step(b"MAIL FROM:<sender@example.test>\r\n", 250)?;
    step(b"RCPT TO:<rcpt@example.test>\r\n", 250)?;
    step(b"DATA\r\n", 354)?;
    let mut data = body.to_vec();
    data.extend_from_slice(b"\r\n.\r\n");
    let t = Instant::now();
    step(&data, 250)?;
    let latency = t.elapsed();
    let _ = step(b"QUIT\r\n", 221);
    Some(latency)
}

/// The code of the next whole (possibly multi-line) reply.
fn reply(r: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? < 4 {
            return None;
        }
        if line.as_bytes()[3] == b' ' {
            return line[..3].parse().ok();
        }
    }
}
