//! DANE for SMTP (RFC 7672) applied to delivery, with real parts: Knot DNS
//! on loopback serving a DNSSEC-signed zone `test.` (its key the
//! resolver's trust anchor), a delegated unsigned zone and a delegated
//! zone whose DS matches no key (bogus); SMTP sinks on loopback addresses
//! of their own with certificates that match the TLSA records or not.
//!
//! | domain | its MX host publishes | the sink offers | expected |
//! |---|---|---|---|
//! | ee.test | DANE-EE 3 1 1 of the sink's key | a self-signed certificate for another name | delivered over TLS |
//! | eebad.test | DANE-EE 3 1 1 of another key | a self-signed certificate | waits (DANE), nothing sent |
//! | ta.test | DANE-TA 2 0 1 of the CA | a chain to that CA for the MX name | delivered over TLS |
//! | taname.test | DANE-TA 2 0 1 of the CA | a chain to that CA for another name | waits, nothing sent |
//! | notls.test | DANE-EE of the sink's key | no STARTTLS | waits (TLS required), nothing sent |
//! | plain.test | no TLSA (secure denial) | no STARTTLS | delivered in plaintext |
//! | unsigned.test | a wrong TLSA, in an unsigned zone | a self-signed certificate | delivered (opportunistic TLS) |
//! | bogus.test | its zone's DS matches no key | anything | waits (DNSSEC bogus), never connected to |
//! | ignored.test | DANE-EE of another key, in tls.dane_ignore | a self-signed certificate | delivered (opportunistic) |

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::knot::{Knot, Zone};
use common::sink::{Script, Sink};

/// Each domain, the TLS its sink offers, whether it must be delivered.
const CASES: [(&str, &str, bool); 9] = [
    ("ee.test", "self-signed", true),
    ("eebad.test", "self-signed", false),
    ("ta.test", "ca-chain", true),
    ("taname.test", "ca-chain-other-name", false),
    ("notls.test", "none", false),
    ("plain.test", "none", true),
    ("unsigned.test", "self-signed", true),
    ("bogus.test", "self-signed", false),
    ("ignored.test", "self-signed", true),
];

fn mx_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 47, 10 + i as u8)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The sinks' TLS, and the TLSA records that go with them.
struct Certs {
    /// A self-signed certificate for a name no MX has, and its key's
    /// SPKI hash.
    self_signed: std::sync::Arc<rustls::ServerConfig>,
    self_signed_spki: String,
    ca: common::sink::TestCa,
}

impl Certs {
    fn new() -> Certs {
        let ck = rcgen::generate_simple_self_signed(vec!["someone.else.test".into()]).unwrap();
        Certs {
            self_signed: common::sink::server_config(
                &ck.cert.pem(),
                &ck.signing_key.serialize_pem(),
            ),
            self_signed_spki: sha256(&rcgen::PublicKeyData::subject_public_key_info(
                &ck.signing_key,
            )),
            ca: common::sink::TestCa::new(),
        }
    }

    fn tls_for(&self, kind: &str, mx: &str) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        let chain = |name: &str| {
            let (leaf, key) = self.ca.leaf_pem(name);
            common::sink::server_config(&format!("{leaf}{}", self.ca.pem), &key)
        };
        match kind {
            "self-signed" => Some(self.self_signed.clone()),
            "ca-chain" => Some(chain(mx)),
            "ca-chain-other-name" => Some(chain("someone.else.test")),
            _ => None,
        }
    }
}

/// The zones: `test.` signed with every case but two, `unsigned.test.`
/// delegated without DS, `bogus.test.` delegated with a DS of no key.
fn zones(certs: &Certs, port: u16) -> Vec<Zone<'static>> {
    let ee = format!("3 1 1 {}", certs.self_signed_spki);
    let wrong = format!("3 1 1 {}", "00".repeat(32));
    let ta = format!("2 0 1 {}", sha256(&der_of(&certs.ca.pem)));
    let mut signed = String::from("@ NS ns.test.\nns A 127.0.0.1\n");
    for (i, (domain, _, _)) in CASES.iter().enumerate() {
        let label = domain.trim_end_matches(".test");
        if matches!(label, "unsigned" | "bogus") {
            continue;
        }
        signed.push_str(&format!(
            "{label} MX 10 mx.{label}.test.\nmx.{label} A {}\n",
            mx_ip(i)
        ));
        let tlsa = match label {
            "ee" | "notls" => Some(&ee),
            "eebad" | "ignored" => Some(&wrong),
            "ta" | "taname" => Some(&ta),
            _ => None,
        };
        if let Some(t) = tlsa {
            signed.push_str(&format!("_{port}._tcp.mx.{label} TLSA {t}\n"));
        }
    }
    signed.push_str("unsigned NS ns.test.\nbogus NS ns.test.\n");
    signed.push_str(&format!("bogus DS 4711 13 2 {}\n", "ab".repeat(32)));
    let child = |label: &str, i: usize| {
        format!(
            "@ NS ns.test.\n@ MX 10 mx.{label}.test.\nmx A {}\n_{port}._tcp.mx TLSA {wrong}\n",
            mx_ip(i)
        )
    };
    let at = |name: &str| CASES.iter().position(|c| c.0 == name).unwrap();
    vec![
        Zone {
            name: "test",
            records: signed,
            signed: true,
        },
        Zone {
            name: "unsigned.test",
            records: child("unsigned", at("unsigned.test")),
            signed: false,
        },
        Zone {
            name: "bogus.test",
            records: child("bogus", at("bogus.test")),
            signed: true,
        },
    ]
}

#[test]
fn tlsa_records_in_a_secure_zone_decide_the_tls_of_their_mx_host() {
    let certs = Certs::new();
    // One port on every sink's address (MX delivery has one port).
    let (port, sinks) = (0..50)
        .find_map(|_| {
            let port = common::sink_port();
            let sinks: Option<Vec<Sink>> = CASES
                .iter()
                .enumerate()
                .map(|(i, (domain, tls, _))| {
                    std::net::TcpListener::bind((mx_ip(i), port)).ok()?;
                    let script = Script {
                        tls: certs.tls_for(tls, &format!("mx.{domain}")),
                        ..Script::default()
                    };
                    Some(Sink::start(&mx_ip(i).to_string(), port, script))
                })
                .collect();
            Some((port, sinks?))
        })
        .expect("a port free on every sink address");
    let knot = Knot::serve(&zones(&certs, port));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let log_path = log.display().to_string();
    let anchor = knot.anchor.display().to_string();
    let ts = common::start_with(2, |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.connect_timeout_secs = 2;
        c.delivery.log = log_path;
        c.dns.nameservers = vec![knot.addr];
        c.dns.timeout_secs = 2;
        c.dns.dnssec = true;
        c.dns.trust_anchor_file = anchor;
        c.tls.dane_ignore = vec!["ignored.test".into()];
    });
    for (domain, _, _) in CASES {
        let mut client = ts.client();
        client.begin("app@sender.test", &[&format!("x@{domain}")]);
        let r = client.data(format!("Subject: to {domain}\r\n\r\nx\r\n").as_bytes());
        assert_eq!(r.code, 250, "{r:?}");
    }

    let mut table = Vec::new();
    for (i, (domain, offered, delivered)) in CASES.iter().enumerate() {
        let rcpt = format!("x@{domain}");
        if *delivered {
            let e = common::wait_for_log_event(&log, &rcpt, "Delivery");
            let got = sinks[i].wait_for(1, 30);
            assert_eq!(got[0].tls, *offered != "none", "{domain}");
            table.push(format!("{domain}: delivered, tls {}", e["tls"]));
        } else {
            let e = common::wait_for_log_event(&log, &rcpt, "TransientFailure");
            table.push(format!("{domain}: waits: {}", e["reply"].as_str().unwrap()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, (domain, _, delivered)) in CASES.iter().enumerate() {
        if !delivered {
            assert!(sinks[i].messages().is_empty(), "{domain}: nothing sent");
        }
    }
    let reply = |domain: &str| {
        common::wait_for_log_event(&log, &format!("x@{domain}"), "TransientFailure")["reply"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reply("eebad.test").contains("matches none of the TLSA records at _"),
        "{}",
        reply("eebad.test")
    );
    assert!(
        reply("taname.test").contains("DANE-TA"),
        "{}",
        reply("taname.test")
    );
    assert!(
        reply("notls.test").contains("TLS is required"),
        "{}",
        reply("notls.test")
    );
    let bogus = reply("bogus.test");
    assert!(
        bogus.contains("DNSSEC") || bogus.contains("bogus"),
        "{bogus}"
    );
    assert_eq!(
        sinks[CASES.iter().position(|c| c.0 == "bogus.test").unwrap()].accepts(),
        0,
        "bogus.test: never connected to"
    );
    println!("{}", table.join("\n"));
    let metrics = ts.metrics_text();
    for result in ["records", "none", "ignored"] {
        let line = format!("ringpost_dane_tlsa_lookups_total{{result=\"{result}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}
