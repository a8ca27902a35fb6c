//! A real HTTPS server (rustls) for MTA-STS policy hosts: it listens on
//! `ip`:443 (the port RFC 8461 fixes; tests run as root, each on a
//! loopback address of its own) and answers `GET
//! /.well-known/mta-sts.txt` with the policy of the host the request
//! names, 404 for any other; and a receiver of POSTs (TLS reports to an
//! `https:` address), which records each request and answers 200.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};

/// The policies a host serves (policy host name -> file); a test may
/// take one away (the host then answers 404 for it, as if down).
pub type Served = Arc<Mutex<HashMap<String, String>>>;

/// Serves `policies` until the process ends.
pub fn policy_host(
    ip: Ipv4Addr,
    tls: Arc<rustls::ServerConfig>,
    policies: HashMap<String, String>,
) -> Served {
    let listener = TcpListener::bind((ip, 443)).expect("binding port 443 (tests run as root)");
    let policies: Served = Arc::new(Mutex::new(policies));
    let served = policies.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (tls, policies) = (tls.clone(), policies.clone());
            std::thread::spawn(move || answer(tcp, tls, &policies));
        }
    });
    served
}

fn answer(tcp: std::net::TcpStream, tls: Arc<rustls::ServerConfig>, policies: &Served) {
    let conn = rustls::ServerConnection::new(tls).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let host = head
        .lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let body = policies
        .lock()
        .unwrap()
        .get(&host)
        .cloned()
        .filter(|_| head.starts_with("get /.well-known/mta-sts.txt "));
    let answer = match body {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// The POSTs a receiver took: each request's head (lower case) and body.
pub type Posted = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Takes POSTs on `ip`:443 until the process ends.
pub fn post_receiver(ip: Ipv4Addr, tls: Arc<rustls::ServerConfig>) -> Posted {
    let listener = TcpListener::bind((ip, 443)).expect("binding port 443 (tests run as root)");
    let posted: Posted = Arc::new(Mutex::new(Vec::new()));
    let record = posted.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (tls, record) = (tls.clone(), record.clone());
            std::thread::spawn(move || take_post(tcp, tls, &record));
        }
    });
    posted
}

fn take_post(tcp: std::net::TcpStream, tls: Arc<rustls::ServerConfig>, posted: &Posted) {
    let conn = rustls::ServerConnection::new(tls).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    posted
        .lock()
        .unwrap()
        .push((head, request[head_end..head_end + length].to_vec()));
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}
