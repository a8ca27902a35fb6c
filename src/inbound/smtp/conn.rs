//! One client connection's buffered I/O.
//!
//! Owns: the bounded read buffer and the reply buffer of a session.
//!
//! Replies are queued and written only when the session needs more input
//! ([`Conn::fill`] flushes first) or ends. That one rule implements
//! PIPELINING (RFC 2920): every reply to a pipelined group goes out in order
//! in one write, and a client that waits for a reply always gets it.
//!
//! Must not: interpret bytes; the session and `proto` do.
//!
//! Security: the read buffer never grows past its cap; idle reads and
//! blocked writes time out (glommio socket timeouts), so a silent or
//! non-reading peer costs a bounded amount of memory for a bounded time.

use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use crate::proto::reply::Reply;
use crate::tls::ServerStream;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;

pub struct Conn {
    stream: ServerStream,
    /// Input is `buf[start..end]`. The vector only grows (zero-filled once),
    /// so a read does not clear memory it is about to overwrite.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
    out: Vec<u8>,
    /// The session ends at this time however active it is.
    deadline: Instant,
    /// The server ends the session with an error reply (421, 554, ...):
    /// see [`Conn::close`].
    linger: bool,
}

/// How long a connection the server closes keeps reading (and discarding)
/// what the client still sends, at most.
const LINGER: Duration = Duration::from_secs(1);
/// How much it reads so, at most.
const LINGER_BYTES: usize = 64 * 1024;

impl Conn {
    /// `cap` bounds the bytes held unconsumed; it must exceed the longest
    /// command line.
    pub fn new(
        stream: TcpStream,
        cap: usize,
        idle: Duration,
        lifetime: Duration,
    ) -> io::Result<Conn> {
        stream.set_read_timeout(Some(idle))?;
        stream.set_write_timeout(Some(idle))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: ServerStream::Plain(stream),
            buf: Vec::new(),
            start: 0,
            end: 0,
            cap: cap.max(READ_CHUNK),
            out: Vec::with_capacity(512),
            deadline: Instant::now() + lifetime,
            linger: false,
        })
    }

    /// Unconsumed input.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Drops all unconsumed input (e.g. bytes pipelined after STARTTLS).
    pub fn discard_pending(&mut self) -> usize {
        let n = self.end - self.start;
        self.consume(n);
        n
    }

    /// Queues a reply; every reply the server sends passes here, so this is
    /// where replies are counted by class.
    pub fn queue(&mut self, reply: &Reply) {
        crate::metrics::count_reply(reply.code);
        reply.write_to(&mut self.out);
    }

    /// Queues the reply the session ends with. After an error reply
    /// (421, 554, ...) the client may still be sending: see
    /// [`Conn::close`]. After `221` to QUIT it has nothing more to say.
    pub fn queue_last(&mut self, reply: &Reply) {
        self.queue(reply);
        self.linger = reply.is_error();
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Flushes and closes; under TLS this sends close_notify, so the client
    /// can tell a clean end from a truncation. A plain connection needs no
    /// shutdown call (a syscall per session): dropping it closes it.
    ///
    /// When the server ends the session with an error reply
    /// ([`Conn::queue_last`]) a pipelining client may still be sending: closing a socket with
    /// unread input makes the kernel send a reset, which can destroy the
    /// reply before the client reads it. So the write side is shut down
    /// (the client sees the reply, then the end) and input is read and
    /// dropped until the client closes, for at most [`LINGER`] and
    /// [`LINGER_BYTES`].
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        match &self.stream {
            ServerStream::Tls(_) => {
                let _ = self.stream.close().await;
            }
            ServerStream::Plain(tcp) if self.linger => {
                if tcp.shutdown(std::net::Shutdown::Write).await.is_err() {
                    return;
                }
                let _ = tcp.set_read_timeout(Some(LINGER));
                let until = Instant::now() + LINGER;
                let mut read = 0;
                let mut chunk = [0u8; 4096];
                while read < LINGER_BYTES && Instant::now() < until {
                    match self.stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs the server side of a TLS handshake on the plain connection.
    /// The caller has flushed the 220 and checked that no input is pending.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let tcp = self.stream.take_plain()?;
        debug_assert!(self.pending().is_empty() && self.out.is_empty());
        let tls = acceptor.accept(tcp).await?;
        self.stream = ServerStream::Tls(Box::new(tls));
        Ok(())
    }

    /// Flushes queued replies, then reads more input. Ok(0) means the peer
    /// closed; an error of kind `TimedOut` means it stayed silent too long or
    /// the session outlived `max_session_secs`.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.flush().await?;
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "session time limit",
            ));
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.cap.saturating_sub(self.end).min(READ_CHUNK);
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "read buffer full",
            ));
        }
        if self.buf.len() < self.end + room {
            self.buf.resize(self.end + room, 0);
        }
        let result = self
            .stream
            .read(&mut self.buf[self.end..self.end + room])
            .await;
        self.end += *result.as_ref().unwrap_or(&0);
        result
    }
}

/// Whether an I/O error is a timeout (glommio reports these in two ways).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}
