//! ringpost: a queueing mail transfer agent, thread-per-core on io_uring.
//!
//! # Layout: the data path
//!
//! ```text
//!  client ──SMTP──▶ smtp_in ──enqueue──▶ queue (sled + body segments, per shard)
//!  client ──HTTP──▶ inject  ──enqueue──┘     │ receive
//!                       bounce (DSN) ──▶ scheduler (per-domain ready queues, retries)
//!                                            │ job
//!                          dns (MX, A) ──▶ smtp_out (pooled connections) ──SMTP──▶ MX hosts
//! ```
//!
//! - [`proto`]: SMTP command, reply and message-body codecs. Pure functions
//!   over bytes; no I/O.
//! - [`smtp_in`]: the inbound listener and session state machine.
//! - [`inject`]: the HTTP injection API (JSON in, same spool and scheduler).
//! - [`queue`]: message ids, envelopes, the durable spool with group commit,
//!   recovery and quarantine. The only user of sled.
//! - [`scheduler`]: per-shard, per-domain delivery scheduling: limits,
//!   retries with back-off, expiry, bounces.
//! - [`smtp_out`]: one delivery attempt over a pooled connection, and the
//!   one mapping from replies and errors to outcomes.
//! - [`dns`]: MX and address lookups on a resolver thread.
//! - [`bounce`]: delivery status notifications (RFC 3464).
//! - [`events`]: the JSON delivery log.
//! - [`metrics`]: every Prometheus metric, declared once; `/metrics`.
//! - [`tls`]: rustls configs for inbound STARTTLS and outbound encryption.
//! - [`admin`]: the admin HTTP API (JSON) on a running server, and the
//!   client behind `ringpost queue ...`.
//! - [`http`]: the small HTTP/1.1 server behind the metrics, admin and
//!   injection endpoints.
//! - [`runtime`]: one glommio executor per core, start-up and shutdown, and
//!   `shard_for`, the one place that maps a message to its shard.
//! - [`config`]: the typed configuration; its defaults are the embedded
//!   default config.
//! - [`cli`]: the command-line interface (the binary is a thin wrapper).

pub mod admin;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod dns;
pub mod events;
pub mod http;
pub mod inject;
pub mod metrics;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod scheduler;
pub mod smtp_in;
pub mod smtp_out;
pub mod tls;
