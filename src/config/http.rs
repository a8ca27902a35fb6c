//! `[metrics]`, `[admin]` and `[inject]`: the HTTP listeners.

use super::{Listen, Problems};

section! {
    /// The HTTP endpoint for Prometheus and orchestrators, served by shard
    /// 0. `ringpost dump-metrics` lists every metric with its type and help
    /// text; the dashboard in `grafana/` uses only those.
    MetricsConfig = "metrics" {
        /// `GET /metrics` (Prometheus text format), `GET /healthz` (200
        /// while the process answers), `GET /readyz` (200 once every shard
        /// has started, 503 before), or `"off"`.
        listen: Listen = Listen::at("127.0.0.1:9464"),
    }
}

section! {
    /// The admin API (JSON over HTTP), served by shard 0, behind `ringpost
    /// queue ...`; its routes: docs/admin-api.md.
    AdminConfig = "admin" {
        /// Address of the admin API, or `"off"`. An address other than
        /// loopback is refused unless `token_file` is set.
        listen: Listen = Listen::at("127.0.0.1:9465"),
        /// A file whose first line (at least 16 characters) is the bearer
        /// token every request must carry (`Authorization: Bearer ...`);
        /// `ringpost queue` reads the same file. Empty: no token (loopback
        /// only).
        token_file: String = String::new(),
        /// Messages a bulk action (`queue delete` or `queue bounce` with a
        /// selector, `POST /queue/actions`) deletes or bounces per second
        /// at most, the node's shards together, so that reception and
        /// delivery keep their pace while a campaign is removed. 0: no
        /// cap.
        bulk_messages_per_second: u64 = 1_000,
    }
}

section! {
    /// The HTTP injection API (`POST /api/inject/v1`, docs/injection.md), on
    /// every shard. The message itself obeys `smtp.max_message_size`,
    /// `max_line_length` and `max_recipients` as SMTP mail does.
    InjectConfig = "inject" {
        /// Address of the injection API, or `"off"`. Requests may carry up
        /// to 1.5 x `smtp.max_message_size` + 256 KiB of JSON.
        listen: Listen = Listen::at("127.0.0.1:8025"),
        /// A file whose first line (at least 16 characters) is a bearer
        /// token (`Authorization: Bearer ...`) that lets a client outside
        /// `smtp.relay_networks` inject. Clients inside `relay_networks`
        /// need none. Empty: only `relay_networks` may inject (403 for
        /// anyone else).
        token_file: String = String::new(),
        /// Concurrent injection connections, all clients together; each
        /// shard admits its equal share. More get `503` at once (and, past
        /// twice the share, are closed unanswered).
        max_connections: usize = 1000,
        /// Concurrent injection connections from one client address (each
        /// shard admits its equal share), so that one client cannot hold
        /// every place. More get `503`.
        max_connections_per_ip: usize = 100,
        /// Seconds within which a request head must arrive whole (from the
        /// connection's start, or the previous answer on a kept-alive
        /// connection); a body gets this long plus its length at 32 KiB/s.
        /// Slower clients are disconnected.
        head_timeout_secs: u64 = 10,
        /// PEM certificate chain for HTTPS on the injection listener (with
        /// `key_file`); read again on SIGHUP (a bad file keeps the one in
        /// force). Empty: plain HTTP.
        cert_file: String = String::new(),
        /// PEM private key of `cert_file`.
        key_file: String = String::new(),
        /// How long the answer to a request with an `Idempotency-Key`
        /// header is kept, in seconds: the same key again within it gets
        /// the first answer (the same message id) and queues nothing;
        /// across restarts, and across the nodes of a cluster when
        /// `cluster.redis` is set. 0: the header is ignored.
        idempotency_window_secs: u64 = 86_400,
        /// Add `Date:` (the time of reception) to injected messages whose
        /// header has none, before DKIM signing (RFC 5322 requires it).
        add_date: bool = true,
        /// Add `Message-ID: <queue id@server.hostname>` to injected
        /// messages whose header has none, before DKIM signing.
        add_message_id: bool = true,
    }
}

impl AdminConfig {
    pub fn check(&self, p: &mut Problems) {
        if let Some(a) = self.listen.addr()
            && !a.ip().is_loopback()
            && self.token_file.is_empty()
        {
            p.at(
                "admin.listen",
                "not a loopback address: set admin.token_file so that the queue cannot be \
                 changed by anyone who can reach it",
            );
        }
    }
}

impl InjectConfig {
    /// Whether the injection listener speaks HTTPS.
    pub fn tls(&self) -> bool {
        !self.cert_file.is_empty()
    }

    pub fn check(&self, p: &mut Problems) {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            p.at("inject.cert_file", "cert_file and key_file go together");
        }
        if self.max_connections == 0 {
            p.at("inject.max_connections", "must be at least 1");
        }
        if self.head_timeout_secs == 0 {
            p.at("inject.head_timeout_secs", "must be at least 1");
        }
        if self.max_connections_per_ip == 0 {
            p.at("inject.max_connections_per_ip", "must be at least 1");
        }
    }
}
