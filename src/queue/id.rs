//! Message ids: unique, time-ordered, and naming the shard that owns them.
//!
//! Owns: [`MessageId`] and [`IdGenerator`]. An id is 16 bytes, big-endian so
//! that sled keeps the queue in arrival order:
//!
//! ```text
//!  48 bits  unix time in ms   -- time order
//!  16 bits  shard             -- which shard's spool holds the message
//!  16 bits  boot nonce        -- random per process start: no reuse after a restart
//!  48 bits  per-shard counter -- order within one millisecond
//! ```
//!
//! Printed as 32 lower-case hex digits.
//!
//! Placement: [`MessageId::shard`] is the one place that says which shard
//! owns a message (the one that minted it). After the shard count shrank,
//! a message taken over from a shard that no longer runs lives on the shard
//! that took it, which is what `shard` names for that count; a later change
//! of count can name another, so a lookup by id that misses asks the other
//! shards (`http::admin`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; 16]);

impl MessageId {
    pub fn from_bytes(b: [u8; 16]) -> MessageId {
        MessageId(b)
    }

    pub fn from_slice(b: &[u8]) -> Option<MessageId> {
        Some(MessageId(b.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The shard that minted the id.
    pub fn minted_by(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }

    /// The shard that owns this message among `shards`: the one that
    /// minted it. This is the one place that decides a message's shard.
    pub fn shard(&self, shards: usize) -> usize {
        self.minted_by() as usize % shards.max(1)
    }

    /// Milliseconds since the Unix epoch when the id was minted.
    pub fn unix_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(b)
    }

    pub fn parse(s: &str) -> Option<MessageId> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(MessageId(out))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write of a stack buffer: ids are formatted for every 250
        // reply, Received: header and log line.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.write_str(std::str::from_utf8(&text).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Mints ids for one shard. Lives on that shard's executor (not `Sync`).
#[derive(Debug)]
pub struct IdGenerator {
    shard: u16,
    nonce: u16,
    counter: u64,
}

impl IdGenerator {
    pub fn new(shard: u16) -> IdGenerator {
        IdGenerator {
            shard,
            nonce: rand::random(),
            counter: 0,
        }
    }

    pub fn next_id(&mut self) -> MessageId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.counter = (self.counter + 1) & ((1 << 48) - 1);
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6..8].copy_from_slice(&self.shard.to_be_bytes());
        b[8..10].copy_from_slice(&self.nonce.to_be_bytes());
        b[10..].copy_from_slice(&self.counter.to_be_bytes()[2..]);
        MessageId(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_ordered_and_round_trip() {
        let mut g = IdGenerator::new(3);
        let a = g.next_id();
        let b = g.next_id();
        assert!(b > a);
        assert_eq!(a.minted_by(), 3);
        assert_eq!(MessageId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 32);
        assert!(MessageId::parse("zz").is_none());
        assert!(MessageId::parse(&"g".repeat(32)).is_none());
    }
}
