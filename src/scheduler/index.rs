//! The queued messages by what an operator knows of them: the in-memory
//! index behind `queue find` for mail still in the queue.
//!
//! Owns: [`QueueIndex`], kept by the shard's [`State`](super::state::State)
//! as messages are admitted and removed (at reception, at recovery, when
//! they leave), so that a lookup costs one hash probe however long the
//! queue. The keys are `history::lookup`'s, the same the history's index
//! uses. Each key is kept as a 64-bit hash of itself (made without
//! building the key: `lookup::key_hashes`): a probe yields
//! candidates, which the caller checks against the message's own keys
//! (a collision costs a check, never a wrong answer). Candidates come
//! newest first (ids are time-ordered), so a key that names a million
//! messages (a campaign) answers its first hits without a sort.
//!
//! Must not: do I/O; it is rebuilt from the queue at every start.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use crate::history::lookup::{Lookup, key_hashes};
use crate::queue::{Envelope, MessageId};

/// The ids under one key: most keys (a recipient, a Message-ID) name one
/// message; a sender or a campaign may name a million (ordered, so the
/// newest come first without a sort). The set is boxed: a key of one
/// message, the usual kind, then takes 24 bytes of the table, not 32.
#[allow(clippy::box_collection)] // boxed for the enum's size, as said above
enum Ids {
    One(MessageId),
    Many(Box<BTreeSet<MessageId>>),
}

pub struct QueueIndex {
    /// Random per process: a sender cannot pick addresses that collide.
    seed: u64,
    keys: HashMap<u64, Ids>,
}

impl Default for QueueIndex {
    fn default() -> QueueIndex {
        QueueIndex {
            seed: rand::random(),
            keys: HashMap::new(),
        }
    }
}

impl QueueIndex {
    fn hash(&self, key: &Lookup) -> u64 {
        key.hash(self.seed)
    }

    /// Indexes a message that enters the queue.
    pub fn add(&mut self, id: MessageId, env: &Envelope) {
        for h in key_hashes(self.seed, env) {
            match self.keys.entry(h) {
                Entry::Vacant(v) => {
                    v.insert(Ids::One(id));
                }
                Entry::Occupied(mut o) => match o.get_mut() {
                    Ids::One(other) if *other == id => {}
                    Ids::One(other) => {
                        let set = BTreeSet::from([*other, id]);
                        o.insert(Ids::Many(Box::new(set)));
                    }
                    Ids::Many(set) => {
                        set.insert(id);
                    }
                },
            }
        }
    }

    /// Forgets a message that leaves the queue (`env`: its envelope, whose
    /// keys never change while it is queued).
    pub fn remove(&mut self, id: MessageId, env: &Envelope) {
        for h in key_hashes(self.seed, env) {
            let Entry::Occupied(mut o) = self.keys.entry(h) else {
                continue;
            };
            let empty = match o.get_mut() {
                Ids::One(other) => *other == id,
                Ids::Many(set) => {
                    set.remove(&id);
                    set.is_empty()
                }
            };
            if empty {
                o.remove();
            }
        }
    }

    /// The messages that may have `key`, newest first (check each
    /// against its keys).
    pub fn candidates(&self, key: &Lookup) -> Box<dyn Iterator<Item = MessageId> + '_> {
        match self.keys.get(&self.hash(key)) {
            None => Box::new(std::iter::empty()),
            Some(Ids::One(id)) => Box::new(std::iter::once(*id)),
            Some(Ids::Many(set)) => Box::new(set.iter().rev().copied()),
        }
    }

    /// Keys indexed (distinct hashes).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::IdGenerator;

    #[test]
    fn messages_are_found_while_queued_and_forgotten_when_they_leave() {
        let mut ids = IdGenerator::new(0);
        let mut ix = QueueIndex::default();
        let (a, b) = (ids.next_id(), ids.next_id());
        let mut ea = Envelope::new("app@s.example".into(), vec!["x@Y.org".into()], 1);
        ea.meta = Some(Box::new(serde_json::json!({"campaign": "c1"})));
        let eb = Envelope::new("app@s.example".into(), vec!["z@y.org".into()], 1);
        ix.add(a, &ea);
        ix.add(b, &eb);
        let sender = Lookup::parse("sender", "app@S.EXAMPLE").unwrap();
        let found = |key: &Lookup| ix.candidates(key).collect::<Vec<_>>();
        // Newest first.
        assert_eq!(found(&sender), [b, a]);
        let x = Lookup::parse("rcpt", "x@y.org").unwrap();
        assert_eq!(found(&x), [a]);
        let campaign = Lookup::parse("meta", "campaign=c1").unwrap();
        assert_eq!(found(&campaign), [a]);
        ix.remove(a, &ea);
        assert!(ix.candidates(&x).next().is_none());
        assert_eq!(ix.candidates(&sender).collect::<Vec<_>>(), [b]);
        ix.remove(b, &eb);
        assert!(ix.is_empty());
    }
}
