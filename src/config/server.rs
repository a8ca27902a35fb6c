//! `[server]`: process-wide settings.

use std::sync::OnceLock;

use super::Problems;

section! {
    /// Process-wide settings.
    ServerConfig = "server" {
        /// Name used in the 220 greeting, the EHLO reply and `Received:`
        /// headers, and in EHLO outbound unless `delivery.helo_name` is set.
        /// No spaces. Empty: the machine's host name (ringpost warns at
        /// start-up when that is not a fully qualified name).
        hostname: String = String::new(),
        /// Executors, one per core. `0`: one per online CPU. `serve
        /// --shards N` overrides it. The count may change between runs:
        /// with more shards the new ones start empty; with fewer, each
        /// shard takes over the spools of the shards that no longer run at
        /// start-up (copied durably, then removed; a start cut off half-way
        /// copies them again, without duplicates). More shards than CPUs
        /// run unpinned.
        shards: usize = 0,
        /// On SIGTERM or SIGINT ringpost stops accepting, lets open mail
        /// transactions, injection requests and delivery attempts finish for
        /// up to this long (counted from the signal, on every shard at
        /// once), closes idle sessions (`421 4.3.2`), and exits 0. Nothing
        /// acknowledged is lost either way: the queue is on disk.
        shutdown_grace_secs: u64 = 30,
    }
}

impl ServerConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.hostname.contains(char::is_whitespace) {
            p.at("server.hostname", "must be a name without spaces");
        }
        if self.shards > 1024 {
            p.at("server.shards", "must be at most 1024");
        }
    }
}

/// The machine's host name (read once), or "localhost".
pub fn system_hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}
