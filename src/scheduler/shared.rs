//! This shard's side of a path's limits: the connection leases it holds
//! and the rate tokens it takes, from the path's authority ([`Authority`]):
//! the node's book (`scheduler::book`, kept by the path's owner shard), or,
//! for a fleet sharing limits (`[cluster]`), Redis.
//!
//! Owns: [`SharedLeases`], by path, and [`Scheduler::run_shared`], the
//! leases' keeper, which every 100 ms (every 10 ms while a path waits for
//! a lease, and at once when a worker waits on a path where the shard
//! holds none) sets the gates' authority (Redis while it answers, else the
//! node's book), and for each path renews the leases (every third of their
//! TTL), takes more while workers wait (up to the path's limit), and gives
//! back leases it no longer needs: a surplus unused for a second while
//! another shard wants (else for the path's idle timeout, so that
//! trickling mail keeps its pooled connections), and,
//! while another shard (of this node or any other) is left wanting, those
//! above its fair share (the limit over the shards holding or wanting
//! leases, which the authority tells at each renewal), so that no shard
//! holding leases starves the others. A lease goes back only after the
//! gate's capacity was lowered and the pool's idle connections beyond it
//! closed: the receiver never sees more connections than the limit (but
//! for leases lost while Redis was unreachable, and a crashed node's
//! until their TTL). While Redis is unreachable a fleet's node uses its
//! own book with each limit over `cluster.nodes`: its 1/nodes share,
//! wherever its mail is.
//!
//! Suspensions (`[cluster]`): shard 0 speaks for the node and publishes
//! each suspension and resumption ([`Scheduler::publish_hold`]); every
//! shard reads the published ones every `cluster.sync_interval_ms` and
//! takes them as its own (stored in its spool, as an operator's would
//! be), and ends those that were published and no longer are. A
//! suspension made while Redis was unreachable stays this node's.
//!
//! At stop ([`Scheduler::drain`]), once the delivery attempts are done,
//! the keeper ends its round and the leases go back at once
//! (`release_leases`); a node that dies leaves them to expire.
//!
//! Message rates need no task: a worker that finds no token at the gate
//! asks the authority itself (`Scheduler::enter_path`).
//!
//! Must not: hold a `RefCell` borrow across an await.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Scheduler;
use super::book::{LimitBook, owner_of};
use super::gate::{LeaseView, PathKey, Sharing};
use crate::cluster::{Cluster, Renewal, Tokens};
use crate::outbound::client::Client;
use crate::shard::mesh::Mesh;

/// A surplus lease (more held than workers want) unused this long goes
/// back while another shard wants one (else after the path's idle
/// timeout).
const SURPLUS_LINGER: Duration = Duration::from_secs(1);
/// After giving a lease back, a path waits this long before taking one:
/// other shards' askers get their turn.
const COOLDOWN: Duration = Duration::from_millis(50);

/// How long a stopping shard waits for the keeper's round to end.
const KEEPER_STOP: Duration = Duration::from_secs(1);

/// The leases of the node's book live this long unless renewed (a shard
/// that stops answering gives its connections back this soon).
const NODE_LEASE_TTL: Duration = Duration::from_millis(1500);
/// A request to another shard's book not answered in this time (the
/// shard is stopping) fails.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);
/// Rate tokens taken from the node's book at once: about this much of
/// the rate (a shard's burst beyond its neighbours).
const NODE_BATCH: Duration = Duration::from_millis(50);

/// Why the authority did not answer.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Redis(#[from] crate::cluster::ClusterError),
    #[error("the book of shard {0} did not answer")]
    Book(usize),
}

/// Who keeps a path's limits.
#[derive(Clone)]
pub enum Authority {
    /// The fleet's: Redis.
    Redis(Arc<Cluster>),
    /// The node's: each path's owner shard, over the book mesh; every
    /// limit over `divide` (the fleet's nodes while Redis is
    /// unreachable, else 1).
    Node {
        book: Mesh<LimitBook>,
        divide: usize,
    },
}

impl Authority {
    pub fn sharing(&self) -> Sharing {
        match self {
            Authority::Redis(_) => Sharing::Redis,
            Authority::Node { .. } => Sharing::Node,
        }
    }

    fn lease_ttl(&self) -> Duration {
        match self {
            Authority::Redis(c) => c.lease_ttl(),
            Authority::Node { .. } => NODE_LEASE_TTL,
        }
    }

    /// This node's share of a connection limit (at least one).
    fn connections(&self, limit: usize) -> usize {
        match self {
            Authority::Redis(_) => limit,
            Authority::Node { divide, .. } => (limit / divide.max(&1)).max(1),
        }
    }

    /// Runs `work` on `path`'s owner shard, within `NODE_TIMEOUT`.
    pub(super) async fn at_owner<T, F>(
        book: &Mesh<LimitBook>,
        path: &str,
        work: F,
    ) -> Result<T, AuthorityError>
    where
        T: Send + 'static,
        F: FnOnce(&LimitBook, Instant) -> T + Send + 'static,
    {
        let owner = owner_of(path, book.count());
        let asked = book.ask(owner, move |b| async move { work(&b, Instant::now()) });
        let late = async {
            glommio::timer::sleep(NODE_TIMEOUT).await;
            Err(crate::shard::mesh::ShardGone(owner))
        };
        futures_lite::future::or(asked, late)
            .await
            .map_err(|_| AuthorityError::Book(owner))
    }

    /// Up to a batch of tokens of `path`'s `rate` (messages a second).
    pub async fn take_tokens(&self, path: &str, rate: f64) -> Result<Tokens, AuthorityError> {
        match self {
            Authority::Redis(c) => Ok(c.take_tokens(path, rate, c.batch_for(rate)).await?),
            Authority::Node { book, divide } => {
                let rate = rate / *divide.max(&1) as f64;
                let interval = Duration::from_secs_f64(1.0 / rate);
                let want = ((rate * NODE_BATCH.as_secs_f64()).ceil() as u32).max(1);
                let tolerance = interval * want.saturating_sub(1);
                let path = path.to_string();
                Self::at_owner(book, &path.clone(), move |b, now| {
                    b.take_tokens(&path, interval, tolerance, want, now)
                })
                .await
            }
        }
    }

    /// Leases of `path` up to `limit`, this node's share
    /// ([`Authority::connections`]).
    async fn acquire(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        names: Vec<String>,
    ) -> Result<u32, AuthorityError> {
        match self {
            Authority::Redis(c) => Ok(c.acquire(path, limit, asker, names).await?),
            Authority::Node { book, .. } => {
                let (p, asker) = (path.to_string(), asker.to_string());
                Self::at_owner(book, path, move |b, now| {
                    b.acquire(&p, limit, &asker, names, NODE_LEASE_TTL, now)
                })
                .await
            }
        }
    }

    async fn renew(
        &self,
        path: &str,
        limit: usize,
        asker: &str,
        names: Vec<String>,
    ) -> Result<Renewal, AuthorityError> {
        match self {
            Authority::Redis(c) => Ok(c.renew(path, limit, asker, names).await?),
            Authority::Node { book, .. } => {
                let (p, asker) = (path.to_string(), asker.to_string());
                Self::at_owner(book, path, move |b, now| {
                    b.renew(&p, limit, &asker, names, NODE_LEASE_TTL, now)
                })
                .await
            }
        }
    }

    async fn release(&self, path: &str, names: Vec<String>) -> Result<(), AuthorityError> {
        match self {
            Authority::Redis(c) => Ok(c.release(path, names).await?),
            Authority::Node { book, .. } => {
                let p = path.to_string();
                Self::at_owner(book, path, move |b, now| b.release(&p, &names, now)).await
            }
        }
    }
}

/// The leases this shard holds, by path.
#[derive(Debug, Default)]
pub struct SharedLeases {
    held: HashMap<PathKey, Held>,
    /// For unique lease names.
    seq: u64,
    /// The shard stops: the keeper ends after its round.
    stopping: bool,
    /// It did.
    keeper_done: bool,
}

#[derive(Debug, Clone, Default)]
struct Held {
    /// Lease names, oldest first, with when each was taken.
    names: Vec<(String, Instant)>,
    renewed: Option<Instant>,
    surplus_since: Option<Instant>,
    cooldown_until: Option<Instant>,
    /// While another shard is left wanting: this shard's fair share.
    fair: Option<usize>,
}

/// A path as the authority keys it: `source|site` (no source: empty).
pub fn path_name(key: &PathKey) -> String {
    format!("{}|{}", key.source.as_deref().unwrap_or(""), key.site)
}

fn lease_gauge(key: &PathKey, delta: f64) {
    let source = key.source.clone().unwrap_or_default();
    ::metrics::gauge!(crate::metrics::CLUSTER_LEASES, "source" => source, "site" => key.site.clone())
        .increment(delta);
}

impl Scheduler {
    /// The authority of every path now: Redis while it answers (with
    /// `[cluster]`), else the node's book.
    pub(super) fn authority(&self) -> Authority {
        match &self.cluster {
            Some(c) if c.is_up() => Authority::Redis(c.clone()),
            cluster => Authority::Node {
                book: self.book.clone(),
                divide: cluster.as_ref().map_or(1, |c| c.nodes()),
            },
        }
    }

    /// The leases' keeper (runs while the shard does).
    pub(super) async fn run_shared(self: Rc<Self>, poke: flume::Receiver<()>) {
        let mut was = None;
        let mut synced: Option<Instant> = None;
        let mut seen = HashSet::new();
        while !self.leases.borrow().stopping {
            let now = Instant::now();
            if let Some(cluster) = self.cluster.clone()
                && cluster.is_up()
                && synced.is_none_or(|t| now.duration_since(t) >= cluster.sync_interval())
            {
                synced = Some(now);
                self.sync_holds(&cluster, &mut seen).await;
            }
            let authority = self.authority();
            let sharing = authority.sharing();
            if was != Some(sharing) {
                if was.is_some() {
                    log::info!("shard {}: limits now kept by {sharing:?}", self.shard);
                }
                // The leases held were the other authority's.
                self.forget_leases();
                self.gates.borrow_mut().set_sharing(sharing);
                // Idle connections opened under the other's leases would
                // count against the new ones without being seen.
                let views = self.gates.borrow().lease_view();
                for view in views {
                    self.close_idle(&view.key, 0).await;
                }
                was = Some(sharing);
            }
            let short = self.keep_leases(&authority, now).await;
            let tick = Duration::from_millis(if short { 10 } else { 100 });
            let _ = futures_lite::future::or(
                async {
                    glommio::timer::sleep(tick).await;
                    Ok(())
                },
                poke.recv_async(),
            )
            .await;
        }
        self.leases.borrow_mut().keeper_done = true;
    }

    /// Publishes a suspension (`until`: Some) or its end (None) to the
    /// fleet; shard 0 speaks for the node.
    pub(super) async fn publish_hold(&self, key: &str, until: Option<Option<u64>>) {
        let Some(cluster) = self.cluster.as_ref().filter(|_| self.shard == 0) else {
            return;
        };
        if let Err(e) = cluster.set_hold(key, until).await {
            log::warn!("the suspension change of {key} holds on this node only: {e}");
        }
    }

    /// Takes the suspensions published by the fleet; ends those that were
    /// (`seen` last time) and no longer are.
    async fn sync_holds(self: &Rc<Self>, cluster: &Cluster, seen: &mut HashSet<String>) {
        let Ok(published) = cluster.holds().await else {
            return;
        };
        let now = self.clock.now();
        let (rules, published): (HashMap<String, Option<u64>>, HashMap<String, Option<u64>>) =
            published
                .into_iter()
                .filter(|(_, until)| until.is_none_or(|u| u > now))
                .partition(|(key, _)| super::rules::is_rule_key(key));
        self.sync_rules(&rules, seen).await;
        for (key, until) in &published {
            let local = self.state.borrow().suspended.get(key).copied();
            if local == Some(*until) {
                continue;
            }
            if let Err(e) = self.holds.set(key, Some(*until)).await {
                log::error!("storing the cluster's suspension of {key}: {e}");
                continue;
            }
            self.state
                .borrow_mut()
                .suspended
                .insert(key.clone(), *until);
            log::info!("shard {}: {key} suspended by the cluster", self.shard);
        }
        let ended: Vec<String> = seen
            .iter()
            .filter(|k| !published.contains_key(*k))
            .filter(|k| self.state.borrow().suspended.contains_key(*k))
            .cloned()
            .collect();
        for key in ended {
            if let Err(e) = self.holds.set(&key, None).await {
                log::error!("storing the end of {key}'s suspension: {e}");
                continue;
            }
            self.state.borrow_mut().suspended.remove(&key);
            log::info!("shard {}: {key} resumed by the cluster", self.shard);
            self.released(&key);
        }
        *seen = published.into_keys().chain(rules.into_keys()).collect();
    }

    /// The authority changed: the leases held will expire there.
    fn forget_leases(&self) {
        let mut leases = self.leases.borrow_mut();
        for (key, held) in leases.held.drain() {
            lease_gauge(&key, -(held.names.len() as f64));
        }
    }

    /// At stop, once the delivery attempts are done: asks the keeper to
    /// end after its round (a round cut short by cancelling would drop
    /// the leases it holds in hand) and waits for it, at most
    /// `KEEPER_STOP`.
    pub(super) async fn stop_keeper(&self) {
        self.leases.borrow_mut().stopping = true;
        let _ = self.poke.try_send(());
        let start = Instant::now();
        while !self.leases.borrow().keeper_done && start.elapsed() < KEEPER_STOP {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        log::debug!(
            "shard {}: the leases' keeper stopped in {:?}",
            self.shard,
            start.elapsed()
        );
    }

    /// At stop, once the keeper ended: closes the pooled connections and
    /// gives every Redis lease back, so that the other nodes need not
    /// wait for their TTL (each path's request is bounded by
    /// `cluster.timeout_ms`; a lease not given back expires). The node's
    /// book stops with the node.
    pub(super) async fn release_leases(&self) {
        let authority = self.authority();
        if !matches!(authority, Authority::Redis(_)) {
            self.forget_leases();
            return;
        }
        let keys: Vec<PathKey> = self.leases.borrow().held.keys().cloned().collect();
        for key in keys {
            self.give_back_all(&authority, &key).await;
        }
    }

    /// Gives back every lease held on `key`, after closing its pooled
    /// connections: the path is gone (a reload) or the shard stops.
    async fn give_back_all(&self, authority: &Authority, key: &PathKey) {
        let held = self
            .leases
            .borrow_mut()
            .held
            .remove(key)
            .unwrap_or_default();
        let names: Vec<String> = held.names.into_iter().map(|(n, _)| n).collect();
        lease_gauge(key, -(names.len() as f64));
        self.close_idle(key, 0).await;
        if let Err(e) = authority.release(&path_name(key), names).await {
            log::debug!(
                "shard {}: leases on {} left to expire: {e}",
                self.shard,
                path_name(key)
            );
        }
    }

    /// One round over the paths; whether one still waits for a lease.
    async fn keep_leases(&self, authority: &Authority, now: Instant) -> bool {
        let views = self.gates.borrow().lease_view();
        let gone: Vec<PathKey> = {
            let leases = self.leases.borrow();
            let known = |k: &PathKey| views.iter().any(|v| &v.key == k);
            leases.held.keys().filter(|k| !known(k)).cloned().collect()
        };
        for key in gone {
            self.give_back_all(authority, &key).await;
        }
        let mut short = false;
        for view in views {
            short |= self.keep_path(authority, view, now).await;
        }
        short
    }

    /// Renews, gives back and takes `view`'s leases.
    async fn keep_path(&self, authority: &Authority, view: LeaseView, now: Instant) -> bool {
        let path = path_name(&view.key);
        let ttl = authority.lease_ttl();
        let limit = authority.connections(view.limit);
        let mut held = self
            .leases
            .borrow_mut()
            .held
            .remove(&view.key)
            .unwrap_or_default();
        let before = held.names.len();
        if !held.names.is_empty()
            && held
                .renewed
                .is_none_or(|t| now.duration_since(t) >= ttl / 3)
        {
            let names = held.names.iter().map(|(n, _)| n.clone()).collect();
            let asker = self.asker();
            if let Ok(r) = authority.renew(&path, limit, &asker, names).await {
                held.names.retain(|(n, _)| !r.lost.contains(n));
                held.fair = r.others_want.then_some(r.fair);
            }
            held.renewed = Some(now);
        }
        let demand = (view.in_use + view.waiting).min(limit);
        let keep = self.leases_to_keep(&mut held, demand, limit, view.idle_timeout, now);
        // Give back what no connection uses, after closing idle ones.
        let in_use = self.gates.borrow().in_use_on(&view.key);
        let free = held.names.len().saturating_sub(keep.max(in_use));
        if free > 0 {
            let remaining = held.names.len() - free;
            self.gates
                .borrow_mut()
                .set_leased(&view.key, remaining, now);
            self.close_idle(&view.key, remaining - in_use).await;
            let names = held.names.drain(..free).map(|(n, _)| n).collect();
            let _ = authority.release(&path, names).await;
            held.cooldown_until = Some(now + COOLDOWN);
        }
        self.gates
            .borrow_mut()
            .set_leased(&view.key, keep.min(held.names.len()), now);
        let have = held.names.len();
        let short = demand > have;
        let cooling = held.cooldown_until.is_some_and(|t| now < t);
        // Up to the fair share while others want (asking beyond it
        // would only be given back).
        let want = held.fair.map_or(demand, |fair| demand.min(fair.max(have)));
        if short && keep >= have && !cooling && want > have {
            let names: Vec<String> = (have..want).map(|_| self.lease_name()).collect();
            let asker = self.asker();
            let granted = authority.acquire(&path, limit, &asker, names.clone()).await;
            log::debug!(
                "shard {}: {path}: {} in use, {} waiting, {have} leases held: asked for {}: {granted:?}",
                self.shard,
                view.in_use,
                view.waiting,
                names.len()
            );
            if let Ok(granted) = granted {
                let at = Instant::now();
                held.names
                    .extend(names.into_iter().take(granted as usize).map(|n| (n, at)));
                if have == 0 {
                    held.renewed = Some(at);
                }
                self.gates
                    .borrow_mut()
                    .set_leased(&view.key, held.names.len(), at);
            }
        }
        lease_gauge(&view.key, held.names.len() as f64 - before as f64);
        self.leases.borrow_mut().held.insert(view.key, held);
        short
    }

    /// How many of `held`'s leases the path keeps: not over the limit
    /// (lowered by a reload), not a surplus unused for a while, not over
    /// its fair share while another shard wants (those go back as their
    /// connections come free, and the path waits its turn to ask again).
    /// A surplus unused for `SURPLUS_LINGER` goes back while another shard
    /// wants; while none does, only once its connections would be closed
    /// as idle anyway (`idle`): trickling mail keeps its pooled
    /// connections, as it would without shared limits.
    fn leases_to_keep(
        &self,
        held: &mut Held,
        demand: usize,
        limit: usize,
        idle: Duration,
        now: Instant,
    ) -> usize {
        let mut keep = held.names.len().min(limit);
        if held.names.len() > demand {
            let since = *held.surplus_since.get_or_insert(now);
            let linger = match held.fair {
                Some(_) => SURPLUS_LINGER,
                None => idle.max(SURPLUS_LINGER),
            };
            if now.duration_since(since) >= linger {
                keep = keep.min(demand);
            }
        } else {
            held.surplus_since = None;
        }
        if let Some(fair) = held.fair {
            keep = keep.min(fair);
        }
        keep
    }

    /// This shard's name to the authority (`node:shard`; in the node's
    /// book `shard`), before each lease's number.
    fn asker(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{}:{}", c.node_id(), self.shard),
            None => self.shard.to_string(),
        }
    }

    fn lease_name(&self) -> String {
        let seq = {
            let mut leases = self.leases.borrow_mut();
            leases.seq += 1;
            leases.seq
        };
        format!("{}:{seq}", self.asker())
    }

    /// Closes `key`'s idle pooled connections beyond `keep`.
    async fn close_idle(&self, key: &PathKey, keep: usize) {
        let closing = self
            .delivery
            .pool
            .trim(key.source.as_deref(), &key.site, keep);
        futures::future::join_all(closing.into_iter().map(Client::quit)).await;
    }
}
