//! HTTP injection (`POST /api/inject/v1`) against a running server with two
//! shards: a message injected as JSON is queued durably before the 200,
//! delivered through the test MX like SMTP mail, and only clients in
//! `smtp.relay_networks` or holding the token may inject; bad requests get
//! a clear status and nothing is queued; connections are limited, and a
//! request under way at shutdown is still answered. (Durability under
//! SIGKILL: tests/crash.rs.)

mod common;

use std::net::SocketAddr;

use common::dns::{self, Rr};
use common::sink::{Script, Sink};
use common::{TestServer, http, sink_port, start_with};

fn post(
    addr: SocketAddr,
    auth: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(body).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, text) = http(addr, &req);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

fn message(rcpts: &[&str], content: &str) -> serde_json::Value {
    let recipients: Vec<_> = rcpts
        .iter()
        .map(|r| serde_json::json!({ "email": r }))
        .collect();
    serde_json::json!({
        "envelope_sender": "orders@sender.test",
        "recipients": recipients,
        "content": content,
    })
}

/// A server that delivers through a test DNS server: dest.test's MX is
/// 127.0.0.2 on `port`.
fn server(port: u16, tweak: impl FnOnce(&mut ringpost::config::Config)) -> TestServer {
    let zone = dns::serve(
        "test",
        vec![
            Rr::Mx("dest.test", 10, "mx1.dest.test"),
            Rr::A("mx1.dest.test", "127.0.0.2".parse().unwrap()),
        ],
    );
    start_with(2, |c| {
        c.delivery.smarthost.clear();
        c.delivery.remote_port = port;
        c.delivery.connect_timeout_secs = 2;
        c.dns.nameservers = vec![zone];
        c.dns.timeout_secs = 2;
        tweak(c);
    })
}

#[test]
fn an_injected_message_is_delivered_with_crlf_line_endings() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let ts = server(port, |_| {});
    let content = "From: Shop <orders@sender.test>\nTo: a@dest.test\nSubject: receipt 42\n\n.total: 10.00\nthanks\n";
    let (status, answer) = post(
        ts.inject_addr.unwrap(),
        None,
        &message(&["a@dest.test", "not an address", "b@dest.test"], content),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success_count"], 2);
    assert_eq!(answer["fail_count"], 1);
    assert_eq!(
        answer["failed_recipients"],
        serde_json::json!(["not an address"])
    );
    let id = answer["id"].as_str().unwrap().to_string();

    let msgs = sink.wait_for(1, 20);
    assert_eq!(msgs.len(), 1, "both recipients in one transaction");
    assert_eq!(msgs[0].from, "orders@sender.test");
    assert_eq!(msgs[0].rcpts, ["a@dest.test", "b@dest.test"]);
    let data = String::from_utf8(msgs[0].data.clone()).unwrap();
    let (received, rest) = data.split_once("\r\nFrom: ").unwrap();
    assert!(
        received.starts_with("Received: from [127.0.0.1]")
            && received.contains(&format!("with HTTP id {id}")),
        "{received}"
    );
    assert_eq!(
        format!("From: {rest}"),
        content.replace('\n', "\r\n"),
        "byte-exact apart from line endings (the leading dot survives the SMTP hop)"
    );
}

#[test]
fn a_recipient_listed_twice_gets_the_message_once_over_injection_and_smtp() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let ts = server(port, |_| {});
    let twice = ["b@dest.test", "b@dest.test", "b@Dest.TEST", "c@dest.test"];
    let (status, answer) = post(
        ts.inject_addr.unwrap(),
        None,
        &message(&twice, "Subject: once\n\nhello\n"),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["success_count"], &answer["merged_count"]),
        (&2.into(), &2.into()),
        "{answer}"
    );
    let mut c = ts.client();
    c.begin("s@sender.test", &twice);
    let reply = c.data(b"Subject: once by smtp\r\n\r\nhello\r\n");
    assert_eq!(reply.code, 250, "{reply:?}");
    let msgs = sink.wait_for(2, 20);
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert_eq!(m.rcpts, ["b@dest.test", "c@dest.test"], "each once");
    }
    let metrics = ts.metrics_text();
    assert!(
        metrics.contains("ringpost_recipients_merged_total 4"),
        "{metrics}"
    );
}

/// A template with values for all recipients only makes one message for
/// all; values of a recipient's own make one message each, a recipient
/// listed twice merged (the first kept).
#[test]
fn a_template_makes_one_message_for_all_or_one_per_recipient() {
    let port = sink_port();
    let sink = Sink::start("127.0.0.2", port, Script::default());
    let ts = server(port, |_| {});
    let mut shared = message(
        &["a@dest.test", "b@dest.test"],
        "Subject: {{ what }}\n\nfor all\n",
    );
    shared["substitutions"] = serde_json::json!({"what": "news"});
    let (status, answer) = post(ts.inject_addr.unwrap(), None, &shared);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ids"].as_array().unwrap().len(), 1, "{answer}");
    let mut own = message(
        &["c@dest.test", "d@dest.test", "c@DEST.test"],
        "Subject: for {{ name }}\n\nhi {{ name }}\n",
    );
    for (i, name) in ["C", "D", "C again"].iter().enumerate() {
        own["recipients"][i]["substitutions"] = serde_json::json!({ "name": name });
    }
    let (status, answer) = post(ts.inject_addr.unwrap(), None, &own);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["success_count"], &answer["merged_count"]),
        (&2.into(), &1.into()),
        "{answer}"
    );
    let msgs = sink.wait_for(3, 20);
    let body_of = |rcpt: &str| {
        let m = msgs
            .iter()
            .find(|m| m.rcpts.contains(&rcpt.to_string()))
            .unwrap();
        let text = String::from_utf8_lossy(&m.data).into_owned();
        (
            m.rcpts.len(),
            text.split_once("\r\n\r\n").unwrap().1.to_string(),
        )
    };
    assert_eq!(body_of("a@dest.test"), (2, "for all\r\n".to_string()));
    assert_eq!(body_of("c@dest.test"), (1, "hi C\r\n".to_string()));
    assert_eq!(body_of("d@dest.test"), (1, "hi D\r\n".to_string()));
}

#[test]
fn the_200_comes_after_the_message_is_in_the_spool() {
    // The next hop is a closed port: the message stays queued.
    let mut ts = start_with(2, |_| {});
    let (status, answer) = post(
        ts.inject_addr.unwrap(),
        None,
        &message(&["x@elsewhere.test"], "Subject: kept\r\n\r\nbody\r\n"),
    );
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let queued = ts.stop_and_list();
    let (_, env) = queued
        .iter()
        .find(|(qid, _)| qid.to_string() == id)
        .expect("the injected message is in the spool");
    assert_eq!(env.sender, "orders@sender.test");
    assert_eq!(env.recipients.len(), 1);
    assert_eq!(&*env.recipients[0].address, "x@elsewhere.test");
}

#[test]
fn clients_outside_relay_networks_need_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").unwrap();
    let outside = |c: &mut ringpost::config::Config| {
        c.smtp.relay_networks = vec!["10.0.0.0/8".parse().unwrap()];
    };
    let ts = start_with(1, |c| {
        outside(c);
        c.inject.token_file = token_file.to_str().unwrap().into();
    });
    let addr = ts.inject_addr.unwrap();
    let msg = message(&["x@elsewhere.test"], "Subject: t\r\n\r\nx\r\n");
    assert_eq!(post(addr, None, &msg).0, 401);
    assert_eq!(post(addr, Some("correct-horse-battery-stapl"), &msg).0, 401);
    let (status, answer) = post(addr, Some("correct-horse-battery-staple"), &msg);
    assert_eq!(status, 200, "{answer}");

    let no_token = start_with(1, outside);
    let (status, answer) = post(no_token.inject_addr.unwrap(), None, &msg);
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("may not inject"));
}

#[test]
fn bad_requests_get_a_clear_status_and_queue_nothing() {
    let mut ts = start_with(1, |c| {
        c.smtp.max_message_size = 64 * 1024;
        c.smtp.max_line_length = 1000;
    });
    let addr = ts.inject_addr.unwrap();
    let (status, answer) = post(addr, None, &serde_json::json!({ "recipients": [] }));
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("envelope_sender"),
        "{answer}"
    );
    let (status, _) = post(addr, None, &message(&["nobody"], "x"));
    assert_eq!(status, 400);
    let long_line = format!("Subject: x\r\n\r\n{}\r\n", "y".repeat(1200));
    let (status, answer) = post(addr, None, &message(&["a@b.test"], &long_line));
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("line 3"),
        "{answer}"
    );
    let big = "0123456789abcdef\r\n".repeat(5000);
    assert_eq!(post(addr, None, &message(&["a@b.test"], &big)).0, 413);
    // Templates: a value that would start a header line of its own, a
    // value no one gave, a syntax error: 400 with where, nothing queued.
    let templated = |content: &str, subs: serde_json::Value| {
        let mut m = message(&["a@b.test", "c@b.test"], content);
        m["recipients"][0]["substitutions"] = subs;
        post(addr, None, &m)
    };
    for (content, subs, says) in [
        (
            "Subject: {{ s }}\n\nx\n",
            serde_json::json!({"s": "hi\r\nBcc: all@victims.test"}),
            "a@b.test: template content header, line 1: invalid operation: a value with a line break in a header field",
        ),
        (
            "Subject: x\n\n{{ missing }}\n",
            serde_json::json!({}),
            "a@b.test: template content body, line 1: undefined value",
        ),
        (
            "Subject: x\n\n{% if %}\n",
            serde_json::json!({}),
            "template content body, line 1: syntax error",
        ),
    ] {
        let (status, answer) = templated(content, subs);
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(says), "{error}");
    }
    let huge = b"POST /api/inject/v1 HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n";
    assert_eq!(http(addr, huge).0, 413);
    assert_eq!(http(addr, b"GET /api/inject/v1 HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"POST /inject HTTP/1.1\r\n\r\n").0, 404);
    assert!(ts.stop_and_list().is_empty(), "nothing was queued");
}

#[test]
fn connections_over_the_limit_get_503() {
    let ts = start_with(1, |c| c.inject.max_connections = 1);
    let addr = ts.inject_addr.unwrap();
    // Holds the only slot: connected, request not yet sent.
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let msg = message(&["x@elsewhere.test"], "Subject: t\r\n\r\nx\r\n");
    let body = serde_json::to_vec(&msg).unwrap();
    let mut req = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    assert_eq!(http(addr, &req).0, 503);
    // The held connection is still served, and frees its slot after.
    use std::io::{Read, Write};
    held.write_all(&req).unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(http(addr, &req).0, 200);
}

#[test]
fn a_request_under_way_at_shutdown_is_answered_and_kept() {
    use std::io::{Read, Write};
    let mut ts = start_with(1, |c| c.server.shutdown_grace_secs = 5);
    let msg = message(&["x@elsewhere.test"], "Subject: late\r\n\r\nx\r\n");
    let body = serde_json::to_vec(&msg).unwrap();
    let mut conn = std::net::TcpStream::connect(ts.inject_addr.unwrap()).unwrap();
    let head = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&body[..10]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    ts.request_shutdown();
    std::thread::sleep(std::time::Duration::from_millis(300));
    conn.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let id = json["id"].as_str().unwrap().to_string();
    let queued = ts.stop_and_list();
    assert!(
        queued.iter().any(|(q, _)| q.to_string() == id),
        "{id} is queued"
    );
}

/// HTTPS on the injection listener (`inject.cert_file`, `key_file`):
/// requests over TLS are answered, plain HTTP is not; SIGHUP reads the
/// certificate again, so a client that trusts only the new CA gets in
/// and one that trusts only the old one no longer does.
#[test]
fn injection_over_tls_with_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (common::sink::TestCa::new(), common::sink::TestCa::new());
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |ca: &common::sink::TestCa| {
        let (cert, key) = ca.leaf_pem("localhost");
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
    };
    install(&old_ca);
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (smtp, inject): (SocketAddr, SocketAddr) = (port(0), port(1));
    let config = dir.path().join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 1\nhostname = \"tls.test\"\n[spool]\ndir = \"{}\"\n\
             [smtp]\nlisten = \"{smtp}\"\n[delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n\
             [inject]\nlisten = \"{inject}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("spool").display(),
            common::closed_port(),
            cert_file.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, smtp);
    let body = serde_json::to_vec(&message(&["a@dest.test"], "Subject: tls\r\n\r\nx\r\n")).unwrap();
    let mut request = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let over_tls = |ca: &common::sink::TestCa| -> std::io::Result<String> {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn =
            rustls::ClientConnection::new(common::rustls_client_trusting(&ca.pem), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(inject)?);
        tls.write_all(&request)?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = over_tls(&old_ca).expect("HTTPS with the old CA");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(over_tls(&new_ca).is_err(), "the new CA is not trusted yet");
    // Plain HTTP to the HTTPS port is not served.
    let mut plain = std::net::TcpStream::connect(inject).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    std::io::Write::write_all(&mut plain, &request).unwrap();
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut text);
    assert!(
        !text.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was answered"
    );

    install(&new_ca);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        if let Ok(a) = over_tls(&new_ca) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(over_tls(&old_ca).is_err(), "the old certificate is gone");
    child.kill().unwrap();
    child.wait().unwrap();
}
