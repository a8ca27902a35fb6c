//! A candidate relay floor (issue 34): a forwarder that does no work at
//! all. It accepts a connection, connects to the next hop, and copies
//! bytes both ways until either side closes: no parsing, no spool, no
//! fsync. Like ringpost it runs one glommio executor per core on
//! io_uring, each accepting on the same port (SO_REUSEPORT).
//!
//! Not a floor for an MTA as it stands: it adds the next hop's round trip
//! to every SMTP round trip and opens a next-hop connection per client
//! connection, where an MTA answers locally and pools its outbound
//! connections, so it can measure below ringpost (benches/results/README.md).
//!
//!     cargo bench --bench forward -- [LISTEN] [UPSTREAM]
//!
//! Defaults: 127.0.0.1:2527 (where the harness injects) to 127.0.0.1:2626
//! (its smtp-sink). Loopback addresses only. The floor benches/loadtest.sh
//! runs is `benches/relay_floor.rs`, a store-and-forward relay.

use std::net::SocketAddr;

use futures::io::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

fn arg(i: usize, default: &str) -> SocketAddr {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let addr: SocketAddr = args
        .get(i)
        .map_or(default, String::as_str)
        .parse()
        .expect("an address");
    assert!(addr.ip().is_loopback(), "loopback only");
    addr
}

/// Copies one connection to `upstream` and back until either side ends.
async fn forward(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, mut client_w) = client.split();
    let (server_r, mut server_w) = server.split();
    let up = futures::io::copy(client_r, &mut server_w);
    let down = futures::io::copy(server_r, &mut client_w);
    // Either direction ending (QUIT answered, a reset) ends the pair.
    futures::future::select(Box::pin(up), Box::pin(down)).await;
}

fn main() {
    let listen = arg(0, "127.0.0.1:2527");
    let upstream = arg(1, "127.0.0.1:2626");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(cores, None))
        .on_all_shards(move || async move {
            let listener = TcpListener::bind(listen).expect("bind");
            loop {
                let Ok(client) = listener.accept().await else {
                    continue;
                };
                glommio::spawn_local(forward(client, upstream)).detach();
            }
        })
        .expect("executors")
        .join_all();
}
