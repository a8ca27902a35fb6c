//! The HTTP endpoint for Prometheus and orchestrators, served by shard 0.
//!
//! Owns: a minimal HTTP/1.1 responder: `GET /metrics` (text exposition),
//! `GET /healthz` (liveness: the process answers) and `GET /readyz`
//! (readiness: every shard started and serves). One request per connection.
//!
//! Must not: expose the queue or anything that changes state (the admin API
//! is separate).
//!
//! Security: listens on loopback by default; a request is read up to 8 KiB
//! with a 5 s timeout, then answered and closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::runtime::tasks::TaskSet;

const MAX_REQUEST: usize = 8 * 1024;

/// Serves until `stop` is disconnected. `ready` turns true once every
/// shard has started.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, stop: flume::Receiver<()>) {
    let tasks = TaskSet::default();
    loop {
        match crate::runtime::accept_or_stop(&listener, &stop).await {
            None => break,
            Some(Ok(stream)) => tasks.spawn(respond(stream, ready.load(Ordering::Acquire))),
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(50)).await,
        }
    }
    tasks.cancel_all();
}

async fn respond(mut stream: TcpStream, ready: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, content_type, body) = route(&buf, ready);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.close().await;
}

/// Pure: the response to a raw request head.
fn route(request: &[u8], ready: bool) -> (&'static str, &'static str, String) {
    let line = request.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let text = "text/plain; charset=utf-8";
    match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            super::render(),
        ),
        (b"GET", b"/healthz") => ("200 OK", text, "ok\n".into()),
        (b"GET", b"/readyz") if ready => ("200 OK", text, "ready\n".into()),
        (b"GET", b"/readyz") => ("503 Service Unavailable", text, "starting\n".into()),
        (b"GET", _) => ("404 Not Found", text, "not found\n".into()),
        _ => ("405 Method Not Allowed", text, "GET only\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n", false).0, "200 OK");
        assert_eq!(
            route(b"GET /readyz HTTP/1.1\r\n\r\n", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(route(b"GET /readyz HTTP/1.1\r\n\r\n", true).0, "200 OK");
        assert_eq!(
            route(b"GET /nope HTTP/1.1\r\n\r\n", true).0,
            "404 Not Found"
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", true).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"", true).0, "405 Method Not Allowed");
    }
}
