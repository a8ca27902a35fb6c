//! Spool recovery after damage: records whose body segment is missing or too
//! short, and records that do not decode, are quarantined (kept, not
//! dropped); segments no record refers to are removed; a body whose bytes
//! were damaged fails its CRC when read. Uses the real spool on a real
//! glommio executor and damages real files.

use std::path::{Path, PathBuf};

use ringpost::queue::{Envelope, IdGenerator, MessageId, RecoveryReport, Spool, SpoolOptions};

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
                spool.remove(*id).await.unwrap();
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

/// The child half of the next test: enqueue messages, then die at once,
/// before any sled flush (abort skips every destructor).
fn enqueue_then_abort(root: &Path, n: usize) -> ! {
    let root = root.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn(move || async move {
            let spool = Spool::open(&root, 0, &opts()).unwrap();
            let mut ids_gen = IdGenerator::new(0);
            for i in 0..n {
                let env = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
                let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes();
                spool.enqueue(ids_gen.next_id(), env, body).await.unwrap();
            }
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
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_messages_are_replayed_from_the_journal_after_a_crash",
            "--nocapture",
        ])
        .env("RINGPOST_TEST_CHILD_SPOOL", tmp.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die mid-way");

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
        assert_eq!(env.recipients[0].address, "c@d.example");
    }
    // Replayed records are in sled now: a second recovery replays nothing.
    drop(spool);
    let spool = Spool::open(tmp.path(), 0, &opts()).unwrap();
    let again = spool.recover().unwrap();
    assert_eq!((again.messages, again.replayed), (N, 0));
}
