//! Where a queued message's memory goes (issue 34 point 5): the heap bytes
//! each in-process structure of the scheduler holds per deferred message,
//! counted by a global allocator that tallies what is asked of it.
//!
//! The envelope is the one `benches/queue-at-scale.sh` queues (smtp-source
//! from `sender@example.test` to `rcpt@example.test`, a Message-ID added,
//! tried once and deferred with the sink's 4xx). Each structure is built
//! alone over the same `N` envelopes, then the scheduler's whole state
//! (`State::admit` and `State::defer`, as recovery and reception do).
//! What this does not see: sled's own memory (its page cache, up to
//! `spool.cache_bytes` per shard, and its per-key page table), the
//! allocator's overhead per allocation (counted here as allocations: the
//! bench runs on glibc, 8 bytes and rounding to 16; the ringpost binary on
//! jemalloc, whose size classes round up instead), and the history.
//!
//!     cargo bench --bench queue_memory [-- N]      (default 200000)

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicIsize, Ordering};

use ringpost::queue::{Envelope, IdGenerator, MessageId, RecipientStatus};
use ringpost::scheduler::index::QueueIndex;
use ringpost::scheduler::state::State;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn now() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    )
}

/// A deferred message as queue-at-scale leaves it.
fn envelope(id: MessageId) -> Envelope {
    let mut env = Envelope::new(
        "sender@example.test".into(),
        vec!["rcpt@example.test".into()],
        1_765_000_000,
    );
    env.client = "localhost [127.0.0.1]".into();
    env.message_id = Some(format!("{id}@ringpost.bench.test").into());
    env.attempts = 1;
    env.next_due = 1_765_003_600;
    env.body.segment = 1;
    env.body.len = 2_300;
    let r = &mut env.recipients[0];
    r.status = RecipientStatus::Pending;
    r.attempts = 1;
    r.last_reply = Some("451 4.3.0 Error: queue file write error".into());
    r.site = Some("[127.0.0.1]:2727".into());
    env
}

/// Prints one structure's bytes and allocations per message.
fn report(what: &str, before: (isize, isize), n: usize) {
    let (bytes, allocs) = now();
    println!(
        "{what:<44} {:>7.0} bytes {:>5.1} allocations per message",
        (bytes - before.0) as f64 / n as f64,
        (allocs - before.1) as f64 / n as f64
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let mut ids = IdGenerator::new(0);
    let ids: Vec<MessageId> = (0..n).map(|_| ids.next_id()).collect();
    let envs: Vec<Envelope> = ids.iter().map(|&id| envelope(id)).collect();
    println!(
        "{n} deferred messages; inline sizes: Envelope {} bytes, its Recipient {}, \
         the scheduler's Entry {}",
        std::mem::size_of::<Envelope>(),
        std::mem::size_of::<ringpost::queue::Recipient>(),
        std::mem::size_of::<ringpost::scheduler::state::Entry>()
    );

    let before = now();
    let copies: Vec<Envelope> = envs.clone();
    report("envelopes (inline + heap), in a Vec", before, n);
    drop(copies);

    let before = now();
    let map: HashMap<MessageId, Envelope> = ids.iter().copied().zip(envs.clone()).collect();
    report("  the same in a HashMap by id", before, n);
    drop(map);

    let before = now();
    let due: BTreeSet<(u64, MessageId)> = ids.iter().map(|&id| (1_765_003_600, id)).collect();
    report("due-time index (BTreeSet)", before, n);
    drop(due);

    let before = now();
    let mut index = QueueIndex::default();
    for (id, env) in ids.iter().zip(&envs) {
        index.add(*id, env);
    }
    report("find index (recipient, sender, Message-ID)", before, n);
    drop(index);

    let before = now();
    let mut state = State::default();
    for (id, env) in ids.iter().zip(envs.iter().cloned()) {
        state.admit(*id, env);
        state.defer(*id);
    }
    report("the scheduler's whole state (admit + defer)", before, n);
    drop(state);
}
