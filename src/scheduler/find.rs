//! "Where is my message?" on one shard: the messages a key finds, still
//! queued (through the state's in-memory index) or gone (through the
//! shard's history, which `remember` writes).
//!
//! May call: `history` (the records, the lookup keys), `operations` (the
//! queued message's view). Must not: scan the queue or read a body: a
//! lookup costs one probe of each index.

use serde::{Deserialize, Serialize};

use super::Scheduler;
use super::operations::MessageInfo;
use crate::history::{Finished, Lookup};
use crate::queue::MessageId;

/// One message a lookup found: where it is now, or what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundMessage {
    pub id: String,
    /// Unix seconds of acceptance.
    pub created: u64,
    /// Queued: why it waits ("scheduled", "deferred", "suspended", "delivering",
    /// "queued"); "finished" once it left the queue.
    pub state: String,
    /// While it is queued: its envelope and recipients' states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<MessageInfo>,
    /// Once it left: each recipient's outcome and the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
}

impl Scheduler {
    /// The messages of this shard that `key` finds, queued or finished at
    /// or after `since` (Unix seconds), the newest first, at most `limit`.
    pub fn find(&self, key: &Lookup, since: u64, limit: usize) -> Vec<FoundMessage> {
        let mut found: Vec<FoundMessage> = {
            let st = self.state.borrow();
            // Newest first: ids are minted in time order, so the first one
            // minted before `since` ends the walk.
            st.index
                .candidates(key)
                .take_while(|id| id.unix_ms() / 1000 >= since)
                .filter_map(|id| Some((id, st.messages.get(&id)?)))
                .filter(|(_, e)| e.env.created >= since && key.found_in(&e.env))
                .take(limit)
                .map(|(id, e)| {
                    let info = e.info(id, &st);
                    FoundMessage {
                        id: info.id.clone(),
                        created: info.created,
                        state: info.state.clone(),
                        queued: Some(info),
                        finished: None,
                    }
                })
                .collect()
        };
        found.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        found.truncate(limit);
        let room = limit - found.len();
        found.extend(
            self.history
                .find(key, since, room)
                .into_iter()
                .map(|f| FoundMessage {
                    id: f.id.clone(),
                    created: f.created,
                    state: "finished".into(),
                    queued: None,
                    finished: Some(f),
                }),
        );
        found
    }

    /// What the history remembers of message `id`, if it left the queue.
    pub fn finished(&self, id: MessageId) -> Option<Finished> {
        self.history.get(id)
    }
}
