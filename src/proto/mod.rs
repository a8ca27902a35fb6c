//! SMTP wire formats, as pure functions over bytes.
//!
//! Owns: splitting command lines out of a byte stream ([`line`]), parsing a
//! command line into a [`command::Command`], reading a message body out of a
//! DATA or BDAT stream ([`body`]), and every reply the server sends
//! ([`reply`]), including the single mapping from a rejection to its code,
//! the `Received:` header every receiver writes ([`trace`]), and taking a
//! header field out of a message ([`header`]).
//!
//! May call: `dsn` (the NOTIFY and RET values it parses).
//! Must not: do I/O, allocate without bound, or panic on any input. Every
//! function here is unit-tested in-module and fuzzed from `fuzz/`.
//!
//! Security: everything here parses bytes straight from the network.

pub mod body;
pub mod command;
pub mod dsn_params;
pub mod header;
pub mod line;
pub mod reply;
pub mod server_reply;
pub mod trace;
