//! The frame: one message as the journal holds it (its queue record and
//! its body), and where a body lives ([`BodyRef`]).
//!
//! Owns: [`Frame`] (built, sealed for a segment), [`frame_lengths`] and
//! `frame_is_current` (pure checks of frames read back), [`ReplayedFrame`].
//!
//! A segment is also the spool's journal: a sequence of frames, each
//!
//! ```text
//!  magic u32 | record_len u32 | body_len u64 | crc32 u32 | segment u32 | id [16] | record | body
//! ```
//!
//! (little-endian; the CRC covers everything but itself; the record is the
//! envelope as first queued, without its body reference). `segment` is the
//! number of the segment the frame was written to: segment files are
//! recycled (see `segment`), so past the last frame of its current life a file
//! still holds intact frames of an earlier one, and replay stops at the
//! first frame that names another segment. (Frames written before this
//! field existed have 0 there and a CRC without it; they are still read.)
//!
//! Must not: do I/O (`segment` writes and reads frames).

use serde::{Deserialize, Serialize};

/// "RPJ1": the first bytes of every frame.
const FRAME_MAGIC: u32 = 0x314A_5052;
/// Header bytes before the record.
pub const FRAME_HEADER: u64 = 40;

/// A frame ready to be written: header and record in one buffer, the body
/// as the session stored it (written together with one pwritev, so the body
/// is never copied), and the body's own CRC for its [`BodyRef`].
pub struct Frame {
    pub(super) head: Vec<u8>,
    pub(super) body: Vec<u8>,
    record_len: u64,
    /// The body's CRC state: its value is the body's own CRC, and it is
    /// the tail of the frame's, finished once the segment is known.
    body_hash: crc32fast::Hasher,
}

impl Frame {
    pub fn new(id: &[u8; 16], record: &[u8], body: Vec<u8>) -> Frame {
        let mut head = Vec::with_capacity(FRAME_HEADER as usize + record.len());
        head.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
        head.extend_from_slice(&(record.len() as u32).to_le_bytes());
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());
        head.extend_from_slice(&[0; 8]);
        head.extend_from_slice(id);
        head.extend_from_slice(record);
        // The body is hashed once: its CRC is also the tail of the frame's.
        let mut body_hash = crc32fast::Hasher::new();
        body_hash.update(&body);
        Frame {
            record_len: record.len() as u64,
            head,
            body,
            body_hash,
        }
    }

    /// Stamps the segment the frame goes to and finishes its CRC.
    pub(super) fn seal(&mut self, segment: u32) {
        self.head[20..24].copy_from_slice(&segment.to_le_bytes());
        let mut frame_hash = crc32fast::Hasher::new();
        frame_hash.update(&self.head[..16]);
        frame_hash.update(&self.head[20..]);
        frame_hash.combine(&self.body_hash);
        let crc = frame_hash.finalize();
        self.head[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn len(&self) -> u64 {
        (self.head.len() + self.body.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the body will be once the frame is at `offset` of `segment`.
    pub(super) fn body_ref(&self, segment: u32, offset: u64) -> BodyRef {
        BodyRef {
            segment,
            offset: offset + FRAME_HEADER + self.record_len,
            len: self.body.len() as u64,
            crc32: self.body_hash.clone().finalize(),
        }
    }
}

/// Pure: whether a whole frame read from segment `segment` is intact and
/// was written to that segment (not to an earlier life of its file).
pub(super) fn frame_is_current(frame: &[u8], segment: u32) -> bool {
    let word = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
    let skip = match word(20) {
        s if s == segment => 16..20,
        // Written before frames named their segment; such files are never
        // recycled, so these cannot be stale.
        0 => 16..24,
        _ => return false,
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..skip.start]);
    h.update(&frame[skip.end..]);
    h.finalize() == word(16)
}

/// Pure: the frame at the start of `buf` (which holds at least its header):
/// Ok(Some((record_len, body_len))) if the header is sane for a frame that
/// ends within `room` bytes, Ok(None) if it is not a frame.
pub fn frame_lengths(header: &[u8], room: u64) -> Option<(u64, u64)> {
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if header.len() < FRAME_HEADER as usize || word(0) != FRAME_MAGIC {
        return None;
    }
    let record_len = word(4) as u64;
    let body_len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let total = FRAME_HEADER
        .checked_add(record_len)?
        .checked_add(body_len)?;
    (total <= room).then_some((record_len, body_len))
}

/// A frame read back at recovery: the record as written, and its body's place.
pub struct ReplayedFrame {
    pub id: [u8; 16],
    pub record: Vec<u8>,
    pub body: BodyRef,
    /// Offset just past the frame: where the next one starts.
    pub end: u64,
}

/// Where a body lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BodyRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}
