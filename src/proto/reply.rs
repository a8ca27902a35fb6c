//! SMTP replies: formatting, and the one place where each rejection gets its
//! reply code and enhanced status code (RFC 3463).
//!
//! Owns: [`Reply`] and [`Rejection`]. Callers never write a reply code of an
//! error themselves; they name the [`Rejection`] and call [`Rejection::reply`].
//!
//! Must not: do I/O.

use std::fmt::Write as _;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code ("2.0.0"), or None where RFC 2034 leaves it out
    /// (the greeting and the replies to HELO/EHLO).
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (greeting, HELO/EHLO).
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "Ok")
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(64);
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(s, "{}{}", self.code, sep);
            if let Some(e) = self.enhanced {
                let _ = write!(s, "{e} ");
            }
            s.push_str(text);
            s.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(s, "{} \r\n", self.code);
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

/// Every reason the server refuses something, each with exactly one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("command unrecognized")]
    UnknownCommand,
    /// A future release (RFC 4865) further ahead than the server holds
    /// mail (seconds asked, the limit).
    #[error("future release too far ahead")]
    HoldTooLong(u64, u64),
    #[error("command line too long")]
    LineTooLong,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad sender address syntax")]
    BadSender,
    #[error("bad recipient address syntax")]
    BadRecipient,
    #[error("unsupported parameter: {0}")]
    UnsupportedParameter(String),
    #[error("bad sequence of commands: {0}")]
    BadSequence(&'static str),
    #[error("message too big")]
    MessageTooBig,
    #[error("too many recipients")]
    TooManyRecipients,
    #[error("relay access denied")]
    RelayDenied,
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
    #[error("message has a line longer than the limit")]
    TextLineTooLong,
    #[error("bare LF received")]
    BareLf,
    #[error("bare CR received")]
    BareCr,
    #[error("insufficient system storage")]
    InsufficientStorage,
    #[error("too many errors")]
    TooManyErrors,
    #[error("idle timeout")]
    Timeout,
    #[error("queue write failed")]
    StorageFailure,
    #[error("server shutting down")]
    ShuttingDown,
    #[error("command not implemented")]
    NotImplemented,
    #[error("commands pipelined after STARTTLS")]
    PipelinedAfterStartTls,
    #[error("TLS handshake failed")]
    TlsFailed,
    #[error("too many connections")]
    TooManyConnections,
    #[error("commands sent before the 354 reply to DATA")]
    Unsynchronized,
    #[error("authentication required")]
    AuthRequired,
    #[error("encryption required for authentication")]
    EncryptionRequired,
    #[error("authentication failed")]
    AuthFailed,
    #[error("unsupported authentication mechanism")]
    AuthMechanism,
    #[error("authentication cancelled or malformed")]
    AuthCancelled,
    #[error("too many failed authentications")]
    TooManyAuthFailures,
    #[error("recipient suppressed")]
    Suppressed,
    /// The `meta.header` of a trusted client is not a bounded JSON object.
    #[error("bad meta: {0}")]
    BadMeta(String),
    /// A trusted client named an egress pool that does not exist.
    #[error("unknown pool {0}")]
    UnknownPool(String),
    /// A trusted client's priority header is not high, normal or bulk.
    #[error("bad priority: {0}")]
    BadPriority(String),
    /// A mail loop: more `Received:` fields than allowed.
    #[error("too many hops")]
    TooManyHops,
    /// An administrator's bounce rule (`queue bounce --for`) matches:
    /// its reason.
    #[error("refused by a bounce rule: {0}")]
    BounceRule(String),
}

impl Rejection {
    /// The single mapping from a rejection to its reply.
    pub fn reply(&self) -> Reply {
        use Rejection::*;
        match self {
            UnknownCommand => Reply::new(500, "5.5.1", "Error: command not recognized"),
            LineTooLong => Reply::new(500, "5.5.2", "Error: line too long"),
            Syntax(what) => Reply::new(501, "5.5.4", format!("Syntax: {what}")),
            BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            UnsupportedParameter(p) => Reply::new(555, "5.5.4", format!("Unsupported option: {p}")),
            BadSequence(what) => Reply::new(503, "5.5.1", format!("Error: {what}")),
            MessageTooBig => Reply::new(552, "5.3.4", "Error: message too big for system"),
            TooManyRecipients => Reply::new(452, "4.5.3", "Error: too many recipients"),
            RelayDenied => Reply::new(554, "5.7.1", "Relay access denied"),
            NeedsSmtpUtf8 => Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires the SMTPUTF8 parameter",
            ),
            TextLineTooLong => Reply::new(
                554,
                "5.6.0",
                "Error: message has a line longer than the limit",
            ),
            BareLf => Reply::new(550, "5.5.2", "Error: bare <LF> received"),
            BareCr => Reply::new(550, "5.5.2", "Error: bare <CR> received"),
            TooManyErrors => Reply::new(421, "4.7.0", "Error: too many errors, closing"),
            Timeout => Reply::new(421, "4.4.2", "Error: timeout exceeded, closing"),
            StorageFailure => Reply::new(451, "4.3.0", "Error: queue file write error"),
            InsufficientStorage => Reply::new(452, "4.3.1", "Insufficient system storage"),
            ShuttingDown => Reply::new(421, "4.3.2", "Service shutting down, closing"),
            NotImplemented => Reply::new(502, "5.5.1", "Error: command not implemented"),
            PipelinedAfterStartTls => Reply::new(
                554,
                "5.5.1",
                "Error: commands sent after STARTTLS before the handshake, closing",
            ),
            TlsFailed => Reply::new(454, "4.7.0", "TLS not available due to temporary reason"),
            TooManyConnections => {
                Reply::new(421, "4.7.0", "Error: too many connections, try again later")
            }
            Unsynchronized => Reply::new(
                554,
                "5.5.0",
                "Error: SMTP protocol synchronization, closing",
            ),
            AuthRequired => Reply::new(530, "5.7.0", "Authentication required"),
            EncryptionRequired => Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ),
            AuthFailed => Reply::new(535, "5.7.8", "Authentication credentials invalid"),
            AuthMechanism => Reply::new(504, "5.5.4", "Unrecognized authentication type"),
            AuthCancelled => Reply::new(501, "5.7.0", "Authentication cancelled"),
            TooManyAuthFailures => Reply::new(
                421,
                "4.7.0",
                "Error: too many failed authentications, closing",
            ),
            Suppressed => Reply::new(550, "5.7.1", "Recipient suppressed"),
            BadMeta(why) => Reply::new(550, "5.6.0", why),
            UnknownPool(name) => Reply::new(550, "5.7.0", format!("no egress pool named {name:?}")),
            BadPriority(why) => Reply::new(550, "5.6.0", why),
            TooManyHops => Reply::new(554, "5.4.6", "Too many hops: mail loop?"),
            HoldTooLong(asked, max) => Reply::new(
                501,
                "5.5.4",
                format!("Future release in {asked} seconds is beyond the limit of {max}"),
            ),
            BounceRule(why) => {
                Reply::new(550, "5.7.1", format!("Refused by the administrator: {why}"))
            }
        }
    }

    /// Whether the session must end after this reply.
    pub fn closes_session(&self) -> bool {
        matches!(
            self,
            Rejection::BareLf
                | Rejection::BareCr
                | Rejection::TooManyErrors
                | Rejection::Timeout
                | Rejection::ShuttingDown
                | Rejection::PipelinedAfterStartTls
                | Rejection::TooManyConnections
                | Rejection::Unsynchronized
                | Rejection::TooManyAuthFailures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_form() {
        assert_eq!(Reply::ok().to_bytes(), b"250 2.0.0 Ok\r\n");
        let r = Reply::plain(250, vec!["a".into(), "b".into()]);
        assert_eq!(r.to_bytes(), b"250-a\r\n250 b\r\n");
    }

    #[test]
    fn every_rejection_is_an_error_reply_with_enhanced_code() {
        for r in [
            Rejection::UnknownCommand,
            Rejection::LineTooLong,
            Rejection::MessageTooBig,
            Rejection::TooManyRecipients,
            Rejection::RelayDenied,
            Rejection::Timeout,
        ] {
            let reply = r.reply();
            assert!(reply.is_error());
            let e = reply.enhanced.unwrap();
            assert_eq!(e.as_bytes()[0] - b'0', (reply.code / 100) as u8);
        }
    }
}
