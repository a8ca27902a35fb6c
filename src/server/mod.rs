//! The composition root: start-up, the assembly of each shard, and stop.
//!
//! Owns: [`start`], which checks what can be checked before any thread
//! starts (the listen ports are free, the spool matches the shard count,
//! certificates, users and tokens load: [`Prepared`]), starts one glommio
//! executor per shard, and returns a [`Server`] only once every shard has
//! reported that its spool is recovered and its listeners bound. A shard
//! that fails or dies at any time is reported on the same channel, so the
//! process stops with an error instead of hanging.
//!
//! Each shard is assembled in [`run_shard`] from the same parts: its spool,
//! its scheduler, the reception door in front of them, and the front ends
//! (SMTP, submission, HTTP injection); shard 0 also serves the admin API
//! and `/metrics`. Every listener is a task of its own.
//!
//! Shutdown ([`Server::stop`], or SIGTERM through [`StopSender`]): every
//! listener stops accepting; transactions, requests and delivery attempts
//! in flight get `server.shutdown_grace_secs`, counted from the request, on
//! every shard at once; then the spool is flushed and the shard ends.
//!
//! Concurrency: shards share nothing but what start-up prepared (read-only
//! config, loaded files, the DNS resolver handle) and the metrics recorder.
//! Cross-shard traffic (the admin API's, the schedulers' back-off
//! notices) goes over the shard mesh; injection requests with an
//! `Idempotency-Key` over a second mesh, of injectors, to the shard that
//! owns the key. With `[cluster]`, one Redis thread per node
//! (`cluster::Cluster`) is shared by every shard, and shard 0 keeps the
//! node's suppression list in step with the fleet's
//! (`suppression::share`).
//!
//! May call: every module (it is the composition root).
//! Must not: be imported by any of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use crate::config::{Config, ConfigErrors, Listen};
use crate::dns::{self, Resolver};
use crate::http::inject::Injector;
use crate::outbound::OutboundSettings;
use crate::scheduler::Scheduler;
use crate::scheduler::book::LimitBook;
use crate::shard::clock::Clock;
use crate::shard::mesh::{self, Mesh, Work};
use crate::shard::net::probe_and_hold;
use crate::shard::stop::{self, StopSender, StopSignal};
use crate::suppression::SuppressionList;

mod parts;
mod preflight;

use parts::{Sockets, run_shard};
pub use preflight::{Loaded, preflight};

/// glommio's registered io_memory is used only by `DmaFile`, which ringpost
/// does not use. The minimum keeps three rings per executor well within the
/// 8 MiB RLIMIT_MEMLOCK of an unprivileged user.
pub const IO_MEMORY: usize = 512 << 10;

// No `spin_before_park`: it bought ~25% for one session at a time, but
// burns CPU that smtp clients and sinks on the same cores need. Measure
// again before turning it on.

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("starting executors: {0}")]
    Executor(String),
    #[error("starting the DNS resolver: {0}")]
    Dns(std::io::Error),
    #[error("{0}")]
    Files(ConfigErrors),
    #[error("suppression list: {0}")]
    Suppressions(crate::suppression::SuppressionError),
    #[error("cluster.redis: {0}")]
    Cluster(crate::cluster::ClusterError),
}

/// Where each listener is, once bound (port 0 resolved); None when off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub smtp: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub inject: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The public one-click unsubscribe listener.
    pub unsubscribe: Option<SocketAddr>,
}

impl Listeners {
    /// Probes every configured listener (see `probe_and_hold`) and writes
    /// the resolved addresses back, so that every shard binds the port
    /// that port 0 became; `held`: the sockets that keep those ports
    /// until the shards have bound them.
    fn probe(cfg: &mut Config, held: &mut Vec<socket2::Socket>) -> Result<Listeners, StartError> {
        let mut probe = |listen: &mut Listen| -> Result<Option<SocketAddr>, StartError> {
            let Some(addr) = listen.addr() else {
                return Ok(None);
            };
            let (bound, holder) =
                probe_and_hold(addr).map_err(|source| StartError::Listen { addr, source })?;
            held.extend(holder);
            *listen = Listen::At(bound);
            Ok(Some(bound))
        };
        Ok(Listeners {
            smtp: probe(&mut cfg.smtp.listen)?,
            submission: probe(&mut cfg.submission.listen)?,
            inject: probe(&mut cfg.inject.listen)?,
            metrics: probe(&mut cfg.metrics.listen)?,
            admin: probe(&mut cfg.admin.listen)?,
            unsubscribe: probe(&mut cfg.unsubscribe.listen)?,
        })
    }
}

/// Everything start-up loads once and every shard reads: the files named
/// in the config, the resolver, the shard mesh.
struct Prepared {
    cfg: Arc<Config>,
    shards: usize,
    listeners: Listeners,
    /// Every shard's listening sockets, bound at start-up (see
    /// `reserve_shared`); each shard takes its own.
    sockets: Vec<Mutex<Option<Sockets>>>,
    clock: Clock,
    resolver: Resolver,
    files: Loaded,
    outbound: OutboundSettings,
    /// Turns true once every shard serves (`/readyz`).
    ready: Arc<AtomicBool>,
    mesh: Mesh<Scheduler>,
    /// Every shard's injector: requests with an `Idempotency-Key` go to
    /// the one that owns the key.
    injectors: Mesh<Injector>,
    /// Every shard's book of the node's path limits.
    books: Mesh<LimitBook>,
    /// The node's suppression list, when `suppression.enabled`.
    suppressions: Option<Arc<SuppressionList>>,
    /// Redis, when the limits are shared (`[cluster]`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One shard's own ends of the cross-shard channels.
struct Seat {
    index: usize,
    stop: StopSignal,
    work: flume::Receiver<Work<Scheduler>>,
    /// Injection requests with an `Idempotency-Key` this shard owns the key of.
    keyed_work: flume::Receiver<Work<Injector>>,
    /// Requests about the path limits this shard keeps.
    book_work: flume::Receiver<Work<LimitBook>>,
    /// Fires once every shard's scheduler has drained.
    book_stop: StopSignal,
    /// Told when this shard's scheduler has drained.
    books: Arc<Books>,
}

/// The books of path limits serve every shard's delivery attempts, which
/// go on past the stop (the grace period): each shard's book stops only
/// once the schedulers of all shards have drained, the last to drain
/// firing the signal.
struct Books {
    stop: stop::StopSender,
    drained: AtomicUsize,
    shards: usize,
}

/// One shard's part in [`Books`]: counted once, when its scheduler has
/// drained, or when the shard ends any other way (a failed start), so
/// that the other shards' books never wait for it.
struct Drained(Option<Arc<Books>>);

impl Drained {
    fn now(&mut self) {
        if let Some(books) = self.0.take()
            && books.drained.fetch_add(1, Ordering::SeqCst) + 1 >= books.shards
        {
            books.stop.request();
        }
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        self.now();
    }
}

enum ShardReport {
    Ready,
    Failed { shard: usize, reason: String },
    Stopped { shard: usize },
}

/// A running server.
pub struct Server {
    pub listeners: Listeners,
    pub shards: usize,
    /// Reloads the shaping rules (SIGHUP, `POST /config/reload`).
    reload: crate::scheduler::reload::Reload,
    /// Reads the injection listener's certificate again (SIGHUP).
    inject_cert: Option<Arc<crate::tls::CertReloader>>,
    /// The unsubscribe links' secrets, read again on SIGHUP.
    unsubscribe: Option<Arc<crate::unsubscribe::Links>>,
    reports: flume::Receiver<ShardReport>,
    stop: StopSender,
    handles: Option<PoolThreadHandles<()>>,
}

/// Number of shards for this config: `server.shards`, or one per online CPU.
pub fn shard_count(cfg: &Config) -> usize {
    match cfg.server.shards {
        0 => CpuSet::online().map_or(1, |s| s.len()).max(1),
        n => n,
    }
}

/// One shard per CPU, spread over the cores; more shards than CPUs are
/// allowed (a spool written by a bigger machine, say) but not pinned.
fn placement(shards: usize) -> PoolPlacement {
    let cpus = CpuSet::online().ok();
    match cpus.as_ref().map_or(0, |c| c.len()) {
        n if n >= shards => PoolPlacement::MaxSpread(shards, cpus),
        n => {
            log::warn!("{shards} shards on {n} CPUs: the shards' threads are not pinned to CPUs");
            PoolPlacement::Unbound(shards)
        }
    }
}

/// Starts every shard and waits until all are serving.
pub fn start(cfg: Config) -> Result<Server, StartError> {
    start_with_clock(cfg, Clock::System)
}

/// [`start`] with a clock of the caller's (tests drive retries and expiry
/// with a manual one).
pub fn start_with_clock(cfg: Config, clock: Clock) -> Result<Server, StartError> {
    let shards = shard_count(&cfg);
    let (mesh, works) = mesh::mesh(shards);
    let (injectors, keyed_works) = mesh::mesh(shards);
    let (books, book_works) = mesh::mesh(shards);
    let reload = crate::scheduler::reload::Reload::new(&cfg.delivery.shaping_file, mesh.clone());
    // Before `prepare`: the Redis thread it starts sets its gauge at once.
    crate::metrics::install();
    let prepared = Arc::new(prepare(cfg, shards, clock, mesh, injectors, books)?);

    let (report_tx, reports) = flume::unbounded();
    let (stop, signals) = stop::channel(shards);
    let (books_stop, book_signals) = stop::channel(shards);
    let books = Arc::new(Books {
        stop: books_stop,
        drained: AtomicUsize::new(0),
        shards,
    });
    let seats: Vec<Option<Seat>> = signals
        .into_iter()
        .zip(works.into_iter().zip(keyed_works).zip(book_works))
        .zip(book_signals)
        .enumerate()
        .map(
            |(index, ((stop, ((work, keyed_work), book_work)), book_stop))| {
                Some(Seat {
                    index,
                    stop,
                    work,
                    keyed_work,
                    book_work,
                    book_stop,
                    books: books.clone(),
                })
            },
        )
        .collect();
    let seats = Arc::new(Mutex::new(seats));
    let next_index = Arc::new(AtomicUsize::new(0));
    let shared = prepared.clone();
    let handles = LocalExecutorPoolBuilder::new(placement(shards))
        .name("ringpost-shard")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || {
            let index = next_index.fetch_add(1, Ordering::SeqCst);
            let seat = seats.lock().expect("start-up only")[index]
                .take()
                .expect("one seat per shard");
            let guard = StopGuard {
                shard: index,
                tx: report_tx.clone(),
            };
            let shared = shared.clone();
            async move {
                if let Err(reason) = run_shard(shared, seat, &guard.tx).await {
                    let _ = guard.tx.send(ShardReport::Failed {
                        shard: index,
                        reason,
                    });
                }
                drop(guard);
            }
        })
        .map_err(|e| StartError::Executor(e.to_string()))?;

    let mut server = Server {
        listeners: prepared.listeners,
        shards,
        reload,
        inject_cert: prepared.files.inject_tls.as_ref().map(|(_, r)| r.clone()),
        unsubscribe: prepared.files.unsubscribe.clone(),
        reports,
        stop,
        handles: Some(handles),
    };
    server.wait_ready()?;
    prepared.ready.store(true, Ordering::Release);
    Ok(server)
}

/// Loads and checks everything the shards will share.
fn prepare(
    mut cfg: Config,
    shards: usize,
    clock: Clock,
    mesh: Mesh<Scheduler>,
    injectors: Mesh<Injector>,
    books: Mesh<LimitBook>,
) -> Result<Prepared, StartError> {
    let files = preflight(&cfg).map_err(|p| StartError::Files(ConfigErrors(p)))?;
    let mut held = Vec::new();
    let listeners = Listeners::probe(&mut cfg, &mut held)?;
    // At once after the probe: between the two, another process could
    // take a named port (and, with SO_REUSEPORT, share it without an
    // error); port 0's are held until now.
    let sockets = (0..shards)
        .map(|index| Sockets::reserve(&listeners, index).map(|s| Mutex::new(Some(s))))
        .collect::<Result<Vec<_>, _>>()?;
    drop(held);
    let resolver = dns::start(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
        &dns::Dnssec {
            validate: cfg.dns.dnssec,
            trust_anchor_file: cfg.dns.trust_anchors(),
        },
    )
    .map_err(StartError::Dns)?;
    for (ignored, what) in [
        (
            &cfg.tls.mta_sts_ignore,
            "MTA-STS policies (tls.mta_sts_ignore)",
        ),
        (&cfg.tls.dane_ignore, "DANE records (tls.dane_ignore)"),
    ] {
        if !ignored.is_empty() {
            log::info!("not applying the {what} of {}", ignored.join(", "));
        }
    }
    if let Some(line) = files.shaping.tls_exemptions() {
        log::info!("{line}");
    }
    let suppressions = match cfg.suppression.enabled {
        true => Some(Arc::new(
            SuppressionList::open(&cfg.suppression.dir(&cfg.spool.dir))
                .and_then(|list| list.shared(cfg.cluster.is_on()))
                .map_err(StartError::Suppressions)?,
        )),
        false => None,
    };
    let cluster = crate::cluster::Cluster::start(&cfg.cluster, cfg.hostname())
        .map_err(StartError::Cluster)?;
    Ok(Prepared {
        suppressions,
        cluster,
        outbound: OutboundSettings::new(&cfg, files.verified.clone(), files.webpki.clone()),
        cfg: Arc::new(cfg),
        shards,
        listeners,
        sockets,
        clock,
        resolver,
        files,
        ready: Arc::new(AtomicBool::new(false)),
        mesh,
        injectors,
        books,
    })
}

/// Sends `Stopped` when the shard's future ends or its thread unwinds, so
/// a panicking shard can never leave the main thread waiting.
struct StopGuard {
    shard: usize,
    tx: flume::Sender<ShardReport>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(ShardReport::Stopped { shard: self.shard });
    }
}

impl Server {
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let mut ready = 0;
        while ready < self.shards {
            let failed = match self.reports.recv_timeout(Duration::from_secs(120)) {
                Ok(ShardReport::Ready) => {
                    ready += 1;
                    continue;
                }
                Ok(ShardReport::Failed { shard, reason }) => StartError::Shard { shard, reason },
                Ok(ShardReport::Stopped { shard }) => StartError::Shard {
                    shard,
                    reason: "stopped during start-up".into(),
                },
                Err(_) => StartError::Executor("shards did not start in 120 s".into()),
            };
            self.stop();
            return Err(failed);
        }
        Ok(())
    }

    /// Blocks until every shard has stopped after a requested shutdown
    /// (Ok), or until one fails or stops on its own (the error).
    pub fn wait(&self) -> Result<(), StartError> {
        let mut stopped = 0;
        loop {
            match self.reports.recv() {
                Ok(ShardReport::Ready) => continue,
                Ok(ShardReport::Failed { shard, reason }) => {
                    return Err(StartError::Shard { shard, reason });
                }
                Ok(ShardReport::Stopped { shard }) if !self.stop.is_requested() => {
                    return Err(StartError::Shard {
                        shard,
                        reason: "stopped unexpectedly".into(),
                    });
                }
                Ok(ShardReport::Stopped { .. }) => {
                    stopped += 1;
                    if stopped == self.shards {
                        return Ok(());
                    }
                }
                Err(_) => return Err(StartError::Executor("all shards gone".into())),
            }
        }
    }

    /// A handle that reloads the shaping rules from any thread (SIGHUP).
    pub fn reload_handle(&self) -> crate::scheduler::reload::Reload {
        self.reload.clone()
    }

    /// The handle that reads the injection listener's certificate and key
    /// again (SIGHUP), when it speaks HTTPS.
    pub fn certificate_handle(&self) -> Option<Arc<crate::tls::CertReloader>> {
        self.inject_cert.clone()
    }

    /// The unsubscribe links (their secrets are read again on SIGHUP),
    /// when `[unsubscribe]` is on.
    pub fn unsubscribe_links(&self) -> Option<Arc<crate::unsubscribe::Links>> {
        self.unsubscribe.clone()
    }

    /// A handle that starts a graceful shutdown from any thread (signals).
    pub fn shutdown_handle(&self) -> StopSender {
        self.stop.clone()
    }

    /// Shuts down gracefully and joins the executors.
    pub fn stop(&mut self) {
        self.stop.request();
        if let Some(h) = self.handles.take() {
            h.join_all();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
