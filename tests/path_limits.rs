//! A path's limits hold for the node however its mail is spread over the
//! shards: one SMTP connection's mail (all on one shard), eight
//! connections' (both shards), and eight uneven ones (one shard runs out
//! first and the other carries on alone) are all delivered at the
//! configured rate, as a real sink counts them per second.
//!
//! `delivery.max_messages_per_second = 50` on 2 shards; the mail is
//! queued with the domain suspended, then resumed; the sink stamps each
//! message as it takes it.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Script, Sink};
use common::{Client, TestServer};

const RATE: f64 = 50.0;

fn server(sink: &Sink, tweak: impl FnOnce(&mut ringpost::config::Config)) -> TestServer {
    common::start_with(2, |c| {
        c.delivery.smarthost = format!("[127.0.0.1]:{}", sink.addr.port());
        c.delivery.max_messages_per_second = RATE;
        c.delivery.max_connections = 4;
        tweak(c);
    })
}

/// Sends `counts[k]` messages over connection `k`, all connections at
/// once.
fn send(ts: &TestServer, counts: &[usize]) {
    let threads: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let addr = ts.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.expect("EHLO app.test", 250);
                for i in 0..n {
                    c.expect("MAIL FROM:<app@sender.test>", 250);
                    c.expect(&format!("RCPT TO:<r{k}-{i}@dest.test>"), 250);
                    let r = c.data(format!("Subject: {k}-{i}\r\n\r\nx\r\n").as_bytes());
                    assert_eq!(r.code, 250);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Messages per whole second from the first delivery, and the rate over
/// the run (first to last delivery).
fn per_second(times: &[Instant]) -> (Vec<usize>, f64) {
    let first = times[0];
    let last = *times.last().unwrap();
    let seconds = last.duration_since(first).as_secs() as usize;
    let mut counts = vec![0; seconds + 1];
    for t in times {
        counts[t.duration_since(first).as_secs() as usize] += 1;
    }
    // n messages span n - 1 intervals.
    let rate = (times.len() - 1) as f64 / last.duration_since(first).as_secs_f64();
    (counts, rate)
}

fn hold(ts: &TestServer, action: &str) {
    let (status, body) = common::http(
        ts.admin_addr.unwrap(),
        format!("POST /queue/domains/dest.test/{action} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

/// The mail is queued first (the domain suspended: one SMTP connection
/// takes fewer than 50 messages a second, each waiting for its fsync),
/// then released at once.
fn run(name: &str, counts: &[usize]) {
    run_at(name, counts, RATE, |_| {});
}

/// [`run`] with the config tweaked, expecting `want` messages a second.
fn run_at(
    name: &str,
    counts: &[usize],
    want: f64,
    tweak: impl FnOnce(&mut ringpost::config::Config),
) {
    let sink = Sink::start("127.0.0.1", 0, Script::default());
    let ts = server(&sink, tweak);
    let n: usize = counts.iter().sum();
    hold(&ts, "suspend");
    send(&ts, counts);
    hold(&ts, "resume");
    let msgs = sink.wait_for(n, 60);
    let mut times: Vec<Instant> = msgs.iter().map(|m| m.at).collect();
    times.sort();
    let (seconds, rate) = per_second(&times);
    eprintln!("{name}: {n} messages at {rate:.1}/s; per second: {seconds:?}");
    assert!(
        (want * 0.95..=want * 1.05).contains(&rate),
        "{name}: {rate:.1}/s, not within 5% of {want}: {seconds:?}"
    );
    // Every whole second but the first (a burst of the batch) and the
    // last (partial) at the rate: no second at half of it.
    for (i, &c) in seconds.iter().enumerate().skip(1) {
        if i + 1 < seconds.len() {
            assert!(
                (c as f64) >= want * 0.9 && (c as f64) <= want * 1.1,
                "{name}: second {i}: {c} ({seconds:?})"
            );
        }
    }
    // The tail: the last two seconds, when one shard may be done.
    let end = *times.last().unwrap();
    let tail = times
        .iter()
        .filter(|t| end.duration_since(**t) < Duration::from_secs(2))
        .count();
    assert!(
        tail as f64 >= want * 2.0 * 0.9,
        "{name}: {tail} in the last two seconds"
    );
}

#[test]
fn one_connection_gets_the_whole_rate() {
    run("one connection", &[300]);
}

#[test]
fn eight_connections_get_the_rate_even_and_uneven() {
    run("eight connections", &[40; 8]);
    // One connection with most of the mail: the shard it landed on goes on
    // alone after the other has sent its part.
    run(
        "eight uneven connections",
        &[200, 10, 10, 10, 10, 10, 10, 10],
    );
}

/// A fleet's node while Redis is unreachable: its 1/nodes share of the
/// rate (2 nodes: 25/s), wherever its mail is, here all on one shard.
#[test]
fn without_redis_a_node_gets_its_share_from_one_connection() {
    let closed = common::closed_port();
    run_at("Redis down, 1 of 2 nodes", &[150], RATE / 2.0, |c| {
        c.cluster.redis = format!("redis://127.0.0.1:{closed}");
        c.cluster.nodes = 2;
    });
}
