//! Test harness: a real ringpost server on a loopback port with its own
//! spool directory, and a raw-socket SMTP client that reads whole replies.
#![allow(dead_code)]

pub mod dns;
pub mod dns_proxy;
pub mod https;
pub mod knot;
pub mod redis_server;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use std::time::Duration;

use ringpost::config::{Config, Listen};
use ringpost::queue::{Envelope, MessageId, Spool, SpoolOptions, existing_shards};
use ringpost::server::{self, Server};
use ringpost::shard::clock::Clock;

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub submission_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub inject_addr: Option<SocketAddr>,
    pub unsubscribe_addr: Option<SocketAddr>,
    pub cfg: Config,
    pub shards: usize,
    pub spool_dir: PathBuf,
    /// The server's clock: manual when the test drives time.
    pub clock: Clock,
    server: Option<Server>,
    _tmp: tempfile::TempDir,
}

/// Starts a server with `shards` executors on 127.0.0.1:0; `tweak` edits the
/// config first.
pub fn start_with(shards: usize, tweak: impl FnOnce(&mut Config)) -> TestServer {
    start_with_clock(shards, Clock::System, tweak)
}

/// [`start_with`] on `clock` (a manual one lets the test move time).
pub fn start_with_clock(
    shards: usize,
    clock: Clock,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::default();
    cfg.server.hostname = "mx.test.example".into();
    cfg.server.shards = shards;
    cfg.spool.dir = tmp.path().join("spool");
    cfg.spool.cache_bytes = 8 << 20;
    cfg.smtp.listen = Listen::at("127.0.0.1:0");
    // Reception tests keep their mail queued: the next hop is a closed
    // loopback port (nothing here may ever reach a real MX).
    cfg.delivery.smarthost = format!("[127.0.0.1]:{}", closed_port());
    cfg.delivery.log = "off".into();
    cfg.metrics.listen = Listen::at("127.0.0.1:0");
    cfg.admin.listen = Listen::at("127.0.0.1:0");
    cfg.inject.listen = Listen::at("127.0.0.1:0");
    cfg.server.shutdown_grace_secs = 2;
    cfg.dns.nameservers = vec!["127.0.0.1:9".parse().unwrap()];
    tweak(&mut cfg);
    let spool_dir = cfg.spool.dir.clone();
    let server = server::start_with_clock(cfg.clone(), clock.clone()).expect("server starts");
    let l = server.listeners;
    TestServer {
        addr: l.smtp.expect("smtp is on"),
        metrics_addr: l.metrics,
        submission_addr: l.submission,
        admin_addr: l.admin,
        inject_addr: l.inject,
        unsubscribe_addr: l.unsubscribe,
        cfg,
        shards,
        spool_dir,
        clock,
        server: Some(server),
        _tmp: tmp,
    }
}

/// Runs the built binary as `serve --config <config>` (RUST_LOG=warn, or
/// `$RINGPOST_TEST_LOG` to see more of a failing test) and
/// waits until it listens on `addr`.
pub fn spawn_binary(config: &Path, addr: SocketAddr) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RINGPOST_TEST_LOG").unwrap_or("warn".into()),
        )
        .spawn()
        .expect("spawn ringpost");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "ringpost did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends messages `0..n` over `sessions` SMTP sessions at once (message
/// `i` on session `i % sessions`), each answered 250; `message(i)` gives
/// its sender, recipient and content.
pub fn send_concurrently(
    addr: SocketAddr,
    n: usize,
    sessions: usize,
    message: impl Fn(usize) -> (String, String, String) + Send + Sync + 'static,
) {
    let message = std::sync::Arc::new(message);
    let senders: Vec<_> = (0..sessions)
        .map(|t| {
            let message = message.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.expect("EHLO app.test.example", 250);
                for i in (t..n).step_by(sessions) {
                    let (from, to, content) = message(i);
                    c.expect(&format!("MAIL FROM:<{from}>"), 250);
                    c.expect(&format!("RCPT TO:<{to}>"), 250);
                    assert_eq!(c.data(content.as_bytes()).code, 250);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
}

/// The message id in lettre's "250 ... queued as <id>" response.
pub fn lettre_queued_id(response: &lettre::transport::smtp::response::Response) -> String {
    let text: Vec<&str> = response.message().collect();
    text.join(" ")
        .rsplit("queued as ")
        .next()
        .unwrap()
        .to_string()
}

/// A rustls client config (ring provider) whose only root is `pem`.
pub fn rustls_client_trusting(pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A port for one test's sinks (on 127.0.0.x, all the same port since MX
/// records carry none). Taken from a counter below the kernel's ephemeral
/// range, so tests running in parallel never pick the same one.
pub fn sink_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start() -> TestServer {
    start_with(1, |_| {})
}

impl TestServer {
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The server's `/metrics` page. The recorder is the test process's:
    /// every server a test binary starts counts into the same series.
    pub fn metrics_text(&self) -> String {
        let addr = self.metrics_addr.expect("metrics listener on");
        http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1
    }

    /// Stops the server and starts it again on the same spool (and a new port).
    pub fn restart(&mut self) {
        self.stop();
        let server = server::start_with_clock(self.cfg.clone(), self.clock.clone())
            .expect("server restarts");
        self.addr = server.listeners.smtp.expect("smtp is on");
        self.admin_addr = server.listeners.admin;
        self.metrics_addr = server.listeners.metrics;
        self.inject_addr = server.listeners.inject;
        self.unsubscribe_addr = server.listeners.unsubscribe;
        self.submission_addr = server.listeners.submission;
        self.server = Some(server);
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn request_shutdown(&self) {
        if let Some(s) = &self.server {
            s.shutdown_handle().request();
        }
    }

    /// Stops the server (releasing the spool) if it still runs.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
    }

    /// Stops the server and returns every queued message with its body.
    pub fn messages(&mut self) -> Vec<(MessageId, Envelope, Vec<u8>)> {
        self.stop();
        read_spool(&self.spool_dir)
    }

    /// Stops the server and returns the stored body of message `id`.
    pub fn body(&mut self, id: &str) -> Vec<u8> {
        let all = self.messages();
        let (_, _, body) = all
            .into_iter()
            .find(|(m, _, _)| m.to_string() == id)
            .unwrap_or_else(|| panic!("message {id} is not in the spool"));
        body
    }

    /// Stops the server and returns every queued message.
    pub fn stop_and_list(&mut self) -> Vec<(MessageId, Envelope)> {
        self.stop();
        list_spool(&self.spool_dir)
    }
}

pub fn list_spool(dir: &Path) -> Vec<(MessageId, Envelope)> {
    read_spool(dir)
        .into_iter()
        .map(|(id, env, _)| (id, env))
        .collect()
}

/// Every message in a stopped server's spool, with its body (CRC-checked).
pub fn read_spool(dir: &Path) -> Vec<(MessageId, Envelope, Vec<u8>)> {
    let mut all = Vec::new();
    for shard in existing_shards(dir) {
        let spool = Spool::open(dir, shard, &SpoolOptions::default()).expect("spool opens");
        // As the server would at start: a crash may have left messages
        // only in the segments' journal.
        spool.recover().expect("spool recovers");
        for (id, env) in spool.list() {
            let body = spool.read_body_blocking(id, &env).expect("body reads back");
            all.push((id, env, body));
        }
    }
    all
}

/// One SMTP reply: code and the text of every line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The id from "250 2.0.0 Ok: queued as <id>".
    pub fn queued_id(&self) -> String {
        let t = self.text();
        let id = t.rsplit("queued as ").next().expect("queued as");
        assert_eq!(id.len(), 32, "reply {t:?}");
        id.to_string()
    }
}

pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            reader: BufReader::new(s),
        };
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let more = line.as_bytes()[3] == b'-';
            lines.push(line[4..].trim_end().to_string());
            if !more {
                return Reply { code, lines };
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends, expects `code` and returns the reply.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} got {r:?}");
        r
    }

    /// EHLO + MAIL + RCPT (each must succeed).
    pub fn begin(&mut self, from: &str, rcpts: &[&str]) {
        self.expect("EHLO client.test.example", 250);
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
    }

    /// DATA with `body` (already dot-stuffed, without the final dot line).
    pub fn data(&mut self, body: &[u8]) -> Reply {
        self.expect("DATA", 354);
        self.send(body);
        self.send(b".\r\n");
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

/// One raw HTTP/1.1 exchange (`request` is sent as given; the answer is
/// read by its Content-Length, the connection may stay open): (status,
/// body).
pub fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let answer = read_http_answer(&mut s);
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Reads one HTTP answer (head and Content-Length body; `100 Continue`
/// interim answers included in the text) or up to the end of the stream.
pub fn read_http_answer(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.rsplit_once("\r\n\r\n")
            && !head.ends_with("100 Continue")
        {
            let last_head = head.rsplit("\r\n\r\n").next().unwrap_or(head);
            let length = last_head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return text,
            Ok(_) => raw.push(byte[0]),
        }
    }
}

/// A connection to `to` from the loopback address `src` (127.0.0.0/8
/// addresses bind without setup), with a 10 s read timeout.
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&to.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The JSON lines of a file another process is appending to: whole lines
/// only (it may be writing the next one as we read).
pub fn whole_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The delivery log's (`delivery.log`, JSON lines) events for `rcpt`.
pub fn log_events(log: &Path, rcpt: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["recipient"] == rcpt)
        .collect()
}

/// The first `kind` event (Delivery, TransientFailure, ...) for `rcpt`
/// in the delivery log, waiting up to 30 s for it.
pub fn wait_for_log_event(log: &Path, rcpt: &str, kind: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = log_events(log, rcpt)
            .into_iter()
            .find(|e| e["event"] == kind)
        {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} for {rcpt}: {:?}",
            log_events(log, rcpt)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
