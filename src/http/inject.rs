//! HTTP injection: messages handed over as JSON instead of over SMTP.
//!
//! Owns: the `POST /api/inject/v1` route ([`handler`]); who may use it (a
//! client in `smtp.relay_networks`, or one that sends the bearer token from
//! `inject.token_file`); [`parse`], which turns a request body into an
//! [`Injection`] (pure: the JSON, the addresses, the content's size and
//! line lengths, its line endings made CRLF); and the answer, which comes
//! only after the reception door (`inbound::Door::accept`) returned, i.e.
//! once the message is on disk (the same group commit as SMTP's 250).
//!
//! Concurrency: every shard listens on the injection port (SO_REUSEPORT,
//! like SMTP). A request is queued in the spool of the shard that took it
//! and handed to that shard's scheduler. Only a request with an
//! `Idempotency-Key` crosses shards: its key is claimed at the shard that
//! owns it (`inbound::idempotency`, over the key mesh) and, with
//! `[cluster]`, in Redis; its work runs as a task of its own, so a client
//! that goes away does not cut it short.
//!
//! May call: `inbound` (the reception door, the key index), `proto`
//! (address syntax), `http` (the server), `cluster` (keys fleet-wide).
//! Must not: deliver anything itself, or queue mail for a client that is
//! neither in `smtp.relay_networks` nor holds the token: injected mail
//! goes to any domain, so anything else would be an open relay.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use std::future::Future;
use std::pin::Pin;

use crate::cluster::Cluster;
use crate::http::{Endpoint, Request, Response};
use crate::inbound::idempotency::{self, Begin, KeyIndex};
use crate::inbound::{Door, Refusal};
use crate::proto::command::{Mailbox, parse_mailbox};
use crate::proto::dsn_params::{MAX_ENVID, Notify, Ret, parse_orcpt_text};
use crate::proto::trace::{self, Trace};
use crate::queue::{Envelope, MessageId, NewMessage};
use crate::shard::clock::Clock;
use crate::shard::mesh::Mesh;

/// What a shard needs to take injections.
pub struct Injector {
    pub cfg: Arc<Config>,
    pub door: Rc<Door>,
    /// The bearer token that admits clients outside `smtp.relay_networks`.
    pub token: Option<String>,
    /// Every shard's `Idempotency-Key` index (None: keys ignored,
    /// `inject.idempotency_window_secs` = 0).
    pub keys: Option<Mesh<KeyIndex>>,
    /// With `[cluster]`: keys are claimed fleet-wide too.
    pub cluster: Option<Arc<Cluster>>,
    pub clock: Clock,
}

/// What a key holds in Redis while its first request is under way.
const FLEET_MARK: &str = "pending";

/// What shard `index`'s listener admits: its share of
/// `inject.max_connections`, and request bodies up to a message at the size
/// limit, JSON-escaped (CRLF becomes `\r\n`, 2 bytes each), plus room for
/// the envelope. On shutdown, requests under way get the grace period.
pub fn listener_limits(cfg: &Config, index: usize, shards: usize) -> crate::http::ListenerLimits {
    let message = cfg.smtp.max_message_size as usize;
    crate::http::ListenerLimits {
        name: "inject",
        max_body: message
            .saturating_add(message / 2)
            .saturating_add(256 * 1024),
        max_connections: crate::shard::share(cfg.inject.max_connections, index, shards),
        max_connections_per_ip: crate::shard::share(
            cfg.inject.max_connections_per_ip,
            index,
            shards,
        ),
        head_timeout: std::time::Duration::from_secs(cfg.inject.head_timeout_secs),
        drain: std::time::Duration::from_secs(cfg.server.shutdown_grace_secs),
    }
}

/// The request body (a subset of KumoMTA's injection API: no templates).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRequest {
    /// The envelope sender; "" for the null sender `<>`.
    envelope_sender: String,
    recipients: Vec<RecipientField>,
    /// The whole message: header fields, a blank line, the body.
    content: String,
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
#[derive(Debug, PartialEq, Eq)]
pub struct Injection {
    pub sender: Option<Mailbox>,
    pub recipients: Vec<Mailbox>,
    /// Recipients that are not addresses; the others are still queued.
    pub failed: Vec<String>,
    /// The content with CRLF line endings.
    pub content: Vec<u8>,
    /// `meta`, a JSON object within `meta.max_bytes`.
    pub meta: Option<serde_json::Value>,
    /// `pool`, as given (checked against the pools by the injector).
    pub pool: String,
    /// `priority`, if given.
    pub priority: Option<crate::config::Priority>,
    pub dsn: DsnRequest,
}

impl Injection {
    fn smtputf8(&self) -> bool {
        self.sender
            .iter()
            .chain(&self.recipients)
            .any(Mailbox::is_utf8)
    }
}

/// Why a request is refused: the HTTP status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InjectError {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> InjectError {
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
    let (mut recipients, mut failed) = (Vec::new(), Vec::new());
    let mut dsn = dsn_request(req.ret.as_deref(), req.envid.as_deref())?;
    for r in req.recipients {
        let Some(m) = parse_mailbox(r.email.as_bytes()) else {
            failed.push(r.email);
            continue;
        };
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
    let content = crlf_content(req.content.as_bytes(), limits)?;
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
    Ok(Injection {
        sender,
        recipients,
        failed,
        content,
        meta,
        pool: req.pool,
        priority,
        dsn,
    })
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
fn crlf_content(content: &[u8], limits: ContentLimits) -> Result<Vec<u8>, InjectError> {
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

/// The answer to an accepted request (KumoMTA's fields, plus the id).
#[derive(Debug, Serialize)]
struct Accepted {
    id: String,
    success_count: usize,
    fail_count: usize,
    /// Recipients listed more than once, merged into one.
    merged_count: usize,
    failed_recipients: Vec<String>,
    errors: Vec<String>,
}

/// The handler for one shard's injection listener.
impl Endpoint for Injector {
    /// The path, the method and the client's permission, from the head:
    /// an unauthorised client's body is never read.
    fn admit(&self, head: &Request) -> Result<(), Response> {
        let admitted = match (head.method.as_str(), head.route().as_slice()) {
            ("POST", ["api", "inject", "v1"]) => self.authorize(head),
            (_, ["api", "inject", "v1"]) => Err(refuse(405, "use POST")),
            _ => Err(refuse(404, "no such path (POST /api/inject/v1)")),
        };
        admitted.map_err(InjectError::into_response)
    }

    fn answer(self: Rc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        Box::pin(async move {
            let answer = match req.idempotency_key.clone() {
                Some(key) if self.keys.is_some() => self.inject_once(key, req).await,
                _ => self.inject(req).await,
            };
            answer.unwrap_or_else(InjectError::into_response)
        })
    }
}

/// A key's claim in the fleet.
enum FleetClaim {
    /// Not shared (no `[cluster]`, or Redis unreachable).
    NotShared,
    /// Claimed: this request goes on.
    Ours,
    /// Another node answered it.
    Answered(String),
}

/// The stored first answer, as given then.
fn replayed(answer: String) -> Response {
    ::metrics::counter!(crate::metrics::INJECT_REPLAYS).increment(1);
    Response {
        status: 200,
        content_type: "application/json",
        body: answer.into_bytes(),
    }
}

fn mismatch() -> InjectError {
    refuse(422, "this Idempotency-Key was used for a different request")
}

fn busy() -> InjectError {
    refuse(
        409,
        "a request with this Idempotency-Key is still under way: try again",
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl InjectError {
    fn into_response(self) -> Response {
        Response::json(self.status, &serde_json::json!({ "error": self.message }))
    }
}

impl Injector {
    /// A request with an `Idempotency-Key`: queued at most once within the
    /// window. The work runs on as its own task: a client that goes away
    /// before the answer (the case the key is for) does not cut it short,
    /// and its retry gets the answer.
    async fn inject_once(
        self: Rc<Self>,
        key: String,
        req: Request,
    ) -> Result<Response, InjectError> {
        if !idempotency::valid_key(&key) {
            return Err(refuse(
                400,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        let me = self.clone();
        glommio::spawn_local(async move {
            let _ = tx.send(me.queue_once(key, req).await);
        })
        .detach();
        rx.await
            .unwrap_or_else(|_| Err(refuse(503, "the server is stopping: try again")))
    }

    async fn queue_once(&self, key: String, req: Request) -> Result<Response, InjectError> {
        let keys = self.keys.as_ref().expect("only with the key index");
        let digest = idempotency::digest_of(&req.body);
        let owner = idempotency::owner_of(&key, keys.count());
        let now = self.clock.now();
        let stopping = |_| refuse(503, "the server is stopping: try again");
        let begin = KeyIndex::begin_on(keys, &key, digest, now)
            .await
            .map_err(stopping)?;
        match begin {
            Begin::New => {}
            Begin::Replay(answer) => return Ok(replayed(answer)),
            Begin::Mismatch => return Err(mismatch()),
            // (begin_on never answers Wait.)
            Begin::Busy | Begin::Wait(_) => return Err(busy()),
        }
        let window = self.cfg.inject.idempotency_window_secs;
        let fleet = self.claim_in_fleet(&key, digest, window).await;
        let result = match &fleet {
            Ok(FleetClaim::Answered(answer)) => Ok(replayed(answer.clone())),
            Err(refusal) => Err(refusal.clone()),
            Ok(FleetClaim::Ours | FleetClaim::NotShared) => self.inject(req).await,
        };
        let answer = match (&fleet, &result) {
            (Ok(FleetClaim::Ours | FleetClaim::NotShared), Ok(r)) if r.status == 200 => {
                Some(String::from_utf8_lossy(&r.body).into_owned())
            }
            _ => None,
        };
        let (k, a, expires) = (key.clone(), answer.clone(), now + window);
        let stored = keys
            .ask(owner, move |ix| async move {
                ix.finish(&k, a, expires).await.map_err(|e| e.to_string())
            })
            .await;
        if let Ok(Err(e)) = stored {
            log::error!("storing the answer of Idempotency-Key {key:?}: {e}");
        }
        if let (Ok(FleetClaim::Ours), Some(cluster)) = (&fleet, &self.cluster) {
            let value = answer.map(|a| format!("{}\n{a}", hex(&digest)));
            let window = std::time::Duration::from_secs(window);
            if let Err(e) = cluster.settle(&key, value, window).await {
                log::warn!("Idempotency-Key {key:?} holds on this node only: {e}");
            }
        }
        result
    }

    /// Claims `key` in Redis, when the fleet shares keys: the first
    /// answer if another node gave it, or wait while its request is under
    /// way. Redis unreachable: this node alone (logged).
    async fn claim_in_fleet(
        &self,
        key: &str,
        digest: [u8; 32],
        window: u64,
    ) -> Result<FleetClaim, InjectError> {
        let Some(cluster) = &self.cluster else {
            return Ok(FleetClaim::NotShared);
        };
        let window = std::time::Duration::from_secs(window);
        let started = std::time::Instant::now();
        loop {
            let held = match cluster.reserve(key, FLEET_MARK, window).await {
                Ok(None) => return Ok(FleetClaim::Ours),
                Ok(Some(held)) => held,
                Err(e) => {
                    log::debug!("Idempotency-Key {key:?} checked on this node only: {e}");
                    return Ok(FleetClaim::NotShared);
                }
            };
            if held == FLEET_MARK {
                if started.elapsed() > idempotency::WAIT_FOR_FIRST {
                    return Err(busy());
                }
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            let (theirs, answer) = held.split_once('\n').unwrap_or(("", ""));
            return match theirs == hex(&digest) {
                true => Ok(FleetClaim::Answered(answer.to_string())),
                false => Err(mismatch()),
            };
        }
    }

    /// Queues an admitted request's message.
    async fn inject(&self, req: Request) -> Result<Response, InjectError> {
        if self.door.draining() {
            return Err(refuse(
                503,
                "this node is being drained and takes no new mail: send to another",
            ));
        }
        if self.door.events_backlog_full() {
            return Err(refuse(
                507,
                "insufficient storage on the server: try again later",
            ));
        }
        let mut injection = parse(&req.body, ContentLimits::of(&self.cfg))?;
        if !injection.pool.is_empty() && !self.cfg.egress.has_pool(&injection.pool) {
            return Err(refuse(
                400,
                format!("no egress pool named {:?}", injection.pool),
            ));
        }
        let errors = self.drop_suppressed(&mut injection);
        if injection.recipients.is_empty() {
            return Ok(Response::json(
                200,
                &Accepted {
                    id: String::new(),
                    success_count: 0,
                    fail_count: injection.failed.len(),
                    merged_count: 0,
                    failed_recipients: injection.failed,
                    errors,
                },
            ));
        }
        let peer = req.peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let id = self.door.new_id();
        let mut envelope = self.envelope(&injection, peer);
        envelope.idempotency_key = req.idempotency_key.clone().filter(|_| self.keys.is_some());
        let mut body = received_header(self.cfg.hostname(), peer, id, &injection);
        let content_start = body.len();
        body.extend_from_slice(&injection.content);
        let msg = NewMessage {
            id,
            envelope,
            body,
            content_start,
            // Only relay networks or the bearer token get this far.
            trusted: true,
            complete: crate::queue::Completion {
                date: self.cfg.inject.add_date,
                message_id: self.cfg.inject.add_message_id,
            },
        };
        let accepted = self.door.accept(msg).await.map_err(refusal_answer)?;
        Ok(Response::json(
            200,
            &Accepted {
                id: id.to_string(),
                success_count: accepted.recipients,
                fail_count: injection.failed.len(),
                merged_count: accepted.merged,
                failed_recipients: injection.failed,
                errors,
            },
        ))
    }

    /// Moves suppressed recipients to `failed`; an error line for each.
    fn drop_suppressed(&self, injection: &mut Injection) -> Vec<String> {
        let sender = injection
            .sender
            .as_ref()
            .map(Mailbox::to_string)
            .unwrap_or_default();
        let mut errors = Vec::new();
        let door = &self.door;
        injection.recipients.retain(|r| {
            let address = r.to_string();
            match door.suppressed(&sender, &address, "http") {
                Some(s) => {
                    errors.push(format!("{address}: recipient suppressed ({})", s.reason));
                    injection.failed.push(address);
                    false
                }
                None => true,
            }
        });
        errors
    }

    /// A client in `smtp.relay_networks` may inject; anyone else needs the
    /// token (when one is configured).
    fn authorize(&self, req: &Request) -> Result<(), InjectError> {
        if req.peer.is_some_and(|ip| self.cfg.is_relay_client(ip)) {
            return Ok(());
        }
        match &self.token {
            Some(t) if crate::http::bearer_matches(req, t) => Ok(()),
            Some(_) => Err(refuse(401, "a bearer token is required")),
            None => Err(refuse(403, "this client may not inject mail")),
        }
    }

    fn envelope(&self, injection: &Injection, peer: IpAddr) -> Envelope {
        let sender = injection
            .sender
            .as_ref()
            .map(Mailbox::to_string)
            .unwrap_or_default();
        let rcpts = injection
            .recipients
            .iter()
            .map(Mailbox::to_string)
            .collect();
        let mut env = Envelope::new(sender, rcpts, 0);
        env.smtputf8 = injection.smtputf8();
        env.eight_bit = !injection.content.is_ascii();
        env.client = format!("http [{peer}]");
        env.meta = injection.meta.clone();
        env.pool = injection.pool.clone();
        env.priority = injection.priority;
        env.ret = injection.dsn.ret;
        env.envid = injection.dsn.envid.clone();
        for (r, (notify, orcpt)) in env.recipients.iter_mut().zip(&injection.dsn.rcpts) {
            r.notify = *notify;
            r.orcpt = orcpt.clone();
        }
        env
    }
}

/// The trace header, as SMTP reception writes it, with protocol `HTTP`
/// and the client's address literal for a name.
fn received_header(hostname: &str, peer: IpAddr, id: MessageId, inj: &Injection) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + inj.content.len());
    let only_rcpt = match inj.recipients.as_slice() {
        [only] => Some(only),
        _ => None,
    };
    trace::received(
        &mut out,
        &Trace {
            from: &trace::address_literal(peer),
            ip: peer,
            by: hostname,
            with: "HTTP",
            id: &id.to_string(),
            only_rcpt,
            date: &chrono::Utc::now().to_rfc2822(),
        },
    );
    out
}

/// The answer to a message the door refused.
fn refusal_answer(e: Refusal) -> InjectError {
    match e {
        Refusal::Storage(_) | Refusal::Report(_) => {
            refuse(503, "queue file write error: try again")
        }
        Refusal::InsufficientStorage => {
            refuse(507, "insufficient storage on the server: try again later")
        }
        Refusal::BadMeta(why) => refuse(400, why),
        Refusal::UnknownPool(name) => refuse(400, format!("no egress pool named {name:?}")),
        Refusal::BadPriority(why) => refuse(400, why),
        Refusal::TooManyHops(n) => refuse(
            400,
            format!("too many Received: header fields ({n}): a mail loop?"),
        ),
        Refusal::BounceRule(why) => refuse(403, format!("refused by the administrator: {why}")),
    }
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
        assert!(inj.smtputf8());
        let ascii = parse(&request("", &["a@example.de"], "x"), LIMITS).unwrap();
        assert!(!ascii.smtputf8());
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
    fn a_line_at_the_limit_passes() {
        let inj = parse(&request("", &["a@b.c"], &"y".repeat(998)), LIMITS).unwrap();
        assert_eq!(inj.content.len(), 1000);
    }
}
