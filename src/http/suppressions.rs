//! The suppression list on the admin listener (`ringpost suppression ...`
//! uses it):
//!
//! | method and path                               | answer                          |
//! |-----------------------------------------------|---------------------------------|
//! | `GET /suppressions?after=SCOPE:ADDR&limit=N`  | `[Suppression]`, in key order   |
//! | `GET /suppressions/ADDRESS?scope=S`           | `Suppression` or 404            |
//! | `POST /suppressions` body `[{address, scope?, reason?, expires_in_secs?}]` | `{"added": N}` once on disk |
//! | `DELETE /suppressions/ADDRESS?scope=S`        | `{"removed": bool}`             |
//!
//! `scope` is `*` (every sender; the default) or a sender domain. An
//! answer of `added` means the entries are on disk (sled flushed). Errors
//! are `{"error": "..."}` with 400, 404, 405, 500 or 503 (the list is off).
//!
//! May call: `suppression`. Must not: touch the spool.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::shard::clock::Clock;
use crate::suppression::{GLOBAL, Suppression, SuppressionList};

/// Entries one POST may carry.
pub const MAX_BATCH: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEntry {
    address: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
    /// "admin" (default) or "import".
    #[serde(default)]
    source: Option<String>,
}

fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "error": message.into() }))
}

/// Whether `address` looks like local@domain, with nothing that could
/// break a log line.
fn plausible(address: &str) -> bool {
    address.len() <= 320
        && address
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !address.contains(|c: char| c.is_control() || c.is_whitespace())
}

fn scope_of(req: &Request) -> Result<String, Response> {
    match req.param("scope") {
        None | Some("*") => Ok(GLOBAL.into()),
        Some(s) if s.contains('.') && !s.contains(|c: char| c.is_control() || c == '@') => {
            Ok(s.to_ascii_lowercase())
        }
        Some(s) => Err(error(400, format!("scope `{s}` is neither * nor a domain"))),
    }
}

/// Answers a request under `/suppressions`.
pub fn answer(list: Option<&Arc<SuppressionList>>, clock: &Clock, req: &Request) -> Response {
    let Some(list) = list else {
        return error(
            503,
            "the suppression list is off (suppression.enabled = false)",
        );
    };
    let route = req.route();
    let result = match (req.method.as_str(), route.as_slice()) {
        ("GET", ["suppressions"]) => Ok(page(list, req)),
        ("GET", ["suppressions", address]) => {
            scope_of(req).map(|scope| match list.get(&scope, address) {
                Some(s) => Response::json(200, &s),
                None => error(404, format!("{address} is not suppressed for {scope}")),
            })
        }
        ("POST", ["suppressions"]) => add(list, clock, &req.body),
        ("DELETE", ["suppressions", address]) => {
            scope_of(req).map(|scope| match list.remove(&scope, address) {
                Ok(removed) => Response::json(200, &json!({ "removed": removed })),
                Err(e) => error(500, format!("not stored: {e}")),
            })
        }
        (_, ["suppressions"] | ["suppressions", _]) => Err(error(405, "method not allowed here")),
        _ => Err(error(404, "no such path")),
    };
    result.unwrap_or_else(|e| e)
}

fn page(list: &SuppressionList, req: &Request) -> Response {
    let limit = req
        .param("limit")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000usize)
        .min(MAX_BATCH);
    let after = req.param("after").and_then(|a| a.split_once(':'));
    Response::json(200, &list.list(after, limit))
}

fn add(list: &SuppressionList, clock: &Clock, body: &[u8]) -> Result<Response, Response> {
    let entries: Vec<NewEntry> = serde_json::from_slice(body)
        .map_err(|e| error(400, format!("expected [{{\"address\": ...}}]: {e}")))?;
    if entries.len() > MAX_BATCH {
        return Err(error(
            400,
            format!("at most {MAX_BATCH} entries per request"),
        ));
    }
    let now = clock.now();
    let mut made = Vec::with_capacity(entries.len());
    for e in entries {
        if !plausible(&e.address) {
            return Err(error(
                400,
                format!("`{}` is not an address", e.address.escape_debug()),
            ));
        }
        let scope = match e.scope.as_deref() {
            None | Some("*") | Some("") => GLOBAL.to_string(),
            Some(s)
                if s.contains('.')
                    && !s.contains(|c: char| c.is_control() || c.is_whitespace() || c == '@') =>
            {
                s.to_ascii_lowercase()
            }
            Some(s) => {
                return Err(error(
                    400,
                    format!("scope `{}` is neither * nor a domain", s.escape_debug()),
                ));
            }
        };
        let source = match e.source.as_deref() {
            None | Some("admin") => "admin",
            Some("import") => "import",
            Some(s) => {
                return Err(error(
                    400,
                    format!("source `{}`: admin or import", s.escape_debug()),
                ));
            }
        };
        let reason: String = e
            .reason
            .unwrap_or_else(|| "operator".into())
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        made.push(Suppression {
            address: e.address.to_lowercase(),
            scope,
            reason,
            source: source.into(),
            added: now,
            expires: e
                .expires_in_secs
                .map_or(0, |s| now.saturating_add(s.max(1))),
        });
    }
    list.add_durably(&made)
        .map_err(|e| error(500, format!("not stored: {e}")))?;
    for source in ["admin", "import"] {
        let n = made.iter().filter(|s| s.source == source).count() as u64;
        if n > 0 {
            ::metrics::counter!(crate::metrics::SUPPRESSIONS_ADDED, "source" => source)
                .increment(n);
        }
    }
    Ok(Response::json(200, &json!({ "added": made.len() })))
}
