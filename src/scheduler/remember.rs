//! The history record of a message as it leaves the queue (delivered,
//! bounced, expired or deleted), its chunk sealed within a second and at
//! stop, and old records dropped: what `find` answers from once the
//! message is gone.
//!
//! May call: `history` (the store), `classify` (the category of a
//! bounce's reply). Must not: fail the message's removal: a record that
//! cannot be written is logged, and the message still leaves.

use super::Scheduler;
use super::state::Failure;
use crate::history::{Outcome, RecipientRecord, Record};
use crate::queue::{Envelope, MessageId, RecipientStatus};

/// How a message leaves the queue, for its history record.
pub(super) enum Leaving<'a> {
    /// Its last round is over: every recipient delivered or failed for
    /// good (`failures`: those of the last round, with ringpost's own
    /// reason for an expiry or the administrator's bounce).
    Finished(&'a [Failure]),
    /// The administrator deleted it: its pending recipients were not
    /// delivered.
    Deleted,
}

/// The reply of a recipient deleted by the administrator, in its event
/// and its record.
pub(super) const DELETED_REPLY: &str = "deleted by the queue administrator";
/// The reply of a recipient bounced by the administrator (the operator's
/// reason follows, if given).
pub(super) const BOUNCED_REPLY: &str = "returned to sender by the queue administrator";

impl Scheduler {
    /// Seals the history's chunk a second old and drops records past
    /// `[history]`'s age or count: the timer calls it every tick.
    pub(super) fn tick_history(&self) {
        if let Err(e) = self.history.tick(self.clock.now()) {
            self.spool_errors_logged
                .log(log::Level::Error, || format!("history: {e}"));
        }
    }

    /// Writes the history's chunk being filled, when the shard stops.
    pub(super) fn seal_history(&self) {
        if let Err(e) = self.history.seal() {
            log::error!("history: the last records were not kept: {e}");
        }
    }

    /// Writes the history record of message `id`, which leaves the queue.
    pub(super) fn remember(&self, id: MessageId, env: &Envelope, leaving: Leaving<'_>) {
        if !self.history.is_on() {
            return;
        }
        let failures: &[Failure] = match leaving {
            Leaving::Finished(f) => f,
            Leaving::Deleted => &[],
        };
        let rec = Record::of(id, env, self.clock.now(), |i, r| {
            let failure = failures.iter().find(|f| f.index == i);
            let last = r.last_reply.as_deref();
            let (outcome, reply) = match (r.status, failure) {
                (RecipientStatus::Delivered, _) => (Outcome::Delivered, last),
                (RecipientStatus::Pending, _) => (Outcome::Deleted, Some(DELETED_REPLY)),
                (RecipientStatus::Failed, Some(f)) if f.status == "4.4.7" => {
                    (Outcome::Expired, Some(f.reply.as_str()))
                }
                (RecipientStatus::Failed, Some(f)) => (Outcome::Bounced, Some(f.reply.as_str())),
                (RecipientStatus::Failed, None) => (Outcome::Bounced, last),
            };
            // An expiry's category is its last remote reply's.
            let category = match outcome {
                Outcome::Expired => last.map(|l| (l, true)),
                Outcome::Bounced => reply.map(|l| (l, false)),
                _ => None,
            }
            .map(|(line, temporary)| self.classifier.classify(line, temporary).as_str());
            RecipientRecord {
                address: &r.address,
                outcome,
                attempts: r.attempts,
                reply,
                category,
            }
        });
        if let Err(e) = self.history.record(id, &rec) {
            self.spool_errors_logged
                .log(log::Level::Error, || format!("history: {e}"));
        }
    }
}
