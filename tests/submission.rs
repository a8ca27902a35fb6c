//! Submission (RFC 6409) with AUTH (RFC 4954): AUTH only over TLS, PLAIN and
//! LOGIN against argon2 hashes, authenticated users relay anywhere, nobody
//! else sends at all, and failed attempts are limited per client IP.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Client, TestServer, start_with};

const HOST: &str = "mx.test.example";

fn submission_server(dir: &std::path::Path, max_failures: u32) -> (TestServer, String) {
    let ck = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    let (cert, key, users) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("users"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let hash = ringpost::inbound::smtp::auth::hash_password(b"correct horse").unwrap();
    std::fs::write(&users, format!("# submission users\nalice:{hash}\n")).unwrap();
    let ts = start_with(1, |c| {
        c.smtp.relay_networks.clear(); // loopback is not trusted here: only AUTH lets mail through
        c.tls.cert_file = cert.display().to_string();
        c.tls.key_file = key.display().to_string();
        c.submission.users_file = users.display().to_string();
        c.submission.listen = "127.0.0.1:0".parse().unwrap();
        c.submission.max_auth_failures = max_failures;
    });
    (ts, ck.cert.pem())
}

/// A submission client: plain until `starttls`, then rustls verifying `pem`.
struct Sub {
    r: BufReader<Box<dyn ReadWrite>>,
}

trait ReadWrite: std::io::Read + Write {}
impl<T: std::io::Read + Write> ReadWrite for T {}

impl Sub {
    fn connect(addr: SocketAddr) -> Sub {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = Sub {
            r: BufReader::new(Box::new(tcp)),
        };
        assert!(s.reply().starts_with("220 "));
        s
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).unwrap() > 0,
                "closed; so far: {all}"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.r
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn starttls(self, pem: &str) -> Sub {
        let conn = rustls::ClientConnection::new(
            common::rustls_client_trusting(pem),
            HOST.try_into().unwrap(),
        )
        .unwrap();
        let inner = self.r.into_inner();
        Sub {
            r: BufReader::new(Box::new(rustls::StreamOwned::new(conn, inner))),
        }
    }
}

fn plain(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

fn encrypted(ts: &TestServer, pem: &str) -> Sub {
    let mut s = Sub::connect(ts.submission_addr.unwrap());
    s.cmd("EHLO client.test.example");
    assert!(s.cmd("STARTTLS").starts_with("220 "));
    let mut s = s.starttls(pem);
    let ehlo = s.cmd("EHLO client.test.example");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    s
}

#[test]
fn auth_is_offered_and_accepted_only_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ts, _) = submission_server(dir.path(), 5);
    let mut s = Sub::connect(ts.submission_addr.unwrap());
    let ehlo = s.cmd("EHLO client.test.example");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "correct horse")))
            .starts_with("538 5.7.11")
    );
    assert!(
        s.cmd("MAIL FROM:<alice@sender.example>")
            .starts_with("530 5.7.0")
    );
    // The public port does not do AUTH at all.
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO client.test.example", 250);
    assert_eq!(c.cmd("AUTH LOGIN").code, 502);
    drop((s, c));
    assert!(ts.messages().is_empty());
}

#[test]
fn an_authenticated_user_relays_and_the_message_says_esmtpsa() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ts, pem) = submission_server(dir.path(), 5);
    let mut s = encrypted(&ts, &pem);
    assert!(
        s.cmd("MAIL FROM:<alice@sender.example>")
            .starts_with("530 5.7.0"),
        "AUTH first"
    );
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")))
            .starts_with("535 5.7.8")
    );
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("mallory", "correct horse")))
            .starts_with("535 5.7.8")
    );
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "correct horse")))
            .starts_with("235 2.7.0")
    );
    assert!(s.cmd("AUTH PLAIN x").starts_with("503 5.5.1"), "only once");
    assert!(s.cmd("MAIL FROM:<alice@sender.example>").starts_with("250"));
    assert!(
        s.cmd("RCPT TO:<anyone@far-away.example>")
            .starts_with("250"),
        "relay for the user"
    );
    assert!(s.cmd("DATA").starts_with("354"));
    let done = s.cmd("Subject: from alice\r\n\r\nhello\r\n.");
    assert!(done.starts_with("250 2.0.0 Ok: queued as"), "{done}");
    let id = done.trim_end().rsplit(' ').next().unwrap().to_string();
    drop(s);
    let body = String::from_utf8_lossy(&ts.body(&id)).into_owned();
    assert!(body.contains("with ESMTPSA id"), "{body}");
}

#[test]
fn auth_login_with_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let (_ts, pem) = submission_server(dir.path(), 5);
    let mut s = encrypted(&_ts, &pem);
    assert_eq!(s.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(s.cmd(&B64.encode("alice")), "334 UGFzc3dvcmQ6\r\n");
    assert!(s.cmd(&B64.encode("correct horse")).starts_with("235 2.7.0"));
    // PLAIN without an initial response gets an empty challenge; "*" cancels.
    let mut s = encrypted(&_ts, &pem);
    assert_eq!(s.cmd("AUTH PLAIN"), "334 \r\n");
    assert!(s.cmd("*").starts_with("501 5.7.0"));
    assert!(s.cmd("AUTH CRAM-MD5").starts_with("504 5.5.4"));
}

#[test]
fn repeated_failures_from_one_ip_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (ts, pem) = submission_server(dir.path(), 3);
    let mut s = encrypted(&ts, &pem);
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess1")))
            .starts_with("535")
    );
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess2")))
            .starts_with("535")
    );
    let third = s.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess3")));
    assert!(third.starts_with("421 4.7.0"), "{third}");
    // A new session from the same IP is refused at once, even with the
    // right password.
    let mut s = encrypted(&ts, &pem);
    assert!(
        s.cmd(&format!("AUTH PLAIN {}", plain("alice", "correct horse")))
            .starts_with("421 4.7.0")
    );
}
