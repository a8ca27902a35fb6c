//! Receivers' MTA-STS policies (RFC 8461) applied to delivery, with real
//! parts: an authoritative DNS server on loopback (hickory-server) with
//! the `_mta-sts` records, an HTTPS policy host (rustls, a test CA) on
//! 127.0.45.1:443, and SMTP sinks with STARTTLS certificates that match
//! their MX name or not, each on a loopback address of its own.
//!
//! | domain | policy | its MX host offers | expected |
//! |---|---|---|---|
//! | good.test | enforce, mx in policy | a certificate for its name | delivered over TLS |
//! | mismatch.test | enforce | a certificate for another name | waits (TLS verification), nothing sent |
//! | outside.test | enforce, mx not in policy | anything | never connected to, waits (4.7.5, MTA-STS) |
//! | testing.test | testing | a certificate for another name | delivered (opportunistic) |
//! | ignored.test | enforce, in tls.mta_sts_ignore | a certificate for another name | delivered (opportunistic) |
//! | none.test | no record | no STARTTLS | delivered in plaintext |
//! | ruleoff.test | enforce; a shaping rule says `mta_sts = false` | a certificate for another name | delivered (opportunistic) |

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::dns::{self, Rr};
use common::sink::{Script, Sink};

const DOMAINS: [&str; 7] = [
    "good.test",
    "mismatch.test",
    "outside.test",
    "testing.test",
    "ignored.test",
    "none.test",
    "ruleoff.test",
];

/// The loopback address of `domain`'s MX host (one sink each).
fn mx_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 45, 10 + i as u8)
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[test]
fn policies_are_enforced_tested_or_ignored_as_receivers_publish_them() {
    let ca = common::sink::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let policy_ip = Ipv4Addr::new(127, 0, 45, 1);
    let hosts: Vec<String> = DOMAINS.iter().map(|d| format!("mta-sts.{d}")).collect();
    let _served = common::https::policy_host(
        policy_ip,
        ca.server_config_for(&hosts.iter().map(String::as_str).collect::<Vec<_>>()),
        [
            ("good.test", policy("enforce", "mx.good.test")),
            ("mismatch.test", policy("enforce", "*.mismatch.test")),
            ("outside.test", policy("enforce", "mx.elsewhere.test")),
            ("testing.test", policy("testing", "mx.testing.test")),
            ("ignored.test", policy("enforce", "mx.ignored.test")),
            ("ruleoff.test", policy("enforce", "mx.ruleoff.test")),
        ]
        .into_iter()
        .map(|(d, p)| (format!("mta-sts.{d}"), p))
        .collect(),
    );
    let mut records = Vec::new();
    for (i, domain) in DOMAINS.iter().enumerate() {
        let mx: &'static str = Box::leak(format!("mx.{domain}").into_boxed_str());
        records.push(Rr::Mx(domain, 10, mx));
        records.push(Rr::A(mx, IpAddr::V4(mx_ip(i))));
        if *domain != "none.test" {
            let host: &'static str = Box::leak(format!("mta-sts.{domain}").into_boxed_str());
            records.push(Rr::Txt(
                format!("_mta-sts.{domain}"),
                "v=STSv1; id=1".into(),
            ));
            records.push(Rr::A(host, IpAddr::V4(policy_ip)));
        }
    }
    let nameserver = dns::serve("test", records);

    // One port on every sink's address (MX delivery has one port).
    let (port, sinks) = (0..50)
        .find_map(|_| {
            let port = common::sink_port();
            let sinks: Option<Vec<Sink>> = DOMAINS
                .iter()
                .enumerate()
                .map(|(i, domain)| {
                    std::net::TcpListener::bind((mx_ip(i), port)).ok()?;
                    let tls = match *domain {
                        "good.test" => Some(ca.server_config(&format!("mx.{domain}"))),
                        "none.test" => None,
                        _ => Some(ca.server_config("someone.else.test")),
                    };
                    Some(Sink::start(
                        &mx_ip(i).to_string(),
                        port,
                        Script {
                            tls,
                            ..Script::default()
                        },
                    ))
                })
                .collect();
            Some((port, sinks?))
        })
        .expect("a port free on every sink address");

    let log = dir.path().join("delivery.log");
    let log_path = log.display().to_string();
    let shaping = dir.path().join("shaping.toml");
    std::fs::write(
        &shaping,
        "[[site]]\nname = \"broken-sts\"\ndomains = [\"ruleoff.test\"]\nmta_sts = false\n",
    )
    .unwrap();
    let ts = common::start_with(2, |c| {
        c.delivery.shaping_file = shaping.display().to_string();
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.connect_timeout_secs = 2;
        c.delivery.log = log_path;
        c.dns.nameservers = vec![nameserver];
        c.dns.timeout_secs = 2;
        c.tls.ca_file = ca_file.display().to_string();
        c.tls.mta_sts_ignore = vec!["ignored.test".into()];
    });
    for domain in DOMAINS {
        let mut client = ts.client();
        client.begin("app@sender.test", &[&format!("x@{domain}")]);
        let r = client.data(format!("Subject: to {domain}\r\n\r\nx\r\n").as_bytes());
        assert_eq!(r.code, 250, "{r:?}");
    }

    let delivered = |i: usize| sinks[i].wait_for(1, 30)[0].tls;
    assert!(delivered(0), "good.test: delivered over verified TLS");
    assert!(delivered(3), "testing.test: delivered, TLS opportunistic");
    assert!(delivered(4), "ignored.test: delivered, its policy ignored");
    assert!(!delivered(5), "none.test: no policy, plaintext as before");
    assert!(
        delivered(6),
        "ruleoff.test: delivered, its rule turns MTA-STS off"
    );
    for (domain, policy) in [
        ("good.test", "mta-sts"),
        ("testing.test", "mta-sts"),
        ("ignored.test", "opportunistic"),
        ("none.test", "opportunistic"),
        ("ruleoff.test", "opportunistic"),
    ] {
        let e = common::wait_for_log_event(&log, &format!("x@{domain}"), "Delivery");
        assert_eq!(e["tls_policy"], policy, "{domain}: {e}");
    }

    let mismatch = common::wait_for_log_event(&log, "x@mismatch.test", "TransientFailure");
    let mismatch = mismatch["reply"].as_str().unwrap().to_string();
    assert!(mismatch.contains("TLS handshake"), "{mismatch}");
    let outside = common::wait_for_log_event(&log, "x@outside.test", "TransientFailure");
    let reply = outside["reply"].as_str().unwrap();
    assert!(
        reply.starts_with("451 4.7.5 MTA-STS: no MX host of outside.test (mx.outside.test)")
            && reply.contains("mx: mx.elsewhere.test"),
        "{reply}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sinks[1].messages().is_empty(),
        "mismatch.test: nothing sent"
    );
    assert_eq!(sinks[2].accepts(), 0, "outside.test: never connected to");
    println!(
        "good.test: delivered, tls {}\nmismatch.test: {mismatch}\noutside.test: {reply}",
        common::wait_for_log_event(&log, "x@good.test", "Delivery")["tls"],
    );
    let metrics = ts.metrics_text();
    for line in [
        "ringpost_mta_sts_applied_total{mode=\"enforce\",result=\"ok\"}",
        "ringpost_mta_sts_applied_total{mode=\"enforce\",result=\"mx_mismatch\"}",
        "ringpost_mta_sts_applied_total{mode=\"testing\",result=\"ok\"}",
        "ringpost_mta_sts_lookups_total{result=\"fetched\"}",
        "ringpost_mta_sts_lookups_total{result=\"none\"}",
        "ringpost_mta_sts_lookups_total{result=\"ignored\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// A policy fetched once is kept in the spool: after a restart, with its
/// policy host down (404) and the MX host now showing a certificate for
/// another name, the mail waits instead of going out opportunistically.
#[test]
fn a_fetched_policy_stays_in_force_across_a_restart_while_its_host_is_down() {
    let ca = common::sink::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (policy_ip, mx) = (Ipv4Addr::new(127, 0, 45, 2), Ipv4Addr::new(127, 0, 45, 30));
    let served = common::https::policy_host(
        policy_ip,
        ca.server_config("mta-sts.kept.test"),
        [(
            "mta-sts.kept.test".to_string(),
            policy("enforce", "mx.kept.test"),
        )]
        .into(),
    );
    let nameserver = dns::serve(
        "kept.test",
        vec![
            Rr::Mx("kept.test", 10, "mx.kept.test"),
            Rr::A("mx.kept.test", IpAddr::V4(mx)),
            Rr::Txt("_mta-sts.kept.test".into(), "v=STSv1; id=7".into()),
            Rr::A("mta-sts.kept.test", IpAddr::V4(policy_ip)),
        ],
    );
    let port = common::sink_port();
    let sink = Sink::start(
        &mx.to_string(),
        port,
        Script {
            tls: Some(ca.server_config("mx.kept.test")),
            ..Script::default()
        },
    );
    let log = dir.path().join("delivery.log");
    let log_path = log.display().to_string();
    // One shard: the policy is kept by the shard that fetched it.
    let mut ts = common::start_with(1, |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.retry_initial_secs = 3600;
        c.delivery.retry_max_secs = 3600;
        c.delivery.log = log_path;
        c.dns.nameservers = vec![nameserver];
        c.dns.timeout_secs = 2;
        c.tls.ca_file = ca_file.display().to_string();
    });
    let send = |ts: &common::TestServer, rcpt: &str| {
        let mut client = ts.client();
        client.begin("app@sender.test", &[rcpt]);
        assert_eq!(client.data(b"Subject: kept\r\n\r\nx\r\n").code, 250);
    };
    send(&ts, "x@kept.test");
    assert!(sink.wait_for(1, 30)[0].tls, "delivered under the policy");

    served.lock().unwrap().clear();
    sink.script.lock().unwrap().tls = Some(ca.server_config("someone.else.test"));
    ts.restart();
    send(&ts, "y@kept.test");
    let failure = common::wait_for_log_event(&log, "y@kept.test", "TransientFailure");
    let reply = failure["reply"].as_str().unwrap();
    assert!(reply.contains("certificate not valid for name"), "{reply}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.messages().len(),
        1,
        "nothing went out under less than the policy"
    );
    assert!(
        ts.metrics_text()
            .contains("ringpost_mta_sts_lookups_total{result=\"cached\"}"),
        "the record was looked at again and the kept policy used"
    );
}
