//! The `Received:` trace header (RFC 5321 4.4) that a receiver (SMTP or
//! HTTP injection) puts on top of every message it queues.
//!
//! Owns: the header's one format. Must not: choose the names in it; the
//! receiver says who the client was and by which protocol.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::command::Mailbox;

/// What one `Received:` header records.
pub struct Trace<'a> {
    /// The name the client gave (HELO/EHLO), or its address literal.
    pub from: &'a str,
    pub ip: IpAddr,
    /// This host's name.
    pub by: &'a str,
    /// The protocol (RFC 3848, RFC 6531): ESMTPS, UTF8SMTP, HTTP...
    pub with: &'a str,
    /// The queue id.
    pub id: &'a str,
    /// The recipient, when there is exactly one.
    pub only_rcpt: Option<&'a Mailbox>,
    /// RFC 5322 date-time.
    pub date: &'a str,
}

/// `ip` as an address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Appends the header, CRLF-terminated, folded before `by` and `for`.
pub fn received(out: &mut Vec<u8>, t: &Trace) {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "Received: from {} ({})\r\n\tby {} (ringpost) with {} id {}",
        t.from,
        address_literal(t.ip),
        t.by,
        t.with,
        t.id
    );
    if let Some(only) = t.only_rcpt {
        let _ = write!(s, "\r\n\tfor <{only}>");
    }
    let _ = write!(s, "; {}\r\n", t.date);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recipient_is_named_and_ipv6_is_a_literal() {
        let rcpt = Mailbox {
            local: "a".into(),
            domain: "b.example".into(),
        };
        let mut out = Vec::new();
        received(
            &mut out,
            &Trace {
                from: "client.example",
                ip: "2001:db8::1".parse().unwrap(),
                by: "mx.example",
                with: "ESMTPS",
                id: "ID1",
                only_rcpt: Some(&rcpt),
                date: "Thu, 26 Nov 2026 20:00:00 +0000",
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from client.example ([IPv6:2001:db8::1])\r\n\tby mx.example (ringpost) with ESMTPS id ID1\r\n\tfor <a@b.example>; Thu, 26 Nov 2026 20:00:00 +0000\r\n"
        );
    }
}
