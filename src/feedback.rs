//! Reports that receivers send back: spam complaints (ARF, RFC 5965) and
//! asynchronous bounces (DSNs, RFC 3464), read into a [`Report`].
//!
//! Owns: [`parse`], a pure function over a report's bytes (unit-tested,
//! fuzzed in `fuzz/fuzz_targets/feedback.rs`), built on `mail-parser`
//! for the MIME structure and for the report's own field blocks.
//!
//! A report is tied back to the message it is about by the message's
//! queue id, found in the original message (or its headers) that the
//! report carries: in the tracking header ringpost adds at reception
//! (`feedback.tracking_header`), else in the `Received:` header ringpost
//! wrote (`by HOST (ringpost) with ESMTP id ID`).
//!
//! May call: nothing else in the crate; mail-parser.
//! Must not: do anything with what it read (the reception door acts on it:
//! `inbound::feedback`).

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

/// What a report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: ReportKind,
    /// ARF `Feedback-Type` (abuse, fraud, virus, not-spam, other, ...).
    pub feedback_type: Option<String>,
    /// Who sent it: ARF `User-Agent`, DSN `Reporting-MTA`.
    pub reporter: Option<String>,
    /// The recipients it is about, each with what happened.
    pub recipients: Vec<ReportedRecipient>,
    /// The original's envelope sender: ARF `Original-Mail-From`, else the
    /// original's `Return-Path:`.
    pub original_mail_from: Option<String>,
    /// The original's `From:` address.
    pub original_from: Option<String>,
    /// The original's queue id, as text (see the module header).
    pub original_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `multipart/report; report-type=feedback-report`.
    Complaint,
    /// `multipart/report; report-type=delivery-status`.
    Dsn,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Complaint => "arf",
            ReportKind::Dsn => "dsn",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    pub address: String,
    /// DSN `Action` (failed, delayed, delivered, relayed, expanded).
    pub action: Option<String>,
    /// DSN `Status`, e.g. "5.1.1".
    pub status: Option<String>,
    /// DSN `Diagnostic-Code` without its type, e.g. "550 5.1.1 no such
    /// user".
    pub diagnostic: Option<String>,
}

/// Why bytes are not a report ringpost can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a MIME message")]
    NotAMessage,
    #[error("not a multipart/report of type feedback-report or delivery-status")]
    NotAReport,
    #[error("no message/feedback-report or message/delivery-status part")]
    NoReportPart,
    #[error("names no recipient")]
    NoRecipient,
}

impl Malformed {
    /// For `ringpost_feedback_reports_total{result}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::NotAMessage => "not_a_message",
            Malformed::NotAReport => "not_a_report",
            Malformed::NoReportPart => "no_report_part",
            Malformed::NoRecipient => "no_recipient",
        }
    }
}

/// Reads a complaint or a DSN. `tracking_header`: the header that carries
/// the queue id (empty: only `Received:` is looked at).
pub fn parse(bytes: &[u8], tracking_header: &str) -> Result<Report, Malformed> {
    let msg = MessageParser::default()
        .parse(bytes)
        .ok_or(Malformed::NotAMessage)?;
    let kind = report_kind(&msg).ok_or(Malformed::NotAReport)?;
    let (fields, original) = report_parts(&msg, kind);
    let blocks = field_blocks(fields.ok_or(Malformed::NoReportPart)?);
    let first = blocks.first().map(Vec::as_slice).unwrap_or_default();
    let mut report = Report {
        kind,
        feedback_type: field(first, "Feedback-Type").map(|v| v.to_ascii_lowercase()),
        reporter: match kind {
            ReportKind::Complaint => field(first, "User-Agent"),
            ReportKind::Dsn => field(first, "Reporting-MTA").map(|v| typed_value(&v)),
        },
        recipients: Vec::new(),
        original_mail_from: None,
        original_from: None,
        original_id: None,
    };
    if let Some(m) = &original {
        let headers: Vec<(&str, &str)> = m.headers_raw().collect();
        report.original_id = original_id(&headers, tracking_header);
        report.original_from = m
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_string);
        report.original_mail_from = header(&headers, "Return-Path").map(|v| angle_addr(&v));
    }
    match kind {
        ReportKind::Complaint => {
            if let Some(from) = field(first, "Original-Mail-From") {
                report.original_mail_from = Some(angle_addr(&from));
            }
            report.recipients = complainer(first, original.as_ref()).into_iter().collect();
        }
        ReportKind::Dsn => report.recipients = dsn_recipients(&blocks[1.min(blocks.len())..]),
    }
    if report.recipients.is_empty() {
        return Err(Malformed::NoRecipient);
    }
    Ok(report)
}

/// Which report a `multipart/report` is, by its `report-type`.
fn report_kind(msg: &Message<'_>) -> Option<ReportKind> {
    let ct = msg.root_part().content_type()?;
    let is_report = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"));
    if !is_report {
        return None;
    }
    match ct.attribute("report-type")?.to_ascii_lowercase().as_str() {
        "feedback-report" => Some(ReportKind::Complaint),
        "delivery-status" | "global-delivery-status" => Some(ReportKind::Dsn),
        _ => None,
    }
}

/// The report's machine-readable part, and the original's header section
/// (from a `message/rfc822` or `text/rfc822-headers` part).
fn report_parts<'m>(
    msg: &'m Message<'m>,
    kind: ReportKind,
) -> (Option<&'m [u8]>, Option<Message<'m>>) {
    let mut fields: Option<&[u8]> = None;
    let mut original: Option<Message<'_>> = None;
    for part in msg.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let (ctype, sub) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase(),
        );
        match (ctype.as_str(), sub.as_str(), kind) {
            ("message", "feedback-report", ReportKind::Complaint)
            | ("message", "delivery-status" | "global-delivery-status", ReportKind::Dsn) => {
                fields.get_or_insert(part.contents());
            }
            ("message", "rfc822" | "global", _) if original.is_none() => {
                if let PartType::Message(m) = &part.body {
                    original = MessageParser::default().parse_headers(m.raw_message());
                }
            }
            ("text", "rfc822-headers" | "global-headers", _) if original.is_none() => {
                original = MessageParser::default().parse_headers(part.contents());
            }
            _ => {}
        }
    }
    (fields, original)
}

/// The recipient a complaint is about: `Original-Rcpt-To`, else the
/// header Microsoft's JMRP adds to the attached original
/// (`X-HmXmrOriginalRecipient`), else the original's `To:` if it names
/// exactly one address (providers often redact it).
fn complainer(
    fields: &[(String, String)],
    original: Option<&Message<'_>>,
) -> Option<ReportedRecipient> {
    let jmrp = original.and_then(|m| {
        let headers: Vec<(&str, &str)> = m.headers_raw().collect();
        header(&headers, "X-HmXmrOriginalRecipient").map(|v| angle_addr(&v))
    });
    let address = field(fields, "Original-Rcpt-To")
        .map(|v| angle_addr(&v))
        .or(jmrp)
        .or_else(|| {
            let to = original?.to()?;
            let mut all = to.iter();
            let one = all.next()?.address()?.to_string();
            all.next().is_none().then_some(one)
        })
        .filter(|a| a.contains('@'))?;
    Some(ReportedRecipient {
        address,
        action: None,
        status: None,
        diagnostic: None,
    })
}

/// A DSN's per-recipient blocks.
fn dsn_recipients(blocks: &[Vec<(String, String)>]) -> Vec<ReportedRecipient> {
    blocks
        .iter()
        .filter_map(|block| {
            let address = field(block, "Final-Recipient")
                .or_else(|| field(block, "Original-Recipient"))
                .map(|v| angle_addr(&typed_value(&v)))
                .filter(|a| a.contains('@'))?;
            Some(ReportedRecipient {
                address,
                action: field(block, "Action").map(|v| v.to_ascii_lowercase()),
                status: field(block, "Status"),
                diagnostic: field(block, "Diagnostic-Code").map(|v| typed_value(&v)),
            })
        })
        .collect()
}

/// A report part's field blocks (separated by blank lines), each parsed
/// as header fields by `mail-parser`: (name, unfolded value).
fn field_blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .filter_map(|block| {
            // A block of fields is a header section: end it as one.
            let section = format!("{}\n\n", block.trim_start_matches('\n'));
            let m = MessageParser::default().parse_headers(section.as_bytes())?;
            let fields: Vec<(String, String)> = m
                .headers_raw()
                .map(|(n, v)| (n.to_string(), unfold(v)))
                .collect();
            (!fields.is_empty()).then_some(fields)
        })
        .collect()
}

fn unfold(v: &str) -> String {
    v.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn field(block: &[(String, String)], name: &str) -> Option<String> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

fn header(headers: &[(&str, &str)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| unfold(v))
}

/// `rfc822; a@b.example` → `a@b.example`; `smtp; 550 ...` → `550 ...`.
fn typed_value(v: &str) -> String {
    match v.split_once(';') {
        Some((_, rest)) => rest.trim().to_string(),
        None => v.trim().to_string(),
    }
}

/// `<a@b.example>` (and anything after it) → `a@b.example`; a bare
/// address as it is.
fn angle_addr(v: &str) -> String {
    let v = v.trim();
    match v.split_once('<').and_then(|(_, rest)| rest.split_once('>')) {
        Some((addr, _)) => addr.trim().to_string(),
        None => v.to_string(),
    }
}

/// The queue id in the original's tracking header, or in the `Received:`
/// header ringpost wrote.
fn original_id(headers: &[(&str, &str)], tracking_header: &str) -> Option<String> {
    if !tracking_header.is_empty()
        && let Some(v) = header(headers, tracking_header)
        && is_id(v.trim())
    {
        return Some(v.trim().to_string());
    }
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Received"))
        .find_map(|(_, v)| {
            let v = unfold(v);
            let (_, after) = v.split_once("(ringpost) with ")?;
            let id = after.split_once(" id ")?.1;
            let id = id.split([';', ' ']).next()?;
            is_id(id).then(|| id.to_string())
        })
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5965's example, around an original ringpost relayed.
    fn arf() -> String {
        let original = "Received: from mailserver.example.net\r\n\
            \tby mx.example.com (ringpost) with ESMTP id 0123456789abcdef0123456789abcdef;\r\n\
            \tThu, 8 Mar 2005 14:00:00 -0500\r\n\
            From: <somespammer@example.net>\r\n\
            To: <Undisclosed Recipients>\r\n\
            Subject: Earn money\r\n\r\nSpam Spam Spam";
        include_str!("../tests/data/feedback/arf-rfc5965.eml")
            .replace('\n', "\r\n")
            .replace("{{ORIGINAL}}", original)
            .replace("{{SENDER}}", "somespammer@example.net")
            .replace("{{RCPT}}", "user@example.com")
    }

    #[test]
    fn reads_the_rfc_5965_example() {
        let r = parse(arf().as_bytes(), "X-Ringpost-Id").unwrap();
        assert_eq!(r.kind, ReportKind::Complaint);
        assert_eq!(r.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(r.reporter.as_deref(), Some("SomeGenerator/1.0"));
        assert_eq!(r.recipients[0].address, "user@example.com");
        assert_eq!(
            r.original_mail_from.as_deref(),
            Some("somespammer@example.net")
        );
        assert_eq!(
            r.original_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef"),
            "from our Received: header"
        );
    }

    #[test]
    fn the_tracking_header_comes_first() {
        let with = arf().replace(
            "From: <somespammer",
            "X-Ringpost-Id: 00000000000000000000000000000042\r\nFrom: <somespammer",
        );
        let r = parse(with.as_bytes(), "x-ringpost-id").unwrap();
        assert_eq!(
            r.original_id.as_deref(),
            Some("00000000000000000000000000000042")
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert_eq!(parse(b"", "X"), Err(Malformed::NotAMessage));
        assert_eq!(
            parse(b"Subject: hi\r\n\r\nbody\r\n", "X"),
            Err(Malformed::NotAReport)
        );
        let no_part = arf().replace("message/feedback-report", "text/plain");
        assert_eq!(parse(no_part.as_bytes(), "X"), Err(Malformed::NoReportPart));
        let no_rcpt = arf()
            .replace("Original-Rcpt-To: <user@example.com>\r\n", "")
            .replace("To: <Undisclosed Recipients>\r\n", "")
            .replace("Removal-Recipient: user@example.com\r\n", "");
        assert_eq!(parse(no_rcpt.as_bytes(), "X"), Err(Malformed::NoRecipient));
    }
}
