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
//! Files: [`state`] (the schedule as data and its accounting, unit-tested),
//! [`gate`] (admission per path), [`shaping`] (sites and the shaping
//! rules, pure), [`reload`] (new shaping rules for every shard),
//! [`backoff`] (reply-driven rules and the AIMD throttle, pure),
//! [`retry`] (pure retry decisions), [`bounce`] (the DSN for a round's
//! failures), [`operations`] (the admin API's views and actions, run on
//! this shard), [`tally`] (per-domain running totals), [`shared`] (the
//! connection leases and rate tokens each path's authority gives: the
//! node's [`book`], or Redis with `[cluster]`; shared suspensions).
//!
//! May call: `queue` (update, remove, read), `outbound` (routing and one
//! attempt), `events`, `metrics`, `shard::mesh` (back-off notices, the
//! node's book), `cluster` (Redis: tokens, leases, suspensions). Must
//! not: open sockets itself, or write sled other than through
//! `queue::Spool`.

pub mod backoff;
pub mod book;
pub mod bounce;
pub mod gate;
pub mod lanes;
pub mod operations;
pub mod reload;
pub mod retry;
pub mod shaping;
pub mod shared;
pub mod state;
mod tally;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dsn::NoticeKind;
use crate::events::{Event, EventKind, EventLog};
use crate::outbound::client::Outgoing;
use crate::outbound::route::Router;
use crate::outbound::{Attempt, Delivery, DeliveryOutcome, outcome};
use crate::queue::{Envelope, MessageId, NewMessage, RecipientStatus, Spool, SpoolError};
use crate::shard::clock::Clock;
use crate::shard::log_limit::LogLimit;
use crate::shard::mesh::Mesh;
use crate::shard::tasks::TaskSet;
use retry::{RetryPolicy, RoundEnd};
use state::{Failure, Hold, Job, State};

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
    pub clock: Clock,
    /// Gives every failure its category (shared by every shard).
    pub classifier: Arc<crate::classify::Classifier>,
    /// Where recipients that bounced for good are suppressed.
    pub suppressions: Option<Arc<crate::queue::suppression::SuppressionList>>,
    /// Every shard's scheduler: a back-off one shard takes, all take.
    pub mesh: Mesh<Scheduler>,
    /// The shaping rules at start-up (`delivery.shaping_file`).
    pub shaping: Arc<shaping::Shaping>,
    /// The limits shared with a fleet through Redis (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Every shard's book of the node's path limits (`book`).
    pub book: Mesh<book::LimitBook>,
}

pub struct Scheduler {
    cfg: Arc<Config>,
    spool: Rc<Spool>,
    router: Router,
    delivery: Delivery,
    events: Rc<EventLog>,
    clock: Clock,
    classifier: Arc<crate::classify::Classifier>,
    suppressions: Option<Arc<crate::queue::suppression::SuppressionList>>,
    /// `[backoff]` rules, their expressions compiled.
    backoff: backoff::Rules,
    mesh: Mesh<Scheduler>,
    retry: RetryPolicy,
    /// Workers per domain before its site is known:
    /// `delivery.max_connections` (the gates hold them to the leases).
    default_capacity: usize,
    /// This shard's index (a label of per-shard metrics).
    shard: usize,
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
    /// Delivery status notifications on their way to the reception door;
    /// closed at the end of the drain.
    notifications: RefCell<Option<flume::Sender<NewMessage>>>,
    /// Spool errors repeat for every message while a disk is full or
    /// failing: logged once, then counted.
    spool_errors_logged: LogLimit,
    /// A compaction pass is under way.
    compacting: Cell<bool>,
}

impl Scheduler {
    /// A shard's scheduler, and the stream of DSNs it will make, for the
    /// reception door to queue.
    pub fn new(w: Wiring) -> (Rc<Scheduler>, flume::Receiver<NewMessage>) {
        let d = &w.cfg.delivery;
        let weights = w.cfg.priority.weights();
        let (tx, rx) = flume::unbounded();
        let (poke, poked) = flume::bounded(1);
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
            cfg: w.cfg,
            spool: w.spool,
            router: w.router,
            delivery: w.delivery,
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
            spool_errors_logged: LogLimit::new(Duration::from_secs(10)),
            compacting: Cell::new(false),
        };
        (Rc::new(scheduler), rx)
    }

    /// Takes over the messages recovery found and the stored suspensions,
    /// and starts the timer. Due messages are dispatched at once.
    pub fn start(self: &Rc<Self>, recovered: Vec<(MessageId, Envelope)>) {
        let now = self.clock.now();
        self.state
            .borrow_mut()
            .suspended
            .extend(self.spool.suspensions());
        for (source, site, counts) in self.spool.path_counts() {
            let path = gate::PathKey {
                source: Some(source).filter(|s| !s.is_empty()),
                site,
            };
            let counts = gate::Counts::from_array(counts);
            self.gates.borrow_mut().seed(path, counts);
        }
        for (id, env) in recovered {
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
    }

    /// A message the reception door just made durable: schedule it now.
    pub fn submit(self: &Rc<Self>, id: MessageId, env: Envelope) {
        queue_gauges(&env, 1.0);
        self.state.borrow_mut().admit(id, env);
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
        self.spool.set_suspension(&key, Some(until)).await?;
        self.state.borrow_mut().suspended.insert(key.clone(), until);
        self.publish_hold(&key, Some(until)).await;
        Ok(until)
    }

    /// Ends a suspension, durably, and delivers what it held.
    pub async fn resume(self: &Rc<Self>, kind: Hold, name: &str) -> Result<(), SpoolError> {
        let key = kind.key(name);
        self.spool.set_suspension(&key, None).await?;
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
            if let Err(e) = self.spool.set_suspension(&key, None).await {
                log::error!("ending the suspension of {key}: {e}");
            }
            self.publish_hold(&key, None).await;
            self.released(&key);
        }
    }

    /// Turns a message's pending recipients into one job per domain.
    fn dispatch(self: &Rc<Self>, id: MessageId) {
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

    /// Starts workers for `domain` up to its connection share.
    fn kick(self: &Rc<Self>, domain: &str) {
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
            None => self.attempt(domain, &job, &env).await,
        };
        let attempt = match handing_over {
            true => attempt.kept_for_drain(),
            false => attempt,
        };
        self.record(job.id, &job.rcpts, &attempt);
    }

    /// One delivery attempt of `job`: find the targets and so the site,
    /// pick a source of the message's pool, wait for a connection and a
    /// start time on that path, read the body, deliver. Every failure on
    /// the way becomes outcomes, never an error.
    async fn attempt(&self, domain: &str, job: &Job, env: &Envelope) -> Attempt {
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
        let (mail_dsn, rcpt_dsn) = bounce::dsn_parameters(env, &job.rcpts);
        let started = Instant::now();
        let targets = self.router.targets_for(domain).await;
        ::metrics::histogram!(crate::metrics::DNS_LOOKUP_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let targets = match targets {
            Ok(targets) => targets,
            Err(e) => return Attempt::all(outcome::from_route(&e), rcpts.len()),
        };
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        let site = shaping::site_name(hosts.iter().copied());
        let shaping = self.shaping.borrow().clone();
        let rule = shaping.rule_for(domain, &hosts);
        self.note_site(domain, &site, rule);
        if let Some(why) = self.held(env, &site) {
            return Attempt {
                site: Some(site),
                held: true,
                ..Attempt::all(why.outcome(), rcpts.len())
            };
        }
        let mut body = None;
        let mut last = DeliveryOutcome::Temporary {
            reply: "no egress source of the pool could be used".into(),
        };
        // Whether `last` is a hold's (every source held or capped).
        let mut last_held = false;
        let tries = self.delivery.egress.source_count().max(1);
        for t in 0..tries {
            let (source, limits, path) = match self.choose_path(env, &site, rule, t + 1 == tries) {
                Ok(chosen) => chosen,
                Err(Some(held)) => {
                    (last, last_held) = (held.outcome(), true);
                    continue;
                }
                Err(None) => continue,
            };
            let lease = self
                .enter_path(
                    &path,
                    &limits,
                    rule.map(|r| r.name.as_str()),
                    env.priority.unwrap_or_default().lane(),
                )
                .await;
            if body.is_none() {
                match self.read_wire(job.id, env).await {
                    Ok(wire) => body = Some(wire),
                    Err(why) => return Attempt::all(why, rcpts.len()),
                }
            }
            let msg = Outgoing {
                sender: &env.sender,
                recipients: &rcpts,
                wire: body.as_deref().unwrap_or_default(),
                size: env.size(),
                smtputf8: env.smtputf8,
                eight_bit: env.eight_bit,
                mail_dsn: &mail_dsn,
                rcpt_dsn: &rcpt_dsn,
            };
            let way = crate::outbound::Path {
                source: source.as_deref(),
                site: &site,
                policy: limits.tls_policy(self.cfg.tls.policy_for(domain)),
                connect_timeout: limits.connect_timeout,
                max_messages_per_connection: limits.max_messages_per_connection,
                idle_timeout: limits.idle_timeout,
                idle_room: self.gates.borrow().idle_room(&path, Instant::now()),
            };
            let started = Instant::now();
            let result = self.delivery.attempt(&targets, &msg, &way).await;
            ::metrics::histogram!(crate::metrics::DELIVERY_ATTEMPT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            if let Ok(attempt) = &result {
                let mut labels = lease.labels.clone();
                labels.push(("result", attempt_result(attempt).into()));
                ::metrics::counter!(crate::metrics::PATH_ATTEMPTS, &labels).increment(1);
            }
            drop(lease);
            match result {
                Ok(attempt) => return attempt,
                Err(why) => {
                    if let Some(s) = &source {
                        self.source_down(s, &why);
                    }
                    (last, last_held) = (why, false);
                }
            }
        }
        Attempt {
            site: Some(site),
            held: last_held,
            ..Attempt::all(last, rcpts.len())
        }
    }

    /// The next source of `env`'s pool to try for `site` (by the pool's
    /// turns), with its path and limits; Err when it may not be used now:
    /// held or at a cap (with the deferral, for when no source is left),
    /// or throttled (None: its turn goes to the next source, unless this
    /// is the `last` try).
    fn choose_path(
        &self,
        env: &Envelope,
        site: &str,
        rule: Option<&shaping::Rule>,
        last: bool,
    ) -> Result<ChosenPath, Option<state::Held>> {
        let source = self.delivery.egress.pick(&env.pool, Instant::now());
        let name = source.as_ref().map(|s| s.name.as_str());
        let limits = shaping::Shaping::limits(rule, name, &self.base_limits);
        let path = gate::PathKey {
            source: name.map(str::to_string),
            site: site.to_string(),
        };
        if let Some(why) = name.and_then(|n| self.source_held(n, site)) {
            return Err(Some(why));
        }
        let throttled = self.gates.borrow().throttled_rate(&path, Instant::now());
        if throttled.is_some() && !last {
            return Err(None);
        }
        self.within_caps(source.as_deref(), &path, &limits, rule)
            .map_err(Some)?;
        Ok((source, limits, path))
    }

    /// Why `env` may not go to `site` now, if a suspension of the site
    /// or of the message's pool holds it (the message then waits until the
    /// hold ends).
    fn held(&self, env: &Envelope, site: &str) -> Option<state::Held> {
        let st = self.state.borrow();
        let what = if st.is_held(Hold::Site, site) {
            format!("site {site} is suspended")
        } else {
            let pool = self.cfg.egress.pool_of(&env.pool)?;
            st.is_held(Hold::Pool, pool)
                .then(|| format!("pool {pool} is suspended"))?
        };
        Some(state::Held(what))
    }

    /// Why `source` may not send to `site` now, if it or its path is
    /// suspended.
    fn source_held(&self, source: &str, site: &str) -> Option<state::Held> {
        let st = self.state.borrow();
        if st.suspended.is_empty() {
            return None;
        }
        let what = if st.is_held(Hold::Source, source) {
            format!("source {source} is suspended")
        } else if st.is_held(Hold::Path, &format!("{source}|{site}")) {
            format!("source {source} is suspended for site {site}")
        } else {
            return None;
        };
        Some(state::Held(what))
    }

    /// The queued message's body, dot-stuffed for DATA; a read error is a
    /// deferral (retried like any; expiry bounds it).
    async fn read_wire(&self, id: MessageId, env: &Envelope) -> Result<Vec<u8>, DeliveryOutcome> {
        match self.spool.read_body(id, env).await {
            Ok(body) => Ok(crate::proto::body::dot_stuff(body)),
            Err(e) => {
                self.spool_errors_logged
                    .log(log::Level::Error, || e.to_string());
                let reply = format!("local error reading the queued message: {e}");
                Err(DeliveryOutcome::Temporary { reply })
            }
        }
    }

    /// A source whose address could not be bound is left out for a while
    /// (logged once per time it goes down).
    fn source_down(&self, source: &crate::outbound::egress::Source, why: &DeliveryOutcome) {
        if self.delivery.egress.mark_down(&source.name, Instant::now()) {
            log::warn!(
                "egress source {} is down for {} s: {}",
                source.name,
                crate::outbound::egress::DOWN_FOR.as_secs(),
                why.reply()
            );
        }
    }

    /// Counts one message against the hourly and daily caps of `path`
    /// (the shaping rule's, and its source's warm-up for today), if it
    /// has any; Err (a deferral, for when no source of the pool is left)
    /// when a cap is reached.
    fn within_caps(
        &self,
        source: Option<&crate::outbound::egress::Source>,
        path: &gate::PathKey,
        limits: &shaping::Limits,
        rule: Option<&shaping::Rule>,
    ) -> Result<(), state::Held> {
        let unix = self.clock.now();
        let warmup = source.and_then(|s| s.warmup_cap((unix / 86_400) as i64));
        let per_day = match (limits.max_messages_per_day, warmup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let per_hour = limits.max_messages_per_hour;
        if per_day.is_none() && per_hour.is_none() {
            return Ok(());
        }
        let taken = self
            .gates
            .borrow_mut()
            .take_quota(path, per_hour, per_day, unix);
        let Some(counts) = taken else {
            let labels = path_labels(path, rule.map(|r| r.name.as_str()));
            ::metrics::counter!(crate::metrics::PATH_CAPPED, &labels).increment(1);
            let from = path.source.as_deref().unwrap_or("the default address");
            let caps = match (per_hour, per_day) {
                (Some(h), Some(d)) => format!("{h} an hour, {d} a day"),
                (Some(h), None) => format!("{h} an hour"),
                (None, d) => format!("{} a day", d.unwrap_or(0)),
            };
            return Err(state::Held(format!(
                "{from} has reached its cap to this site ({caps}{}); waiting",
                if warmup.is_some() { ", warming up" } else { "" }
            )));
        };
        let source = path.source.as_deref().unwrap_or("");
        if let Err(e) = self
            .spool
            .set_path_counts(source, &path.site, counts.to_array())
        {
            self.spool_errors_logged
                .log(log::Level::Error, || format!("storing path counts: {e}"));
        }
        Ok(())
    }

    /// Remembers `domain`'s site, and sizes its workers to the site's
    /// connections over every source, all of them: this shard may hold
    /// every lease (the paths' gates hold each to the leases it has;
    /// workers beyond wait at its gate).
    fn note_site(&self, domain: &str, site: &str, rule: Option<&shaping::Rule>) {
        let sources = self.delivery.egress.source_count().max(1);
        let per_source = shaping::Shaping::limits(rule, None, &self.base_limits).max_connections;
        let capacity = per_source * sources;
        let mut st = self.state.borrow_mut();
        // The domain's queue exists (its job came from it): no new key.
        let Some(q) = st.domains.get_mut(domain) else {
            return;
        };
        q.capacity = Some(capacity);
        if q.site.as_deref() != Some(site) {
            q.site = Some(site.to_string());
        }
    }

    /// Waits (in priority `lane`) for a connection on `path` (configured
    /// with `limits` first) and for its next start time; the connection
    /// is the path's until the lease is dropped.
    async fn enter_path(
        &self,
        path: &gate::PathKey,
        limits: &shaping::Limits,
        rule: Option<&str>,
        lane: usize,
    ) -> Lease<'_> {
        let admission = {
            let mut gates = self.gates.borrow_mut();
            let now = Instant::now();
            gates.configure(path, limits, rule);
            let admission = gates.enter(path, lane, now);
            if gates.wants_first_lease(path) {
                let _ = self.poke.try_send(());
            }
            admission
        };
        let labels = path_labels(path, rule);
        if let gate::PathTurn::Wait(rx) = admission {
            let waiting = ::metrics::gauge!(crate::metrics::PATH_WAITING, &labels);
            waiting.increment(1.0);
            // The sender is dropped only with the gate, which is kept while
            // anyone waits at it.
            let _ = rx.await;
            waiting.decrement(1.0);
        }
        ::metrics::gauge!(crate::metrics::PATH_CONNECTIONS, &labels).increment(1.0);
        let lease = Lease {
            gates: &self.gates,
            path: path.clone(),
            labels,
        };
        self.start_slot(path).await;
        lease
    }

    /// Waits for `path`'s next start: a token of its rate from its
    /// authority (taken a few at a time), and a throttle's pace. The
    /// authority not answering (Redis down, a shard stopping): asked
    /// again, of the node's book once Redis is known to be down.
    async fn start_slot(&self, path: &gate::PathKey) {
        loop {
            let slot = self.gates.borrow_mut().slot(path, Instant::now());
            let rate = match slot {
                gate::Slot::Go(wait) => {
                    if let Some(wait) = wait {
                        glommio::timer::sleep(wait).await;
                    }
                    return;
                }
                gate::Slot::Ask(rate) => rate,
            };
            let name = shared::path_name(path);
            match self.authority().take_tokens(&name, rate).await {
                Ok(t) if t.granted > 0 => {
                    self.gates
                        .borrow_mut()
                        .add_tokens(path, t.granted, Instant::now());
                }
                Ok(t) => glommio::timer::sleep(t.wait.max(Duration::from_millis(1))).await,
                Err(e) => {
                    log::debug!("shard {}: tokens for {name}: {e}", self.shard);
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Applies one job's outcomes to the message; finishes it when its last
    /// job is done.
    /// What follows from each recipient's outcome: metrics, the failure's
    /// category, the suppression of a hard bounce, the delivery log; and
    /// the `[backoff]` rule the first failure fits, if any.
    fn tell(
        &self,
        id: MessageId,
        attempt: &Attempt,
        (sender, meta): &(String, Option<serde_json::Value>),
        told: &[(String, u32, &DeliveryOutcome)],
    ) -> Option<(
        backoff::BackoffAction,
        crate::classify::BounceCategory,
        String,
    )> {
        let mut backoff = None;
        for (address, attempts, outcome) in told {
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
                    self.suppress(sender, address, category);
                    (EventKind::Bounce, Some(category))
                }
            };
            // The first failure a `[backoff]` rule fits decides.
            if let (Some(category), None) = (category, &backoff) {
                let reply = outcome.reply();
                backoff = self
                    .backoff
                    .action_for(reply, category)
                    .map(|a| (a, category, reply.to_string()));
            }
            let remote = attempt.remote.as_ref();
            let mut ev = Event::new(kind, id, sender, address);
            ev.meta = meta.as_ref();
            ev.remote_host = remote.map(|t| t.host.as_str());
            ev.remote_ip = remote.map(|t| t.addr.ip().to_string());
            ev.reply = Some(outcome.reply());
            ev.attempt = Some(*attempts);
            ev.tls = attempt.tls.as_deref();
            ev.source = attempt.source.as_deref();
            ev.site = attempt.site.as_deref();
            ev.category = category.map(crate::classify::BounceCategory::as_str);
            self.events.write(&ev);
        }
        backoff
    }

    fn record(self: &Rc<Self>, id: MessageId, rcpts: &[usize], attempt: &Attempt) {
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
                told.push((r.address.clone(), r.attempts, outcome));
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

    /// Sends the DSN for the failures recorded so far in a round that is
    /// not over yet (see `record`).
    async fn notify_early(self: Rc<Self>, id: MessageId) {
        let taken = self.state.borrow_mut().messages.get_mut(&id).and_then(|e| {
            let failures = std::mem::take(&mut e.failures);
            (!failures.is_empty()).then(|| (e.env.clone(), failures))
        });
        if let Some((env, failures)) = taken {
            let kind = NoticeKind::Failure { expired: false };
            self.notify_sender(id, &env, &failures, kind).await;
        }
    }

    fn spawn_finish(self: &Rc<Self>, id: MessageId) {
        let me = self.clone();
        self.tasks.spawn(async move { me.finish(id).await });
    }

    /// After the last job of a round: bounce, remove, or defer.
    async fn finish(self: Rc<Self>, id: MessageId) {
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
        if let Err(e) = result {
            // The old record stays; the message is retried from it.
            self.spool_errors_logged
                .log(log::Level::Error, || e.to_string());
        }
        if done {
            queue_gauges(&env, -1.0);
        }
        self.state.borrow_mut().end_finish(id, env, done);
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
            ev.meta = meta.as_ref();
            ev.reply = r.last_reply.as_deref();
            ev.attempt = Some(r.attempts);
            self.events.write(&ev);
            let failure = failures.last().expect("just pushed");
            self.log_bounce(id, (&sender, meta.as_ref()), r, failure);
        }
    }

    /// The category of a failure, counted: `temporary` says how the
    /// attempt ended (a 4xx, or no reply), `bounced` whether the recipient
    /// failed for good (a 5xx, expiry, the administrator's bounce) or will
    /// be retried.
    fn failed(
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
                    if let Err(e) = me.spool.set_suspension(&stored, Some(Some(until))).await {
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
    fn end_expired_backoffs(self: &Rc<Self>) {
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
        let entry = crate::queue::suppression::entry_for(
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

    /// The Bounce event of a recipient that failed for good (expiry, or
    /// the administrator's bounce), with the category of its last reply.
    fn log_bounce(
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
            let reply = r.last_reply.clone().unwrap_or_default();
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

    async fn run_timer(self: Rc<Self>) {
        let mut ticks = 0u64;
        let mut published = HashSet::new();
        loop {
            glommio::timer::sleep(TICK).await;
            let now = self.clock.now();
            self.end_expired_suspensions(now).await;
            self.end_expired_backoffs();
            let due = self.state.borrow_mut().take_due(now);
            for id in due {
                self.dispatch(id);
            }
            ticks += 1;
            if ticks % 25 == 1 {
                self.delivery.pool.reap();
                self.publish_domain_depths(&mut published);
            }
            if ticks.is_multiple_of(5) && !self.compacting.get() && !self.draining.get() {
                let me = self.clone();
                self.tasks.spawn(async move { me.compact().await });
            }
        }
    }
}

/// The outcome of a job a `[backoff]` "bounce" rule fails without an
/// attempt: permanent, with the enhanced status of the reply that
/// triggered the rule (made permanent: 4.7.28 becomes 5.7.28).
fn bounced_by_rule(domain: &str, reply: &str, rcpts: usize) -> Attempt {
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

/// Bodies one compaction pass moves at most (a pass starts every second):
/// compaction never takes more than a few MiB/s of the disk.
const COMPACT_BYTES_PER_PASS: u64 = 4 << 20;

impl Scheduler {
    /// One compaction pass: the deferred messages whose bodies sit in
    /// sparse segments are moved into the active one (`Spool::relocate`),
    /// one at a time, each through a commit round like new mail, up to
    /// [`COMPACT_BYTES_PER_PASS`].
    async fn compact(self: Rc<Self>) {
        let percent = self.cfg.spool.compact_below_percent;
        if percent == 0 {
            return;
        }
        let sparse = self.spool.sparse_segments(percent);
        if sparse.is_empty() {
            return;
        }
        self.compacting.set(true);
        let movable = self.state.borrow().movable_in(&sparse);
        let mut moved_bytes = 0;
        for id in movable {
            if moved_bytes >= COMPACT_BYTES_PER_PASS || self.draining.get() {
                break;
            }
            let Some(env) = self.state.borrow_mut().begin_move(id) else {
                continue;
            };
            let result = self.spool.relocate(id, &env).await;
            let moved = match result {
                Ok(moved) => {
                    moved_bytes += moved.size();
                    ::metrics::counter!(crate::metrics::SPOOL_COMPACTED_BYTES)
                        .increment(moved.size());
                    Some(moved.body)
                }
                Err(e) => {
                    self.spool_errors_logged
                        .log(log::Level::Error, || format!("compaction: {e}"));
                    None
                }
            };
            self.state.borrow_mut().end_move(id, moved);
        }
        self.compacting.set(false);
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

/// A source chosen for an attempt (None without `[egress]`), the limits
/// of its path to the site, and the path.
type ChosenPath = (
    Option<Rc<crate::outbound::egress::Source>>,
    shaping::Limits,
    gate::PathKey,
);

/// A connection on one path, held from `Scheduler::enter_path` until
/// dropped: whatever way the attempt ends, the gate gets it back.
struct Lease<'a> {
    gates: &'a RefCell<gate::Gates>,
    path: gate::PathKey,
    /// The path's metric labels.
    labels: Vec<(&'static str, String)>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.gates.borrow_mut().leave(&self.path, Instant::now());
        ::metrics::gauge!(crate::metrics::PATH_CONNECTIONS, &self.labels).decrement(1.0);
    }
}

/// A path's metric labels: its source's name and its shaping rule's
/// ("default" for none), so that the series stay few.
fn path_labels(path: &gate::PathKey, rule: Option<&str>) -> Vec<(&'static str, String)> {
    vec![
        (
            "source",
            path.source.as_deref().unwrap_or("default").to_string(),
        ),
        ("site", rule.unwrap_or("default").to_string()),
    ]
}

/// How an attempt ended, for `ringpost_path_attempts_total`.
fn attempt_result(attempt: &Attempt) -> &'static str {
    let all_delivered = attempt
        .outcomes
        .iter()
        .all(|o| matches!(o, DeliveryOutcome::Delivered { .. }));
    match all_delivered {
        true => "delivered",
        false
            if attempt
                .outcomes
                .iter()
                .any(|o| matches!(o, DeliveryOutcome::Permanent { .. })) =>
        {
            "bounced"
        }
        false => "deferred",
    }
}
