//! Spool recovery after damage: records without bodies and records that do
//! not decode are quarantined (kept, not dropped); bodies without records are
//! removed. Uses the real spool on a real glommio executor.

use ringpost::queue::{Envelope, IdGenerator, Recipient, RecoveryReport, Spool, SpoolOptions};

fn envelope(size: usize) -> Envelope {
    Envelope {
        sender: "a@b.example".into(),
        recipients: vec![Recipient::pending("c@d.example".into())],
        created: 1,
        attempts: 0,
        next_due: 1,
        size: size as u64,
        smtputf8: false,
        eight_bit: false,
        client: "test [127.0.0.1]".into(),
    }
}

#[test]
fn recovery_quarantines_damage_and_removes_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let opts = SpoolOptions {
        cache_bytes: 8 << 20,
    };
    let ids = glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .spawn({
            let root = root.clone();
            let opts = opts.clone();
            move || async move {
                let spool = Spool::open(&root, 0, &opts).unwrap();
                let mut ids_gen = IdGenerator::new(0);
                let mut ids = Vec::new();
                for i in 0..4 {
                    let id = ids_gen.next_id();
                    let body = format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes();
                    spool
                        .enqueue(id, &envelope(body.len()), body)
                        .await
                        .unwrap();
                    ids.push(id);
                }
                ids
            }
        })
        .unwrap()
        .join()
        .unwrap();

    // Damage: message 1 loses its body, message 2's body is truncated,
    // an orphan body appears (a crash before 250), and a stray file.
    let spool = Spool::open(&root, 0, &opts).unwrap();
    std::fs::remove_file(spool.body_path(ids[1])).unwrap();
    std::fs::write(spool.body_path(ids[2]), b"short").unwrap();
    let orphan = IdGenerator::new(0).next_id();
    std::fs::write(spool.body_path(orphan), b"never acknowledged").unwrap();
    std::fs::write(spool.body_path(ids[0]).with_file_name("junk"), b"?").unwrap();

    let report = spool.recover().unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            messages: 2,
            quarantined: 2,
            orphan_bodies_removed: 2
        }
    );
    let listed: Vec<_> = spool.list().map(|(id, _)| id).collect();
    assert_eq!(listed, [ids[0], ids[3]]);
    let quarantined = spool.quarantined();
    assert_eq!(quarantined.len(), 2);
    assert_eq!(quarantined[0].0, ids[1].as_bytes());
    assert!(
        quarantined[0].1.starts_with("body file:"),
        "{:?}",
        quarantined[0]
    );
    assert!(
        quarantined[1].1.contains("bytes, record says"),
        "{:?}",
        quarantined[1]
    );
    assert!(!spool.body_path(orphan).exists());
    // The damaged body of a quarantined record is kept as evidence.
    assert_eq!(std::fs::read(spool.body_path(ids[2])).unwrap(), b"short");

    // A second recovery finds a clean spool.
    assert_eq!(spool.recover().unwrap().quarantined, 0);
}

#[test]
fn undecodable_record_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        cache_bytes: 8 << 20,
    };
    let id = IdGenerator::new(0).next_id();
    {
        let spool = Spool::open(tmp.path(), 0, &opts).unwrap();
        drop(spool);
        // Write a corrupt record with sled directly, as disk damage would.
        let db = sled::open(tmp.path().join("shard-0/queue")).unwrap();
        db.open_tree("envelopes")
            .unwrap()
            .insert(id.as_bytes(), &b"{garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let spool = Spool::open(tmp.path(), 0, &opts).unwrap();
    std::fs::write(spool.body_path(id), b"x").unwrap();
    let report = spool.recover().unwrap();
    assert_eq!((report.messages, report.quarantined), (0, 1));
    assert!(spool.quarantined()[0].1.starts_with("undecodable record"));
}
