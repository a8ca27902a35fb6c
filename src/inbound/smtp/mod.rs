//! Inbound SMTP: the listener of one shard and the loop that drives each
//! connection.
//!
//! Owns: [`SmtpService`] (what a shard's sessions share: config, the
//! reception door, TLS, users), [`serve`] (accept loop) and the
//! per-connection driver that
//! turns bytes into commands, commands into [`session::Action`]s, and
//! actions into replies.
//!
//! Files: `conn` (buffered socket I/O, plain or TLS), `session` (the state
//! machine for envelope verbs), `data` (DATA/BDAT bodies and the hand-off to
//! the reception door), `auth` (AUTH on the submission listener). STARTTLS lives
//! here; the connection limits (global and per client IP) are this
//! listener's `shard::admission::Admission`.
//!
//! Shutdown: the accept loop stops; idle sessions (no transaction open)
//! get `421 4.3.2` and are closed at once, also those waiting for the
//! client's next command (their socket's read side is shut down, which
//! ends the wait); sessions in a transaction get `shutdown_grace_secs` to
//! finish it, then `421 4.3.2` at their next command boundary. Any left at
//! the deadline have their sockets shut down and end.
//!
//! Concurrency: each shard accepts on its own SO_REUSEPORT listener and runs
//! its sessions on its own executor; a session never leaves its shard, and
//! the messages it accepts are minted for and stored in its shard's spool,
//! so the accept-to-disk path crosses no thread.
//!
//! Must not: queue anything except through the reception door
//! (`inbound::Door`).
//!
//! Security: every reply to an error counts towards `max_errors`; input
//! limits are enforced by `proto`, timeouts by `conn`.

pub mod auth;
pub mod conn;
pub mod data;
pub mod session;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use crate::config::{Config, LineEndings};
use crate::inbound::Door;
use crate::proto::command;
use crate::proto::line::{LineEvent, LineSplitter};
use crate::proto::reply::{Rejection, Reply};
use crate::shard::admission::{Admission, ConnSlot};
use crate::shard::net::{Bound, Listener};
use crate::shard::share;
use crate::shard::stop::StopSignal;
use crate::shard::tasks::TaskSet;
use conn::{Conn, is_timeout};
use data::{BodyInProgress, Step};
use session::{Action, Session};

/// What the sessions of one shard share. Lives on that shard's executor.
pub struct SmtpService {
    pub index: u16,
    pub shards: usize,
    pub cfg: Arc<Config>,
    /// Where accepted messages go (this shard's reception door).
    pub door: Rc<Door>,
    /// Inbound STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// Submission users, when submission is enabled.
    pub users: Option<Arc<auth::Users>>,
    pub auth_failures: auth::FailureLimiter,
    /// Set on shutdown: sessions close at their next command boundary.
    pub draining: std::cell::Cell<bool>,
}

/// The open sessions of one listener on one shard, by socket, and whether
/// each is idle (waiting for a command, no transaction open: safe to close
/// at shutdown). Only used to end sessions at shutdown.
#[derive(Default)]
struct Sessions {
    by_fd: RefCell<HashMap<RawFd, bool>>,
}

impl Sessions {
    /// Ends the read side of the matching sessions' sockets: a session
    /// waiting for input wakes up with end-of-file and closes (an idle one
    /// with a 421 first).
    fn shut_down(&self, only_idle: bool, how: libc::c_int) {
        for (&fd, &idle) in self.by_fd.borrow().iter() {
            if idle || !only_idle {
                // SAFETY: the descriptor belongs to a live session, which
                // leaves this map before it closes its socket.
                unsafe { libc::shutdown(fd, how) };
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_fd.borrow().is_empty()
    }
}

/// A session's place in [`Sessions`], given back when the session ends.
struct SessionMark {
    sessions: Rc<Sessions>,
    fd: RawFd,
}

impl SessionMark {
    fn new(sessions: &Rc<Sessions>, fd: RawFd) -> SessionMark {
        sessions.by_fd.borrow_mut().insert(fd, false);
        SessionMark {
            sessions: sessions.clone(),
            fd,
        }
    }

    fn set_idle(&self, idle: bool) {
        if let Some(v) = self.sessions.by_fd.borrow_mut().get_mut(&self.fd) {
            *v = idle;
        }
    }
}

impl Drop for SessionMark {
    fn drop(&mut self) {
        self.sessions.by_fd.borrow_mut().remove(&self.fd);
    }
}

/// Accepts connections until `stop` is disconnected, one task per session.
/// On stop, the sessions still open are cancelled (see `shard::tasks`).
/// `submission` marks the submission listener (AUTH required to send).
pub async fn serve(listener: Bound, service: Rc<SmtpService>, submission: bool, stop: StopSignal) {
    let sessions = TaskSet::default();
    let open = Rc::new(Sessions::default());
    let cfg = &service.cfg.smtp;
    let (index, shards) = (service.index as usize, service.shards);
    let admission = Admission::new(
        share(cfg.max_connections, index, shards),
        share(cfg.max_connections_per_ip, index, shards),
        Some(crate::metrics::SMTP_CONNECTIONS),
    );
    let listener = Listener::new(listener, stop.clone());
    loop {
        match listener.next().await {
            None => break,
            Some(Ok(stream)) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                match admission.admit(peer.ip()) {
                    Ok(ticket) => sessions.spawn(handle_connection(
                        stream,
                        peer,
                        service.clone(),
                        submission,
                        open.clone(),
                        ticket,
                    )),
                    Err(_) => sessions.spawn(turn_away(stream)),
                }
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("shard {}: accept: {e}", service.index);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Shutdown: no new connections (the listener was shut down). Idle
    // sessions end now (a session that
    // is not waiting sees `draining` before it waits again); sessions in a
    // transaction get the grace period; the rest are shut down.
    drop(listener);
    service.draining.set(true);
    open.shut_down(true, libc::SHUT_RD);
    let grace = Duration::from_secs(service.cfg.server.shutdown_grace_secs);
    let deadline = stop.deadline(grace);
    while !open.is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    open.shut_down(false, libc::SHUT_RDWR);
    sessions
        .wait_until_at_most(0, std::time::Instant::now() + Duration::from_millis(500))
        .await;
    sessions.cancel_all();
}

/// Over the limits: one 421 and close, without reading anything.
async fn turn_away(stream: TcpStream) {
    ::metrics::counter!(crate::metrics::SMTP_CONNECTIONS_REJECTED).increment(1);
    use futures::AsyncWriteExt;
    let mut stream = stream;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream
        .write_all(&Rejection::TooManyConnections.reply().to_bytes())
        .await;
    let _ = stream.close().await;
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: Rc<SmtpService>,
    submission: bool,
    open: Rc<Sessions>,
    _ticket: ConnSlot,
) {
    let listener = if submission { "submission" } else { "smtp" };
    ::metrics::counter!(crate::metrics::SMTP_CONNECTIONS_TOTAL, "listener" => listener)
        .increment(1);
    let cfg = service.cfg.clone();
    let idle = Duration::from_secs(cfg.smtp.idle_timeout_secs);
    let lifetime = Duration::from_secs(cfg.smtp.max_session_secs);
    let mark = SessionMark::new(&open, stream.as_raw_fd());
    let Ok(mut conn) = Conn::new(stream, cfg.smtp.max_command_line + 2, idle, lifetime) else {
        return;
    };
    let mut session = Session::new(&cfg, peer.ip(), submission).with_door(&service.door);
    drive(&mut conn, &mut session, &service, &mark).await;
    conn.close().await;
}

/// The command loop of one session. Returns when the session must end; any
/// final reply is queued on `conn`.
async fn drive(
    conn: &mut Conn,
    session: &mut Session<'_>,
    service: &SmtpService,
    mark: &SessionMark,
) {
    let cfg = &service.cfg.smtp;
    let mut splitter = LineSplitter::new(cfg.max_command_line);
    let mut bdat: Option<BodyInProgress> = None;
    let mut errors = 0u32;
    conn.queue(&session.greeting());
    loop {
        let action = match splitter.next(conn.pending()) {
            LineEvent::Line { bare_lf: true, .. } if cfg.bare_lf == LineEndings::Reject => {
                Action::Close(Rejection::BareLf.reply())
            }
            LineEvent::Line { len, consumed, .. } => {
                let parsed = command::parse(&conn.pending()[..len]);
                conn.consume(consumed);
                // A drained node or a full spool says so at MAIL.
                let mail = matches!(parsed, Ok(command::Command::Mail { .. }));
                match mail && session.tx.is_none() {
                    true => refused_at_mail(&service.door),
                    false => None,
                }
                .unwrap_or_else(|| session.handle(parsed))
            }
            LineEvent::TooLong { consumed } => {
                conn.consume(consumed);
                Action::Reply(Rejection::LineTooLong.reply())
            }
            LineEvent::Skipped { consumed } => {
                conn.consume(consumed);
                continue;
            }
            LineEvent::Incomplete => {
                let idle = session.tx.is_none() && bdat.is_none();
                match read_more(conn, service, mark, idle).await {
                    Input::More => continue,
                    Input::End => return,
                    Input::Act(action) => action,
                }
            }
        };
        let outcome = perform(action, conn, session, service, &mut bdat).await;
        if session.tx.is_none() {
            bdat = None;
        }
        let reply: Reply = match outcome {
            Step::Reply(r) => r,
            Step::Close(r) => {
                conn.queue_last(&r);
                return;
            }
            Step::Disconnected => return,
            Step::Silent => continue,
        };
        conn.queue(&reply);
        if reply.is_error() {
            errors += 1;
            if errors >= cfg.max_errors {
                conn.queue_last(&Rejection::TooManyErrors.reply());
                return;
            }
        }
    }
}

/// What waiting for more input from the client came to.
enum Input {
    /// Bytes arrived: parse on.
    More,
    /// The client went away.
    End,
    /// The session ends with this.
    Act(Action),
}

/// Waits for more bytes from the client (`idle`: between transactions,
/// where a shutdown may end the session).
async fn read_more(
    conn: &mut Conn,
    service: &SmtpService,
    mark: &SessionMark,
    idle: bool,
) -> Input {
    if idle && service.draining.get() {
        return Input::Act(Action::Close(Rejection::ShuttingDown.reply()));
    }
    mark.set_idle(idle);
    let read = conn.fill().await;
    mark.set_idle(false);
    match read {
        // End of input at shutdown: the read side was shut down here (see
        // `serve`), the client still reads.
        Ok(0) if idle && service.draining.get() => {
            Input::Act(Action::Close(Rejection::ShuttingDown.reply()))
        }
        Ok(0) => Input::End,
        Ok(_) => Input::More,
        Err(e) if is_timeout(&e) => Input::Act(Action::Close(Rejection::Timeout.reply())),
        Err(_) => Input::End,
    }
}

/// Carries out what the session decided: a reply, or reading a body,
/// STARTTLS or AUTH.
async fn perform(
    action: Action,
    conn: &mut Conn,
    session: &mut Session<'_>,
    service: &SmtpService,
    bdat: &mut Option<BodyInProgress>,
) -> Step {
    match action {
        Action::Reply(r) => Step::Reply(r),
        Action::Close(r) => Step::Close(r),
        // Only a client that said EHLO was told it may pipeline: anything
        // else sent before the 354 is out of step (RFC 2920 3.1).
        Action::ReadData if !session.esmtp && !conn.pending().is_empty() => {
            Step::Close(Rejection::Unsynchronized.reply())
        }
        Action::ReadData => data::receive_data(conn, session, service).await,
        Action::ReadBdat { size, last } => {
            data::receive_bdat(conn, session, service, bdat, size, last).await
        }
        Action::StartTls => start_tls(conn, session, service).await,
        Action::Auth { mechanism, initial } => {
            auth::authenticate(conn, session, service, &mechanism, initial).await
        }
    }
}

/// STARTTLS (RFC 3207). Anything the client sent after the command, before
/// the handshake, arrived in plaintext and could have been injected by a
/// man in the middle (CVE-2011-0411): it is discarded, never executed, and
/// the connection is closed.
async fn start_tls(conn: &mut Conn, session: &mut Session<'_>, service: &SmtpService) -> Step {
    let Some(acceptor) = &service.tls else {
        return Step::Reply(Rejection::NotImplemented.reply());
    };
    let injected = conn.discard_pending();
    if injected > 0 {
        log::warn!(
            "{}: {injected} bytes pipelined after STARTTLS discarded, closing",
            session.client_ip()
        );
        return Step::Close(Rejection::PipelinedAfterStartTls.reply());
    }
    conn.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
    if conn.flush().await.is_err() {
        return Step::Disconnected;
    }
    let result = conn.start_tls(acceptor).await;
    let label = if result.is_ok() { "ok" } else { "failed" };
    ::metrics::counter!(crate::metrics::TLS_HANDSHAKES, "direction" => "inbound", "result" => label).increment(1);
    match result {
        Ok(()) => {
            session.tls_started();
            Step::Silent
        }
        Err(e) => {
            log::info!("{}: TLS handshake failed: {e}", session.client_ip());
            Step::Disconnected
        }
    }
}

/// Why a new transaction is refused at MAIL, before the body comes: the
/// node is drained to another (421: the client should go to another MX,
/// RFC 5321 3.8), or the spool is full (452, RFC 5321 4.5.3.1.10).
fn refused_at_mail(door: &crate::inbound::Door) -> Option<Action> {
    if door.draining() {
        return Some(Action::Close(Rejection::ShuttingDown.reply()));
    }
    (!door.has_room()).then(|| Action::Reply(Rejection::InsufficientStorage.reply()))
}
