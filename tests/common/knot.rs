//! A real authoritative DNS server with DNSSEC for tests: Knot DNS
//! (`knotd`, Debian's `knot`) on a loopback port, signing the zones asked
//! to be signed with keys it makes itself, and the trust anchor a
//! validating resolver needs (`keymgr ... dnskey`).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Zone<'a> {
    /// The zone's name, without the final dot (`test`, `child.test`).
    pub name: &'a str,
    /// The zone file's records, relative to the zone (`$ORIGIN` is set).
    pub records: String,
    /// Signed by knotd (ECDSA P-256, NSEC, one key: the anchor is all of
    /// the zone's DNSKEY set, as the resolver needs).
    pub signed: bool,
}

pub struct Knot {
    pub addr: SocketAddr,
    /// The DNSKEY records of the first signed zone: the trust anchor.
    pub anchor: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP and TCP port both free on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn config(dir: &Path, port: u16, zones: &[Zone]) -> String {
    let mut conf = format!(
        "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n\
         database:\n    storage: {d}/db\n\
         policy:\n  - id: quick\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    nsec3: off\n\
         template:\n  - id: default\n    storage: {d}\n\
         zone:\n",
        d = dir.display()
    );
    for z in zones {
        conf.push_str(&format!(
            "  - domain: {}\n    file: {}.zone\n",
            z.name, z.name
        ));
        if z.signed {
            conf.push_str("    dnssec-signing: on\n    dnssec-policy: quick\n");
        }
    }
    conf
}

impl Knot {
    /// Serves `zones`; returns once knotd has loaded (and signed) them all.
    pub fn serve(zones: &[Zone]) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        for z in zones {
            let text = format!(
                "$ORIGIN {n}.\n$TTL 60\n@ SOA ns.{n}. hostmaster.{n}. 1 60 60 600 60\n{}",
                z.records,
                n = z.name
            );
            std::fs::write(dir.path().join(format!("{}.zone", z.name)), text).unwrap();
        }
        let port = free_port();
        let conf = dir.path().join("knot.conf");
        std::fs::write(&conf, config(dir.path(), port, zones)).unwrap();
        let log = dir.path().join("knotd.log");
        let mut child = Command::new("knotd")
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("knotd (Debian package knot) runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let loaded = zones
                .iter()
                .all(|z| text.contains(&format!("[{}.] loaded", z.name)));
            if loaded {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("knotd did not load:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let first = zones.iter().find(|z| z.signed).expect("a signed zone");
        let keys = Command::new("keymgr")
            .arg("-c")
            .arg(&conf)
            .arg(format!("{}.", first.name))
            .arg("dnskey")
            .output()
            .expect("keymgr (Debian package knot) runs");
        assert!(keys.status.success(), "{keys:?}");
        let anchor = dir.path().join("anchor.keys");
        // keymgr prints `NAME DNSKEY ...`; the resolver reads full
        // records, with TTL and class.
        let records: String = String::from_utf8_lossy(&keys.stdout)
            .lines()
            .filter_map(|l| l.split_once(" DNSKEY "))
            .map(|(name, key)| format!("{name} 3600 IN DNSKEY {key}\n"))
            .collect();
        std::fs::write(&anchor, records).unwrap();
        Knot {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            anchor,
            child,
            _dir: dir,
        }
    }
}
