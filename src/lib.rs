//! ringpost: a queueing mail transfer agent, thread-per-core on io_uring.
//!
//! # Layout: the data path
//!
//! ```text
//!  client ──SMTP──▶ smtp_in ──enqueue──▶ queue (sled + body files, one per shard)
//! ```
//!
//! - [`proto`]: SMTP command, reply and message-body codecs. Pure functions
//!   over bytes; no I/O.
//! - [`smtp_in`]: the inbound listener and session state machine.
//! - [`queue`]: message ids, envelopes, the durable spool with group commit,
//!   recovery and quarantine. The only user of sled.
//! - [`runtime`]: one glommio executor per core, start-up and shutdown, and
//!   `shard_for`, the one place that maps a message to its shard.
//! - [`config`]: the typed configuration; its defaults are the embedded
//!   default config.
//! - [`cli`]: the command-line interface (the binary is a thin wrapper).

pub mod cli;
pub mod config;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod smtp_in;
