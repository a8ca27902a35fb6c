//! The injection request, parsed: a pure function from the request body
//! to an [`Injection`] (the JSON, the addresses, the DSN fields, the
//! content's size and line lengths, its line endings made CRLF; or the
//! templates, compiled by `http::template`). Unit-tested here, fuzzed by
//! `fuzz/fuzz_targets/inject.rs`.
//!
//! May call: `proto` (address and DSN syntax), `http::template`, `config`
//! (the limits). Must not: queue, look anything up, or know the client.

use std::collections::HashMap;

use serde::Deserialize;

use crate::config::Config;
use crate::http::template::{Builder, Plan};
use crate::proto::command::{Mailbox, parse_mailbox};
use crate::proto::dsn_params::{MAX_ENVID, Notify, Ret, parse_orcpt_text};

/// The request body (a subset of KumoMTA's injection API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRequest {
    /// The envelope sender; "" for the null sender `<>`.
    envelope_sender: String,
    recipients: Vec<RecipientField>,
    /// The whole message: header fields, a blank line, the body (a
    /// template when there are substitutions).
    #[serde(default)]
    content: Option<String>,
    /// Instead of `content`: the fields of a message to build (always a
    /// template).
    #[serde(default)]
    template: Option<Builder>,
    /// Values for the template, for every recipient.
    #[serde(default)]
    substitutions: Option<serde_json::Map<String, serde_json::Value>>,
    /// Scheduled delivery: no attempt before this time (RFC 3339).
    #[serde(default)]
    deliver_after: Option<String>,
    /// The application's own data, copied into every event (`[meta]`).
    #[serde(default)]
    meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// The egress pool to send through (`[egress]`).
    #[serde(default)]
    pool: String,
    /// "high", "normal" or "bulk" (`[priority]`).
    #[serde(default)]
    priority: Option<String>,
    /// DSN (RFC 3461): "FULL" or "HDRS", as SMTP's MAIL RET=.
    #[serde(default)]
    ret: Option<String>,
    /// DSN: the application's id of the transaction, returned in notices
    /// (printable ASCII, at most 100 characters).
    #[serde(default)]
    envid: Option<String>,
    /// One-click unsubscribe links (`[unsubscribe]`): true or false over
    /// what the message's pool says.
    #[serde(default)]
    unsubscribe: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientField {
    email: String,
    /// DSN: "NEVER", or some of "SUCCESS,FAILURE,DELAY", as RCPT NOTIFY=.
    #[serde(default)]
    notify: Option<String>,
    /// DSN: the original recipient, "rfc822;address", as RCPT ORCPT=.
    #[serde(default)]
    orcpt: Option<String>,
    /// Values for the template, for this recipient (over the request's):
    /// any recipient with its own makes one message per recipient.
    #[serde(default)]
    substitutions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The DSN request of a message (RFC 3461), from SMTP or injection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DsnRequest {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// In the order of the queued recipients.
    pub rcpts: Vec<(Option<Notify>, Option<String>)>,
}

/// A request that passed [`parse`].
#[derive(Debug)]
pub struct Injection {
    pub sender: Option<Mailbox>,
    pub recipients: Vec<Mailbox>,
    /// Recipients that are not addresses; the others are still queued.
    pub failed: Vec<String>,
    /// The content with CRLF line endings (empty when templated: each
    /// message's is rendered from `template`).
    pub content: Vec<u8>,
    /// The templates and their values (`content` with substitutions, or
    /// `template`), compiled.
    pub template: Option<Plan>,
    /// `meta`, a JSON object within `meta.max_bytes`.
    pub meta: Option<serde_json::Value>,
    /// `pool`, as given (checked against the pools by the injector).
    pub pool: String,
    /// `priority`, if given.
    pub priority: Option<crate::config::Priority>,
    /// `deliver_after` as Unix seconds, if given (the endpoint checks it
    /// against `delivery.max_hold_secs`).
    pub release_at: Option<u64>,
    /// `unsubscribe`, if given.
    pub unsubscribe: Option<bool>,
    pub dsn: DsnRequest,
}

/// Why a request is refused: the HTTP status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InjectError {
    pub status: u16,
    pub message: String,
}

pub(super) fn refuse(status: u16, message: impl Into<String>) -> InjectError {
    InjectError {
        status,
        message: message.into(),
    }
}

/// The limits [`parse`] applies (from `[smtp]`, as for SMTP mail).
#[derive(Debug, Clone, Copy)]
pub struct ContentLimits {
    pub max_message_size: usize,
    pub max_line_length: usize,
    pub max_recipients: usize,
    pub max_meta_bytes: usize,
}

impl ContentLimits {
    pub fn of(cfg: &Config) -> ContentLimits {
        ContentLimits {
            max_message_size: cfg.smtp.max_message_size as usize,
            max_line_length: cfg.smtp.max_line_length,
            max_recipients: cfg.smtp.max_recipients,
            max_meta_bytes: cfg.meta.max_bytes,
        }
    }
}

/// Pure: checks a request body and builds the message to queue.
pub fn parse(body: &[u8], limits: ContentLimits) -> Result<Injection, InjectError> {
    let req: InjectRequest =
        serde_json::from_slice(body).map_err(|e| refuse(400, format!("bad request: {e}")))?;
    let sender =
        match req.envelope_sender.as_str() {
            "" => None,
            text => Some(parse_mailbox(text.as_bytes()).ok_or_else(|| {
                refuse(400, format!("envelope_sender `{text}` is not an address"))
            })?),
        };
    if req.recipients.is_empty() {
        return Err(refuse(400, "no recipients"));
    }
    if req.recipients.len() > limits.max_recipients {
        return Err(refuse(
            400,
            format!("too many recipients (at most {})", limits.max_recipients),
        ));
    }
    let mut dsn = dsn_request(req.ret.as_deref(), req.envid.as_deref())?;
    let (recipients, failed, own_values) = recipients_of(req.recipients, &mut dsn)?;
    let templated = req.template.is_some() || req.substitutions.is_some() || !own_values.is_empty();
    let (content, template) = match (templated, &req.content) {
        (false, Some(content)) => (crlf_content(content.as_bytes(), limits)?, None),
        (false, None) => return Err(refuse(400, "no content (or template)")),
        (true, _) => {
            let plan = Plan::compile(
                req.content.as_deref(),
                req.template.as_ref(),
                req.substitutions.unwrap_or_default(),
                own_values,
                limits.max_message_size,
            )
            .map_err(|e| refuse(400, e.to_string()))?;
            (Vec::new(), Some(plan))
        }
    };
    let meta = req.meta.map(serde_json::Value::Object);
    if let Some(m) = &meta {
        let len = m.to_string().len();
        if len > limits.max_meta_bytes {
            return Err(refuse(
                400,
                format!(
                    "meta is {len} bytes, over meta.max_bytes ({})",
                    limits.max_meta_bytes
                ),
            ));
        }
    }
    let priority = match req.priority.as_deref() {
        None => None,
        Some(text) => Some(crate::config::Priority::parse(text).map_err(|e| refuse(400, e))?),
    };
    let release_at = release_at_of(req.deliver_after.as_deref())?;
    Ok(Injection {
        sender,
        recipients,
        failed,
        content,
        template,
        release_at,
        meta,
        pool: req.pool,
        priority,
        unsubscribe: req.unsubscribe,
        dsn,
    })
}

/// `deliver_after` (RFC 3339) as Unix seconds.
fn release_at_of(deliver_after: Option<&str>) -> Result<Option<u64>, InjectError> {
    let Some(text) = deliver_after else {
        return Ok(None);
    };
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        refuse(
            400,
            format!("deliver_after {text:?}: not an RFC 3339 time: {e}"),
        )
    })?;
    Ok(Some(at.timestamp().max(0) as u64))
}

/// Each recipient's values for the template, by address as queued.
type OwnValues = HashMap<String, serde_json::Map<String, serde_json::Value>>;

/// The recipients that are addresses (their DSN fields onto `dsn`), those
/// that are not, and each one's values for the template (the first
/// listing's).
fn recipients_of(
    fields: Vec<RecipientField>,
    dsn: &mut DsnRequest,
) -> Result<(Vec<Mailbox>, Vec<String>, OwnValues), InjectError> {
    let (mut recipients, mut failed) = (Vec::new(), Vec::new());
    let mut own_values = HashMap::new();
    for r in fields {
        let Some(m) = parse_mailbox(r.email.as_bytes()) else {
            failed.push(r.email);
            continue;
        };
        if let Some(values) = r.substitutions {
            own_values.entry(m.to_string()).or_insert(values);
        }
        let notify = match r.notify.as_deref() {
            None => None,
            Some(v) => Some(Notify::parse(v).ok_or_else(|| {
                refuse(
                    400,
                    format!("notify {v:?}: NEVER, or some of SUCCESS,FAILURE,DELAY"),
                )
            })?),
        };
        let orcpt = match r.orcpt.as_deref() {
            None => None,
            Some(v) => Some(
                parse_orcpt_text(v)
                    .ok_or_else(|| refuse(400, format!("orcpt {v:?}: want rfc822;address")))?,
            ),
        };
        recipients.push(m);
        dsn.rcpts.push((notify, orcpt));
    }
    if recipients.is_empty() {
        return Err(refuse(400, "no recipient is an address"));
    }
    Ok((recipients, failed, own_values))
}

/// The message-wide DSN fields, checked as SMTP checks RET= and ENVID=.
fn dsn_request(ret: Option<&str>, envid: Option<&str>) -> Result<DsnRequest, InjectError> {
    let ret = match ret {
        None => None,
        Some(v) => {
            Some(Ret::parse(v).ok_or_else(|| refuse(400, format!("ret {v:?}: FULL or HDRS")))?)
        }
    };
    if let Some(e) = envid
        && (e.is_empty() || e.len() > MAX_ENVID || !e.bytes().all(|b| (b' '..=b'~').contains(&b)))
    {
        return Err(refuse(400, "envid: 1 to 100 printable ASCII characters"));
    }
    Ok(DsnRequest {
        ret,
        envid: envid.map(str::to_string),
        rcpts: Vec::new(),
    })
}

/// Pure: `content` with every line ending (CRLF, LF or a lone CR) made
/// CRLF and a final CRLF added if missing; refused when empty, over the
/// size limit or with a line over the line limit (RFC 5321 4.5.3.1.6).
pub(super) fn crlf_content(content: &[u8], limits: ContentLimits) -> Result<Vec<u8>, InjectError> {
    if content.is_empty() {
        return Err(refuse(400, "content is empty"));
    }
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 2);
    let mut rest = content;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        if end + 2 > limits.max_line_length {
            return Err(refuse(
                400,
                format!(
                    "content line {line_no} is longer than {} octets",
                    limits.max_line_length - 2
                ),
            ));
        }
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\r\n");
        rest = match &rest[end..] {
            [b'\r', b'\n', tail @ ..] | [b'\r', tail @ ..] | [b'\n', tail @ ..] => tail,
            tail => tail,
        };
        if out.len() > limits.max_message_size {
            return Err(refuse(
                413,
                format!("content is larger than {} octets", limits.max_message_size),
            ));
        }
    }
    Ok(out)
}

/// The recipients of a request by message, as indexes: each
/// alone (duplicates merged, the first kept) when `per_recipient`, else
/// all in one message (the door merges duplicates there).
pub(super) fn recipient_groups(injection: &Injection, per_recipient: bool) -> Vec<Vec<usize>> {
    let all = 0..injection.recipients.len();
    if !per_recipient {
        return vec![all.collect()];
    }
    let mut seen = std::collections::HashSet::with_capacity(all.len());
    all.filter(|&i| {
        seen.insert(crate::queue::envelope::recipient_key(
            &injection.recipients[i].to_string(),
        ))
    })
    .map(|i| vec![i])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ContentLimits = ContentLimits {
        max_message_size: 4096,
        max_line_length: 1000,
        max_recipients: 100,
        max_meta_bytes: 64,
    };

    fn request(sender: &str, rcpts: &[&str], content: &str) -> Vec<u8> {
        let recipients: Vec<_> = rcpts
            .iter()
            .map(|r| serde_json::json!({ "email": r }))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "envelope_sender": sender,
            "recipients": recipients,
            "content": content,
        }))
        .unwrap()
    }

    #[test]
    fn a_request_becomes_an_injection_with_crlf_content() {
        let body = request(
            "noreply@example.com",
            &["a@example.net", "not an address", "b@example.org"],
            "Subject: hi\nFrom: x@example.com\r\n\nline\rlast",
        );
        let inj = parse(&body, LIMITS).unwrap();
        assert_eq!(inj.sender.unwrap().to_string(), "noreply@example.com");
        let rcpts: Vec<_> = inj.recipients.iter().map(|m| m.to_string()).collect();
        assert_eq!(rcpts, ["a@example.net", "b@example.org"]);
        assert_eq!(inj.failed, ["not an address"]);
        assert_eq!(
            inj.content,
            b"Subject: hi\r\nFrom: x@example.com\r\n\r\nline\r\nlast\r\n"
        );
    }

    #[test]
    fn the_null_sender_and_utf8_addresses() {
        let inj = parse(&request("", &["jörg@exämple.de"], "x"), LIMITS).unwrap();
        assert_eq!(inj.sender, None);
        assert!(inj.recipients[0].is_utf8());
        let ascii = parse(&request("", &["a@example.de"], "x"), LIMITS).unwrap();
        assert!(!ascii.recipients[0].is_utf8());
    }

    #[test]
    fn refusals_say_why() {
        let status = |body: &[u8]| parse(body, LIMITS).unwrap_err().status;
        assert_eq!(status(b"not json"), 400);
        assert_eq!(status(br#"{"envelope_sender":"","recipients":[]}"#), 400);
        assert_eq!(
            status(br#"{"envelope_sender":"","recipients":[{"email":"a@b.c"}],"content":"x","template":1}"#),
            400
        );
        assert_eq!(
            status(br#"{"envelope_sender":"","recipients":[{"email":"a@b.c"}]}"#),
            400,
            "no content"
        );
        let syntax = parse(
            br#"{"envelope_sender":"","recipients":[{"email":"a@b.c"}],"content":"S: x\n\n{{ a","substitutions":{}}"#,
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(syntax.status, 400);
        assert!(
            syntax.message.starts_with("template content body, line 1:"),
            "{}",
            syntax.message
        );
        assert_eq!(status(&request("bad", &["a@b.c"], "x")), 400);
        assert_eq!(status(&request("", &[], "x")), 400);
        assert_eq!(status(&request("", &["nope"], "x")), 400);
        // No header injection through an address (it goes into Received:).
        assert_eq!(status(&request("", &["\"a\r\nX: y\"@b.c"], "x")), 400);
        assert_eq!(status(&request("", &["a@b.c"], "")), 400);
        let many: Vec<String> = (0..101).map(|i| format!("r{i}@b.c")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(status(&request("", &many, "x")), 400);
        assert_eq!(status(&request("", &["a@b.c"], &"y".repeat(999))), 400);
        let big = "line\n".repeat(1000);
        assert_eq!(status(&request("", &["a@b.c"], &big)), 413);
    }

    #[test]
    fn content_with_substitutions_is_a_template_and_without_is_taken_as_is() {
        let plain = parse(&request("", &["a@b.c"], "S: {{ x }}\n\nx"), LIMITS).unwrap();
        assert!(plain.template.is_none());
        assert_eq!(plain.content, b"S: {{ x }}\r\n\r\nx\r\n");
        let body = serde_json::json!({
            "envelope_sender": "",
            "recipients": [
                {"email": "a@b.c", "substitutions": {"x": "A"}},
                {"email": "nope"},
                {"email": "b@b.c"},
            ],
            "content": "S: {{ x }}\n\nx",
            "substitutions": {"x": "all"},
        });
        let inj = parse(&serde_json::to_vec(&body).unwrap(), LIMITS).unwrap();
        let plan = inj.template.as_ref().unwrap();
        assert!(plan.per_recipient() && inj.content.is_empty());
        assert_eq!(plan.render(Some("a@b.c"), "m@x").unwrap(), b"S: A\n\nx");
        assert_eq!(plan.render(Some("b@b.c"), "m@x").unwrap(), b"S: all\n\nx");
        assert_eq!(inj.failed, ["nope"]);
        let groups = recipient_groups(&inj, true);
        assert_eq!(groups, [vec![0], vec![1]]);
    }

    #[test]
    fn a_line_at_the_limit_passes() {
        let inj = parse(&request("", &["a@b.c"], &"y".repeat(998)), LIMITS).unwrap();
        assert_eq!(inj.content.len(), 1000);
    }
}
