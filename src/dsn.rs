//! Delivery status notifications (RFC 3464): the bounce a sender gets when
//! mail fails for good or expires.
//!
//! Owns: [`build`], a pure function from the failed message and the failed
//! recipients to the DSN's bytes: a `multipart/report;
//! report-type=delivery-status` with a human-readable part, the
//! `message/delivery-status` part, and the original headers
//! (`text/rfc822-headers`).
//!
//! The scheduler queues the result from the null sender `<>` to the original
//! sender, through `queue::Spool::enqueue` like any other message, and never
//! bounces a message whose sender is `<>` (no bounce of a bounce).
//!
//! Must not: do I/O.

use std::fmt::Write as _;

/// One recipient the DSN reports on.
#[derive(Debug, Clone)]
pub struct FailedRcpt<'a> {
    pub recipient: &'a str,
    /// Enhanced status code, e.g. "5.1.1" or "4.4.7" (expired).
    pub status: &'a str,
    /// What the remote server (or ringpost) said.
    pub diagnostic: &'a str,
    /// The remote host that answered, if any.
    pub remote_mta: Option<&'a str>,
}

pub struct Notice<'a> {
    pub reporting_mta: &'a str,
    pub original_id: &'a str,
    pub original_sender: &'a str,
    /// Unix seconds when the original arrived.
    pub arrival: u64,
    pub expired: bool,
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
         Message-ID: <{id}.dsn@{mta}>\r\n\
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
        subject = if report.expired {
            "Undelivered Mail Returned to Sender (expired)"
        } else {
            "Undelivered Mail Returned to Sender"
        },
        date = now.to_rfc2822(),
        id = report.original_id,
    );
    let _ = write!(
        s,
        "This is the mail system at host {}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\r\n",
        report.reporting_mta
    );
    for f in report.failures {
        let _ = write!(s, "<{}>: {}\r\n", f.recipient, f.diagnostic);
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {mta}\r\n\
         X-Ringpost-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        mta = report.reporting_mta,
        id = report.original_id,
        arrival = date(report.arrival),
    );
    for f in report.failures {
        let _ = write!(
            s,
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n",
            rcpt = f.recipient,
            status = f.status,
        );
        if let Some(remote) = f.remote_mta {
            let _ = write!(s, "Remote-MTA: dns; {remote}\r\n");
        }
        let _ = write!(s, "Diagnostic-Code: smtp; {}\r\n", one_line(f.diagnostic));
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = s.into_bytes();
    out.extend_from_slice(headers_of(original));
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
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
    fn dsn_parses_as_multipart_report() {
        let original =
            b"Received: from x\r\nSubject: hello\r\nFrom: a@b.example\r\n\r\nbody text\r\n";
        let failures = [FailedRcpt {
            recipient: "nobody@dest.example",
            status: "5.1.1",
            diagnostic: "550 5.1.1 no such user\r\nsecond line",
            remote_mta: Some("mx.dest.example"),
        }];
        let dsn = build(
            &Notice {
                reporting_mta: "mx.test",
                original_id: "0123",
                original_sender: "a@b.example",
                arrival: 1_700_000_000,
                expired: false,
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
