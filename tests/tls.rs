//! Inbound STARTTLS (RFC 3207) with a real TLS stack on both ends: openssl
//! s_client, and a verifying rustls client that sends a whole message.
//! Commands pipelined after STARTTLS are never executed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestServer, start, start_with};

const HOST: &str = "mx.test.example";

/// A self-signed certificate for HOST, written as PEM files.
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.pem())
}

fn tls_server(dir: &std::path::Path) -> (TestServer, String) {
    let (cert, key, pem) = certificate(dir);
    let ts = start_with(1, |c| {
        c.tls.cert_file = cert.display().to_string();
        c.tls.key_file = key.display().to_string();
    });
    (ts, pem)
}

#[test]
fn starttls_is_offered_only_when_configured() {
    let plain = start();
    let mut c = plain.client();
    let ehlo = c.expect("EHLO client.test.example", 250);
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    assert_eq!(
        c.expect("STARTTLS", 502).text(),
        "5.5.1 Error: command not implemented"
    );

    let dir = tempfile::tempdir().unwrap();
    let (ts, _) = tls_server(dir.path());
    let mut c = ts.client();
    let ehlo = c.expect("EHLO client.test.example", 250);
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(c.expect("STARTTLS now", 501).text().starts_with("5.5.4"));
}

#[test]
fn commands_pipelined_after_starttls_are_discarded_and_the_session_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ts, _) = tls_server(dir.path());
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    // A man in the middle appends commands to the client's STARTTLS.
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@dest.example>\r\nDATA\r\n");
    let r = c.reply();
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.5.1 "));
    assert!(c.is_closed());
    drop(c);
    assert!(ts.messages().is_empty());
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn openssl_s_client_negotiates_starttls_1_2_and_1_3() {
    assert!(
        openssl_available(),
        "openssl is needed (Debian package openssl; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (ts, _) = tls_server(dir.path());
    for version in ["-tls1_2", "-tls1_3"] {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-starttls",
                "smtp",
                "-crlf",
                "-quiet",
                "-ign_eof",
                version,
                "-servername",
                HOST,
            ])
            .arg("-CAfile")
            .arg(dir.path().join("cert.pem"))
            .arg("-verify_return_error")
            .arg("-connect")
            .arg(ts.addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"EHLO client.test.example\nQUIT\n")
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // After the handshake the session starts over: EHLO again, and no
        // STARTTLS in its reply.
        assert!(
            stdout.contains(&format!("250-{HOST}")),
            "{version} ({:?}): {stdout}\n---stderr:\n{stderr}",
            out.status
        );
        // (s_client echoes the last line it read before the handshake, so
        // look only at what follows the post-handshake EHLO reply's start.)
        let after = &stdout[stdout.find(&format!("250-{HOST}")).unwrap()..];
        assert!(!after.contains("STARTTLS"), "{version}: {stdout}");
        assert!(stdout.contains("221 2.0.0"), "{version}: {stdout}");
        // The certificate verified against the test CA, and the session
        // ended with a TLS close_notify (no "unexpected eof").
        assert!(!stderr.contains("error"), "{version}: {stderr}");
    }
}

#[test]
fn message_over_starttls_is_queued_and_marked_esmtps() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ts, pem) = tls_server(dir.path());
    let tcp = TcpStream::connect(ts.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut plain = BufReader::new(tcp);
    let mut line = String::new();
    let read_reply = |r: &mut dyn BufRead, line: &mut String| -> String {
        let mut all = String::new();
        loop {
            line.clear();
            r.read_line(line).unwrap();
            all.push_str(line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return all;
            }
        }
    };
    assert!(read_reply(&mut plain, &mut line).starts_with("220 "));
    plain
        .get_mut()
        .write_all(b"EHLO client.test.example\r\nSTARTTLS\r\n")
        .unwrap();
    assert!(read_reply(&mut plain, &mut line).contains("STARTTLS"));
    assert!(read_reply(&mut plain, &mut line).starts_with("220 2.0.0"));

    // A verifying client: the test certificate is its only root.
    let config = common::rustls_client_trusting(&pem);
    let conn = rustls::ClientConnection::new(config, HOST.try_into().unwrap()).unwrap();
    let tls = rustls::StreamOwned::new(conn, plain.into_inner());
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO client.test.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n")
        .unwrap();
    let ehlo = read_reply(&mut tls, &mut line);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    for expect in ["250 2.1.0", "250 2.1.5", "354 "] {
        assert!(read_reply(&mut tls, &mut line).starts_with(expect));
    }
    tls.get_mut()
        .write_all(b"Subject: secret\r\n\r\nover TLS\r\n.\r\n")
        .unwrap();
    let done = read_reply(&mut tls, &mut line);
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done}");
    let id = done.trim_end().rsplit(' ').next().unwrap().to_string();
    let mut rest = Vec::new();
    tls.get_mut().write_all(b"QUIT\r\n").unwrap();
    let _ = tls.read_to_end(&mut rest);
    let body = ts.body(&id);
    assert!(
        String::from_utf8_lossy(&body).contains("with ESMTPS id"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn lettre_sends_over_starttls() {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};
    let dir = tempfile::tempdir().unwrap();
    let (mut ts, pem) = tls_server(dir.path());
    let tls = TlsParameters::builder(HOST.into())
        .add_root_certificate(Certificate::from_pem(pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(ts.addr.port())
        .tls(Tls::Required(tls))
        .build();
    let email = Message::builder()
        .from("Shop <orders@shop.example>".parse().unwrap())
        .to("customer@dest.example".parse().unwrap())
        .subject("Receipt over TLS")
        .body(String::from("paid\r\n"))
        .unwrap();
    let response = transport.send(&email).expect("lettre sends over STARTTLS");
    let id = common::lettre_queued_id(&response);
    let body = ts.body(&id);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("Subject: Receipt over TLS"), "{text}");
}
