//! ringpost: a queueing mail transfer agent, thread-per-core on io_uring.
//!
//! # Layout: the data path
//!
//! ```text
//!  client ──SMTP──▶ inbound::smtp ─┐   (signs: dkim)
//!  app ─────HTTP──▶ http::inject ──┼─▶ inbound::Door ──▶ queue (segments + sled, per shard)
//!  DSNs (scheduler) ───────────────┘    (one door)            │ submit
//!                                                             ▼
//!                                       scheduler (per-domain ready queues, retries)
//!                                                             │ job
//!                       dns (MX, A) ──▶ outbound (routes, pooled connections) ──SMTP──▶ MX hosts
//! ```
//!
//! - [`inbound`]: reception. [`inbound::Door`] is the one way into the
//!   queue; [`inbound::smtp`] is the SMTP front end.
//! - [`queue`]: message ids, envelopes, the durable spool with group
//!   commit, recovery and quarantine. The only user of sled.
//! - [`scheduler`]: per-shard, per-domain delivery scheduling: limits,
//!   retries with back-off, expiry, bounces.
//! - [`outbound`]: where mail for a domain goes, and one delivery attempt
//!   over a pooled connection, with the one mapping from replies and
//!   errors to outcomes.
//! - [`http`]: the HTTP server and its three APIs: admin, metrics,
//!   injection.
//!
//! Beside the path:
//!
//! - [`proto`]: SMTP command, reply and message-body codecs. Pure functions
//!   over bytes; no I/O.
//! - [`classify`]: bounce classification of failed and deferred
//!   deliveries (categories, rules).
//! - [`feedback`]: reading spam complaints (ARF) and asynchronous bounces
//!   (DSNs) that receivers send back; the door's `inbound::feedback`
//!   acts on them.
//! - [`dkim`]: DKIM signing keys and the signer the door calls for every
//!   message.
//! - [`cluster`]: what a fleet of nodes shares through Redis (rates,
//!   connection leases, suspensions, idempotency keys), with the 1/N
//!   fallback when Redis is unreachable.
//! - [`dns`]: MX, address, TLSA and TXT lookups on a resolver thread,
//!   DNSSEC-validated with `dns.dnssec`.
//! - [`tls`]: rustls configs for inbound STARTTLS and outbound encryption.
//! - [`mta_sts`]: MTA-STS policy files (RFC 8461): parsed and fetched.
//! - [`dane`]: DANE (RFC 7672): a receiver's TLSA records as the check of
//!   its MX host's certificate.
//! - [`tlsrpt`]: TLS reporting (RFC 8460): outbound TLS sessions counted
//!   per day and policy, and the daily report made of them.
//! - [`unsubscribe`]: one-click unsubscribe (RFC 8058): the signed links
//!   reception adds, verified when they come back.
//! - [`dsn`]: delivery status notifications (RFC 3464).
//! - [`events`]: the JSON delivery log.
//! - [`metrics`]: every Prometheus metric, declared once.
//! - [`config`]: the typed configuration; its defaults are the embedded
//!   default config. Depends on nothing else here.
//! - [`shard`]: the thread-per-core kit (task sets, the stop signal, shared
//!   listeners, the shard mesh, the clock). Nothing mail-specific.
//!
//! At the top: [`server`], the composition root that assembles the shards,
//! and [`cli`], the command line (the binary is a thin wrapper).

pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dane;
pub mod dkim;
pub mod dns;
pub mod dsn;
pub mod events;
pub mod feedback;
pub mod history;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod mta_sts;
pub mod outbound;
pub mod proto;
pub mod queue;
pub mod scheduler;
pub mod server;
pub mod shard;
pub mod suppression;
pub mod tls;
pub mod tlsrpt;
pub mod unsubscribe;
