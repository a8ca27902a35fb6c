//! Webhook events a receiver refused for good, on the admin listener
//! (`ringpost events-failed ls|replay` uses it), while the server runs:
//!
//! | method and path                                   | answer |
//! |---------------------------------------------------|--------|
//! | `GET /events/failed?webhook=W&since=T&limit=N`    | `[{"webhook", "seq", "shard", "at_ms", "event"}]`, oldest first per shard |
//! | `POST /events/failed/replay?webhook=W&since=T`    | `{"replayed": N}` once on disk: each shard's sender of W posts them again, in order, before anything new, at least once |
//!
//! `webhook` absent: every webhook's; `since`: Unix seconds of the
//! event's time (default: all). Each shard keeps its own events (in its
//! spool's outbox), so the request travels to every shard over the mesh.
//!
//! May call: each shard's scheduler over the mesh (its outbox's failed
//! and replay trees). Must not: post anything itself (the webhook senders
//! do).

use serde::Serialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::scheduler::Scheduler;
use crate::shard::mesh::Mesh;

/// One kept event.
#[derive(Debug, Serialize)]
pub struct FailedEvent {
    pub webhook: String,
    pub shard: usize,
    pub seq: u64,
    pub at_ms: u64,
    pub event: serde_json::Value,
}

/// Answers a request under `/events`.
pub async fn answer(shards: &Mesh<Scheduler>, req: &Request) -> Response {
    let webhook = req.param("webhook").map(str::to_string);
    let since_ms = match req.param("since").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(secs)) => secs.saturating_mul(1000),
        Some(Err(_)) => return error(400, "since must be Unix seconds"),
    };
    let limit = match req.param("limit").map(str::parse::<usize>) {
        None => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(400, "limit must be a number"),
    };
    match (req.method.as_str(), req.route().as_slice()) {
        ("GET", ["events", "failed"]) => {
            let answers = shards
                .ask_all(move |s| {
                    let webhook = webhook.clone();
                    async move {
                        let kept = s.failed_events(webhook.as_deref(), since_ms);
                        kept.into_iter()
                            .take(limit)
                            .map(|(webhook, e)| FailedEvent {
                                webhook,
                                shard: s.shard_index(),
                                seq: e.seq,
                                at_ms: e.at_ms,
                                event: serde_json::from_slice(&e.json)
                                    .unwrap_or(serde_json::Value::Null),
                            })
                            .collect::<Vec<_>>()
                    }
                })
                .await;
            match answers {
                Ok(lists) => {
                    let mut all: Vec<FailedEvent> = lists.into_iter().flatten().collect();
                    all.sort_by_key(|e| (e.at_ms, e.shard, e.seq));
                    all.truncate(limit);
                    Response::json(200, &all)
                }
                Err(e) => error(503, &e.to_string()),
            }
        }
        ("POST", ["events", "failed", "replay"]) => {
            let answers = shards
                .ask_all(move |s| {
                    let webhook = webhook.clone();
                    async move { s.replay_failed_events(webhook.as_deref(), since_ms).await }
                })
                .await;
            match answers {
                Ok(counts) => match counts.into_iter().sum::<Result<usize, _>>() {
                    Ok(n) => Response::json(200, &json!({ "replayed": n })),
                    Err(e) => error(500, &format!("not stored: {e}")),
                },
                Err(e) => error(503, &e.to_string()),
            }
        }
        (_, ["events", "failed"] | ["events", "failed", "replay"]) => {
            error(405, "method not allowed here")
        }
        _ => error(404, &format!("no such path /{}", req.segments.join("/"))),
    }
}

fn error(status: u16, why: &str) -> Response {
    Response::json(status, &json!({ "error": why }))
}
