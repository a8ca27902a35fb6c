//! `[cluster]`: the limits a fleet of nodes shares through Redis.

use super::Problems;

section! {
    /// Several ringpost nodes (each with its own spool, behind one load
    /// balancer) share their per-path limits through Redis, so that ten
    /// nodes each allowed 20 connections to a site make 20, not 200: the
    /// message rate of a path (`max_messages_per_second`, from
    /// `[delivery]` or a shaping rule) is a GCRA throttle run in Redis
    /// (timed by Redis's own clock), taken in small batches; its
    /// connections (`max_connections`) are leases that expire unless
    /// renewed, so a node that dies gives its connections back within
    /// `lease_ttl_secs`; suspensions (`ringpost queue suspend`, the admin
    /// API) hold on every node, and the suppression list is the fleet's
    /// (each node applies the others' changes; reception reads its own
    /// copy). When Redis cannot be reached, each node
    /// falls back to its 1/`nodes` share of every limit (logged, and
    /// `ringpost_cluster_redis_up` is 0) and returns to the shared limits
    /// when Redis answers again; mail never waits for Redis. Redis 7 or
    /// compatible: one server (or a primary), or a Redis Cluster
    /// (`redis_cluster`).
    ClusterConfig = "cluster" {
        /// `redis://[user:password@]host[:port][/db]`. Empty: no sharing;
        /// each node holds the limits by itself. With `redis_cluster`:
        /// one or more nodes of the Redis Cluster, separated by commas
        /// (the others are learnt from them).
        redis: String = String::new(),
        /// Whether `redis` names nodes of a Redis Cluster: the client
        /// learns which node holds which slot and sends each request
        /// there (the keys each script touches share a hash tag, so each
        /// runs on one node).
        redis_cluster: bool = false,
        /// Nodes that share the limits: when Redis is unreachable, each
        /// takes `1/nodes` of every limit (at least one connection).
        nodes: usize = 1,
        /// Prefix of every Redis key ringpost writes (several fleets may
        /// share one Redis under different prefixes).
        key_prefix: String = "ringpost".to_string(),
        /// How long a connection lease lives unless renewed (renewed every
        /// third of it): how long a crashed node's connections still
        /// count against the limit.
        lease_ttl_secs: u64 = 10,
        /// How long a shard waits for an answer from Redis, in
        /// milliseconds, before it treats Redis as unreachable.
        timeout_ms: u64 = 250,
        /// Most message tokens a shard takes from Redis at once. A shard
        /// asks for about 50 ms of the path's rate (at least one): fewer
        /// round trips than one per message, and little burst.
        token_batch_max: u32 = 16,
        /// How often the shared suspensions and suppression list changes
        /// are read (and this node's suppression changes sent), in
        /// milliseconds.
        sync_interval_ms: u64 = 1000,
    }
}

impl ClusterConfig {
    pub fn check(&self, p: &mut Problems) {
        let urls = self.redis_urls();
        if urls.iter().any(|u| !u.starts_with("redis://")) {
            p.at(
                "cluster.redis",
                "must start with redis:// (or be empty; TLS to Redis is not supported: keep it on a private network)",
            );
        }
        if urls.len() > 1 && !self.redis_cluster {
            p.at(
                "cluster.redis",
                "names several servers: set redis_cluster = true for a Redis Cluster",
            );
        }
        if self.nodes == 0 {
            p.at("cluster.nodes", "must be at least 1");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            p.at("cluster.key_prefix", "must be non-empty, without { or }");
        }
        if self.lease_ttl_secs == 0 {
            p.at("cluster.lease_ttl_secs", "must be at least 1");
        }
        if self.timeout_ms == 0 {
            p.at("cluster.timeout_ms", "must be at least 1");
        }
        if self.token_batch_max == 0 {
            p.at("cluster.token_batch_max", "must be at least 1");
        }
        if self.sync_interval_ms == 0 {
            p.at("cluster.sync_interval_ms", "must be at least 1");
        }
    }

    /// Whether the limits are shared.
    pub fn is_on(&self) -> bool {
        !self.redis.is_empty()
    }

    /// The URLs in `redis`.
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(redis: &str, redis_cluster: bool) -> usize {
        let cfg = ClusterConfig {
            redis: redis.into(),
            redis_cluster,
            ..ClusterConfig::default()
        };
        let mut p = Problems::default();
        cfg.check(&mut p);
        p.0.len()
    }

    #[test]
    fn one_server_or_the_seeds_of_a_cluster() {
        assert_eq!(problems("", false), 0);
        assert_eq!(problems("redis://10.0.0.5:6379", false), 0);
        assert_eq!(problems("redis://a:7000,redis://b:7000", true), 0);
        assert_eq!(problems("redis://a:7000, redis://b:7000", false), 1);
        assert_eq!(problems("rediss://a:7000", false), 1);
        let cfg = ClusterConfig {
            redis: " redis://a:1 ,redis://b:2,".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(cfg.redis_urls(), ["redis://a:1", "redis://b:2"]);
    }
}
