//! One shard's schedule as data: which messages it holds, their rounds of
//! jobs, the per-domain ready queues and workers, and the due-time index.
//!
//! Owns: [`State`] and every change to it, as plain methods without I/O,
//! so that the round accounting is unit-tested here rather than only end
//! to end. The rules:
//!
//! - A message *round* is one job per destination domain with pending
//!   recipients ([`State::dispatch`]); `jobs` counts those not yet done.
//! - A job's attempt counts as *in flight* from [`State::start_job`] to
//!   [`State::record`]; finishing a round ([`State::begin_finish`] ..
//!   [`State::end_finish`]) counts as in flight too, so the admin cannot
//!   take a message out while its new state is being written.
//! - `messages`, `deferred` and `tallies` change together, only through
//!   these methods, so the running totals always match the messages.
//!
//! Must not: do I/O, read the clock, or log: the scheduler does, around
//! these calls.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::tally::Tallies;
use crate::outbound::{Attempt, DeliveryOutcome};
use crate::queue::{Envelope, MessageId, RecipientStatus};

/// A recipient that failed for good in this round, for the DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index into the envelope's recipients.
    pub index: usize,
    /// Enhanced status code, e.g. "5.1.1".
    pub status: String,
    /// What the remote server (or ringpost) said.
    pub reply: String,
    /// The host that said it, if any.
    pub remote: Option<String>,
}

#[derive(Default)]
pub struct State {
    /// Each entry boxed: the table keeps a pointer per slot, so its
    /// power-of-two slack (up to half its slots empty) costs 8 bytes a
    /// slot rather than an entry's few hundred.
    pub messages: HashMap<MessageId, Box<Entry>>,
    pub domains: HashMap<String, DomainQueue>,
    pub deferred: BTreeSet<(u64, MessageId)>,
    pub tallies: Tallies,
    /// Suspensions by [`Hold::key`] (a domain's is its name), and when
    /// each ends by itself (Unix seconds), if it does.
    pub suspended: HashMap<String, Option<u64>>,
    /// The node is being drained to another: holds are ignored (every
    /// message leaves), the router sends everything to the peer.
    pub handing_over: bool,
    /// Domains a `[backoff]` rule bounces, until when, and why.
    pub bouncing: HashMap<String, Bouncing>,
    /// The messages whose bodies are in each segment, for compaction.
    pub by_segment: HashMap<u32, HashSet<MessageId>>,
    /// The priority lanes' weights (`[priority]`).
    pub lane_weights: [u32; super::lanes::LANES],
    /// The messages by recipient, sender, Message-ID, key and meta.
    pub index: super::index::QueueIndex,
    /// One copy of the strings the queued envelopes repeat.
    pub interned: super::interned::Interned,
}

pub struct Entry {
    pub env: Envelope,
    /// Jobs of the current round not yet done.
    pub jobs: u32,
    /// Jobs of this message with a delivery attempt under way (or its
    /// round being finished).
    pub in_flight: u32,
    /// In the due-time index, waiting for a retry.
    pub deferred: bool,
    /// What this round owes the sender, if anything: most rounds owe
    /// nothing, and a queued message should not pay for two empty lists.
    notices: Option<Box<Notices>>,
}

/// The notices a round owes its sender.
#[derive(Default)]
struct Notices {
    /// Recipients that failed for good in this round, for the DSN.
    failures: Vec<Failure>,
    /// Recipients delivered in this round to a next hop without DSN whose
    /// sender asked for NOTIFY=SUCCESS: a "relayed" notice is due.
    relayed: Vec<Failure>,
}

/// How a message waits while compaction may move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// In the due-time index.
    Deferred,
    /// Its jobs in the ready queues of held domains.
    Held,
}

#[derive(Default)]
pub struct DomainQueue {
    /// Jobs waiting for a worker, by priority lane.
    pub ready: super::lanes::Lanes<Job>,
    pub workers: usize,
    /// Workers spawned that have not yet taken their first job: each will
    /// take one of `ready`, so no more are started than there are jobs for
    /// (spawned tasks run only once the spawner yields).
    pub starting: usize,
    /// The last failure reply from this domain and when (Unix seconds).
    pub last_error: Option<(u64, String)>,
    /// The site its mail went to last (`shaping::site_name`).
    pub site: Option<String>,
    /// Workers this shard runs for the domain at most, from its site's
    /// limits once known (the paths' gates hold them to those).
    pub capacity: Option<usize>,
}

/// A domain whose queue a `[backoff]` rule bounces.
#[derive(Debug, Clone)]
pub struct Bouncing {
    pub until: Instant,
    /// The reply that triggered the rule.
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: MessageId,
    /// Indices into the envelope's recipients.
    pub rcpts: Vec<usize>,
}

/// What [`State::record`] found when it applied a job's outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The round's last job: the message is to be finished.
    pub round_done: bool,
    /// Some recipient failed for good (a DSN is due).
    pub bounced: bool,
    /// The domain and the reply of the last failure, if any.
    pub failed: Option<(String, String)>,
}

pub use crate::queue::domain_of;

/// What a suspension holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hold {
    /// A destination domain: its jobs wait, untried.
    Domain,
    /// A site (its MX hosts): every domain whose mail goes there.
    Site,
    /// An egress source: its pools send from their other sources.
    Source,
    /// An egress pool: its messages wait.
    Pool,
    /// One source's path to one site (a `[backoff]` rule's suspension
    /// when egress sources are configured); the name is `SOURCE|SITE`.
    Path,
}

impl Hold {
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Domain => "domain",
            Hold::Site => "site",
            Hold::Source => "source",
            Hold::Pool => "pool",
            Hold::Path => "path",
        }
    }

    /// The key a suspension of `name` is kept (and stored) under: a
    /// domain's own name, lower case; `kind:name` for the others (a
    /// domain name has no colon, so they never meet).
    pub fn key(self, name: &str) -> String {
        match self {
            Hold::Domain => name.to_ascii_lowercase(),
            Hold::Site => format!("site:{}", name.to_ascii_lowercase()),
            kind => format!("{}:{name}", kind.as_str()),
        }
    }

    /// Pure: a stored key's kind and name.
    pub fn of_key(key: &str) -> (Hold, &str) {
        for kind in [Hold::Site, Hold::Source, Hold::Pool, Hold::Path] {
            if let Some(name) = key
                .strip_prefix(kind.as_str())
                .and_then(|r| r.strip_prefix(':'))
            {
                return (kind, name);
            }
        }
        (Hold::Domain, key)
    }
}

/// Why a job was not attempted: its site, pool, source or path is held
/// (suspended, or at a cap). Its recipients are marked held
/// (`Recipient::held`) and retried at once when a hold ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held(pub String);

impl Held {
    /// The deferral its recipients get, as the delivery log shows it.
    pub fn outcome(&self) -> DeliveryOutcome {
        DeliveryOutcome::Temporary {
            reply: format!("451 4.4.5 not attempted: {}", self.0),
        }
    }
}

/// Pure: a message's pending recipients (indices) grouped by destination
/// domain: one job each.
pub fn jobs_by_domain(env: &Envelope) -> HashMap<String, Vec<usize>> {
    let mut by_domain: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if r.status == RecipientStatus::Pending {
            by_domain.entry(domain_of(&r.address)).or_default().push(i);
        }
    }
    by_domain
}

/// Pure: takes every entry due at `now` off the due-time index, earliest
/// first.
pub fn pop_due(deferred: &mut BTreeSet<(u64, MessageId)>, now: u64) -> Vec<MessageId> {
    let mut due = Vec::new();
    while let Some(&(t, id)) = deferred.first() {
        if t > now {
            break;
        }
        deferred.pop_first();
        due.push(id);
    }
    due
}

impl Entry {
    fn new(env: Envelope) -> Entry {
        Entry {
            env,
            jobs: 0,
            in_flight: 0,
            deferred: false,
            notices: None,
        }
    }

    /// Records a recipient that failed for good this round (a DSN is due).
    pub fn push_failure(&mut self, failure: Failure) {
        self.notices.get_or_insert_default().failures.push(failure);
    }

    /// Records a recipient relayed this round whose sender asked for
    /// NOTIFY=SUCCESS.
    fn push_relayed(&mut self, relayed: Failure) {
        self.notices.get_or_insert_default().relayed.push(relayed);
    }

    /// Takes the failures recorded so far this round.
    pub fn take_failures(&mut self) -> Vec<Failure> {
        self.notices
            .as_mut()
            .map(|n| std::mem::take(&mut n.failures))
            .unwrap_or_default()
    }

    /// Takes the round's failures and relayed recipients.
    fn take_notices(&mut self) -> (Vec<Failure>, Vec<Failure>) {
        self.notices
            .take()
            .map(|n| (n.failures, n.relayed))
            .unwrap_or_default()
    }

    pub fn has_pending_at(&self, domain: &str) -> bool {
        self.env.has_pending_at(domain)
    }
}

impl State {
    /// A message enters the schedule (not yet in the due-time index).
    pub fn admit(&mut self, id: MessageId, mut env: Envelope) {
        self.share_strings(&mut env);
        self.tallies.count(&env, false, true);
        self.by_segment
            .entry(env.body.segment)
            .or_default()
            .insert(id);
        self.index.add(id, &env);
        if let Some(old) = self.messages.insert(id, Box::new(Entry::new(env))) {
            self.tallies.count(&old.env, old.deferred, false);
            self.unindex_body(id, old.env.body.segment);
        }
    }

    /// Points the envelope's repeated strings at the shard's one copy.
    fn share_strings(&mut self, env: &mut Envelope) {
        self.interned.adopt(&mut env.client);
        self.interned.adopt_opt(&mut env.dkim);
        for r in &mut env.recipients {
            self.interned.adopt_opt(&mut r.last_reply);
            self.interned.adopt_opt(&mut r.site);
            self.interned.adopt_opt(&mut r.source);
        }
    }

    /// A message leaves the schedule.
    pub fn remove(&mut self, id: MessageId) -> Option<Entry> {
        let entry = *self.messages.remove(&id)?;
        self.tallies.count(&entry.env, entry.deferred, false);
        if entry.deferred {
            self.deferred.remove(&(entry.env.next_due, id));
        }
        self.unindex_body(id, entry.env.body.segment);
        self.index.remove(id, &entry.env);
        Some(entry)
    }

    fn unindex_body(&mut self, id: MessageId, segment: u32) {
        if let Some(ids) = self.by_segment.get_mut(&segment) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_segment.remove(&segment);
            }
        }
    }

    /// Messages (not in flight) whose bodies are in `segments` and that
    /// wait for a while: what compaction may move now.
    pub fn movable_in(&self, segments: &[u32]) -> Vec<MessageId> {
        segments
            .iter()
            .filter_map(|seg| self.by_segment.get(seg))
            .flatten()
            .filter(|id| self.waiting(id).is_some())
            .copied()
            .collect()
    }

    /// How message `id` waits, if it is not in flight and waits for
    /// longer than an attempt: deferred (a retry, scheduled mail), or held
    /// (dispatched, and every pending recipient's domain suspended, or its
    /// site held: its jobs sit in those domains' ready queues).
    fn waiting(&self, id: &MessageId) -> Option<Waiting> {
        let e = self.messages.get(id).filter(|e| e.in_flight == 0)?;
        if e.deferred {
            return Some(Waiting::Deferred);
        }
        let held = e.jobs > 0
            && e.env.recipients.iter().all(|r| {
                r.status != RecipientStatus::Pending || self.domain_held(&domain_of(&r.address))
            });
        held.then_some(Waiting::Held)
    }

    /// Compaction takes a waiting message out of the due-time index (or
    /// its jobs out of the held domains' ready queues) and counts it in
    /// flight, so that nothing delivers, changes or removes it while its
    /// body moves: its envelope and how it waited, or None if it is not
    /// movable.
    pub fn begin_move(&mut self, id: MessageId) -> Option<(Envelope, Waiting)> {
        let waiting = self.waiting(&id)?;
        match waiting {
            Waiting::Deferred => self.undefer(id),
            Waiting::Held => {
                let rcpts = self.messages.get(&id)?.env.recipients.clone();
                for r in &rcpts {
                    if let Some(q) = self.domains.get_mut(&domain_of(&r.address)) {
                        q.ready.retain(|job| job.id != id);
                    }
                }
            }
        }
        let entry = self.messages.get_mut(&id)?;
        entry.in_flight += 1;
        entry.jobs = 0;
        Some((entry.env.clone(), waiting))
    }

    /// The move is over: the body is at `moved` (None: it stayed). A
    /// deferred message waits in the due-time index again; a held one's
    /// jobs are for the caller to dispatch again (`dispatch`), which also
    /// starts workers if its domain was resumed meanwhile.
    pub fn end_move(
        &mut self,
        id: MessageId,
        moved: Option<crate::queue::BodyRef>,
        waiting: Waiting,
    ) {
        let Some(entry) = self.messages.get_mut(&id) else {
            return;
        };
        entry.in_flight -= 1;
        if let Some(body) = moved {
            let old = std::mem::replace(&mut entry.env.body, body);
            self.unindex_body(id, old.segment);
            self.by_segment.entry(body.segment).or_default().insert(id);
        }
        if waiting == Waiting::Deferred {
            self.defer(id);
        }
    }

    /// Changes a message's entry, keeping the totals right. `None` if the
    /// message is not (or no longer) here.
    pub fn change<R>(&mut self, id: MessageId, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let entry = self.messages.get_mut(&id)?;
        self.tallies.count(&entry.env, entry.deferred, false);
        if entry.deferred {
            self.deferred.remove(&(entry.env.next_due, id));
        }
        let r = f(entry);
        self.tallies.count(&entry.env, entry.deferred, true);
        if entry.deferred {
            self.deferred.insert((entry.env.next_due, id));
        }
        Some(r)
    }

    /// Puts a message in the due-time index, at its `next_due`.
    pub fn defer(&mut self, id: MessageId) {
        let Some(entry) = self.messages.get_mut(&id).filter(|e| !e.deferred) else {
            return;
        };
        entry.deferred = true;
        self.deferred.insert((entry.env.next_due, id));
        self.tallies.set_deferred(&entry.env, true);
    }

    /// Takes a message out of the due-time index (to be tried now).
    pub fn undefer(&mut self, id: MessageId) {
        let Some(entry) = self.messages.get_mut(&id).filter(|e| e.deferred) else {
            return;
        };
        entry.deferred = false;
        self.deferred.remove(&(entry.env.next_due, id));
        self.tallies.set_deferred(&entry.env, false);
    }

    /// After a restart the domains' last errors are known only from the
    /// recipients' last replies: keep one per domain for the summary.
    pub fn remember_last_errors(&mut self, env: &Envelope) {
        for r in &env.recipients {
            if let (RecipientStatus::Pending, Some(reply)) = (r.status, &r.last_reply) {
                let q = self.domains.entry(domain_of(&r.address)).or_default();
                q.last_error.get_or_insert_with(|| (0, reply.to_string()));
            }
        }
    }

    /// Whether `domain` is suspended, itself or through its site (as far
    /// as its site is known).
    pub fn domain_held(&self, domain: &str) -> bool {
        if self.suspended.is_empty() || self.handing_over {
            return false;
        }
        self.suspended.contains_key(domain)
            || self
                .domains
                .get(domain)
                .and_then(|q| q.site.as_deref())
                .is_some_and(|site| self.is_held(Hold::Site, site))
    }

    /// Whether a suspension of `kind` `name` holds.
    pub fn is_held(&self, kind: Hold, name: &str) -> bool {
        !self.suspended.is_empty()
            && !self.handing_over
            && self.suspended.contains_key(&kind.key(name))
    }

    /// Deferred messages that wait only because of a hold (a recipient
    /// marked [`Held`]): taken out of the due-time index, to be tried now
    /// that a hold ended.
    pub fn take_held(&mut self) -> Vec<MessageId> {
        let held: Vec<MessageId> = self
            .deferred
            .iter()
            .map(|&(_, id)| id)
            .filter(|id| {
                self.messages.get(id).is_some_and(|e| {
                    e.env
                        .recipients
                        .iter()
                        .any(|r| r.status == RecipientStatus::Pending && r.held)
                })
            })
            .collect();
        for &id in &held {
            self.undefer(id);
        }
        held
    }

    /// Suspensions that have ended by `now`: taken out, their keys
    /// returned.
    pub fn take_expired_suspensions(&mut self, now: u64) -> Vec<String> {
        let ended: Vec<String> = self
            .suspended
            .iter()
            .filter(|(_, until)| until.is_some_and(|t| t <= now))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &ended {
            self.suspended.remove(d);
        }
        ended
    }

    /// Takes every message due at `now` out of the due-time index.
    pub fn take_due(&mut self, now: u64) -> Vec<MessageId> {
        let due = pop_due(&mut self.deferred, now);
        for id in &due {
            if let Some(entry) = self.messages.get_mut(id) {
                entry.deferred = false;
                self.tallies.set_deferred(&entry.env, false);
            }
        }
        due
    }

    /// Starts a round: one job per domain with pending recipients, each
    /// queued at its domain. Returns the domains (empty: nothing pending,
    /// the round is over at once and the message is to be finished); None
    /// if the message is not here.
    pub fn dispatch(&mut self, id: MessageId) -> Option<Vec<String>> {
        let entry = self.messages.get_mut(&id)?;
        let by_domain = jobs_by_domain(&entry.env);
        // Bounded by the recipients a message may have (`smtp.max_recipients`).
        entry.jobs = by_domain.len() as u32;
        let lane = entry.env.priority.unwrap_or_default().lane();
        let names: Vec<String> = by_domain.keys().cloned().collect();
        for (domain, rcpts) in by_domain {
            self.domains
                .entry(domain)
                .or_default()
                .ready
                .push(lane, Job { id, rcpts });
        }
        Some(names)
    }

    /// Whether `domain` needs one more worker (within `limit` workers and
    /// the jobs waiting for one); if so, counts it as starting.
    pub fn add_worker(&mut self, domain: &str, limit: usize) -> bool {
        if self.domain_held(domain) {
            return false;
        }
        let q = self.domains.entry(domain.to_string()).or_default();
        if q.ready.len() <= q.starting || q.workers >= limit {
            return false;
        }
        q.workers += 1;
        q.starting += 1;
        true
    }

    /// A worker's next job at `domain`; None retires the worker (nothing
    /// ready, the domain suspended, or `stop`). `first`: the worker's first
    /// call, which ends its starting phase.
    pub fn next_job(&mut self, domain: &str, first: bool, stop: bool) -> Option<Job> {
        let suspended = self.domain_held(domain);
        let q = self
            .domains
            .get_mut(domain)
            .expect("a worker's domain exists");
        if first {
            q.starting -= 1;
        }
        // Checked before popping: a job taken off the queue must be run,
        // or its message would never finish.
        let next = match suspended || stop {
            true => None,
            false => q.ready.pop(self.lane_weights),
        };
        if next.is_none() {
            q.workers -= 1;
        }
        next
    }

    /// A job's attempt begins: its message's envelope, counted in flight;
    /// None if the message was taken out (deleted, bounced) or its
    /// recipients are no longer pending while the job waited.
    pub fn start_job(&mut self, job: &Job) -> Option<Envelope> {
        let entry = self.messages.get_mut(&job.id).filter(|e| {
            job.rcpts
                .iter()
                .all(|&i| e.env.recipients[i].status == RecipientStatus::Pending)
        })?;
        entry.in_flight += 1;
        Some(entry.env.clone())
    }

    /// Applies one job's outcomes to its message: recipient states,
    /// attempts, last replies; permanent failures are kept for the DSN.
    /// `each` sees every recipient's index and outcome after the change (to
    /// log and count it). None if the message is gone.
    pub fn record<'o>(
        &mut self,
        id: MessageId,
        rcpts: &[usize],
        attempt: &'o Attempt,
        mut each: impl FnMut(&Envelope, usize, &'o DeliveryOutcome),
    ) -> Option<Recorded> {
        // A reply that keeps a recipient queued is shared with the others
        // that got it; a delivered one leaves with its message.
        let replies: Vec<Arc<str>> = attempt
            .outcomes
            .iter()
            .take(rcpts.len())
            .map(|o| match o {
                DeliveryOutcome::Delivered { .. } => Arc::from(o.reply()),
                _ => self.interned.get(o.reply()),
            })
            .collect();
        let site = attempt.site.as_deref().map(|s| self.interned.get(s));
        let source = attempt.source.as_deref().map(|s| self.interned.get(s));
        let recorded = self.change(id, |entry| {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            let remote = attempt.remote.as_ref().map(|t| t.host.clone());
            let mut failed = None;
            let mut bounced = false;
            for ((&i, outcome), reply) in rcpts.iter().zip(&attempt.outcomes).zip(replies) {
                let r = &mut entry.env.recipients[i];
                r.attempts += 1;
                r.last_reply = Some(reply);
                // Where a recipient still waiting went last (a delivered
                // one leaves with its message: nothing shows it).
                let delivered = matches!(outcome, DeliveryOutcome::Delivered { .. });
                if site.is_some() && !delivered {
                    r.source.clone_from(&source);
                    r.site.clone_from(&site);
                }
                r.held = attempt.held && matches!(outcome, DeliveryOutcome::Temporary { .. });
                match outcome {
                    DeliveryOutcome::Delivered { reply } => {
                        r.status = RecipientStatus::Delivered;
                        if !attempt.next_hop_dsn && r.notify.is_some_and(|n| n.success()) {
                            entry.push_relayed(Failure {
                                index: i,
                                status: "2.0.0".into(),
                                reply: reply.clone(),
                                remote: remote.clone(),
                            });
                        }
                    }
                    DeliveryOutcome::Temporary { .. } => {}
                    DeliveryOutcome::Permanent { reply, status } => {
                        bounced = true;
                        r.status = RecipientStatus::Failed;
                        entry.push_failure(Failure {
                            index: i,
                            status: status.clone(),
                            reply: reply.clone(),
                            remote: remote.clone(),
                        });
                    }
                }
                if !matches!(outcome, DeliveryOutcome::Delivered { .. }) {
                    failed = Some(outcome.reply().to_string());
                }
                each(&entry.env, i, outcome);
            }
            entry.jobs = entry.jobs.saturating_sub(1);
            let domain = domain_of(&entry.env.recipients[rcpts[0]].address);
            Recorded {
                round_done: entry.jobs == 0,
                bounced,
                failed: failed.map(|reply| (domain, reply)),
            }
        })?;
        Some(recorded)
    }

    /// Finishing a round begins: a copy of the envelope and the round's
    /// failures, the message counted in flight until [`State::end_finish`].
    pub fn begin_finish(
        &mut self,
        id: MessageId,
    ) -> Option<(Envelope, Vec<Failure>, Vec<Failure>)> {
        let entry = self.messages.get_mut(&id)?;
        entry.in_flight += 1;
        let (failures, relayed) = entry.take_notices();
        Some((entry.env.clone(), failures, relayed))
    }

    /// Finishing a round ends: the message leaves (`done`) or waits in the
    /// due-time index with its new envelope.
    pub fn end_finish(&mut self, id: MessageId, env: Envelope, done: bool) -> Option<Entry> {
        if done {
            return self.remove(id);
        }
        self.change(id, |entry| {
            entry.in_flight -= 1;
            entry.env = env;
        });
        self.defer(id);
        None
    }

    /// Takes a message out of the ready queues and the due index, so that
    /// no new attempt starts; refused (false) while an attempt is under
    /// way. Its entry stays until the caller is done.
    pub fn take_out(&mut self, id: MessageId) -> Option<Result<Envelope, ()>> {
        let entry = self.messages.get_mut(&id)?;
        if entry.in_flight > 0 {
            return Some(Err(()));
        }
        entry.jobs = 0;
        let env = entry.env.clone();
        self.undefer(id);
        for r in &env.recipients {
            if let Some(q) = self.domains.get_mut(&domain_of(&r.address)) {
                q.ready.retain(|job| job.id != id);
            }
        }
        Some(Ok(env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Target;
    use crate::queue::IdGenerator;

    fn env(rcpts: &[&str]) -> Envelope {
        Envelope::new(
            "s@x.example".into(),
            rcpts.iter().map(|r| r.to_string()).collect(),
            100,
        )
    }

    fn attempt(outcomes: Vec<DeliveryOutcome>) -> Attempt {
        Attempt {
            outcomes,
            remote: Some(Target::new(
                "mx.a.example".into(),
                "127.0.0.1:25".parse().unwrap(),
            )),
            tls: None,
            source: None,
            site: None,
            next_hop_dsn: false,
            held: false,
            tls_policy: None,
            tls_failure: None,
            suppressed: Vec::new(),
        }
    }

    fn delivered() -> DeliveryOutcome {
        DeliveryOutcome::Delivered {
            reply: "250 ok".into(),
        }
    }

    fn temporary() -> DeliveryOutcome {
        DeliveryOutcome::Temporary {
            reply: "451 later".into(),
        }
    }

    #[test]
    fn a_round_is_one_job_per_domain_and_ends_with_its_last_job() {
        let mut st = State::default();
        let id = IdGenerator::new(0).next_id();
        st.admit(id, env(&["a@a.example", "b@A.example", "c@b.example"]));
        let mut domains = st.dispatch(id).unwrap();
        domains.sort();
        assert_eq!(domains, ["a.example", "b.example"]);
        assert_eq!(st.messages[&id].jobs, 2);

        assert!(st.add_worker("a.example", 5));
        assert!(!st.add_worker("a.example", 5), "one job, one worker");
        let job = st.next_job("a.example", true, false).unwrap();
        assert_eq!(job.rcpts, [0, 1]);
        st.start_job(&job).unwrap();
        assert_eq!(st.messages[&id].in_flight, 1);
        let mut seen = Vec::new();
        let r = st
            .record(
                id,
                &job.rcpts,
                &attempt(vec![delivered(), temporary()]),
                |_, i, _| seen.push(i),
            )
            .unwrap();
        assert_eq!(seen, [0, 1]);
        assert_eq!(
            r,
            Recorded {
                round_done: false,
                bounced: false,
                failed: Some(("a.example".into(), "451 later".into()))
            }
        );
        assert_eq!(st.messages[&id].in_flight, 0);
        assert!(st.next_job("a.example", false, false).is_none());
        assert_eq!(st.domains["a.example"].workers, 0);

        assert!(st.add_worker("b.example", 5));
        let job = st.next_job("b.example", true, false).unwrap();
        st.start_job(&job).unwrap();
        let perm = DeliveryOutcome::Permanent {
            reply: "550 5.1.1 no".into(),
            status: "5.1.1".into(),
        };
        let r = st.record(id, &job.rcpts, &attempt(vec![perm]), |_, _, _| {});
        assert!(r.unwrap().round_done);

        let (env, failures, _) = st.begin_finish(id).unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].index, 2);
        assert_eq!(failures[0].remote.as_deref(), Some("mx.a.example"));
        assert_eq!(st.messages[&id].in_flight, 1);
        // b@A.example is still pending: the message waits for a retry.
        let mut env = env;
        env.next_due = 500;
        assert!(st.end_finish(id, env, false).is_none());
        assert_eq!(st.messages[&id].in_flight, 0);
        assert!(st.messages[&id].deferred);
        let t = st
            .tallies
            .iter()
            .find(|(d, _)| *d == "a.example")
            .unwrap()
            .1;
        assert_eq!((t.messages, t.recipients, t.deferred), (1, 1, 1));
        assert!(st.take_due(499).is_empty());
        assert_eq!(st.take_due(500), [id]);
        assert!(!st.messages[&id].deferred);
    }

    /// A held job is known by the attempt's `held`, not by its reply's
    /// words: a deferral that says "not attempted" for another reason is
    /// not taken when a hold ends, and the mark is in the envelope (it
    /// survives a restart).
    #[test]
    fn held_recipients_are_marked_by_type_and_taken_when_a_hold_ends() {
        let mut st = State::default();
        let mut ids = IdGenerator::new(0);
        let (held_id, other_id) = (ids.next_id(), ids.next_id());
        let mut wait = |id, held: bool| {
            st.admit(id, env(&["a@a.example"]));
            st.dispatch(id).unwrap();
            st.add_worker("a.example", 5);
            let job = st.next_job("a.example", true, false).unwrap();
            st.start_job(&job).unwrap();
            let deferral = Held("site x is suspended".into()).outcome();
            let tried = Attempt {
                held,
                ..attempt(vec![deferral])
            };
            st.record(id, &job.rcpts, &tried, |_, _, _| {});
            let (mut env, _, _) = st.begin_finish(id).unwrap();
            env.next_due = 1_000;
            st.end_finish(id, env, false);
        };
        wait(held_id, true);
        wait(other_id, false);
        assert!(st.messages[&held_id].env.recipients[0].held);
        assert!(!st.messages[&other_id].env.recipients[0].held);
        let encoded = st.messages[&held_id].env.encode();
        assert!(Envelope::decode(&encoded).unwrap().recipients[0].held);
        assert_eq!(st.take_held(), [held_id]);
        assert!(!st.messages[&held_id].deferred);
        assert!(st.messages[&other_id].deferred);
    }

    #[test]
    fn the_admin_cannot_take_out_a_message_in_flight() {
        let mut st = State::default();
        let id = IdGenerator::new(0).next_id();
        st.admit(id, env(&["a@a.example"]));
        st.dispatch(id);
        st.add_worker("a.example", 1);
        let job = st.next_job("a.example", true, false).unwrap();
        st.start_job(&job).unwrap();
        assert_eq!(st.take_out(id), Some(Err(())));
        st.record(id, &job.rcpts, &attempt(vec![temporary()]), |_, _, _| {});
        // Queued again behind a second job: taking out clears the queue.
        st.dispatch(id);
        assert!(matches!(st.take_out(id), Some(Ok(_))));
        assert!(st.domains["a.example"].ready.is_empty());
        assert_eq!(st.messages[&id].jobs, 0);
        // A job that was taken before the message went is not started.
        st.remove(id);
        assert!(st.start_job(&job).is_none());
        assert!(st.tallies.iter().next().is_none());
    }

    #[test]
    fn suspended_domains_and_stop_retire_workers() {
        let mut st = State::default();
        let id = IdGenerator::new(0).next_id();
        st.admit(id, env(&["a@a.example"]));
        st.dispatch(id);
        st.suspended.insert("a.example".into(), None);
        assert!(!st.add_worker("a.example", 1));
        st.suspended.clear();
        assert!(st.add_worker("a.example", 1));
        assert!(st.next_job("a.example", true, true).is_none(), "stopping");
        assert_eq!(st.domains["a.example"].ready.len(), 1, "the job stays");
        assert_eq!(st.domains["a.example"].workers, 0);
    }

    #[test]
    fn compaction_moves_only_deferred_messages_and_reindexes_them() {
        let mut st = State::default();
        let mut ids = IdGenerator::new(0);
        let (a, b) = (ids.next_id(), ids.next_id());
        for id in [a, b] {
            let mut e = env(&["x@a.example"]);
            e.body.segment = 7;
            st.admit(id, e);
        }
        st.defer(a);
        assert_eq!(st.movable_in(&[7]), [a], "b waits for a worker: not moved");
        let (env, waiting) = st.begin_move(a).unwrap();
        assert_eq!(waiting, Waiting::Deferred);
        assert_eq!(env.body.segment, 7);
        assert!(
            st.deferred.is_empty(),
            "out of the due index while it moves"
        );
        assert!(st.take_out(a) == Some(Err(())), "the admin must wait");
        assert!(st.begin_move(a).is_none());
        let mut moved = env.body;
        moved.segment = 9;
        st.end_move(a, Some(moved), waiting);
        assert!(st.messages[&a].deferred);
        assert_eq!(st.messages[&a].env.body.segment, 9);
        assert_eq!(st.by_segment[&7].len(), 1);
        assert!(st.by_segment[&9].contains(&a));
        st.remove(a);
        st.remove(b);
        assert!(st.by_segment.is_empty());
    }

    #[test]
    fn compaction_moves_mail_held_by_a_suspension_and_gives_its_jobs_back() {
        let mut st = State::default();
        let mut ids = IdGenerator::new(0);
        let (a, b) = (ids.next_id(), ids.next_id());
        let mut e = env(&["x@held.example", "y@held.example"]);
        e.body.segment = 7;
        st.admit(a, e);
        let mut e = env(&["x@held.example", "z@open.example"]);
        e.body.segment = 7;
        st.admit(b, e);
        st.suspended.insert("held.example".into(), None);
        st.dispatch(a);
        st.dispatch(b);
        assert_eq!(
            st.movable_in(&[7]),
            [a],
            "b has a job a worker may take (open.example): not moved"
        );
        let (env, waiting) = st.begin_move(a).unwrap();
        assert_eq!(waiting, Waiting::Held);
        assert_eq!(
            st.domains["held.example"].ready.len(),
            1,
            "only b's job left"
        );
        assert!(st.take_out(a) == Some(Err(())), "the admin must wait");
        // Resumed while it moves: no worker finds a's job.
        st.suspended.clear();
        assert!(st.add_worker("held.example", 4));
        assert_eq!(st.next_job("held.example", true, false).unwrap().id, b);
        let mut moved = env.body;
        moved.segment = 9;
        st.end_move(a, Some(moved), waiting);
        assert!(!st.messages[&a].deferred, "not deferred: dispatched again");
        assert_eq!(st.dispatch(a).unwrap(), ["held.example"]);
        assert_eq!(st.next_job("held.example", false, false).unwrap().id, a);
        assert!(st.by_segment[&9].contains(&a));
    }

    #[test]
    fn domains_are_lower_case() {
        assert_eq!(domain_of("A@Example.COM"), "example.com");
        assert_eq!(domain_of("\"a@b\"@c.example"), "c.example");
    }
}
