//! A real `redis-server` on a loopback port, for the cluster tests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port (no persistence) and waits until it
    /// answers PING.
    pub fn start() -> RedisServer {
        let port = super::closed_port();
        let mut server = RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills it (SIGKILL, as a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.addr.port().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = self
                .connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server does not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster of `n` primaries (and, with
/// [`RedisCluster::start_with_replicas`], replicas) on loopback ports,
/// each with its cluster bus at port + 10000, made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        RedisCluster::start_with_replicas(n, 0)
    }

    /// `primaries` primaries with `replicas` replicas each; a node that
    /// does not answer for 2 s is failed over (`cluster-node-timeout`).
    pub fn start_with_replicas(primaries: usize, replicas: usize) -> RedisCluster {
        let n = primaries * (1 + replicas);
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut children = Vec::new();
        while nodes.len() < n {
            let port = super::closed_port();
            let bus_free =
                std::net::TcpListener::bind(("127.0.0.1", port.wrapping_add(10000))).is_ok();
            if port > 55000 || !bus_free {
                continue;
            }
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--port", &port.to_string(), "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (apt-get install redis-server)");
            children.push(Some(child));
            nodes.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let mut cluster = RedisCluster {
            nodes,
            children,
            _dir: dir,
        };
        for node in &cluster.nodes {
            wait_for_ping(&format!("redis://{node}"));
        }
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(|a| a.to_string()))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(made.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok();
        cluster
    }

    /// `redis://` URLs of every node, comma-separated (for `cluster.redis`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|a| format!("redis://{a}")).collect();
        urls.join(",")
    }

    /// A connection that follows the cluster's slots.
    pub fn connection(&self) -> redis::RedisResult<redis::cluster::ClusterConnection> {
        let urls: Vec<String> = self.nodes.iter().map(|a| format!("redis://{a}")).collect();
        redis::cluster::ClusterClient::new(urls)?.get_connection()
    }

    /// Keys held by each node.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|a| {
                let mut c = redis::Client::open(format!("redis://{a}"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                redis::cmd("DBSIZE").query(&mut c).unwrap()
            })
            .collect()
    }

    /// The nodes that are primaries now (`ROLE`), by index.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.children[i].is_some()
                    && redis::Client::open(format!("redis://{}", self.nodes[i]))
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                        .and_then(|mut c| redis::cmd("ROLE").query::<redis::Value>(&mut c))
                        .is_ok_and(|v| format!("{v:?}").contains("master"))
            })
            .collect()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every live node says `cluster_state:ok` (after a
    /// failover: a replica promoted), up to `secs`.
    pub fn wait_until_ok_within(&mut self, secs: u64) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        for (i, node) in self.nodes.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            loop {
                let info = redis::Client::open(format!("redis://{node}"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
                if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        started.elapsed()
    }

    fn wait_until_ok(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info = redis::Client::open(format!("redis://{node}"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
                if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn wait_for_ping(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "redis-server does not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
