//! A DNS forwarder on loopback that answers SERVFAIL for chosen names:
//! what a resolver returns when an authoritative server is broken or
//! unreachable (RFC 7672 §2.1 treats it like a bogus answer). Every other
//! query goes to the real server behind it (Knot), byte for byte, over
//! UDP and TCP on one port as the resolver expects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

/// The question's name (lower case, dotted, no final dot), its type, and
/// where the question ends.
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// SERVFAIL for `query`: its id and question, no records.
fn servfail(query: &[u8]) -> Vec<u8> {
    let mut reply = query.to_vec();
    reply[2] = 0x80 | (query[2] & 0x79); // QR, the opcode and RD kept
    reply[3] = 0x80 | 2; // RA, RCODE 2
    reply[6..12].fill(0); // no answer, authority or additional records
    if let Some((_, _, end)) = question(query) {
        reply.truncate(end.min(reply.len()));
    }
    reply
}

pub struct ServfailProxy {
    pub addr: SocketAddr,
}

impl ServfailProxy {
    /// Forwards to `upstream`, except queries of type `qtype` for a name
    /// ending in `suffix`, which get SERVFAIL.
    pub fn start(upstream: SocketAddr, suffix: &str, qtype: u16) -> ServfailProxy {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        let rule = Arc::new((suffix.to_ascii_lowercase(), qtype));
        let answer = move |query: &[u8], rule: &(String, u16)| -> Option<Vec<u8>> {
            match question(query) {
                Some((name, t, _)) if t == rule.1 && name.ends_with(&rule.0) => {
                    Some(servfail(query))
                }
                Some(_) => None,
                None => Some(Vec::new()),
            }
        };
        let r = rule.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let query = buf[..n].to_vec();
                let udp = udp.try_clone().unwrap();
                let r = r.clone();
                std::thread::spawn(move || {
                    let reply = answer(&query, &r).or_else(|| forward_udp(upstream, &query));
                    if let Some(reply) = reply.filter(|r| !r.is_empty()) {
                        let _ = udp.send_to(&reply, from);
                    }
                });
            }
        });
        std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                let rule = rule.clone();
                std::thread::spawn(move || serve_tcp(stream, upstream, &rule, answer));
            }
        });
        ServfailProxy { addr }
    }
}

fn forward_udp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.send_to(query, upstream).ok()?;
    let mut buf = vec![0u8; 65_535];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).ok()?;
    Some(msg)
}

fn write_frame(s: &mut TcpStream, msg: &[u8]) -> Option<()> {
    s.write_all(&(msg.len() as u16).to_be_bytes()).ok()?;
    s.write_all(msg).ok()
}

fn serve_tcp(
    mut client: TcpStream,
    upstream: SocketAddr,
    rule: &(String, u16),
    answer: impl Fn(&[u8], &(String, u16)) -> Option<Vec<u8>>,
) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    while let Some(query) = read_frame(&mut client) {
        let reply = match answer(&query, rule) {
            Some(reply) => reply,
            None => {
                let Ok(mut up) = TcpStream::connect(upstream) else {
                    return;
                };
                let _ = up.set_read_timeout(Some(Duration::from_secs(3)));
                write_frame(&mut up, &query);
                match read_frame(&mut up) {
                    Some(reply) => reply,
                    None => return,
                }
            }
        };
        if reply.is_empty() || write_frame(&mut client, &reply).is_none() {
            return;
        }
    }
}
