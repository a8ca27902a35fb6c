//! Finishing a message's round: the retry decision ([`retry`](super::retry))
//! applied and stored, expiry, the DSNs due (failed, delayed, relayed) and
//! the message's removal once nothing is pending.
//!
//! May call: `queue` (update, remove), `dsn`, `bounce`, `events`, `remember`
//! (the history record of a message that leaves). Must
//! not: start attempts (the workers do).

use std::rc::Rc;

use super::remember::Leaving;
use super::retry::RoundEnd;
use super::state::Failure;
use super::{Scheduler, bounce, queue_gauges, retry};
use crate::dsn::NoticeKind;
use crate::events::{Event, EventKind};
use crate::queue::{Envelope, MessageId, RecipientStatus};

impl Scheduler {
    /// Sends the DSN for the failures recorded so far in a round that is
    /// not over yet (see `record`).
    pub(super) async fn notify_early(self: Rc<Self>, id: MessageId) {
        let taken = self.state.borrow_mut().messages.get_mut(&id).and_then(|e| {
            let failures = e.take_failures();
            (!failures.is_empty()).then(|| (e.env.clone(), failures))
        });
        if let Some((env, failures)) = taken {
            let kind = NoticeKind::Failure { expired: false };
            self.notify_sender(id, &env, &failures, kind).await;
        }
    }

    pub(super) fn spawn_finish(self: &Rc<Self>, id: MessageId) {
        let me = self.clone();
        self.tasks.spawn(async move { me.finish(id).await });
    }

    /// After the last job of a round: bounce, remove, or defer.
    pub(super) async fn finish(self: Rc<Self>, id: MessageId) {
        let now = self.clock.now();
        let Some((mut env, mut failures, relayed)) = self.state.borrow_mut().begin_finish(id)
        else {
            return;
        };
        let end = retry::decide(&env, now, &self.retry);
        if end == RoundEnd::Expired {
            self.expire(id, &mut env, &mut failures);
        }
        if !failures.is_empty() {
            let kind = NoticeKind::Failure {
                expired: end == RoundEnd::Expired,
            };
            self.notify_sender(id, &env, &failures, kind).await;
        }
        if !relayed.is_empty() {
            self.notify_sender(id, &env, &relayed, NoticeKind::Relayed)
                .await;
        }
        if matches!(end, RoundEnd::Retry { .. }) {
            self.notify_delay(id, &mut env, now).await;
        }
        let done = !matches!(end, RoundEnd::Retry { .. });
        let result = match end {
            RoundEnd::Retry { next_due, attempts } => {
                env.attempts = attempts;
                env.next_due = next_due;
                self.spool.update(id, &env).await
            }
            RoundEnd::Done | RoundEnd::Expired => match self.spool.remove(id, &env.body).await {
                // Draining: the removal is on disk before the next flush
                // would have put it there, so a crash repeats only the
                // messages of the flush under way, not 0.4 s of them.
                Ok(()) if self.handing_over() => self.spool.make_durable().await,
                other => other,
            },
        };
        match result {
            Ok(()) if done => self.remember(id, &env, Leaving::Finished(&failures)),
            Ok(()) => {}
            // The old record stays; the message is retried from it.
            Err(e) => {
                self.spool_errors_logged
                    .log(log::Level::Error, || e.to_string());
            }
        }
        if done {
            queue_gauges(&env, -1.0);
        }
        self.state.borrow_mut().end_finish(id, env, done);
        // A bounce rule that came while the round was under way.
        if !done {
            self.caught_by_rule(id);
        }
    }

    /// Fails every pending recipient of an expired message (4.4.7).
    fn expire(&self, id: MessageId, env: &mut Envelope, failures: &mut Vec<Failure>) {
        let (sender, meta) = (env.sender.clone(), env.meta.clone());
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.status != RecipientStatus::Pending {
                continue;
            }
            ::metrics::counter!(crate::metrics::RECIPIENTS_EXPIRED).increment(1);
            r.status = RecipientStatus::Failed;
            let last = r.last_reply.clone().unwrap_or_default();
            failures.push(Failure {
                index: i,
                status: "4.4.7".into(),
                reply: format!("message expired; last error: {last}"),
                remote: None,
            });
            let mut ev = Event::new(EventKind::Expiration, id, &sender, &r.address);
            ev.meta = meta.as_deref();
            ev.reply = r.last_reply.as_deref();
            ev.attempt = Some(r.attempts);
            self.events.write(&ev);
            let failure = failures.last().expect("just pushed");
            self.log_bounce(id, (&sender, meta.as_deref()), r, failure);
        }
    }

    /// The Bounce event of a recipient that failed for good (expiry, or
    /// the administrator's bounce), with the category of its last reply.
    pub(super) fn log_bounce(
        &self,
        id: MessageId,
        (sender, meta): (&str, Option<&serde_json::Value>),
        r: &crate::queue::Recipient,
        failure: &Failure,
    ) {
        let mut ev = Event::new(EventKind::Bounce, id, sender, &r.address);
        ev.meta = meta;
        let category = self.failed(&failure.reply, failure.status.starts_with('4'), true);
        ev.category = Some(category.as_str());
        ev.reply = Some(&failure.reply);
        ev.remote_host = failure.remote.as_deref();
        ev.attempt = Some(r.attempts);
        self.events.write(&ev);
    }

    /// Sends a DSN for the failed recipients to the reception door (none
    /// for a null sender). Their Bounce events were written when they
    /// failed.
    async fn notify_sender(
        &self,
        id: MessageId,
        env: &Envelope,
        failures: &[Failure],
        kind: NoticeKind,
    ) {
        if env.sender.is_empty() {
            log::info!("{id}: not bouncing a message from the null sender");
            return;
        }
        if !failures
            .iter()
            .any(|f| bounce::wants(&env.recipients[f.index], kind))
        {
            return;
        }
        let original = self.spool.read_body(id, env).await.unwrap_or_default();
        let dsn_id = self.spool.new_id();
        let reporting_mta = self.cfg.hostname();
        let notice =
            bounce::notification(reporting_mta, id, env, failures, kind, &original, dsn_id);
        let sent = match (notice, &*self.notifications.borrow()) {
            (Some(n), Some(tx)) => tx.send(n).is_ok(),
            _ => false,
        };
        if !sent {
            log::error!("{id}: cannot queue a bounce: reception is closed");
        }
    }

    /// A delay notice for the recipients of `env` still pending after
    /// `delivery.delay_notice_after_secs` whose sender asked for one
    /// (NOTIFY=DELAY), once each: they are marked in `env`, which the
    /// caller stores.
    async fn notify_delay(&self, id: MessageId, env: &mut Envelope, now: u64) {
        let after = self.cfg.delivery.delay_notice_after_secs;
        if after == 0 || now.saturating_sub(env.created) < after || env.sender.is_empty() {
            return;
        }
        let mut delayed = Vec::new();
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.status != RecipientStatus::Pending
                || r.delay_notified
                || !bounce::wants(r, NoticeKind::Delay)
            {
                continue;
            }
            r.delay_notified = true;
            let reply = r.last_reply.as_deref().unwrap_or_default().to_string();
            let status = match crate::classify::parse_reply(&reply).1 {
                Some(s) => format!("4.{}.{}", s.subject, s.detail),
                None => "4.0.0".to_string(),
            };
            delayed.push(Failure {
                index: i,
                status,
                reply,
                remote: None,
            });
        }
        if !delayed.is_empty() {
            self.notify_sender(id, env, &delayed, NoticeKind::Delay)
                .await;
        }
    }
}
