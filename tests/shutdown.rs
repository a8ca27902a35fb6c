//! Graceful shutdown of the real binary on SIGTERM: no new connections, the
//! transaction in flight completes and is acknowledged, idle sessions are
//! closed, the process exits 0 and the message is queued.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn sigterm_finishes_the_transaction_in_flight_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", common::closed_port())
        .parse()
        .unwrap();
    let spool = tmp.path().join("spool");
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 2\nshutdown_grace_secs = 10\n[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{addr}\"\n\
             [delivery]\nsmarthost = \"[127.0.0.1]:{}\"\nlog = \"off\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
             [metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n",
            spool.display(),
            common::closed_port()
        ),
    )
    .unwrap();
    let mut child = common::spawn_binary(&config, addr);

    // A: in the middle of DATA. B: idle after EHLO.
    let mut a = BufReader::new(TcpStream::connect(addr).unwrap());
    a.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    reply(&mut a);
    a.get_mut()
        .write_all(b"EHLO a.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n")
        .unwrap();
    for expect in ["250-", "250 2.1.0", "250 2.1.5", "354 "] {
        let r = reply(&mut a);
        assert!(r.starts_with(expect), "expected {expect}, got {r:?}");
    }
    a.get_mut()
        .write_all(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .unwrap();
    let mut b = BufReader::new(TcpStream::connect(addr).unwrap());
    b.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    reply(&mut b);
    b.get_mut().write_all(b"EHLO b.test\r\n").unwrap();
    reply(&mut b);

    let term = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));

    // The transaction in flight completes and is acknowledged; then 421.
    a.get_mut()
        .write_all(b"second half\r\n.\r\nNOOP\r\n")
        .unwrap();
    let done = reply(&mut a);
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done:?}");
    let id = done.trim_end().rsplit(' ').next().unwrap().to_string();
    // The NOOP pipelined behind the data is answered; at the next command
    // boundary the session is closed with 421.
    assert_eq!(reply(&mut a), "250 2.0.0 Ok\r\n");
    let bye = reply(&mut a);
    assert!(bye.starts_with("421 4.3.2"), "{bye:?}");

    // The idle session is closed and the process exits 0, well within grace.
    assert_eq!(reply(&mut b), "", "the idle session was closed");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");

    let queued: Vec<String> = common::list_spool(&spool)
        .iter()
        .map(|(i, _)| i.to_string())
        .collect();
    assert!(
        queued.contains(&id),
        "the acknowledged message is queued: {queued:?}"
    );
}
