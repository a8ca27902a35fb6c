//! `GET /queue/find?KEY=VALUE[&since_secs=N][&limit=N]` on the admin
//! listener (`ringpost queue find` uses it): the messages one key finds,
//! still queued or already gone, from every shard.
//!
//! `KEY` is one of `rcpt`, `sender`, `message_id`, `idempotency_key` or
//! `meta` (whose value is `NAME=VALUE`: `meta=campaign=spring`);
//! addresses match with the domain part in any case. `since_secs`: only
//! messages accepted (queued) or finished (history) in that many seconds
//! before now; `limit`: at most that many (default 100, at most 10,000).
//! The answer:
//!
//! ```json
//! {"key": "rcpt=bob@example.com",
//!  "now": 1800000000,                 // the server's clock, Unix seconds
//!  "messages": [FoundMessage, ...],   // newest first, queued ones first
//!  "suppressed": Suppression}         // rcpt only, when it is listed
//! ```
//!
//! Each hit is `scheduler::find::FoundMessage`: its queue id, `state`
//! (deferred, suspended, delivering, queued, or finished), and either
//! `queued` (the message as `queue show` has it) or `finished` (each
//! recipient's outcome with the reply: `history::Finished`). Errors are
//! `{"error": "..."}` with 400 (no key, two keys, a bad value) or 503.
//!
//! May call: each shard's scheduler over the mesh (its queue index and
//! history), `suppression` (is the recipient listed?), `history` (the
//! lookup's parsing). Must not: scan the queue or read a message body.

use std::sync::Arc;

use serde_json::json;

use crate::history::{Lookup, LookupKind};
use crate::http::{Request, Response};
use crate::scheduler::Scheduler;
use crate::scheduler::find::FoundMessage;
use crate::shard::clock::Clock;
use crate::shard::mesh::Mesh;
use crate::suppression::{GLOBAL, SuppressionList};

/// Hits returned when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Hits returned at most.
pub const MAX_LIMIT: usize = 10_000;

/// Answers `GET /queue/find`.
pub async fn answer(
    shards: &Mesh<Scheduler>,
    suppressions: Option<&Arc<SuppressionList>>,
    clock: &Clock,
    req: &Request,
) -> Response {
    let (key, since, limit) = match parse(req, clock.now()) {
        Ok(q) => q,
        Err(why) => return Response::json(400, &json!({ "error": why })),
    };
    let messages = match find(shards, &key, since, limit).await {
        Ok(m) => m,
        Err(e) => return Response::json(503, &json!({ "error": e.to_string() })),
    };
    let suppressed = match (key.kind, suppressions) {
        (LookupKind::Rcpt, Some(list)) => list
            .get(GLOBAL, &key.value)
            .filter(|s| s.is_live(clock.now())),
        _ => None,
    };
    Response::json(
        200,
        &json!({
            "key": key.to_string(),
            "now": clock.now(),
            "messages": messages,
            "suppressed": suppressed,
        }),
    )
}

/// The messages `key` finds on every shard, queued ones first, then the
/// newest; at most `limit` (the status page's find box asks this too).
pub async fn find(
    shards: &Mesh<Scheduler>,
    key: &Lookup,
    since: u64,
    limit: usize,
) -> Result<Vec<FoundMessage>, crate::shard::mesh::ShardGone> {
    let asked = key.clone();
    let answers = shards
        .ask_all(move |s| {
            let key = asked.clone();
            async move { s.find(&key, since, limit) }
        })
        .await?;
    let mut messages: Vec<FoundMessage> = answers.into_iter().flatten().collect();
    messages.sort_by(|a, b| {
        let finished = |m: &FoundMessage| m.finished.is_some();
        (finished(a), b.created, &b.id).cmp(&(finished(b), a.created, &a.id))
    });
    messages.truncate(limit);
    Ok(messages)
}

/// The key, the earliest time (Unix seconds) and the limit a request asks
/// for.
fn parse(req: &Request, now: u64) -> Result<(Lookup, u64, usize), String> {
    let mut keys = LookupKind::ALL
        .iter()
        .filter_map(|k| Some((k.name(), req.param(k.name())?)));
    let (kind, value) = keys.next().ok_or(
        "name a key: rcpt, sender, message_id, idempotency_key or meta (?rcpt=bob@example.com)",
    )?;
    if keys.next().is_some() {
        return Err("one key per lookup".into());
    }
    let key = Lookup::parse(kind, value).map_err(|e| e.to_string())?;
    let number = |name: &str| -> Result<Option<u64>, String> {
        req.param(name)
            .map(|n| {
                n.parse::<u64>()
                    .map_err(|_| format!("{name} `{n}` is not a number"))
            })
            .transpose()
    };
    let since = number("since_secs")?.map_or(0, |secs| now.saturating_sub(secs));
    let limit = number("limit")?.map_or(DEFAULT_LIMIT, |n| n as usize);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
    }
    Ok((key, since, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_names_exactly_one_key() {
        let ok = parse(
            &Request::new(
                "GET",
                "/queue/find?rcpt=Bob@Example.COM&since_secs=3600&limit=5",
            ),
            10_000,
        )
        .unwrap();
        assert_eq!(ok.0.to_string(), "rcpt=Bob@example.com");
        assert_eq!((ok.1, ok.2), (6_400, 5));
        let meta = parse(
            &Request::new("GET", "/queue/find?meta=campaign%3Dspring"),
            0,
        )
        .unwrap();
        assert_eq!(meta.0.to_string(), "meta=campaign=spring");
        for bad in [
            "/queue/find",
            "/queue/find?rcpt=a@b&sender=c@d",
            "/queue/find?rcpt=",
            "/queue/find?rcpt=a@b&limit=0",
            "/queue/find?rcpt=a@b&since_secs=x",
            "/queue/find?meta=campaign",
        ] {
            assert!(parse(&Request::new("GET", bad), 0).is_err(), "{bad}");
        }
    }
}
