//! The scheduler's picks: splitting a message into per-domain jobs when it
//! becomes due, and taking due messages off the due-time index (a BTreeSet
//! of (due time, id)) when the queue holds a million deferred messages.

use std::collections::BTreeSet;

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use ringpost::queue::{Envelope, IdGenerator, MessageId};
use ringpost::scheduler::state::{jobs_by_domain, pop_due};

fn jobs(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_jobs");
    let one = Envelope::new("shop@example.com".into(), vec!["a@dest.example".into()], 0);
    let ten = Envelope::new(
        "shop@example.com".into(),
        (0..10)
            .map(|i| format!("user{i}@{}", ["a.example", "B.example", "c.example"][i % 3]))
            .collect(),
        0,
    );
    g.bench_function("one_recipient", |b| {
        b.iter(|| jobs_by_domain(black_box(&one)))
    });
    g.bench_function("ten_recipients_three_domains", |b| {
        b.iter(|| jobs_by_domain(black_box(&ten)))
    });
    g.finish();
}

fn due(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_due");
    let mut ids = IdGenerator::new(0);
    // A million deferred messages due over the next 10,000 seconds.
    let index: BTreeSet<(u64, MessageId)> = (0..1_000_000u64)
        .map(|i| (i / 100, ids.next_id()))
        .collect();
    g.sample_size(20);
    g.bench_function("pop_1000_due_of_1m", |b| {
        b.iter_batched(
            || index.clone(),
            // The index is returned so that dropping it is not timed.
            |mut idx| (pop_due(&mut idx, 9), idx),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("nothing_due_of_1m", |b| {
        let mut idx = index.clone();
        b.iter(|| pop_due(black_box(&mut idx), 0).len())
    });
    g.finish();
}

criterion_group!(benches, jobs, due);
criterion_main!(benches);
