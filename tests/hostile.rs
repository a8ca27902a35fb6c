//! Hostile clients: relay tricks, smuggled control characters, unsynchronized
//! pipelining, connection floods and endless sessions. Each case checks the
//! exact reply and that nothing was queued.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, connect_from, rss_kib, start_with};

/// A client that may relay nowhere: only local.example is accepted.
fn untrusted() -> common::TestServer {
    start_with(1, |c| {
        c.smtp.relay_networks.clear();
        c.smtp.local_domains = vec!["local.example".into()];
    })
}

#[test]
fn address_tricks_never_relay_for_an_untrusted_client() {
    let mut ts = untrusted();
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    for (rcpt, code, enhanced) in [
        ("<victim%remote.example@local.example>", 554, "5.7.1"),
        ("<remote.example!victim@local.example>", 554, "5.7.1"),
        ("<\"victim@remote.example\"@local.example>", 554, "5.7.1"),
        ("<@local.example:victim@remote.example>", 554, "5.7.1"),
        ("<victim@[192.0.2.1]>", 554, "5.7.1"),
        ("<victim@[IPv6:2001:db8::1]>", 554, "5.7.1"),
        ("<victim@remote.example>", 554, "5.7.1"),
        ("<victim@local.example.>", 501, "5.1.3"),
        ("<victim@remote.example.>", 501, "5.1.3"),
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert_eq!(r.code, code, "{rcpt}: {r:?}");
        assert!(r.text().starts_with(enhanced), "{rcpt}: {r:?}");
    }
    assert!(
        c.expect("DATA", 503).text().starts_with("5.5.1"),
        "no recipient was accepted"
    );
    // A plain local recipient still works.
    c.expect("RCPT TO:<user@local.example>", 250);
    drop(c);
    assert!(ts.messages().is_empty());
}

#[test]
fn control_characters_and_8bit_addresses_are_refused() {
    let mut ts = start_with(1, |_| {});
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    c.send(b"MAIL FROM:<a\0b@b.example>\r\n");
    assert_eq!(c.reply().code, 501, "NUL in a command");
    c.send(b"MAIL FROM:<a@b.example>\rRCPT TO:<x@y.example>\r\n");
    assert_eq!(c.reply().code, 501, "bare CR inside a command line");
    assert!(
        c.expect("MAIL FROM:<jörg@b.example>", 553)
            .text()
            .starts_with("5.6.7")
    );
    c.expect("MAIL FROM:<a@b.example>", 250);
    assert!(
        c.expect("RCPT TO:<zoë@y.example>", 553)
            .text()
            .starts_with("5.6.7")
    );
    drop(c);
    assert!(ts.messages().is_empty());
}

#[test]
fn a_helo_client_that_sends_before_the_354_is_out_of_sync() {
    let mut ts = start_with(1, |_| {});
    let mut c = ts.client();
    c.expect("HELO client.test.example", 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    c.send(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@b.example>\r\n");
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().starts_with("5.5.0")),
        (554, true),
        "{r:?}"
    );
    assert!(c.is_closed());
    drop(c);
    assert!(ts.messages().is_empty());
}

fn first_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn connections_over_the_per_ip_limit_get_421() {
    let ts = start_with(1, |c| c.smtp.max_connections_per_ip = 4);
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", ts.addr)).collect();
    for s in &mut held {
        assert!(first_line(s).starts_with("220 "));
    }
    let mut fifth = connect_from("127.0.0.1", ts.addr);
    assert_eq!(
        first_line(&mut fifth),
        "421 4.7.0 Error: too many connections, try again later\r\n"
    );
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", ts.addr);
    assert!(first_line(&mut other).starts_with("220 "));
    // A place frees up when a session ends.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    assert!(first_line(&mut connect_from("127.0.0.1", ts.addr)).starts_with("220 "));
}

#[test]
fn a_session_that_never_ends_is_closed_at_its_time_limit() {
    let ts = start_with(1, |c| c.smtp.max_session_secs = 1);
    let mut c = ts.client();
    let start = Instant::now();
    loop {
        let r = c.cmd("NOOP");
        if r.code == 421 {
            assert_eq!(r.text(), "4.4.2 Error: timeout exceeded, closing");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[test]
fn five_thousand_idle_connections_do_not_block_a_normal_client() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::closed_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{addr}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n",
            tmp.path().join("spool").display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, addr);
    let rss_before = rss_kib(child.id());
    // 5,000 connections from 50 addresses (100 each, the per-IP default),
    // each reading its greeting and then saying nothing.
    let mut idle = Vec::with_capacity(5000);
    for i in 0..5000 {
        let src = format!("127.0.1.{}", 1 + i / 100);
        idle.push(connect_from(&src, addr));
    }
    for s in idle.iter_mut().step_by(250) {
        let line = first_line(s);
        assert!(
            line.starts_with("220 "),
            "idle connections are admitted: {line:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(child.id());

    let start = Instant::now();
    let mut c = Client::connect(addr);
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    assert_eq!(c.data(b"Subject: still served\r\n\r\nx\r\n").code, 250);
    let served_in = start.elapsed();
    eprintln!(
        "5000 idle connections: server RSS {} KiB before, {} KiB with them ({:.1} KiB each); \
         a normal client was served in {:?}",
        rss_before,
        rss_idle,
        (rss_idle.saturating_sub(rss_before)) as f64 / 5000.0,
        served_in
    );
    assert!(served_in < Duration::from_secs(1), "{served_in:?}");
    assert!(
        rss_idle < 512 * 1024,
        "RSS {rss_idle} KiB with 5000 idle connections"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(idle);
}
