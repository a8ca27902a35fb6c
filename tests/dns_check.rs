//! `ringpost dns check` against a real authoritative DNS server on
//! loopback (hickory-server) serving a good zone and a broken one, with
//! the reverse zone of the sources (192.0.2.0/24, documentation
//! addresses: nothing connects to them; hickory answers 127.x's reverse
//! names itself), and a real HTTPS server (rustls,
//! a test CA) serving the MTA-STS policy on 127.0.0.x:443.
//!
//! The binary is run as a user runs it; its `--json` output is read.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use common::dns::{self, Rr};

/// Makes a DKIM key with `ringpost dkim keygen`; the TXT record's text.
fn keygen(dir: &Path, domain: &str, selector: &str, file: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algo", "ed25519", "--out"])
        .arg(dir.join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.contains(" IN TXT ")).unwrap();
    let quoted = &line[line.find('"').unwrap()..];
    quoted.split('"').skip(1).step_by(2).collect::<String>()
}

fn ptr(last: u8, target: &'static str) -> Rr {
    Rr::Ptr(format!("{last}.2.0.192.in-addr.arpa"), target)
}

fn a(name: &'static str, ip: [u8; 4]) -> Rr {
    Rr::A(name, IpAddr::V4(Ipv4Addr::from(ip)))
}

fn txt(name: &str, text: &str) -> Rr {
    Rr::Txt(name.to_string(), text.to_string())
}

struct Run {
    ok: bool,
    text: String,
    findings: Vec<serde_json::Value>,
}

fn dns_check(config: &Path, domain: &str) -> Run {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringpost"));
        cmd.args(["dns", "check", "--domain", domain, "--config"])
            .arg(config);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let text = run(false);
    let json = run(true);
    assert_eq!(text.status.success(), json.status.success());
    Run {
        ok: text.status.success(),
        text: String::from_utf8_lossy(&text.stdout).into_owned(),
        findings: serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("--json: {e}: {}", String::from_utf8_lossy(&json.stderr))),
    }
}

/// The findings of one check with one verdict, as `detail` strings.
fn with(run: &Run, check: &str, verdict: &str) -> Vec<String> {
    run.findings
        .iter()
        .filter(|f| f["check"] == check && f["verdict"] == verdict)
        .map(|f| {
            format!(
                "{} | {}",
                f["detail"].as_str().unwrap(),
                f["publish"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn a_good_zone_passes_and_a_broken_one_names_each_fault_with_the_record_to_publish() {
    let dir = tempfile::tempdir().unwrap();
    let good_key = keygen(dir.path(), "example.com", "s1", "good.pem");
    let broken_key = keygen(dir.path(), "broken.test", "s1", "broken.pem");
    let other_key = keygen(dir.path(), "broken.test", "s1", "other.pem");
    // A loopback address of its own for the policy host's port 443.
    let policy_ip = Ipv4Addr::new(127, 0, 44, 3);
    let ca = common::sink::TestCa::new();
    let _served = common::https::policy_host(
        policy_ip,
        ca.server_config("mta-sts.example.com"),
        [(
            "mta-sts.example.com".to_string(),
            "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 86400\r\n"
                .to_string(),
        )]
        .into(),
    );
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();

    let nameserver = dns::serve_zones(vec![
        (
            "example.com",
            vec![
                Rr::Mx("example.com", 10, "mx.example.com"),
                a("mx.example.com", [127, 0, 0, 1]),
                txt(
                    "example.com",
                    "v=spf1 ip4:192.0.2.21 include:_spf.example.com -all",
                ),
                txt("_spf.example.com", "v=spf1 ip4:192.0.2.22 -all"),
                txt("s1._domainkey.example.com", &good_key),
                txt(
                    "_dmarc.example.com",
                    "v=DMARC1; p=reject; rua=mailto:d@example.com",
                ),
                a("out1.example.com", [192, 0, 2, 21]),
                a("out2.example.com", [192, 0, 2, 22]),
                txt("_mta-sts.example.com", "v=STSv1; id=20261206"),
                a("mta-sts.example.com", policy_ip.octets()),
                txt(
                    "_smtp._tls.example.com",
                    "v=TLSRPTv1; rua=mailto:tls@example.com",
                ),
            ],
        ),
        (
            "broken.test",
            vec![
                Rr::Mx("broken.test", 10, "mx.broken.test"),
                a("mx.broken.test", [127, 0, 0, 1]),
                // .23 passes at once; the others reach an include of ten
                // `a` terms: 11 lookups, over RFC 7208's 10.
                txt(
                    "broken.test",
                    "v=spf1 ip4:192.0.2.23 include:i.broken.test -all",
                ),
                txt(
                    "i.broken.test",
                    &format!(
                        "v=spf1 {}-all",
                        (1..=10)
                            .map(|i| format!("a:h{i}.broken.test "))
                            .collect::<String>()
                    ),
                ),
                // Another key than the one configured.
                txt("s1._domainkey.broken.test", &other_key),
                a("c.broken.test", [192, 0, 2, 23]),
                a("e.broken.test", [192, 0, 2, 25]),
                txt("_mta-sts.broken.test", "v=STSv1; id=1"),
                // Nothing listens there.
                a("mta-sts.broken.test", [127, 0, 44, 4]),
            ],
        ),
        (
            "2.0.192.in-addr.arpa",
            vec![
                ptr(21, "out1.example.com"),
                ptr(22, "out2.example.com"),
                ptr(23, "c.broken.test"),
                // .24 has none; .25's name resolves back but its source
                // greets with another name; .26's name does not resolve.
                ptr(25, "e.broken.test"),
                ptr(26, "nowhere.broken.test"),
            ],
        ),
    ]);
    let config = |name: &str, domain: &str, key: &str, sources: &[(&str, u8, &str)]| {
        let mut text = format!(
            "[server]\nhostname = \"out1.example.com\"\n\
             [dns]\nnameservers = [\"{nameserver}\"]\ntimeout_secs = 2\n\
             [tls]\nca_file = \"{ca}\"\n\
             [[dkim.identity]]\ndomain = \"{domain}\"\nselector = \"s1\"\nkey_file = \"{key}\"\n",
            ca = dir.path().join("ca.pem").display(),
            key = dir.path().join(key).display(),
        );
        for (source, last, ehlo) in sources {
            text += &format!(
                "[[egress.source]]\nname = \"{source}\"\naddress = \"192.0.2.{last}\"\nehlo = \"{ehlo}\"\n"
            );
        }
        let members: Vec<String> = sources
            .iter()
            .map(|(source, ..)| format!("{{ source = \"{source}\" }}"))
            .collect();
        text += &format!(
            "[[egress.pool]]\nname = \"all\"\nsources = [{}]\n",
            members.join(", ")
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    let good = config(
        "good.toml",
        "example.com",
        "good.pem",
        &[("a", 21, "out1.example.com"), ("b", 22, "out2.example.com")],
    );
    let run = dns_check(&good, "example.com");
    println!("{}", run.text);
    assert!(run.ok, "the good zone fails:\n{}", run.text);
    for check in ["spf", "dkim", "dmarc", "ptr", "ehlo", "mta-sts", "tls-rpt"] {
        assert!(
            !with(&run, check, "pass").is_empty(),
            "no {check} pass:\n{}",
            run.text
        );
    }
    assert!(
        run.findings.iter().all(|f| f["verdict"] == "pass"),
        "{}",
        run.text
    );
    // Both sources authorized, one through the include: 1 lookup.
    assert_eq!(with(&run, "spf", "pass").len(), 3, "{}", run.text);
    assert!(run.text.contains("1 DNS lookups"), "{}", run.text);
    assert!(
        run.text.contains("policy mode enforce, mx mx.example.com"),
        "{}",
        run.text
    );

    let broken = config(
        "broken.toml",
        "broken.test",
        "broken.pem",
        &[
            ("c", 23, "c.broken.test"),
            ("d", 24, "d.broken.test"),
            ("e", 25, "wrong.broken.test"),
            ("f", 26, "nowhere.broken.test"),
        ],
    );
    let run = dns_check(&broken, "broken.test");
    println!("{}", run.text);
    assert!(!run.ok, "the broken zone passes:\n{}", run.text);
    let spf_fails = with(&run, "spf", "fail");
    assert!(
        spf_fails.iter().any(|f| f.contains("11 DNS lookups")),
        "{spf_fails:?}"
    );
    for ip in ["192.0.2.24", "192.0.2.25", "192.0.2.26"] {
        assert!(
            spf_fails
                .iter()
                .any(|f| f.contains(&format!("for {ip} ")) && f.contains(&format!("add ip4:{ip}"))),
            "{ip} not named: {spf_fails:?}"
        );
    }
    assert!(
        !spf_fails.iter().any(|f| f.contains("for 192.0.2.23 ")),
        "{spf_fails:?}"
    );
    let dkim = with(&run, "dkim", "fail");
    assert!(
        dkim.iter().any(|f| f.contains("not the configured key")
            && f.contains(&format!("s1._domainkey.broken.test. TXT \"{broken_key}\""))),
        "{dkim:?}"
    );
    let dmarc = with(&run, "dmarc", "fail");
    assert!(
        dmarc.iter().any(|f| f.contains("no DMARC record")
            && f.contains("_dmarc.broken.test. TXT \"v=DMARC1; p=none;")),
        "{dmarc:?}"
    );
    let ptr = with(&run, "ptr", "fail");
    assert!(
        ptr.iter()
            .any(|f| f.contains("192.0.2.24 (source d): no PTR record")
                && f.contains("24.2.0.192.in-addr.arpa. PTR d.broken.test.")),
        "{ptr:?}"
    );
    assert!(
        ptr.iter().any(|f| f.contains("192.0.2.26")
            && f.contains("does not resolve back")
            && f.contains("nowhere.broken.test. A 192.0.2.26")),
        "{ptr:?}"
    );
    let ehlo = with(&run, "ehlo", "fail");
    assert!(
        ehlo.iter()
            .any(|f| f.contains("EHLO wrong.broken.test is not its PTR name e.broken.test")),
        "{ehlo:?}"
    );
    assert_eq!(
        with(&run, "ehlo", "pass").len(),
        1,
        "source c's EHLO is its PTR name"
    );
    let sts = with(&run, "mta-sts", "fail");
    assert!(
        sts.iter()
            .any(|f| f.contains("connecting to mta-sts.broken.test")),
        "{sts:?}"
    );
    let rpt = with(&run, "tls-rpt", "warn");
    assert!(
        rpt.iter()
            .any(|f| f.contains("_smtp._tls.broken.test. TXT \"v=TLSRPTv1; rua=mailto:")),
        "{rpt:?}"
    );
}
