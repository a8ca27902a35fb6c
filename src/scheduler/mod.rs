//! Per-shard delivery scheduling: ready queues per destination domain,
//! connection limits and pacing, rounds of delivery attempts, retries,
//! expiry and bounces.
//!
//! Owns: [`Scheduler`], one per shard, which schedules exactly the messages
//! in its shard's spool (share-nothing: no other shard sees them).
//!
//! - A message becomes *jobs*, one per destination domain with pending
//!   recipients, as soon as it is durable ([`Scheduler::submit`], called
//!   by the reception door): no polling delay between the 250 and the
//!   first delivery attempt.
//! - Each domain has a ready queue and workers that take its jobs one
//!   after another. A job's attempt resolves the domain's *site* (its MX
//!   hosts, `shaping`), picks a source of the message's egress pool, and
//!   waits at the path's gate (`gate`: this shard's share of the path's
//!   connections and rate, from the shaping rules) before it reads the
//!   body and delivers over a pooled or new connection (`outbound::pool`).
//! - When every job of a message is done, the round is over: [`retry`]
//!   decides whether the message is done, retried later or expired;
//!   recipients that failed for good are bounced ([`bounce`] builds the
//!   DSN, which goes to the reception door like any other message). State
//!   changes go to the spool at once and are durable within the spool's
//!   flush interval: a crash may lose the last ones, which repeats an
//!   attempt (a duplicate), never loses a message.
//! - Deferred messages wait in a due-time index; their `next_due` is
//!   stored in the envelope, so retry times survive restarts.
//! - Receivers' "slow down" replies trigger `[backoff]` rules ([`backoff`]):
//!   the shard that hears one suspends or bounces the domain, or
//!   throttles (AIMD) the path the reply came over, and tells the other
//!   shards over the shard mesh to do the same.
//!
//! Files, by step: this one keeps the shard's [`Scheduler`], its loop
//! (timer, workers, dispatch) and the holds; `attempt` makes one delivery
//! attempt (site, holds, source, the path's gate, the body read and made
//! the DATA wire once for every try, delivery), with `tls_policy` (the
//! receivers' DANE records and MTA-STS policy applied to its targets,
//! and `tls_reports`, the daily TLS reports of what came of them);
//! `suppressed` fails, untried, the recipients suppressed since their
//! message was queued; `record` applies its
//! outcomes (state, categories, suppression, the delivery log, `[backoff]`
//! rules); `finish` ends a round (retry or expiry, DSNs, removal);
//! `compact` moves bodies out of sparse segments. Beside them:
//! [`state`] (the schedule as data and its accounting, unit-tested,
//! with [`interned`]: one copy of the strings queued envelopes repeat),
//! [`gate`] (admission per path), [`shaping`] (sites and the shaping
//! rules, pure), [`reload`] (new shaping rules for every shard),
//! [`backoff`] (reply-driven rules and the AIMD throttle, pure),
//! [`caps`] (hourly and daily caps, counted by the node's [`book`]),
//! [`select`] and [`bulk`] (the messages a selector matches, and what
//! the admin's bulk actions do to them), [`rules`] (the admin's bounce
//! rules, which catch new and queued mail for a while),
//! [`retry`] (pure retry decisions), [`bounce`] (the DSN for a round's
//! failures), [`operations`] (the admin API's views and actions, run on
//! this shard), [`tally`] (per-domain running totals), [`shared`] (the
//! connection leases and rate tokens each path's authority gives: the
//! node's [`book`], or Redis with `[cluster]`; shared suspensions).
//!
//! May call: `queue` (update, remove, read, the kept trees), `outbound`
//! (routing and one attempt), `classify` (failure categories), `dsn`
//! (notices), `suppression`, `events`, `history` (what became of the
//! messages that left: [`find`], with the queue's own [`index`]), `mta_sts` (policies),
//! `dane` (receivers' TLSA records), `tlsrpt` (TLS reports), `cluster`
//! (Redis: tokens, leases, suspensions), `config`, `metrics`, `shard` (the
//! mesh: back-off notices, the node's book).
//! Must not: open sockets itself, or write sled other than through
//! `queue::Spool`.

mod attempt;
pub mod backoff;
pub mod book;
pub mod bounce;
pub mod bulk;
mod caps;
mod compact;
pub mod find;
mod finish;
pub mod gate;
pub mod index;
pub mod interned;
pub mod lanes;
pub mod operations;
pub mod overview;
mod record;
pub mod reload;
mod remember;
pub mod retry;
pub mod rules;
pub mod select;
pub mod shaping;
pub mod shared;
pub mod state;
pub mod stored;
mod suppressed;
mod tally;
mod tls_policy;
mod tls_reports;
pub mod tls_status;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::events::EventLog;
use crate::outbound::Delivery;
use crate::outbound::route::Router;
use crate::queue::{Envelope, MessageId, NewMessage, Spool, SpoolError};
use crate::shard::clock::Clock;
use crate::shard::log_limit::LogLimit;
use crate::shard::mesh::Mesh;
use crate::shard::tasks::TaskSet;
use record::bounced_by_rule;
use retry::RetryPolicy;
use state::{Hold, Job, State};

/// Jobs one worker task runs before it hands over to a fresh task, so that
/// no task lives for ever: glommio 0.9 counts a task's waker clones in an
/// i16 and panics past 32,767, and a long-lived task is where clones can
/// pile up (see `server` for the one case found).
const WORKER_JOBS: usize = 256;

/// How often deferred messages are checked and idle connections reaped.
const TICK: Duration = Duration::from_millis(200);

/// What a shard's scheduler is built from.
pub struct Wiring {
    pub cfg: Arc<Config>,
    pub shard: usize,
    pub shards: usize,
    pub spool: Rc<Spool>,
    pub router: Router,
    pub delivery: Delivery,
    pub events: Rc<EventLog>,
    /// The shard's webhook events (the admin API lists and replays the
    /// refused ones).
    pub outbox: Rc<crate::events::outbox::Outbox>,
    pub clock: Clock,
    /// Gives every failure its category (shared by every shard).
    pub classifier: Arc<crate::classify::Classifier>,
    /// Where recipients that bounced for good are suppressed.
    pub suppressions: Option<Arc<crate::suppression::SuppressionList>>,
    /// Every shard's scheduler: a back-off one shard takes, all take.
    pub mesh: Mesh<Scheduler>,
    /// The shaping rules at start-up (`delivery.shaping_file`).
    pub shaping: Arc<shaping::Shaping>,
    /// The limits shared with a fleet through Redis (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Every shard's book of the node's path limits (`book`).
    pub book: Mesh<book::LimitBook>,
    /// Receivers' MTA-STS policies (`tls.mta_sts`), if applied.
    pub sts: Option<crate::outbound::sts::Policies>,
}

pub struct Scheduler {
    cfg: Arc<Config>,
    spool: Rc<Spool>,
    router: Router,
    delivery: Delivery,
    /// Receivers' MTA-STS policies (`tls.mta_sts`), if applied.
    sts: Option<crate::outbound::sts::Policies>,
    events: Rc<EventLog>,
    outbox: Rc<crate::events::outbox::Outbox>,
    /// Holds and capped paths' counts kept in the spool.
    holds: stored::StoredHolds,
    /// The administrator's bounce rules in force (stored with the holds).
    bounce_rules: RefCell<Vec<rules::BounceRule>>,
    path_counts: stored::StoredPathCounts,
    clock: Clock,
    classifier: Arc<crate::classify::Classifier>,
    suppressions: Option<Arc<crate::suppression::SuppressionList>>,
    /// `[backoff]` rules, their expressions compiled.
    backoff: backoff::Rules,
    mesh: Mesh<Scheduler>,
    retry: RetryPolicy,
    /// Workers per domain before its site is known:
    /// `delivery.max_connections` (the gates hold them to the leases).
    default_capacity: usize,
    /// This shard's index (a label of per-shard metrics).
    shard: usize,
    /// How many shards the node runs.
    shards: usize,
    /// The shaping rules; a reload replaces them ([`Scheduler::set_shaping`]).
    shaping: RefCell<Arc<shaping::Shaping>>,
    /// `[delivery]`'s limits: a site no rule fits gets these.
    base_limits: shaping::Limits,
    /// Connections and pacing per path (source, site).
    gates: RefCell<gate::Gates>,
    /// With `[cluster]`: Redis.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The node's books of path limits, by owner shard.
    book: Mesh<book::LimitBook>,
    /// The leases held, from whichever authority.
    leases: RefCell<shared::SharedLeases>,
    /// Wakes the leases' keeper (a worker waits where no lease is held),
    /// and the keeper's end of it, until it starts.
    poke: flume::Sender<()>,
    poked: RefCell<Option<flume::Receiver<()>>>,
    state: RefCell<State>,
    tasks: TaskSet,
    /// Set on shutdown: workers take no new jobs.
    draining: Cell<bool>,
    /// Where this shard keeps its TLS report counts (`tls_reports`), and
    /// what it last wrote there.
    tls_kept: crate::queue::kept::Kept,
    tls_saved: RefCell<Vec<u8>>,
    /// Shard 0: the UTC day whose start was last looked at for reports
    /// of the days before it.
    tls_report_day: Cell<u64>,
    /// Delivery status notifications on their way to the reception door;
    /// closed at the end of the drain.
    notifications: RefCell<Option<flume::Sender<NewMessage>>>,
    /// Spool errors repeat for every message while a disk is full or
    /// failing: logged once, then counted.
    spool_errors_logged: LogLimit,
    /// A compaction pass is under way.
    compacting: Cell<bool>,
    /// What became of the messages that left the queue (`[history]`).
    history: crate::history::History,
    /// Messages in and recipients out, per minute (the status page).
    traffic: overview::Traffic,
    /// Per path: its recent attempts and last failure (the status page).
    path_stats: RefCell<std::collections::HashMap<gate::PathKey, overview::PathStats>>,
    /// Per destination domain: its receivers' TLS as met (`queue summary`,
    /// the status page).
    tls_book: RefCell<tls_status::TlsBook>,
}

impl Scheduler {
    /// A shard's scheduler, and the stream of DSNs it will make, for the
    /// reception door to queue.
    pub fn new(w: Wiring) -> (Rc<Scheduler>, flume::Receiver<NewMessage>) {
        let d = &w.cfg.delivery;
        let weights = w.cfg.priority.weights();
        let (tx, rx) = flume::unbounded();
        let (poke, poked) = flume::bounded(1);
        let tls_kept = w.spool.kept(crate::queue::KeptTree::TlsReports);
        let scheduler = Scheduler {
            default_capacity: d.max_connections,
            shaping: RefCell::new(w.shaping),
            base_limits: shaping::Limits::of(d),
            gates: RefCell::new(gate::Gates::new(w.shard, w.shards, weights)),
            cluster: w.cluster,
            book: w.book,
            leases: RefCell::default(),
            poke,
            poked: RefCell::new(Some(poked)),
            retry: RetryPolicy::of(d),
            shard: w.shard,
            backoff: backoff::Rules::new(&w.cfg.backoff.rules),
            mesh: w.mesh,
            history: crate::history::History::open(&w.spool, &w.cfg.history, w.shards),
            traffic: overview::Traffic::default(),
            path_stats: RefCell::default(),
            tls_book: RefCell::default(),
            cfg: w.cfg,
            holds: stored::StoredHolds::of(&w.spool),
            path_counts: stored::StoredPathCounts::of(&w.spool),
            spool: w.spool,
            outbox: w.outbox,
            router: w.router,
            delivery: w.delivery,
            sts: w.sts,
            events: w.events,
            clock: w.clock,
            classifier: w.classifier,
            suppressions: w.suppressions,
            state: RefCell::new(State {
                lane_weights: weights,
                ..State::default()
            }),
            tasks: TaskSet::default(),
            draining: Cell::new(false),
            notifications: RefCell::new(Some(tx)),
            tls_kept,
            tls_saved: RefCell::new(Vec::new()),
            tls_report_day: Cell::new(0),
            spool_errors_logged: LogLimit::new(Duration::from_secs(10)),
            compacting: Cell::new(false),
            bounce_rules: RefCell::new(Vec::new()),
            shards: w.shards,
        };
        (Rc::new(scheduler), rx)
    }

    /// Takes over a message recovery found, before [`Scheduler::start`]:
    /// it waits for its due time, or, when due by `now`, the answer is
    /// true and the caller hands its id to `start`, which dispatches it.
    /// (Recovery streams messages here one by one: see
    /// `Spool::recover_each`.)
    pub fn take_over(&self, id: MessageId, env: Envelope, now: u64) -> bool {
        let due = env.next_due <= now;
        queue_gauges(&env, 1.0);
        let mut st = self.state.borrow_mut();
        st.remember_last_errors(&env);
        st.admit(id, env);
        if !due {
            st.defer(id);
        }
        due
    }

    /// Takes over the stored suspensions, dispatches the recovered
    /// messages that are due (`due`: see [`Scheduler::take_over`]), and
    /// starts the timer.
    pub fn start(self: &Rc<Self>, due: Vec<MessageId>) {
        for (key, until) in self.holds.all() {
            match rules::is_rule_key(&key) {
                true => {
                    if let Some(rule) = rules::BounceRule::of_key(&key, until) {
                        self.put_rule(rule);
                    }
                }
                false => {
                    self.state.borrow_mut().suspended.insert(key, until);
                }
            }
        }
        let stored = caps::stored_paths(self.path_counts.all());
        for (path, counts) in &stored {
            self.gates.borrow_mut().seed(path.clone(), *counts);
        }
        let me = self.clone();
        self.tasks.spawn(async move { me.seed_caps(stored).await });
        for id in due {
            self.dispatch(id);
        }
        // Counts kept from before a restart; days among them that ended
        // while the node was down are reported at the first look (the
        // report day starts at 0).
        self.load_tls_sessions();
        let me = self.clone();
        self.tasks.spawn(async move { me.run_timer().await });
        if let Some(poked) = self.poked.borrow_mut().take() {
            let me = self.clone();
            self.tasks.spawn(async move { me.run_shared(poked).await });
        }
    }

    /// Shutdown: no new delivery attempts; attempts in flight (and the
    /// state changes they lead to) get until `deadline`; then every task
    /// stops and the DSN stream closes. Messages not finished stay queued.
    pub async fn drain(&self, deadline: Instant) {
        self.draining.set(true);
        // The timer task and the leases' keeper never end by themselves:
        // wait for everything else.
        let endless = 2;
        self.tasks.wait_until_at_most(endless, deadline).await;
        self.stop_keeper().await;
        self.tasks.cancel_all();
        self.release_leases().await;
        self.notifications.borrow_mut().take();
        self.save_tls_sessions();
        self.seal_history();
    }

    /// A message the reception door just made durable: schedule it now.
    pub fn submit(self: &Rc<Self>, id: MessageId, env: Envelope) {
        queue_gauges(&env, 1.0);
        let now = self.clock.now();
        self.traffic.count(now, overview::Flow::In, 1);
        let scheduled = env.next_due > now;
        let mut st = self.state.borrow_mut();
        st.admit(id, env);
        // Scheduled delivery: in the due-time index until its time, like
        // a message waiting for a retry.
        if scheduled {
            st.defer(id);
            return;
        }
        drop(st);
        self.dispatch(id);
    }

    /// Holds deliveries to a domain, a site, or from an egress source or
    /// pool (`kind` `name`), until [`Scheduler::resume`] or, if given, for
    /// `secs` seconds. Stored in the spool first: a suspension survives a
    /// restart. Returns when it ends, if it does.
    pub async fn suspend(
        &self,
        kind: Hold,
        name: &str,
        secs: Option<u64>,
    ) -> Result<Option<u64>, SpoolError> {
        let key = kind.key(name);
        let until = secs.map(|s| self.clock.now().saturating_add(s));
        self.holds.set(&key, Some(until)).await?;
        self.state.borrow_mut().suspended.insert(key.clone(), until);
        self.publish_hold(&key, Some(until)).await;
        Ok(until)
    }

    /// Ends a suspension, durably, and delivers what it held.
    pub async fn resume(self: &Rc<Self>, kind: Hold, name: &str) -> Result<(), SpoolError> {
        let key = kind.key(name);
        self.holds.set(&key, None).await?;
        self.state.borrow_mut().suspended.remove(&key);
        self.publish_hold(&key, None).await;
        self.released(&key);
        Ok(())
    }

    /// A suspension (by its key) ended: a domain's workers start again;
    /// for a site, every domain of it; and messages that waited for any
    /// hold ([`state::Held`]) are tried now.
    fn released(self: &Rc<Self>, key: &str) {
        let domains: Vec<String> = match Hold::of_key(key) {
            (Hold::Domain, domain) => vec![domain.to_string()],
            (Hold::Site, site) => self
                .state
                .borrow()
                .domains
                .iter()
                .filter(|(_, q)| q.site.as_deref() == Some(site))
                .map(|(d, _)| d.clone())
                .collect(),
            _ => Vec::new(),
        };
        for domain in domains {
            self.kick(&domain);
        }
        let held = self.state.borrow_mut().take_held();
        for id in held {
            self.dispatch(id);
        }
    }

    /// Ends the suspensions whose time is up (the timer calls it).
    async fn end_expired_suspensions(self: &Rc<Self>, now: u64) {
        let ended = self.state.borrow_mut().take_expired_suspensions(now);
        for key in ended {
            log::info!("suspension of {key} ended");
            if let Err(e) = self.holds.set(&key, None).await {
                log::error!("ending the suspension of {key}: {e}");
            }
            self.publish_hold(&key, None).await;
            self.released(&key);
        }
    }

    /// Turns a message's pending recipients into one job per domain.
    fn dispatch(self: &Rc<Self>, id: MessageId) {
        if self.caught_by_rule(id) {
            return;
        }
        let Some(domains) = self.state.borrow_mut().dispatch(id) else {
            return;
        };
        if domains.is_empty() {
            self.spawn_finish(id);
        }
        for d in domains {
            self.kick(&d);
        }
    }

    /// Starts workers for `domain` up to its connection share; none once
    /// draining (a worker would find no job and kick again: a busy loop
    /// for the whole grace period of a stop with mail queued).
    fn kick(self: &Rc<Self>, domain: &str) {
        if self.draining.get() {
            return;
        }
        while {
            let limit = self.connection_limit(domain);
            self.state.borrow_mut().add_worker(domain, limit)
        } {
            let me = self.clone();
            let domain = domain.to_string();
            self.tasks.spawn(async move { me.worker(domain).await });
        }
    }

    /// This shard's workers for `domain`: enough for every connection its
    /// site's paths allow, once the site is known.
    fn connection_limit(&self, domain: &str) -> usize {
        self.state
            .borrow()
            .domains
            .get(domain)
            .and_then(|q| q.capacity)
            .unwrap_or(self.default_capacity)
    }

    async fn worker(self: Rc<Self>, domain: String) {
        for done in 0.. {
            // A worker over a lowered limit retires.
            let over = done > 0
                && self
                    .state
                    .borrow()
                    .domains
                    .get(&domain)
                    .map_or(0, |q| q.workers)
                    > self.connection_limit(&domain);
            let stop = self.draining.get() || done >= WORKER_JOBS || over;
            let Some(job) = self.state.borrow_mut().next_job(&domain, done == 0, stop) else {
                break;
            };
            self.run_job(&domain, job).await;
        }
        // A worker retired after WORKER_JOBS hands its place to a new one.
        self.kick(&domain);
    }

    /// Replaces the shaping rules (a reload): paths take their new limits
    /// as their next message starts; nothing queued is touched.
    pub fn set_shaping(&self, shaping: Arc<shaping::Shaping>) {
        *self.shaping.borrow_mut() = shaping;
    }

    async fn run_job(self: &Rc<Self>, domain: &str, job: Job) {
        let Some(env) = self.state.borrow_mut().start_job(&job) else {
            return;
        };
        // A drain sends everything to the peer: no `[backoff]` bounce,
        // and the peer's refusals keep the message queued.
        let handing_over = self.handing_over();
        let bouncing = self.state.borrow().bouncing.get(domain).cloned();
        let attempt = match bouncing.filter(|b| b.until > Instant::now() && !handing_over) {
            Some(b) => bounced_by_rule(domain, &b.reply, job.rcpts.len()),
            None => self.attempt_unsuppressed(domain, &job, &env).await,
        };
        self.tls_book
            .borrow_mut()
            .note(domain, &attempt, self.clock.now());
        let attempt = match handing_over {
            true => attempt.kept_for_drain(),
            false => attempt,
        };
        self.record(job.id, &job.rcpts, &attempt);
    }

    async fn run_timer(self: Rc<Self>) {
        let mut ticks = 0u64;
        let mut published = HashSet::new();
        loop {
            glommio::timer::sleep(TICK).await;
            let now = self.clock.now();
            self.end_expired_suspensions(now).await;
            self.end_expired_rules(now).await;
            self.end_expired_backoffs();
            self.tick_history();
            let due = self.state.borrow_mut().take_due(now);
            for id in due {
                self.dispatch(id);
            }
            ticks += 1;
            if ticks % 25 == 1 {
                self.delivery.pool.reap();
                self.publish_domain_depths(&mut published);
                self.report_ended_days().await;
            }
            if ticks.is_multiple_of(tls_reports::SAVE_EVERY_TICKS) {
                self.save_tls_sessions();
            }
            if ticks.is_multiple_of(5) && !self.compacting.get() && !self.draining.get() {
                let me = self.clone();
                self.tasks.spawn(async move { me.compact().await });
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

/// Queue depth gauges: all shards add and remove their messages.
fn queue_gauges(env: &Envelope, sign: f64) {
    ::metrics::gauge!(crate::metrics::QUEUE_MESSAGES).increment(sign);
    ::metrics::gauge!(crate::metrics::QUEUE_BYTES).increment(sign * env.size() as f64);
}
