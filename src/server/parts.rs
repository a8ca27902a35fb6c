//! One shard's assembly and life: its parts ([`Parts`]: spool, outbox,
//! scheduler, reception door, SMTP service) built in [`assemble`], every
//! loop spawned as a task of its own ([`spawn_loops`]), and the drain at
//! stop ([`run_shard`]).
//!
//! Must not: share state between shards but through the meshes and what
//! start-up prepared.

use super::*;
use crate::config::Config;
use crate::events::EventLog;
use crate::events::outbox::Outbox;
use crate::inbound::Door;
use crate::inbound::idempotency::KeyIndex;
use crate::inbound::smtp::{self, SmtpService};
use crate::outbound::Delivery;
use crate::outbound::route::Router;
use crate::queue::{Spool, SpoolOptions, existing_shards};
use crate::scheduler::book::LimitBook;
use crate::scheduler::{Scheduler, Wiring};
use crate::shard::mesh::{self};
use crate::shard::net::{Reserved, reserve_shared};
use crate::shard::stop::StopSignal;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// One shard's parts, as assembled at its start.
struct Parts {
    spool: Rc<Spool>,
    /// The shard's webhook events (one per spool: it numbers them).
    outbox: Rc<Outbox>,
    scheduler: Rc<Scheduler>,
    door: Rc<Door>,
    smtp: Rc<SmtpService>,
    /// The shard's delivery log (and webhook events).
    events: Rc<EventLog>,
    /// The door's task that queues the scheduler's DSNs.
    notifications: glommio::Task<()>,
}

/// A shard's cache of receivers' MTA-STS policies, when `tls.mta_sts` is
/// on and the CA bundle that verifies policy hosts loaded.
fn mta_sts_policies(
    p: &Prepared,
    cfg: &Config,
    spool: &Spool,
) -> Option<crate::outbound::sts::Policies> {
    let tls = p.files.verified.clone().filter(|_| cfg.tls.mta_sts)?;
    Some(crate::outbound::sts::Policies::new(
        p.resolver.clone(),
        tls,
        &cfg.tls.mta_sts_ignore,
        p.clock.clone(),
        spool.kept(crate::queue::KeptTree::MtaSts),
    ))
}

/// Opens the spool, builds the scheduler, recovers the spool into it and
/// builds the door in front of it, and the SMTP front end. Blocking work
/// (recovery) happens here, before the shard serves.
async fn assemble(p: &Prepared, index: usize) -> Result<Parts, String> {
    let cfg = &p.cfg;
    let opts = SpoolOptions::from(&cfg.spool);
    let spool =
        Rc::new(Spool::open(&cfg.spool.dir, index as u16, &opts).map_err(|e| e.to_string())?);
    let outbox = Rc::new(Outbox::open(&spool));
    let events = Rc::new(
        EventLog::open(&cfg.delivery.log)
            .map_err(|e| format!("delivery log {}: {e}", cfg.delivery.log))?
            .with_webhooks(&cfg.events, outbox.clone()),
    );
    let (scheduler, dsns) = Scheduler::new(Wiring {
        cfg: cfg.clone(),
        shard: index,
        shards: p.shards,
        spool: spool.clone(),
        router: Router::new(&cfg.delivery, p.resolver.clone()),
        delivery: Delivery::new(&p.outbound),
        events: events.clone(),
        outbox: outbox.clone(),
        clock: p.clock.clone(),
        classifier: p.files.classifier.clone(),
        suppressions: p.suppressions.clone(),
        mesh: p.mesh.clone(),
        shaping: p.files.shaping.clone(),
        cluster: p.cluster.clone(),
        book: p.books.clone(),
        sts: mta_sts_policies(p, cfg, &spool),
    });
    let due = recover_spool(p, index, &spool, &scheduler).await?;
    scheduler.start(due);
    let door = Rc::new(Door::new(
        spool.clone(),
        scheduler.clone(),
        events.clone(),
        p.clock.clone(),
        door_steps(p, &events),
    ));
    let notifications = glommio::spawn_local(door.clone().take_notifications(dsns));
    let smtp = Rc::new(smtp_service(p, index, door.clone()));
    Ok(Parts {
        spool,
        outbox,
        scheduler,
        door,
        smtp,
        events,
        notifications,
    })
}

/// Recovers shard `index`'s spool, and takes over the spools of shards
/// that no longer run, handing every message found to the scheduler as
/// it is read (`Scheduler::take_over`). Returns the ids of those due now.
async fn recover_spool(
    p: &Prepared,
    index: usize,
    spool: &Spool,
    scheduler: &Scheduler,
) -> Result<Vec<crate::queue::MessageId>, String> {
    let cfg = &p.cfg;
    let opts = SpoolOptions::from(&cfg.spool);
    let now = p.clock.now();
    let mut due = Vec::new();
    let mut take_over = |id, env| {
        if scheduler.take_over(id, env, now) {
            due.push(id);
        }
    };
    let report = spool
        .recover_each(&mut take_over)
        .map_err(|e| e.to_string())?;
    spool.ready_for_appends().map_err(|e| e.to_string())?;
    for orphan in orphans_of(cfg, index, p.shards) {
        log::warn!(
            "shard {index}: the spool of shard {orphan} has no shard to run it ({} shards now): taking it over",
            p.shards
        );
        let moved = spool
            .adopt_orphan(&cfg.spool.dir, orphan, &opts)
            .await
            .map_err(|e| format!("taking over shard {orphan}'s spool: {e}"))?;
        for (id, env) in moved {
            take_over(id, env);
        }
    }
    log::info!(
        "shard {index}: spool {} recovered: {} messages ({} replayed from the journal), {} quarantined, {} unreferenced segments removed",
        spool.path().display(),
        report.messages,
        report.replayed,
        report.quarantined,
        report.segments_removed
    );
    Ok(due)
}

/// What honours unsubscribe links on this shard, when `[unsubscribe]` is
/// on (the list is then on too: config checks).
fn unsubscriber(
    p: &Prepared,
    events: &Rc<EventLog>,
) -> Option<crate::inbound::unsubscribe::Unsubscriber> {
    Some(crate::inbound::unsubscribe::Unsubscriber::new(
        p.files.unsubscribe.clone()?,
        p.suppressions.clone()?,
        events.clone(),
        p.clock.clone(),
        p.cfg.unsubscribe.lifetime_secs(),
    ))
}

/// What the reception door does to a message before it queues it.
fn door_steps(p: &Prepared, events: &Rc<EventLog>) -> crate::inbound::Steps {
    let cfg = &p.cfg;
    crate::inbound::Steps {
        dkim: p.files.dkim.clone(),
        suppressions: p.suppressions.clone(),
        feedback: (cfg.feedback.is_on() || !cfg.unsubscribe.mailto.is_empty()).then(|| {
            let intake = crate::inbound::feedback::Intake::new(
                cfg.clone(),
                p.suppressions.clone(),
                p.files.classifier.clone(),
                events.clone(),
                p.clock.clone(),
            );
            match unsubscriber(p, events) {
                Some(u) if !cfg.unsubscribe.mailto.is_empty() => intake.with_unsubscriber(u),
                _ => intake,
            }
        }),
        tracking_header: Some(cfg.feedback.tracking_header.clone()).filter(|h| !h.is_empty()),
        meta: cfg.meta.clone(),
        egress: cfg.egress.clone(),
        priority_header: cfg.priority.header.clone(),
        max_received_headers: cfg.smtp.max_received_headers,
        hostname: cfg.hostname().to_string(),
        unsubscribe: p.files.unsubscribe.clone(),
    }
}

/// The SMTP front end of shard `index` (relay and submission listeners).
fn smtp_service(p: &Prepared, index: usize, door: Rc<Door>) -> SmtpService {
    let cfg = &p.cfg;
    SmtpService {
        index: index as u16,
        shards: p.shards,
        cfg: cfg.clone(),
        door,
        tls: p
            .files
            .inbound_tls
            .clone()
            .map(futures_rustls::TlsAcceptor::from),
        auth_failures: smtp::auth::FailureLimiter::new(
            cfg.submission.max_auth_failures,
            Duration::from_secs(cfg.submission.auth_failure_window_secs),
        ),
        users: p.files.users.clone(),
        draining: std::cell::Cell::new(false),
    }
}

/// One shard's listening sockets: `S` is `Reserved` until the shard's
/// executor adopts them as `Bound`.
pub(super) struct Listening<S> {
    smtp: Option<S>,
    submission: Option<S>,
    inject: Option<S>,
    /// Shard 0 only.
    metrics: Option<S>,
    /// Shard 0 only.
    admin: Option<S>,
    /// Shard 0 only.
    unsubscribe: Option<S>,
}

pub(super) type Sockets = Listening<Reserved>;
type Bound = Listening<crate::shard::net::Bound>;

impl Sockets {
    /// Shard `index`'s sockets on the probed addresses, bound now.
    pub(super) fn reserve(l: &Listeners, index: usize) -> Result<Sockets, StartError> {
        let bind = |addr: SocketAddr| {
            reserve_shared(addr).map_err(|source| StartError::Listen { addr, source })
        };
        let optional = |addr: Option<SocketAddr>| addr.map(bind).transpose();
        let first = index == 0;
        Ok(Sockets {
            smtp: optional(l.smtp)?,
            submission: optional(l.submission)?,
            inject: optional(l.inject)?,
            metrics: optional(l.metrics.filter(|_| first))?,
            admin: optional(l.admin.filter(|_| first))?,
            unsubscribe: optional(l.unsubscribe.filter(|_| first))?,
        })
    }

    fn adopt(self) -> Bound {
        let adopt = |s: Option<Reserved>| s.map(Reserved::adopt);
        Bound {
            smtp: adopt(self.smtp),
            submission: adopt(self.submission),
            inject: adopt(self.inject),
            metrics: adopt(self.metrics),
            admin: adopt(self.admin),
            unsubscribe: adopt(self.unsubscribe),
        }
    }
}

/// One loop per webhook (`[[events.webhook]]`) on this shard.
fn spawn_webhooks(p: &Prepared, parts: &Parts, stop: &StopSignal) -> Vec<glommio::Task<()>> {
    let mut loops = Vec::new();
    if !p.files.webhooks.is_empty() {
        let shard = Rc::new(crate::events::webhook::WebhookShard {
            outbox: parts.outbox.clone(),
            names: p
                .files
                .webhooks
                .iter()
                .map(|h| h.cfg.name.clone())
                .collect(),
        });
        for hook in &p.files.webhooks {
            loops.push(glommio::spawn_local(crate::events::webhook::run(
                hook.clone(),
                shard.clone(),
                stop.clone(),
            )));
        }
    }
    loops
}

/// Starts every loop of the shard, each a task of its own, never joined
/// into one future: glommio 0.9 keeps a waker clone per poll of a pending
/// accept (`Source::collect_rw`), so an idle listener polled whenever a
/// busy sibling woke the shared task gained one clone per SMTP connection,
/// and after 32,767 the task's i16 refcount overflowed and the shard
/// panicked ("Waker invariant broken"; benches/results/README.md). Each loop
/// ends once `stop` fires.
fn spawn_loops(p: &Prepared, seat: Seat, parts: &Parts, bound: Bound) -> Vec<glommio::Task<()>> {
    let stop = &seat.stop;
    let mut loops = Vec::new();
    if let Some(l) = bound.smtp {
        let service = parts.smtp.clone();
        loops.push(glommio::spawn_local(smtp::serve(
            l,
            service,
            false,
            stop.clone(),
        )));
    }
    if let Some(l) = bound.submission {
        let service = parts.smtp.clone();
        loops.push(glommio::spawn_local(smtp::serve(
            l,
            service,
            true,
            stop.clone(),
        )));
    }
    let spool = parts.spool.clone();
    let flusher_stop = stop.clone();
    loops.push(glommio::spawn_local(async move {
        spool.run_flusher(flusher_stop).await
    }));
    loops.extend(spawn_webhooks(p, parts, stop));
    loops.push(glommio::spawn_local(mesh::serve(
        seat.work,
        parts.scheduler.clone(),
        stop.clone(),
    )));
    let injector = injector(p, seat.index, parts);
    let (keyed, key_stop) = (injector.clone(), stop.clone());
    let grace = Duration::from_secs(p.cfg.server.shutdown_grace_secs);
    loops.push(glommio::spawn_local(async move {
        mesh::serve(seat.keyed_work, keyed.clone(), key_stop.clone()).await;
        keyed.finish_keyed(key_stop.deadline(grace)).await;
    }));
    if let Some(l) = bound.inject {
        loops.push(spawn_injection(p, seat.index, injector, l, stop));
    }
    if let (0, Some(list), Some(cluster)) = (seat.index, &p.suppressions, &p.cluster) {
        loops.push(glommio::spawn_local(crate::suppression::share::run(
            list.clone(),
            cluster.clone(),
            p.clock.clone(),
            stop.clone(),
        )));
    }
    if let Some(l) = bound.metrics {
        loops.push(glommio::spawn_local(crate::metrics::upkeep(stop.clone())));
        loops.push(glommio::spawn_local(crate::http::metrics::serve(
            l,
            p.ready.clone(),
            stop.clone(),
        )));
    }
    if let Some(l) = bound.admin {
        loops.push(spawn_admin(p, l, stop));
    }
    if let Some(l) = bound.unsubscribe {
        loops.extend(spawn_unsubscribe(p, parts, l, stop));
    }
    loops
}

/// This shard's injector: its listener's handler, and the server of the
/// keyed requests whose keys it owns (whichever shard took them).
fn injector(p: &Prepared, index: usize, parts: &Parts) -> Rc<crate::http::inject::Injector> {
    Rc::new(crate::http::inject::Injector {
        cfg: p.cfg.clone(),
        door: parts.door.clone(),
        token: p.files.inject_token.clone(),
        index: KeyIndex::new(&parts.spool),
        keyed: (p.cfg.inject.idempotency_window_secs > 0).then(|| p.injectors.clone()),
        shard: index,
        keyed_tasks: Default::default(),
        cluster: p.cluster.clone(),
        clock: p.clock.clone(),
    })
}

/// The injection API's listener on this shard.
fn spawn_injection(
    p: &Prepared,
    index: usize,
    injector: Rc<crate::http::inject::Injector>,
    l: crate::shard::net::Bound,
    stop: &StopSignal,
) -> glommio::Task<()> {
    let tls = p
        .files
        .inject_tls
        .as_ref()
        .map(|(config, _)| futures_rustls::TlsAcceptor::from(config.clone()));
    glommio::spawn_local(crate::http::serve_maybe_tls(
        l,
        injector,
        crate::http::inject::listener_limits(&p.cfg, index, p.shards),
        tls,
        stop.clone(),
    ))
}

/// The public unsubscribe listener (shard 0).
fn spawn_unsubscribe(
    p: &Prepared,
    parts: &Parts,
    l: crate::shard::net::Bound,
    stop: &StopSignal,
) -> Option<glommio::Task<()>> {
    let api = crate::http::unsubscribe::UnsubscribeApi::new(
        unsubscriber(p, &parts.events)?,
        p.cfg.unsubscribe.max_requests_per_ip_per_minute,
    );
    let tls = p
        .files
        .unsubscribe_tls
        .as_ref()
        .map(|(config, _)| futures_rustls::TlsAcceptor::from(config.clone()));
    Some(glommio::spawn_local(crate::http::serve_maybe_tls(
        l,
        Rc::new(api),
        crate::http::unsubscribe::UnsubscribeApi::limits(p.cfg.unsubscribe.max_connections),
        tls,
        stop.clone(),
    )))
}

/// The admin API's listener (shard 0).
fn spawn_admin(p: &Prepared, l: crate::shard::net::Bound, stop: &StopSignal) -> glommio::Task<()> {
    glommio::spawn_local(crate::http::serve(
        l,
        crate::http::admin_listener::AdminApi::new(
            p.mesh.clone(),
            p.files.admin_token.clone(),
            p.suppressions.clone(),
            p.clock.clone(),
            p.cfg.delivery.log.clone(),
            crate::scheduler::reload::Reload::new(&p.cfg.delivery.shaping_file, p.mesh.clone()),
        ),
        crate::http::ListenerLimits {
            // A suppression import posts up to 10,000 entries at once;
            // only a request with the token gets its body read.
            max_body: 2 << 20,
            ..crate::http::ListenerLimits::control("admin")
        },
        stop.clone(),
    ))
}

/// One shard from start to stop.
pub(super) async fn run_shard(
    p: Arc<Prepared>,
    seat: Seat,
    reports: &flume::Sender<ShardReport>,
) -> Result<(), String> {
    let mut drained = Drained(Some(seat.books.clone()));
    let parts = assemble(&p, seat.index).await?;
    let bound = p.sockets[seat.index]
        .lock()
        .expect("start-up only")
        .take()
        .ok_or("the shard's sockets were taken already")?
        .adopt();
    let stop = seat.stop.clone();
    // The book serves every shard's attempts until all have drained.
    let book = glommio::spawn_local(mesh::serve(
        seat.book_work.clone(),
        Rc::new(LimitBook::default()),
        seat.book_stop.clone(),
    ));
    let loops = spawn_loops(&p, seat, &parts, bound);
    let _ = reports.send(ShardReport::Ready);
    for task in loops {
        task.await;
    }
    // Every listener has stopped; delivery attempts under way get what is
    // left of the grace period.
    let deadline = stop.deadline(Duration::from_secs(p.cfg.server.shutdown_grace_secs));
    parts.scheduler.drain(deadline).await;
    // The scheduler closed its DSN stream: the door queues what is left.
    parts.notifications.await;
    drained.now();
    book.await;
    let Parts {
        spool, door, smtp, ..
    } = parts;
    drop((door, smtp));
    // Cancelled sessions and workers are dropped only when the executor
    // next runs them (glommio); yielding lets it, so none of them still
    // holds the spool, and sled's lock, once this shard ends.
    for _ in 0..2 {
        futures_lite::future::yield_now().await;
    }
    spool.quiesce().await;
    Ok(())
}

/// The spools of shards that no longer run (`shard-k` with k >= `shards`)
/// which shard `index` takes over: those with `k % shards == index`, the
/// shard their messages' ids name now (`MessageId::shard`).
fn orphans_of(cfg: &Config, index: usize, shards: usize) -> Vec<u16> {
    existing_shards(&cfg.spool.dir)
        .into_iter()
        .filter(|&k| k as usize >= shards && k as usize % shards == index)
        .collect()
}
