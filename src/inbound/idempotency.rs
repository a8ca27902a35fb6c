//! `Idempotency-Key` on the injection API: a request repeated with the
//! same key (a client retrying after a timeout or a reset connection)
//! gets the first answer, and nothing is queued twice.
//!
//! Owns: [`KeyIndex`], one per shard, for the keys it owns
//! (`hash(key) % shards`, [`owner_of`]). A request with a key is served
//! whole by the shard that owns it (the injection front end hands it
//! over), so two requests with the same key meet on one shard whichever
//! shards took them, and the message it queues is in that shard's spool.
//! The owner keeps the requests under way in memory (a second one waits
//! for the first's answer) and the answers in its spool's kept tree
//! `idempotency` (key -> expiry, Unix seconds as u64 big-endian; the
//! request's SHA-256, 32 bytes; the answer: a format this module owns),
//! for `inject.idempotency_window_secs`.
//! A request whose key is known with a different body is refused (422).
//!
//! Durability: a request that queues one message carries its answer in
//! that message's journal frame ([`KeyIndex::rider`], `queue::KeptRider`):
//! the commit round that makes the message durable stores the answer, and
//! recovery puts it back from the frame, so the answer is durable exactly
//! when the message is, at no cost of its own. Any other answer (several
//! messages, or none) is stored after its messages are queued, with a
//! flush of its own ([`KeyIndex::finish`]); a crash between the two (a
//! few ms) forgets the key, and a retry then queues the messages again (a
//! duplicate, never a loss). An answer is never durable before its
//! messages are: a replay never names a message that is not on disk.
//!
//! Must not: hold a `RefCell` borrow across an await.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use futures::channel::oneshot;

use crate::queue::{Kept, KeptRider, KeptTree, Spool, SpoolError};

/// Expired answers are swept at most this often (on a request).
const SWEEP_EVERY_SECS: u64 = 600;

/// Longest a repeated request waits for the first one's answer.
pub const WAIT_FOR_FIRST: Duration = Duration::from_secs(30);

/// What the owner says to a request with a key.
#[derive(Debug)]
pub enum Begin {
    /// The key is new: go on, then [`KeyIndex::finish`].
    New,
    /// Answered before: this is the answer.
    Replay(String),
    /// The key was used for a different request.
    Mismatch,
    /// The first request with the key is under way: its answer comes
    /// here (None: it queued nothing; ask again). The asker waits on its
    /// own shard: the owner serves one request at a time.
    Wait(oneshot::Receiver<Option<String>>),
    /// The first request with the key is still under way after
    /// [`WAIT_FOR_FIRST`].
    Busy,
}

/// The shard that owns `key`.
pub fn owner_of(key: &str, shards: usize) -> usize {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let n = u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"));
    (n % shards.max(1) as u64) as usize
}

/// The SHA-256 of a request body: the same key must come with the same
/// request.
pub fn digest_of(body: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    d.as_ref().try_into().expect("32 bytes")
}

/// Whether `key` may be used: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

struct UnderWay {
    digest: [u8; 32],
    waiters: Vec<oneshot::Sender<Option<String>>>,
}

/// An answer as stored: expiry, the request's digest, the answer.
fn encode_answer(expires: u64, digest: [u8; 32], answer: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(40 + answer.len());
    value.extend_from_slice(&expires.to_be_bytes());
    value.extend_from_slice(&digest);
    value.extend_from_slice(answer.as_bytes());
    value
}

fn expiry_of(stored: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(stored.get(..8)?.try_into().ok()?))
}

/// A stored answer's digest and answer, if it has not expired by `now`.
fn decode_answer(stored: &[u8], now: u64) -> Option<([u8; 32], String)> {
    let digest: [u8; 32] = stored.get(8..40)?.try_into().ok()?;
    let answer = String::from_utf8(stored.get(40..)?.to_vec()).ok()?;
    (expiry_of(stored)? > now).then_some((digest, answer))
}

/// One shard's keys.
pub struct KeyIndex {
    answers: Kept,
    under_way: RefCell<HashMap<String, UnderWay>>,
    swept: Cell<u64>,
}

impl KeyIndex {
    pub fn new(spool: &Spool) -> KeyIndex {
        KeyIndex {
            answers: spool.kept(KeptTree::Idempotency),
            under_way: RefCell::default(),
            swept: Cell::new(0),
        }
    }

    /// A request with `key` and body `digest` at `now` (unix seconds).
    pub fn begin(&self, key: &str, digest: [u8; 32], now: u64) -> Begin {
        if now.saturating_sub(self.swept.get()) >= SWEEP_EVERY_SECS {
            self.swept.set(now);
            self.sweep(now);
        }
        let known = self.answers.get(key).and_then(|v| decode_answer(&v, now));
        if let Some((stored, answer)) = known {
            return match stored == digest {
                true => Begin::Replay(answer),
                false => Begin::Mismatch,
            };
        }
        let mut under_way = self.under_way.borrow_mut();
        match under_way.get_mut(key) {
            None => {
                let waiters = Vec::new();
                under_way.insert(key.to_string(), UnderWay { digest, waiters });
                Begin::New
            }
            Some(u) if u.digest != digest => Begin::Mismatch,
            Some(u) => {
                let (tx, rx) = oneshot::channel();
                u.waiters.push(tx);
                Begin::Wait(rx)
            }
        }
    }

    /// [`KeyIndex::begin`], waiting for a first request under way (up to
    /// [`WAIT_FOR_FIRST`]): never [`Begin::Wait`].
    pub async fn begin_waiting(&self, key: &str, digest: [u8; 32], now: u64) -> Begin {
        let started = std::time::Instant::now();
        loop {
            let first = match self.begin(key, digest, now) {
                Begin::Wait(first) => first,
                other => return other,
            };
            let left = WAIT_FOR_FIRST.saturating_sub(started.elapsed());
            let late = async move {
                glommio::timer::sleep(left).await;
                None
            };
            match futures_lite::future::or(async { Some(first.await) }, late).await {
                Some(Ok(Some(answer))) => return Begin::Replay(answer),
                // The first one queued nothing: ask again.
                Some(_) => continue,
                None => return Begin::Busy,
            }
        }
    }

    /// The record that stores `answer` to the request under way with
    /// `key` until `expires`, to ride in its message's journal frame
    /// (see the module header); None if no request with `key` is under
    /// way here.
    pub fn rider(&self, key: &str, answer: &str, expires: u64) -> Option<KeptRider> {
        let digest = self.under_way.borrow().get(key).map(|u| u.digest)?;
        let value = encode_answer(expires, digest, answer);
        Some(KeptRider::new(KeptTree::Idempotency, key, &value))
    }

    /// The request with `key` is done: its answer, or None when it queued
    /// nothing (a retry may then try again). `stored`: the answer rode in
    /// its message's frame ([`KeyIndex::rider`]) and is durable already;
    /// otherwise it is stored here until `expires`, durably, before this
    /// returns. Requests waiting for it get the same.
    pub async fn finish(
        &self,
        key: &str,
        answer: Option<String>,
        expires: u64,
        stored: bool,
    ) -> Result<(), SpoolError> {
        let digest = self.under_way.borrow().get(key).map(|u| u.digest);
        let result = match (&answer, digest) {
            (Some(_), _) if stored => Ok(()),
            // A durable write of its own: what a key costs when it could
            // not ride with its message.
            (Some(a), Some(d)) => {
                let value = encode_answer(expires, d, a);
                self.answers.put_durably(key, Some(&value)).await
            }
            _ => Ok(()),
        };
        let answer = answer.filter(|_| result.is_ok());
        if let Some(u) = self.under_way.borrow_mut().remove(key) {
            for w in u.waiters {
                let _ = w.send(answer.clone());
            }
        }
        result
    }

    /// Forgets answers past their window (the door's timer calls it).
    pub fn sweep(&self, now: u64) -> usize {
        let expired: Vec<String> = self
            .answers
            .entries()
            .into_iter()
            .filter(|(_, v)| expiry_of(v).is_none_or(|e| e <= now))
            .map(|(k, _)| k)
            .collect();
        match self.answers.remove_all(&expired) {
            Ok(()) => expired.len(),
            Err(_) => 0,
        }
    }
}
