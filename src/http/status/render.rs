//! The status pages as HTML: pure functions from the admin API's views to
//! text, every value escaped ([`escape`]). No external resource: the
//! styles and the buttons' script are inline.

use std::fmt::Write;

use crate::history::{Finished, Lookup, LookupKind};
use crate::http::admin::{MessageTrace, Summary};
use crate::scheduler::find::FoundMessage;
use crate::scheduler::operations::{GroupSummary, MessageInfo};
use crate::scheduler::overview::{AGE_BUCKETS, Overview};

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.4em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.headline td{font-size:1.2em}.error{color:#a00}.held{color:#a60}.muted{color:#777}\
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}button{margin-right:.6em}";

/// Runs the buttons: confirm, call the admin API from this origin, say
/// what it answered, reload.
const SCRIPT: &str = "document.querySelectorAll('button[data-path]').forEach(function(b){\
b.addEventListener('click',function(){\
if(!window.confirm(b.dataset.confirm)){return;}\
var out=document.getElementById('outcome');\
fetch(b.dataset.path,{method:b.dataset.method,credentials:'same-origin'})\
.then(function(r){return r.json().then(function(j){return [r.status,j];});})\
.then(function(a){out.textContent=a[0]===200?'done: '+JSON.stringify(a[1]):'refused ('+a[0]+'): '+(a[1].error||'');\
if(a[0]===200){setTimeout(function(){window.location.reload();},800);}})\
.catch(function(e){out.textContent='failed: '+e;});});});";

/// A whole page around `body`; `refresh`: reload every that many seconds.
pub fn page(title: &str, body: &str, refresh: Option<u64>) -> String {
    let refresh = refresh.map_or(String::new(), |s| {
        format!("<meta http-equiv=\"refresh\" content=\"{s}\">")
    });
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
<link rel=\"icon\" href=\"data:,\"><title>{}</title><style>{STYLE}</style></head>\
<body><h1><a href=\"/status\">ringpost</a>: {}</h1>{body}<script>{SCRIPT}</script></body></html>",
        escape(title),
        escape(title.trim_start_matches("ringpost: ")),
    )
}

/// "3m12s", "2h5m", "4d1h".
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
    }
}

fn find_box(key: Option<&Lookup>) -> String {
    let (kind, value) = key.map_or((LookupKind::Rcpt, ""), |k| (k.kind, k.value.as_str()));
    let mut options = String::new();
    for k in LookupKind::ALL {
        let selected = if k == kind { " selected" } else { "" };
        let _ = write!(
            options,
            "<option value=\"{0}\"{selected}>{0}</option>",
            k.name()
        );
    }
    format!(
        "<form id=\"find\" method=\"get\" action=\"/status/find\">Find a message by \
<select name=\"key\">{options}</select> <input name=\"value\" size=\"40\" value=\"{}\" \
placeholder=\"bob@example.com\"> since <input name=\"since\" size=\"5\" placeholder=\"24h\"> \
<button type=\"submit\">Find</button></form>",
        escape(value)
    )
}

/// The overview page's body.
pub fn overview(summary: &Summary, sites: &[GroupSummary], o: &Overview, now: u64) -> String {
    let mut b = find_box(None);
    let t = &o.traffic;
    let oldest = summary
        .domains
        .iter()
        .map(|d| d.oldest_secs)
        .max()
        .unwrap_or(0);
    let _ = write!(
        b,
        "<h2>Traffic and queue</h2><table class=\"headline\" id=\"headline\"><tr><th></th><th>last minute</th><th>last hour</th></tr>\
<tr><td>messages in</td><td class=\"n\" id=\"in-minute\">{}</td><td class=\"n\" id=\"in-hour\">{}</td></tr>\
<tr><td>recipients delivered</td><td class=\"n\" id=\"delivered-minute\">{}</td><td class=\"n\" id=\"delivered-hour\">{}</td></tr>\
<tr><td>deferred</td><td class=\"n\">{}</td><td class=\"n\" id=\"deferred-hour\">{}</td></tr>\
<tr><td>bounced</td><td class=\"n\">{}</td><td class=\"n\" id=\"bounced-hour\">{}</td></tr></table>\
<table class=\"headline\"><tr><td>queued messages</td><td class=\"n\" id=\"queued\">{}</td></tr>\
<tr><td>of them deferred</td><td class=\"n\" id=\"deferred\">{}</td></tr>\
<tr><td>pending recipients</td><td class=\"n\" id=\"recipients\">{}</td></tr>\
<tr><td>oldest message</td><td class=\"n\">{}</td></tr>\
<tr><td>spool disk free (reserve)</td><td class=\"n\">{} ({})</td></tr>\
<tr><td>webhook events waiting</td><td class=\"n\" id=\"webhook-backlog\">{}</td></tr></table>",
        t.minute[0],
        t.hour[0],
        t.minute[1],
        t.hour[1],
        t.minute[2],
        t.hour[2],
        t.minute[3],
        t.hour[3],
        summary.messages,
        summary.deferred,
        summary.recipients,
        age(oldest),
        bytes(o.spool_free_bytes),
        bytes(o.spool_reserve_bytes),
        o.webhook_backlog,
    );
    if let Some(peer) = &summary.draining_to {
        let _ = write!(
            b,
            "<p class=\"held\">Draining to {}: new mail is refused.</p>",
            escape(peer)
        );
    }
    b += &holds(summary, now);
    b += &paths_table(o, now);
    b += &sites_table(sites);
    b += &ages_table(o);
    b += &domains_table(summary, now);
    b += &tls_table(summary, now);
    b
}

/// Receivers' TLS per destination: the policy, attempts and failures
/// since start, the last failure.
fn tls_table(summary: &Summary, now: u64) -> String {
    let mut rows = String::new();
    for l in summary.tls.iter().take(50) {
        let last = match &l.last_failure {
            Some(kind) => format!(
                "<span class=\"error\">{}</span> {} ago: {}",
                escape(kind),
                age(now.saturating_sub(l.last_failure_at)),
                escape(l.last_failure_reply.as_deref().unwrap_or(""))
            ),
            None => String::new(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{last}</td></tr>",
            escape(&l.domain),
            escape(&l.policy),
            l.attempts,
            l.failures,
        );
    }
    format!(
        "<h2>Receivers' TLS</h2><table id=\"tls\"><tr><th>domain</th><th>policy</th><th>attempts</th><th>failed</th><th>last failure</th></tr>{rows}</table>"
    )
}

fn holds(summary: &Summary, now: u64) -> String {
    let until = |u: Option<u64>| match u {
        Some(t) => format!("for {} more", age(t.saturating_sub(now))),
        None => "until resumed".into(),
    };
    let mut rows = String::new();
    for h in &summary.holds {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.kind.as_str(),
            escape(&h.name),
            until(h.until)
        );
    }
    for d in summary.domains.iter().filter(|d| d.suspended) {
        let _ = write!(
            rows,
            "<tr><td>domain</td><td>{}</td><td>{}</td></tr>",
            escape(&d.domain),
            until(d.suspended_until)
        );
    }
    if rows.is_empty() {
        return "<h2>Holds</h2><p class=\"muted\" id=\"holds\">No suspension in force.</p>".into();
    }
    format!(
        "<h2>Holds</h2><table id=\"holds\"><tr><th>kind</th><th>name</th><th>ends</th></tr>{rows}</table>"
    )
}

fn paths_table(o: &Overview, now: u64) -> String {
    let mut rows = String::new();
    for p in &o.paths {
        let limit = p
            .max_connections
            .map_or(String::new(), |m| format!(" / {m}"));
        let cap = p.max_per_day.map_or(String::new(), |m| format!(" / {m}"));
        let throttle = p.throttled_per_second.map_or(String::new(), |r| {
            format!("<span class=\"held\">{r:.1}/s</span>")
        });
        let held = p.held.as_deref().map_or(String::new(), |h| {
            format!("<span class=\"held\">{}</span>", escape(h))
        });
        let next = p.next_retry.map_or(String::new(), |t| {
            format!("in {}", age(t.saturating_sub(now)))
        });
        let failure = match (&p.last_failure, p.last_failure_at) {
            (Some(f), at) => format!("{} ({} ago)", escape(f), age(now.saturating_sub(at))),
            (None, _) => String::new(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}{limit}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{throttle}</td><td>{held}</td>\
<td class=\"n\">{}{cap}</td><td>{next}</td><td>{failure}</td></tr>",
            escape(&p.source),
            escape(&p.site),
            escape(p.rule.as_deref().unwrap_or("")),
            p.connections,
            p.waiting,
            p.recent[0],
            p.recent[1],
            p.recent[2],
            p.sent_today,
        );
    }
    format!(
        "<h2>Paths (egress source to site)</h2><table id=\"paths\"><tr><th>source</th><th>site</th><th>rule</th>\
<th>connections</th><th>waiting</th><th>delivered</th><th>deferred</th><th>bounced</th><th>throttle</th><th>hold</th>\
<th>sent today / cap</th><th>next retry</th><th>last failure</th></tr>{rows}</table>\
<p class=\"muted\">Delivered, deferred and bounced: recipients over the last {} minutes.</p>",
        crate::scheduler::overview::RECENT_MINUTES
    )
}

fn sites_table(sites: &[GroupSummary]) -> String {
    let mut rows = String::new();
    for s in sites {
        let throttle = s
            .throttled_per_second
            .map_or(String::new(), |r| format!("{r:.1}/s"));
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(&s.name),
            escape(s.rule.as_deref().unwrap_or("")),
            s.messages,
            s.recipients,
            s.deferred,
            s.connections,
            s.waiting,
            throttle,
            s.sent_today,
        );
    }
    format!(
        "<h2>Sites</h2><table id=\"sites\"><tr><th>site (MX hosts)</th><th>shaping rule</th><th>messages</th><th>recipients</th><th>deferred</th><th>connections</th><th>waiting</th><th>throttle</th><th>sent today</th></tr>{rows}</table>"
    )
}

fn ages_table(o: &Overview) -> String {
    let mut head = String::from("<tr><th>domain</th><th>total</th>");
    for (i, b) in AGE_BUCKETS.iter().enumerate() {
        let label = match AGE_BUCKETS.get(i + 1) {
            Some(next) => format!("{b}-{next}m"),
            None => format!("{b}m+"),
        };
        let _ = write!(head, "<th>{label}</th>");
    }
    head += "</tr>";
    let mut rows = String::new();
    for d in &o.ages {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td class=\"n\">{}</td>",
            escape(&d.domain),
            d.total
        );
        for n in d.buckets {
            let _ = write!(rows, "<td class=\"n\">{n}</td>");
        }
        rows += "</tr>";
    }
    format!(
        "<h2>Queued messages by domain and age (qshape)</h2><table id=\"ages\">{head}{rows}</table>"
    )
}

fn domains_table(summary: &Summary, now: u64) -> String {
    let mut rows = String::new();
    let mut errors: Vec<_> = summary
        .domains
        .iter()
        .filter(|d| d.last_error.is_some())
        .collect();
    errors.sort_by_key(|d| std::cmp::Reverse(d.last_error_at));
    for d in summary.domains.iter().take(50) {
        let state = match (d.suspended, d.bouncing, d.throttled_per_second) {
            (true, _, _) => "<span class=\"held\">suspended</span>".to_string(),
            (_, true, _) => "<span class=\"error\">bouncing</span>".to_string(),
            (_, _, Some(r)) => format!("<span class=\"held\">throttled {r:.1}/s</span>"),
            _ => "active".to_string(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{state}</td><td>{}</td></tr>",
            escape(&d.domain),
            d.messages,
            d.deferred,
            d.recipients,
            age(d.oldest_secs),
            escape(d.last_error.as_deref().unwrap_or("")),
        );
    }
    let mut last = String::new();
    for d in errors.iter().take(10) {
        let when = match d.last_error_at {
            0 => "before the last start".to_string(),
            t => format!("{} ago", age(now.saturating_sub(t))),
        };
        let _ = write!(
            last,
            "<tr><td>{when}</td><td>{}</td><td>{}</td></tr>",
            escape(&d.domain),
            escape(d.last_error.as_deref().unwrap_or("")),
        );
    }
    format!(
        "<h2>Domains</h2><table id=\"domains\"><tr><th>domain</th><th>messages</th><th>deferred</th><th>recipients</th><th>oldest</th><th>state</th><th>last error</th></tr>{rows}</table>\
<h2>Last errors</h2><table id=\"errors\"><tr><th>when</th><th>domain</th><th>reply</th></tr>{last}</table>"
    )
}

/// The find page's body.
pub fn found(key: &Lookup, found: &[FoundMessage], now: u64) -> String {
    let mut b = find_box(Some(key));
    let _ = write!(
        b,
        "<h2 id=\"found\">{}: {} message(s)</h2><table id=\"results\"><tr><th>id</th><th>state</th><th>accepted</th><th>sender</th><th>recipients</th></tr>",
        escape(&key.to_string()),
        found.len()
    );
    for m in found {
        let (sender, rcpts) = match (&m.queued, &m.finished) {
            (Some(q), _) => (
                q.sender.clone(),
                q.recipients
                    .iter()
                    .map(|r| format!("{} ({:?})", r.address, r.status).to_lowercase())
                    .collect::<Vec<_>>(),
            ),
            (None, Some(f)) => (
                f.sender.clone(),
                f.recipients
                    .iter()
                    .map(|r| format!("{} ({})", r.address, outcome(r.outcome)))
                    .collect(),
            ),
            (None, None) => (String::new(), Vec::new()),
        };
        let _ = write!(
            b,
            "<tr><td><a href=\"/status/messages/{0}\">{0}</a></td><td>{1}</td><td>{2} ago</td><td>{3}</td><td>{4}</td></tr>",
            escape(&m.id),
            escape(&m.state),
            age(now.saturating_sub(m.created)),
            escape(&sender),
            escape(&rcpts.join(", ")),
        );
    }
    b + "</table>"
}

fn outcome(o: crate::history::Outcome) -> &'static str {
    match o {
        crate::history::Outcome::Delivered => "delivered",
        crate::history::Outcome::Bounced => "bounced",
        crate::history::Outcome::Expired => "expired",
        crate::history::Outcome::Deleted => "deleted",
    }
}

/// The message page's body.
pub fn message(t: &MessageTrace, headers: Option<&str>, now: u64) -> String {
    let mut b = String::new();
    match (&t.queued, &t.finished) {
        (Some(q), _) => b += &queued(q, now),
        (None, Some(f)) => b += &finished(f, now),
        (None, None) => b += "<p>Not queued; the history does not have it.</p>",
    }
    if !t.events.is_empty() {
        b += "<h2>Events (delivery log)</h2><table id=\"events\"><tr><th>time</th><th>event</th><th>recipient</th><th>reply</th></tr>";
        for e in &t.events {
            let text = |k: &str| escape(e[k].as_str().unwrap_or(""));
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text("time"),
                text("event"),
                text("recipient"),
                text("reply")
            );
        }
        b += "</table>";
    }
    if let Some(h) = headers {
        let _ = write!(b, "<h2>Headers</h2><pre id=\"headers\">{}</pre>", escape(h));
    }
    b
}

fn field_rows(fields: &[(&str, String)]) -> String {
    let mut rows = String::from("<table id=\"envelope\">");
    for (name, value) in fields.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = write!(rows, "<tr><th>{name}</th><td>{}</td></tr>", escape(value));
    }
    rows + "</table>"
}

fn queued(q: &MessageInfo, now: u64) -> String {
    let next = q.next_attempt.map_or(String::new(), |t| {
        format!("in {}", age(t.saturating_sub(now)))
    });
    let mut b = field_rows(&[
        ("id", q.id.clone()),
        ("state", q.state.clone()),
        ("next attempt", next),
        (
            "sender",
            if q.sender.is_empty() {
                "<>".into()
            } else {
                q.sender.clone()
            },
        ),
        (
            "accepted",
            format!("{} ago", age(now.saturating_sub(q.created))),
        ),
        ("size", format!("{} bytes", q.size)),
        ("attempts", q.attempts.to_string()),
        ("priority", q.priority.clone()),
        (
            "pool",
            if q.pool.is_empty() {
                "(default)".into()
            } else {
                q.pool.clone()
            },
        ),
        ("Message-ID", q.message_id.clone().unwrap_or_default()),
        (
            "Idempotency-Key",
            q.idempotency_key.clone().unwrap_or_default(),
        ),
        (
            "meta",
            q.meta.as_ref().map_or(String::new(), |m| m.to_string()),
        ),
        (
            "DKIM",
            q.dkim
                .clone()
                .unwrap_or_else(|| "(signing not configured)".into()),
        ),
        (
            "DSN",
            q.envid
                .as_ref()
                .map_or(String::new(), |e| format!("ENVID={e}")),
        ),
    ]);
    b += "<h2>Recipients</h2><table id=\"recipients\"><tr><th>address</th><th>state</th><th>attempts</th><th>last reply</th><th>site</th><th>source</th></tr>";
    for r in &q.recipients {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.address),
            format!("{:?}", r.status).to_lowercase(),
            r.attempts,
            escape(r.last_reply.as_deref().unwrap_or("")),
            escape(r.site.as_deref().unwrap_or("")),
            escape(r.source.as_deref().unwrap_or("")),
        );
    }
    b += "</table>";
    let id = escape(&q.id);
    let _ = write!(
        b,
        "<h2>Actions</h2><p><button id=\"flush\" data-method=\"POST\" data-path=\"/queue/messages/{id}/flush\" data-confirm=\"Retry message {id} now?\">Retry now</button>\
<button id=\"bounce\" data-method=\"POST\" data-path=\"/queue/messages/{id}/bounce\" data-confirm=\"Return message {id} to its sender (a DSN) and remove it?\">Return to sender</button>\
<button id=\"delete\" data-method=\"DELETE\" data-path=\"/queue/messages/{id}\" data-confirm=\"Delete message {id} without delivering it?\">Delete</button></p><p id=\"outcome\"></p>"
    );
    b
}

fn finished(f: &Finished, now: u64) -> String {
    let mut b = field_rows(&[
        ("id", f.id.clone()),
        ("state", "finished: it left the queue".into()),
        (
            "sender",
            if f.sender.is_empty() {
                "<>".into()
            } else {
                f.sender.clone()
            },
        ),
        (
            "accepted",
            format!("{} ago", age(now.saturating_sub(f.created))),
        ),
        (
            "finished",
            format!("{} ago", age(now.saturating_sub(f.finished))),
        ),
        ("size", format!("{} bytes", f.size)),
        ("pool", f.pool.clone()),
        ("Message-ID", f.message_id.clone().unwrap_or_default()),
        (
            "Idempotency-Key",
            f.idempotency_key.clone().unwrap_or_default(),
        ),
        (
            "meta",
            f.meta.as_ref().map_or(String::new(), |m| m.to_string()),
        ),
    ]);
    b += "<h2>Recipients</h2><table id=\"recipients\"><tr><th>address</th><th>outcome</th><th>attempts</th><th>reply</th><th>category</th></tr>";
    for r in &f.recipients {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.address),
            outcome(r.outcome),
            r.attempts,
            escape(r.reply.as_deref().unwrap_or("")),
            escape(r.category.as_deref().unwrap_or("")),
        );
    }
    b + "</table><p id=\"outcome\"></p>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_everywhere() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let key = Lookup::parse("rcpt", "<a@b.example>").unwrap();
        let page = found(&key, &[], 0);
        assert!(!page.contains("<a@b"), "{page}");
        let summary: Summary = serde_json::from_value(serde_json::json!({
            "messages": 0, "recipients": 0, "domains": [],
            "tls": [{"domain": "<b>.example", "policy": "dane", "attempts": 3, "failures": 1,
                     "last_failure": "dnssec-invalid", "last_failure_reply": "451 <i>",
                     "last_failure_at": 90, "last_at": 95}]
        }))
        .unwrap();
        let table = tls_table(&summary, 100);
        assert!(
            table.contains(
                "&lt;b&gt;.example</td><td>dane</td><td class=\"n\">3</td><td class=\"n\">1</td>"
            ) && table.contains("dnssec-invalid</span> 10s ago: 451 &lt;i&gt;"),
            "{table}"
        );
    }

    #[test]
    fn a_page_loads_nothing_from_elsewhere() {
        let p = page("ringpost status", "<p>x</p>", Some(10));
        assert!(p.contains("http-equiv=\"refresh\" content=\"10\""));
        assert!(!p.contains("http://") && !p.contains("https://"), "{p}");
    }
}
