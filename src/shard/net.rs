//! Listening sockets shared by every shard, and the accept loop's race
//! with the stop signal.
//!
//! Owns: [`probe_listen`] (is the address free, and which port does 0
//! become; [`probe_and_hold`] keeps port 0's until the shards bind it),
//! [`reserve_shared`] (one SO_REUSEPORT listener per shard,
//! bound at start-up and adopted by its shard's executor) and
//! [`Listener`], which accepts until the stop signal.
//!
//! Stopping a listener: when the stop signal fires, the listening socket
//! is shut down. That ends the accept under way with an error, and resets
//! the connections still in the kernel's backlog. (Dropping the accept
//! instead, as a race with the signal would, leaves glommio's io_uring
//! accept in flight: a client that connects in that moment is accepted by
//! the kernel into a socket nobody owns, and waits for a greeting until it
//! gives up. Seen in a test as a connection made during a stop that hung
//! for its 10 s timeout.)
//!
//! Must not: know what a listener serves.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use super::stop::StopSignal;

/// Pending connections per shard listener before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;

/// A shard's listening socket, adopted by its executor ([`Reserved::adopt`]).
pub struct Bound {
    listener: glommio::net::TcpListener,
    fd: RawFd,
}

/// A listening socket that stops accepting when its stop signal fires.
pub struct Listener {
    bound: Rc<Bound>,
    stop: StopSignal,
}

impl Listener {
    /// Starts watching `stop`: when it fires, the socket is shut down.
    pub fn new(bound: Bound, stop: StopSignal) -> Listener {
        let bound = Rc::new(bound);
        let watched = bound.clone();
        let signal = stop.clone();
        glommio::spawn_local(async move {
            signal.wait().await;
            // SAFETY: the watcher holds the listener, so the descriptor is
            // open; shutting down a listening socket only ends its accepts.
            unsafe { libc::shutdown(watched.fd, libc::SHUT_RDWR) };
        })
        .detach();
        Listener { bound, stop }
    }

    /// The next connection, or None once the stop signal has fired.
    pub async fn next(&self) -> Option<std::io::Result<glommio::net::TcpStream>> {
        if self.stop.is_stopped() {
            return None;
        }
        match self.bound.listener.accept().await {
            Ok(stream) => Some(Ok(stream)),
            Err(_) if self.stop.is_stopped() => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// A shard's listening socket, bound and listening (any thread may make
/// it), until its shard's executor adopts it.
#[derive(Debug)]
pub struct Reserved(std::os::fd::OwnedFd);

/// A listener for one shard. Every shard binds the same address with
/// SO_REUSEPORT so the kernel spreads connections across shards. We build
/// the socket ourselves because glommio's `TcpListener::bind` leaves out
/// SO_REUSEADDR: the accepted connections then linger in TIME_WAIT without
/// it, and a restart right after a crash could not bind the port.
/// Start-up binds every shard's sockets right after [`probe_listen`],
/// before the shards start: between the two another process could take
/// the port, and SO_REUSEPORT would let it share the port silently.
pub fn reserve_shared(addr: SocketAddr) -> std::io::Result<Reserved> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(Reserved(socket.into()))
}

impl Reserved {
    /// The socket as a listener of the calling shard's executor.
    pub fn adopt(self) -> Bound {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let fd = self.0.into_raw_fd();
        // SAFETY: the descriptor is a listening TCP socket that we own and
        // hand over whole; nothing else closes it.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        Bound { listener, fd }
    }
}

/// SO_REUSEPORT (which every shard's listener needs) would let us share a
/// port with a stale instance without an error. Binding once without it
/// finds that out. Port 0 is resolved here, so all shards share one port.
/// The probe binds without listening.
///
/// A predecessor killed a moment ago may still hold the address: the
/// kernel tears a dead process's io_uring down in a worker after the
/// process is reaped, and sockets with requests in flight close only then
/// (measured by benches/soak.py: about 10 ms after SIGKILL under load). So
/// "in use" is retried for up to [`RELEASE_WAIT`] before it is an error.
pub fn probe_listen(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        // Bound, never listening: a client that connects while we look
        // is refused, not accepted into a socket about to close (which
        // would reset it).
        match bind_probe(addr, false) {
            Ok((bound, _)) => return Ok(bound),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`probe_listen`], except that port 0 (any free port: no predecessor can
/// hold it) is resolved by a socket bound with SO_REUSEPORT and kept,
/// never listening, until the caller drops it once every shard has bound
/// the port: until then the kernel gives the port to no one else, so two
/// servers started at once (tests in one process) cannot come to share
/// it, which a probe that let go of the port allowed.
pub fn probe_and_hold(addr: SocketAddr) -> std::io::Result<(SocketAddr, Option<socket2::Socket>)> {
    if addr.port() != 0 {
        return Ok((probe_listen(addr)?, None));
    }
    let (bound, socket) = bind_probe(addr, true)?;
    Ok((bound, Some(socket)))
}

/// A socket bound to `addr`, never listening (SO_REUSEADDR, as std's
/// bind: a predecessor's connections in TIME_WAIT do not hold the
/// address; SO_REUSEPORT when `shared`), and the address it got.
fn bind_probe(addr: SocketAddr, shared: bool) -> std::io::Result<(SocketAddr, socket2::Socket)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
    Ok((bound, socket))
}

/// How long [`probe_listen`] waits for an address a dead predecessor holds.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    /// A predecessor's socket that closes a moment after the start (as a
    /// killed process's io_uring does) does not fail the start; one that
    /// stays is an error after the wait.
    #[test]
    fn the_probe_waits_briefly_for_an_address_to_be_released() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        assert_eq!(probe_listen(addr).unwrap(), addr);
        releaser.join().unwrap();

        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        let err = probe_listen(busy.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(started.elapsed() >= RELEASE_WAIT);
    }

    /// Port 0's port is held (no other probe gets it) and the shards'
    /// listeners bind it all the same; it takes connections only once
    /// they listen.
    #[test]
    fn a_held_port_is_no_one_elses_and_the_shards_bind_it() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (port, holder) = probe_and_hold(any).unwrap();
        assert!(holder.is_some());
        for _ in 0..200 {
            assert_ne!(probe_and_hold(any).unwrap().0, port);
        }
        let shards = [reserve_shared(port).unwrap(), reserve_shared(port).unwrap()];
        drop(holder);
        assert!(std::net::TcpStream::connect(port).is_ok());
        drop(shards);
        let named = probe_and_hold(port).unwrap();
        assert_eq!(named.0, port);
        assert!(named.1.is_none(), "a named port is probed, not held");
    }
}
