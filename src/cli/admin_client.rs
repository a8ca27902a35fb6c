//! The client side of the admin API, for `ringpost queue ...`: one blocking
//! HTTP request per command, and the human-readable tables.
//!
//! Must not: know the server's internals; it speaks only the JSON of
//! `http::admin`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::http::admin::{MessageDetail, Summary};
use crate::scheduler::operations::MessageInfo;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Answers are bounded: `queue ls` on a million messages is ~300 MB of JSON.
const MAX_ANSWER: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {addr} (is ringpost running with [admin] listen = \"{addr}\"?): {source}"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API: malformed answer ({0})")]
    Malformed(String),
    /// The server's own error message, with its HTTP status.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
}

pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// A path segment or query value, percent-encoded.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl AdminClient {
    /// Sends one request; the JSON body of a 200 answer, or the error the
    /// server gave.
    pub fn call(&self, method: &str, target: &str) -> Result<serde_json::Value, ClientError> {
        self.call_with_body(method, target, b"")
    }

    /// [`AdminClient::call`] with a JSON request body.
    pub fn call_with_body(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let auth = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
        let (status, body) = split_response(&raw)?;
        let value = serde_json::from_slice::<serde_json::Value>(body);
        match (status, value) {
            (200, Ok(value)) => Ok(value),
            (200, Err(e)) => Err(ClientError::Malformed(format!("not JSON: {e}"))),
            (503, Ok(value)) if value["error"].is_string() => Err(ClientError::Refused {
                status,
                message: value["error"].as_str().unwrap_or_default().to_string(),
            }),
            (503, _) => Err(ClientError::Refused {
                status,
                message: "the server is busy or shutting down: try again".into(),
            }),
            (status, Ok(value)) => Err(ClientError::Refused {
                status,
                message: value["error"].as_str().unwrap_or("error").to_string(),
            }),
            (status, Err(_)) => Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(body).trim().to_string(),
            }),
        }
    }
}

/// Pure: the status and body of a whole HTTP response.
fn split_response(raw: &[u8]) -> Result<(u16, &[u8]), ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => Ok((resp.code.unwrap_or(0), &raw[n..])),
        Ok(httparse::Status::Partial) => Err(ClientError::Malformed("truncated".into())),
        Err(e) => Err(ClientError::Malformed(e.to_string())),
    }
}

/// "3d4h", "5m12s", "40s": an age for tables.
pub fn age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3_600),
        s if s >= 3_600 => format!("{}h{}m", s / 3_600, s % 3_600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// "1 message", "2 messages".
pub fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

fn sender(s: &str) -> &str {
    if s.is_empty() { "<>" } else { s }
}

pub fn render_summary(s: &Summary) -> String {
    let mut out = format!(
        "{:<32} {:>9} {:>9} {:>10} {:>8}  {:<9}  LAST ERROR\n",
        "DOMAIN", "MESSAGES", "DEFERRED", "RECIPIENTS", "OLDEST", "STATE"
    );
    for d in &s.domains {
        out += &format!(
            "{:<32} {:>9} {:>9} {:>10} {:>8}  {:<9}  {}\n",
            d.domain,
            d.messages,
            d.deferred,
            d.recipients,
            age(d.oldest_secs),
            match (d.suspended, d.suspended_until) {
                (true, Some(_)) => "suspended*".to_string(),
                (true, None) => "suspended".to_string(),
                _ if d.bouncing => "bouncing*".to_string(),
                _ => match d.throttled_per_second {
                    Some(rate) => format!("{rate:.1}/s*"),
                    None => "active".to_string(),
                },
            },
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    out += &format!(
        "-- {} ({} deferred), {} pending\n",
        count(s.messages, "message"),
        s.deferred,
        count(s.recipients, "recipient")
    );
    if let Some(to) = &s.draining_to {
        out += &format!("-- draining to {to}: new mail is refused\n");
        for (reason, n) in deferred_reasons(s) {
            out += &format!("   {} deferred: {reason}\n", count(n, "message"));
        }
    }
    for h in &s.holds {
        out += &format!(
            "-- {} {} suspended{}\n",
            h.kind.as_str(),
            h.name,
            match h.until {
                Some(t) => format!(
                    " for another {}",
                    age(t.saturating_sub(crate::shard::clock::unix_now()))
                ),
                None => " until resumed".to_string(),
            }
        );
    }
    for r in &s.bounce_rules {
        out += &format!(
            "-- bounce rule {}: mail matching {} refused and bounced{} (\"{}\"; lift: queue resume --rule {})\n",
            r.id,
            serde_json::to_string(&r.selector).unwrap_or_default(),
            match r.until {
                Some(t) => format!(
                    " for another {}",
                    age(t.saturating_sub(crate::shard::clock::unix_now()))
                ),
                None => String::new(),
            },
            r.reason,
            r.id
        );
    }
    out += &render_tls(&s.tls);
    if s.domains.iter().any(|d| d.suspended_until.is_some()) {
        out += "   * suspended for a while: the suspension ends by itself\n";
    }
    if s.domains.iter().any(|d| d.bouncing) {
        out += "   * bouncing: a [backoff] rule fails its queue without trying, for a while\n";
    }
    if s.domains.iter().any(|d| d.throttled_per_second.is_some()) {
        out += "   * N/s: a [backoff] throttle holds the rate to N messages a second, recovering\n";
    }
    out
}

/// `queue summary`'s TLS section: receivers' TLS per destination, as
/// delivery met it since start (nothing when no attempt was held to a
/// TLS policy or failed for TLS).
fn render_tls(lines: &[crate::scheduler::tls_status::TlsDestination]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<32} {:<8} {:>9} {:>7}  LAST TLS FAILURE\n",
        "TLS: DESTINATION", "POLICY", "ATTEMPTS", "FAILED"
    );
    for l in lines {
        let last = match (&l.last_failure, l.last_failure_at) {
            (Some(kind), at) => format!(
                "{kind}, {} ago: {}",
                age(crate::shard::clock::unix_now().saturating_sub(at)),
                l.last_failure_reply.as_deref().unwrap_or("")
            ),
            (None, _) => "-".to_string(),
        };
        out += &format!(
            "{:<32} {:<8} {:>9} {:>7}  {last}\n",
            l.domain, l.policy, l.attempts, l.failures
        );
    }
    out
}

/// The deferred messages by the last failure of their domains, most
/// first (while draining, every domain's last failure is the peer's).
pub fn deferred_reasons(s: &Summary) -> Vec<(String, usize)> {
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for d in s.domains.iter().filter(|d| d.deferred > 0) {
        *by.entry(d.last_error.as_deref().unwrap_or("not tried yet"))
            .or_default() += d.deferred;
    }
    let mut list: Vec<(String, usize)> = by.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

/// `queue summary --by`: one line per site, source or pool.
pub fn render_groups(s: &crate::http::admin::GroupedSummary) -> String {
    use crate::scheduler::operations::GroupBy;
    let title = match s.by {
        GroupBy::Site => "SITE",
        GroupBy::Source => "SOURCE",
        GroupBy::Pool => "POOL",
    };
    let mut out = format!(
        "{title:<40} {:>9} {:>10} {:>9} {:>6} {:>7} {:>9}  STATE\n",
        "MESSAGES", "RECIPIENTS", "DEFERRED", "CONNS", "WAITING", "TODAY"
    );
    for g in &s.groups {
        let name = match &g.rule {
            Some(rule) => format!("{} [{rule}]", g.name),
            None => g.name.clone(),
        };
        out += &format!(
            "{name:<40} {:>9} {:>10} {:>9} {:>6} {:>7} {:>9}  {}\n",
            g.messages,
            g.recipients,
            g.deferred,
            g.connections,
            g.waiting,
            g.sent_today,
            match g.throttled_per_second {
                Some(rate) => format!("{rate:.1}/s*"),
                None => "active".to_string(),
            }
        );
    }
    if s.groups.iter().any(|g| g.throttled_per_second.is_some()) {
        out += "   * N/s: a [backoff] throttle holds the rate to N messages a second, recovering\n";
    }
    if s.groups.iter().any(|g| g.sent_today > 0) {
        out += "   TODAY: messages counted against hourly/daily (warm-up) caps today\n";
    }
    out
}

/// `queue trace`: one line per event, then where the message stands.
pub fn render_trace(t: &crate::http::admin::MessageTrace, now: u64) -> String {
    let now = if t.now > 0 { t.now } else { now };
    let text = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or("").to_string();
    let mut out = format!("{}\n", t.id);
    for e in &t.events {
        let mut detail = text(e, "reply");
        if let Some(c) = e["category"].as_str() {
            detail = format!("[{c}] {detail}");
        }
        if let Some(host) = e["remote_host"].as_str() {
            detail = format!("{host}: {detail}");
        }
        if let Some(f) = e["feedback_type"].as_str() {
            detail = format!("feedback-type {f} {detail}");
        }
        out += &format!(
            "  {:<24} {:<16} {:<32} {}\n",
            text(e, "time"),
            text(e, "event"),
            text(e, "recipient"),
            detail.trim()
        );
    }
    match (&t.queued, &t.finished) {
        (Some(m), _) => {
            out += &format!(
                "  now: {}, {} attempt(s){}\n",
                m.state,
                m.attempts,
                m.next_attempt
                    .map(|at| format!(", next in {}", age(at.saturating_sub(now))))
                    .unwrap_or_default()
            )
        }
        (None, Some(f)) => out += &render_finished(f, now),
        (None, None) => out += "  now: not queued (done, or removed)\n",
    }
    out
}

/// What became of a message that left the queue: one line per recipient.
fn render_finished(f: &crate::history::Finished, now: u64) -> String {
    let mut out = format!(
        "  left the queue {} ago, {} after it was accepted, from <{}>{}\n",
        age(now.saturating_sub(f.finished)),
        age(f.finished.saturating_sub(f.created)),
        f.sender,
        f.message_id
            .as_ref()
            .map(|m| format!(", Message-ID <{m}>"))
            .unwrap_or_default()
    );
    for r in &f.recipients {
        let outcome = serde_json::to_value(r.outcome).unwrap_or_default();
        let category = r
            .category
            .as_ref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        out += &format!(
            "    {:<32} {:<10} {} attempt(s)  {category}{}\n",
            r.address,
            outcome.as_str().unwrap_or("?"),
            r.attempts,
            r.reply.as_deref().unwrap_or("")
        );
    }
    out
}

/// `queue find`'s answer: each message, where it stands or what became of
/// it.
pub fn render_find(answer: &serde_json::Value, now: u64) -> String {
    // Ages from the server's clock.
    let now = answer["now"].as_u64().unwrap_or(now);
    let found: Vec<crate::scheduler::find::FoundMessage> =
        serde_json::from_value(answer["messages"].clone()).unwrap_or_default();
    let mut out = format!(
        "{}: {}\n",
        answer["key"].as_str().unwrap_or("?"),
        count(found.len(), "message")
    );
    if let Some(s) = answer["suppressed"].as_object() {
        let text = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        out += &format!(
            "  suppressed: {} (by {}), new mail to it is refused\n",
            text("reason"),
            text("source")
        );
    }
    for m in &found {
        match (&m.queued, &m.finished) {
            (Some(q), _) => {
                out += &format!(
                    "{}  queued {} ago, {}\n",
                    m.id,
                    age(now.saturating_sub(q.created)),
                    m.state
                );
                for r in &q.recipients {
                    out += &format!(
                        "    {:<32} {:<10} {} attempt(s)  {}\n",
                        r.address,
                        serde_json::to_value(r.status)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or("?"),
                        r.attempts,
                        r.last_reply.as_deref().unwrap_or("")
                    );
                }
            }
            (None, Some(f)) => out += &format!("{}\n{}", m.id, render_finished(f, now)),
            (None, None) => out += &format!("{}  {}\n", m.id, m.state),
        }
    }
    out
}

pub fn render_list(list: &[MessageInfo], now: u64) -> String {
    let mut out = format!(
        "{:<32} {:>9} {:>8} {:>8}  {:<16} {:<8} {:<12} {:<30}  RECIPIENTS\n",
        "ID", "SIZE", "AGE", "ATTEMPTS", "WAITING FOR", "PRIORITY", "POOL", "SENDER"
    );
    for m in list {
        let pending: Vec<&str> = m
            .recipients
            .iter()
            .filter(|r| r.status == crate::queue::RecipientStatus::Pending)
            .map(|r| r.address.as_str())
            .collect();
        let waiting = match (m.state.as_str(), m.next_attempt) {
            ("deferred", Some(t)) => format!("retry in {}", age(t.saturating_sub(now))),
            ("scheduled", Some(t)) => format!("release in {}", age(t.saturating_sub(now))),
            (state, _) => state.to_string(),
        };
        let pool = if m.pool.is_empty() { "-" } else { &m.pool };
        out += &format!(
            "{:<32} {:>9} {:>8} {:>8}  {:<16} {:<8} {:<12} {:<30}  {}\n",
            m.id,
            m.size,
            age(now.saturating_sub(m.created)),
            m.attempts,
            waiting,
            m.priority,
            pool,
            sender(&m.sender),
            pending.join(", ")
        );
    }
    out += &format!("-- {}\n", count(list.len(), "message"));
    out
}

pub fn render_show(d: &MessageDetail, now: u64) -> String {
    let m = &d.message;
    let mut out = format!(
        "id:        {}\nsender:    {}\nsize:      {}\nage:       {}\nattempts:  {}\nstate:     {}\n",
        m.id,
        sender(&m.sender),
        m.size,
        age(now.saturating_sub(m.created)),
        m.attempts,
        m.state
    );
    if let Some(next) = m.next_attempt {
        out += &format!("next try:  in {}\n", age(next.saturating_sub(now)));
    }
    out += &format!("priority:  {}\n", m.priority);
    let pool = if m.pool.is_empty() {
        "(default)"
    } else {
        &m.pool
    };
    out += &format!("pool:      {pool}\n");
    let dkim = m.dkim.as_deref().unwrap_or("(signing not configured)");
    out += &format!("dkim:      {dkim}\n");
    for (name, value) in [
        (
            "message-id",
            m.message_id.as_ref().map(|v| format!("<{v}>")),
        ),
        ("key", m.idempotency_key.clone()),
        ("meta", m.meta.as_ref().map(|v| v.to_string())),
        ("dsn ret", m.ret.map(|r| r.as_text().to_string())),
        ("dsn envid", m.envid.clone()),
    ] {
        if let Some(v) = value {
            out += &format!("{:<10} {v}\n", format!("{name}:"));
        }
    }
    out += "recipients:\n";
    for r in &m.recipients {
        out += &format!(
            "  {:<40} {:<9} attempts {}  {}\n",
            r.address,
            format!("{:?}", r.status).to_lowercase(),
            r.attempts,
            r.last_reply.as_deref().unwrap_or("")
        );
        let mut more = Vec::new();
        if let Some(site) = &r.site {
            more.push(format!("site {site}"));
        }
        if let Some(source) = &r.source {
            more.push(format!("source {source}"));
        }
        if let Some(n) = r.notify {
            more.push(format!("NOTIFY={}", n.as_text()));
        }
        if let Some(o) = &r.orcpt {
            more.push(format!("ORCPT={o}"));
        }
        if !more.is_empty() {
            out += &format!("  {:<40} {}\n", "", more.join(", "));
        }
    }
    if let Some(h) = &d.headers {
        out += "headers:\n";
        for line in h.lines() {
            out += &format!("  {line}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_responses() {
        let (status, body) =
            split_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body), (404, &b"{}"[..]));
        assert!(split_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(312), "5m12s");
        assert_eq!(age(7_260), "2h1m");
        assert_eq!(age(273_600), "3d4h");
    }

    #[test]
    fn groups_read_as_a_table_with_the_rule_and_state() {
        use crate::scheduler::operations::{GroupBy, GroupSummary};
        let s = crate::http::admin::GroupedSummary {
            by: GroupBy::Site,
            groups: vec![GroupSummary {
                name: "aspmx.l.google.com".into(),
                rule: Some("google".into()),
                messages: 12,
                recipients: 15,
                connections: 5,
                throttled_per_second: Some(2.5),
                sent_today: 40,
                ..GroupSummary::default()
            }],
        };
        let text = render_groups(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SITE"), "{text}");
        assert!(
            lines[1].starts_with("aspmx.l.google.com [google]"),
            "{text}"
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[2..], ["12", "15", "0", "5", "0", "40", "2.5/s*"]);
        assert!(text.contains("throttle"), "{text}");
    }

    #[test]
    fn encodes_path_parts() {
        assert_eq!(encode("a.example"), "a%2Eexample");
        assert_eq!(encode("a/b"), "a%2Fb");
    }
}
