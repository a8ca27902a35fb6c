//! `POST /queue/actions` on the admin listener: delete, bounce or flush
//! every queued message a selector matches, on every shard, or say what
//! it would do (`ringpost queue delete|bounce|flush|ls` with selector
//! flags use it).
//!
//! The request, JSON:
//!
//! ```json
//! {"action": "delete",                 // "bounce", "flush", or "preview"
//!  "selector": {"meta": "campaign=spring", "domain": "example.com"},
//!  "dry_run": false,                   // true: count and show, change nothing
//!  "expect": 50000,                    // the count the caller saw (see below)
//!  "force": false,
//!  "limit": 1000,                      // messages per call at most
//!  "reason": "sent by mistake",        // bounce: added to the DSN's reply
//!  "examples": 5}                      // dry run: the oldest N shown
//! ```
//!
//! The selector is `scheduler::select::Selector` (every criterion must
//! hold; `{"all": true}` for everything). A change needs `expect`, the
//! number of messages the caller expects to match (a dry run tells it):
//! if the selector matches another number now, nothing is done and the
//! answer is 409 with the count; or `force: true`. A dry run answers
//! `{messages, recipients, examples}` (the oldest, as `queue show` has
//! them); a change answers the merged `scheduler::bulk::BulkReport`:
//! `{matched, done, busy, held, not_deferred, failed, failures, left}`
//! (`left`: matched beyond `limit`, for the next call). Errors are
//! `{"error": "..."}` with 400 (a bad body or selector), 409, or 503.
//!
//! May call: each shard's scheduler over the mesh (`select`, `bulk`).
//! Must not: act without `expect` or `force`, or read message bodies.

use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::scheduler::Scheduler;
use crate::scheduler::bulk::{BulkAction, BulkReport, Preview};
use crate::scheduler::select::{Compiled, Selector};
use crate::shard::mesh::Mesh;

/// Messages acted on per call when the request does not say.
pub const DEFAULT_LIMIT: usize = 1_000;
/// Messages acted on per call at most.
pub const MAX_LIMIT: usize = 100_000;
/// Examples a dry run shows when the request does not say, and at most.
const EXAMPLES: usize = 5;
const MAX_EXAMPLES: usize = 10_000;

/// What `POST /queue/actions` asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: String,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub expect: Option<usize>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub reason: Option<String>,
    /// A dry run's examples: how many (default 5, at most 10,000).
    #[serde(default)]
    pub examples: Option<usize>,
}

/// A request checked: the action (None: a preview), the selector, the
/// messages per call, the examples a preview shows.
struct Checked {
    action: Option<BulkAction>,
    sel: Compiled,
    limit: usize,
    examples: usize,
    ask: ActionRequest,
}

/// Reads and checks the request; Err: why not (a 400).
fn check(req: &Request) -> Result<Checked, String> {
    let ask: ActionRequest =
        serde_json::from_slice(&req.body).map_err(|e| format!("the request body: {e}"))?;
    let action = match ask.action.as_str() {
        "delete" => Some(BulkAction::Delete),
        "bounce" => Some(BulkAction::Bounce),
        "flush" => Some(BulkAction::Flush),
        "preview" => None,
        other => {
            return Err(format!(
                "action `{other}`: one of delete, bounce, flush, preview"
            ));
        }
    };
    let sel = ask
        .selector
        .compile()
        .map_err(|why| format!("selector: {why}"))?;
    let limit = ask.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!("limit: from 1 to {MAX_LIMIT}"));
    }
    if ask.reason.is_some() && action != Some(BulkAction::Bounce) {
        return Err("reason: only for a bounce".into());
    }
    if let Some(r) = ask.reason.as_deref() {
        crate::scheduler::rules::check_reason(r)?;
    }
    let examples = ask.examples.unwrap_or(EXAMPLES);
    if examples > MAX_EXAMPLES {
        return Err(format!("examples: at most {MAX_EXAMPLES}"));
    }
    Ok(Checked {
        action,
        sel,
        limit,
        examples,
        ask,
    })
}

/// Why a change may not go ahead with `preview`'s count, if it may not:
/// the status and answer.
fn refused(ask: &ActionRequest, preview: &Preview) -> Option<(u16, serde_json::Value)> {
    let matched = preview.messages;
    match (ask.expect, ask.force) {
        (Some(n), false) if n != matched => Some((
            409,
            json!({
                "error": format!("the selector matches {matched} messages, not {n}: nothing was done"),
                "matched": matched,
            }),
        )),
        (None, false) => Some((
            400,
            json!({ "error": format!(
                "say how many messages you expect ({matched} match now) with expect, or force"
            ) }),
        )),
        _ => None,
    }
}

/// Answers `POST /queue/actions`.
pub async fn answer(shards: &Mesh<Scheduler>, req: &Request) -> Response {
    let c = match check(req) {
        Ok(c) => c,
        Err(why) => return Response::json(400, &json!({ "error": why })),
    };
    let unavailable =
        |e: crate::shard::mesh::ShardGone| Response::json(503, &json!({ "error": e.to_string() }));
    // A forced change needs no count first (the CLI's later steps).
    if let Some(action) = c.action.filter(|_| c.ask.force && !c.ask.dry_run) {
        return act(shards, &c, action).await;
    }
    let (sel, examples) = (c.sel.clone(), c.examples);
    let preview = shards
        .ask_all(move |s| {
            let sel = sel.clone();
            async move { s.preview(&sel, examples) }
        })
        .await;
    let preview = match preview {
        Ok(parts) => parts.into_iter().fold(Preview::default(), |mut all, p| {
            all.merge(p, examples);
            all
        }),
        Err(e) => return unavailable(e),
    };
    let Some(action) = c.action.filter(|_| !c.ask.dry_run) else {
        return Response::json(200, &preview);
    };
    if let Some((status, why)) = refused(&c.ask, &preview) {
        return Response::json(status, &why);
    }
    act(shards, &c, action).await
}

/// Applies `action` on every shard, each to at most its share of the
/// limit.
async fn act(shards: &Mesh<Scheduler>, c: &Checked, action: BulkAction) -> Response {
    // Each shard acts on at most its share of the limit, its oldest
    // first; the rest is `left`, for the next call.
    let share = c.limit.div_ceil(shards.count().max(1));
    let (sel, reason) = (c.sel.clone(), c.ask.reason.clone());
    let reports = shards
        .ask_all(move |s| {
            let (sel, reason) = (sel.clone(), reason.clone());
            async move { s.bulk(action, &sel, share, reason.as_deref()).await }
        })
        .await;
    match reports {
        Ok(parts) => {
            let mut all = BulkReport::default();
            for p in parts {
                all.merge(p);
            }
            Response::json(200, &all)
        }
        Err(e) => Response::json(503, &json!({ "error": e.to_string() })),
    }
}
