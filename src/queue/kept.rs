//! A named tree of a shard's spool for a user that owns its records'
//! format: what the shard wants to keep across a restart that is not
//! mail (receivers' MTA-STS policies). Bytes in, bytes out, by key.
//!
//! Owns: [`Kept`]. Writes go to sled without waiting for a flush: they
//! become durable with the spool's next flush (within its flush interval),
//! so a crash may lose the last ones; a user keeps here only what it can
//! fetch again.
//!
//! Must not: hold mail, or anything whose loss would lose mail.

/// One tree of the spool (see the module header).
#[derive(Clone)]
pub struct Kept {
    tree: sled::Tree,
}

impl Kept {
    pub(super) fn new(tree: sled::Tree) -> Kept {
        Kept { tree }
    }

    /// The record stored under `key`, if any (and readable).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.tree
            .get(key.as_bytes())
            .ok()
            .flatten()
            .map(|v| v.to_vec())
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), sled::Error> {
        self.tree.insert(key.as_bytes(), value).map(|_| ())
    }

    /// Removes the record under `key`.
    pub fn remove(&self, key: &str) -> Result<(), sled::Error> {
        self.tree.remove(key.as_bytes()).map(|_| ())
    }

    /// Every record, in key order.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.tree
            .iter()
            .flatten()
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, v.to_vec())))
            .collect()
    }
}
