//! Executors: one glommio executor (shard) per core, their start-up,
//! failure and shutdown, and [`shard_for`].
//!
//! Owns: [`start`], which checks what can be checked before any thread
//! starts (the listen ports are free, the spool matches the shard count,
//! certificates and users load),
//! starts the shards, and returns a [`Server`] only once every shard has
//! reported that its spool is recovered and its listener bound. A shard that
//! fails or dies at any time is reported on the same channel, so the process
//! stops with an error instead of hanging.
//!
//! Also: [`share`] (a shard's part of a global limit), [`accept_or_stop`],
//! the graceful [`Shutdown`] handle, and [`tasks::TaskSet`].
//!
//! Concurrency: shards share nothing but the read-only config, the DNS
//! resolver handle and the metrics recorder. The only cross-thread traffic
//! on the control path is the start/stop channels here and the per-shard
//! admin channels (created here, used by `admin`).
//!
//! Must not: contain anything mail-specific beyond choosing a message's shard.

pub mod tasks;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use crate::config::Config;
use crate::dns::{self, Resolver};
use crate::events::EventLog;
use crate::queue::{MessageId, Spool, SpoolOptions, existing_shards};
use crate::scheduler::Scheduler;
use crate::smtp_in::{self, Shard};

// No `spin_before_park`: it bought ~25% for one session at a time, but
// burns CPU that smtp clients and sinks on the same cores need, and the
// hangs we saw while trying it (really the waker overflow fixed in
// `run_shard`) made it suspect. Measure again before turning it on.

/// glommio's registered io_memory is used only by `DmaFile`, which ringpost
/// does not use. The minimum keeps three rings per executor well within the
/// 8 MiB RLIMIT_MEMLOCK of an unprivileged user.
const IO_MEMORY: usize = 512 << 10;

/// Shard `shard`'s share of a global limit: equal parts, the remainder to
/// the first shards, never zero. Limits are split this way so that shards
/// enforce them without talking to each other.
pub fn share(total: usize, shard: usize, shards: usize) -> usize {
    let shards = shards.max(1);
    (total / shards + usize::from(shard < total % shards)).max(1)
}

/// The next connection on `listener`, or None once `stop` is disconnected
/// (shutdown). Every accept loop of a shard races the two this way.
pub async fn accept_or_stop(
    listener: &glommio::net::TcpListener,
    stop: &flume::Receiver<()>,
) -> Option<std::io::Result<glommio::net::TcpStream>> {
    futures_lite::future::or(
        async { Some(listener.accept().await.map_err(Into::into)) },
        async {
            let _ = stop.recv_async().await;
            None
        },
    )
    .await
}

/// The one function that says which shard owns a message.
pub fn shard_for(id: &MessageId, shards: usize) -> usize {
    id.minted_by() as usize % shards.max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the spool {dir} was written by {found} shards but {want} are configured; \
         run with --shards {found} (or server.shards = {found}) until it is empty"
    )]
    ShardMismatch {
        dir: String,
        found: usize,
        want: usize,
    },
    #[error("shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("starting executors: {0}")]
    Executor(String),
    #[error("starting the DNS resolver: {0}")]
    Dns(std::io::Error),
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    #[error("submission users: {0}")]
    Users(String),
    #[error("token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
}

enum Report {
    Ready,
    Failed { shard: usize, reason: String },
    Stopped { shard: usize },
}

/// A running server.
pub struct Server {
    pub smtp_addr: SocketAddr,
    /// The metrics/health HTTP endpoint, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The submission listener, when enabled.
    pub submission_addr: Option<SocketAddr>,
    /// The admin API, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP injection API, when enabled.
    pub inject_addr: Option<SocketAddr>,
    pub shards: usize,
    reports: flume::Receiver<Report>,
    shutdown: Shutdown,
    handles: Option<PoolThreadHandles<()>>,
}

/// Number of shards for this config: `server.shards`, or one per online CPU.
pub fn shard_count(cfg: &Config) -> usize {
    match cfg.server.shards {
        0 => CpuSet::online().map_or(1, |s| s.len()).max(1),
        n => n,
    }
}

/// Starts every shard and waits until all are serving.
pub fn start(mut cfg: Config) -> Result<Server, StartError> {
    let shards = shard_count(&cfg);
    check_spool_layout(&cfg, shards)?;
    cfg.smtp.listen = probe_listen(cfg.smtp.listen)?;
    let smtp_addr = cfg.smtp.listen;
    let users = match cfg.submission.enabled() {
        true => {
            cfg.submission.listen = probe_listen(cfg.submission.listen)?;
            let path: &std::path::Path = cfg.submission.users_file.as_ref();
            Some(Arc::new(
                crate::smtp_in::auth::Users::load(path).map_err(StartError::Users)?,
            ))
        }
        false => None,
    };
    let submission_addr = users.is_some().then_some(cfg.submission.listen);
    let metrics_addr = match cfg.metrics.addr() {
        Some(addr) => Some(probe_listen(addr)?),
        None => None,
    };
    let admin_addr = match cfg.admin.addr() {
        Some(addr) => Some(probe_listen(addr)?),
        None => None,
    };
    let admin_token = read_token(&cfg.admin.token_file)?;
    let inject_addr = match cfg.inject.addr() {
        Some(addr) => Some(probe_listen(addr)?),
        None => None,
    };
    if let Some(addr) = inject_addr {
        cfg.inject.listen = addr.to_string();
    }
    let inject_token = read_token(&cfg.inject.token_file)?;
    crate::metrics::install();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready_flag = ready.clone();
    let resolver = dns::start(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
    )
    .map_err(StartError::Dns)?;
    let tls = match cfg.tls.inbound() {
        true => Some(
            crate::tls::server_config(cfg.tls.cert_file.as_ref(), cfg.tls.key_file.as_ref())
                .map_err(StartError::Tls)?,
        ),
        false => None,
    };
    if cfg.tls.requires_verification() {
        crate::tls::verified_client(cfg.tls.ca_file.as_ref()).map_err(StartError::Tls)?;
    }
    let cfg = Arc::new(cfg);

    let (report_tx, reports) = flume::unbounded();
    let (stops, stop_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded::<()>(1)).unzip();
    let stop_rxs = Arc::new(std::sync::Mutex::new(
        stop_rxs.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let next_index = Arc::new(AtomicUsize::new(0));
    // The admin channels: shard 0 serves the API and holds every sender;
    // each shard takes its own receiver (see `admin`).
    let (admin_txs, admin_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::unbounded()).unzip();
    let admin_rxs = Arc::new(std::sync::Mutex::new(
        admin_rxs.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let admin_shards = crate::admin::Shards::new(admin_txs);

    let handles =
        LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, CpuSet::online().ok()))
            .name("ringpost-shard")
            .io_memory(IO_MEMORY)
            .on_all_shards(move || {
                let index = next_index.fetch_add(1, Ordering::SeqCst);
                let stop = stop_rxs.lock().expect("start-up only")[index]
                    .take()
                    .expect("one per shard");
                let admin_rx = admin_rxs.lock().expect("start-up only")[index]
                    .take()
                    .expect("one per shard");
                // Shard 0 also serves the admin API.
                let admin = (index == 0)
                    .then(|| admin_addr.map(|a| (a, admin_shards.clone(), admin_token.clone())))
                    .flatten();
                let cfg = cfg.clone();
                let resolver = resolver.clone();
                let tls = tls.clone();
                let users = users.clone();
                let inject_token = inject_token.clone();
                // Shard 0 also serves the metrics endpoint.
                let metrics = (index == 0).then(|| (metrics_addr, ready.clone()));
                let guard = StopGuard {
                    shard: index,
                    tx: report_tx.clone(),
                };
                async move {
                    let control = Control {
                        metrics,
                        admin,
                        admin_rx,
                        inject_token,
                        stop,
                    };
                    match run_shard(index, shards, cfg, resolver, tls, users, control, &guard.tx)
                        .await
                    {
                        Ok(()) => {}
                        Err(reason) => {
                            let _ = guard.tx.send(Report::Failed {
                                shard: index,
                                reason,
                            });
                        }
                    }
                    drop(guard);
                }
            })
            .map_err(|e| StartError::Executor(e.to_string()))?;

    let mut server = Server {
        smtp_addr,
        metrics_addr,
        submission_addr,
        admin_addr,
        inject_addr,
        shards,
        reports,
        shutdown: Shutdown {
            stops: Arc::new(std::sync::Mutex::new(stops)),
            requested: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        },
        handles: Some(handles),
    };
    server.wait_ready()?;
    ready_flag.store(true, std::sync::atomic::Ordering::Release);
    Ok(server)
}

/// Sends `Stopped` when the shard's future ends or its thread unwinds, so
/// a panicking shard can never leave the main thread waiting.
struct StopGuard {
    shard: usize,
    tx: flume::Sender<Report>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Report::Stopped { shard: self.shard });
    }
}

/// A shard's control plane: the endpoints shard 0 serves, its admin
/// channel and its stop signal.
struct Control {
    /// Shard 0: the metrics address (if on) and the readiness flag.
    metrics: Option<(Option<SocketAddr>, Arc<std::sync::atomic::AtomicBool>)>,
    /// Shard 0: the admin API address, every shard's admin sender, the token.
    admin: Option<(SocketAddr, crate::admin::Shards, Option<String>)>,
    admin_rx: flume::Receiver<crate::admin::Task>,
    /// The bearer token for injection from outside `smtp.relay_networks`.
    inject_token: Option<String>,
    stop: flume::Receiver<()>,
}

/// How often the main thread repeats the stop signal until a shard is gone.
const STOP_NUDGE: Duration = Duration::from_millis(100);

/// This shard's own stop signal: disconnected (on this thread) at the first
/// message on the global one, or when that closes.
///
/// The global signal comes from the main thread (`Shutdown::request`), i.e.
/// as a wake from a foreign thread, and a glommio 0.9 executor that went
/// to sleep just then can miss it. Seen: `Server::stop` hung in 1 of 8 and
/// 1 of 16 runs of `tests/delivery.rs` (with and without the injection
/// listener), a shard parked in io_uring with nothing left to wake it. So
/// the main thread repeats the signal every [`STOP_NUDGE`] until the shard
/// has ended, and this task keeps taking the repeats until then, each one
/// a fresh wake. A hang was still seen once in 24 runs after this (README,
/// Known problems): the cause is not found yet.
fn local_stop(stop: flume::Receiver<()>) -> flume::Receiver<()> {
    let (tx, rx) = flume::bounded::<()>(1);
    glommio::spawn_local(async move {
        let mut tx = Some(tx);
        while stop.recv_async().await.is_ok() {
            tx.take();
        }
        drop(tx);
    })
    .detach();
    rx
}

/// Sends the stop signal to every shard, and again every [`STOP_NUDGE`]
/// until each shard's executor has ended (its receiver is gone), or for at
/// most ten minutes: glommio may keep a detached task (and with it the
/// receiver) past its executor's end, and this thread must not outlive
/// that by more than a bounded while.
fn nudge_until_stopped(mut shards: Vec<flume::Sender<()>>) {
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    while std::time::Instant::now() < give_up {
        shards.retain(|s| !matches!(s.try_send(()), Err(flume::TrySendError::Disconnected(_))));
        if shards.is_empty() {
            return;
        }
        std::thread::sleep(STOP_NUDGE);
    }
}

/// A bearer token (admin or injection): the first line of `path`; none
/// when unset.
fn read_token(path: &str) -> Result<Option<String>, StartError> {
    if path.is_empty() {
        return Ok(None);
    }
    let fail = |reason: String| StartError::TokenFile {
        path: path.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    match token.len() {
        16.. => Ok(Some(token)),
        _ => Err(fail("the token must be at least 16 characters".into())),
    }
}

// Everything a shard starts from; bundling it would only move the list.
#[allow(clippy::too_many_arguments)]
async fn run_shard(
    index: usize,
    shards: usize,
    cfg: Arc<Config>,
    resolver: Resolver,
    tls: Option<Arc<rustls::ServerConfig>>,
    users: Option<Arc<crate::smtp_in::auth::Users>>,
    control: Control,
    reports: &flume::Sender<Report>,
) -> Result<(), String> {
    let Control {
        metrics,
        admin,
        admin_rx,
        inject_token,
        stop,
    } = control;
    let stop = local_stop(stop);
    let opts = SpoolOptions {
        cache_bytes: cfg.spool.cache_bytes,
        segment_bytes: cfg.spool.segment_bytes,
        sync: cfg.spool.sync,
    };
    let spool = Spool::open(&cfg.spool.dir, index as u16, &opts).map_err(|e| e.to_string())?;
    let recovered = spool.recover().map_err(|e| e.to_string())?;
    spool.ready_for_appends().map_err(|e| e.to_string())?;
    log::info!(
        "shard {index}: spool {} recovered: {} messages, {} quarantined, {} unreferenced segments removed",
        spool.path().display(),
        recovered.messages,
        recovered.quarantined,
        recovered.segments_removed
    );
    let listener =
        bind_shared(cfg.smtp.listen).map_err(|e| format!("listen on {}: {e}", cfg.smtp.listen))?;
    let metrics_http = match metrics {
        Some((Some(addr), ready)) => Some((
            bind_shared(addr).map_err(|e| format!("listen on {addr}: {e}"))?,
            ready,
        )),
        _ => None,
    };
    let admin_http = match admin {
        Some((addr, shards, token)) => Some((
            bind_shared(addr).map_err(|e| format!("listen on {addr}: {e}"))?,
            crate::admin::api::handler(shards, token),
        )),
        None => None,
    };
    let inject_http = match cfg.inject.addr() {
        Some(addr) => Some(bind_shared(addr).map_err(|e| format!("listen on {addr}: {e}"))?),
        None => None,
    };
    let submission = match users {
        Some(_) => Some(
            bind_shared(cfg.submission.listen)
                .map_err(|e| format!("listen on {}: {e}", cfg.submission.listen))?,
        ),
        None => None,
    };
    let events = Rc::new(
        EventLog::open(&cfg.delivery.log)
            .map_err(|e| format!("delivery log {}: {e}", cfg.delivery.log))?,
    );
    let spool = Rc::new(spool);
    let scheduler = Scheduler::new(cfg.clone(), index, shards, spool.clone(), resolver, events);
    scheduler.start();
    let auth_failures = crate::smtp_in::auth::FailureLimiter::new(
        cfg.submission.max_auth_failures,
        Duration::from_secs(cfg.submission.auth_failure_window_secs),
    );
    let shard = Rc::new(Shard {
        index: index as u16,
        shards,
        cfg,
        spool,
        scheduler: scheduler.clone(),
        tls: tls.map(futures_rustls::TlsAcceptor::from),
        auth_failures,
        users,
        draining: std::cell::Cell::new(false),
    });
    let _ = reports.send(Report::Ready);
    // Every loop below is a task of its own, never joined into one future:
    // glommio 0.9 keeps a waker clone per poll of a pending accept
    // (`Source::collect_rw`), so an idle listener polled whenever a busy
    // sibling woke the shared task gained one clone per SMTP connection,
    // and after 32,767 the task's i16 refcount overflowed and the shard
    // panicked ("Waker invariant broken"; README, Known problems).
    let mut loops = vec![glommio::spawn_local(smtp_in::serve(
        listener,
        shard.clone(),
        false,
        stop.clone(),
    ))];
    if let Some(l) = submission {
        loops.push(glommio::spawn_local(smtp_in::serve(
            l,
            shard.clone(),
            true,
            stop.clone(),
        )));
    }
    if index == 0 {
        loops.push(glommio::spawn_local(crate::metrics::upkeep(stop.clone())));
    }
    if let Some((l, ready)) = metrics_http {
        loops.push(glommio::spawn_local(crate::metrics::http::serve(
            l,
            ready,
            stop.clone(),
        )));
    }
    loops.push(glommio::spawn_local(crate::admin::serve_shard(
        admin_rx,
        scheduler.clone(),
        stop.clone(),
    )));
    if let Some((l, handler)) = admin_http {
        loops.push(glommio::spawn_local(crate::http::serve(
            l,
            handler,
            crate::http::Limits::CONTROL,
            stop.clone(),
        )));
    }
    if let Some(l) = inject_http {
        let injector = Rc::new(crate::inject::Injector {
            cfg: shard.cfg.clone(),
            spool: shard.spool.clone(),
            scheduler: scheduler.clone(),
            token: inject_token,
        });
        loops.push(glommio::spawn_local(crate::http::serve(
            l,
            crate::inject::handler(injector),
            crate::inject::limits(&shard.cfg, index, shards),
            stop.clone(),
        )));
    }
    // Each ends once `stop` is disconnected.
    for task in loops {
        task.await;
    }
    let grace = Duration::from_secs(shard.cfg.server.shutdown_grace_secs);
    scheduler.drain(std::time::Instant::now() + grace).await;
    // Cancelled sessions and workers are dropped only when the executor
    // next runs them (glommio); yielding lets it, so none of them still
    // holds the spool, and sled's lock, once this shard ends.
    for _ in 0..2 {
        futures_lite::future::yield_now().await;
    }
    shard.spool.quiesce().await;
    Ok(())
}

/// Pending connections per shard listener before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 1024;

/// A listener for one shard. Every shard binds the same address with
/// SO_REUSEPORT so the kernel spreads connections across shards. We build
/// the socket ourselves because glommio's `TcpListener::bind` leaves out
/// SO_REUSEADDR: the accepted connections then linger in TIME_WAIT without
/// it, and a restart right after a crash could not bind the port.
fn bind_shared(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a listening TCP socket that we own and hand
    // over whole; nothing else closes it.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// SO_REUSEPORT (which every shard's listener needs) would let us share a
/// port with a stale instance without an error. Binding once without it
/// finds that out. Port 0 is resolved here, so all shards share one port.
fn probe_listen(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
    probe
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })
}

fn check_spool_layout(cfg: &Config, shards: usize) -> Result<(), StartError> {
    let found = existing_shards(&cfg.spool.dir);
    match found.last() {
        Some(&max) if max as usize >= shards => Err(StartError::ShardMismatch {
            dir: cfg.spool.dir.display().to_string(),
            found: max as usize + 1,
            want: shards,
        }),
        _ => Ok(()),
    }
}

impl Server {
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let mut ready = 0;
        while ready < self.shards {
            match self.reports.recv_timeout(Duration::from_secs(120)) {
                Ok(Report::Ready) => ready += 1,
                Ok(Report::Failed { shard, reason }) => {
                    self.stop();
                    return Err(StartError::Shard { shard, reason });
                }
                Ok(Report::Stopped { shard }) => {
                    self.stop();
                    return Err(StartError::Shard {
                        shard,
                        reason: "stopped during start-up".into(),
                    });
                }
                Err(_) => {
                    self.stop();
                    return Err(StartError::Executor("shards did not start in 120 s".into()));
                }
            }
        }
        Ok(())
    }

    /// Blocks until every shard has stopped after a requested shutdown
    /// (Ok), or until one fails or stops on its own (the error).
    pub fn wait(&self) -> Result<(), StartError> {
        let mut stopped = 0;
        loop {
            match self.reports.recv() {
                Ok(Report::Ready) => continue,
                Ok(Report::Failed { shard, reason }) => {
                    return Err(StartError::Shard { shard, reason });
                }
                Ok(Report::Stopped { shard }) if !self.shutdown.is_requested() => {
                    return Err(StartError::Shard {
                        shard,
                        reason: "stopped unexpectedly".into(),
                    });
                }
                Ok(Report::Stopped { .. }) => {
                    stopped += 1;
                    if stopped == self.shards {
                        return Ok(());
                    }
                }
                Err(_) => return Err(StartError::Executor("all shards gone".into())),
            }
        }
    }

    /// A handle that starts a graceful shutdown from any thread (signals).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Shuts down gracefully and joins the executors.
    pub fn stop(&mut self) {
        self.shutdown.request();
        if let Some(h) = self.handles.take() {
            h.join_all();
        }
    }
}

/// Starts a graceful shutdown: every shard stops accepting, lets open
/// transactions and delivery attempts finish within
/// `server.shutdown_grace_secs`, and exits. The signal is a message on each
/// shard's stop channel, repeated until the shard has ended (see
/// `local_stop`); the shard passes it to all its loops at once.
#[derive(Clone)]
pub struct Shutdown {
    stops: Arc<std::sync::Mutex<Vec<flume::Sender<()>>>>,
    requested: Arc<std::sync::atomic::AtomicBool>,
}

impl Shutdown {
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let stops = std::mem::take(&mut *self.stops.lock().unwrap_or_else(|e| e.into_inner()));
        if stops.is_empty() {
            return;
        }
        // If no thread can be made, the senders drop here: the channels
        // close, which signals every shard too (without the repeats).
        let _ = std::thread::Builder::new()
            .name("ringpost-stop".into())
            .spawn(move || nudge_until_stopped(stops));
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_are_never_zero() {
        assert_eq!((0..2).map(|s| share(20, s, 2)).sum::<usize>(), 20);
        assert_eq!(
            (0..3).map(|s| share(20, s, 3)).collect::<Vec<_>>(),
            [7, 7, 6]
        );
        assert_eq!(share(1, 1, 2), 1);
    }
}
