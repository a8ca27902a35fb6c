//! Scripted SMTP sinks: small, independent SMTP servers (not ringpost's
//! code) that record what they receive and answer as a test tells them.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The sink's side of a connection, before or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How the sink answers.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The first `n` transactions get this reply after the data (e.g. "451 4.3.0 try later").
    pub temp_fail_first: usize,
    pub temp_reply: String,
    /// Recipients refused with "550 5.1.1 no such user".
    pub reject_rcpts: HashSet<String>,
    /// Close the connection after this many body bytes (mid-DATA), once.
    pub drop_mid_data_once: bool,
    /// Wait this long before every reply.
    pub delay: Duration,
    /// Answer the greeting with this instead of 220.
    pub greeting: Option<String>,
    /// Leave SMTPUTF8 out of the EHLO reply.
    pub no_smtputf8: bool,
    /// Offer STARTTLS with this certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Send a forged plaintext line in the same packet as the 220 to STARTTLS.
    pub inject_after_starttls: bool,
    /// Close the connection silently after each accepted message, as a
    /// sink that restarts (or times out idle connections) between uses.
    pub close_after_message: bool,
    /// Play a PROXY protocol v2 forwarder in front of the MX: every
    /// connection must start with a v2 header, which is recorded.
    pub proxy_v2: bool,
    /// Answer every transaction from this client address with
    /// `temp_reply` (a receiver throttling one sending IP).
    pub temp_fail_peer: Option<IpAddr>,
    /// Offer DSN (RFC 3461). Without it, a MAIL or RCPT with a DSN
    /// parameter is refused (555 5.5.4), as a server without DSN would.
    pub dsn: bool,
}

impl Script {
    /// Answers the first `n` transactions with `reply` after the data,
    /// then takes everything.
    pub fn temp_failing(n: usize, reply: &str) -> Script {
        Script {
            temp_fail_first: n,
            temp_reply: reply.into(),
            ..Script::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The message as the sink read it: dot-unstuffed, CRLF line endings.
    pub data: Vec<u8>,
    /// Whether the transaction ran over TLS.
    pub tls: bool,
    /// The client's address (its source address).
    pub peer: SocketAddr,
    /// The name the client gave in EHLO or HELO.
    pub helo: String,
    /// When the sink took it (answered 250).
    pub at: Instant,
    /// The (source, destination) of the PROXY v2 header the connection
    /// began with, when the sink expects one.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
    /// The MAIL and RCPT command lines as sent.
    pub mail_cmd: String,
    pub rcpt_cmds: Vec<String>,
}

#[derive(Default)]
pub struct State {
    pub accepts: usize,
    pub messages: Vec<Received>,
    /// Transactions that ended in a temporary failure or a dropped connection.
    pub refused: usize,
    /// Of `refused`, those answered with a temporary failure, by client
    /// address.
    pub refused_by_peer: HashMap<IpAddr, usize>,
    /// When each transaction's data was answered (2xx or 4xx), in order.
    pub answered_at: Vec<Instant>,
    /// Connections open now, by client address (from accept until the
    /// client's QUIT or close).
    pub open: HashMap<IpAddr, usize>,
    /// The most connections ever open at once, by client address.
    pub max_open: HashMap<IpAddr, usize>,
}

impl State {
    fn opened(&mut self, ip: IpAddr) {
        let n = self.open.entry(ip).or_default();
        *n += 1;
        let max = self.max_open.entry(ip).or_default();
        *max = (*max).max(*n);
    }

    fn closed(&mut self, ip: IpAddr) {
        if let Some(n) = self.open.get_mut(&ip) {
            *n -= 1;
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    /// The script, which a test may change while the sink runs (e.g. start
    /// refusing with `temp_fail_first`).
    pub script: Arc<Mutex<Script>>,
}

impl Sink {
    /// Starts a sink on `ip:port` (port 0: any).
    pub fn start(ip: &str, port: u16, script: Script) -> Sink {
        let listener = TcpListener::bind((ip, port)).expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let script = Arc::new(Mutex::new(script));
        let st = state.clone();
        let shared = script.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let Ok(peer) = conn.peer_addr() else { continue };
                {
                    let mut st = st.lock().unwrap();
                    st.accepts += 1;
                    st.opened(peer.ip());
                }
                let (st, script) = (st.clone(), script.clone());
                std::thread::spawn(move || {
                    let mut quit = false;
                    let _ = session(conn, &st, &script, &mut quit);
                    if !quit {
                        st.lock().unwrap().closed(peer.ip());
                    }
                });
            }
        });
        Sink {
            addr,
            state,
            script: shared,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn accepts(&self) -> usize {
        self.state.lock().unwrap().accepts
    }

    /// Waits until the sink holds `n` messages (or panics after `secs`).
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            assert!(
                Instant::now() < deadline,
                "sink {} got {} of {n} messages",
                self.addr,
                msgs.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One connection; `quit` is set once the client's QUIT has closed it
/// (counted closed before the 221 goes out: the client may connect again
/// as soon as it reads it).
fn session(
    conn: TcpStream,
    st: &Mutex<State>,
    script: &Mutex<Script>,
    quit: &mut bool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // Replies go out at once: with Nagle, a reply written right after
    // another waits for the client's (delayed) ACK, tens of ms.
    conn.set_nodelay(true)?;
    let peer = conn.peer_addr()?;
    let proxy = match script.lock().unwrap().proxy_v2 {
        true => Some(read_proxy_v2(&conn)?),
        false => None,
    };
    let mut helo = String::new();
    let mut r = BufReader::new(Stream::Plain(conn));
    let sc = script.lock().unwrap().clone();
    let reply = |r: &mut BufReader<Stream>, text: &str| -> std::io::Result<()> {
        if !sc.delay.is_zero() {
            std::thread::sleep(sc.delay);
        }
        r.get_mut().write_all(format!("{text}\r\n").as_bytes())?;
        r.get_mut().flush()
    };
    if let Some(g) = &sc.greeting {
        reply(&mut r, g)?;
        return Ok(());
    }
    reply(&mut r, "220 sink.test ESMTP")?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    let (mut mail_cmd, mut rcpt_cmds) = (String::new(), Vec::new());
    let dsn_param = |upper: &str| {
        [" NOTIFY=", " ORCPT=", " RET=", " ENVID="]
            .iter()
            .any(|p| upper.contains(p))
    };
    let mut tls = false;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            helo = cmd.get(5..).unwrap_or("").trim().to_string();
        }
        if upper.starts_with("EHLO") {
            let utf8 = if sc.no_smtputf8 {
                ""
            } else {
                "250-SMTPUTF8\r\n"
            };
            let starttls = if sc.tls.is_some() && !tls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            reply(
                &mut r,
                &format!(
                    "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n{utf8}{starttls}{dsn}250 SIZE 100000000",
                    dsn = if sc.dsn { "250-DSN\r\n" } else { "" }
                ),
            )?;
        } else if upper == "STARTTLS" && sc.tls.is_some() && !tls {
            let extra = if sc.inject_after_starttls {
                "\r\n250 2.0.0 forged"
            } else {
                ""
            };
            reply(&mut r, &format!("220 2.0.0 ready{extra}"))?;
            let Stream::Plain(tcp) = r.into_inner() else {
                unreachable!()
            };
            let conn = rustls::ServerConnection::new(sc.tls.clone().unwrap()).unwrap();
            r = BufReader::new(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))));
            tls = true;
            from.clear();
            rcpts.clear();
        } else if upper.starts_with("HELO") || upper == "RSET" || upper == "NOOP" {
            from.clear();
            rcpts.clear();
            reply(&mut r, "250 2.0.0 ok")?;
        } else if (upper.starts_with("MAIL FROM:") || upper.starts_with("RCPT TO:"))
            && !sc.dsn
            && dsn_param(&upper)
        {
            reply(&mut r, "555 5.5.4 DSN parameters not supported")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = between_brackets(&cmd);
            mail_cmd = cmd.clone();
            rcpt_cmds.clear();
            reply(&mut r, "250 2.1.0 ok")?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = between_brackets(&cmd);
            rcpt_cmds.push(cmd.clone());
            if sc.reject_rcpts.contains(&rcpt) {
                reply(&mut r, "550 5.1.1 no such user")?;
            } else {
                rcpts.push(rcpt);
                reply(&mut r, "250 2.1.5 ok")?;
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                reply(&mut r, "554 5.5.1 no valid recipients")?;
                continue;
            }
            reply(&mut r, "354 go ahead")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let unstuffed = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                data.extend_from_slice(unstuffed);
                let drop_now = {
                    let mut s = script.lock().unwrap();
                    std::mem::take(&mut s.drop_mid_data_once)
                };
                if drop_now {
                    st.lock().unwrap().refused += 1;
                    return Ok(()); // connection dropped mid-DATA
                }
            }
            let temp = {
                let mut s = script.lock().unwrap();
                if s.temp_fail_peer == Some(peer.ip()) {
                    Some(s.temp_reply.clone())
                } else if s.temp_fail_first > 0 {
                    s.temp_fail_first -= 1;
                    Some(s.temp_reply.clone())
                } else {
                    None
                }
            };
            match temp {
                Some(t) => {
                    let mut st = st.lock().unwrap();
                    st.refused += 1;
                    *st.refused_by_peer.entry(peer.ip()).or_default() += 1;
                    st.answered_at.push(Instant::now());
                    drop(st);
                    reply(&mut r, &t)?;
                }
                None => {
                    st.lock().unwrap().answered_at.push(Instant::now());
                    st.lock().unwrap().messages.push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                        tls,
                        peer,
                        helo: helo.clone(),
                        at: Instant::now(),
                        proxy,
                        mail_cmd: mail_cmd.clone(),
                        rcpt_cmds: rcpt_cmds.clone(),
                    });
                    reply(&mut r, "250 2.0.0 queued")?;
                    if sc.close_after_message {
                        return Ok(());
                    }
                }
            }
            from.clear();
            rcpts.clear();
        } else if upper == "QUIT" {
            st.lock().unwrap().closed(peer.ip());
            *quit = true;
            reply(&mut r, "221 2.0.0 bye")?;
            return Ok(());
        } else {
            reply(&mut r, "500 5.5.1 unknown")?;
        }
    }
}

/// Reads a PROXY protocol v2 header (HAProxy's specification, 2.2):
/// signature, version/command, family, length, then the addresses and
/// ports; (source, destination).
fn read_proxy_v2(mut conn: &TcpStream) -> std::io::Result<(SocketAddr, SocketAddr)> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
    let mut head = [0u8; 16];
    conn.read_exact(&mut head)?;
    if head[..12] != *b"\r\n\r\n\0\r\nQUIT\n" || head[12] != 0x21 {
        return Err(bad("not a PROXY v2 header"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    let (ip_len, v6) = match head[13] {
        0x11 => (4, false),
        0x21 => (16, true),
        _ => return Err(bad("not TCP over IPv4 or IPv6")),
    };
    if len < 2 * ip_len + 4 {
        return Err(bad("short PROXY header"));
    }
    let ip = |b: &[u8]| -> IpAddr {
        if v6 {
            <[u8; 16]>::try_from(b).unwrap().into()
        } else {
            <[u8; 4]>::try_from(b).unwrap().into()
        }
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let (src, dst) = (ip(&body[..ip_len]), ip(&body[ip_len..2 * ip_len]));
    let ports = &body[2 * ip_len..];
    Ok((
        SocketAddr::new(src, port(&ports[..2])),
        SocketAddr::new(dst, port(&ports[2..4])),
    ))
}

/// A rustls server config with a fresh self-signed certificate (rcgen).
pub fn self_signed_tls(name: &str) -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    server_config(&ck.cert.pem(), &ck.signing_key.serialize_pem())
}

/// A rustls server config (ring provider) from a PEM certificate chain
/// (the server's first) and key.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    Arc::new(config)
}

fn between_brackets(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd[start..].find('>').map_or(cmd.len(), |i| start + i);
    cmd[start..end].to_string()
}

/// A test certificate authority (rcgen) that issues sink certificates.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let cert: &rcgen::Certificate = issuer.as_ref();
        TestCa {
            pem: cert.pem(),
            issuer,
        }
    }

    /// A certificate for `name` this CA signed, and its key, as PEM.
    pub fn leaf_pem(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate for `name` this CA signed that expired in 2021, and
    /// its key, as PEM.
    pub fn expired_leaf_pem(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server config whose certificate for `name` this CA signed.
    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        self.server_config_for(&[name])
    }

    /// A server config whose certificate for all of `names` this CA signed.
    pub fn server_config_for(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        server_config(&cert.pem(), &key.serialize_pem())
    }
}
