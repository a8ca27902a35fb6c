//! One delivery attempt of a job, step by step: find the targets and so
//! the site, stop if a hold keeps the message ([`state::Held`]), choose a
//! source of the message's pool whose path is neither held nor capped,
//! wait at the path's gate for a connection and a start time, read the
//! body, deliver (`outbound::Delivery`). Every failure on the way becomes
//! an outcome, never an error.
//!
//! May call: `outbound` (routing, the attempt), `queue` (the body),
//! `gate`, `shaping`, `shared` through the scheduler. Must not: change
//! the schedule's [`State`](state::State) (that is `record`'s, after the
//! attempt).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::state::{self, Hold, Job};
use super::{Scheduler, gate, shaping, shared};
use crate::config::OutboundTls;
use crate::outbound::client::{Outgoing, Wire};
use crate::outbound::egress::Source;
use crate::outbound::{Attempt, DeliveryOutcome, Target, outcome};
use crate::queue::{Envelope, MessageId};

/// Where an attempt's mail goes: the site, its shaping rule, the targets
/// MTA-STS left, and the TLS they need.
struct Way<'a> {
    domain: &'a str,
    site: &'a str,
    rule: Option<&'a shaping::Rule>,
    targets: &'a [Target],
    tls: OutboundTls,
    /// The domain's MTA-STS policy as TLS reports name it.
    sts: Option<&'a crate::tlsrpt::PolicyKey>,
    sts_testing: bool,
    mta_sts: bool,
    sts_failure: Option<&'a crate::outbound::sts::PolicyFailure>,
}

impl Scheduler {
    /// One delivery attempt of `job`: find the targets and so the site,
    /// pick a source of the message's pool, wait for a connection and a
    /// start time on that path, read the body, deliver. Every failure on
    /// the way becomes outcomes, never an error.
    pub(super) async fn attempt(&self, domain: &str, job: &Job, env: &Envelope) -> Attempt {
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .map(|&i| env.recipients[i].address.to_string())
            .collect();
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
        let dest = match self.tls_policy(domain, targets, rule).await {
            Ok(kept) => kept,
            Err(refused) => {
                return Attempt {
                    site: Some(site),
                    tls_policy: Some(refused.policy),
                    tls_failure: Some(refused.failure),
                    ..Attempt::all(refused.outcome, rcpts.len())
                };
            }
        };
        let way = Way {
            domain,
            site: &site,
            rule,
            targets: &dest.targets,
            tls: dest.tls,
            sts: dest.sts.as_ref(),
            sts_testing: dest.sts_testing,
            mta_sts: dest.mta_sts,
            sts_failure: dest.sts_failure.as_ref(),
        };
        self.deliver_from_pool(job, env, &rcpts, &way).await
    }

    /// The attempt over the sources of the message's pool: the first
    /// source that is not held, capped or down delivers.
    async fn deliver_from_pool(
        &self,
        job: &Job,
        env: &Envelope,
        rcpts: &[String],
        way: &Way<'_>,
    ) -> Attempt {
        let (mail_dsn, rcpt_dsn) = crate::outbound::client::dsn_parameters(env, &job.rcpts);
        let mut body = None;
        let mut last = DeliveryOutcome::Temporary {
            reply: "no egress source of the pool could be used".into(),
        };
        // Whether `last` is a hold's (every source held or capped).
        let mut last_held = false;
        // Each source of the pool once, the weighted pick first (None: no
        // egress sources, the default address).
        let order = self.delivery.egress.order(&env.pool, Instant::now());
        let sources: Vec<Option<Rc<Source>>> = if order.is_empty() {
            vec![None]
        } else {
            order.into_iter().map(Some).collect()
        };
        let tries = sources.len();
        for (t, source) in sources.into_iter().enumerate() {
            let chosen = match self
                .choose_path(source, way.site, way.rule, t + 1 == tries)
                .await
            {
                Ok(chosen) => chosen,
                Err(Some(held)) => {
                    (last, last_held) = (held.outcome(), true);
                    continue;
                }
                Err(None) => continue,
            };
            let lane = env.priority.unwrap_or_default().lane();
            let rule = way.rule.map(|r| r.name.as_str());
            let lease = self.enter_path(&chosen.2, &chosen.1, rule, lane).await;
            if body.is_none() {
                match self.read_wire(job.id, env).await {
                    Ok(wire) => body = Some(wire),
                    Err(why) => return Attempt::all(why, rcpts.len()),
                }
            }
            // Read above: the default is never used.
            let wire: &Wire = body.get_or_insert_with(Wire::default);
            let msg = Outgoing {
                sender: &env.sender,
                recipients: rcpts,
                wire,
                size: env.size(),
                smtputf8: env.smtputf8,
                eight_bit: env.eight_bit,
                mail_dsn: &mail_dsn,
                rcpt_dsn: &rcpt_dsn,
            };
            match self.deliver_on(way, &msg, &chosen, lease).await {
                Ok(attempt) => return attempt,
                Err(why) => {
                    if let Some(s) = &chosen.0 {
                        self.source_down(s, &why);
                    }
                    (last, last_held) = (why, false);
                }
            }
        }
        Attempt {
            site: Some(way.site.to_string()),
            held: last_held,
            ..Attempt::all(last, rcpts.len())
        }
    }

    /// Delivers `msg` over the path `lease` was taken on, under the path's
    /// limits and at least `tls`; the path's attempt counted by how it
    /// ended.
    async fn deliver_on(
        &self,
        to: &Way<'_>,
        msg: &Outgoing<'_>,
        (source, limits, path): &ChosenPath,
        lease: Lease<'_>,
    ) -> Result<Attempt, DeliveryOutcome> {
        let way = crate::outbound::Path {
            source: source.as_deref(),
            site: &path.site,
            policy: limits.tls_policy(to.tls),
            connect_timeout: limits.connect_timeout(),
            max_messages_per_connection: limits.max_messages_per_connection,
            idle_timeout: limits.idle_timeout(),
            idle_room: self.gates.borrow().idle_room(path, Instant::now()),
            mta_sts: to.mta_sts,
            sts_failure: to.sts_failure,
            reporting: self
                .cfg
                .tls_reporting
                .is_on()
                .then(|| crate::outbound::Reporting {
                    domain: to.domain,
                    sts: to.sts,
                    testing: to.sts_testing,
                    now: self.clock.now(),
                }),
        };
        let started = Instant::now();
        let mut result = self.delivery.attempt(to.targets, msg, &way).await;
        if let Ok(attempt) = &mut result {
            attempt.tls_policy = Some(tls_policy_label(attempt, to, way.policy));
        }
        ::metrics::histogram!(crate::metrics::DELIVERY_ATTEMPT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if let Ok(attempt) = &result {
            let mut labels = lease.labels.clone();
            labels.push(("result", attempt_result(attempt).into()));
            ::metrics::counter!(crate::metrics::PATH_ATTEMPTS, &labels).increment(1);
        }
        drop(lease);
        result
    }

    /// `source` (of the message's pool; None: the default address) for
    /// `site`, with its path and limits; Err when it may not be used now:
    /// held or at a cap (with the deferral, for when no source is left),
    /// or throttled (None: its turn goes to the next source, unless this
    /// is the `last` try).
    async fn choose_path(
        &self,
        source: Option<Rc<Source>>,
        site: &str,
        rule: Option<&shaping::Rule>,
        last: bool,
    ) -> Result<ChosenPath, Option<state::Held>> {
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
            .await
            .map_err(Some)?;
        Ok((source, limits, path))
    }

    /// Why `env` may not go to `site` now, if a suspension of the site
    /// or of the message's pool holds it (the message then waits until the
    /// hold ends).
    pub(super) fn held(&self, env: &Envelope, site: &str) -> Option<state::Held> {
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
    async fn read_wire(&self, id: MessageId, env: &Envelope) -> Result<Wire, DeliveryOutcome> {
        match self.spool.read_body(id, env).await {
            Ok(body) => Ok(Wire::of(body)),
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
    fn source_down(&self, source: &Source, why: &DeliveryOutcome) {
        if self.delivery.egress.mark_down(&source.name, Instant::now()) {
            log::warn!(
                "egress source {} is down for {} s: {}",
                source.name,
                crate::outbound::egress::DOWN_FOR.as_secs(),
                why.reply()
            );
        }
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
}

/// A source chosen for an attempt (None without `[egress]`), the limits
/// of its path to the site, and the path.
type ChosenPath = (Option<Rc<Source>>, shaping::Limits, gate::PathKey);

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
pub(super) fn path_labels(path: &gate::PathKey, rule: Option<&str>) -> Vec<(&'static str, String)> {
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

/// The delivery log's name for the TLS policy an attempt was held to:
/// the host that answered's, or (none did) the destination's.
fn tls_policy_label(attempt: &Attempt, to: &Way<'_>, policy: OutboundTls) -> &'static str {
    let dane = match &attempt.remote {
        Some(t) => t.dane.is_some(),
        None => to.targets.iter().any(|t| t.dane.is_some()),
    };
    if dane {
        return "dane";
    }
    match (to.mta_sts, policy) {
        (true, _) => "mta-sts",
        (false, OutboundTls::Require) => "require",
        (false, OutboundTls::Opportunistic) => "opportunistic",
        (false, OutboundTls::None) => "none",
    }
}
