//! This shard's side of the limits a fleet shares through Redis
//! (`[cluster]`): the connection leases it holds, kept by one task.
//!
//! Owns: [`SharedLeases`], by path, and [`Scheduler::run_shared`], which
//! every 100 ms (every 10 ms while a path waits for a lease) sets the
//! gates' sharing from whether Redis answers, and for each path under
//! shared limits renews the leases (every third of their TTL), takes
//! more while workers wait (up to the fleet-wide limit), and gives back
//! leases it no longer needs: a surplus unused for a second, and, while
//! another shard (of any node) is left wanting, those above its fair
//! share (the limit over the shards holding or wanting leases, which
//! Redis tells at each renewal), so that no node holding leases starves
//! the others. A lease goes back only after the gate's capacity
//! was lowered and the pool's idle connections beyond it closed: the
//! receiver never sees more connections from the fleet than the limit
//! (but for leases lost while Redis was unreachable, and a crashed node's
//! until their TTL).
//!
//! Suspensions: shard 0 speaks for the node and publishes each
//! suspension and resumption ([`Scheduler::publish_hold`]); every shard
//! reads the published ones every `cluster.sync_interval_ms` and takes
//! them as its own (stored in its spool, as an operator's would be),
//! and ends those that were published and no longer are. A suspension
//! made while Redis was unreachable stays this node's.
//!
//! At stop ([`Scheduler::drain`]), once the delivery attempts are done,
//! the keeper ends its round and the leases go back at once
//! (`release_leases`); a node that dies leaves them to expire.
//!
//! Message rates need no task: a worker that finds no token at the gate
//! asks Redis itself (`Scheduler::enter_path`).
//!
//! Must not: hold a `RefCell` borrow across an await.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Scheduler;
use super::gate::{LeaseView, PathKey, Sharing};
use crate::cluster::Cluster;
use crate::outbound::client::Client;

/// A surplus lease (more held than workers want) unused this long goes
/// back.
const SURPLUS_LINGER: Duration = Duration::from_secs(1);
/// After giving a lease back, a path waits this long before taking one:
/// other shards' askers get their turn.
const COOLDOWN: Duration = Duration::from_millis(50);

/// How long a stopping shard waits for the keeper's round to end.
const KEEPER_STOP: Duration = Duration::from_secs(1);

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

/// A path as Redis keys it: `source|site` (no source: empty).
pub fn path_name(key: &PathKey) -> String {
    format!("{}|{}", key.source.as_deref().unwrap_or(""), key.site)
}

fn lease_gauge(key: &PathKey, delta: f64) {
    let source = key.source.clone().unwrap_or_default();
    ::metrics::gauge!(crate::metrics::CLUSTER_LEASES, "source" => source, "site" => key.site.clone())
        .increment(delta);
}

impl Scheduler {
    /// The leases' keeper (runs while the shard does).
    pub(super) async fn run_shared(self: Rc<Self>, cluster: Arc<Cluster>) {
        let mut was = Sharing::Alone;
        let mut synced: Option<Instant> = None;
        let mut seen = HashSet::new();
        while !self.leases.borrow().stopping {
            let now = Instant::now();
            if cluster.is_up()
                && synced.is_none_or(|t| now.duration_since(t) >= cluster.sync_interval())
            {
                synced = Some(now);
                self.sync_holds(&cluster, &mut seen).await;
            }
            let sharing = match cluster.is_up() {
                true => Sharing::Shared,
                false => Sharing::Fallback {
                    nodes: cluster.nodes(),
                },
            };
            self.gates.borrow_mut().set_sharing(sharing, now);
            if sharing != was {
                log::info!("shard {}: limits now {sharing:?}", self.shard);
                // Idle connections opened under the other limits would
                // count against the new ones without being seen.
                let views = self.gates.borrow().lease_view();
                for view in views {
                    self.close_idle(&view.key, 0).await;
                }
                was = sharing;
            }
            let short = match sharing {
                Sharing::Shared => self.keep_leases(&cluster, now).await,
                _ => {
                    self.forget_leases();
                    false
                }
            };
            let tick = if short { 10 } else { 100 };
            glommio::timer::sleep(Duration::from_millis(tick)).await;
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
        let published: HashMap<String, Option<u64>> = published
            .into_iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .collect();
        for (key, until) in &published {
            let local = self.state.borrow().suspended.get(key).copied();
            if local == Some(*until) {
                continue;
            }
            if let Err(e) = self.spool.set_suspension(key, Some(*until)).await {
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
            if let Err(e) = self.spool.set_suspension(&key, None).await {
                log::error!("storing the end of {key}'s suspension: {e}");
                continue;
            }
            self.state.borrow_mut().suspended.remove(&key);
            log::info!("shard {}: {key} resumed by the cluster", self.shard);
            self.released(&key);
        }
        *seen = published.into_keys().collect();
    }

    /// Redis is unreachable: the leases held will expire there.
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
        if self.cluster.is_some() {
            self.leases.borrow_mut().stopping = true;
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
    }

    /// At stop, once the keeper ended: closes the pooled
    /// connections and gives every lease back, so that the other nodes
    /// need not wait for their TTL (each path's request is bounded by
    /// `cluster.timeout_ms`; a lease not given back expires).
    pub(super) async fn release_leases(&self) {
        let Some(cluster) = self.cluster.as_ref().filter(|c| c.is_up()) else {
            self.forget_leases();
            return;
        };
        let keys: Vec<PathKey> = self.leases.borrow().held.keys().cloned().collect();
        for key in keys {
            self.give_back_all(cluster, &key).await;
        }
    }

    /// Gives back every lease held on `key`, after closing its pooled
    /// connections: the path is gone (a reload) or the shard stops.
    async fn give_back_all(&self, cluster: &Cluster, key: &PathKey) {
        let held = self
            .leases
            .borrow_mut()
            .held
            .remove(key)
            .unwrap_or_default();
        let names: Vec<String> = held.names.into_iter().map(|(n, _)| n).collect();
        lease_gauge(key, -(names.len() as f64));
        self.close_idle(key, 0).await;
        if let Err(e) = cluster.release(&path_name(key), names).await {
            log::debug!(
                "shard {}: leases on {} left to expire: {e}",
                self.shard,
                path_name(key)
            );
        }
    }

    /// One round over the paths; whether one still waits for a lease.
    async fn keep_leases(&self, cluster: &Cluster, now: Instant) -> bool {
        let views = self.gates.borrow().lease_view();
        let gone: Vec<PathKey> = {
            let leases = self.leases.borrow();
            let known = |k: &PathKey| views.iter().any(|v| &v.key == k);
            leases.held.keys().filter(|k| !known(k)).cloned().collect()
        };
        for key in gone {
            self.give_back_all(cluster, &key).await;
        }
        let mut short = false;
        for view in views {
            short |= self.keep_path(cluster, view, now).await;
        }
        short
    }

    /// Renews, gives back and takes `view`'s leases.
    async fn keep_path(&self, cluster: &Cluster, view: LeaseView, now: Instant) -> bool {
        let path = path_name(&view.key);
        let ttl = cluster.lease_ttl();
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
            let asker = self.asker(cluster);
            if let Ok(r) = cluster.renew(&path, view.limit, &asker, names).await {
                held.names.retain(|(n, _)| !r.lost.contains(n));
                held.fair = r.others_want.then_some(r.fair);
            }
            held.renewed = Some(now);
        }
        let demand = (view.in_use + view.waiting).min(view.limit);
        let keep = self.leases_to_keep(&mut held, demand, view.limit, now);
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
            let _ = cluster.release(&path, names).await;
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
            let names: Vec<String> = (have..want).map(|_| self.lease_name(cluster)).collect();
            let asker = self.asker(cluster);
            let granted = cluster
                .acquire(&path, view.limit, &asker, names.clone())
                .await;
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
    fn leases_to_keep(&self, held: &mut Held, demand: usize, limit: usize, now: Instant) -> usize {
        let mut keep = held.names.len().min(limit);
        if held.names.len() > demand {
            let since = *held.surplus_since.get_or_insert(now);
            if now.duration_since(since) >= SURPLUS_LINGER {
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

    /// This shard's name in Redis (`node:shard`), before each lease's
    /// number.
    fn asker(&self, cluster: &Cluster) -> String {
        format!("{}:{}", cluster.node_id(), self.shard)
    }

    fn lease_name(&self, cluster: &Cluster) -> String {
        let mut leases = self.leases.borrow_mut();
        leases.seq += 1;
        format!("{}:{}", self.asker(cluster), leases.seq)
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
