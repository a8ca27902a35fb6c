//! Changing the shard count of a spool: more shards just start; fewer take
//! over the spools of the shards that no longer run, durably and without
//! duplicates even when a start is cut off half-way.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{TestServer, list_spool, start_with};

fn queued_ids(ts: &mut TestServer) -> BTreeSet<String> {
    ts.stop();
    list_spool(&ts.spool_dir)
        .iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

fn shard_dirs(spool: &Path) -> Vec<u16> {
    ringpost::queue::existing_shards(spool)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn fewer_shards_take_over_more_shards_just_start() {
    // Mail that stays queued (the next hop is a closed port), spread over
    // three shards by the kernel.
    let mut ts = start_with(3, |c| c.delivery.retry_initial_secs = 3600);
    for i in 0..30 {
        let mut c = ts.client();
        c.begin("a@b.example", &[&format!("r{i}@c.example")]);
        assert_eq!(c.data(b"Subject: x\r\n\r\nx\r\n").code, 250);
    }
    let before = queued_ids(&mut ts);
    assert_eq!(before.len(), 30);
    assert_eq!(shard_dirs(&ts.spool_dir), [0, 1, 2]);
    let spare = tempfile::tempdir().unwrap();
    copy_dir(&ts.spool_dir.join("shard-2"), spare.path());

    // One shard: it takes over shards 1 and 2.
    ts.cfg.server.shards = 1;
    ts.restart();
    assert_eq!(queued_ids(&mut ts), before);
    assert_eq!(shard_dirs(&ts.spool_dir), [0]);

    // A start cut off after copying shard 2's messages but before removing
    // its spool: the next start copies them again, over themselves.
    copy_dir(spare.path(), &ts.spool_dir.join("shard-2"));
    assert_eq!(shard_dirs(&ts.spool_dir), [0, 2]);
    ts.restart();
    assert_eq!(queued_ids(&mut ts), before, "no duplicate, no loss");
    assert_eq!(shard_dirs(&ts.spool_dir), [0]);

    // Four shards: they just start; every message still answers by id.
    ts.cfg.server.shards = 4;
    ts.restart();
    let admin = ts.admin_addr.unwrap();
    for id in &before {
        let (status, body) = common::http(
            admin,
            format!("GET /queue/messages/{id} HTTP/1.1\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 200, "{id}: {body}");
    }
    assert_eq!(queued_ids(&mut ts), before);
}
