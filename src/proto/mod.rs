//! SMTP wire formats, as pure functions over bytes.
//!
//! Owns: splitting command lines out of a byte stream ([`line`]), parsing a
//! command line into a [`command::Command`], reading a message body out of a
//! DATA or BDAT stream ([`body`]), and every reply the server sends
//! ([`reply`]), including the single mapping from a rejection to its code,
//! and the `Received:` header every receiver writes ([`trace`]).
//!
//! Must not: do I/O, allocate without bound, or panic on any input. Every
//! function here is unit-tested in-module and fuzzed from `fuzz/`.
//!
//! Security: everything here parses bytes straight from the network.

pub mod body;
pub mod command;
pub mod line;
pub mod reply;
pub mod server_reply;
pub mod trace;

use serde::{Deserialize, Serialize};

/// What to do with a line that ends in a bare LF instead of CRLF.
///
/// A bare LF is how SMTP smuggling starts (a `\n.\r\n` that one server takes
/// for end of data and the next does not), so whichever is chosen, a `.`
/// line never ends DATA unless both it and the line before it end in CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareLf {
    /// Take the line as if it ended in CRLF (Postfix 3.9's `normalize`).
    #[default]
    Normalize,
    /// Answer 550 5.5.2 and close the connection.
    Reject,
}
