//! What the admin API may see and change of one shard's schedule.
//!
//! Owns: the views ([`DomainSummary`], [`MessageInfo`]) and the operations
//! flush, delete and bounce. Each runs on the shard that owns the messages
//! (the admin API sends it here over the shard's admin channel); merging
//! the shards' answers is the admin API's job.
//!
//! Must not: block the shard for long. Views read the in-memory state only
//! (no sled reads): a summary reads the running per-domain totals
//! (`tally`), so it costs O(domains) however long the queue; a listing
//! walks the messages once and sorts only the ones it returns.
//! A message with a delivery attempt under way is not deleted or bounced
//! (the attempt may already have handed it over); the caller is told to
//! try again.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::remember::{BOUNCED_REPLY, DELETED_REPLY};
use super::state::{Entry, Failure, Hold};
use super::{Scheduler, queue_gauges};
use crate::config::NextHop;
use crate::events::{Event, EventKind};
use crate::queue::{MessageId, RecipientStatus};

/// One destination domain's part of the queue (pending recipients only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainSummary {
    pub domain: String,
    pub messages: usize,
    pub recipients: usize,
    /// Of `messages`, those waiting for a retry (the rest are being tried
    /// or queued to be).
    #[serde(default)]
    pub deferred: usize,
    /// Age in seconds of the oldest message with a recipient here.
    pub oldest_secs: u64,
    /// The last failure reply from this domain, if any.
    pub last_error: Option<String>,
    /// When that reply came (Unix seconds); 0 when only known from the
    /// queued recipients (after a restart).
    #[serde(default)]
    pub last_error_at: u64,
    pub suspended: bool,
    /// When the suspension ends by itself (Unix seconds), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<u64>,
    /// Messages per second a `[backoff]` throttle allows now (summed
    /// over the shards that hold one), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_per_second: Option<f64>,
    /// A `[backoff]` rule bounces this domain's queue for now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bouncing: bool,
}

impl DomainSummary {
    /// Folds another shard's numbers for the same domain into this one.
    pub fn merge(&mut self, other: DomainSummary) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.deferred += other.deferred;
        self.oldest_secs = self.oldest_secs.max(other.oldest_secs);
        self.suspended |= other.suspended;
        self.suspended_until = self.suspended_until.max(other.suspended_until);
        self.throttled_per_second = match (self.throttled_per_second, other.throttled_per_second) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.bouncing |= other.bouncing;
        if other.last_error.is_some()
            && (self.last_error.is_none() || other.last_error_at > self.last_error_at)
        {
            self.last_error = other.last_error;
            self.last_error_at = other.last_error_at;
        }
    }
}

/// A suspension of a site, source, pool or path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSummary {
    pub kind: Hold,
    pub name: String,
    /// When it ends by itself (Unix seconds), if it does.
    pub until: Option<u64>,
}

/// How `queue summary --by` groups the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// By site: the domains' pending mail, and the paths to the site.
    Site,
    /// By egress source: its paths' connections, waiters, throttles and
    /// capped counts.
    Source,
    /// By egress pool: the messages that go through it.
    Pool,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupBy, String> {
        match s {
            "site" => Ok(GroupBy::Site),
            "source" => Ok(GroupBy::Source),
            "pool" => Ok(GroupBy::Pool),
            other => Err(format!("cannot group by `{other}`: site, source or pool")),
        }
    }
}

/// Where a domain's site is not known yet (no attempt since the start).
pub const UNRESOLVED_SITE: &str = "(not resolved yet)";

/// One group of `queue summary --by`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub name: String,
    /// Sites: the shaping rule that fits it, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Messages with pending recipients here (by site: counted once per
    /// domain of the site they have recipients at).
    pub messages: usize,
    pub recipients: usize,
    pub deferred: usize,
    /// Connections in use on its paths.
    pub connections: usize,
    /// Deliveries waiting for a connection on its paths.
    pub waiting: usize,
    /// Messages per second a `[backoff]` throttle allows on its paths
    /// (summed over the shards that hold one), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_per_second: Option<f64>,
    /// Messages counted against its paths' daily caps today.
    #[serde(default)]
    pub sent_today: u64,
}

impl GroupSummary {
    /// Folds another shard's numbers for the same group into this one.
    pub fn merge(&mut self, other: GroupSummary) {
        self.rule = self.rule.take().or(other.rule);
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.deferred += other.deferred;
        self.connections += other.connections;
        self.waiting += other.waiting;
        self.sent_today += other.sent_today;
        self.throttled_per_second = match (self.throttled_per_second, other.throttled_per_second) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

fn group<'a>(map: &'a mut HashMap<String, GroupSummary>, name: &str) -> &'a mut GroupSummary {
    map.entry(name.to_string()).or_insert_with(|| GroupSummary {
        name: name.to_string(),
        ..GroupSummary::default()
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientInfo {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub last_reply: Option<String>,
    /// DSN: the notices asked for (None: a failure notice) and the
    /// original recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::dsn::Notify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// The egress source and the site of its last attempt, once one was
    /// made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub id: String,
    /// Empty for the null sender.
    pub sender: String,
    pub size: u64,
    /// Unix seconds of acceptance.
    pub created: u64,
    pub attempts: u32,
    /// Unix seconds of the next attempt, when deferred.
    pub next_attempt: Option<u64>,
    /// Why it waits: "scheduled" (for its first attempt at
    /// `next_attempt`, the time its sender chose), "deferred" (for a retry
    /// at `next_attempt`),
    /// "suspended" (every pending recipient's domain is), "delivering" (an
    /// attempt is under way) or "queued" (for a connection).
    pub state: String,
    pub recipients: Vec<RecipientInfo>,
    /// Its priority lane: "high", "normal" or "bulk".
    #[serde(default)]
    pub priority: String,
    /// Its egress pool (empty: the default pool).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// The application's data for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// What DKIM signing did: "signed d=... s=... a=..." or "unsigned:
    /// why"; None when signing is not configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<String>,
    /// DSN: what a failure notice returns, and the sender's envelope id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<crate::dsn::Ret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperationError {
    #[error("no queued message {0}")]
    NotFound(MessageId),
    #[error("message {0} has a delivery attempt under way; try again in a moment")]
    Busy(MessageId),
    #[error("message {0}: the change could not be stored ({1}); it is still queued")]
    Storage(MessageId, String),
}

/// What `queue flush` did on one shard.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlushReport {
    /// Messages released to be tried now.
    pub flushed: usize,
    /// Deferred messages left waiting, each with its hold.
    pub held: Vec<HeldMessage>,
}

/// A message a flush left waiting, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeldMessage {
    pub id: String,
    pub reason: String,
}

impl Scheduler {
    /// Messages this shard holds, and how many of them are deferred.
    pub fn message_count(&self) -> (usize, usize) {
        let st = self.state.borrow();
        (st.messages.len(), st.deferred.len())
    }

    /// Per-domain totals of this shard's pending recipients, plus every
    /// suspended domain: read off the running totals, O(domains).
    pub fn summary(&self) -> Vec<DomainSummary> {
        let now = self.clock.now();
        let st = self.state.borrow();
        let mut map: HashMap<String, DomainSummary> = st
            .tallies
            .iter()
            .map(|(name, t)| {
                let last = st.domains.get(name).and_then(|q| q.last_error.clone());
                let summary = DomainSummary {
                    domain: name.clone(),
                    messages: t.messages,
                    recipients: t.recipients,
                    deferred: t.deferred,
                    oldest_secs: t.oldest_created().map_or(0, |c| now.saturating_sub(c)),
                    last_error_at: last.as_ref().map_or(0, |(at, _)| *at),
                    last_error: last.map(|(_, reply)| reply),
                    ..DomainSummary::default()
                };
                (name.clone(), summary)
            })
            .collect();
        for (key, until) in &st.suspended {
            match Hold::of_key(key) {
                (Hold::Domain, name) => {
                    let d = map
                        .entry(name.to_string())
                        .or_insert_with(|| DomainSummary {
                            domain: name.to_string(),
                            ..DomainSummary::default()
                        });
                    d.suspended = true;
                    d.suspended_until = *until;
                }
                (Hold::Site, site) => {
                    // The domains known to go there.
                    for (name, d) in map.iter_mut() {
                        if st.domains.get(name).and_then(|q| q.site.as_deref()) == Some(site) {
                            d.suspended = true;
                            d.suspended_until = d.suspended_until.max(*until);
                        }
                    }
                }
                _ => {}
            }
        }
        // A domain is throttled while a path to its site is (the slowest).
        let instant = std::time::Instant::now();
        let gates = self.gates.borrow();
        let mut site_rates: HashMap<&str, f64> = HashMap::new();
        for (path, _) in gates.iter() {
            if let Some(rate) = gates.throttled_rate(path, instant) {
                let r = site_rates.entry(path.site.as_str()).or_insert(rate);
                *r = r.min(rate);
            }
        }
        for (name, d) in map.iter_mut() {
            let site = st.domains.get(name).and_then(|q| q.site.as_deref());
            if let Some(rate) = site.and_then(|s| site_rates.get(s)) {
                d.throttled_per_second = Some(*rate);
            }
        }
        for name in st.bouncing.keys() {
            if let Some(d) = map.get_mut(name) {
                d.bouncing = true;
            }
        }
        map.into_values().collect()
    }

    /// Every suspension in force that is not a domain's: (kind, name,
    /// until).
    pub fn holds(&self) -> Vec<HoldSummary> {
        self.state
            .borrow()
            .suspended
            .iter()
            .filter_map(|(key, until)| match Hold::of_key(key) {
                (Hold::Domain, _) => None,
                (kind, name) => Some(HoldSummary {
                    kind,
                    name: name.to_string(),
                    until: *until,
                }),
            })
            .collect()
    }

    /// This shard's queue grouped `by` site, source or pool: from the
    /// running totals, the paths' gates, and (by pool) one walk over the
    /// messages.
    pub fn groups(&self, by: GroupBy) -> Vec<GroupSummary> {
        let st = self.state.borrow();
        let mut map: HashMap<String, GroupSummary> = HashMap::new();
        match by {
            GroupBy::Site => {
                for (domain, t) in st.tallies.iter() {
                    let site = st.domains.get(domain).and_then(|q| q.site.as_deref());
                    let g = group(&mut map, site.unwrap_or(UNRESOLVED_SITE));
                    g.messages += t.messages;
                    g.recipients += t.recipients;
                    g.deferred += t.deferred;
                }
            }
            GroupBy::Pool => {
                let egress = &self.cfg.egress;
                for e in st.messages.values() {
                    let pending = e
                        .env
                        .recipients
                        .iter()
                        .filter(|r| r.status == RecipientStatus::Pending)
                        .count();
                    if pending == 0 {
                        continue;
                    }
                    let pool = egress.pool_of(&e.env.pool).unwrap_or("default");
                    let g = group(&mut map, pool);
                    g.messages += 1;
                    g.recipients += pending;
                    g.deferred += usize::from(e.deferred);
                }
            }
            GroupBy::Source => {}
        }
        if by != GroupBy::Pool {
            let gates = self.gates.borrow();
            let (now, unix) = (std::time::Instant::now(), self.clock.now());
            for (path, gate) in gates.iter() {
                let name = match by {
                    GroupBy::Site => path.site.as_str(),
                    _ => path.source.as_deref().unwrap_or("default"),
                };
                let g = group(&mut map, name);
                g.connections += gate.in_use();
                g.waiting += gate.waiting();
                g.sent_today += gates.sent_today(path, unix);
                if by == GroupBy::Site && g.rule.is_none() {
                    g.rule = gate.rule.clone();
                }
                if let Some(rate) = gates.throttled_rate(path, now) {
                    let r = g.throttled_per_second.get_or_insert(rate);
                    *r = r.min(rate);
                }
            }
        }
        map.into_values().collect()
    }

    /// This shard's messages, optionally only those with a pending
    /// recipient at `domain`, oldest first, at most `limit`.
    pub fn list(&self, domain: Option<&str>, limit: usize) -> Vec<MessageInfo> {
        let domain = domain.map(str::to_ascii_lowercase);
        let st = self.state.borrow();
        let mut found: Vec<(&MessageId, &Entry)> = st
            .messages
            .iter()
            .filter(|(_, e)| domain.as_deref().is_none_or(|d| e.has_pending_at(d)))
            .map(|(id, e)| (id, &**e))
            .collect();
        let oldest_first = |(id, e): &(&MessageId, &Entry)| (e.env.created, **id);
        // Only the first `limit` need sorting, not the whole queue.
        if found.len() > limit && limit > 0 {
            found.select_nth_unstable_by_key(limit - 1, oldest_first);
        }
        found.truncate(limit);
        found.sort_unstable_by_key(oldest_first);
        found.into_iter().map(|(id, e)| e.info(*id, &st)).collect()
    }

    /// One message, if this shard holds it.
    pub fn show(&self, id: MessageId) -> Option<MessageInfo> {
        let st = self.state.borrow();
        Some(st.messages.get(&id)?.info(id, &st))
    }

    /// The first `max` bytes of a message's header section, for `show`.
    pub async fn headers(&self, id: MessageId, max: usize) -> Option<String> {
        let env = self.state.borrow().messages.get(&id)?.env.clone();
        let body = self.spool.read_body(id, &env).await.ok()?;
        let end = memchr::memmem::find(&body, b"\r\n\r\n").map_or(body.len(), |i| i + 2);
        Some(String::from_utf8_lossy(&body[..end.min(max)]).into_owned())
    }

    /// Deferred mail (all, or for one domain) is tried now, except the
    /// messages whose every pending domain is still held (a domain, site
    /// or pool suspension): those stay, and the report says why.
    pub fn flush(self: &Rc<Self>, domain: Option<&str>) -> FlushReport {
        let domain = domain.map(str::to_ascii_lowercase);
        let picked: Vec<MessageId> = {
            let st = self.state.borrow();
            st.deferred
                .iter()
                .map(|&(_, id)| id)
                .filter(|id| {
                    domain
                        .as_deref()
                        .is_none_or(|d| st.messages.get(id).is_some_and(|e| e.has_pending_at(d)))
                })
                .collect()
        };
        let mut report = FlushReport::default();
        let mut due = Vec::new();
        for id in picked {
            match self.still_held(id) {
                Some(why) => report.held.push(HeldMessage {
                    id: id.to_string(),
                    reason: why,
                }),
                None => due.push(id),
            }
        }
        {
            let mut st = self.state.borrow_mut();
            for &id in &due {
                st.undefer(id);
            }
        }
        for &id in &due {
            self.dispatch(id);
        }
        report.flushed = due.len();
        report
    }

    /// One deferred message is tried now (the status page's "retry now");
    /// a message that is not deferred is left as it is. Whether it was
    /// released.
    pub fn flush_message(self: &Rc<Self>, id: MessageId) -> Result<bool, OperationError> {
        let deferred = {
            let st = self.state.borrow();
            st.messages
                .get(&id)
                .ok_or(OperationError::NotFound(id))?
                .deferred
        };
        if deferred {
            self.state.borrow_mut().undefer(id);
            self.dispatch(id);
        }
        Ok(deferred)
    }

    /// Why message `id` would not be tried now, if every domain it has
    /// pending recipients for is held: its domain suspended, or the site
    /// its last attempt found, or its pool.
    pub(super) fn still_held(&self, id: MessageId) -> Option<String> {
        let (env, places) = {
            let st = self.state.borrow();
            if st.suspended.is_empty() {
                return None;
            }
            let env = st.messages.get(&id)?.env.clone();
            let places: Vec<(String, bool, Option<String>)> = super::state::jobs_by_domain(&env)
                .into_keys()
                .map(|d| {
                    let held = st.is_held(Hold::Domain, &d);
                    let site = st.domains.get(&d).and_then(|q| q.site.clone());
                    (d, held, site)
                })
                .collect();
            (env, places)
        };
        let mut reasons = Vec::new();
        for (domain, domain_held, site) in places {
            let why = match (domain_held, site) {
                (true, _) => format!("domain {domain} is suspended"),
                (false, Some(site)) => self.held(&env, &site)?.0,
                (false, None) => return None,
            };
            reasons.push(why);
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Before a drain: looks `hop` up, connects, reads its greeting and
    /// says EHLO as a delivery would, then QUIT. Ok: the host that
    /// answered; Err: why the drain must not start (unknown name, no
    /// answer, not SMTP, or this node itself).
    pub async fn probe_peer(&self, hop: &NextHop) -> Result<String, String> {
        let targets = self
            .router
            .targets_of(hop)
            .await
            .map_err(|e| e.to_string())?;
        self.delivery
            .probe(&targets, self.base_limits.connect_timeout())
            .await
            .map_err(|o| o.reply().to_string())
    }

    /// Drains this shard to another MTA: reception stops taking new mail
    /// (the front ends ask [`Scheduler::handing_over`]), every queued
    /// message goes to `hop` now, whatever its domain, holds ignored, and
    /// each is removed here only after the peer's 250, as any delivery.
    /// Returns how many messages the shard holds. Not stored: after a
    /// restart the node takes mail again until drained again.
    pub fn hand_over(self: &Rc<Self>, hop: NextHop) -> usize {
        log::warn!("draining: every queued message goes to {hop:?}; new mail is refused");
        self.router.hand_over_to(hop);
        let held = {
            let mut st = self.state.borrow_mut();
            st.handing_over = true;
            st.take_held()
        };
        for id in held {
            self.dispatch(id);
        }
        self.flush(None);
        // Domains whose workers stopped at a hold start again.
        let domains: Vec<String> = self.state.borrow().domains.keys().cloned().collect();
        for d in domains {
            self.kick(&d);
        }
        self.state.borrow().messages.len()
    }

    /// This shard's index.
    pub fn shard_index(&self) -> usize {
        self.shard
    }

    /// The webhook events this shard's receivers refused for good (see
    /// `events::outbox`), of `webhook` (all if None), from `since_ms` on.
    pub fn failed_events(
        &self,
        webhook: Option<&str>,
        since_ms: u64,
    ) -> Vec<(String, crate::events::outbox::StoredEvent)> {
        self.outbox.failed_matching(webhook, since_ms)
    }

    /// Sends those events again (the webhook's sender takes them first);
    /// Ok once the request is on disk: how many.
    pub async fn replay_failed_events(
        &self,
        webhook: Option<&str>,
        since_ms: u64,
    ) -> Result<usize, crate::queue::SpoolError> {
        let n = self.outbox.replay_failed(webhook, since_ms)?;
        self.spool.make_durable().await?;
        Ok(n)
    }

    /// The peer the shard is drained to, if it is.
    pub fn handed_over_to(&self) -> Option<NextHop> {
        self.router.handed_over_to()
    }

    /// Whether the shard is being drained (and so takes no new mail).
    pub fn handing_over(&self) -> bool {
        self.state.borrow().handing_over
    }

    /// Removes a message from the queue without delivering or bouncing it.
    /// Answers Ok only once the removal is on disk: a delete the operator
    /// is told about never comes back after a restart.
    pub async fn delete(self: &Rc<Self>, id: MessageId) -> Result<(), OperationError> {
        let env = self.take_out(id)?;
        let removed = match self.spool.remove(id, &env.body).await {
            Ok(()) => self.spool.make_durable().await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            self.put_back(id, &env).await;
            return Err(OperationError::Storage(id, e.to_string()));
        }
        self.forget_deleted(id, &env);
        Ok(())
    }

    /// A message whose removal could not be stored stays queued and is
    /// retried.
    pub(super) async fn put_back(self: &Rc<Self>, id: MessageId, env: &crate::queue::Envelope) {
        let _ = self.spool.update(id, env).await;
        self.dispatch(id);
    }

    /// Once a delete is on disk: the message leaves the schedule, its
    /// history record is written and each pending recipient gets its
    /// Deletion event.
    pub(super) fn forget_deleted(&self, id: MessageId, env: &crate::queue::Envelope) {
        queue_gauges(env, -1.0);
        self.state.borrow_mut().remove(id);
        self.remember(id, env, super::remember::Leaving::Deleted);
        for r in env
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
        {
            let mut ev = Event::of(EventKind::Deletion, id, env, &r.address);
            ev.reply = Some(DELETED_REPLY);
            self.events.write(&ev);
        }
    }

    /// Fails every pending recipient now (`reason`: the operator's, added
    /// to the reply): a DSN goes to the sender (none for the null sender)
    /// and the message leaves the queue.
    pub async fn bounce_message(
        self: &Rc<Self>,
        id: MessageId,
        reason: Option<&str>,
    ) -> Result<(), OperationError> {
        self.take_out(id)?;
        let reply = match reason {
            Some(why) => format!("{BOUNCED_REPLY}: {why}"),
            None => BOUNCED_REPLY.to_string(),
        };
        let failed = self.state.borrow_mut().change(id, |entry| {
            let (sender, meta) = (entry.env.sender.clone(), entry.env.meta.clone());
            let mut failures = Vec::new();
            for (i, r) in entry.env.recipients.iter_mut().enumerate() {
                if r.status == RecipientStatus::Pending {
                    r.status = RecipientStatus::Failed;
                    let failure = Failure {
                        index: i,
                        status: "5.0.0".into(),
                        reply: reply.clone(),
                        remote: None,
                    };
                    self.log_bounce(id, (&sender, meta.as_deref()), r, &failure);
                    failures.push(failure);
                }
            }
            failures.into_iter().for_each(|f| entry.push_failure(f));
        });
        failed.ok_or(OperationError::NotFound(id))?;
        self.clone().finish(id).await;
        Ok(())
    }

    /// Takes a message out of the ready queues and the due index, so that
    /// no new attempt starts; refused while an attempt is under way.
    /// Returns its envelope; the entry stays until the caller is done.
    pub(super) fn take_out(&self, id: MessageId) -> Result<crate::queue::Envelope, OperationError> {
        match self.state.borrow_mut().take_out(id) {
            None => Err(OperationError::NotFound(id)),
            Some(Err(())) => Err(OperationError::Busy(id)),
            Some(Ok(env)) => Ok(env),
        }
    }
}

impl Entry {
    /// Where it stands: "scheduled" (waiting for its first attempt at a
    /// time the sender chose), "deferred" (waiting for a retry),
    /// "suspended" (every pending domain held), "delivering" or "queued".
    pub(super) fn state_name(&self, st: &super::state::State) -> &'static str {
        let all_suspended = || {
            self.env
                .recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Pending)
                .all(|r| st.domain_held(&super::state::domain_of(&r.address)))
        };
        let scheduled = self.env.attempts == 0 && self.env.release_at.is_some();
        match (self.deferred, self.in_flight > 0) {
            (true, _) if scheduled => "scheduled",
            (true, _) => "deferred",
            (false, false) if all_suspended() => "suspended",
            (false, true) => "delivering",
            (false, false) => "queued",
        }
    }

    pub(super) fn info(&self, id: MessageId, st: &super::state::State) -> MessageInfo {
        let env = &self.env;
        let deferred = self.deferred;
        let state = self.state_name(st);
        MessageInfo {
            id: id.to_string(),
            sender: env.sender.clone(),
            size: env.size(),
            created: env.created,
            attempts: env.attempts,
            next_attempt: deferred.then_some(env.next_due),
            state: state.into(),
            recipients: env
                .recipients
                .iter()
                .map(|r| RecipientInfo {
                    address: r.address.to_string(),
                    status: r.status,
                    attempts: r.attempts,
                    last_reply: r.last_reply.as_deref().map(str::to_string),
                    notify: r.notify,
                    orcpt: r.orcpt.as_deref().map(str::to_string),
                    source: r.source.as_deref().map(str::to_string),
                    site: r.site.as_deref().map(str::to_string),
                })
                .collect(),
            priority: env.priority.unwrap_or_default().as_str().into(),
            pool: env.pool.clone(),
            meta: env.meta.as_deref().cloned(),
            message_id: env.message_id.as_deref().map(str::to_string),
            idempotency_key: env.idempotency_key.as_deref().map(str::to_string),
            dkim: env.dkim.as_deref().map(str::to_string),
            ret: env.ret,
            envid: env.envid.as_deref().map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_the_newest_error() {
        let mut a = DomainSummary {
            domain: "a.example".into(),
            messages: 2,
            recipients: 3,
            deferred: 1,
            oldest_secs: 10,
            last_error: Some("451 old".into()),
            last_error_at: 100,
            suspended: false,
            suspended_until: None,
            throttled_per_second: Some(2.5),
            bouncing: false,
        };
        a.merge(DomainSummary {
            domain: "a.example".into(),
            messages: 1,
            recipients: 1,
            deferred: 1,
            oldest_secs: 50,
            last_error: Some("452 new".into()),
            last_error_at: 200,
            suspended: true,
            suspended_until: Some(900),
            throttled_per_second: Some(1.5),
            bouncing: true,
        });
        assert_eq!((a.messages, a.recipients, a.oldest_secs), (3, 4, 50));
        assert_eq!(a.deferred, 2);
        assert_eq!(a.last_error.as_deref(), Some("452 new"));
        assert!(a.suspended);
        assert_eq!(a.suspended_until, Some(900));
        assert_eq!(
            a.throttled_per_second,
            Some(4.0),
            "the shards' rates add up"
        );
        assert!(a.bouncing);
    }
}
