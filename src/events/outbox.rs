//! The event outbox: a shard's events stored in its spool until every
//! webhook has had them.
//!
//! Owns: the format of the spool's kept trees (`queue::KeptTree`)
//! `events` (sequence number, u64 big-endian ->
//! [`StoredEvent`] bytes: kind, time, JSON), `event_cursors` (webhook name
//! -> the last sequence number its receiver took), `events_failed`
//! (webhook name, NUL, sequence number -> the event, for events a
//! receiver refused for good) and `events_replay` (the same keys: failed
//! events the operator asked to send again, which that webhook's sender
//! posts before anything new and removes once taken).
//!
//! Durability: an event is inserted before the change of the message it
//! tells of (the caller writes the event, then updates or removes the
//! envelope), in the same sled database; sled recovers a prefix of its
//! writes, so a change that survives a crash has its event with it.
//! Events are handed to senders only once a flush has made them durable
//! ([`Outbox::durable_through`], advanced by the group commit's flush):
//! an event a receiver saw is never lost to a crash, and a sequence number
//! is never reused for another event that a receiver could take for a
//! repeat. A cursor is stored after the receiver's 2xx and flushed with
//! the next flush, so a crash repeats at most the batches since then.
//!
//! There is one outbox per spool (it numbers the events): the shard's
//! composition opens it once and shares it (`Rc`); the CLI opens it only
//! on a stopped spool.
//!
//! May call: `queue` (its kept trees and flush mark). Must not: format or
//! interpret the JSON; know about HTTP.

use std::cell::Cell;
use std::rc::Rc;

use crate::queue::{Bytes, FlushMark, Kept, KeptTree, Spool, SpoolError};

/// One stored event: its kind (an index into
/// `config::EVENT_KINDS`), its time (Unix milliseconds) and its JSON.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: u8,
    pub at_ms: u64,
    pub json: Bytes,
}

const HEAD: usize = 9;

fn encode(kind: u8, at_ms: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD + json.len());
    v.push(kind);
    v.extend_from_slice(&at_ms.to_be_bytes());
    v.extend_from_slice(json);
    v
}

fn decode(seq: u64, v: Bytes) -> Option<StoredEvent> {
    if v.len() < HEAD {
        return None;
    }
    let at_ms = u64::from_be_bytes(v[1..HEAD].try_into().ok()?);
    Some(StoredEvent {
        seq,
        kind: v[0],
        at_ms,
        json: v.subslice(HEAD, v.len() - HEAD),
    })
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub struct Outbox {
    events: Kept,
    cursors: Kept,
    failed: Kept,
    replay: Kept,
    mark: Rc<FlushMark>,
    /// The next sequence number to give.
    next: Cell<u64>,
    /// The lowest sequence number that may still be stored.
    first: Cell<u64>,
}

impl Outbox {
    /// The outbox of `spool` (once per spool: see the module header).
    pub fn open(spool: &Spool) -> Outbox {
        let events = spool.kept(KeptTree::Events);
        let cursors = spool.kept(KeptTree::EventCursors);
        let (first, last_event) = events.first_and_last_keys();
        // Every event was trimmed: the cursors still say how far numbers
        // went, so none is given twice.
        let last_cursor = cursors
            .entries()
            .iter()
            .filter_map(|(_, v)| seq_of(v))
            .max();
        let next = last_event
            .and_then(|k| seq_of(&k))
            .max(last_cursor)
            .map_or(1, |s| s + 1);
        // Everything stored at start-up was recovered from disk: durable.
        let mark = spool.flush_mark();
        mark.written.set(next - 1);
        mark.durable.set(next - 1);
        Outbox {
            events,
            cursors,
            failed: spool.kept(KeptTree::EventsFailed),
            replay: spool.kept(KeptTree::EventsReplay),
            mark,
            next: Cell::new(next),
            first: Cell::new(first.and_then(|k| seq_of(&k)).unwrap_or(next)),
        }
    }

    /// Stores an event; durable with the next flush (within
    /// `commit::FLUSH_INTERVAL`).
    pub fn append(&self, kind: u8, at_ms: u64, json: &[u8]) -> Result<u64, SpoolError> {
        let seq = self.next.get();
        self.events
            .put(seq.to_be_bytes(), encode(kind, at_ms, json))?;
        self.next.set(seq + 1);
        self.mark.written.set(seq);
        Ok(seq)
    }

    /// The highest sequence number a flush has made durable.
    pub fn durable_through(&self) -> u64 {
        self.mark.durable.get()
    }

    /// The last sequence number given.
    pub fn written_through(&self) -> u64 {
        self.next.get() - 1
    }

    /// Events stored and not yet trimmed.
    pub fn backlog(&self) -> u64 {
        self.next.get() - self.first.get()
    }

    /// Up to `max` durable events after `after`, oldest first.
    pub fn read_after(&self, after: u64, max: usize) -> Vec<StoredEvent> {
        let durable = self.durable_through();
        if after >= durable {
            return Vec::new();
        }
        let from = after.saturating_add(1).max(self.first.get());
        self.events
            .range(&from.to_be_bytes(), &durable.to_be_bytes())
            .take(max)
            .filter_map(|(k, v)| decode(seq_of(&k)?, v))
            .collect()
    }

    /// Where webhook `name` stands: the last sequence number it took.
    /// A new webhook starts at the oldest event stored.
    pub fn cursor(&self, name: &str) -> u64 {
        self.cursors
            .get(name)
            .and_then(|v| seq_of(&v))
            .unwrap_or(0)
            .max(self.first.get().saturating_sub(1))
    }

    /// Webhook `name` has taken everything through `seq`.
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), SpoolError> {
        self.cursors.put(name, seq.to_be_bytes())
    }

    /// Removes the events through `seq` (every webhook has them).
    pub fn trim_through(&self, seq: u64) {
        let mut first = self.first.get();
        if first > seq {
            return;
        }
        let mut keys = Vec::new();
        while first <= seq && first < self.next.get() {
            keys.push(first.to_be_bytes());
            first += 1;
        }
        // One batch: one pass through sled's log for the whole range.
        if self.events.remove_all(keys).is_ok() {
            self.first.set(first);
        }
    }

    /// Drops the `n` oldest events (back-pressure by dropping); returns
    /// how many were dropped.
    pub fn drop_oldest(&self, n: u64) -> u64 {
        let before = self.first.get();
        let through = (before + n).min(self.next.get()).saturating_sub(1);
        self.trim_through(through);
        self.first.get() - before
    }

    /// Keeps events a receiver refused for good, for the operator.
    pub fn keep_failed(&self, name: &str, events: &[StoredEvent]) {
        for e in events {
            let _ = self
                .failed
                .put(named_key(name, e.seq), encode(e.kind, e.at_ms, &e.json));
        }
    }

    /// The kept events of webhook `name` (every webhook's if None) from
    /// `since_ms` (Unix milliseconds, the event's time) on, in order.
    pub fn failed_matching(&self, name: Option<&str>, since_ms: u64) -> Vec<(String, StoredEvent)> {
        let prefix = name.map(|n| named_key(n, 0)[..n.len() + 1].to_vec());
        self.failed
            .with_prefix(&prefix.unwrap_or_default())
            .filter_map(|(k, v)| named_event(&k, v))
            .filter(|(_, e)| e.at_ms >= since_ms)
            .collect()
    }

    /// Moves the kept events [`Outbox::failed_matching`] selects to the
    /// replay tree, where their webhook's sender takes them before
    /// anything new. Returns how many. Durable with the next flush; a
    /// crash between the two trees' writes leaves an event in both (sent
    /// again, and still listed): never in neither.
    pub fn replay_failed(&self, name: Option<&str>, since_ms: u64) -> Result<usize, SpoolError> {
        let chosen = self.failed_matching(name, since_ms);
        for (webhook, e) in &chosen {
            let key = named_key(webhook, e.seq);
            self.replay.put(&key, encode(e.kind, e.at_ms, &e.json))?;
            self.failed.remove(&key)?;
        }
        Ok(chosen.len())
    }

    /// Up to `max` events waiting to be replayed to webhook `name`, oldest
    /// first.
    pub fn replay_batch(&self, name: &str, max: usize) -> Vec<StoredEvent> {
        let prefix = &named_key(name, 0)[..name.len() + 1];
        self.replay
            .with_prefix(prefix)
            .filter_map(|(k, v)| named_event(&k, v))
            .map(|(_, e)| e)
            .take(max)
            .collect()
    }

    /// The receiver took these replayed events (`back_to_failed`: it
    /// refused them again, and they are kept as failed once more).
    pub fn replayed(&self, name: &str, events: &[StoredEvent], back_to_failed: bool) {
        if back_to_failed {
            self.keep_failed(name, events);
        }
        let _ = self
            .replay
            .remove_all(events.iter().map(|e| named_key(name, e.seq)));
    }
}

/// A failed or replayed event's key: webhook name, NUL, sequence number.
fn named_key(name: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn named_event(key: &[u8], v: Bytes) -> Option<(String, StoredEvent)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let name = String::from_utf8(key[..nul].to_vec()).ok()?;
    Some((name, decode(seq_of(&key[nul + 1..])?, v)?))
}
