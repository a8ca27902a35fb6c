//! DKIM signing, judged by verifiers that share no code with ringpost:
//! dkimpy, Perl's Mail::DKIM (RSA) and OpenDKIM (tests/verifiers/verify.py
//! runs them in a network namespace of their own, with a DNS server that
//! publishes the keys). A corpus of 1,000 varied messages goes in over
//! SMTP and HTTP, out through the real outbound path to a loopback sink,
//! and every RSA and Ed25519 signature the sink sees must verify; a
//! one-byte change to a signed header or to the body must fail. Keys are
//! made by `ringpost dkim keygen`, and `ringpost dkim check` reads them
//! back from a real DNS server.
//!
//! Needs root (the verifiers' namespace), python3 with dkimpy, dnspython
//! and PyNaCl, Debian's libmail-dkim-perl and opendkim-tools: `.ci/run`
//! installs them.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dns::{self, Rr};
use common::sink::{Script, Sink};
use common::{Client, TestServer, http, start_with};
use ringpost::config::DkimIdentity;

const BIN: &str = env!("CARGO_BIN_EXE_ringpost");

/// `ringpost dkim keygen` into `dir`: the key file and the TXT record text
/// it says to publish.
fn keygen(dir: &Path, domain: &str, selector: &str, algo: &str) -> (PathBuf, String) {
    let out = dir.join(format!("{domain}.{selector}.pem"));
    let run = Command::new(BIN)
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algo", algo, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is for our eyes only");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. 3600 IN TXT ")))
        .unwrap_or_else(|| panic!("no TXT record in:\n{stdout}"));
    // The record's character-strings, joined (RFC 6376 3.6.2.2).
    let record: String = line.split('"').skip(1).step_by(2).collect();
    assert!(record.starts_with("v=DKIM1; k="), "{record}");
    (out, record)
}

fn identity(domain: &str, selector: &str, key_file: &Path) -> DkimIdentity {
    DkimIdentity {
        domain: domain.into(),
        selector: selector.into(),
        key_file: key_file.display().to_string(),
        algorithm: None,
        expiry_secs: None,
    }
}

struct Keys {
    dir: tempfile::TempDir,
    identities: Vec<DkimIdentity>,
    /// `selector._domainkey.domain` → record.
    records: BTreeMap<String, String>,
}

/// An RSA and an Ed25519 identity for example.com.
fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let mut identities = Vec::new();
    let mut records = BTreeMap::new();
    for (selector, algo) in [("r2026", "rsa"), ("e2026", "ed25519")] {
        let (file, record) = keygen(dir.path(), "example.com", selector, algo);
        identities.push(identity("example.com", selector, &file));
        records.insert(format!("{selector}._domainkey.example.com"), record);
    }
    Keys {
        dir,
        identities,
        records,
    }
}

/// Runs the independent verifiers over every `.eml` in `dir`: per
/// verifier and algorithm, (checked, passed).
fn verify(keys: &Keys, dir: &Path) -> BTreeMap<(String, String), (u64, u64)> {
    let keys_json = keys.dir.path().join("keys.json");
    std::fs::write(&keys_json, serde_json::to_vec(&keys.records).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers/verify.py");
    let run = Command::new("unshare")
        .args(["--net", "--mount", "python3"])
        .arg(script)
        .arg(&keys_json)
        .arg(dir)
        .output()
        .expect("unshare and python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "verifiers did not run (root, dkimpy, dnspython, PyNaCl, libmail-dkim-perl, opendkim-tools?):\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut out = BTreeMap::new();
    for (verifier, algos) in json.as_object().unwrap() {
        for (algo, r) in algos.as_object().unwrap() {
            let n = |k: &str| r[k].as_u64().unwrap();
            out.insert(
                (verifier.clone(), algo.clone()),
                (n("checked"), n("passed")),
            );
        }
    }
    out
}

/// One message of the corpus, as the client means it (CRLF lines). Each
/// index gives a different mix: UTF-8 and 8-bit text, long folded
/// headers, 998-octet lines, dot lines, white space that relaxed
/// canonicalization folds, empty bodies, MIME multipart, the one-click
/// unsubscribe pair.
fn corpus_message(i: usize, eight_bit_ok: bool) -> Vec<u8> {
    let mut m = Vec::new();
    let from = match i % 4 {
        0 => format!("From: Receipts <receipts{i}@example.com>"),
        1 => "From: \"Shop, Inc.\" <news@mail.example.com>".to_string(),
        2 => format!("From: alerts{i}@example.com (alerts)"),
        _ => format!("From: =?utf-8?q?J=C3=B6rg?= <j{i}@example.com>"),
    };
    m.extend_from_slice(from.as_bytes());
    m.extend_from_slice(b"\r\n");
    if i.is_multiple_of(5) {
        // A long To: folded over many lines.
        m.extend_from_slice(b"To: ");
        for k in 0..30 {
            let sep = if k == 0 { "" } else { ",\r\n\t" };
            m.extend_from_slice(format!("{sep}user{k}@example.net").as_bytes());
        }
        m.extend_from_slice(b"\r\n");
    } else {
        m.extend_from_slice(format!("To: customer{i}@example.net\r\n").as_bytes());
    }
    match i % 3 {
        0 => m.extend_from_slice(format!("Subject: Your receipt {i}\r\n").as_bytes()),
        1 => {
            m.extend_from_slice(format!("Subject:   spaced\t  out   subject {i}  \r\n").as_bytes())
        }
        _ => m.extend_from_slice(format!("Subject: Grüße, 注文 {i} — ✓\r\n").as_bytes()),
    }
    m.extend_from_slice(format!("Date: Tue, 01 Dec 2026 03:00:{:02} +0000\r\n", i % 60).as_bytes());
    m.extend_from_slice(format!("Message-ID: <corpus.{i}@example.com>\r\n").as_bytes());
    m.extend_from_slice(format!("X-Corpus: {i}\r\n").as_bytes());
    if i.is_multiple_of(2) {
        m.extend_from_slice(format!("List-Unsubscribe: <https://example.com/u/{i}>,\r\n <mailto:unsub-{i}@example.com>\r\n").as_bytes());
        m.extend_from_slice(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    }
    if i.is_multiple_of(7) {
        m.extend_from_slice(b"Feedback-ID: 1:receipts:example\r\n");
    }
    let multipart = i % 6 == 3;
    m.extend_from_slice(b"MIME-Version: 1.0\r\n");
    if multipart {
        m.extend_from_slice(b"Content-Type: multipart/alternative;\r\n boundary=\"b1\"\r\n\r\n");
        m.extend_from_slice(b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nThanks for your order.\r\n\r\n");
        m.extend_from_slice(b"--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        for _ in 0..20 {
            m.extend_from_slice(
                b"PGh0bWw+PGJvZHk+VGhhbmtzIGZvciB5b3VyIG9yZGVyLjwvYm9keT48L2h0bWw+Cg==\r\n",
            );
        }
        m.extend_from_slice(b"--b1--\r\n");
        return m;
    }
    m.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
    match i % 8 {
        0 => {} // empty body
        1 => {
            // Dot lines, which SMTP stuffs and the sink unstuffs.
            m.extend_from_slice(b".\r\n..\r\n.hidden\r\nend\r\n");
        }
        2 => {
            // A line of 998 octets, the most RFC 5322 allows.
            m.extend_from_slice(&[b'x'; 998]);
            m.extend_from_slice(b"\r\n");
        }
        3 => {
            // Trailing white space and trailing empty lines.
            m.extend_from_slice(b"line with spaces   \r\n\ttabbed\t \r\n\r\n\r\n\r\n");
        }
        4 if eight_bit_ok => {
            // Raw 8-bit (Latin-1), over SMTP only: JSON carries UTF-8.
            m.extend_from_slice(b"Gr\xfc\xdfe aus K\xf6ln\r\n");
        }
        5 => {
            // Without a final line ending (SMTP adds none to BDAT; HTTP
            // injection adds it).
            m.extend_from_slice(format!("no final line ending {i}").as_bytes());
        }
        _ => {
            for k in 0..(i % 40) {
                m.extend_from_slice(
                    format!("Line {k} of message {i}: ünïcödé text with  double  spaces.\r\n")
                        .as_bytes(),
                );
            }
        }
    }
    m
}

/// SMTP's dot-stuffing, and the line ending DATA needs at the end.
fn stuffed(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 16);
    for line in m.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn send_smtp(server: &TestServer, indexes: impl Iterator<Item = usize>) {
    let mut c = Client::connect(server.addr);
    c.expect("EHLO client.test.example", 250);
    for i in indexes {
        c.expect("MAIL FROM:<bounces@example.com> SMTPUTF8", 250);
        c.expect(&format!("RCPT TO:<rcpt{i}@example.net>"), 250);
        let m = corpus_message(i, true);
        if m.ends_with(b"\r\n") {
            c.expect("DATA", 354);
            c.send(&stuffed(&m));
            c.send(b".\r\n");
        } else {
            // BDAT: the body exactly as meant, no final CRLF.
            c.send(format!("BDAT {} LAST\r\n", m.len()).as_bytes());
            c.send(&m);
        }
        let r = c.reply();
        assert_eq!(r.code, 250, "message {i}: {r:?}");
    }
    c.expect("QUIT", 221);
}

/// Injects `content` from bounces@example.com to `rcpt`: the answer's
/// JSON, once 200.
fn inject(server: &TestServer, rcpt: &str, content: &str) -> serde_json::Value {
    post_injection(
        server,
        &serde_json::json!({
            "envelope_sender": "bounces@example.com",
            "recipients": [{"email": rcpt}],
            "content": content,
        }),
    )
}

/// Posts an injection request: the answer's JSON, once 200.
fn post_injection(server: &TestServer, request: &serde_json::Value) -> serde_json::Value {
    let body = serde_json::to_vec(request).unwrap();
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, text) = http(server.inject_addr.unwrap(), &req);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn send_http(server: &TestServer, indexes: impl Iterator<Item = usize>) {
    for i in indexes {
        let content = String::from_utf8(corpus_message(i, false)).unwrap();
        inject(server, &format!("rcpt{i}@example.net"), &content);
    }
}

fn corpus_index(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let at = text.find("\r\nX-Corpus: ").expect("X-Corpus header");
    text[at + 12..]
        .split("\r\n")
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The signed fields (`h=`) of each DKIM-Signature of `data`, lower case.
fn signed_fields(data: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(data);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n\t", "")
        .replace("\r\n ", "");
    head.lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .map(|l| {
            let h = l
                .split(';')
                .find_map(|tag| tag.trim().strip_prefix("h="))
                .unwrap();
            h.split(':')
                .map(|n| n.trim().to_ascii_lowercase())
                .collect()
        })
        .collect()
}

/// Changes one byte of `data`: an ASCII letter of the Subject, or one of
/// the body's (`signed_header`: which).
fn tamper(data: &[u8], signed_header: bool) -> Vec<u8> {
    let mut out = data.to_vec();
    let body_at = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let at = if signed_header {
        let subject = data.windows(9).position(|w| w == b"Subject: ").unwrap() + 9;
        (subject..body_at)
            .find(|&k| data[k].is_ascii_alphabetic())
            .unwrap()
    } else {
        (body_at..data.len())
            .find(|&k| data[k].is_ascii_alphanumeric())
            .unwrap()
    };
    out[at] = if out[at] == b'q' { b'z' } else { b'q' };
    out
}

#[test]
fn a_thousand_varied_messages_verify_with_independent_verifiers_and_tampering_breaks_them() {
    const N: usize = 1000;
    let keys = keys();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let log = keys.dir.path().join("delivery.log");
    let server = start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.delivery.log = log.display().to_string();
        c.dkim.identity = keys.identities.clone();
    });
    std::thread::scope(|s| {
        s.spawn(|| send_smtp(&server, (0..N).filter(|i| i % 2 == 0)));
        s.spawn(|| send_http(&server, (0..N).filter(|i| i % 2 == 1)));
    });
    let received = sink.wait_for(N, 180);
    assert_eq!(received.len(), N);

    let good = keys.dir.path().join("good");
    let bad = keys.dir.path().join("tampered");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    let mut unsubscribes = 0;
    for msg in &received {
        let i = corpus_index(&msg.data);
        std::fs::write(good.join(format!("{i:04}.eml")), &msg.data).unwrap();
        let fields = signed_fields(&msg.data);
        assert_eq!(fields.len(), 2, "message {i}: two signatures");
        for h in &fields {
            assert_eq!(
                h.iter().filter(|f| *f == "from").count(),
                2,
                "From over-signed: {h:?}"
            );
            if i.is_multiple_of(2) {
                unsubscribes += 1;
                assert!(h.contains(&"list-unsubscribe".to_string()), "{i}: {h:?}");
                assert!(
                    h.contains(&"list-unsubscribe-post".to_string()),
                    "{i}: {h:?}"
                );
            }
        }
        if i % 20 == 2 {
            std::fs::write(
                bad.join(format!("{i:04}-header.eml")),
                tamper(&msg.data, true),
            )
            .unwrap();
            std::fs::write(
                bad.join(format!("{i:04}-body.eml")),
                tamper(&msg.data, false),
            )
            .unwrap();
        }
    }
    assert_eq!(unsubscribes, N);

    let results = verify(&keys, &good);
    println!("untouched: {results:?}");
    for (verifier, algo, expected) in [
        ("dkimpy", "rsa-sha256", N),
        ("dkimpy", "ed25519-sha256", N),
        ("opendkim", "rsa-sha256", N),
        ("opendkim", "ed25519-sha256", N),
        ("mail-dkim", "rsa-sha256", N),
    ] {
        let got = results[&(verifier.to_string(), algo.to_string())];
        assert_eq!(
            got,
            (expected as u64, expected as u64),
            "{verifier} {algo}: (checked, passed)"
        );
    }
    let tampered = verify(&keys, &bad);
    println!("tampered: {tampered:?}");
    let copies = 2 * N / 20;
    for (verifier, algo) in [
        ("dkimpy", "rsa-sha256"),
        ("dkimpy", "ed25519-sha256"),
        ("opendkim", "rsa-sha256"),
        ("opendkim", "ed25519-sha256"),
        ("mail-dkim", "rsa-sha256"),
    ] {
        let got = tampered[&(verifier.to_string(), algo.to_string())];
        assert_eq!(
            got,
            (copies as u64, 0),
            "{verifier} {algo}: every changed copy fails"
        );
    }

    // Every Reception event names both signatures.
    let events = std::fs::read_to_string(&log).unwrap();
    let receptions: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "Reception")
        .collect();
    assert_eq!(receptions.len(), N);
    for e in &receptions {
        assert_eq!(
            e["dkim"]["signed"],
            serde_json::json!([
                "d=example.com s=r2026 a=rsa-sha256",
                "d=example.com s=e2026 a=ed25519-sha256"
            ])
        );
    }
}

fn metric(server: &TestServer, line_start: &str) -> u64 {
    server
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn mail_that_cannot_be_aligned_is_queued_unsigned_with_the_reason() {
    let keys = keys();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let log = keys.dir.path().join("delivery.log");
    let server = start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.delivery.log = log.display().to_string();
        c.dkim.identity = keys.identities.clone();
        c.dkim.do_not_sign = vec!["private.example.com".into()];
    });
    let cases: [(&str, &[u8]); 5] = [
        (
            "no_from",
            b"To: a@example.net\r\nSubject: x\r\n\r\nbody\r\n",
        ),
        (
            "multiple_from",
            b"From: a@example.com\r\nFrom: b@example.com\r\nSubject: x\r\n\r\nbody\r\n",
        ),
        ("bad_from", b"From: nobody\r\nSubject: x\r\n\r\nbody\r\n"),
        (
            "no_identity",
            b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n",
        ),
        (
            "do_not_sign",
            b"From: a@private.example.com\r\n\r\nbody\r\n",
        ),
    ];
    let before: Vec<u64> = cases
        .iter()
        .map(|(why, _)| {
            metric(
                &server,
                &format!("ringpost_dkim_unsigned_total{{reason=\"{why}\"}}"),
            )
        })
        .collect();
    let mut c = Client::connect(server.addr);
    for (k, (_, body)) in cases.iter().enumerate() {
        c.begin("bounces@example.com", &[&format!("r{k}@example.net")]);
        assert_eq!(c.data(body).code, 250, "never refused for its From alone");
        c.expect("RSET", 250);
    }
    let got = sink.wait_for(cases.len(), 30);
    for m in &got {
        assert!(!String::from_utf8_lossy(&m.data).contains("DKIM-Signature"));
    }
    for (k, (why, _)) in cases.iter().enumerate() {
        let now = metric(
            &server,
            &format!("ringpost_dkim_unsigned_total{{reason=\"{why}\"}}"),
        );
        assert_eq!(now, before[k] + 1, "{why}");
    }
    let events = std::fs::read_to_string(&log).unwrap();
    for (why, _) in cases {
        assert!(
            events.contains(&format!("\"dkim\":{{\"unsigned\":\"{why}\"}}")),
            "{why} in the Reception event:\n{events}"
        );
    }
}

#[test]
fn dkim_check_reads_the_published_key_back_from_dns() {
    let keys = keys();
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = keygen(other.path(), "example.com", "r2026", "rsa");
    let records: Vec<Rr> = keys
        .records
        .iter()
        .map(|(name, text)| Rr::Txt(name.clone(), text.clone()))
        .collect();
    let ns = dns::serve("example.com", records);
    let config = |identities: &[DkimIdentity], name: &str| {
        let mut text = format!("[dns]\nnameservers = [\"{ns}\"]\ntimeout_secs = 2\n");
        for id in identities {
            text += &format!(
                "[[dkim.identity]]\ndomain = \"{}\"\nselector = \"{}\"\nkey_file = \"{}\"\n",
                id.domain, id.selector, id.key_file
            );
        }
        let path = keys.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |cfg: &Path| {
        let out = Command::new(BIN)
            .args(["dkim", "check", "--domain", "example.com", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = check(&config(&keys.identities, "good.toml"));
    assert!(ok, "{text}");
    assert!(
        text.contains("r2026._domainkey.example.com: ok (rsa-sha256, 2048 bits)"),
        "{text}"
    );
    assert!(
        text.contains("e2026._domainkey.example.com: ok (ed25519-sha256, 256 bits)"),
        "{text}"
    );

    // A key that is not the published one, and a selector with no record.
    let wrong = identity("example.com", "r2026", &stranger);
    let missing = identity(
        "example.com",
        "gone",
        Path::new(&keys.identities[1].key_file),
    );
    let (ok, text) = check(&config(&[wrong, missing], "bad.toml"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "r2026._domainkey.example.com: the published key is not the configured key's"
        ),
        "{text}"
    );
    assert!(text.contains("gone._domainkey.example.com: "), "{text}");
}

#[test]
fn check_config_names_a_missing_key_file_and_refuses_a_512_bit_key() {
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:512",
            "-out",
        ])
        .arg(&weak)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cfg = dir.path().join("ringpost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[dkim.identity]]\ndomain = \"example.com\"\nselector = \"gone\"\nkey_file = \"/nonexistent/example.com.gone.pem\"\n\n[[dkim.identity]]\ndomain = \"example.com\"\nselector = \"weak\"\nkey_file = \"{}\"\nalgorithm = \"rsa-sha1\"\n",
            weak.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(!out.status.success());
    assert!(
        text.contains("line 4: dkim.identity[0].key_file: /nonexistent/example.com.gone.pem: No such file or directory"),
        "{text}"
    );
    assert!(
        text.contains(&format!("line 9: dkim.identity[1].key_file: {}: RSA key of 512 bits: keys under 1024 bits are refused", weak.display())),
        "{text}"
    );
    assert!(
        text.contains("line 10: dkim.identity[1].algorithm: unknown algorithm \"rsa-sha1\""),
        "{text}"
    );
    // And serve refuses to start on the weak key.
    std::fs::write(
        &cfg,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:0\"\n[[dkim.identity]]\ndomain = \"example.com\"\nselector = \"weak\"\nkey_file = \"{}\"\n",
            weak.display()
        ),
    )
    .unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve started with a 512-bit key");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("RSA key of 512 bits"), "{stderr}");
}

/// A submission server's duties (RFC 6409 8): messages from trusted
/// clients without `Date:` and `Message-ID:` (SMTP DATA, BDAT, HTTP
/// injection) arrive with both, the Message-ID naming the queue id, both
/// signed (in `h=`) and verified by the independent verifiers. A message
/// that has them keeps its own; one from an untrusted client (inbound to a
/// local domain) arrives as it was sent, and is counted.
#[test]
fn date_and_message_id_are_added_for_trusted_clients_and_signed() {
    use std::io::{BufRead, BufReader, Write};
    let keys = keys();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let server = start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.dkim.identity = keys.identities.clone();
        c.smtp.relay_networks = vec!["127.0.0.1/32".parse().unwrap()];
        c.smtp.local_domains = vec!["inbound.test".into()];
    });
    let bare = |tag: &str| {
        format!(
            "From: App <app@example.com>\r\nTo: <r@example.net>\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n"
        )
    };
    let mut c = Client::connect(server.addr);
    c.begin("bounces@example.com", &["r1@example.net"]);
    let data = c.data(bare("data").as_bytes()).queued_id();
    c.expect("MAIL FROM:<bounces@example.com>", 250);
    c.expect("RCPT TO:<r2@example.net>", 250);
    let m = bare("bdat");
    c.send(format!("BDAT {} LAST\r\n", m.len()).as_bytes());
    c.send(m.as_bytes());
    let bdat = c.reply().queued_id();
    c.expect("MAIL FROM:<bounces@example.com>", 250);
    c.expect("RCPT TO:<r3@example.net>", 250);
    let own = "Date: Sun, 6 Dec 2026 10:00:00 +0100\r\nMessage-ID: <own.1@app.example.com>\r\n";
    let kept = c
        .data(format!("{own}{}", bare("own")).as_bytes())
        .queued_id();
    let injected = inject(&server, "r4@example.net", &bare("http"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An untrusted client (127.0.0.3 is outside relay_networks) sending
    // to a local domain: its message is left as it is.
    let mut s = common::connect_from("127.0.0.3", server.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut said = String::new();
    for line in [
        "EHLO outside.test\r\n",
        "MAIL FROM:<someone@outside.test>\r\n",
        "RCPT TO:<user@inbound.test>\r\n",
        "DATA\r\n",
    ] {
        s.write_all(line.as_bytes()).unwrap();
        loop {
            said.clear();
            r.read_line(&mut said).unwrap();
            if said.as_bytes().get(3) != Some(&b'-') && !said.starts_with("220") {
                break;
            }
        }
    }
    assert!(said.starts_with("354"), "{said}");
    s.write_all(format!("{}.\r\n", bare("untrusted")).as_bytes())
        .unwrap();
    said.clear();
    r.read_line(&mut said).unwrap();
    assert!(said.starts_with("250"), "{said}");

    let received = sink.wait_for(5, 30);
    let dir = keys.dir.path().join("completed");
    std::fs::create_dir_all(&dir).unwrap();
    let find = |subject: &str| {
        received
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("{subject} not received"))
    };
    for (subject, id) in [("data", &data), ("bdat", &bdat), ("http", &injected)] {
        let m = find(subject);
        let text = String::from_utf8_lossy(&m.data);
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .unwrap_or_else(|| panic!("{subject}: no Date:\n{text}"));
        assert!(
            chrono::DateTime::parse_from_rfc2822(date).is_ok(),
            "{subject}: {date}"
        );
        assert!(
            text.contains(&format!("\r\nMessage-ID: <{id}@mx.test.example>\r\n")),
            "{subject}:\n{text}"
        );
        for h in signed_fields(&m.data) {
            assert!(h.contains(&"date".to_string()), "{subject}: {h:?}");
            assert!(h.contains(&"message-id".to_string()), "{subject}: {h:?}");
        }
        std::fs::write(dir.join(format!("{subject}.eml")), &m.data).unwrap();
    }
    let own_msg = String::from_utf8_lossy(&find("own").data).to_string();
    assert_eq!(own_msg.matches("\r\nDate: ").count(), 1, "{own_msg}");
    assert!(own_msg.contains("Message-ID: <own.1@app.example.com>"));
    assert_eq!(
        own_msg.matches("Message-ID: ").count(),
        1,
        "its own Message-ID only (queued as {kept}): {own_msg}"
    );
    let untrusted = String::from_utf8_lossy(&find("untrusted").data).to_string();
    assert!(!untrusted.contains("\r\nDate: "), "{untrusted}");
    assert!(!untrusted.contains("Message-ID:"), "{untrusted}");
    assert!(
        metric(
            &server,
            "ringpost_header_fields_flawed_total{field=\"Date\",flaw=\"missing\"}"
        ) >= 1
    );

    let results = verify(&keys, &dir);
    for ((verifier, algo), (checked, passed)) in &results {
        assert_eq!(checked, passed, "{verifier} {algo}: {results:?}");
    }
    let dkimpy_checked: u64 = results
        .iter()
        .filter(|((v, _), _)| v == "dkimpy")
        .map(|(_, (c, _))| *c)
        .sum();
    assert_eq!(dkimpy_checked, 6, "3 messages x 2 signatures: {results:?}");
}

/// Templated injection (issue 33): one request for 1,000 recipients, each
/// with values of its own, makes a message per recipient, rendered before
/// signing: every body is checked at the sink, and a fifth of them (and the
/// builder's MIME messages) verify with the independent verifiers.
#[test]
fn a_templated_request_makes_a_signed_message_per_recipient() {
    const N: usize = 1000;
    let keys = keys();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let server = start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.dkim.identity = keys.identities.clone();
        c.smtp.max_recipients = N;
    });
    let recipients: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            serde_json::json!({
                "email": format!("r{i}@example.net"),
                "substitutions": {"name": format!("Reader {i}"), "code": i * 7},
            })
        })
        .collect();
    let answer = post_injection(
        &server,
        &serde_json::json!({
            "envelope_sender": "bounces@example.com",
            "recipients": recipients,
            "content": "From: Shop <news@example.com>\nTo: {{ name }} <r@example.net>\n\
                        Subject: {{ shop }} for {{ name }}\n\nHello {{ name }},\n\
                        your code is {{ code }}.\n{% for i in range(3) %}line {{ i }}\n{% endfor %}",
            "substitutions": {"shop": "Example Shop"},
        }),
    );
    assert_eq!(answer["success_count"], N, "{answer}");
    let ids = answer["ids"].as_array().unwrap();
    assert_eq!(ids.len(), N, "a queue id per recipient, in order");
    let received = sink.wait_for(N, 120);
    assert_eq!(received.len(), N);
    let dir = keys.dir.path().join("templated");
    std::fs::create_dir_all(&dir).unwrap();
    for m in &received {
        assert_eq!(m.rcpts.len(), 1);
        let i: usize = m.rcpts[0]
            .trim_start_matches('r')
            .trim_end_matches("@example.net")
            .parse()
            .unwrap();
        let text = String::from_utf8_lossy(&m.data);
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            body,
            format!(
                "Hello Reader {i},\r\nyour code is {}.\r\nline 0\r\nline 1\r\nline 2\r\n",
                i * 7
            )
        );
        assert!(text.contains(&format!("\r\nSubject: Example Shop for Reader {i}\r\n")));
        let id = ids[i].as_str().unwrap();
        assert!(text.contains(&format!(" id {id}")), "{i}: its own queue id");
        assert_eq!(signed_fields(&m.data).len(), 2, "{i}: signed twice");
        if i.is_multiple_of(5) {
            std::fs::write(dir.join(format!("{i:04}.eml")), &m.data).unwrap();
        }
    }
    // The builder: text and HTML parts, a header of the application's.
    let built = post_injection(
        &server,
        &serde_json::json!({
            "envelope_sender": "bounces@example.com",
            "recipients": [
                {"email": "b1@example.net", "substitutions": {"name": "Zoë"}},
                {"email": "b2@example.net", "substitutions": {"name": "<Bob>"}},
            ],
            "template": {
                "from": "Shop <news@example.com>",
                "subject": "Grüße, {{ name }}",
                "text": "Hello {{ name }}",
                "html": "<p>Hello {{ name }}</p>",
                "headers": {"X-Campaign": "spring-{{ year }}"},
            },
            "substitutions": {"year": 2027},
        }),
    );
    assert_eq!(built["success_count"], 2, "{built}");
    let got = sink.wait_for(N + 2, 30);
    for m in got.iter().filter(|m| m.rcpts[0].starts_with('b')) {
        let parsed = mail_parser::MessageParser::default()
            .parse(&m.data)
            .unwrap();
        let name = if m.rcpts[0] == "b1@example.net" {
            "Zoë"
        } else {
            "<Bob>"
        };
        assert_eq!(parsed.subject(), Some(format!("Grüße, {name}").as_str()));
        assert_eq!(parsed.body_text(0).unwrap(), format!("Hello {name}"));
        let html = parsed.body_html(0).unwrap();
        assert!(
            html.contains("Hello Zo") || html.contains("&lt;Bob&gt;"),
            "{html}"
        );
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("\r\nX-Campaign: spring-2027\r\n"), "{text}");
        std::fs::write(dir.join(format!("{}.eml", m.rcpts[0])), &m.data).unwrap();
    }
    let results = verify(&keys, &dir);
    println!("templated: {results:?}");
    let expected = (N / 5 + 2) as u64;
    for algo in ["rsa-sha256", "ed25519-sha256"] {
        assert_eq!(
            results[&("dkimpy".to_string(), algo.to_string())],
            (expected, expected),
            "dkimpy {algo}: (checked, passed)"
        );
    }
}

/// One-click unsubscribe (issue 33): the `List-Unsubscribe` and
/// `List-Unsubscribe-Post` fields ringpost adds at reception come before
/// signing, so both signatures (RSA and Ed25519) carry them in `h=`, and
/// the independent verifiers pass the messages; over SMTP (the pool wants
/// links) and injection (a message per recipient) alike.
#[test]
fn unsubscribe_links_are_in_both_signatures() {
    let keys = keys();
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("unsubscribe.secret");
    std::fs::write(&secret, "a-secret-for-the-links-0123456789abcdef\n").unwrap();
    let server = start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.dkim.identity = keys.identities.clone();
        c.smtp.relay_networks = vec!["127.0.0.1/32".parse().unwrap()];
        c.unsubscribe.base_url = "https://unsub.example.com".into();
        c.unsubscribe.secret_file = secret.display().to_string();
        c.unsubscribe.pools = vec!["*".into()];
    });
    let content =
        "From: News <news@example.com>\r\nTo: <r@example.net>\r\nSubject: links\r\n\r\nbody\r\n";
    let mut c = Client::connect(server.addr);
    c.begin("bounces@example.com", &["r1@example.net"]);
    assert_eq!(c.data(content.as_bytes()).code, 250);
    let answer = post_injection(
        &server,
        &serde_json::json!({
            "envelope_sender": "bounces@example.com",
            "recipients": [{"email": "r2@example.net"}, {"email": "r3@example.net"}],
            "content": content,
        }),
    );
    assert_eq!(answer["ids"].as_array().map(Vec::len), Some(2), "{answer}");
    let received = sink.wait_for(3, 30);
    let dir = keys.dir.path().join("unsubscribe");
    std::fs::create_dir_all(&dir).unwrap();
    for m in &received {
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains("\r\nList-Unsubscribe: <https://unsub.example.com/u/")
                && text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{text}"
        );
        let signatures = signed_fields(&m.data);
        assert_eq!(signatures.len(), 2);
        for h in signatures {
            assert!(h.contains(&"list-unsubscribe".to_string()), "{h:?}");
            assert!(h.contains(&"list-unsubscribe-post".to_string()), "{h:?}");
        }
        std::fs::write(dir.join(format!("{}.eml", m.rcpts[0])), &m.data).unwrap();
    }
    let results = verify(&keys, &dir);
    println!("unsubscribe links: {results:?}");
    for ((verifier, algo), (checked, passed)) in &results {
        assert_eq!(checked, passed, "{verifier} {algo}: {results:?}");
    }
    for algo in ["rsa-sha256", "ed25519-sha256"] {
        assert_eq!(
            results[&("dkimpy".to_string(), algo.to_string())],
            (3, 3),
            "dkimpy {algo}"
        );
    }
}
