//! Bulk actions on one shard: delete, bounce or flush the queued messages
//! a selector matches (`select`), at most a given number per call, with a
//! preview for a dry run. The admin API asks every shard and adds the
//! reports up (`http::actions`); the CLI calls it until nothing matches,
//! showing progress between calls.
//!
//! Durability: a delete is reported only once it is on disk, as a single
//! delete is, but a batch shares one flush ([`DELETE_BATCH`] messages):
//! a crash in the middle leaves each message either queued as it was or
//! gone (sled removes an envelope in one write), and running the same
//! action again finishes the job. A bounce is the single bounce, message
//! by message (each writes its DSN through the door). Each message gets
//! its event (Deletion, or Bounce with the operator's reason).
//!
//! Pacing: the action yields to the shard's other tasks between messages
//! once its time slice is used (`glommio::yield_if_needed`), so SMTP
//! sessions and deliveries on the shard keep their turns, and deletes and
//! bounces keep to the shard's share of `admin.bulk_messages_per_second`
//! ([`Pace`]): unpaced, a delete took most of the CPU for its duration.
//!
//! A message with a delivery attempt under way is skipped and counted
//! (`busy`): the attempt may already have handed it over; a re-run takes
//! it once the attempt is over.
//!
//! May call: `select`, `operations` (the single actions), `queue` (the
//! spool). Must not: hold a `RefCell` borrow across an await.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Scheduler;
use super::operations::{MessageInfo, OperationError};
use super::select::Compiled;
use crate::queue::{MessageId, RecipientStatus};

/// Deletes that share one flush to disk.
pub const DELETE_BATCH: usize = 256;
/// A bulk action's pace on one shard: its share of the node's messages
/// per second (None: no cap).
struct Pace {
    start: Instant,
    per_second: Option<f64>,
}

impl Pace {
    fn new(node_per_second: u64, shards: usize) -> Pace {
        Pace {
            start: Instant::now(),
            per_second: (node_per_second > 0)
                .then(|| node_per_second as f64 / shards.max(1) as f64),
        }
    }

    /// Waits until `done` messages are within the pace.
    async fn keep(&self, done: usize) {
        let Some(rate) = self.per_second else {
            return;
        };
        let due = Duration::from_secs_f64(done as f64 / rate);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            glommio::timer::sleep(wait).await;
        }
    }
}

/// Failures named in a report at most (the rest are counted).
const FAILURES_SHOWN: usize = 20;

/// What a bulk action does to each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// Removed without delivery or notice to the sender (a Deletion event
    /// per pending recipient).
    Delete,
    /// Every pending recipient failed now: a DSN to the sender, a Bounce
    /// event each.
    Bounce,
    /// A deferred message is tried now (unless a suspension holds it).
    Flush,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Delete => "delete",
            BulkAction::Bounce => "bounce",
            BulkAction::Flush => "flush",
        }
    }
}

/// What a selector matches on a shard, for a dry run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    pub messages: usize,
    /// Their pending recipients.
    pub recipients: usize,
    /// The oldest few, as `queue show` has them.
    pub examples: Vec<MessageInfo>,
}

impl Preview {
    /// Adds another shard's preview, keeping the `examples` oldest.
    pub fn merge(&mut self, other: Preview, examples: usize) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.examples.extend(other.examples);
        self.examples
            .sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        self.examples.truncate(examples);
    }
}

/// What a bulk action did on a shard (or, merged, on all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkReport {
    /// Messages matched when the call began.
    pub matched: usize,
    /// Messages deleted, bounced or released.
    pub done: usize,
    /// Skipped: a delivery attempt was under way.
    pub busy: usize,
    /// Flush only: skipped because a suspension still holds them, or they
    /// were not deferred.
    pub held: usize,
    pub not_deferred: usize,
    /// Failed (the change could not be stored; the message stays queued).
    pub failed: usize,
    /// The first failures, `ID: why`.
    pub failures: Vec<String>,
    /// Matched but beyond the call's limit: for the next call.
    pub left: usize,
}

impl BulkReport {
    pub fn merge(&mut self, o: BulkReport) {
        self.matched += o.matched;
        self.done += o.done;
        self.busy += o.busy;
        self.held += o.held;
        self.not_deferred += o.not_deferred;
        self.failed += o.failed;
        self.left += o.left;
        self.failures.extend(o.failures);
        self.failures.truncate(FAILURES_SHOWN);
    }

    fn fail(&mut self, id: MessageId, why: impl std::fmt::Display) {
        self.failed += 1;
        if self.failures.len() < FAILURES_SHOWN {
            self.failures.push(format!("{id}: {why}"));
        }
    }
}

impl Scheduler {
    /// How many messages and pending recipients `sel` matches here, and
    /// the oldest `examples` of them.
    pub fn preview(&self, sel: &Compiled, examples: usize) -> Preview {
        let ids = self.select(sel);
        let st = self.state.borrow();
        let mut p = Preview {
            messages: ids.len(),
            ..Preview::default()
        };
        for id in &ids {
            if let Some(e) = st.messages.get(id) {
                p.recipients += e
                    .env
                    .recipients
                    .iter()
                    .filter(|r| r.status == RecipientStatus::Pending)
                    .count();
                if p.examples.len() < examples {
                    p.examples.push(e.info(*id, &st));
                }
            }
        }
        p
    }

    /// Applies `action` to at most `limit` of the messages `sel` matches
    /// here, oldest first (`reason`: a bounce's, in its DSN and events).
    pub async fn bulk(
        self: &Rc<Self>,
        action: BulkAction,
        sel: &Compiled,
        limit: usize,
        reason: Option<&str>,
    ) -> BulkReport {
        let mut ids = self.select(sel);
        let mut report = BulkReport {
            matched: ids.len(),
            left: ids.len().saturating_sub(limit),
            ..BulkReport::default()
        };
        ids.truncate(limit);
        let pace = Pace::new(self.cfg.admin.bulk_messages_per_second, self.shards);
        match action {
            BulkAction::Delete => {
                for batch in ids.chunks(DELETE_BATCH) {
                    self.delete_batch(batch, &mut report).await;
                    pace.keep(report.done).await;
                }
            }
            BulkAction::Bounce => {
                for &id in &ids {
                    pace.keep(report.done).await;
                    match self.bounce_message(id, reason).await {
                        Ok(()) => report.done += 1,
                        Err(OperationError::Busy(_)) => report.busy += 1,
                        Err(OperationError::NotFound(_)) => {}
                        Err(e) => report.fail(id, e),
                    }
                    glommio::yield_if_needed().await;
                }
            }
            BulkAction::Flush => {
                for &id in &ids {
                    let deferred = self.state.borrow().messages.get(&id).map(|e| e.deferred);
                    match deferred {
                        None => {}
                        Some(false) => report.not_deferred += 1,
                        Some(true) if self.still_held(id).is_some() => report.held += 1,
                        Some(true) => {
                            self.state.borrow_mut().undefer(id);
                            self.dispatch(id);
                            report.done += 1;
                        }
                    }
                }
            }
        }
        report
    }

    /// Deletes `batch` with one flush to disk: each message is taken out
    /// of the schedule and its envelope removed; once the flush is done,
    /// each is forgotten and its events written. If the flush fails, the
    /// messages are put back (queued as before) and reported failed.
    async fn delete_batch(self: &Rc<Self>, batch: &[MessageId], report: &mut BulkReport) {
        let mut removed = Vec::with_capacity(batch.len());
        for &id in batch {
            let env = match self.take_out(id) {
                Ok(env) => env,
                Err(OperationError::Busy(_)) => {
                    report.busy += 1;
                    continue;
                }
                Err(_) => continue,
            };
            match self.spool.remove(id, &env.body).await {
                Ok(()) => removed.push((id, env)),
                Err(e) => {
                    self.put_back(id, &env).await;
                    report.fail(id, e);
                }
            }
            glommio::yield_if_needed().await;
        }
        if removed.is_empty() {
            return;
        }
        if let Err(e) = self.spool.make_durable().await {
            for (id, env) in removed {
                self.put_back(id, &env).await;
                report.fail(id, &e);
            }
            return;
        }
        for (id, env) in removed {
            self.forget_deleted(id, &env);
            report.done += 1;
        }
    }
}
