//! What an attempt's outcomes change: the schedule's state (through
//! [`State::record`](super::state::State::record)), the metrics and the
//! failure categories, the suppression of hard bounces, the delivery log,
//! and the `[backoff]` rules a receiver's reply triggers (suspend,
//! throttle, bounce), told to the other shards over the mesh.
//!
//! May call: `classify`, `events`, `suppression`, `backoff`,
//! `gate`. Must not: hold the state's borrow across any of those calls
//! (the borrow covers only `State::record`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::attempt::path_labels;
use super::state::{self, Hold};
use super::{Scheduler, backoff, gate};
use crate::events::{Event, EventKind};
use crate::outbound::{Attempt, DeliveryOutcome};
use crate::queue::MessageId;

impl Scheduler {
    /// Applies one job's outcomes to the message; finishes it when its last
    /// job is done.
    /// What follows from each recipient's outcome: metrics, the failure's
    /// category, the suppression of a hard bounce, the delivery log; and
    /// the `[backoff]` rule the first failure fits, if any.
    fn tell(
        &self,
        id: MessageId,
        attempt: &Attempt,
        (sender, meta): &(String, Option<Box<serde_json::Value>>),
        told: &[(String, u32, &DeliveryOutcome)],
    ) -> Option<(
        backoff::BackoffAction,
        crate::classify::BounceCategory,
        String,
    )> {
        let mut backoff = None;
        let now = self.clock.now();
        // The path the attempt went over (once per attempt, not per
        // recipient), for its row on the status page.
        let path = attempt.site.as_ref().map(|site| gate::PathKey {
            source: attempt.source.clone(),
            site: site.clone(),
        });
        let mut flows = [0u64; 4];
        let mut last_failure = None;
        for (address, attempts, outcome) in told {
            // Failed without an attempt as suppressed: no rule, no entry.
            let tried = attempt.tried(outcome);
            flows[super::overview::Flow::of(outcome) as usize] += 1;
            if !matches!(outcome, DeliveryOutcome::Delivered { .. }) {
                last_failure = Some(outcome.reply());
            }
            let (kind, category) = match outcome {
                DeliveryOutcome::Delivered { .. } => {
                    ::metrics::counter!(crate::metrics::RECIPIENTS_DELIVERED).increment(1);
                    (EventKind::Delivery, None)
                }
                DeliveryOutcome::Temporary { reply } => {
                    ::metrics::counter!(crate::metrics::RECIPIENTS_DEFERRED).increment(1);
                    (
                        EventKind::TransientFailure,
                        Some(self.failed(reply, true, false)),
                    )
                }
                DeliveryOutcome::Permanent { reply, .. } => {
                    ::metrics::counter!(crate::metrics::RECIPIENTS_BOUNCED).increment(1);
                    let category = self.failed(reply, false, true);
                    if tried {
                        self.suppress(sender, address, category);
                    }
                    (EventKind::Bounce, Some(category))
                }
            };
            // The first failure a `[backoff]` rule fits decides.
            if let (Some(category), None, true) = (category, &backoff, tried) {
                let reply = outcome.reply();
                backoff = self
                    .backoff
                    .action_for(reply, category)
                    .map(|a| (a, category, reply.to_string()));
            }
            let remote = attempt.remote.as_ref();
            let mut ev = Event::new(kind, id, sender, address);
            ev.meta = meta.as_deref();
            ev.remote_host = remote.map(|t| t.host.as_str());
            ev.remote_ip = remote.map(|t| t.addr.ip().to_string());
            ev.reply = Some(outcome.reply());
            ev.attempt = Some(*attempts);
            ev.tls = attempt.tls.as_deref();
            ev.tls_policy = attempt.tls_policy;
            ev.tls_failure = attempt.tls_failure;
            ev.source = attempt.source.as_deref();
            ev.site = attempt.site.as_deref();
            ev.category = category.map(crate::classify::BounceCategory::as_str);
            self.events.write(&ev);
        }
        self.traffic.count_all(now, flows);
        if let Some(path) = &path {
            self.count_on_path(path, flows, last_failure);
        }
        backoff
    }

    pub(super) fn record(self: &Rc<Self>, id: MessageId, rcpts: &[usize], attempt: &Attempt) {
        let now = self.clock.now();
        // The state's borrow covers only the change to the state; what
        // follows from it (classifying, suppressing, the delivery log) is
        // done after, on owned copies, so none of it can ever reach the
        // state while it is borrowed.
        let mut told: Vec<(String, u32, &DeliveryOutcome)> = Vec::with_capacity(rcpts.len());
        let mut sender = None;
        let recorded = self
            .state
            .borrow_mut()
            .record(id, rcpts, attempt, |env, i, outcome| {
                let r = &env.recipients[i];
                told.push((r.address.to_string(), r.attempts, outcome));
                sender.get_or_insert_with(|| (env.sender.clone(), env.meta.clone()));
            });
        let Some(recorded) = recorded else {
            return;
        };
        let sender = sender.unwrap_or_default();
        let backoff = self.tell(id, attempt, &sender, &told);
        let mut back_off = None;
        if let Some((domain, reply)) = recorded.failed {
            if let Some((action, category, rule_reply)) = backoff {
                back_off = Some((domain.clone(), action, category, rule_reply));
            }
            self.state
                .borrow_mut()
                .domains
                .entry(domain)
                .or_default()
                .last_error = Some((now, reply));
        }
        if let Some((domain, action, category, reply)) = back_off.filter(|_| !self.handing_over()) {
            let path = attempt.site.as_ref().map(|site| gate::PathKey {
                source: attempt.source.clone(),
                site: site.clone(),
            });
            self.back_off(&domain, path, action, category, reply);
        }
        if recorded.round_done {
            self.spawn_finish(id);
        } else if recorded.bounced {
            // The sender hears of recipients that failed for good now, not
            // when the message's other domains are done (which a suspended
            // or slow domain can put off for days).
            let me = self.clone();
            self.tasks.spawn(async move { me.notify_early(id).await });
        }
    }

    /// The category of a failure, counted: `temporary` says how the
    /// attempt ended (a 4xx, or no reply), `bounced` whether the recipient
    /// failed for good (a 5xx, expiry, the administrator's bounce) or will
    /// be retried.
    pub(super) fn failed(
        &self,
        reply: &str,
        temporary: bool,
        bounced: bool,
    ) -> crate::classify::BounceCategory {
        let category = self.classifier.classify(reply, temporary);
        let result = if bounced { "bounced" } else { "deferred" };
        ::metrics::counter!(
            crate::metrics::DELIVERY_FAILURES,
            "category" => category.as_str(),
            "result" => result,
        )
        .increment(1);
        category
    }

    /// Takes the action a `[backoff]` rule asked for on `domain` (a
    /// throttle: on the `path` the reply came over), after a reply in
    /// `category`, here and on every other shard: the receiver meant this
    /// node, not the shard that happened to hear it.
    fn back_off(
        self: &Rc<Self>,
        domain: &str,
        path: Option<gate::PathKey>,
        action: backoff::BackoffAction,
        category: crate::classify::BounceCategory,
        reply: String,
    ) {
        let Some(acted) = self.apply_backoff(domain, path.as_ref(), action, reply.clone()) else {
            return;
        };
        ::metrics::counter!(
            crate::metrics::BACKOFF_ACTIONS,
            "action" => action.name(),
            "category" => category.as_str(),
        )
        .increment(1);
        // At most once a second per domain and action (`CUT_HOLD`, or the
        // action already in force): no log flood from a busy domain.
        log::warn!(
            "backing off {domain}: {acted} (the receiver replied {})",
            category.as_str()
        );
        for shard in (0..self.mesh.count()).filter(|s| *s != self.shard) {
            let (mesh, domain, reply) = (self.mesh.clone(), domain.to_string(), reply.clone());
            let path = path.clone();
            self.tasks.spawn(async move {
                // A shard that is stopping does not need telling.
                let _ = mesh
                    .ask(shard, move |s: Rc<Scheduler>| async move {
                        s.apply_backoff(&domain, path.as_ref(), action, reply);
                    })
                    .await;
            });
        }
    }

    /// The back-off itself, on this shard; what was done, or None if
    /// nothing new (the action already holds, or a cut came too soon).
    fn apply_backoff(
        self: &Rc<Self>,
        domain: &str,
        path: Option<&gate::PathKey>,
        action: backoff::BackoffAction,
        reply: String,
    ) -> Option<String> {
        let now = Instant::now();
        let mut st = self.state.borrow_mut();
        let acted = match action {
            backoff::BackoffAction::Suspend { secs } => {
                // With egress sources, the path the reply came over: the
                // pool's other sources keep sending to the site.
                let key = match path {
                    Some(gate::PathKey {
                        source: Some(source),
                        site,
                    }) => Hold::Path.key(&format!("{source}|{site}")),
                    _ => Hold::Domain.key(domain),
                };
                if st.suspended.contains_key(&key) {
                    return None;
                }
                // In memory at once (no new job starts), in the spool right
                // after (see `suspend` for the order the admin API takes).
                let until = self.clock.now().saturating_add(secs);
                st.suspended.insert(key.clone(), Some(until));
                let me = self.clone();
                let stored = key.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = me.holds.set(&stored, Some(Some(until))).await {
                        log::error!("storing the back-off of {stored}: {e}");
                    }
                });
                format!("{key} suspended for {secs} s")
            }
            backoff::BackoffAction::Throttle { factor, secs } => {
                // No path: the attempt never reached the site (DNS).
                let path = path?;
                let mut gates = self.gates.borrow_mut();
                let first = gates.throttle(path, factor, Duration::from_secs(secs), now)?;
                if first {
                    let rule = gates.rule_of(path);
                    ::metrics::gauge!(crate::metrics::PATH_THROTTLED, &path_labels(path, rule))
                        .increment(1.0);
                }
                let rate = gates.throttled_rate(path, now).unwrap_or(0.0);
                let from = path.source.as_deref().unwrap_or("the default address");
                format!(
                    "throttled to {rate:.1} msg/s from {from} on this shard, recovering over {secs} s"
                )
            }
            backoff::BackoffAction::Bounce { secs } => {
                if st.bouncing.contains_key(domain) {
                    return None;
                }
                let until = now + Duration::from_secs(secs);
                st.bouncing
                    .insert(domain.to_string(), state::Bouncing { until, reply });
                format!("bouncing its queue for {secs} s")
            }
        };
        Some(acted)
    }

    /// Ends the throttles that have recovered and the bouncing that is
    /// over; lets waiters in where a recovering throttle allows more
    /// connections.
    pub(super) fn end_expired_backoffs(self: &Rc<Self>) {
        let now = Instant::now();
        let mut gates = self.gates.borrow_mut();
        for (path, rule) in gates.tick(now) {
            ::metrics::gauge!(
                crate::metrics::PATH_THROTTLED,
                &path_labels(&path, rule.as_deref())
            )
            .decrement(1.0);
            let from = path.source.as_deref().unwrap_or("the default address");
            log::info!("throttle of {} from {from} ended", path.site);
        }
        drop(gates);
        let mut ended = Vec::new();
        self.state.borrow_mut().bouncing.retain(|d, b| {
            let keep = b.until > now;
            if !keep {
                ended.push(d.clone());
            }
            keep
        });
        for domain in ended {
            log::info!("back-off of {domain} ended");
            self.kick(&domain);
        }
    }

    /// Puts a recipient that failed for good on the suppression list, if
    /// its category is one of `suppression.categories`.
    fn suppress(&self, sender: &str, rcpt: &str, category: crate::classify::BounceCategory) {
        let Some(list) = &self.suppressions else {
            return;
        };
        let cfg = &self.cfg.suppression;
        if !cfg.categories.iter().any(|c| c == category.as_str()) {
            return;
        }
        let entry = crate::suppression::entry_for(
            cfg,
            sender,
            rcpt,
            category.as_str(),
            "bounce",
            self.clock.now(),
        );
        match list.add(&[entry]) {
            Ok(()) => ::metrics::counter!(crate::metrics::SUPPRESSIONS_ADDED, "source" => "bounce")
                .increment(1),
            Err(e) => log::warn!("suppression list: cannot add <{rcpt}>: {e}"),
        }
    }
}

/// The outcome of a job a `[backoff]` "bounce" rule fails without an
/// attempt: permanent, with the enhanced status of the reply that
/// triggered the rule (made permanent: 4.7.28 becomes 5.7.28).
pub(super) fn bounced_by_rule(domain: &str, reply: &str, rcpts: usize) -> Attempt {
    let status = match crate::classify::parse_reply(reply).1 {
        Some(s) => format!("5.{}.{}", s.subject, s.detail),
        None => "5.0.0".to_string(),
    };
    let text = format!(
        "not attempted: ringpost bounces mail to {domain} for now, as it replied \"{reply}\""
    );
    Attempt::all(
        DeliveryOutcome::Permanent {
            reply: format!("550 {status} {text}"),
            status,
        },
        rcpts,
    )
}
