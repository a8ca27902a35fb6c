//! One outbound SMTP connection: greeting, EHLO (HELO fallback), and mail
//! transactions with per-recipient results, pipelined when the server
//! offers PIPELINING.
//!
//! Owns: [`Client`], [`Outgoing`] and [`dsn_parameters`] (a message's DSN
//! request as passed on to a next hop that offers DSN). What leaves is what was accepted: the
//! stored body (canonical CRLF) dot-stuffed into a [`Wire`] (`proto::body::dot_stuff`).
//!
//! Must not: retry, pick hosts or touch the queue.
//!
//! Security: replies are parsed with a bound (`proto::server_reply::MAX_REPLY`);
//! every read and write has a timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::outcome::{DeliveryOutcome, from_io, from_reply};
use crate::config::OutboundTls;
use crate::proto::dsn_params::{orcpt_param, xtext_encode};
use crate::proto::server_reply::{ServerReply, parse_reply};
use crate::queue::Envelope;
use crate::tlsrpt::result_of_tls_error;
use mail_auth::report::tlsrpt::ResultType;
use rustls::CertificateError;

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// DSN (RFC 3461): NOTIFY, ORCPT, RET and ENVID are passed on.
    pub dsn: bool,
}

impl Extensions {
    fn from_ehlo(r: &ServerReply) -> Extensions {
        let mut ext = Extensions::default();
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "DSN" => ext.dsn = true,
                "SIZE" => ext.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                _ => {}
            }
        }
        ext
    }
}

/// A stored body as it goes after DATA: dot-stuffed and terminated
/// (`proto::body::dot_stuff`). Made once per attempt, for every try.
#[derive(Debug, Default)]
pub struct Wire(Vec<u8>);

impl Wire {
    /// The wire form of a stored body (canonical CRLF).
    pub fn of(body: Vec<u8>) -> Wire {
        Wire(crate::proto::body::dot_stuff(body))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The DSN request of `env` for a next hop that offers DSN: the MAIL
/// parameters (` RET=... ENVID=...`) and each of `rcpts`' RCPT parameters
/// (` NOTIFY=... ORCPT=...`); empty strings when the sender gave none
/// (nothing is allocated per recipient then).
pub fn dsn_parameters(env: &Envelope, rcpts: &[usize]) -> (String, Vec<String>) {
    let mut mail = String::new();
    if let Some(ret) = env.ret {
        mail.push_str(" RET=");
        mail.push_str(ret.as_text());
    }
    if let Some(envid) = &env.envid {
        mail.push_str(" ENVID=");
        mail.push_str(&xtext_encode(envid));
    }
    let asked = rcpts.iter().any(|&i| {
        let r = &env.recipients[i];
        r.notify.is_some() || r.orcpt.is_some()
    });
    if !asked {
        return (mail, Vec::new());
    }
    let params = rcpts
        .iter()
        .map(|&i| {
            let r = &env.recipients[i];
            let mut p = String::new();
            if let Some(n) = r.notify {
                p.push_str(" NOTIFY=");
                p.push_str(&n.as_text());
            }
            if let Some(o) = &r.orcpt {
                p.push_str(" ORCPT=");
                p.push_str(&orcpt_param(o));
            }
            p
        })
        .collect();
    (mail, params)
}

/// One message to send on a connection.
pub struct Outgoing<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The body as sent after DATA.
    pub wire: &'a Wire,
    /// The body's size as stored, for SIZE.
    pub size: u64,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// DSN parameters for MAIL (` RET=... ENVID=...`, or empty), sent
    /// when the server offers DSN.
    pub mail_dsn: &'a str,
    /// DSN parameters for each RCPT (` NOTIFY=... ORCPT=...`, or empty),
    /// in the order of `recipients` (empty: none for any).
    pub rcpt_dsn: &'a [String],
}

/// Why a connection could not be set up. A failed TLS handshake is told
/// apart so that the caller can retry the host in plaintext.
#[derive(Debug)]
pub struct ConnectError {
    pub outcome: DeliveryOutcome,
    pub tls_handshake: bool,
    /// The egress source's address could not be bound (not configured on
    /// this machine): the source is down, not the destination.
    pub source_down: bool,
    /// TLS could not be had as asked (a failed handshake or check, or no
    /// STARTTLS where TLS is required), as TLS reporting names it.
    pub tls_failure: Option<ResultType>,
}

impl From<DeliveryOutcome> for ConnectError {
    fn from(outcome: DeliveryOutcome) -> Self {
        ConnectError {
            outcome,
            tls_handshake: false,
            source_down: false,
            tls_failure: None,
        }
    }
}

pub struct Client {
    stream: crate::tls::Stream<TlsStream<TcpStream>>,
    /// Protocol and cipher once STARTTLS succeeded, for the delivery log.
    pub tls: Option<String>,
    buf: Vec<u8>,
    pub peer: SocketAddr,
    pub host: String,
    /// The TLS policy it was opened under (see `outbound::pool`).
    pub policy: OutboundTls,
    /// The TLSA set (`dane::TlsaSet::digest`) its certificate was checked
    /// against, if DANE applied.
    pub dane: Option<u64>,
    pub ext: Extensions,
    /// Transactions attempted on this connection.
    pub transactions: u32,
    /// The egress source it was opened from, if any.
    pub source: Option<String>,
    /// The last transaction ended with the reply to its data, so the
    /// server has reset its state itself (RFC 5321 4.1.1.4) and the next
    /// one needs no RSET.
    ended_cleanly: bool,
    /// Whether the connection can carry another transaction.
    pub usable: bool,
    /// The code of the reply to MAIL in the last transaction, once read.
    mail_reply: Option<u16>,
}

/// Where a new connection goes, where from, and what it says first.
pub struct Dial<'a> {
    pub peer: SocketAddr,
    /// The egress source to connect from (its address bound here, or
    /// named to its PROXY forwarder), if any.
    pub source: Option<&'a super::egress::Source>,
    /// The host name it is opened to (for TLS and the pool).
    pub host: &'a str,
    /// The EHLO name.
    pub helo: &'a str,
    /// This node: a server that greets with one of its names is this
    /// node again, and is not sent to.
    pub myself: &'a super::Myself,
    /// The TLSA set the certificate is checked against, if DANE applies
    /// (the TLS config passed to `connect` is then that set's).
    pub dane: Option<u64>,
}

/// The TCP connection to `peer` (from `source`'s address or through its
/// proxy), with its timeouts set.
async fn open_stream(
    peer: SocketAddr,
    source: Option<&super::egress::Source>,
    host: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let connected = match source {
        None => TcpStream::connect_timeout(peer, connect_timeout)
            .await
            .map_err(std::io::Error::from),
        Some(s) => match s.proxy {
            Some(proxy) => connect_via(proxy, s.address, peer, connect_timeout).await,
            None => connect_from(s.address, peer, connect_timeout).await,
        },
    };
    let stream = connected.map_err(|e| ConnectError {
        outcome: from_io(&format!("connect to {host}[{}]", peer.ip()), &e),
        tls_handshake: false,
        source_down: source.is_some_and(|s| s.proxy.is_none())
            && e.kind() == io::ErrorKind::AddrNotAvailable,
        tls_failure: None,
    })?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| from_io("socket", &e.into()))?;
    Ok(stream)
}

impl Client {
    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused);
    /// with `tls`, upgrades with STARTTLS when the server offers it and says
    /// EHLO again. A failure here means "try the next host": it is always
    /// temporary.
    pub async fn connect(
        dial: Dial<'_>,
        connect_timeout: Duration,
        timeout: Duration,
        tls: Option<&Arc<ClientConfig>>,
        policy: OutboundTls,
    ) -> Result<Client, ConnectError> {
        let Dial {
            peer,
            source,
            host,
            helo,
            myself,
            dane,
        } = dial;
        let require_tls = policy == OutboundTls::Require || dane.is_some();
        let stream = open_stream(peer, source, host, connect_timeout, timeout).await?;
        let mut c = Client {
            stream: crate::tls::Stream::Plain(stream),
            tls: None,
            buf: Vec::with_capacity(1024),
            peer,
            host: host.to_string(),
            policy,
            dane,
            ext: Extensions::default(),
            transactions: 0,
            source: source.map(|s| s.name.clone()),
            ended_cleanly: false,
            usable: true,
            mail_reply: None,
        };
        if let Some(e) = c.greet(helo, myself).await? {
            c.quit().await;
            return Err(e);
        }
        if let Some(config) = tls.filter(|_| c.ext.starttls) {
            let reply = c.command("STARTTLS\r\n").await?;
            if reply.code == 220 {
                c.start_tls(config)
                    .await
                    .map_err(|(outcome, result)| ConnectError {
                        outcome,
                        tls_handshake: true,
                        source_down: false,
                        tls_failure: Some(result),
                    })?;
                c.hello(helo).await?;
            }
        }
        if require_tls && c.tls.is_none() {
            c.usable = false;
            return Err(ConnectError {
                tls_failure: Some(ResultType::StartTlsNotSupported),
                ..DeliveryOutcome::Temporary {
                    reply: format!(
                        "TLS is required for {} and it did not offer STARTTLS",
                        c.host
                    ),
                }
                .into()
            });
        }
        Ok(c)
    }

    /// The greeting, then EHLO (HELO if refused). Ok(Some(loop)) when the
    /// server names itself as this MTA in either: the caller says QUIT.
    async fn greet(
        &mut self,
        helo: &str,
        myself: &super::Myself,
    ) -> Result<Option<ConnectError>, ConnectError> {
        let greeting = self.read_reply().await?;
        if greeting.code != 220 {
            return Err(DeliveryOutcome::Temporary {
                reply: format!("greeting: {}", greeting.one_line()),
            }
            .into());
        }
        let (host, ip) = (self.host.clone(), self.peer.ip());
        let looped = |reply: &ServerReply, what: &str| {
            reply
                .host_name()
                .filter(|name| myself.is_named(name))
                .map(|name| {
                    ConnectError::from(super::Myself::loop_outcome(&format!(
                        "{host}[{ip}] {what} as {name}"
                    )))
                })
        };
        if let Some(e) = looped(&greeting, "greets") {
            return Ok(Some(e));
        }
        let ehlo = self.hello(helo).await?;
        Ok(ehlo.as_ref().and_then(|r| looped(r, "answers EHLO")))
    }

    /// EHLO, or HELO if EHLO is refused. The EHLO reply, if it was taken.
    async fn hello(&mut self, helo: &str) -> Result<Option<ServerReply>, DeliveryOutcome> {
        let ehlo = self.command(&format!("EHLO {helo}\r\n")).await?;
        if ehlo.code == 250 {
            self.ext = Extensions::from_ehlo(&ehlo);
            return Ok(Some(ehlo));
        }
        self.ext = Extensions::default();
        let reply = self.command(&format!("HELO {helo}\r\n")).await?;
        if reply.code != 250 {
            return Err(DeliveryOutcome::Temporary {
                reply: format!("HELO: {}", reply.one_line()),
            });
        }
        Ok(Some(reply))
    }

    /// The client side of STARTTLS. Whatever the server sent after its 220
    /// arrived before encryption and is thrown away unread (it could be
    /// injected by a man in the middle).
    /// Err: why, and the failure as TLS reporting names it.
    async fn start_tls(
        &mut self,
        config: &Arc<ClientConfig>,
    ) -> Result<(), (DeliveryOutcome, ResultType)> {
        self.buf.clear();
        let name = ServerName::try_from(self.host.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(self.peer.ip().into()));
        let tcp = self.stream.take_plain().map_err(|e| {
            (
                self.io_failure("STARTTLS", e),
                ResultType::ValidationFailure,
            )
        })?;
        let handshake = TlsConnector::from(config.clone()).connect(name, tcp).await;
        let label = if handshake.is_ok() { "ok" } else { "failed" };
        ::metrics::counter!(crate::metrics::TLS_HANDSHAKES, "direction" => "outbound", "result" => label).increment(1);
        let tls = handshake.map_err(|e| {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            let result = rustls_error.map_or(ResultType::ValidationFailure, tls_result);
            // DANE's own words, not rustls's debug form of a custom error.
            let e = match rustls_error.and_then(dane_error) {
                Some(d) => io::Error::new(io::ErrorKind::InvalidData, format!("DANE: {d}")),
                None => e,
            };
            (self.io_failure("TLS handshake with", e), result)
        })?;
        let (_, conn) = tls.get_ref();
        self.tls = Some(format!(
            "{:?} {:?}",
            conn.protocol_version()
                .map_or(rustls::ProtocolVersion::Unknown(0), |v| v),
            conn.negotiated_cipher_suite().map(|s| s.suite())
        ))
        .map(|s| s.replace("Some(", "").replace(')', ""));
        self.stream = crate::tls::Stream::Tls(Box::new(tls));
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<ServerReply, DeliveryOutcome> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    if reply.code == 421 {
                        self.usable = false;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    self.usable = false;
                    return Err(DeliveryOutcome::Temporary {
                        reply: format!("bad reply from {}: {e}", self.host),
                    });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| self.io_failure("read", e))?;
            if n == 0 {
                return Err(self.io_failure("read", io::Error::from(io::ErrorKind::UnexpectedEof)));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DeliveryOutcome> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| self.io_failure("write", e))
    }

    async fn command(&mut self, line: &str) -> Result<ServerReply, DeliveryOutcome> {
        self.write(line.as_bytes()).await?;
        self.read_reply().await
    }

    fn io_failure(&mut self, stage: &str, e: io::Error) -> DeliveryOutcome {
        self.usable = false;
        from_io(&format!("{stage} {}[{}]", self.host, self.peer.ip()), &e)
    }

    /// One mail transaction. Ok: one outcome per recipient, in order.
    /// Err: the connection failed; no recipient's fate is known beyond
    /// "try again" (the outcome says why).
    pub async fn send(
        &mut self,
        msg: &Outgoing<'_>,
    ) -> Result<Vec<DeliveryOutcome>, DeliveryOutcome> {
        if let Some(refusal) = self.refuse_before_sending(msg) {
            return Ok(vec![refusal; msg.recipients.len()]);
        }
        let reset = self.transactions > 0 && !self.ended_cleanly;
        self.transactions += 1;
        self.ended_cleanly = false;
        self.mail_reply = None;
        let commands = self.envelope_commands(msg, reset);
        let mail_at = usize::from(reset);
        let replies = if self.ext.pipelining {
            self.write(commands.concat().as_bytes()).await?;
            let mut v = Vec::with_capacity(commands.len());
            for i in 0..commands.len() {
                let reply = self.read_reply().await?;
                if i == mail_at {
                    self.mail_reply = Some(reply.code);
                }
                v.push(reply);
            }
            v
        } else {
            let v = self.lockstep(&commands, reset).await?;
            self.mail_reply = v.get(mail_at).map(|r| r.code);
            v
        };
        let mut replies = replies.into_iter();
        if reset {
            let r = replies.next().expect("one reply per command");
            if r.code != 250 {
                self.usable = false;
                return Err(from_reply(&r).into_temporary());
            }
        }
        let mail = replies.next().expect("MAIL reply");
        let mut outcomes: Vec<Option<DeliveryOutcome>> = Vec::with_capacity(msg.recipients.len());
        for _ in msg.recipients {
            let r = replies.next();
            outcomes.push(match r {
                Some(r) if mail.code == 250 && r.code / 100 == 2 => None, // accepted: fate decided by the data
                Some(r) if mail.code == 250 => Some(from_reply(&r)),
                _ => Some(from_reply(&mail)),
            });
        }
        let data = replies.next();
        let accepted = outcomes.iter().any(Option::is_none);
        let final_outcome = match data {
            Some(d) if d.code == 354 && accepted => {
                self.write(msg.wire.as_bytes()).await?;
                let reply = self.read_reply().await?;
                self.ended_cleanly = true;
                from_reply(&reply)
            }
            Some(d) if d.code == 354 => {
                // Pipelined DATA was accepted with no valid recipient: end
                // it empty; the reply does not matter.
                self.write(b".\r\n").await?;
                self.read_reply().await?;
                self.ended_cleanly = true;
                DeliveryOutcome::Temporary {
                    reply: "no recipient accepted".into(),
                }
            }
            Some(d) => from_reply(&d),
            None => from_reply(&mail),
        };
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| final_outcome.clone()))
            .collect())
    }

    /// Whether the last transaction failed before the server took MAIL
    /// FROM: the connection broke (or the server said 421, closing) before
    /// anything of the message was accepted. On a pooled connection that
    /// means it had gone stale while idle (the server timed it out or
    /// restarted), and the message is tried again at once on a fresh one.
    pub fn failed_before_mail(&self) -> bool {
        match self.mail_reply {
            None => !self.usable,
            Some(code) => code == 421,
        }
    }

    /// Outcomes known without talking: limits the server announced.
    fn refuse_before_sending(&self, msg: &Outgoing<'_>) -> Option<DeliveryOutcome> {
        if self.ext.size.is_some_and(|max| msg.size > max) {
            return Some(DeliveryOutcome::permanent(
                "5.3.4",
                "message too big for the destination server",
            ));
        }
        if msg.smtputf8 && !self.ext.smtputf8 {
            return Some(DeliveryOutcome::permanent(
                "5.6.7",
                "destination server does not support SMTPUTF8",
            ));
        }
        if msg.eight_bit && !self.ext.eight_bit_mime {
            return Some(DeliveryOutcome::permanent(
                "5.6.3",
                "destination server does not support 8BITMIME",
            ));
        }
        None
    }

    fn envelope_commands(&self, msg: &Outgoing<'_>, reset: bool) -> Vec<String> {
        let mut cmds = Vec::with_capacity(msg.recipients.len() + 3);
        if reset {
            cmds.push("RSET\r\n".to_string());
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.sender);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if msg.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.ext.dsn {
            mail.push_str(msg.mail_dsn);
        }
        mail.push_str("\r\n");
        cmds.push(mail);
        for (i, r) in msg.recipients.iter().enumerate() {
            let dsn = match self.ext.dsn {
                true => msg.rcpt_dsn.get(i).map_or("", String::as_str),
                false => "",
            };
            cmds.push(format!("RCPT TO:<{r}>{dsn}\r\n"));
        }
        cmds.push("DATA\r\n".to_string());
        cmds
    }

    /// Without PIPELINING: one command at a time, stopping early where the
    /// protocol says the rest is pointless.
    async fn lockstep(
        &mut self,
        commands: &[String],
        reset: bool,
    ) -> Result<Vec<ServerReply>, DeliveryOutcome> {
        let mut replies = Vec::with_capacity(commands.len());
        let first_envelope = usize::from(reset);
        for (i, cmd) in commands.iter().enumerate() {
            let is_data = i == commands.len() - 1;
            if is_data
                && !replies[first_envelope + 1..]
                    .iter()
                    .any(|r: &ServerReply| r.code / 100 == 2)
            {
                break; // no recipient accepted: do not send DATA
            }
            let r = self.command(cmd).await?;
            let failed_mail = i == first_envelope && r.code != 250;
            let failed_reset = reset && i == 0 && r.code != 250;
            replies.push(r);
            if failed_mail || failed_reset {
                break;
            }
        }
        Ok(replies)
    }

    /// Ends the session politely (best effort).
    pub async fn quit(mut self) {
        let _ = glommio::timer::timeout(Duration::from_secs(2), async {
            let _ = self.command("QUIT\r\n").await;
            Ok(())
        })
        .await;
    }
}

impl DeliveryOutcome {
    /// A failed RSET means the connection is unreliable: whatever it said,
    /// the message is retried, not bounced.
    fn into_temporary(self) -> DeliveryOutcome {
        DeliveryOutcome::Temporary {
            reply: self.reply().to_string(),
        }
    }
}

/// A connection to `peer` through the PROXY v2 forwarder at `proxy`, as
/// if from `source`: a connection to the forwarder that starts with the
/// header naming both (the forwarder then connects to `peer` from
/// `source` and relays).
async fn connect_via(
    proxy: SocketAddr,
    source: std::net::IpAddr,
    peer: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let header = super::proxy::v2_header(SocketAddr::new(source, 0), peer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stream = TcpStream::connect_timeout(proxy, timeout).await?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&header).await?;
    Ok(stream)
}

/// A connection to `peer` from the local address `local` (an egress
/// source). glommio's `TcpStream::connect` cannot bind first, so the
/// socket is made, bound and connected (with `timeout`) on glommio's
/// blocking-task pool, made non-blocking, and handed to the executor.
async fn connect_from(
    local: std::net::IpAddr,
    peer: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    let fd = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<OwnedFd> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(peer),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(local, 0).into())?;
            socket.connect_timeout(&peer.into(), timeout)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .await?;
    // SAFETY: `fd` is a connected TCP socket that nothing else owns; the
    // stream takes it over.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

/// A failed handshake's error as a TLS report names it: DANE's own (a
/// record that does not match, a DANE-TA chain that does not verify), or
/// rustls's.
fn tls_result(e: &rustls::Error) -> ResultType {
    match dane_error(e) {
        Some(dane) => dane.result_type(),
        None => result_of_tls_error(e),
    }
}

/// DANE's error, when the certificate check that failed was DANE's.
fn dane_error(e: &rustls::Error) -> Option<&crate::dane::DaneError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<crate::dane::DaneError>()
        }
        _ => None,
    }
}
