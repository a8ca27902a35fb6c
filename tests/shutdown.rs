//! Graceful shutdown: of the real binary on SIGTERM (no new connections,
//! the transaction in flight completes and is acknowledged, idle sessions
//! get 421 4.3.2 and are closed, the process exits 0 and the message is
//! queued); under load, within the grace period; and the cause of the hang
//! a stop once had.

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

    // The idle session gets 421 4.3.2 and is closed; the process exits 0,
    // well within grace.
    let bye = reply(&mut b);
    assert!(bye.starts_with("421 4.3.2"), "{bye:?}");
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

/// The cause of the graceful-stop hang seen in about 1 of 10-25 runs of
/// the delivery suite: at stop, the shard cancels its tasks; one that was
/// in the middle of a spool flush (the flush timer, or a delivery worker
/// removing a finished message) left the flush marked as running for ever,
/// and `Spool::quiesce`, the shard's last step, waited for it a
/// millisecond at a time. Here the cut is made on purpose.
#[test]
fn a_flush_cut_off_by_a_cancelled_task_does_not_stall_the_stop() {
    use ringpost::queue::{Envelope, Spool, SpoolOptions};
    use ringpost::shard::tasks::TaskSet;
    use std::rc::Rc;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let stopped_in_time = glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let opts = SpoolOptions {
                cache_bytes: 8 << 20,
                ..SpoolOptions::default()
            };
            let (spool, _) = Spool::start(&root, 0, &opts).unwrap();
            let spool = Rc::new(spool);
            let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
            let id = spool.new_id();
            // Leaves sled with something to flush.
            spool
                .enqueue(id, env, b"Subject: x\r\n\r\nx\r\n".to_vec())
                .await
                .unwrap();
            let tasks = TaskSet::default();
            let s = spool.clone();
            tasks.spawn(async move { s.flush().await });
            // The task runs up to its wait for sled's fsync on the blocking
            // thread, and is cancelled there, as at a stop.
            futures_lite::future::yield_now().await;
            tasks.cancel_all();
            glommio::timer::timeout(Duration::from_secs(10), async {
                spool.quiesce().await;
                Ok(())
            })
            .await
            .is_ok()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(stopped_in_time, "Spool::quiesce still waiting after 10 s");
}

/// Under load (sessions sending, delivery attempts hanging on a slow next
/// hop), a stop ends within `shutdown_grace_secs` + 1 s, counted from the
/// request, on every shard.
#[test]
fn a_stop_under_load_ends_within_the_grace_period() {
    use common::sink::{Script, Sink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let slow = Sink::start(
        "127.0.0.1",
        0,
        Script {
            delay: Duration::from_secs(8),
            ..Script::default()
        },
    );
    let mut ts = common::start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", slow.addr.port());
        c.delivery.reply_timeout_secs = 30;
        c.server.shutdown_grace_secs = 2;
    });
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (addr, running, sent) = (ts.addr, running.clone(), sent.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let Ok(s) = TcpStream::connect(addr) else {
                        return;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut r = BufReader::new(s);
                    if !reply(&mut r).starts_with("220") {
                        return;
                    }
                    let _ = r.get_mut().write_all(
                        b"EHLO l.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n",
                    );
                    for _ in 0..4 {
                        reply(&mut r);
                    }
                    let _ = r.get_mut().write_all(b"Subject: load\r\n\r\nbody\r\n.\r\nQUIT\r\n");
                    if reply(&mut r).starts_with("250") {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while sent.load(Ordering::Relaxed) < 50 || slow.accepts() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no load built up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Instant::now();
    ts.stop();
    let took = stop.elapsed();
    running.store(false, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?} with a 2 s grace period"
    );
    // No client was left waiting (each would wait out its 10 s timeout):
    // a connection made during the stop was refused or reset, not
    // accepted into a socket that nobody serves.
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "a client still waited {:?} after the stop began",
        stop.elapsed()
    );
}

/// A stop with mail still queued behind a busy path ends once the attempt
/// in flight is done, not at the end of the grace period (the workers of
/// a path with mail queued used to start one another again and again
/// while draining: a busy loop for the whole grace period), and what was
/// not delivered stays queued.
#[test]
fn a_stop_with_mail_queued_ends_when_the_attempts_in_flight_do() {
    use common::sink::{Script, Sink};

    let slow = Sink::start(
        "127.0.0.1",
        0,
        Script {
            delay: Duration::from_millis(100),
            ..Script::default()
        },
    );
    let mut ts = common::start_with(1, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", slow.addr.port());
        c.delivery.max_connections = 1;
        c.server.shutdown_grace_secs = 10;
    });
    const N: usize = 30;
    let mut c = ts.client();
    c.expect("EHLO l.test", 250);
    for i in 0..N {
        c.begin("a@b.example", &["x@y.example"]);
        let body = format!("Subject: queued {i}\r\n\r\nbody\r\n");
        assert_eq!(c.data(body.as_bytes()).code, 250);
    }
    slow.wait_for(1, 10);
    let stop = Instant::now();
    ts.stop();
    let took = stop.elapsed();
    let queued = ts.stop_and_list().len();
    let delivered = slow.messages().len();
    eprintln!("stopped in {took:?}: {delivered} delivered, {queued} still queued");
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?} with one attempt (under a second) in flight"
    );
    assert!(queued > 0, "the backlog was gone before the stop");
    assert!(delivered + queued >= N, "{delivered} + {queued} of {N}");
}
