//! The status pages on the admin listener, for a browser: is mail flowing,
//! where is it stuck, and what happened to one message.
//!
//! | path                    | page |
//! |-------------------------|------|
//! | `GET /status`           | the overview: traffic, queue, sites, domains by age, holds, last errors, a find box (refreshes itself every 10 s) |
//! | `GET /status/find?key=K&value=V[&since=24h]` | what a lookup finds (`http::find`), each linked to its page |
//! | `GET /status/messages/ID` | one message: envelope, recipients, events, headers; buttons to retry, return or delete it |
//!
//! Server-rendered HTML ([`render`]) that loads nothing from elsewhere
//! (its styles and its one script are inline; the listener's headers
//! forbid anything else). The token rule is the API's: a browser sends it
//! as the password of HTTP Basic authentication (any user name), asked
//! once; without it the answer is 401 and no data. The buttons ask for
//! confirmation, then call the admin API itself (`POST
//! /queue/messages/ID/flush`, `.../bounce`, `DELETE /queue/messages/ID`)
//! from the page's origin: the listener refuses such calls from a page of
//! any other origin.
//!
//! May call: the admin API's views (`http::admin`, `http::find`), each
//! shard's scheduler over the mesh (its overview), `history` (lookups).
//! Must not: change anything itself (the buttons go through the API).

pub mod render;

use crate::history::Lookup;
use crate::http::{Request, Response};
use crate::queue::MessageId;
use crate::scheduler::Scheduler;
use crate::scheduler::operations::GroupBy;
use crate::scheduler::overview::{DomainAges, Overview, PathRow};
use crate::shard::clock::Clock;
use crate::shard::mesh::Mesh;

/// Domains in the age table.
const TOP_DOMAINS: usize = 20;
/// Hits shown by the find box.
const FIND_LIMIT: usize = 100;

/// The 401 page: asks the browser for the token.
pub fn unauthorized() -> Response {
    Response::html(
        401,
        render::page(
            "ringpost: token needed",
            "<p>This page needs the admin token: any user name, the token as the password.</p>",
            None,
        ),
    )
}

/// Answers a request under `/status`.
pub async fn answer(shards: &Mesh<Scheduler>, clock: &Clock, log: &str, req: &Request) -> Response {
    if req.method != "GET" {
        return Response::html(405, render::page("ringpost", "<p>Only GET here.</p>", None));
    }
    let now = clock.now();
    let result = match req.route().as_slice() {
        ["status"] => overview(shards, now).await,
        ["status", "find"] => find(shards, req, now).await,
        ["status", "messages", id] => message(shards, log, id, now).await,
        _ => Err((404, "No such page.".to_string())),
    };
    result.unwrap_or_else(|(status, why)| {
        let body = format!(
            "<p class=\"error\">{}</p><p><a href=\"/status\">Back to the status page</a></p>",
            render::escape(&why)
        );
        Response::html(status, render::page("ringpost", &body, None))
    })
}

type PageResult = Result<Response, (u16, String)>;

fn unavailable(e: impl std::fmt::Display) -> (u16, String) {
    (503, e.to_string())
}

/// Every shard's overview, merged.
async fn overviews(shards: &Mesh<Scheduler>) -> Result<Overview, (u16, String)> {
    let parts = shards
        .ask_all(|s| async move { s.overview(TOP_DOMAINS) })
        .await
        .map_err(unavailable)?;
    let mut merged = Overview::default();
    let mut ages: std::collections::HashMap<String, DomainAges> = Default::default();
    let mut paths: std::collections::HashMap<(String, String), PathRow> = Default::default();
    for (i, part) in parts.into_iter().enumerate() {
        for p in part.paths {
            match paths.get_mut(&(p.source.clone(), p.site.clone())) {
                Some(into) => merge_path(into, p),
                None => {
                    paths.insert((p.source.clone(), p.site.clone()), p);
                }
            }
        }
        merged.traffic.add(part.traffic);
        merged.webhook_backlog += part.webhook_backlog;
        if i == 0 {
            // Every shard's spool is on the same file system.
            merged.spool_free_bytes = part.spool_free_bytes;
            merged.spool_reserve_bytes = part.spool_reserve_bytes;
        }
        for a in part.ages {
            let into = ages.entry(a.domain.clone()).or_insert_with(|| DomainAges {
                domain: a.domain.clone(),
                ..DomainAges::default()
            });
            into.total += a.total;
            for (b, n) in into.buckets.iter_mut().zip(a.buckets) {
                *b += n;
            }
        }
    }
    merged.ages = ages.into_values().collect();
    merged
        .ages
        .sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    merged.ages.truncate(TOP_DOMAINS);
    merged.paths = paths.into_values().collect();
    merged
        .paths
        .sort_by(|a, b| (&a.site, &a.source).cmp(&(&b.site, &b.source)));
    Ok(merged)
}

/// Folds another shard's view of the same path into `into`: counts add,
/// limits are the node's, the newest failure wins.
fn merge_path(into: &mut PathRow, p: PathRow) {
    into.connections += p.connections;
    into.waiting += p.waiting;
    into.sent_today += p.sent_today;
    for (a, b) in into.recent.iter_mut().zip(p.recent) {
        *a += b;
    }
    into.throttled_per_second = match (into.throttled_per_second, p.throttled_per_second) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    into.rule = into.rule.take().or(p.rule);
    into.max_connections = into.max_connections.or(p.max_connections);
    into.max_per_day = into.max_per_day.or(p.max_per_day);
    into.held = into.held.take().or(p.held);
    into.next_retry = match (into.next_retry, p.next_retry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if p.last_failure_at > into.last_failure_at {
        into.last_failure = p.last_failure;
        into.last_failure_at = p.last_failure_at;
    }
}

async fn overview(shards: &Mesh<Scheduler>, now: u64) -> PageResult {
    let summary = crate::http::admin::summary(shards)
        .await
        .map_err(unavailable)?;
    let sites = crate::http::admin::grouped(shards, GroupBy::Site)
        .await
        .map_err(unavailable)?;
    let numbers = overviews(shards).await?;
    let body = render::overview(&summary, &sites.groups, &numbers, now);
    Ok(Response::html(
        200,
        render::page("ringpost: status", &body, Some(10)),
    ))
}

async fn find(shards: &Mesh<Scheduler>, req: &Request, now: u64) -> PageResult {
    let kind = req.param("key").unwrap_or("rcpt");
    let value = req.param("value").unwrap_or("");
    let key = Lookup::parse(kind, value).map_err(|e| (400, e.to_string()))?;
    let since = match req.param("since").filter(|s| !s.is_empty()) {
        None => 0,
        Some(text) => {
            let secs = crate::shard::clock::parse_duration(text).map_err(|e| (400, e))?;
            now.saturating_sub(secs)
        }
    };
    let found = crate::http::find::find(shards, &key, since, FIND_LIMIT)
        .await
        .map_err(unavailable)?;
    let body = render::found(&key, &found, now);
    Ok(Response::html(
        200,
        render::page("ringpost: find", &body, None),
    ))
}

async fn message(shards: &Mesh<Scheduler>, log: &str, id: &str, now: u64) -> PageResult {
    let id = MessageId::parse(id).ok_or((400, format!("`{id}` is not a message id")))?;
    let trace = crate::http::admin::trace_of(shards, log, id, now)
        .await
        .map_err(unavailable)?
        .ok_or((
            404,
            format!("{id} is not queued and the history does not have it."),
        ))?;
    let headers = match trace.queued {
        Some(_) => crate::http::admin::detail(shards, id)
            .await
            .and_then(|d| d.headers),
        None => None,
    };
    let body = render::message(&trace, headers.as_deref(), now);
    Ok(Response::html(
        200,
        render::page(&format!("ringpost: {id}"), &body, None),
    ))
}
