//! Spool recovery after damage: records whose body segment is missing or too
//! short, and records that do not decode, are quarantined (kept, not
//! dropped); segments no record refers to are removed; a body whose bytes
//! were damaged fails its CRC when read. Uses the real spool on a real
//! glommio executor and damages real files.

use std::path::{Path, PathBuf};

use ringpost::queue::{
    Envelope, IdGenerator, KeptRider, KeptTree, MessageId, RecoveryReport, Spool, SpoolOptions,
};

/// Small segments so that each 40 KiB test body lands in its own segment.
fn opts() -> SpoolOptions {
    SpoolOptions {
        cache_bytes: 8 << 20,
        segment_bytes: 64 << 10,
        ..SpoolOptions::default()
    }
}

fn segment_file(root: &Path, seq: u32) -> PathBuf {
    root.join("shard-0/segments").join(format!("{seq:010}.seg"))
}

/// Enqueues `n` messages of 40 KiB on a real executor; returns their ids.
fn enqueue(root: &Path, n: usize) -> Vec<MessageId> {
    let root = root.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let spool = Spool::open(&root, 0, &opts()).unwrap();
            let mut ids_gen = IdGenerator::new(0);
            let mut ids = Vec::new();
            for i in 0..n {
                let id = ids_gen.next_id();
                let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
                let mut body = format!("Subject: {i}\r\n\r\n").into_bytes();
                body.resize(40 << 10, b'x');
                spool.enqueue(id, env, body).await.unwrap();
                ids.push(id);
            }
            ids
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn recovery_quarantines_damage_and_removes_unreferenced_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ids = enqueue(root, 4);
    for seq in 1..=4 {
        assert!(segment_file(root, seq).exists(), "one segment per message");
    }

    // Damage: message 1's segment is gone, message 2's is truncated 10
    // bytes into its body, message 0's body has a flipped byte, and a stray
    // segment appears.
    let body_at = |i: usize| {
        let spool = Spool::open(root, 0, &opts()).unwrap();
        spool.get(ids[i]).unwrap().body.offset
    };
    let (body0, body2) = (body_at(0), body_at(2));
    std::fs::remove_file(segment_file(root, 2)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment_file(root, 3))
        .unwrap()
        .set_len(body2 + 10)
        .unwrap();
    let seg1 = std::fs::read(segment_file(root, 1)).unwrap();
    let mut damaged = seg1.clone();
    damaged[body0 as usize + 100] ^= 0xff;
    std::fs::write(segment_file(root, 1), &damaged).unwrap();
    std::fs::write(segment_file(root, 99), b"never referenced").unwrap();

    let spool = Spool::open(root, 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            messages: 2,
            replayed: 0,
            quarantined: 2,
            segments_removed: 2
        }
    );
    let listed: Vec<_> = spool.list().map(|(id, _)| id).collect();
    assert_eq!(listed, [ids[0], ids[3]]);
    let quarantined = spool.quarantined();
    assert_eq!(quarantined.len(), 2);
    assert_eq!(quarantined[0].0, ids[1].as_bytes());
    assert!(
        quarantined[0].1.contains("segment 2 is missing"),
        "{:?}",
        quarantined[0]
    );
    assert!(
        quarantined[1]
            .1
            .contains(&format!("segment 3 has {} bytes", body2 + 10)),
        "{:?}",
        quarantined[1]
    );
    assert!(!segment_file(root, 99).exists());
    // What was left of the truncated body is kept with its quarantined record.
    assert_eq!(
        spool.quarantined_body(ids[2].as_bytes()).unwrap(),
        b"Subject: 2"
    );
    assert!(!segment_file(root, 3).exists());

    // The intact message reads back; the damaged one fails its CRC.
    let env3 = spool.get(ids[3]).unwrap();
    assert!(
        spool
            .read_body_blocking(ids[3], &env3)
            .unwrap()
            .starts_with(b"Subject: 3\r\n")
    );
    let env0 = spool.get(ids[0]).unwrap();
    let err = spool.read_body_blocking(ids[0], &env0).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");

    // A second recovery finds a clean spool.
    drop(spool);
    let spool = Spool::open(root, 0, &opts()).unwrap();
    assert_eq!(spool.recover().unwrap().quarantined, 0);
}

#[test]
fn undecodable_record_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let id = IdGenerator::new(0).next_id();
    drop(Spool::open(tmp.path(), 0, &opts()).unwrap());
    {
        // Write a corrupt record with sled directly, as disk damage would.
        let db = sled::open(tmp.path().join("shard-0/queue")).unwrap();
        db.open_tree("envelopes")
            .unwrap()
            .insert(id.as_bytes(), &b"{garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    assert_eq!((report.messages, report.quarantined), (0, 1));
    assert!(spool.quarantined()[0].1.starts_with("undecodable record"));
}

#[test]
fn removing_every_message_frees_every_sealed_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let ids = enqueue(&root, 6);
    let (segments_before, segments_after, empty) = glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let spool = Spool::open(&root, 0, &opts()).unwrap();
            spool.recover().unwrap();
            let before = spool.segment_count();
            for id in &ids {
                let body = spool.get(*id).unwrap().body;
                spool.remove(*id, &body).await.unwrap();
            }
            (before, spool.segment_count(), spool.is_empty())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(segments_before, 6);
    assert_eq!(
        segments_after, 0,
        "after a restart all segments are sealed, so all are freed"
    );
    assert!(empty);
}

/// Runs test `name` again in a child process with `var` set to `root`:
/// the child works on the spool there and aborts.
fn run_crashing_child(name: &str, var: &str, root: &Path) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(var, root)
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die mid-way");
}

/// The child half of the next test: enqueue messages, then die at once,
/// before any sled flush (abort skips every destructor).
fn enqueue_then_abort(root: &Path, n: usize) -> ! {
    run_then_abort(root, move |root| async move {
        let spool = Spool::open(&root, 0, &opts()).unwrap();
        let mut ids_gen = IdGenerator::new(0);
        for i in 0..n {
            let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
            let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes();
            spool.enqueue(ids_gen.next_id(), env, body).await.unwrap();
        }
    })
}

/// Runs `work` on a glommio executor, then aborts the process: no
/// destructor runs, so sled is not flushed (a crash, as far as the spool
/// can tell).
fn run_then_abort<F, Fut>(root: &Path, work: F) -> !
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let root = root.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            work(root).await;
            std::process::abort();
        })
        .unwrap()
        .join()
        .unwrap();
    unreachable!("the child aborts")
}

#[test]
fn acknowledged_messages_are_replayed_from_the_journal_after_a_crash() {
    const N: usize = 25;
    if let Ok(root) = std::env::var("RINGPOST_TEST_CHILD_SPOOL") {
        enqueue_then_abort(Path::new(&root), N);
    }
    let tmp = tempfile::tempdir().unwrap();
    run_crashing_child(
        "acknowledged_messages_are_replayed_from_the_journal_after_a_crash",
        "RINGPOST_TEST_CHILD_SPOOL",
        tmp.path(),
    );

    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    assert_eq!(report.messages, N, "{report:?}");
    assert!(
        report.replayed > 0,
        "sled was never flushed, so records come from the journal: {report:?}"
    );
    for (id, env) in spool.list() {
        let body = spool.read_body_blocking(id, &env).unwrap();
        assert!(body.starts_with(b"Subject: "), "{id}");
        assert_eq!(&*env.recipients[0].address, "c@d.example");
    }
    // Replayed records are in sled now: a second recovery replays nothing.
    drop(spool);
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let again = spool.recover().unwrap();
    assert_eq!((again.messages, again.replayed), (N, 0));
}

/// The child half of the next test: messages each carrying a rider for
/// the idempotency tree, then an abort before any sled flush.
fn enqueue_riders_then_abort(root: &Path, n: usize) -> ! {
    run_then_abort(root, move |root| async move {
        let spool = Spool::open(&root, 0, &opts()).unwrap();
        let kept = spool.kept(KeptTree::Idempotency);
        let mut ids_gen = IdGenerator::new(0);
        for i in 0..n {
            let mut env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
            env.rider = Some(Box::new(KeptRider::new(
                KeptTree::Idempotency,
                &format!("key-{i}"),
                format!("answer {i}\n\u{0}\u{ff}").as_bytes(),
            )));
            let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes();
            let stored = spool.enqueue(ids_gen.next_id(), env, body).await.unwrap();
            // In the tree from the commit round on, and not in the record.
            assert!(stored.rider.is_none());
            assert!(
                kept.get(format!("key-{i}")).is_some(),
                "key-{i} in the round"
            );
        }
    })
}

#[test]
fn a_record_riding_in_a_frame_comes_back_with_its_message_after_a_crash() {
    const N: usize = 25;
    if let Ok(root) = std::env::var("RINGPOST_TEST_CHILD_RIDERS") {
        enqueue_riders_then_abort(Path::new(&root), N);
    }
    let tmp = tempfile::tempdir().unwrap();
    run_crashing_child(
        "a_record_riding_in_a_frame_comes_back_with_its_message_after_a_crash",
        "RINGPOST_TEST_CHILD_RIDERS",
        tmp.path(),
    );
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    assert_eq!(report.messages, N, "{report:?}");
    assert!(report.replayed > 0, "{report:?}");
    let kept = spool.kept(KeptTree::Idempotency);
    for i in 0..N {
        let value = kept.get(format!("key-{i}")).expect("the rider is back");
        assert_eq!(
            value.as_ref(),
            format!("answer {i}\n\u{0}\u{ff}").as_bytes()
        );
    }
    for (id, env) in spool.list() {
        assert!(
            env.rider.is_none(),
            "{id}: the record in sled carries no rider"
        );
    }
    // After a clean start (flushed, watermarks written): still there.
    drop(kept);
    drop(spool);
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let again = spool.recover().unwrap();
    assert_eq!((again.messages, again.replayed), (N, 0));
    assert_eq!(spool.kept(KeptTree::Idempotency).entries().len(), N);
}

/// Equal frames, so that a recycled segment's stale frames start exactly
/// where the new life's frames end.
fn small_body(i: usize) -> Vec<u8> {
    let mut body = format!("Subject: {i:06}\r\n\r\n").into_bytes();
    body.resize(1000, b'y');
    body
}

/// The highest segment number on disk.
fn last_segment(seg_dir: &Path) -> u32 {
    std::fs::read_dir(seg_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The child half of the next test. Fills a segment and starts the next,
/// finishes every message of the full one and flushes, until a finished
/// segment's file is kept as the spare (a zero-filled spare may still be
/// waiting the first times). Then fills on until that file is the active
/// segment, writes one more frame into it, records which messages are
/// live, and dies.
fn recycle_then_abort(root: &Path) -> ! {
    run_then_abort(root, |root| async move {
        let seg_dir = root.join("shard-0/segments");
        let spool = Spool::open(&root, 0, &opts()).unwrap();
        spool.recover().unwrap();
        spool.ready_for_appends().unwrap();
        let mut ids_gen = IdGenerator::new(0);
        let mut live = Vec::new();
        let mut n = 0;
        let mut put = async |live: &mut Vec<MessageId>| {
            let id = ids_gen.next_id();
            let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
            n += 1;
            spool.enqueue(id, env, small_body(n)).await.unwrap();
            live.push(id);
        };
        for _ in 0..5 {
            while spool.segment_count() < 2 {
                put(&mut live).await;
            }
            // Everything but the newest message is done.
            let newest = live.pop().unwrap();
            for id in live.drain(..) {
                let body = spool.get(id).unwrap().body;
                spool.remove(id, &body).await.unwrap();
            }
            live.push(newest);
            spool.flush().await;
            if seg_dir.join("recycled.tmp").exists() {
                break;
            }
        }
        assert!(seg_dir.join("recycled.tmp").exists(), "a file was recycled");
        let recycled_as = last_segment(&seg_dir) + 1;
        while last_segment(&seg_dir) < recycled_as {
            put(&mut live).await;
        }
        put(&mut live).await;
        assert!(!seg_dir.join("recycled.tmp").exists(), "now in use");
        let list: Vec<String> = live.iter().map(|id| id.to_string()).collect();
        std::fs::write(root.join("live"), list.join("\n")).unwrap();
    })
}

#[test]
fn frames_left_in_a_recycled_segment_are_not_replayed_after_a_crash() {
    if let Ok(root) = std::env::var("RINGPOST_TEST_RECYCLE_SPOOL") {
        recycle_then_abort(Path::new(&root));
    }
    let tmp = tempfile::tempdir().unwrap();
    run_crashing_child(
        "frames_left_in_a_recycled_segment_are_not_replayed_after_a_crash",
        "RINGPOST_TEST_RECYCLE_SPOOL",
        tmp.path(),
    );
    let live = live_ids(tmp.path());

    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    let recovered = recovered_ids(&spool);
    // Segment 3 starts with the new frames; right after them lie segment
    // 1's frames of messages long done, intact. They name segment 1, so
    // replay stops there instead of bringing those messages back.
    assert!(
        recovered == live,
        "{} messages recovered, {} were live: {report:?}",
        recovered.len(),
        live.len()
    );
    assert!(report.replayed > 0, "{report:?}");
    for (id, env) in spool.list() {
        let body = spool.read_body_blocking(id, &env).unwrap();
        assert!(body.starts_with(b"Subject: "), "{id}");
    }
}

/// The child half of the compaction crash tests: fills six segments with
/// 1 KB messages, finishes all but every 25th, moves the survivors out of
/// their sparse segments (`Spool::relocate`), and dies. `switched`: after a
/// flush that makes the new records durable (one survivor of the first
/// segment is not moved, so that segment and its stale frames stay);
/// otherwise at once, with the index still pointing at the old frames.
fn compact_then_abort(root: &Path, switched: bool) -> ! {
    run_then_abort(root, move |root| async move {
        let spool = Spool::open(&root, 0, &opts()).unwrap();
        spool.recover().unwrap();
        spool.ready_for_appends().unwrap();
        let mut ids_gen = IdGenerator::new(0);
        let mut all = Vec::new();
        let mut n = 0;
        while spool.segment_count() < 6 {
            let id = ids_gen.next_id();
            let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
            n += 1;
            let stored = spool.enqueue(id, env, small_body(n)).await.unwrap();
            all.push((id, stored));
        }
        let mut survivors = Vec::new();
        for (i, (id, env)) in all.into_iter().enumerate() {
            if i % 25 == 0 {
                survivors.push((id, env));
            } else {
                spool.remove(id, &env.body).await.unwrap();
            }
        }
        // Twice: the removals, then the watermarks, on disk (else a crash
        // brings removed messages back, as duplicates: see queue::commit).
        spool.make_durable().await.unwrap();
        spool.make_durable().await.unwrap();
        let first_segment = survivors[0].1.body.segment;
        let mut moved = 0;
        for (i, (id, env)) in survivors.iter().enumerate() {
            if switched && i == 0 {
                continue; // keeps the first segment, and its stale frames
            }
            if env.body.segment == first_segment || !switched {
                spool.relocate(*id, env).await.unwrap();
                moved += 1;
            }
        }
        assert!(moved > 0);
        if switched {
            spool.make_durable().await.unwrap();
        }
        let list: Vec<String> = survivors.iter().map(|(id, _)| id.to_string()).collect();
        std::fs::write(root.join("live"), list.join("\n")).unwrap();
    })
}

fn compaction_crash(name: &str, var: &str, switched: bool) {
    if let Ok(root) = std::env::var(var) {
        compact_then_abort(Path::new(&root), switched);
    }
    let tmp = tempfile::tempdir().unwrap();
    run_crashing_child(name, var, tmp.path());
    let live = live_ids(tmp.path());
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let report = spool.recover().unwrap();
    let recovered = recovered_ids(&spool);
    assert_eq!(recovered, live, "{report:?}");
    assert_eq!(report.quarantined, 0);
    for (id, env) in spool.list() {
        let body = spool.read_body_blocking(id, &env).unwrap();
        assert!(body.starts_with(b"Subject: "), "{id}");
    }
}

#[test]
fn a_crash_after_compaction_copied_but_before_the_index_switched_loses_nothing() {
    compaction_crash(
        "a_crash_after_compaction_copied_but_before_the_index_switched_loses_nothing",
        "RINGPOST_TEST_COMPACT_COPIED",
        false,
    );
}

#[test]
fn a_crash_after_the_index_switched_but_before_the_old_frames_went_loses_nothing() {
    compaction_crash(
        "a_crash_after_the_index_switched_but_before_the_old_frames_went_loses_nothing",
        "RINGPOST_TEST_COMPACT_SWITCHED",
        true,
    );
}

/// Compaction gives sparse segments back: six segments, 4% of their
/// messages left, all moved: the old segments are unlinked after the
/// flush, and every message reads back.
#[test]
fn compaction_frees_sparse_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (before, after, kept) = glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let (spool, _) = Spool::start(&root, 0, &opts()).unwrap();
            let mut ids_gen = IdGenerator::new(0);
            let mut kept = Vec::new();
            let mut n = 0;
            while spool.segment_count() < 6 {
                let id = ids_gen.next_id();
                let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
                n += 1;
                let stored = spool.enqueue(id, env, small_body(n)).await.unwrap();
                match n % 25 {
                    0 => kept.push((id, stored)),
                    _ => spool.remove(id, &stored.body).await.unwrap(),
                }
            }
            spool.flush().await;
            let before = spool.segment_count();
            for (id, env) in &kept {
                spool.relocate(*id, env).await.unwrap();
            }
            spool.make_durable().await.unwrap();
            spool.make_durable().await.unwrap();
            let readable = spool
                .list()
                .filter(|(id, env)| spool.read_body_blocking(*id, env).is_ok())
                .count();
            (before, spool.segment_count(), (kept.len(), readable))
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(before >= 6, "{before}");
    assert!(after <= 2, "{after} segments left of {before}");
    assert_eq!(kept.0, kept.1, "every kept message reads back");
}

/// The ids the crashing child wrote to `live` before it aborted, sorted.
fn live_ids(dir: &Path) -> Vec<String> {
    let mut live: Vec<String> = std::fs::read_to_string(dir.join("live"))
        .expect("the child got as far as the crash")
        .lines()
        .map(str::to_string)
        .collect();
    live.sort();
    live
}

/// The ids a recovered spool holds, sorted.
fn recovered_ids(spool: &Spool) -> Vec<String> {
    let mut recovered: Vec<String> = spool.list().map(|(id, _)| id.to_string()).collect();
    recovered.sort();
    recovered
}
