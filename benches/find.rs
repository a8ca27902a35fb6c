//! `queue find` at scale: a million messages queued (the scheduler's
//! in-memory index, `scheduler::index`) and a million in the history (a
//! sled tree on disk, `history`), looked up by each kind of key. A
//! recipient or a Message-ID names one message; the sender and a campaign
//! name a hundred thousand or all of them, of which the newest 100 are
//! answered, as the admin API does.
//!
//!     cargo bench --bench find
//!
//! The history is built under /var/tmp (a real file system, as the
//! spool), which takes a minute; the numbers are per lookup on one shard
//! (the admin API asks every shard at once and adds a mesh hop and HTTP).

use std::collections::HashMap;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ringpost::config::HistoryConfig;
use ringpost::history::lookup::keys_of_envelope;
use ringpost::history::{History, Lookup, Outcome, RecipientRecord, Record};
use ringpost::queue::{Envelope, IdGenerator, MessageId, Spool, SpoolOptions};
use ringpost::scheduler::index::QueueIndex;

const MESSAGES: usize = 1_000_000;
/// Hits a lookup answers at most (the API's default limit).
const LIMIT: usize = 100;

fn envelope(i: usize) -> Envelope {
    let mut env = Envelope::new(
        format!("news{}@shop.example", i % 10),
        vec![format!("user{i}@dest{}.example", i % 100)],
        1_800_000_000,
    );
    env.message_id = Some(format!("m{i}@shop.example").into());
    env.meta = Some(Box::new(
        serde_json::json!({"campaign": format!("c{}", i % 2), "user": i}),
    ));
    env
}

/// What `Scheduler::find` does with the queue's index: the newest
/// candidates, each checked against its message's own keys.
fn find_queued(index: &QueueIndex, messages: &HashMap<MessageId, Envelope>, key: &Lookup) -> usize {
    index
        .candidates(key)
        .filter_map(|id| messages.get(&id))
        .filter(|env| keys_of_envelope(env).contains(key))
        .take(LIMIT)
        .count()
}

fn keys(i: usize) -> [(&'static str, Lookup); 4] {
    [
        (
            "rcpt",
            Lookup::parse("rcpt", &format!("user{i}@DEST{}.example", i % 100)).unwrap(),
        ),
        (
            "message_id",
            Lookup::parse("message_id", &format!("<m{i}@shop.example>")).unwrap(),
        ),
        (
            "sender_100k_newest_100",
            Lookup::parse("sender", &format!("news{}@shop.example", i % 10)).unwrap(),
        ),
        (
            "meta_500k_newest_100",
            Lookup::parse("meta", &format!("campaign=c{}", i % 2)).unwrap(),
        ),
    ]
}

fn queued(c: &mut Criterion) {
    let mut ids = IdGenerator::new(0);
    let mut index = QueueIndex::default();
    let mut messages = HashMap::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (id, env) = (ids.next_id(), envelope(i));
        index.add(id, &env);
        messages.insert(id, env);
    }
    let mut g = c.benchmark_group("find_queued_of_1m");
    for (name, key) in keys(654_321) {
        assert!(find_queued(&index, &messages, &key) > 0, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| find_queued(&index, &messages, black_box(&key)))
        });
    }
    g.finish();
}

fn finished(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    let opts = SpoolOptions {
        min_free_bytes: 0,
        ..SpoolOptions::default()
    };
    let spool = Spool::open(dir.path(), 0, &opts).expect("spool");
    let cfg = HistoryConfig {
        max_messages: MESSAGES as u64,
        ..HistoryConfig::default()
    };
    let history = History::open(&spool, &cfg, 1);
    let started = std::time::Instant::now();
    for i in 0..MESSAGES {
        let id = spool.new_id();
        let env = envelope(i);
        let rec = Record::of(id, &env, 1_800_000_000 + i as u64 / 100, |_, r| {
            RecipientRecord {
                address: &r.address,
                outcome: Outcome::Delivered,
                attempts: 1,
                reply: Some("250 2.0.0 Ok: queued as 4Fz1xQ2b"),
                category: None,
            }
        });
        history.record(id, &rec).expect("record");
    }
    history.seal().expect("seal");
    let filled = started.elapsed();
    // What a start-up with this history costs: reading the key tables.
    drop(history);
    let started = std::time::Instant::now();
    let history = History::open(&spool, &cfg, 1);
    assert_eq!(history.len(), MESSAGES as u64);
    eprintln!(
        "history of {MESSAGES}: recorded in {:.1} s ({:.1} us each, encoding and sealing), reopened in {} ms",
        filled.as_secs_f64(),
        filled.as_secs_f64() * 1e6 / MESSAGES as f64,
        started.elapsed().as_millis()
    );
    let mut g = c.benchmark_group("find_history_of_1m");
    for (name, key) in keys(654_321) {
        assert!(!history.find(&key, 0, LIMIT).is_empty(), "{name}");
        g.bench_function(name, |b| {
            b.iter(|| history.find(black_box(&key), 0, LIMIT).len())
        });
    }
    g.finish();
}

/// What every message pays for being findable, on the relay's path: its
/// keys into the queue's index at reception and out at removal, and its
/// history record when it leaves (1 and 10 recipients).
fn per_message(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    let opts = SpoolOptions {
        min_free_bytes: 0,
        ..SpoolOptions::default()
    };
    let spool = Spool::open(dir.path(), 0, &opts).expect("spool");
    let history = History::open(&spool, &HistoryConfig::default(), 1);
    let mut g = c.benchmark_group("find_cost_per_message");
    for rcpts in [1usize, 10] {
        let mut env = envelope(7);
        env.recipients = (0..rcpts)
            .map(|i| ringpost::queue::Recipient::pending(format!("user{i}@dest.example")))
            .collect();
        let mut index = QueueIndex::default();
        let mut ids = IdGenerator::new(0);
        g.bench_function(format!("index_add_and_remove_{rcpts}_rcpt"), |b| {
            b.iter(|| {
                let id = ids.next_id();
                index.add(id, black_box(&env));
                index.remove(id, black_box(&env));
            })
        });
        g.bench_function(format!("history_record_{rcpts}_rcpt"), |b| {
            b.iter(|| {
                let id = spool.new_id();
                let rec = Record::of(id, black_box(&env), 1_800_000_000, |_, r| RecipientRecord {
                    address: &r.address,
                    outcome: Outcome::Delivered,
                    attempts: 1,
                    reply: Some("250 2.0.0 Ok: queued as 4Fz1xQ2b"),
                    category: None,
                });
                history.record(id, &rec).expect("record");
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = per_message, queued, finished
}
criterion_main!(benches);
