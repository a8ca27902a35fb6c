//! A real authoritative DNS server on loopback (hickory-server), serving
//! zones built from the records a test gives it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, MX, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// Records of the test zone, by name (absolute or relative to the zone).
pub enum Rr {
    Mx(&'static str, u16, &'static str),
    A(&'static str, IpAddr),
    /// One TXT record; the text is split into strings of 255 octets.
    Txt(String, String),
    /// A PTR record: its name (`21.0.0.127.in-addr.arpa`) and target.
    Ptr(String, &'static str),
}

/// Serves `zone` with `records` on 127.0.0.1 (UDP and TCP, same port) until
/// the process ends. Names not in the zone get NXDOMAIN.
#[allow(dead_code)]
pub fn serve(zone: &str, records: Vec<Rr>) -> SocketAddr {
    serve_zones(vec![(zone, records)])
}

/// Serves several zones (say a domain and `127.in-addr.arpa`) from one
/// server, as [`serve`] does one.
pub fn serve_zones(zones: Vec<(&str, Vec<Rr>)>) -> SocketAddr {
    let mut catalog = Catalog::new();
    for (zone, records) in zones {
        let (origin, handler) = zone_handler(zone, records);
        catalog.upsert(LowerName::from(&origin), vec![Arc::new(handler)]);
    }
    // UDP and TCP on one port number: the TCP port may be taken by some
    // connection's source port, so try until both bind.
    let (udp, tcp, addr) = (0..50)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let addr = udp.local_addr().ok()?;
            let tcp = std::net::TcpListener::bind(addr).ok()?;
            Some((udp, tcp, addr))
        })
        .expect("a port free for both UDP and TCP");
    udp.set_nonblocking(true).unwrap();
    tcp.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut server = Server::new(catalog);
            server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
            server.register_listener(
                tokio::net::TcpListener::from_std(tcp).unwrap(),
                Duration::from_secs(5),
                4096,
            );
            let _ = server.block_until_done().await;
        });
    });
    addr
}

fn zone_handler(zone: &str, records: Vec<Rr>) -> (Name, InMemoryZoneHandler<TokioRuntimeProvider>) {
    let origin = Name::from_str(&format!("{zone}.")).unwrap();
    let abs = |n: &str| {
        if n == "." {
            Name::root()
        } else if n.ends_with('.') {
            Name::from_str(n).unwrap()
        } else {
            Name::from_str(&format!("{n}.")).unwrap()
        }
    };
    let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        abs(&format!("ns.{zone}")),
        abs(&format!("hostmaster.{zone}")),
        1,
        3600,
        600,
        86400,
        1,
    );
    handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for rr in records {
        let record = match rr {
            Rr::Mx(name, pref, exchange) => {
                Record::from_rdata(abs(name), 1, RData::MX(MX::new(pref, abs(exchange))))
            }
            Rr::A(name, IpAddr::V4(ip)) => Record::from_rdata(abs(name), 1, RData::A(A(ip))),
            Rr::A(_, IpAddr::V6(_)) => unimplemented!("tests use IPv4 sinks"),
            Rr::Txt(name, text) => {
                let strings = text
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                Record::from_rdata(abs(&name), 60, RData::TXT(TXT::new(strings)))
            }
            Rr::Ptr(name, target) => {
                Record::from_rdata(abs(&name), 60, RData::PTR(PTR(abs(target))))
            }
        };
        assert!(handler.upsert_mut(record, 1));
    }
    (origin, handler)
}
