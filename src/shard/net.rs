//! Listening sockets shared by every shard, and the accept loop's race
//! with the stop signal.
//!
//! Owns: [`probe_listen`] (is the address free, and which port does 0
//! become), [`bind_shared`] (one SO_REUSEPORT listener per shard) and
//! [`accept_or_stop`].
//!
//! Must not: know what a listener serves.

use std::net::SocketAddr;

use super::stop::StopSignal;

/// Pending connections per shard listener before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;

/// The next connection on `listener`, or None once `stop` fires. Every
/// accept loop of a shard races the two this way.
pub async fn accept_or_stop(
    listener: &glommio::net::TcpListener,
    stop: &StopSignal,
) -> Option<std::io::Result<glommio::net::TcpStream>> {
    futures_lite::future::or(
        async { Some(listener.accept().await.map_err(Into::into)) },
        async {
            stop.wait().await;
            None
        },
    )
    .await
}

/// A listener for one shard. Every shard binds the same address with
/// SO_REUSEPORT so the kernel spreads connections across shards. We build
/// the socket ourselves because glommio's `TcpListener::bind` leaves out
/// SO_REUSEADDR: the accepted connections then linger in TIME_WAIT without
/// it, and a restart right after a crash could not bind the port.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a listening TCP socket that we own and hand
    // over whole; nothing else closes it.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// SO_REUSEPORT (which every shard's listener needs) would let us share a
/// port with a stale instance without an error. Binding once without it
/// finds that out. Port 0 is resolved here, so all shards share one port.
pub fn probe_listen(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(addr)?.local_addr()
}
