//! What the scheduler keeps in its shard's spool besides mail, in formats
//! it owns: holds (suspensions) and capped paths' counts.
//!
//! Owns: [`StoredHolds`] (tree `suspensions`: hold key -> until, Unix
//! seconds as u64 big-endian, 0 for a hold without end) and
//! [`StoredPathCounts`] (tree `path_counts`: source "\n" site -> the
//! messages this shard sent on a capped path this hour and day, 4 x u64
//! big-endian; the source is empty for the default address).
//!
//! May call: `queue` (its kept trees). Must not: decide what a hold or a
//! count means (`state`, `gate` do).

use crate::queue::{Kept, KeptTree, Spool, SpoolError};

/// The holds stored (see the module header).
pub struct StoredHolds(Kept);

impl StoredHolds {
    pub fn of(spool: &Spool) -> StoredHolds {
        StoredHolds(spool.kept(KeptTree::Suspensions))
    }

    /// Every hold stored: (key, until in Unix seconds if it expires).
    pub fn all(&self) -> Vec<(String, Option<u64>)> {
        self.0
            .entries()
            .into_iter()
            .filter_map(|(key, v)| {
                let until = u64::from_be_bytes(v.as_ref().try_into().ok()?);
                Some((key, (until > 0).then_some(until)))
            })
            .collect()
    }

    /// Stores a hold (`Some(until)`: when it ends by itself, if ever), or
    /// its end (`None`), durably: returns once sled is flushed.
    pub async fn set(&self, key: &str, held: Option<Option<u64>>) -> Result<(), SpoolError> {
        let value = held.map(|until| until.unwrap_or(0).to_be_bytes());
        self.0
            .put_durably(key, value.as_ref().map(|v| &v[..]))
            .await
    }
}

/// The capped paths' counts stored (see the module header).
pub struct StoredPathCounts(Kept);

impl StoredPathCounts {
    pub fn of(spool: &Spool) -> StoredPathCounts {
        StoredPathCounts(spool.kept(KeptTree::PathCounts))
    }

    /// Every capped path's counts: (source, site, counts).
    pub fn all(&self) -> Vec<(String, String, [u64; 4])> {
        self.0
            .entries()
            .into_iter()
            .filter_map(|(key, v)| {
                let (source, site) = key.split_once('\n')?;
                let mut counts = [0u64; 4];
                for (i, c) in v.chunks_exact(8).enumerate().take(4) {
                    counts[i] = u64::from_be_bytes(c.try_into().ok()?);
                }
                Some((source.to_string(), site.to_string(), counts))
            })
            .collect()
    }

    /// Stores a capped path's counts. Not waited for: durable with the
    /// spool's next flush, so a crash forgets at most the messages of a
    /// flush interval (which may then go over the cap by as many).
    pub fn set(&self, source: &str, site: &str, counts: [u64; 4]) -> Result<(), SpoolError> {
        let value: Vec<u8> = counts.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.0.put(format!("{source}\n{site}"), value)
    }
}
