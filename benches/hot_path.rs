//! What each optional feature on the delivery and reception paths costs a
//! message, measured one by one, so that the next feature's cost is
//! measured against this run (benches/results/README.md, 2026-12-07):
//!
//! - suppression: the list looked up for a recipient (hit and miss) in a
//!   list of 100,000 entries, as reception and the delivery-time check do;
//! - shaping: the rule for a destination (the first rule that fits, the
//!   built-in rules), as every delivery attempt looks it up;
//! - egress: a message's pool (its own, its sender domain's, the default);
//! - meta, pool and priority headers: taken out of a 10 KiB message in one
//!   pass, as the reception door does for every message, and the meta
//!   object parsed;
//! - priority: a job pushed and popped through the weighted lanes.
//!
//! DKIM (Ed25519 and RSA) is `benches/dkim_sign.rs`; the spool's commit
//! `benches/spool_commit.rs`; the scheduler's picks
//! `benches/scheduler_pick.rs`.
//!
//!     cargo bench --bench hot_path

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ringpost::config::Config;
use ringpost::scheduler::lanes::Lanes;
use ringpost::scheduler::shaping::{DEFAULT_SHAPING, Shaping};
use ringpost::suppression::{Suppression, SuppressionList};

fn suppression(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let list = SuppressionList::open(&dir.path().join("suppression")).expect("the list opens");
    let entries: Vec<Suppression> = (0..100_000)
        .map(|i| Suppression {
            address: format!("user{i}@dest{}.example", i % 100),
            scope: if i % 2 == 0 { "*" } else { "shop.example" }.to_string(),
            reason: "HardBounce".into(),
            source: "bounce".into(),
            added: 1,
            expires: 0,
        })
        .collect();
    list.add(&entries).expect("entries added");
    let mut g = c.benchmark_group("suppression_check");
    g.bench_function("hit_global", |b| {
        b.iter(|| {
            list.check(
                black_box("news@shop.example"),
                black_box("user42@dest42.example"),
                2,
            )
        })
    });
    g.bench_function("hit_sender_domain", |b| {
        b.iter(|| {
            list.check(
                black_box("news@shop.example"),
                black_box("user43@dest43.example"),
                2,
            )
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            list.check(
                black_box("news@shop.example"),
                black_box("nobody@dest1.example"),
                2,
            )
        })
    });
    g.finish();
}

fn shaping(c: &mut Criterion) {
    let rules = Shaping::parse(&[("default", DEFAULT_SHAPING)]).expect("the built-in rules");
    let mut g = c.benchmark_group("shaping_rule_for");
    g.bench_function("gmail_by_mx", |b| {
        b.iter(|| {
            rules.rule_for(
                black_box("customer.example"),
                black_box(&["aspmx.l.google.com", "alt1.aspmx.l.google.com"]),
            )
        })
    });
    g.bench_function("no_rule", |b| {
        b.iter(|| rules.rule_for(black_box("small.example"), black_box(&["mx.small.example"])))
    });
    g.finish();
}

fn egress(c: &mut Criterion) {
    let cfg = Config::from_toml(
        r#"
        [egress]
        source = [{ name = "ip1", address = "127.0.0.2" }, { name = "ip2", address = "127.0.0.3" }]
        pool = [
            { name = "transactional", sources = [{ source = "ip1" }] },
            { name = "bulk", sources = [{ source = "ip2" }] },
        ]
        sender_domains = { "news.example" = "bulk" }
        "#,
    )
    .expect("the egress config");
    let mut g = c.benchmark_group("egress_pool_for");
    g.bench_function("named", |b| {
        b.iter(|| {
            cfg.egress
                .pool_for(black_box("bulk"), black_box("a@shop.example"))
        })
    });
    g.bench_function("by_sender_domain", |b| {
        b.iter(|| {
            cfg.egress
                .pool_for(black_box(""), black_box("a@News.Example"))
        })
    });
    g.bench_function("default", |b| {
        b.iter(|| {
            cfg.egress
                .pool_for(black_box(""), black_box("a@shop.example"))
        })
    });
    g.finish();
}

fn own_headers(c: &mut Criterion) {
    let mut message = b"Received: from client.example by ringpost\r\n\
        From: <news@shop.example>\r\nTo: <a@dest.example>\r\nSubject: offer\r\n\
        X-Ringpost-Meta: {\"campaign\":\"spring\",\"customer\":12345}\r\n\
        X-Ringpost-Priority: high\r\n\r\n"
        .to_vec();
    message.resize(message.len() + 10 * 1024, b'x');
    let names = ["X-Ringpost-Meta", "X-Ringpost-Pool", "X-Ringpost-Priority"];
    let mut g = c.benchmark_group("own_headers");
    g.bench_function("take_three_from_10k", |b| {
        b.iter_batched(
            || message.clone(),
            |mut m| ringpost::proto::header::take_fields(&mut m, 0, names),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("clone_10k_alone", |b| {
        b.iter_batched(
            || (),
            |()| message.clone(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("meta_json_parse", |b| {
        b.iter(|| {
            serde_json::from_str::<serde_json::Value>(black_box(
                r#"{"campaign":"spring","customer":12345}"#,
            ))
        })
    });
    g.finish();
}

fn priority(c: &mut Criterion) {
    let mut lanes: Lanes<u64> = Lanes::default();
    for i in 0..10_000 {
        lanes.push((i % 3) as usize, i);
    }
    let weights = [8, 4, 1];
    let mut g = c.benchmark_group("priority_lanes");
    g.bench_function("push_pop_10k_queued", |b| {
        b.iter(|| {
            lanes.push(1, black_box(7));
            lanes.pop(black_box(weights))
        })
    });
    g.finish();
}

criterion_group!(benches, suppression, shaping, egress, own_headers, priority);
criterion_main!(benches);
