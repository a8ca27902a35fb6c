//! One copy of the strings queued messages repeat: the reply a site gave
//! every recipient it deferred, the site and source they went to, the
//! client that sent them, what DKIM signing did. A million messages deferred with the same 4xx
//! hold one copy of it, not a million.
//!
//! Owns: [`Interned`], a set of shared strings kept by the shard's
//! [`State`](super::state::State), which hands out the set's copy of a
//! string as messages are admitted and their attempts recorded. A string
//! no message holds any more is dropped at the next sweep, which comes
//! when the set has doubled since the last one: it holds at most about
//! twice the strings the queue held then. A string no two messages share
//! (a reply with a receiver's own id in it) costs its slot in the set.
//!
//! Must not: do I/O; share across shards (each shard has its own set, the
//! strings are `Arc` only because envelopes travel between shards).

use std::collections::HashSet;
use std::sync::Arc;

/// Sweeps are due when the set has grown by this many strings at least
/// (and by as many as it kept at the last sweep): their cost is spread
/// over the strings added since.
const SWEEP_MIN: usize = 1024;

#[derive(Default)]
pub struct Interned {
    set: HashSet<Arc<str>>,
    /// The set's size after the last sweep.
    kept: usize,
}

impl Interned {
    /// The shared copy of `s`, made if there is none.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.set.get(s) {
            return shared.clone();
        }
        self.sweep_if_due();
        let shared: Arc<str> = Arc::from(s);
        self.set.insert(shared.clone());
        shared
    }

    /// Replaces `s` by the shared copy of its text (made from `s` itself
    /// when there is none: no copy of the bytes).
    pub fn adopt(&mut self, s: &mut Arc<str>) {
        if let Some(shared) = self.set.get(&**s) {
            if !Arc::ptr_eq(shared, s) {
                *s = shared.clone();
            }
            return;
        }
        self.sweep_if_due();
        self.set.insert(s.clone());
    }

    /// [`Interned::adopt`] for an optional string.
    pub fn adopt_opt(&mut self, s: &mut Option<Arc<str>>) {
        if let Some(s) = s {
            self.adopt(s);
        }
    }

    /// Drops the strings only the set holds, once it has doubled since
    /// the last sweep (amortised: a sweep visits at most twice the strings
    /// added since the one before).
    fn sweep_if_due(&mut self) {
        if self.set.len() < (self.kept * 2).max(SWEEP_MIN) {
            return;
        }
        self.set.retain(|s| Arc::strong_count(s) > 1);
        self.kept = self.set.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Interned {
        fn len(&self) -> usize {
            self.set.len()
        }
    }

    #[test]
    fn equal_strings_share_one_copy() {
        let mut set = Interned::default();
        let a = set.get("451 4.3.0 try later");
        let mut b: Arc<str> = Arc::from("451 4.3.0 try later");
        set.adopt(&mut b);
        assert!(Arc::ptr_eq(&a, &b));
        let mut c: Option<Arc<str>> = Some(Arc::from("451 4.3.0 try later"));
        set.adopt_opt(&mut c);
        assert!(Arc::ptr_eq(&a, c.as_ref().unwrap()));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn strings_no_one_holds_are_dropped_as_the_set_grows() {
        let mut set = Interned::default();
        let held: Vec<Arc<str>> = (0..10).map(|i| set.get(&format!("held {i}"))).collect();
        for i in 0..10 * SWEEP_MIN {
            drop(set.get(&format!("gone {i}")));
            assert!(set.len() <= 2 * SWEEP_MIN + 10, "{} kept", set.len());
        }
        // What is still held is still shared.
        for (i, h) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(h, &set.get(&format!("held {i}"))));
        }
    }
}
