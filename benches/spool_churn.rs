//! Churn: write messages through the real commit path and remove them as a
//! delivering queue would (live set ~1,000), then report the spool's size on
//! disk. The spool must give the space back.
//!
//!     cargo bench --bench spool_churn            # 100,000 x 10 KiB, 10,000 x 100 KiB
//!     CHURN_SCALE=10 cargo bench --bench spool_churn   # a tenth of that
//!
//! Run on the file system the spool will live on (BENCH_DIR, default /var/tmp).

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ringpost::queue::{Envelope, IdGenerator, Spool, SpoolOptions};

const LIVE: usize = 1000;
const WRITERS: usize = 20;

fn du(path: &Path) -> String {
    let out = Command::new("du")
        .arg("-sh")
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn churn(dir: &Path, count: usize, size: usize) {
    let root = dir.to_path_buf();
    let start = Instant::now();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let spool = std::rc::Rc::new(Spool::open(&root, 0, &SpoolOptions::default()).unwrap());
            let ids = std::rc::Rc::new(std::cell::RefCell::new(IdGenerator::new(0)));
            let live = std::rc::Rc::new(std::cell::RefCell::new(VecDeque::new()));
            let tasks: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (spool, ids, live) = (spool.clone(), ids.clone(), live.clone());
                    glommio::spawn_local(async move {
                        for _ in 0..count / WRITERS {
                            let id = ids.borrow_mut().next_id();
                            let env = Envelope::new(
                                "s@shop.example".into(),
                                vec!["r@dest.example".into()],
                                0,
                            );
                            let stored = spool.enqueue(id, env, vec![b'x'; size]).await.unwrap();
                            let done = {
                                let mut l = live.borrow_mut();
                                l.push_back((id, stored.body));
                                if l.len() > LIVE { l.pop_front() } else { None }
                            };
                            if let Some((old, body)) = done {
                                spool.remove(old, &body).await.unwrap();
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let rest: Vec<_> = live.borrow_mut().drain(..).collect();
            for (id, body) in rest {
                spool.remove(id, &body).await.unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "churn {count} x {} KiB: {:.0} msgs/s, spool after removal: {}",
        size / 1024,
        count as f64 / secs,
        du(&dir.join("shard-0"))
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: usize = std::env::var("CHURN_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    for (count, size) in [(100_000 / scale, 10 * 1024), (10_000 / scale, 100 * 1024)] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        churn(dir.path(), count, size);
    }
}
