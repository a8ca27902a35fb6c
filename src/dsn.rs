//! Delivery status notifications (RFC 3464): the notice a sender gets
//! when mail fails for good or expires, is delayed, or (when asked for
//! with the DSN extension, RFC 3461) was relayed to a next hop that
//! cannot pass the request on.
//!
//! Owns: what a sender asks for with the DSN extension, kept in the
//! queue record ([`Notify`] per recipient, [`Ret`] per message; their
//! SMTP text is `proto::dsn_params`'s to parse from the wire), and
//! [`build`], a pure function from the message and the recipients
//! reported on to the DSN's bytes: a `multipart/report;
//! report-type=delivery-status` with a human-readable part, the
//! `message/delivery-status` part (with the sender's `Original-Envelope-Id`
//! and each recipient's `Original-Recipient` when given), and the original
//! message: its headers (`text/rfc822-headers`), or the whole of it
//! (`message/rfc822`) for a failure notice when the sender asked `RET=FULL`.
//!
//! The scheduler queues the result from the null sender `<>` to the original
//! sender, through `queue::Spool::enqueue` like any other message, and never
//! bounces a message whose sender is `<>` (no bounce of a bounce).
//!
//! May call: nothing else in the crate.
//! Must not: do I/O.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a sender asked to be told of about one recipient: `NEVER`, or
/// any of `SUCCESS`, `FAILURE`, `DELAY`. Stored as its SMTP text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(u8);

impl Notify {
    const SUCCESS: u8 = 1;
    const FAILURE: u8 = 2;
    const DELAY: u8 = 4;

    pub const NEVER: Notify = Notify(0);

    pub fn success(self) -> bool {
        self.0 & Self::SUCCESS != 0
    }
    pub fn failure(self) -> bool {
        self.0 & Self::FAILURE != 0
    }
    pub fn delay(self) -> bool {
        self.0 & Self::DELAY != 0
    }

    /// A NOTIFY value: `NEVER`, or a comma-separated list of `SUCCESS`,
    /// `FAILURE`, `DELAY` (any case, each at most once).
    pub fn parse(v: &str) -> Option<Notify> {
        if v.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut bits = 0u8;
        for word in v.split(',') {
            let bit = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => Self::SUCCESS,
                "FAILURE" => Self::FAILURE,
                "DELAY" => Self::DELAY,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        Some(Notify(bits))
    }

    /// The SMTP text: `NEVER` or e.g. `SUCCESS,FAILURE`.
    pub fn as_text(self) -> String {
        if self.0 == 0 {
            return "NEVER".into();
        }
        let words = [
            (Self::SUCCESS, "SUCCESS"),
            (Self::FAILURE, "FAILURE"),
            (Self::DELAY, "DELAY"),
        ];
        words
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Serialize for Notify {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_text())
    }
}

impl<'de> Deserialize<'de> for Notify {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Notify, D::Error> {
        let text = String::deserialize(d)?;
        Notify::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("NOTIFY {text:?}")))
    }
}

/// How much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(v: &str) -> Option<Ret> {
        match v.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }

    pub fn as_text(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// What a notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Recipients failed for good (`expired`: their time in the queue ran
    /// out).
    Failure { expired: bool },
    /// Recipients not delivered yet, still being tried.
    Delay,
    /// Recipients handed to a next hop that does not offer DSN (Action:
    /// relayed).
    Relayed,
}

impl NoticeKind {
    fn action(self) -> &'static str {
        match self {
            NoticeKind::Failure { .. } => "failed",
            NoticeKind::Delay => "delayed",
            NoticeKind::Relayed => "relayed",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            NoticeKind::Failure { expired: false } => "Undelivered Mail Returned to Sender",
            NoticeKind::Failure { expired: true } => {
                "Undelivered Mail Returned to Sender (expired)"
            }
            NoticeKind::Delay => "Delayed Mail (still being retried)",
            NoticeKind::Relayed => "Successful Mail Delivery Report (relayed)",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            NoticeKind::Failure { .. } => {
                "Your message could not be delivered to one or more recipients."
            }
            NoticeKind::Delay => {
                "Your message has not been delivered to one or more recipients yet. \
                 It is still being tried; you need not send it again."
            }
            NoticeKind::Relayed => {
                "Your message was handed to the next mail server for one or more \
                 recipients. That server does not return delivery notices, so this \
                 may be the last you hear of it."
            }
        }
    }
}

/// One recipient the DSN reports on.
#[derive(Debug, Clone)]
pub struct FailedRcpt<'a> {
    pub recipient: &'a str,
    /// Enhanced status code, e.g. "5.1.1", "4.4.7" (expired), "2.0.0".
    pub status: &'a str,
    /// What the remote server (or ringpost) said.
    pub diagnostic: &'a str,
    /// The remote host that answered, if any.
    pub remote_mta: Option<&'a str>,
    /// The sender's ORCPT (`type;address`), if given.
    pub original_recipient: Option<&'a str>,
}

pub struct Notice<'a> {
    pub reporting_mta: &'a str,
    pub original_id: &'a str,
    pub original_sender: &'a str,
    /// Unix seconds when the original arrived.
    pub arrival: u64,
    pub kind: NoticeKind,
    /// The sender's ENVID, if given.
    pub envid: Option<&'a str>,
    /// Return the whole message (`RET=FULL`, failure notices only), not
    /// only its headers.
    pub full: bool,
    pub failures: &'a [FailedRcpt<'a>],
}

/// The DSN message (headers and body, CRLF line endings).
pub fn build(report: &Notice, original: &[u8]) -> Vec<u8> {
    let boundary = format!("{}/{}", report.original_id, report.reporting_mta);
    let now = chrono::Utc::now();
    let date = |secs: u64| {
        chrono::DateTime::from_timestamp(secs as i64, 0)
            .unwrap_or(now)
            .to_rfc2822()
    };
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{action}.dsn@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        mta = report.reporting_mta,
        to = report.original_sender,
        subject = report.kind.subject(),
        date = now.to_rfc2822(),
        id = report.original_id,
        action = report.kind.action(),
    );
    let _ = write!(
        s,
        "This is the mail system at host {}.\r\n\r\n{}\r\n\r\n",
        report.reporting_mta,
        report.kind.explanation()
    );
    for f in report.failures {
        let _ = write!(s, "<{}>: {}\r\n", f.recipient, one_line(f.diagnostic));
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    );
    write_status(&mut s, report, date(report.arrival));
    let full = report.full && matches!(report.kind, NoticeKind::Failure { .. });
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Type: {}\r\n\
         \r\n",
        if full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        }
    );
    let mut out = s.into_bytes();
    out.extend_from_slice(if full { original } else { headers_of(original) });
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The `message/delivery-status` fields (RFC 3464 2.2, 2.3): the
/// per-message ones, then a block per recipient.
fn write_status(s: &mut String, report: &Notice, arrival: String) {
    if let Some(envid) = report.envid {
        let _ = write!(s, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        s,
        "Reporting-MTA: dns; {mta}\r\n\
         X-Ringpost-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        mta = report.reporting_mta,
        id = report.original_id,
        arrival = arrival,
    );
    for f in report.failures {
        s.push_str("\r\n");
        if let Some(orcpt) = f.original_recipient {
            let _ = write!(s, "Original-Recipient: {}\r\n", one_line(orcpt));
        }
        let _ = write!(
            s,
            "Final-Recipient: rfc822; {rcpt}\r\n\
             Action: {action}\r\n\
             Status: {status}\r\n",
            rcpt = f.recipient,
            action = report.kind.action(),
            status = f.status,
        );
        if let Some(remote) = f.remote_mta {
            let _ = write!(s, "Remote-MTA: dns; {remote}\r\n");
        }
        if !f.diagnostic.is_empty() {
            let _ = write!(s, "Diagnostic-Code: smtp; {}\r\n", one_line(f.diagnostic));
        }
    }
}

/// The header section of a message (up to and including the last header
/// line's CRLF).
fn headers_of(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &msg[..i + 2],
        None => msg,
    }
}

/// Diagnostics come from remote servers: keep them on one printable line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        let n = Notify::parse("success,Delay").unwrap();
        assert!(n.success() && n.delay() && !n.failure());
        assert_eq!(n.as_text(), "SUCCESS,DELAY");
        assert_eq!(Notify::parse("NEVER,SUCCESS"), None);
        assert_eq!(Notify::parse("SUCCESS,SUCCESS"), None);
        assert_eq!(Notify::parse(""), None);
        assert_eq!(Notify::parse("SOMETIMES"), None);
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<Notify>(&json).unwrap(), n);
    }

    #[test]
    fn ret_values() {
        assert_eq!(Ret::parse("hdrs"), Some(Ret::Hdrs));
        assert_eq!(Ret::parse("FULL"), Some(Ret::Full));
        assert_eq!(Ret::parse("SOME"), None);
    }

    #[test]
    fn dsn_parses_as_multipart_report() {
        let original =
            b"Received: from x\r\nSubject: hello\r\nFrom: a@b.example\r\n\r\nbody text\r\n";
        let failures = [FailedRcpt {
            recipient: "nobody@dest.example",
            status: "5.1.1",
            diagnostic: "550 5.1.1 no such user\r\nsecond line",
            remote_mta: Some("mx.dest.example"),
            original_recipient: None,
        }];
        let dsn = build(
            &Notice {
                reporting_mta: "mx.test",
                original_id: "0123",
                original_sender: "a@b.example",
                arrival: 1_700_000_000,
                kind: NoticeKind::Failure { expired: false },
                envid: None,
                full: false,
                failures: &failures,
            },
            original,
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains("Final-Recipient: rfc822; nobody@dest.example\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user  second line\r\n"));
        assert!(
            !text.contains("body text"),
            "only the original headers are returned"
        );
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(parsed.content_type().unwrap().subtype(), Some("report"));
        assert_eq!(parsed.attachment_count() + parsed.text_body_count(), 3);
    }
}
