//! `[history]`: what is remembered of messages after they leave the queue.

use super::Problems;

section! {
    /// What ringpost remembers of a message once it has left the queue
    /// (delivered, bounced, expired or deleted): its envelope, meta and
    /// each recipient's outcome with the last reply, kept in the spool so
    /// that `ringpost queue find` and `queue trace` can say what happened
    /// to it without a delivery log file. Bounded by age and by count,
    /// whichever bites first; the oldest go first.
    HistoryConfig = "history" {
        /// How long a finished message is remembered, in seconds. `0`:
        /// nothing is remembered (no history is written).
        max_age_secs: u64 = 7 * 86_400,
        /// Finished messages remembered at most on this node (each shard
        /// keeps its share).
        max_messages: u64 = 1_000_000,
    }
}

impl HistoryConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.max_age_secs > 0 && self.max_messages == 0 {
            p.at(
                "history.max_messages",
                "must be at least 1 (set history.max_age_secs = 0 to keep no history)",
            );
        }
    }

    /// Whether finished messages are remembered at all.
    pub fn is_on(&self) -> bool {
        self.max_age_secs > 0
    }
}
