//! The admin API: a JSON interface to the queue of a running server, for
//! `ringpost queue ...` and for scripts (the listener's endpoint,
//! `http::admin_listener`, gives it every path no other endpoint takes;
//! the status pages use its views). Served by shard 0; every shard
//! owns its own messages and scheduler state (share-nothing), so a request
//! travels to the shard that owns what it asks about through the shard
//! mesh (`shard::mesh`), and queue-wide answers are merged here.
//!
//! | method and path                         | answer                         |
//! |-----------------------------------------|--------------------------------|
//! | `GET /queue/summary`                    | [`Summary`]                    |
//! | `GET /queue/summary?by=site\|source\|pool` | [`GroupedSummary`]          |
//! | `GET /queue/messages?domain=D&limit=N`  | `[MessageInfo]`, oldest first  |
//! | `GET /queue/messages/ID`                | [`MessageDetail`]              |
//! | `GET /queue/find?rcpt=A\|sender=A\|message_id=M\|idempotency_key=K\|meta=N=V` | the messages the key finds, queued or finished (`http::find`) |
//! | `GET /queue/messages/ID/trace`          | [`MessageTrace`]: its events in the delivery log, in order (`http::trace`), where it stands if queued, what became of it if it left (`history`) |
//! | `DELETE /queue/messages/ID`             | `{"deleted": ID}`              |
//! | `POST /queue/messages/ID/bounce`        | `{"bounced": ID}`              |
//! | `POST /queue/messages/ID/flush`         | `{"id": ID, "flushed": bool}`: a deferred message tried now |
//! | `GET /status`, `/status/find`, `/status/messages/ID` | the status pages (HTML: `http::status`) |
//! | `POST /queue/flush?domain=D`            | `{"flushed": N, "held": M, "held_messages": [{id, reason}]}` |
//! | `POST /queue/drain?to=HOST:PORT`        | `{"draining_to": T, "peer": P, "queued": N}`: once the peer answered EHLO (else 502, nothing changed), new mail refused, everything queued sent to T (`Scheduler::hand_over`) |
//! | `POST /queue/domains/D/suspend?for=SECS`| `{"domain": D, "suspended": true, "until": T}` |
//! | `POST /queue/domains/D/resume`          | `{"domain": D, "suspended": false}` |
//! | `POST /queue/{sites,sources,pools,paths}/N/suspend` and `.../resume` | the same for a site, an egress source or pool, or a path (`SOURCE\|SITE`) |
//! | `... /bounce-rules...`                  | the administrator's bounce rules: `http::bounce_rules` |
//! | `... /suppressions...`                  | the suppression list: `http::suppressions` |
//! | `... /events/failed...`                 | webhook events refused for good, listed and replayed: `http::events_failed` |
//! | `POST /config/reload`                   | `{"shaping_file": F, "rules": N}`: the shaping rules read again (`scheduler::reload`) |
//!
//! The token goes as a bearer token, or (browsers, on the status pages) as
//! the password of HTTP Basic authentication. A change (any method but
//! GET) that a browser sends from a page of another origin is refused
//! (403): a page elsewhere cannot use the operator's browser against this
//! listener.
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 401 (token), 403,
//! 404 (no such message or path), 405, 409 (delivery under way), 422 (a
//! reload found the shaping file invalid; the rules in force stay), 500
//! (the spool could not store the change), 502 (a drain's peer did not
//! answer as an SMTP server other than this one) or 503 (shutting down). This is the
//! one place that maps them. Suspensions are stored in every shard's spool
//! before the answer: they survive a restart.
//!
//! Must not: touch scheduler state itself; everything goes through the
//! mesh, to the shard that owns it.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{Request, Response};
use crate::queue::MessageId;
use crate::scheduler::Scheduler;
use crate::scheduler::operations::{
    DomainSummary, GroupBy, GroupSummary, HoldSummary, MessageInfo, OperationError,
};
use crate::scheduler::state::Hold;
use crate::scheduler::tls_status::TlsDestination;
use crate::shard::mesh::{Mesh, ShardGone};

/// Every shard's scheduler, reached through the mesh.
pub type Shards = Mesh<Scheduler>;

/// The queue by destination domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub messages: usize,
    /// Of `messages`, those waiting for a retry.
    #[serde(default)]
    pub deferred: usize,
    pub recipients: usize,
    /// Most pending recipients first.
    pub domains: Vec<DomainSummary>,
    /// Suspensions of sites, sources, pools and paths (a domain's shows
    /// on the domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<HoldSummary>,
    /// The administrator's bounce rules in force (`scheduler::rules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounce_rules: Vec<crate::scheduler::rules::RuleSummary>,
    /// The peer the node is drained to (`queue drain`), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_to: Option<String>,
    /// Receivers' TLS per destination domain, as delivery met it since
    /// start (`scheduler::tls_status`): those a failure was last seen at
    /// first, most recent first; then the most tried; at most
    /// [`TLS_SHOWN`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsDestination>,
}

/// Destinations `queue summary` names in its TLS section.
pub const TLS_SHOWN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub message: MessageInfo,
    /// The message's header section (at most 64 KiB).
    pub headers: Option<String>,
}

const MAX_HEADERS: usize = 64 * 1024;

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageTrace {
    pub id: String,
    /// Its events in the delivery log, oldest first (none when the log is
    /// not a file).
    pub events: Vec<serde_json::Value>,
    /// Where it stands, if it is still queued.
    pub queued: Option<MessageInfo>,
    /// What became of it, if it left the queue and the history keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<crate::history::Finished>,
    /// The server's clock (Unix seconds), for ages.
    #[serde(default)]
    pub now: u64,
}

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A browser page of another site asked for a change.
    #[error("a change asked by a page of another origin is refused")]
    CrossOrigin,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed here")]
    Method,
    #[error(transparent)]
    Queue(#[from] OperationError),
    #[error(transparent)]
    Shard(#[from] ShardGone),
    /// The spool could not store the change; nothing was changed for good.
    #[error("not stored: {0}")]
    Storage(String),
    /// A file the answer needs could not be read.
    #[error("{0}")]
    Read(String),
    #[error(transparent)]
    Reload(crate::scheduler::reload::ReloadError),
    /// A peer the request names (a drain's) did not answer as it must.
    #[error("{0}")]
    BadGateway(String),
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::CrossOrigin => 403,
            ApiError::NotFound(_) | ApiError::Queue(OperationError::NotFound(_)) => 404,
            ApiError::Method => 405,
            ApiError::BadGateway(_) => 502,
            ApiError::Queue(OperationError::Busy(_)) => 409,
            ApiError::Queue(OperationError::Storage(..)) => 500,
            ApiError::Shard(_) => 503,
            ApiError::Storage(_) | ApiError::Read(_) => 500,
            // The file is the operator's to fix: the request itself was fine.
            ApiError::Reload(crate::scheduler::reload::ReloadError::Invalid(_)) => 422,
            ApiError::Reload(crate::scheduler::reload::ReloadError::Shard(_)) => 503,
        }
    }
}

/// The queue API's answer to `req` (any path the listener did not give
/// to another endpoint): `trace` reads `delivery_log`.
pub(crate) async fn answer(
    shards: &Shards,
    delivery_log: &str,
    now: u64,
    req: &Request,
) -> Response {
    if let ("GET", ["queue", "messages", id, "trace"]) =
        (req.method.as_str(), req.route().as_slice())
    {
        return trace(shards, delivery_log, id, now)
            .await
            .unwrap_or_else(ApiError::into_response);
    }
    route(shards, req)
        .await
        .unwrap_or_else(ApiError::into_response)
}

/// `POST /config/reload`.
pub(crate) async fn reload(reload: &crate::scheduler::reload::Reload, req: &Request) -> Response {
    if req.method != "POST" {
        return ApiError::Method.into_response();
    }
    match reload.run().await {
        Ok(done) => Response::json(200, &done),
        Err(e) => ApiError::Reload(e).into_response(),
    }
}

/// The answer to a request without the token.
pub(crate) fn unauthorized() -> Response {
    ApiError::Unauthorized.into_response()
}

/// The answer to a change asked from a page of another origin.
pub(crate) fn cross_origin() -> Response {
    ApiError::CrossOrigin.into_response()
}

impl ApiError {
    fn into_response(self) -> Response {
        Response::json(self.status(), &json!({ "error": self.to_string() }))
    }
}

/// How many of the messages a flush left held are named in its answer.
const FLUSH_HELD_SHOWN: usize = 100;

async fn route(shards: &Shards, req: &Request) -> Result<Response, ApiError> {
    let method = req.method.as_str();
    match (method, req.route().as_slice()) {
        ("GET", ["queue", "summary"]) => match req.param("by") {
            None => Ok(Response::json(200, &summary(shards).await?)),
            Some(by) => {
                let by: GroupBy = by.parse().map_err(ApiError::BadRequest)?;
                Ok(Response::json(200, &grouped(shards, by).await?))
            }
        },
        ("GET", ["queue", "messages"]) => messages(shards, req).await,
        ("GET", ["queue", "messages", id]) => Ok(Response::json(200, &show(shards, id).await?)),
        ("DELETE", ["queue", "messages", id]) => {
            let id = message_id(id)?;
            on_holder(shards, id, move |s| async move { s.delete(id).await }).await?;
            Ok(Response::json(200, &json!({ "deleted": id.to_string() })))
        }
        ("POST", ["queue", "messages", id, "flush"]) => {
            let id = message_id(id)?;
            let released =
                on_holder(shards, id, move |s| async move { s.flush_message(id) }).await?;
            Ok(Response::json(
                200,
                &json!({ "id": id.to_string(), "flushed": released }),
            ))
        }
        ("POST", ["queue", "messages", id, "bounce"]) => {
            let id = message_id(id)?;
            on_holder(shards, id, move |s| async move {
                s.bounce_message(id, None).await
            })
            .await?;
            Ok(Response::json(200, &json!({ "bounced": id.to_string() })))
        }
        ("POST", ["queue", "flush"]) => {
            let domain = req.param("domain").map(str::to_string);
            let reports = shards
                .ask_all(move |s| async move { s.flush(domain.as_deref()) })
                .await?;
            let flushed: usize = reports.iter().map(|r| r.flushed).sum();
            let held: Vec<_> = reports.into_iter().flat_map(|r| r.held).collect();
            let shown = &held[..held.len().min(FLUSH_HELD_SHOWN)];
            Ok(Response::json(
                200,
                &json!({ "flushed": flushed, "held": held.len(), "held_messages": shown }),
            ))
        }
        ("POST", ["queue", kind, name, action @ ("suspend" | "resume")])
            if hold_kind(kind).is_some() =>
        {
            hold(shards, req, kind, name, *action == "suspend").await
        }
        ("POST", ["queue", "drain"]) => drain(shards, req).await,
        (_, ["queue", ..]) if known_path(req) => Err(ApiError::Method),
        _ => Err(ApiError::NotFound(format!(
            "no such path /{}",
            req.segments.join("/")
        ))),
    }
}

/// `POST /queue/drain?to=HOST:PORT`: every shard hands its queue over to
/// the peer, once the peer answers as an SMTP server that is not this node.
async fn drain(shards: &Shards, req: &Request) -> Result<Response, ApiError> {
    let to = req
        .param("to")
        .ok_or_else(|| ApiError::BadRequest("drain needs ?to=HOST:PORT".into()))?;
    let hop = crate::config::NextHop::parse(to)
        .map_err(|e| ApiError::BadRequest(format!("to={to}: {e}")))?;
    // Nothing changes unless the peer answers as an SMTP server
    // that is not this node.
    let probe = hop.clone();
    let peer = shards
        .ask(0, move |s| async move { s.probe_peer(&probe).await })
        .await?
        .map_err(|why| ApiError::BadGateway(format!("not draining to {hop}: {why}")))?;
    let draining_to = hop.to_string();
    let queued: usize = shards
        .ask_all(move |s| {
            let hop = hop.clone();
            async move { s.hand_over(hop) }
        })
        .await?
        .into_iter()
        .sum();
    Ok(Response::json(
        200,
        &json!({ "draining_to": draining_to, "peer": peer, "queued": queued }),
    ))
}

/// `GET /queue/messages[?domain=D][&limit=N]`.
async fn messages(shards: &Shards, req: &Request) -> Result<Response, ApiError> {
    let limit = match req.param("limit") {
        None => usize::MAX,
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("limit `{n}` is not a number")))?,
    };
    Ok(Response::json(
        200,
        &list(shards, req.param("domain"), limit).await?,
    ))
}

/// Paths that exist with some method, for 405 rather than 404.
fn known_path(req: &Request) -> bool {
    matches!(
        req.route().as_slice(),
        [
            "queue",
            "summary" | "messages" | "flush" | "drain" | "find" | "actions"
        ] | ["queue", "messages", _]
            | ["queue", "messages", _, "bounce" | "trace" | "flush"]
            | [
                "queue",
                "domains" | "sites" | "sources" | "pools" | "paths",
                _,
                "suspend" | "resume"
            ]
    )
}

/// Suspends (or resumes) what `segment`/`name` names on every shard,
/// stored before the answer.
async fn hold(
    shards: &Shards,
    req: &Request,
    segment: &str,
    name: &str,
    suspend: bool,
) -> Result<Response, ApiError> {
    let kind = hold_kind(segment).ok_or_else(|| ApiError::NotFound(segment.to_string()))?;
    let name = hold_name(kind, name)?;
    let secs = match req.param("for").filter(|_| suspend) {
        None => None,
        Some(n) => Some(n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("for=`{n}` is not a number of seconds"))
        })?),
    };
    let n = name.clone();
    let answers = shards
        .ask_all(move |s| async move {
            match suspend {
                true => s.suspend(kind, &n, secs).await,
                false => s.resume(kind, &n).await.map(|()| None),
            }
            .map_err(|e| e.to_string())
        })
        .await?;
    let until = answers
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::Storage)?
        .into_iter()
        .flatten()
        .max();
    let mut answer = json!({ kind.as_str(): name, "suspended": suspend });
    if suspend {
        answer["until"] = json!(until);
    }
    Ok(Response::json(200, &answer))
}

/// The kind of hold a path segment names.
fn hold_kind(segment: &str) -> Option<Hold> {
    match segment {
        "domains" => Some(Hold::Domain),
        "sites" => Some(Hold::Site),
        "sources" => Some(Hold::Source),
        "pools" => Some(Hold::Pool),
        "paths" => Some(Hold::Path),
        _ => None,
    }
}

/// A hold's name from the path: a domain name checked as such; the others
/// non-empty, without spaces or control characters.
fn hold_name(kind: Hold, name: &str) -> Result<String, ApiError> {
    if kind == Hold::Domain {
        return domain_name(name);
    }
    match !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic()) && name.len() <= 1024 {
        true => Ok(name.to_string()),
        false => Err(ApiError::BadRequest(format!(
            "`{name}` is not a {} name",
            kind.as_str()
        ))),
    }
}

pub(crate) async fn summary(shards: &Shards) -> Result<Summary, ShardGone> {
    let answers = shards
        .ask_all(|s| async move {
            let draining = s.handed_over_to().map(|hop| hop.to_string());
            let tls = s.tls_destinations();
            (s.message_count(), s.summary(), s.holds(), draining, tls)
        })
        .await?;
    // Every shard holds the same rules (each is set on all).
    let bounce_rules = shards.ask(0, |s| async move { s.bounce_rules() }).await?;
    let draining_to = answers.iter().find_map(|a| a.3.clone());
    // Every shard holds the same suspensions (each is set on all).
    let mut holds: Vec<HoldSummary> = Vec::new();
    let mut parts = Vec::with_capacity(answers.len());
    let mut tls: Vec<Vec<TlsDestination>> = Vec::with_capacity(answers.len());
    for (counts, domains, shard_holds, _, shard_tls) in answers {
        tls.push(shard_tls);
        for h in shard_holds {
            if !holds.iter().any(|k| k.kind == h.kind && k.name == h.name) {
                holds.push(h);
            }
        }
        parts.push((counts, domains));
    }
    holds.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
    Ok(Summary {
        holds,
        bounce_rules,
        draining_to,
        tls: merge_tls(tls),
        ..merge_summaries(parts)
    })
}

/// The shards' TLS lines merged by domain, in the summary's order.
fn merge_tls(shards: Vec<Vec<TlsDestination>>) -> Vec<TlsDestination> {
    let mut lines = merged_by_name(
        shards.into_iter().flatten(),
        |l| &l.domain,
        TlsDestination::merge,
    );
    lines.sort_by(|a, b| {
        (b.last_failure_at, b.attempts, &a.domain).cmp(&(a.last_failure_at, a.attempts, &b.domain))
    });
    lines.truncate(TLS_SHOWN);
    lines
}

/// The queue grouped by site, source or pool (`?by=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupedSummary {
    pub by: GroupBy,
    /// Most pending recipients first, then most connections.
    pub groups: Vec<GroupSummary>,
}

pub(crate) async fn grouped(shards: &Shards, by: GroupBy) -> Result<GroupedSummary, ShardGone> {
    let answers = shards.ask_all(move |s| async move { s.groups(by) }).await?;
    let mut groups = merged_by_name(
        answers.into_iter().flatten(),
        |g| &g.name,
        GroupSummary::merge,
    );
    groups.sort_unstable_by(|a, b| {
        (b.recipients, b.connections, &a.name).cmp(&(a.recipients, a.connections, &b.name))
    });
    Ok(GroupedSummary { by, groups })
}

/// The shards' lines as one per name (`merge` folds a second line of a
/// name into the first), in no order.
fn merged_by_name<T>(
    lines: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> &String,
    merge: impl Fn(&mut T, T),
) -> Vec<T> {
    let mut by_name: std::collections::HashMap<String, T> = Default::default();
    for line in lines {
        match by_name.get_mut(name(&line)) {
            Some(known) => merge(known, line),
            None => {
                by_name.insert(name(&line).clone(), line);
            }
        }
    }
    by_name.into_values().collect()
}

/// Pure: the shards' summaries as one, most pending recipients first.
fn merge_summaries(answers: Vec<((usize, usize), Vec<DomainSummary>)>) -> Summary {
    let (mut messages, mut deferred) = (0, 0);
    let mut all = Vec::new();
    for ((count, waiting), domains) in answers {
        messages += count;
        deferred += waiting;
        all.extend(domains);
    }
    let mut domains = merged_by_name(all, |d| &d.domain, DomainSummary::merge);
    domains.sort_unstable_by(|a, b| {
        b.recipients
            .cmp(&a.recipients)
            .then_with(|| a.domain.cmp(&b.domain))
    });
    Summary {
        messages,
        deferred,
        recipients: domains.iter().map(|d| d.recipients).sum(),
        domains,
        holds: Vec::new(),
        bounce_rules: Vec::new(),
        draining_to: None,
        tls: Vec::new(),
    }
}

async fn list(
    shards: &Shards,
    domain: Option<&str>,
    limit: usize,
) -> Result<Vec<MessageInfo>, ApiError> {
    if let Some(d) = domain {
        domain_name(d)?;
    }
    let domain = domain.map(str::to_string);
    let mut all: Vec<MessageInfo> = shards
        .ask_all(move |s| async move { s.list(domain.as_deref(), limit) })
        .await?
        .into_iter()
        .flatten()
        .collect();
    all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    all.truncate(limit);
    Ok(all)
}

/// The events of the delivery log when it is a file; with the log on
/// stdout or off, the queue and the history answer alone.
async fn trace(shards: &Shards, log: &str, id: &str, now: u64) -> Result<Response, ApiError> {
    let parsed = message_id(id)?;
    match trace_of(shards, log, parsed, now).await? {
        Some(trace) => Ok(Response::json(200, &trace)),
        None => Err(ApiError::NotFound(format!(
            "{parsed} is not queued, the history does not have it, and the delivery log ({log}) has no event of it"
        ))),
    }
}

/// Everything known of message `id` (the status page's message page uses
/// it too); None when nothing is.
pub(crate) async fn trace_of(
    shards: &Shards,
    log: &str,
    id: MessageId,
    now: u64,
) -> Result<Option<MessageTrace>, TraceFailed> {
    let text = id.to_string();
    let events = match crate::http::trace::events(log, &text).await {
        Ok(events) => events,
        Err(crate::http::trace::TraceError::NoFile(_)) => Vec::new(),
        Err(e @ crate::http::trace::TraceError::Read(..)) => {
            return Err(TraceFailed(e.to_string()));
        }
    };
    let queued = found(show(shards, &text).await)?.map(|d| d.message);
    let finished = match queued {
        Some(_) => None,
        None => found(
            on_holder(shards, id, move |s| async move {
                s.finished(id).ok_or(OperationError::NotFound(id))
            })
            .await,
        )?,
    };
    if events.is_empty() && queued.is_none() && finished.is_none() {
        return Ok(None);
    }
    Ok(Some(MessageTrace {
        id: text,
        events,
        queued,
        finished,
        now,
    }))
}

/// A lookup's answer, None when the message is not there.
fn found<T>(r: Result<T, ApiError>) -> Result<Option<T>, TraceFailed> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ApiError::Queue(OperationError::NotFound(_))) => Ok(None),
        Err(e) => Err(TraceFailed(e.to_string())),
    }
}

/// Why a trace could not be made (a log unreadable, a shard gone).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TraceFailed(String);

impl From<TraceFailed> for ApiError {
    fn from(e: TraceFailed) -> ApiError {
        ApiError::Read(e.0)
    }
}

/// One queued message with its headers (the status page's message page).
pub(crate) async fn detail(shards: &Shards, id: MessageId) -> Option<MessageDetail> {
    show(shards, &id.to_string()).await.ok()
}

async fn show(shards: &Shards, id: &str) -> Result<MessageDetail, ApiError> {
    let id = message_id(id)?;
    on_holder(shards, id, move |s| async move {
        let message = s.show(id).ok_or(OperationError::NotFound(id))?;
        let headers = s.headers(id, MAX_HEADERS).await;
        Ok(MessageDetail { message, headers })
    })
    .await
}

/// Runs `work` on the shard that holds message `id`: the one its id names
/// (`MessageId::shard`), or, when that one does not have it, the others in
/// turn (a message taken over from a shard that no longer runs lives on
/// the shard that took it; a later start with more shards names another).
async fn on_holder<T, F, Fut>(shards: &Shards, id: MessageId, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Rc<Scheduler>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Result<T, OperationError>> + 'static,
{
    let first = id.shard(shards.count());
    let order = std::iter::once(first).chain((0..shards.count()).filter(|&s| s != first));
    for shard in order {
        match shards.ask(shard, work.clone()).await? {
            Err(OperationError::NotFound(_)) => continue,
            answer => return Ok(answer?),
        }
    }
    Err(ApiError::Queue(OperationError::NotFound(id)))
}

fn message_id(text: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(text)
        .ok_or_else(|| ApiError::BadRequest(format!("`{text}` is not a message id")))
}

/// A plausible domain name (UTF-8 allowed, for SMTPUTF8 domains).
fn domain_name(text: &str) -> Result<String, ApiError> {
    let ok = !text.is_empty()
        && text.len() <= 255
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "@/\\<>\"".contains(c));
    match ok {
        true => Ok(text.to_lowercase()),
        false => Err(ApiError::BadRequest(format!(
            "`{text}` is not a domain name"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str) -> Request {
        Request::new(method, target)
    }

    #[test]
    fn summaries_merge_across_shards() {
        let d = |name: &str, m, r| DomainSummary {
            domain: name.into(),
            messages: m,
            recipients: r,
            ..DomainSummary::default()
        };
        let s = merge_summaries(vec![
            ((3, 1), vec![d("a.example", 2, 2), d("b.example", 1, 5)]),
            ((2, 2), vec![d("a.example", 2, 4)]),
        ]);
        assert_eq!((s.messages, s.deferred, s.recipients), (5, 3, 11));
        let order: Vec<_> = s
            .domains
            .iter()
            .map(|d| (d.domain.as_str(), d.recipients))
            .collect();
        assert_eq!(order, [("a.example", 6), ("b.example", 5)]);
    }

    #[test]
    fn known_paths_and_names() {
        assert!(known_path(&request("PUT", "/queue/flush")));
        assert!(!known_path(&request("GET", "/queue/nope")));
        assert_eq!(domain_name("Example.COM").unwrap(), "example.com");
        assert!(domain_name("a@b").is_err());
        assert!(domain_name("").is_err());
        assert!(message_id("nope").is_err());
    }
}
