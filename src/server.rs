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
//! notices) goes over the shard mesh; injection's `Idempotency-Key`s over
//! a second mesh to the shard that owns each key. With `[cluster]`, one
//! Redis thread per node (`cluster::Cluster`) is shared by every shard,
//! and shard 0 keeps the node's suppression list in step with the
//! fleet's (`suppression::share`).
//!
//! May call: every module (it is the composition root).
//! Must not: be imported by any of them.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use crate::config::{Config, ConfigErrors, Listen, Problems};
use crate::dns::{self, Resolver};
use crate::events::EventLog;
use crate::events::outbox::Outbox;
use crate::inbound::Door;
use crate::inbound::idempotency::KeyIndex;
use crate::inbound::smtp::{self, SmtpService, auth::Users};
use crate::outbound::route::Router;
use crate::outbound::{Delivery, OutboundSettings};
use crate::queue::{Spool, SpoolOptions, existing_shards};
use crate::scheduler::book::LimitBook;
use crate::scheduler::{Scheduler, Wiring};
use crate::shard::clock::Clock;
use crate::shard::mesh::{self, Mesh, Work};
use crate::shard::net::{Reserved, probe_listen, reserve_shared};
use crate::shard::stop::{self, StopSender, StopSignal};
use crate::suppression::SuppressionList;

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
}

impl Listeners {
    /// Probes every configured listener (see `probe_listen`) and writes
    /// the resolved addresses back, so that every shard binds the port
    /// that port 0 became.
    fn probe(cfg: &mut Config) -> Result<Listeners, StartError> {
        let probe = |listen: &mut Listen| -> Result<Option<SocketAddr>, StartError> {
            let Some(addr) = listen.addr() else {
                return Ok(None);
            };
            let bound = probe_listen(addr).map_err(|source| StartError::Listen { addr, source })?;
            *listen = Listen::At(bound);
            Ok(Some(bound))
        };
        Ok(Listeners {
            smtp: probe(&mut cfg.smtp.listen)?,
            submission: probe(&mut cfg.submission.listen)?,
            inject: probe(&mut cfg.inject.listen)?,
            metrics: probe(&mut cfg.metrics.listen)?,
            admin: probe(&mut cfg.admin.listen)?,
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
    /// Every shard's `Idempotency-Key` index.
    keys: Mesh<KeyIndex>,
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
    /// Requests about the `Idempotency-Key`s this shard owns.
    key_work: flume::Receiver<Work<KeyIndex>>,
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
    let (keys, key_works) = mesh::mesh(shards);
    let (books, book_works) = mesh::mesh(shards);
    let reload = crate::scheduler::reload::Reload::new(&cfg.delivery.shaping_file, mesh.clone());
    // Before `prepare`: the Redis thread it starts sets its gauge at once.
    crate::metrics::install();
    let prepared = Arc::new(prepare(cfg, shards, clock, mesh, keys, books)?);

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
        .zip(works.into_iter().zip(key_works).zip(book_works))
        .zip(book_signals)
        .enumerate()
        .map(
            |(index, ((stop, ((work, key_work), book_work)), book_stop))| {
                Some(Seat {
                    index,
                    stop,
                    work,
                    key_work,
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
    keys: Mesh<KeyIndex>,
    books: Mesh<LimitBook>,
) -> Result<Prepared, StartError> {
    let files = preflight(&cfg).map_err(|p| StartError::Files(ConfigErrors(p)))?;
    let listeners = Listeners::probe(&mut cfg)?;
    // At once after the probe: between the two, another process could
    // take the port (and, with SO_REUSEPORT, share it without an error).
    let sockets = (0..shards)
        .map(|index| Sockets::reserve(&listeners, index).map(|s| Mutex::new(Some(s))))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = dns::start(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
    )
    .map_err(StartError::Dns)?;
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
        outbound: OutboundSettings::new(&cfg, files.verified.clone()),
        cfg: Arc::new(cfg),
        shards,
        listeners,
        sockets,
        clock,
        resolver,
        files,
        ready: Arc::new(AtomicBool::new(false)),
        mesh,
        keys,
        books,
    })
}

/// What the files a config names hold, loaded once at start-up.
pub struct Loaded {
    /// Submission users, when submission is on.
    pub users: Option<Arc<Users>>,
    /// Inbound STARTTLS, when a certificate is configured.
    pub inbound_tls: Option<Arc<rustls::ServerConfig>>,
    /// The verified-TLS client, when some destination requires it.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    pub admin_token: Option<String>,
    pub inject_token: Option<String>,
    /// HTTPS on the injection listener, when `inject.cert_file` is set:
    /// the config and the handle that reads the files again (SIGHUP).
    pub inject_tls: Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::CertReloader>)>,
    /// The DKIM signer, when `[dkim]` has identities.
    pub dkim: Option<Arc<crate::dkim::Signer>>,
    /// The bounce classifier: the operator's rules, then ringpost's.
    pub classifier: Arc<crate::classify::Classifier>,
    /// The shaping rules: the operator's file, then ringpost's.
    pub shaping: Arc<crate::scheduler::shaping::Shaping>,
    /// The webhooks, with their secrets and TLS configs.
    pub webhooks: Vec<Arc<crate::events::webhook::Hook>>,
}

/// Every check `serve` makes before it binds anything, on the files the
/// config names: certificates and keys, the CA bundle, the users file,
/// tokens, DKIM keys, the delivery log's directory, and the directories
/// serve writes (spool, suppression list, kept malformed reports), each
/// writable (or creatable) by the user that runs it. Every problem is reported, each
/// with the key that names the file. `check-config` runs it too.
pub fn preflight(cfg: &Config) -> Result<Loaded, Problems> {
    let mut p = Problems::default();
    let mut loaded = Loaded {
        users: None,
        inbound_tls: None,
        verified: None,
        admin_token: None,
        inject_token: None,
        inject_tls: None,
        dkim: None,
        classifier: Arc::new(crate::classify::Classifier::default_rules()),
        shaping: Arc::default(),
        webhooks: Vec::new(),
    };
    if cfg.inject.tls() {
        let (cert, key) = (&cfg.inject.cert_file, &cfg.inject.key_file);
        match crate::tls::CertReloader::load(cert.as_ref(), key.as_ref()) {
            Ok(loaded_tls) => loaded.inject_tls = Some(loaded_tls),
            Err(e @ crate::tls::TlsError::Key { .. }) => p.at("inject.key_file", e.to_string()),
            Err(e) => p.at("inject.cert_file", e.to_string()),
        }
    }
    match crate::events::webhook::Hook::load_all(&cfg.events) {
        Ok(hooks) => loaded.webhooks = hooks,
        Err(e) => p.at("events.webhook", e),
    }
    if cfg.submission.enabled() && !cfg.submission.users_file.is_empty() {
        match Users::load(cfg.submission.users_file.as_ref()) {
            Ok(users) => loaded.users = Some(Arc::new(users)),
            Err(e) => p.at("submission.users_file", e),
        }
    }
    if cfg.tls.inbound() && !cfg.tls.key_file.is_empty() {
        match crate::tls::server_config(cfg.tls.cert_file.as_ref(), cfg.tls.key_file.as_ref()) {
            Ok(tls) => loaded.inbound_tls = Some(tls),
            Err(e @ crate::tls::TlsError::Key { .. }) => p.at("tls.key_file", e.to_string()),
            Err(e) => p.at("tls.cert_file", e.to_string()),
        }
    }
    match crate::scheduler::shaping::Shaping::load(&cfg.delivery.shaping_file) {
        Ok(s) => loaded.shaping = Arc::new(s),
        Err(e) => p.at("delivery.shaping_file", e),
    }
    if cfg.tls.requires_verification() {
        match crate::tls::verified_client(cfg.tls.ca_file.as_ref()) {
            Ok(v) => loaded.verified = Some(v),
            Err(e) => p.at("tls.ca_file", e.to_string()),
        }
    } else if loaded.shaping.requires_tls() || cfg.tls.mta_sts {
        // Only some sites' rules ask for it (and a reload may add more):
        // without the bundle their mail waits with a clear reason
        // ("TLS is required but no CA file is loaded"), the rest flows.
        match crate::tls::verified_client(cfg.tls.ca_file.as_ref()) {
            Ok(v) => loaded.verified = Some(v),
            Err(e) => log::warn!(
                "tls.ca_file: {e}; mail to sites whose shaping rule requires TLS will wait, \
                 and receivers' MTA-STS policies cannot be fetched"
            ),
        }
    }
    for (key, path, token) in [
        (
            "admin.token_file",
            &cfg.admin.token_file,
            &mut loaded.admin_token,
        ),
        (
            "inject.token_file",
            &cfg.inject.token_file,
            &mut loaded.inject_token,
        ),
    ] {
        match read_token(path) {
            Ok(t) => *token = t,
            Err(e) => p.at(key, e),
        }
    }
    match load_classifier(&cfg.bounce_classifier) {
        Ok(c) => loaded.classifier = Arc::new(c),
        Err(e) => p.at("bounce_classifier.rules_file", e),
    }
    match crate::dkim::Signer::load(&cfg.dkim) {
        Ok(signer) => loaded.dkim = signer.map(Arc::new),
        Err(problems) => {
            for (key, e) in problems.0 {
                p.at(key, e.to_string());
            }
        }
    }
    if let Some(problem) = log_target_problem(&cfg.delivery.log) {
        p.at("delivery.log", problem);
    }
    check_written_dirs(cfg, &mut p);
    match p.is_empty() {
        true => Ok(loaded),
        false => Err(p),
    }
}

/// The operator's rules file (if any), then ringpost's own rules.
fn load_classifier(
    cfg: &crate::config::BounceClassifierConfig,
) -> Result<crate::classify::Classifier, String> {
    let own = match cfg.rules_file.as_str() {
        "" => None,
        path => Some(std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?),
    };
    let mut files: Vec<(&str, &str)> = Vec::new();
    if let Some(text) = &own {
        files.push((cfg.rules_file.as_str(), text));
    }
    if cfg.default_rules {
        files.push(("ringpost's default rules", crate::classify::DEFAULT_RULES));
    }
    crate::classify::Classifier::new(&files).map_err(|e| e.to_string())
}

/// The directories serve writes, each writable (or creatable) by the user
/// that runs this.
fn check_written_dirs(cfg: &Config, p: &mut Problems) {
    let spool = &cfg.spool.dir;
    let mut dirs = vec![("spool.dir", spool.clone())];
    if cfg.suppression.enabled {
        dirs.push(("suppression.dir", cfg.suppression.dir(spool)));
    }
    if cfg.feedback.is_on() {
        dirs.push(("feedback.malformed_dir", cfg.feedback.malformed_dir(spool)));
    }
    for (key, dir) in dirs {
        if let Some(problem) = unwritable_dir(&dir) {
            p.at(key, problem);
        }
    }
}

/// Why this process could not write in `dir`, or create it (the nearest
/// directory that exists must then be writable): checked with the
/// process's own user and groups (access(2)).
fn unwritable_dir(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let can = |p: &std::path::Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a NUL-terminated path, read by the kernel only.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if dir.exists() {
        return match (dir.is_dir(), can(dir)) {
            (false, _) => Some(format!("{} is not a directory", dir.display())),
            (true, false) => Some(format!(
                "{}: not writable by this user (uid {})",
                dir.display(),
                // SAFETY: getuid cannot fail.
                unsafe { libc::getuid() }
            )),
            (true, true) => None,
        };
    }
    let parent = dir.ancestors().skip(1).find(|a| a.is_dir())?;
    (!can(parent)).then(|| {
        format!(
            "{} does not exist and {} is not writable by this user (uid {}) to make it",
            dir.display(),
            parent.display(),
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }
        )
    })
}

/// Whether the delivery log can be appended to, without creating it.
fn log_target_problem(target: &str) -> Option<String> {
    if matches!(target, "stdout" | "off") {
        return None;
    }
    let path = std::path::Path::new(target);
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .err()
            .map(|e| format!("{target}: {e}"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    match dir.is_dir() {
        true => unwritable_dir(dir).map(|why| format!("{target}: {why}")),
        false => Some(format!(
            "{target}: the directory {} does not exist",
            dir.display()
        )),
    }
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

/// A bearer token (admin or injection): the first line of `path`; none
/// when unset.
fn read_token(path: &str) -> Result<Option<String>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    match token.len() {
        16.. => Ok(Some(token)),
        _ => Err(format!("{path}: the token must be at least 16 characters")),
    }
}

/// One shard's parts, as assembled at its start.
struct Parts {
    spool: Rc<Spool>,
    /// The shard's webhook events (one per spool: it numbers them).
    outbox: Rc<Outbox>,
    scheduler: Rc<Scheduler>,
    door: Rc<Door>,
    smtp: Rc<SmtpService>,
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

/// Opens the spool, builds the scheduler and the door in front of it, and
/// the SMTP front end. Blocking work (recovery) happens here, before the
/// shard serves.
async fn assemble(p: &Prepared, index: usize) -> Result<Parts, String> {
    let cfg = &p.cfg;
    let opts = SpoolOptions::from(&cfg.spool);
    let (spool, mut recovered) =
        Spool::start(&cfg.spool.dir, index as u16, &opts).map_err(|e| e.to_string())?;
    for orphan in orphans_of(cfg, index, p.shards) {
        log::warn!(
            "shard {index}: the spool of shard {orphan} has no shard to run it ({} shards now): taking it over",
            p.shards
        );
        let moved = spool
            .adopt_orphan(&cfg.spool.dir, orphan, &opts)
            .await
            .map_err(|e| format!("taking over shard {orphan}'s spool: {e}"))?;
        recovered.messages.extend(moved);
    }
    let r = &recovered.report;
    log::info!(
        "shard {index}: spool {} recovered: {} messages ({} replayed from the journal), {} quarantined, {} unreferenced segments removed",
        spool.path().display(),
        r.messages,
        r.replayed,
        r.quarantined,
        r.segments_removed
    );
    let spool = Rc::new(spool);
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
    scheduler.start(recovered.messages);
    let door = Rc::new(Door::new(
        spool.clone(),
        scheduler.clone(),
        events.clone(),
        p.clock.clone(),
        crate::inbound::Steps {
            dkim: p.files.dkim.clone(),
            suppressions: p.suppressions.clone(),
            feedback: cfg.feedback.is_on().then(|| {
                crate::inbound::feedback::Intake::new(
                    cfg.clone(),
                    p.suppressions.clone(),
                    p.files.classifier.clone(),
                    events.clone(),
                    p.clock.clone(),
                )
            }),
            tracking_header: Some(cfg.feedback.tracking_header.clone()).filter(|h| !h.is_empty()),
            meta: cfg.meta.clone(),
            egress: cfg.egress.clone(),
            priority_header: cfg.priority.header.clone(),
            max_received_headers: cfg.smtp.max_received_headers,
            hostname: cfg.hostname().to_string(),
        },
    ));
    let notifications = glommio::spawn_local(door.clone().take_notifications(dsns));
    let smtp = Rc::new(SmtpService {
        index: index as u16,
        shards: p.shards,
        cfg: cfg.clone(),
        door: door.clone(),
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
    });
    Ok(Parts {
        spool,
        outbox,
        scheduler,
        door,
        smtp,
        notifications,
    })
}

/// One shard's listening sockets: `S` is `Reserved` until the shard's
/// executor adopts them as `Bound`.
struct Listening<S> {
    smtp: Option<S>,
    submission: Option<S>,
    inject: Option<S>,
    /// Shard 0 only.
    metrics: Option<S>,
    /// Shard 0 only.
    admin: Option<S>,
}

type Sockets = Listening<Reserved>;
type Bound = Listening<crate::shard::net::Bound>;

impl Sockets {
    /// Shard `index`'s sockets on the probed addresses, bound now.
    fn reserve(l: &Listeners, index: usize) -> Result<Sockets, StartError> {
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
    loops.push(glommio::spawn_local(mesh::serve(
        seat.key_work,
        Rc::new(KeyIndex::new(&parts.spool)),
        stop.clone(),
    )));
    if let Some(l) = bound.inject {
        let injector = Rc::new(crate::http::inject::Injector {
            cfg: p.cfg.clone(),
            door: parts.door.clone(),
            token: p.files.inject_token.clone(),
            keys: (p.cfg.inject.idempotency_window_secs > 0).then(|| p.keys.clone()),
            cluster: p.cluster.clone(),
            clock: p.clock.clone(),
        });
        let tls = p
            .files
            .inject_tls
            .as_ref()
            .map(|(config, _)| futures_rustls::TlsAcceptor::from(config.clone()));
        loops.push(glommio::spawn_local(crate::http::serve_maybe_tls(
            l,
            injector,
            crate::http::inject::listener_limits(&p.cfg, seat.index, p.shards),
            tls,
            stop.clone(),
        )));
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
        loops.push(glommio::spawn_local(crate::http::serve(
            l,
            crate::http::admin::AdminApi::new(
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
        )));
    }
    loops
}

/// One shard from start to stop.
async fn run_shard(
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
