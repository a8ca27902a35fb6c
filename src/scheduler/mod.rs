//! Per-shard delivery scheduling: ready queues per destination domain,
//! connection limits, retries with back-off, expiry, bounces.
//!
//! Owns: [`Scheduler`], one per shard, which schedules exactly the messages
//! in its shard's spool (share-nothing: no other shard sees them).
//!
//! - A message becomes *jobs*, one per destination domain with pending
//!   recipients, as soon as it is durable ([`Scheduler::submit`]): no
//!   polling delay between the 250 and the first delivery attempt. The
//!   receivers (`smtp_in`, `inject`) hand it over through
//!   [`Scheduler::receive`], which also counts it and writes its Reception
//!   events, so both count the same way.
//! - Each domain has a ready queue and at most its share of
//!   `delivery.max_connections` workers on this shard, paced by its share of
//!   `max_messages_per_second`; a worker takes jobs one after another,
//!   reusing pooled connections (`smtp_out::pool`).
//! - When every job of a message is done, the message is *finished*: if no
//!   recipient is pending it is removed; recipients that failed for good are
//!   bounced (DSN, never for a null sender); if some are still pending it is
//!   deferred with exponential back-off, or expires past `max_age_secs`.
//!   State changes go to the spool at once and are durable within
//!   `queue::commit::FLUSH_INTERVAL` (the timer below flushes): a crash may
//!   lose the last ones, which repeats an attempt (a duplicate), never
//!   loses a message.
//! - Deferred messages wait in a due-time index; their `next_due` is stored
//!   in the envelope, so retry times survive restarts.
//!
//! - The admin API's view of the queue and its operations (flush, delete,
//!   bounce) live in [`control`]; they run on this shard, sent here over the
//!   admin channel (`admin`), like everything else that touches this state.
//!   Per-domain running totals (`tally`) keep its summary O(domains).
//!
//! Must not: open sockets itself (`smtp_out` does), or write sled other than
//! through `queue::Spool`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounce::{self, Failure, Report};
use crate::config::{Config, NextHop};
use crate::dns::{DnsError, Resolver};
use crate::events::{Event, EventKind, EventLog, unix_now};
use crate::queue::{Envelope, MessageId, RecipientStatus, Spool};
use crate::runtime::share;
use crate::runtime::tasks::TaskSet;
use crate::smtp_out::client::Outgoing;
use crate::smtp_out::{Attempt, Delivery, Outcome, Target, targets};

pub mod control;
mod tally;

use tally::Tallies;

/// Jobs one worker task runs before it hands over to a fresh task, so that
/// no task lives for ever: glommio 0.9 counts a task's waker clones in an
/// i16 and panics past 32,767, and a long-lived task is where clones can
/// pile up (see `runtime::run_shard` for the one case found).
const WORKER_JOBS: usize = 256;

/// How often deferred messages are checked and idle connections reaped.
const TICK: Duration = Duration::from_millis(200);

pub struct Scheduler {
    cfg: Arc<Config>,
    spool: Rc<Spool>,
    dns: Resolver,
    delivery: Delivery,
    events: Rc<EventLog>,
    /// This shard's share of `max_connections` per domain.
    connections_per_domain: usize,
    /// This shard's index (a label of per-shard metrics).
    shard: usize,
    /// Time between two messages to one domain from this shard (its share
    /// of `max_messages_per_second`), if limited.
    pace: Option<Duration>,
    state: RefCell<State>,
    tasks: TaskSet,
    /// Set on shutdown: workers take no new jobs.
    draining: std::cell::Cell<bool>,
}

/// One shard's schedule. `messages`, `deferred` and `tallies` change
/// together, only through the methods below, so the running totals always
/// match the messages.
#[derive(Default)]
struct State {
    messages: HashMap<MessageId, Entry>,
    domains: HashMap<String, DomainQueue>,
    deferred: BTreeSet<(u64, MessageId)>,
    tallies: Tallies,
    suspended: HashSet<String>,
}

struct Entry {
    env: Envelope,
    /// Jobs of the current round not yet done.
    jobs: usize,
    /// Recipients that failed for good in this round, for the DSN.
    failures: Vec<(usize, String, String, Option<String>)>,
    /// Jobs of this message with a delivery attempt under way (or its
    /// round being finished).
    in_flight: usize,
    /// In the due-time index, waiting for a retry.
    deferred: bool,
}

#[derive(Default)]
struct DomainQueue {
    ready: VecDeque<Job>,
    workers: usize,
    /// Workers spawned that have not yet taken their first job: each will
    /// take one of `ready`, so `kick` does not start more than there are
    /// jobs for (spawned tasks run only once the spawner yields).
    starting: usize,
    /// Earliest start of the next message when the domain is rate-limited.
    next_slot: Option<Instant>,
    /// The last failure reply from this domain and when (Unix seconds).
    last_error: Option<(u64, String)>,
}

struct Job {
    id: MessageId,
    /// Indices into the envelope's recipients.
    rcpts: Vec<usize>,
}

/// The destination domain of an address, lower-cased.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase()
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

impl State {
    /// A message enters the schedule (not yet in the due-time index).
    fn admit(&mut self, id: MessageId, env: Envelope) {
        self.tallies.count(&env, false, true);
        if let Some(old) = self.messages.insert(id, Entry::new(env)) {
            self.tallies.count(&old.env, old.deferred, false);
        }
    }

    /// A message leaves the schedule.
    fn remove(&mut self, id: MessageId) -> Option<Entry> {
        let entry = self.messages.remove(&id)?;
        self.tallies.count(&entry.env, entry.deferred, false);
        if entry.deferred {
            self.deferred.remove(&(entry.env.next_due, id));
        }
        Some(entry)
    }

    /// Changes a message's entry, keeping the totals right. `None` if the
    /// message is not (or no longer) here.
    fn change<R>(&mut self, id: MessageId, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
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
    fn defer(&mut self, id: MessageId) {
        let Some(entry) = self.messages.get_mut(&id).filter(|e| !e.deferred) else {
            return;
        };
        entry.deferred = true;
        self.deferred.insert((entry.env.next_due, id));
        self.tallies.set_deferred(&entry.env, true);
    }

    /// Takes a message out of the due-time index (to be tried now).
    fn undefer(&mut self, id: MessageId) {
        let Some(entry) = self.messages.get_mut(&id).filter(|e| e.deferred) else {
            return;
        };
        entry.deferred = false;
        self.deferred.remove(&(entry.env.next_due, id));
        self.tallies.set_deferred(&entry.env, false);
    }

    /// After a restart the domains' last errors are known only from the
    /// recipients' last replies: keep one per domain for the summary.
    fn remember_last_errors(&mut self, env: &Envelope) {
        for r in &env.recipients {
            if let (RecipientStatus::Pending, Some(reply)) = (r.status, &r.last_reply) {
                let q = self.domains.entry(domain_of(&r.address)).or_default();
                q.last_error.get_or_insert_with(|| (0, reply.clone()));
            }
        }
    }

    /// Takes every message due at `now` out of the due-time index.
    fn take_due(&mut self, now: u64) -> Vec<MessageId> {
        let due = pop_due(&mut self.deferred, now);
        for id in &due {
            if let Some(entry) = self.messages.get_mut(id) {
                entry.deferred = false;
                self.tallies.set_deferred(&entry.env, false);
            }
        }
        due
    }
}

/// Delay before attempt `attempts + 1`: `initial * 2^(attempts-1)`, capped.
pub fn backoff(attempts: u32, initial: u64, max: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    initial.saturating_mul(1u64 << exp).min(max)
}

impl Scheduler {
    pub fn new(
        cfg: Arc<Config>,
        shard: usize,
        shards: usize,
        spool: Rc<Spool>,
        dns: Resolver,
        events: Rc<EventLog>,
    ) -> Rc<Scheduler> {
        let d = &cfg.delivery;
        let delivery = Delivery {
            helo: cfg.helo_name().to_string(),
            connect_timeout: Duration::from_secs(d.connect_timeout_secs),
            timeout: Duration::from_secs(d.reply_timeout_secs),
            pool: crate::smtp_out::pool::Pool::new(
                Duration::from_secs(d.idle_timeout_secs),
                d.max_messages_per_connection,
            ),
            opportunistic: crate::tls::opportunistic_client(),
            verified: verified_tls(&cfg),
        };
        let rate = d.max_messages_per_second;
        Rc::new(Scheduler {
            shard,
            connections_per_domain: share(d.max_connections, shard, shards),
            pace: (rate > 0.0).then(|| Duration::from_secs_f64(shards.max(1) as f64 / rate)),
            cfg,
            spool,
            dns,
            delivery,
            events,
            state: RefCell::default(),
            tasks: TaskSet::default(),
            draining: std::cell::Cell::new(false),
        })
    }

    /// Takes over every message in the spool (after recovery) and starts the
    /// timer. Due messages are dispatched at once.
    pub fn start(self: &Rc<Self>) {
        let now = unix_now();
        for (id, env) in self.spool.take_recovered() {
            let due = env.next_due;
            queue_gauges(&env, 1.0);
            let mut st = self.state.borrow_mut();
            st.remember_last_errors(&env);
            st.admit(id, env);
            if due <= now {
                drop(st);
                self.dispatch(id);
            } else {
                st.defer(id);
            }
        }
        let me = self.clone();
        self.tasks.spawn(async move { me.run_timer().await });
    }

    /// Shutdown: no new delivery attempts; attempts in flight (and the
    /// state changes they lead to) get until `deadline`; then every task
    /// stops. Messages not finished stay queued.
    pub async fn drain(&self, deadline: Instant) {
        self.draining.set(true);
        // The timer task never ends by itself: wait for everything else.
        self.tasks.wait_until_at_most(1, deadline).await;
        self.tasks.cancel_all();
    }

    /// A message a receiver (SMTP or HTTP injection) just made durable:
    /// counted, logged as received (one Reception per recipient), and
    /// scheduled at once.
    pub fn receive(self: &Rc<Self>, id: MessageId, env: Envelope) {
        ::metrics::counter!(crate::metrics::MESSAGES_RECEIVED).increment(1);
        ::metrics::counter!(crate::metrics::RECIPIENTS_RECEIVED)
            .increment(env.recipients.len() as u64);
        ::metrics::counter!(crate::metrics::BYTES_RECEIVED).increment(env.size());
        self.events.reception(id, &env);
        self.submit(id, env);
    }

    /// A message that was just made durable: schedule it now.
    pub fn submit(self: &Rc<Self>, id: MessageId, env: Envelope) {
        queue_gauges(&env, 1.0);
        self.state.borrow_mut().admit(id, env);
        self.dispatch(id);
    }

    /// Holds deliveries to `domain` until [`Scheduler::resume`].
    pub fn suspend(&self, domain: &str) {
        self.state
            .borrow_mut()
            .suspended
            .insert(domain.to_ascii_lowercase());
    }

    pub fn resume(self: &Rc<Self>, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        self.state.borrow_mut().suspended.remove(&domain);
        self.kick(&domain);
    }

    /// Turns a message's pending recipients into one job per domain.
    fn dispatch(self: &Rc<Self>, id: MessageId) {
        let domains: Vec<String> = {
            let mut st = self.state.borrow_mut();
            let Some(entry) = st.messages.get_mut(&id) else {
                return;
            };
            let by_domain = jobs_by_domain(&entry.env);
            entry.jobs = by_domain.len();
            let names: Vec<String> = by_domain.keys().cloned().collect();
            for (domain, rcpts) in by_domain {
                st.domains
                    .entry(domain)
                    .or_default()
                    .ready
                    .push_back(Job { id, rcpts });
            }
            names
        };
        if domains.is_empty() {
            let me = self.clone();
            self.tasks.spawn(async move { me.finish(id).await });
        }
        for d in domains {
            self.kick(&d);
        }
    }

    /// Starts workers for `domain` up to its connection share.
    fn kick(self: &Rc<Self>, domain: &str) {
        loop {
            {
                let mut st = self.state.borrow_mut();
                if st.suspended.contains(domain) {
                    return;
                }
                let q = st.domains.entry(domain.to_string()).or_default();
                if q.ready.len() <= q.starting || q.workers >= self.connections_per_domain {
                    return;
                }
                q.workers += 1;
                q.starting += 1;
            }
            let me = self.clone();
            let domain = domain.to_string();
            self.tasks.spawn(async move { me.worker(domain).await });
        }
    }

    async fn worker(self: Rc<Self>, domain: String) {
        for done in 0.. {
            let job = {
                let mut st = self.state.borrow_mut();
                let suspended = st.suspended.contains(&domain) || self.draining.get();
                let q = st.domains.get_mut(&domain).expect("worker's domain exists");
                if done == 0 {
                    q.starting -= 1;
                }
                // Checked before popping: a job taken off the queue must be
                // run, or its message would never finish.
                let next = match suspended || done >= WORKER_JOBS {
                    true => None,
                    false => q.ready.pop_front(),
                };
                match next {
                    Some(job) => job,
                    None => {
                        q.workers -= 1;
                        break;
                    }
                }
            };
            if let Some(wait) = self.reserve_slot(&domain) {
                glommio::timer::sleep(wait).await;
            }
            self.run_job(&domain, job).await;
        }
        // A worker retired after WORKER_JOBS hands its place to a new one.
        self.kick(&domain);
    }

    /// Rate limit: books the next free start time for `domain` on this
    /// shard and says how long to wait for it.
    fn reserve_slot(&self, domain: &str) -> Option<Duration> {
        let pace = self.pace?;
        let mut st = self.state.borrow_mut();
        let q = st.domains.get_mut(domain)?;
        let now = Instant::now();
        let start = q.next_slot.map_or(now, |t| t.max(now));
        q.next_slot = Some(start + pace);
        Some(start - now).filter(|w| !w.is_zero())
    }

    async fn run_job(self: &Rc<Self>, domain: &str, job: Job) {
        let env = {
            let mut st = self.state.borrow_mut();
            // A message deleted or bounced by the admin while this job
            // waited: nothing to do, and its round is already closed.
            let Some(entry) = st.messages.get_mut(&job.id).filter(|e| {
                job.rcpts
                    .iter()
                    .all(|&i| e.env.recipients[i].status == RecipientStatus::Pending)
            }) else {
                return;
            };
            entry.in_flight += 1;
            entry.env.clone()
        };
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
        let body = match self.spool.read_body(job.id, &env).await {
            Ok(body) => body,
            Err(e) => {
                // Retried like any temporary failure; expiry bounds it.
                log::error!("{e}");
                let reply = format!("local error reading the queued message: {e}");
                let attempt = Attempt {
                    outcomes: vec![Outcome::Temporary { reply }; rcpts.len()],
                    remote: None,
                    tls: None,
                };
                return self.record(job.id, &job.rcpts, &attempt);
            }
        };
        let wire = crate::proto::client::dot_stuff(body);
        let started = Instant::now();
        let targets = self.targets_for(domain).await;
        ::metrics::histogram!(crate::metrics::DNS_LOOKUP_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let attempt = match targets {
            Ok(targets) => {
                let msg = Outgoing {
                    sender: &env.sender,
                    recipients: &rcpts,
                    wire: &wire,
                    size: env.size(),
                    smtputf8: env.smtputf8,
                    eight_bit: env.eight_bit,
                };
                let started = Instant::now();
                let attempt = self
                    .delivery
                    .attempt(&targets, &msg, self.cfg.tls.policy_for(domain))
                    .await;
                ::metrics::histogram!(crate::metrics::DELIVERY_ATTEMPT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                attempt
            }
            Err(e) => Attempt {
                outcomes: vec![dns_outcome(&e); rcpts.len()],
                remote: None,
                tls: None,
            },
        };
        self.record(job.id, &job.rcpts, &attempt);
    }

    /// Where mail for `domain` goes: a static route, the smarthost, or MX.
    async fn targets_for(&self, domain: &str) -> Result<Vec<Target>, DnsError> {
        let d = &self.cfg.delivery;
        let hop = d
            .routes
            .get(domain)
            .or(Some(&d.smarthost).filter(|s| !s.is_empty()))
            .and_then(|s| NextHop::parse(s).ok());
        match hop {
            Some(NextHop::Addr(addr)) => Ok(vec![Target {
                host: addr.ip().to_string(),
                addr,
            }]),
            Some(NextHop::Host(host, port)) => {
                let addrs = self.dns.host(&host).await?;
                Ok(targets(&[(host, addrs)], port))
            }
            None => {
                let hosts = self.dns.mx(domain).await?;
                let list: Vec<_> = hosts.into_iter().map(|h| (h.name, h.addrs)).collect();
                Ok(targets(&list, d.remote_port))
            }
        }
    }

    /// Applies one job's outcomes to the message; finishes it when its last
    /// job is done.
    fn record(self: &Rc<Self>, id: MessageId, rcpts: &[usize], attempt: &Attempt) {
        let mut st = self.state.borrow_mut();
        let changed = st.change(id, |entry| {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            let remote = attempt.remote.as_ref();
            let mut last_error = None;
            for (&i, outcome) in rcpts.iter().zip(&attempt.outcomes) {
                if !matches!(outcome, Outcome::Delivered { .. }) {
                    last_error = Some(outcome.reply());
                }
                let r = &mut entry.env.recipients[i];
                r.attempts += 1;
                r.last_reply = Some(outcome.reply().to_string());
                let kind = match outcome {
                    Outcome::Delivered { .. } => {
                        ::metrics::counter!(crate::metrics::RECIPIENTS_DELIVERED).increment(1);
                        r.status = RecipientStatus::Delivered;
                        EventKind::Delivery
                    }
                    Outcome::Temporary { .. } => {
                        ::metrics::counter!(crate::metrics::RECIPIENTS_DEFERRED).increment(1);
                        EventKind::TransientFailure
                    }
                    Outcome::Permanent { reply, status } => {
                        ::metrics::counter!(crate::metrics::RECIPIENTS_BOUNCED).increment(1);
                        r.status = RecipientStatus::Failed;
                        entry.failures.push((
                            i,
                            status.clone(),
                            reply.clone(),
                            remote.map(|t| t.host.clone()),
                        ));
                        continue; // logged as Bounce when the DSN is queued
                    }
                };
                let mut ev = Event::new(kind, id, &entry.env.sender, &r.address);
                ev.remote_host = remote.map(|t| t.host.as_str());
                ev.remote_ip = remote.map(|t| t.addr.ip().to_string());
                ev.reply = Some(outcome.reply());
                ev.attempt = Some(r.attempts);
                ev.tls = attempt.tls.as_deref();
                self.events.write(&ev);
            }
            entry.jobs = entry.jobs.saturating_sub(1);
            let domain = domain_of(&entry.env.recipients[rcpts[0]].address);
            (entry.jobs == 0, last_error.map(|e| (domain, e.to_string())))
        });
        let Some((done, last_error)) = changed else {
            return;
        };
        if let Some((domain, reply)) = last_error {
            st.domains.entry(domain).or_default().last_error = Some((unix_now(), reply));
        }
        drop(st);
        if done {
            let me = self.clone();
            self.tasks.spawn(async move { me.finish(id).await });
        }
    }

    /// After the last job of a round: bounce, remove, or defer.
    async fn finish(self: Rc<Self>, id: MessageId) {
        let now = unix_now();
        // Counted as in flight until done, so that the admin cannot delete
        // the message while its new state is being written.
        let taken = self.state.borrow_mut().messages.get_mut(&id).map(|entry| {
            entry.in_flight += 1;
            (entry.env.clone(), std::mem::take(&mut entry.failures))
        });
        let Some((mut env, mut failures)) = taken else {
            return;
        };
        let pending = env
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Pending);
        let expired = pending && now >= env.created.saturating_add(self.cfg.delivery.max_age_secs);
        if expired {
            for (i, r) in env.recipients.iter_mut().enumerate() {
                if r.status == RecipientStatus::Pending {
                    ::metrics::counter!(crate::metrics::RECIPIENTS_EXPIRED).increment(1);
                    r.status = RecipientStatus::Failed;
                    let last = r.last_reply.clone().unwrap_or_default();
                    failures.push((
                        i,
                        "4.4.7".into(),
                        format!("message expired; last error: {last}"),
                        None,
                    ));
                    let mut ev = Event::new(EventKind::Expiration, id, &env.sender, &r.address);
                    ev.reply = r.last_reply.as_deref();
                    ev.attempt = Some(r.attempts);
                    self.events.write(&ev);
                }
            }
        }
        if !failures.is_empty() {
            self.bounce(id, &env, &failures, expired).await;
        }
        let all_final = env
            .recipients
            .iter()
            .all(|r| r.status != RecipientStatus::Pending);
        let result = if all_final {
            self.spool.remove(id, &env.body).await
        } else {
            env.attempts += 1;
            let d = &self.cfg.delivery;
            env.next_due = now + backoff(env.attempts, d.retry_initial_secs, d.retry_max_secs);
            self.spool.update(id, &env).await
        };
        if let Err(e) = result {
            // The old record stays; the message is retried from it.
            log::error!("{e}");
        }
        let mut st = self.state.borrow_mut();
        if all_final {
            queue_gauges(&env, -1.0);
            st.remove(id);
        } else {
            st.change(id, |entry| {
                entry.in_flight -= 1;
                entry.env = env;
            });
            st.defer(id);
        }
    }

    /// Queues a DSN to the sender for `failures` (never for a null sender).
    async fn bounce(
        self: &Rc<Self>,
        id: MessageId,
        env: &Envelope,
        failures: &[(usize, String, String, Option<String>)],
        expired: bool,
    ) {
        for (i, _, reply, remote) in failures {
            let mut ev = Event::new(
                EventKind::Bounce,
                id,
                &env.sender,
                &env.recipients[*i].address,
            );
            ev.reply = Some(reply);
            ev.remote_host = remote.as_deref();
            ev.attempt = Some(env.recipients[*i].attempts);
            self.events.write(&ev);
        }
        if env.sender.is_empty() {
            log::info!("{id}: not bouncing a message from the null sender");
            return;
        }
        let original = self.spool.read_body(id, env).await.unwrap_or_default();
        let list: Vec<Failure> = failures
            .iter()
            .map(|(i, status, diag, remote)| Failure {
                recipient: &env.recipients[*i].address,
                status,
                diagnostic: diag,
                remote_mta: remote.as_deref(),
            })
            .collect();
        let id_text = id.to_string();
        let dsn = bounce::build(
            &Report {
                reporting_mta: &self.cfg.server.hostname,
                original_id: &id_text,
                original_sender: &env.sender,
                arrival: env.created,
                expired,
                failures: &list,
            },
            &original,
        );
        let mut dsn_env = Envelope::new(String::new(), vec![env.sender.clone()], unix_now());
        dsn_env.smtputf8 = env.smtputf8;
        let dsn_id = self.spool.new_id();
        match self.spool.enqueue(dsn_id, dsn_env, dsn).await {
            Ok(stored) => {
                self.events.reception(dsn_id, &stored);
                self.submit(dsn_id, stored);
            }
            Err(e) => log::error!("{id}: cannot queue bounce: {e}"),
        }
    }

    async fn run_timer(self: Rc<Self>) {
        let mut ticks = 0u64;
        let mut published = HashSet::new();
        let mut flushed = Instant::now();
        loop {
            glommio::timer::sleep(TICK).await;
            // Timed from the start of the last flush, so the flush's own
            // duration does not stretch the interval.
            if flushed.elapsed() >= crate::queue::commit::FLUSH_INTERVAL {
                flushed = Instant::now();
                self.spool.flush().await;
            }
            let now = unix_now();
            let due = self.state.borrow_mut().take_due(now);
            for id in due {
                self.dispatch(id);
            }
            ticks += 1;
            if ticks % 25 == 1 {
                self.delivery.pool.reap();
                self.publish_domain_depths(&mut published);
            }
        }
    }
}

/// Domains with their own series in the per-domain depth gauge; the rest
/// are summed as "other", so the metric's cardinality stays bounded.
const TOP_DOMAINS: usize = 10;

impl Scheduler {
    /// Sets this shard's per-domain queue depth gauges (top domains by
    /// pending recipients, plus "other"); domains that left the top go to 0.
    fn publish_domain_depths(&self, published: &mut HashSet<String>) {
        let mut ranked: Vec<(String, usize)> = self
            .state
            .borrow()
            .tallies
            .iter()
            .map(|(d, t)| (d.clone(), t.recipients))
            .collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other: usize = ranked.iter().skip(TOP_DOMAINS).map(|(_, n)| n).sum();
        ranked.truncate(TOP_DOMAINS);
        ranked.push(("other".into(), other));
        let shard = self.shard.to_string();
        let now: HashSet<String> = ranked.iter().map(|(d, _)| d.clone()).collect();
        for gone in published.difference(&now) {
            ::metrics::gauge!(crate::metrics::QUEUE_DOMAIN_RECIPIENTS, "domain" => gone.clone(), "shard" => shard.clone()).set(0.0);
        }
        for (domain, n) in ranked {
            ::metrics::gauge!(crate::metrics::QUEUE_DOMAIN_RECIPIENTS, "domain" => domain, "shard" => shard.clone()).set(n as f64);
        }
        *published = now;
    }
}

impl Entry {
    fn new(env: Envelope) -> Entry {
        Entry {
            env,
            jobs: 0,
            failures: Vec::new(),
            in_flight: 0,
            deferred: false,
        }
    }
}

/// The verified-TLS client config when some destination requires it. A CA
/// file that does not load was reported at start-up (`runtime::start`).
fn verified_tls(cfg: &Config) -> Option<Arc<rustls::ClientConfig>> {
    if !cfg.tls.requires_verification() {
        return None;
    }
    crate::tls::verified_client(cfg.tls.ca_file.as_ref()).ok()
}

/// Queue depth gauges: all shards add and remove their messages.
fn queue_gauges(env: &Envelope, sign: f64) {
    ::metrics::gauge!(crate::metrics::QUEUE_MESSAGES).increment(sign);
    ::metrics::gauge!(crate::metrics::QUEUE_BYTES).increment(sign * env.size() as f64);
}

fn dns_outcome(e: &DnsError) -> Outcome {
    if e.is_permanent() {
        Outcome::permanent(e.status(), &e.to_string())
    } else {
        Outcome::Temporary {
            reply: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff(1, 60, 3600), 60);
        assert_eq!(backoff(2, 60, 3600), 120);
        assert_eq!(backoff(7, 60, 3600), 3600);
        assert_eq!(backoff(u32::MAX, 60, 3600), 3600);
    }

    #[test]
    fn domains_are_lower_case() {
        assert_eq!(domain_of("A@Example.COM"), "example.com");
        assert_eq!(domain_of("\"a@b\"@c.example"), "c.example");
    }
}
