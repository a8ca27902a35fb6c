//! The spool commit path: messages/s through `Spool::enqueue` (body file +
//! fdatasync, record insert, group-committed sled flush) with 1, 8 and 64
//! concurrent writers on one glommio executor. Prints the mean group-commit
//! batch size for each run, which shows how many messages one flush served.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringpost::queue::commit::thread_round_totals;
use ringpost::queue::{Envelope, IdGenerator, Spool, SpoolOptions};

const BODY: usize = 10 * 1024;

fn envelope() -> Envelope {
    Envelope::new(
        "receipts@shop.example".into(),
        vec!["customer@dest.example".into()],
        0,
    )
}

/// Enqueues `total` messages from `writers` tasks; returns the elapsed time
/// and the mean group-commit batch.
fn run(writers: usize, total: u64) -> (Duration, f64) {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let root = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let spool = std::rc::Rc::new(Spool::open(&root, 0, &SpoolOptions::default()).unwrap());
            let ids = std::rc::Rc::new(std::cell::RefCell::new(IdGenerator::new(0)));
            let (rounds0, msgs0) = thread_round_totals();
            let start = Instant::now();
            let per = total.div_ceil(writers as u64);
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let (spool, ids) = (spool.clone(), ids.clone());
                    glommio::spawn_local(async move {
                        let env = envelope();
                        for _ in 0..per {
                            let id = ids.borrow_mut().next_id();
                            spool
                                .enqueue(id, env.clone(), vec![b'x'; BODY])
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let elapsed = start.elapsed();
            let (rounds, msgs) = thread_round_totals();
            (
                elapsed,
                (msgs - msgs0) as f64 / (rounds - rounds0).max(1) as f64,
            )
        })
        .unwrap()
        .join()
        .unwrap()
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("spool_commit_10KiB");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for writers in [1usize, 8, 64] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let (elapsed, batch) = run(writers, iters.max(writers as u64));
                eprintln!("  {writers} writers: {iters} msgs, mean group-commit batch {batch:.1}");
                elapsed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
