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
//! | sts.test | no TLSA; an MTA-STS policy in enforce mode | a chain for its name | delivered (the TLS report test serves the policy; elsewhere its host is down: opportunistic) |
//! | taexpired.test | DANE-TA 2 0 1 of the CA | a chain to that CA for the MX name, expired | waits, nothing sent |
//! | ststest.test | no TLSA; an MTA-STS policy in testing mode | a chain for another name | delivered (opportunistic); reported as certificate-host-mismatch |
//! | tlsabogus.test | its MX host's TLSA records in a zone whose DS matches no key | anything | waits (the host cannot be checked), never connected to; reported as dnssec-invalid |
//! | tlsaunusable.test | only PKIX-EE (`1 1 1`), unusable for SMTP | a self-signed certificate | delivered over TLS (mandatory, unauthenticated); reported as tlsa-invalid |
//! | stsfetch.test | an MTA-STS record whose policy host refuses connections | a self-signed certificate | delivered (opportunistic); reported as sts-policy-fetch-error |
//! | ruleoff.test | DANE-EE of another key; a shaping rule says `dane = false` | a self-signed certificate | delivered (opportunistic) |
//! | tlsservfail.test | DANE-EE of the sink's key, but its TLSA query gets SERVFAIL (a forwarder in front of Knot) | a self-signed certificate | waits (the host cannot be checked), never connected to; reported as dnssec-invalid |

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dns_proxy::ServfailProxy;
use common::knot::{Knot, Zone};
use common::sink::{Script, Sink};

/// Each domain, the TLS its sink offers, whether it must be delivered.
const CASES: [(&str, &str, bool); 17] = [
    ("ee.test", "self-signed", true),
    ("eebad.test", "self-signed", false),
    ("ta.test", "ca-chain", true),
    ("taname.test", "ca-chain-other-name", false),
    ("notls.test", "none", false),
    ("plain.test", "none", true),
    ("unsigned.test", "self-signed", true),
    ("bogus.test", "self-signed", false),
    ("ignored.test", "self-signed", true),
    ("sts.test", "ca-chain", true),
    ("ststest.test", "ca-chain-other-name", true),
    ("taexpired.test", "ca-chain-expired", false),
    ("tlsabogus.test", "self-signed", false),
    ("tlsaunusable.test", "self-signed", true),
    ("stsfetch.test", "self-signed", true),
    ("ruleoff.test", "self-signed", true),
    ("tlsservfail.test", "self-signed", false),
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
            "ca-chain-expired" => {
                let (leaf, key) = self.ca.expired_leaf_pem(mx);
                Some(common::sink::server_config(
                    &format!("{leaf}{}", self.ca.pem),
                    &key,
                ))
            }
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
    let pkix_ee = format!("1 1 1 {}", certs.self_signed_spki);
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
            "ee" | "notls" | "tlsservfail" => Some(&ee),
            "eebad" | "ignored" | "ruleoff" => Some(&wrong),
            "ta" | "taname" | "taexpired" => Some(&ta),
            "tlsaunusable" => Some(&pkix_ee),
            _ => None,
        };
        if matches!(label, "sts" | "ststest" | "stsfetch") {
            let host = match label {
                "stsfetch" => STS_HOST_DOWN,
                _ => STS_POLICY_HOST,
            };
            signed.push_str(&format!(
                "_mta-sts.{label} TXT \"v=STSv1; id=1\"\nmta-sts.{label} A {host}\n\
                 _smtp._tls.{label} TXT \"v=TLSRPTv1; rua=mailto:{REPORTS_TO}\"\n"
            ));
        }
        if label == "tlsabogus" {
            // The TLSA records live in a zone of their own, whose DS
            // matches no key: the MX and address answers are secure, the
            // TLSA answer is bogus.
            signed.push_str(&format!(
                "_tcp.mx.tlsabogus NS ns.test.\n_tcp.mx.tlsabogus DS 4711 13 2 {}\n\
                 _smtp._tls.tlsabogus TXT \"v=TLSRPTv1; rua=mailto:{REPORTS_TO}\"\n",
                "cd".repeat(32)
            ));
        }
        if let Some(t) = tlsa {
            signed.push_str(&format!("_{port}._tcp.mx.{label} TLSA {t}\n"));
            // ta.test also wants its reports posted.
            let https = match label {
                "ta" => format!(",https://{REPORTS_HTTPS}/v1/tlsrpt"),
                _ => String::new(),
            };
            signed.push_str(&format!(
                "_smtp._tls.{label} TXT \"v=TLSRPTv1; rua=mailto:{REPORTS_TO}{https}\"\n"
            ));
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
        Zone {
            name: "_tcp.mx.tlsabogus.test",
            records: format!("@ NS ns.test.\n_{port} TLSA {ee}\n"),
            signed: true,
        },
    ]
}

/// Where the zones' `_smtp._tls` records ask for TLS reports (routed to
/// a sink of its own).
const REPORTS_TO: &str = "tlsrpt@reports.test";

/// Where ta.test's reports are also posted (a receiver on port 443).
const REPORTS_HTTPS: &str = "127.0.47.40";

/// sts.test's MTA-STS policy host (served on port 443 by the TLS report
/// test only).
const STS_POLICY_HOST: &str = "127.0.47.41";

/// stsfetch.test's MTA-STS policy host: nothing listens there.
const STS_HOST_DOWN: &str = "127.0.47.42";

/// The parts of a run: the MX sinks (in `CASES` order), Knot, and the
/// sinks' port.
struct World {
    sinks: Vec<Sink>,
    knot: Knot,
    /// The resolver's name server: Knot behind a forwarder that answers
    /// SERVFAIL for tlsservfail.test's TLSA query.
    dns: ServfailProxy,
    port: u16,
    certs: Certs,
}

fn world() -> World {
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
    let dns = ServfailProxy::start(knot.addr, "mx.tlsservfail.test", 52);
    World {
        sinks,
        knot,
        dns,
        port,
        certs,
    }
}

/// Points a server's delivery at the world: MX lookups at Knot with
/// DNSSEC, retries an hour away, the delivery log at `log`.
fn configure(c: &mut ringpost::config::Config, w: &World, log: &std::path::Path) {
    c.delivery.smarthost.clear();
    c.delivery.remote_port = w.port;
    c.delivery.retry_initial_secs = 3600;
    c.delivery.retry_max_secs = 3600;
    c.delivery.connect_timeout_secs = 2;
    c.delivery.log = log.display().to_string();
    c.dns.nameservers = vec![w.dns.addr];
    c.dns.timeout_secs = 2;
    c.dns.dnssec = true;
    c.dns.trust_anchor_file = w.knot.anchor.display().to_string();
    c.tls.dane_ignore = vec!["ignored.test".into()];
    let shaping = log.with_file_name("shaping.toml");
    std::fs::write(
        &shaping,
        "[[site]]\nname = \"broken-dane\"\ndomains = [\"ruleoff.test\"]\ndane = false\n",
    )
    .unwrap();
    c.delivery.shaping_file = shaping.display().to_string();
}

fn send_one_to_each(ts: &common::TestServer) {
    for (domain, _, _) in CASES {
        let mut client = ts.client();
        client.begin("app@sender.test", &[&format!("x@{domain}")]);
        let r = client.data(format!("Subject: to {domain}\r\n\r\nx\r\n").as_bytes());
        assert_eq!(r.code, 250, "{r:?}");
    }
}

#[test]
fn tlsa_records_in_a_secure_zone_decide_the_tls_of_their_mx_host() {
    let w = world();
    let sinks = &w.sinks;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let ts = common::start_with(2, |c| configure(c, &w, &log));
    send_one_to_each(&ts);

    let mut table = Vec::new();
    for (i, (domain, offered, delivered)) in CASES.iter().enumerate() {
        let rcpt = format!("x@{domain}");
        if *delivered {
            let e = common::wait_for_log_event(&log, &rcpt, "Delivery");
            let policy = match *domain {
                "ee.test" | "ta.test" | "tlsaunusable.test" => "dane",
                _ => "opportunistic",
            };
            assert_eq!(e["tls_policy"], policy, "{domain}: {e}");
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
    for (domain, failure) in [
        ("eebad.test", "validation-failure"),
        ("taname.test", "certificate-host-mismatch"),
        ("notls.test", "starttls-not-supported"),
        ("taexpired.test", "certificate-expired"),
    ] {
        let e = common::wait_for_log_event(&log, &format!("x@{domain}"), "TransientFailure");
        assert_eq!(e["tls_failure"], failure, "{domain}: {e}");
        assert_eq!(e["tls_policy"], "dane", "{domain}: {e}");
    }
    let bogus = reply("bogus.test");
    assert!(
        bogus.contains("DNSSEC") || bogus.contains("bogus"),
        "{bogus}"
    );
    let tlsa_bogus = reply("tlsabogus.test");
    assert!(
        tlsa_bogus.starts_with("451 4.7.5 DANE: no MX host of tlsabogus.test can be checked")
            && tlsa_bogus.contains("DNSSEC"),
        "{tlsa_bogus}"
    );
    let servfail = reply("tlsservfail.test");
    assert!(
        servfail.starts_with("451 4.7.5 DANE: no MX host of tlsservfail.test can be checked")
            && servfail.contains("TLSA lookup of _"),
        "{servfail}"
    );
    for domain in ["bogus.test", "tlsabogus.test", "tlsservfail.test"] {
        assert_eq!(
            sinks[CASES.iter().position(|c| c.0 == domain).unwrap()].accepts(),
            0,
            "{domain}: never connected to"
        );
    }
    println!("{}", table.join("\n"));
    queue_summary_shows_the_tls_of_each_destination(&ts);
    let metrics = ts.metrics_text();
    for result in ["records", "none", "ignored"] {
        let line = format!("ringpost_dane_tlsa_lookups_total{{result=\"{result}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    for (policy, result) in [
        ("dane", "success"),
        ("dane", "validation-failure"),
        ("dane", "starttls-not-supported"),
        ("dane", "dnssec-invalid"),
        ("dane", "tlsa-invalid"),
        ("mta-sts", "sts-policy-fetch-error"),
    ] {
        let line = format!(
            "ringpost_outbound_tls_sessions_total{{policy=\"{policy}\",result=\"{result}\"}}"
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

/// `ringpost queue summary` (and its JSON) has a line per destination a
/// TLS policy held or TLS failed: the policy, attempts, failures and the
/// last failure as TLS reports name it.
fn queue_summary_shows_the_tls_of_each_destination(ts: &common::TestServer) {
    let run = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringpost"));
        cmd.args(["queue", "summary", "--admin"])
            .arg(ts.admin_addr.unwrap().to_string());
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let summary: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let line = |domain: &str| {
        summary["tls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["domain"] == domain)
            .unwrap_or_else(|| panic!("no TLS line for {domain}: {summary}"))
            .clone()
    };
    for (domain, policy, failure) in [
        ("ee.test", "dane", None),
        ("ta.test", "dane", None),
        ("eebad.test", "dane", Some("validation-failure")),
        ("notls.test", "dane", Some("starttls-not-supported")),
        ("taexpired.test", "dane", Some("certificate-expired")),
        ("tlsabogus.test", "dane", Some("dnssec-invalid")),
        ("tlsservfail.test", "dane", Some("dnssec-invalid")),
    ] {
        let l = line(domain);
        assert_eq!(l["policy"], policy, "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
        match failure {
            None => assert_eq!(l["failures"], 0, "{l}"),
            Some(kind) => {
                assert_eq!(l["failures"], 1, "{l}");
                assert_eq!(l["last_failure"], kind, "{l}");
                assert!(l["last_failure_reply"].as_str().unwrap().len() > 10, "{l}");
            }
        }
    }
    let text = run(false);
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("TLS: DESTINATION"))
        .find(|l| l.starts_with("tlsabogus.test "))
        .unwrap_or_else(|| panic!("no TLS row for tlsabogus.test:\n{text}"));
    assert!(
        row.contains("dane") && row.contains("dnssec-invalid"),
        "{text}"
    );
    println!("{text}");
}

/// What an independent reader (parsedmarc, from PyPI) makes of a TLS
/// report message: its `smtp_tls` report as JSON.
fn parsed_by_parsedmarc(message: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let script = "import sys, json, parsedmarc\n\
                  r = parsedmarc.parse_report_email(sys.stdin.buffer.read(), offline=True)\n\
                  print(json.dumps(r, default=str))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parsedmarc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A day of TLS sessions to receivers with DANE records is reported once
/// the day has ended (RFC 8460), one report per domain, to the address
/// the domain's `_smtp._tls` record names; an independent reader
/// (parsedmarc) finds in each the sessions the sinks saw, by result.
#[test]
fn a_day_of_tls_sessions_is_reported_to_each_domain_that_asks() {
    let w = world();
    let (reports, reports_port) = (0..50)
        .find_map(|_| {
            let port = common::sink_port();
            std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some((Sink::start("127.0.0.1", port, Script::default()), port))
        })
        .expect("a free port for the reports' sink");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &w.certs.ca.pem).unwrap();
    let posted = common::https::post_receiver(
        REPORTS_HTTPS.parse().unwrap(),
        w.certs.ca.server_config(REPORTS_HTTPS),
    );
    let _policy = common::https::policy_host(
        STS_POLICY_HOST.parse().unwrap(),
        w.certs
            .ca
            .server_config_for(&["mta-sts.sts.test", "mta-sts.ststest.test"]),
        [("sts", "enforce"), ("ststest", "testing")]
            .map(|(label, mode)| {
                (
                    format!("mta-sts.{label}.test"),
                    format!(
                        "version: STSv1\r\nmode: {mode}\r\nmx: mx.{label}.test\r\nmax_age: 86400\r\n"
                    ),
                )
            })
            .into(),
    );
    let log = dir.path().join("delivery.log");
    let noon = 1_800_000_000 - 1_800_000_000 % 86_400 + 12 * 3600;
    let clock = ringpost::shard::clock::Clock::manual(noon);
    let ts = common::start_with_clock(2, clock.clone(), |c| {
        configure(c, &w, &log);
        c.delivery
            .routes
            .insert("reports.test".into(), format!("[127.0.0.1]:{reports_port}"));
        c.tls_reporting.from = "tls-reports@sender.test".into();
        c.tls_reporting.organization = "Sender Test".into();
        c.tls.ca_file = ca_file.display().to_string();
    });
    send_one_to_each(&ts);
    for (i, (domain, _, delivered)) in CASES.iter().enumerate() {
        let kind = match delivered {
            true => "Delivery",
            false => "TransientFailure",
        };
        let e = common::wait_for_log_event(&log, &format!("x@{domain}"), kind);
        if *delivered {
            w.sinks[i].wait_for(1, 30);
        }
        if matches!(*domain, "sts.test" | "ststest.test") {
            assert_eq!(e["tls_policy"], "mta-sts", "{domain}: {e}");
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(reports.accepts(), 0, "no report while the day is under way");

    clock.advance(86_400);
    // (result, sessions) per domain that asks for reports.
    let expected: [(&str, u64, Option<&str>); 12] = [
        ("sts.test", 1, None),
        ("ststest.test", 0, Some("certificate-host-mismatch")),
        ("ee.test", 1, None),
        ("ta.test", 1, None),
        ("eebad.test", 0, Some("validation-failure")),
        ("taname.test", 0, Some("certificate-host-mismatch")),
        ("taexpired.test", 0, Some("certificate-expired")),
        ("notls.test", 0, Some("starttls-not-supported")),
        ("tlsabogus.test", 0, Some("dnssec-invalid")),
        ("tlsservfail.test", 0, Some("dnssec-invalid")),
        ("tlsaunusable.test", 0, Some("tlsa-invalid")),
        ("stsfetch.test", 0, Some("sts-policy-fetch-error")),
    ];
    let got = reports.wait_for(expected.len(), 30);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        reports.messages().len(),
        expected.len(),
        "one report per domain"
    );
    for (domain, successes, failure) in expected {
        let msg = got
            .iter()
            .find(|m| {
                String::from_utf8_lossy(&m.data).contains(&format!("TLS-Report-Domain: {domain}"))
            })
            .unwrap_or_else(|| panic!("no report for {domain}"));
        assert_eq!(msg.rcpts, [REPORTS_TO]);
        assert_eq!(msg.from, "tls-reports@sender.test");
        let parsed = parsed_by_parsedmarc(&msg.data);
        assert_eq!(parsed["report_type"], "smtp_tls", "{parsed}");
        let report = &parsed["report"];
        assert_eq!(report["organization_name"], "Sender Test", "{report}");
        let policies = report["policies"].as_array().unwrap();
        assert_eq!(policies.len(), 1, "{report}");
        let p = &policies[0];
        assert_eq!(p["policy_domain"], domain, "{p}");
        let kind = match domain {
            "sts.test" | "ststest.test" | "stsfetch.test" => "sts",
            _ => "tlsa",
        };
        assert_eq!(p["policy_type"], kind, "{p}");
        assert_eq!(p["successful_session_count"], successes, "{p}");
        match failure {
            None => assert_eq!(p["failed_session_count"], 0, "{p}"),
            Some(result) => {
                assert_eq!(p["failed_session_count"], 1, "{p}");
                assert_eq!(p["failure_details"][0]["result_type"], result, "{p}");
            }
        }
        println!("{domain}: {p}");
    }
    // ta.test's report was posted too, the same report gzipped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while posted.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no report posted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (head, body) = posted.lock().unwrap()[0].clone();
    assert!(head.starts_with("post /v1/tlsrpt "), "{head}");
    assert!(
        head.contains("content-type: application/tlsrpt+gzip"),
        "{head}"
    );
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["policies"][0]["policy"]["policy-domain"], "ta.test");
    assert_eq!(
        report["policies"][0]["summary"]["total-successful-session-count"],
        1
    );
    assert!(
        ts.metrics_text()
            .contains("ringpost_tls_reports_sent_total 13"),
        "twelve reports queued, one posted"
    );
}

/// `ringpost tls check DOMAIN` says what delivery would do, from the same
/// DNS: DANE records per secure MX host, an unsigned zone as such, a
/// bogus one refused, and where TLS reports go.
#[test]
fn tls_check_tells_what_a_destination_publishes_and_what_applies() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nremote_port = {}\n[dns]\nnameservers = [\"{}\"]\ndnssec = true\n\
             trust_anchor_file = \"{}\"\ntimeout_secs = 2\n",
            w.port,
            w.dns.addr,
            w.knot.anchor.display()
        ),
    )
    .unwrap();
    let check = |domain: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringpost"))
            .args(["tls", "check", domain, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let ee = check("ee.test");
    for line in [
        "DANE: on",
        "mx.ee.test [127.0.47.10]: DNSSEC-secure",
        &format!("_{}._tcp.mx.ee.test TLSA 3 1 1 ", w.port),
        "(usable)",
        "mx.ee.test: dane: TLS required, the certificate must match a TLSA record",
        "TLS-RPT: reports to tlsrpt@reports.test",
    ] {
        assert!(ee.contains(line), "{line:?} not in:\n{ee}");
    }
    let unsigned = check("unsigned.test");
    assert!(
        unsigned.contains("mx.unsigned.test [127.0.47.16]: not DNSSEC-secure")
            && unsigned.contains("mx.unsigned.test: opportunistic"),
        "{unsigned}"
    );
    let bogus = check("bogus.test");
    assert!(bogus.contains("DNSSEC validation failed"), "{bogus}");
    println!("{ee}{unsigned}{bogus}");
}
