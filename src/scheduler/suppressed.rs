//! Recipients put on the suppression list after their message was
//! queued (a complaint, an unsubscribe, a hard bounce of an earlier
//! message, an operator's `suppression add`): reception checked them
//! when the message came in; this checks them again before each attempt,
//! so that an acknowledged suppression holds for mail already queued.
//!
//! Such a recipient fails for good without an attempt
//! (`550 5.7.1 Recipient suppressed ...`): a Bounce event, and a DSN as
//! for any accepted message that cannot be delivered (RFC 5321 §6.1).
//! Its failure triggers no `[backoff]` rule and suppresses nothing anew
//! ([`Attempt::suppressed`]). A drain hands everything to its peer,
//! which checks for itself.
//!
//! May call: `suppression` (the list, read only), the scheduler's own
//! `attempt` for the recipients left. Must not: change the list or the
//! schedule's state (`record` applies the outcomes).

use std::rc::Rc;

use super::Scheduler;
use super::state::Job;
use crate::outbound::{Attempt, DeliveryOutcome};
use crate::queue::{Envelope, domain_of};
use crate::suppression::Suppression;

impl Scheduler {
    /// The attempt of `job`'s recipients that are not suppressed, with
    /// those that are failed in their places.
    pub(super) async fn attempt_unsuppressed(
        self: &Rc<Self>,
        domain: &str,
        job: &Job,
        env: &Envelope,
    ) -> Attempt {
        let suppressed = self.suppressed_of(job, env);
        if suppressed.is_empty() {
            return self.attempt(domain, job, env).await;
        }
        let rest = Job {
            id: job.id,
            rcpts: (0..job.rcpts.len())
                .filter(|k| !suppressed.iter().any(|(s, _)| s == k))
                .map(|k| job.rcpts[k])
                .collect(),
        };
        let mut attempt = match rest.rcpts.is_empty() {
            true => Attempt::all(not_attempted(&suppressed[0].1), 0),
            false => self.attempt(domain, &rest, env).await,
        };
        ::metrics::counter!(crate::metrics::DELIVERY_SUPPRESSED).increment(suppressed.len() as u64);
        let mut tried = std::mem::take(&mut attempt.outcomes).into_iter();
        let mut failed = suppressed.into_iter().peekable();
        for k in 0..job.rcpts.len() {
            let outcome = match failed.next_if(|(s, _)| *s == k) {
                Some((_, entry)) => {
                    attempt.suppressed.push(k);
                    not_attempted(&entry)
                }
                // One outcome per recipient tried; should one be missing,
                // the recipient waits for the next round (no panic here).
                None => tried.next().unwrap_or_else(|| DeliveryOutcome::Temporary {
                    reply: "451 4.3.0 no outcome for this recipient: tried again later".into(),
                }),
            };
            attempt.outcomes.push(outcome);
        }
        attempt
    }

    /// The positions in `job` of recipients on the list, with their
    /// entries (none when the list is off or a drain is under way).
    fn suppressed_of(&self, job: &Job, env: &Envelope) -> Vec<(usize, Suppression)> {
        let list = match &self.suppressions {
            Some(list) if self.cfg.suppression.enabled && !self.handing_over() => list,
            _ => return Vec::new(),
        };
        let now = self.clock.now();
        let sender_domain = domain_of(&env.sender);
        job.rcpts
            .iter()
            .enumerate()
            .filter_map(|(k, &i)| {
                list.check_domain(&sender_domain, &env.recipients[i].address, now)
                    .map(|entry| (k, entry))
            })
            .collect()
    }
}

/// The failure of a recipient suppressed while its message was queued.
fn not_attempted(entry: &Suppression) -> DeliveryOutcome {
    DeliveryOutcome::Permanent {
        reply: format!(
            "550 5.7.1 Recipient suppressed ({}, by {}) after the message was queued: not attempted",
            entry.reason, entry.source
        ),
        status: "5.7.1".to_string(),
    }
}
