//! `/queue/bounce-rules` on the admin listener: the administrator's
//! bounce rules (`scheduler::rules`), which refuse new mail a selector
//! matches and bounce the queued mail it matches, for a while
//! (`ringpost queue bounce SELECTOR --reason R --for 1h` and `queue
//! resume --rule ID` use it).
//!
//! | method and path                  | answer                              |
//! |----------------------------------|-------------------------------------|
//! | `GET /queue/bounce-rules`        | `{"rules": [RuleSummary]}`          |
//! | `POST /queue/bounce-rules`       | `{"rule": RuleSummary}`: in force on every shard, stored before the answer |
//! | `DELETE /queue/bounce-rules/ID`  | `{"id": ID, "lifted": true}`, or 404 |
//!
//! The POST body: `{"selector": {...}, "reason": "...", "for_secs": 3600}`
//! (`selector` as `POST /queue/actions` takes it, without `source`,
//! `site`, `older_than_secs` or `state`; `for_secs` from 1 to
//! [`MAX_FOR_SECS`]: a rule always ends). The same selector and reason
//! again renew the rule. Creating a rule does not touch what is queued:
//! the CLI bounces that with `POST /queue/actions` after it (a queued
//! message the rule matches is also bounced before its next attempt).
//! Errors are `{"error": "..."}` with 400, 404, 405, 500 or 503.
//!
//! May call: each shard's scheduler over the mesh.

use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::scheduler::Scheduler;
use crate::scheduler::rules::{RuleSpec, RuleSummary};
use crate::scheduler::select::Selector;
use crate::shard::mesh::Mesh;

/// How long a rule may be in force at most: 30 days.
pub const MAX_FOR_SECS: u64 = 30 * 86_400;

/// What `POST /queue/bounce-rules` asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRule {
    selector: Selector,
    reason: String,
    for_secs: u64,
}

fn error(status: u16, why: impl std::fmt::Display) -> Response {
    Response::json(status, &json!({ "error": why.to_string() }))
}

/// Answers a request under `/queue/bounce-rules`.
pub async fn answer(shards: &Mesh<Scheduler>, req: &Request) -> Response {
    match (req.method.as_str(), req.route().as_slice()) {
        ("GET", ["queue", "bounce-rules"]) => {
            match shards.ask(0, |s| async move { s.bounce_rules() }).await {
                Ok(rules) => Response::json(200, &json!({ "rules": rules })),
                Err(e) => error(503, e),
            }
        }
        ("POST", ["queue", "bounce-rules"]) => create(shards, req).await,
        ("DELETE", ["queue", "bounce-rules", id]) => lift(shards, id).await,
        (_, ["queue", "bounce-rules"] | ["queue", "bounce-rules", _]) => {
            error(405, "method not allowed")
        }
        _ => error(404, format!("no such path /{}", req.segments.join("/"))),
    }
}

async fn create(shards: &Mesh<Scheduler>, req: &Request) -> Response {
    let ask: NewRule = match serde_json::from_slice(&req.body) {
        Ok(ask) => ask,
        Err(e) => return error(400, format!("the request body: {e}")),
    };
    if ask.for_secs == 0 || ask.for_secs > MAX_FOR_SECS {
        return error(400, format!("for_secs: from 1 to {MAX_FOR_SECS}"));
    }
    let spec = RuleSpec {
        selector: ask.selector,
        reason: ask.reason.trim().to_string(),
    };
    if let Err(why) = spec.check() {
        return error(400, format!("selector: {why}"));
    }
    let secs = ask.for_secs;
    let made = shards
        .ask_all(move |s| {
            let spec = spec.clone();
            async move { s.add_bounce_rule(&spec, Some(secs)).await }
        })
        .await;
    let made: Vec<Result<RuleSummary, String>> = match made {
        Ok(made) => made,
        Err(e) => return error(503, e),
    };
    let mut rule = None;
    for m in made {
        match m {
            Ok(r) => rule = Some(r),
            Err(why) => return error(500, format!("the rule could not be stored: {why}")),
        }
    }
    log::info!(
        "bounce rule {} in force",
        rule.as_ref().map_or("", |r| &r.id)
    );
    Response::json(200, &json!({ "rule": rule }))
}

async fn lift(shards: &Mesh<Scheduler>, id: &str) -> Response {
    let id = id.to_string();
    let lifted = shards
        .ask_all(move |s| {
            let id = id.clone();
            async move { s.lift_bounce_rule(&id).await.map(|l| (id, l)) }
        })
        .await;
    let parts = match lifted {
        Ok(parts) => parts,
        Err(e) => return error(503, e),
    };
    let mut any = None;
    for p in parts {
        match p {
            Ok((id, true)) => any = Some(id),
            Ok((_, false)) => {}
            Err(e) => return error(500, format!("the rule's end could not be stored: {e}")),
        }
    }
    match any {
        Some(id) => Response::json(200, &json!({ "id": id, "lifted": true })),
        None => error(404, "no bounce rule with this id"),
    }
}
