//! HTTP injection: messages handed over as JSON instead of over SMTP.
//!
//! Owns: the `POST /api/inject/v1` route ([`Injector`]); who may use it (a
//! client in `smtp.relay_networks`, or one that sends the bearer token from
//! `inject.token_file`); the messages of a request (one, or for a
//! template one per recipient or one for all, rendered by
//! `http::template`); and the answer, which comes only after the
//! reception door (`inbound::Door::accept`) returned, i.e. once the
//! messages are on disk (the same group commit as SMTP's 250). The
//! request's parser is [`parse`] (`parse.rs`, pure).
//!
//! Concurrency: every shard listens on the injection port (SO_REUSEPORT,
//! like SMTP). A request is queued in the spool of the shard that took it
//! and handed to that shard's scheduler. Only a request with an
//! `Idempotency-Key` crosses shards: it is served whole by the shard that
//! owns its key (`keyed.rs`, over the injector mesh), and with
//! `[cluster]` its key is claimed in Redis too; its work runs as a task
//! of its own, so a client that goes away does not cut it short.
//!
//! May call: `inbound` (the reception door, the key index), `proto`
//! (address syntax, the trace header), `http` (the server, templates),
//! `queue` (the message handed to the door), `cluster` (keys fleet-wide).
//! Must not: deliver anything itself, or queue mail for a client that is
//! neither in `smtp.relay_networks` nor holds the token: injected mail
//! goes to any domain, so anything else would be an open relay.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use std::future::Future;
use std::pin::Pin;

use crate::cluster::Cluster;
use crate::http::template::Plan;
use crate::http::{Endpoint, Request, Response};
use crate::inbound::idempotency::KeyIndex;
use crate::inbound::{Door, Refusal};
use crate::proto::command::Mailbox;
use crate::proto::trace::{self, Trace};
use crate::queue::{Envelope, MessageId, NewMessage};
use crate::shard::clock::Clock;
use crate::shard::mesh::Mesh;

mod keyed;
mod parse;
pub use parse::{ContentLimits, DsnRequest, InjectError, Injection, parse};
use parse::{crlf_content, recipient_groups, refuse};

/// What a shard needs to take injections.
pub struct Injector {
    pub cfg: Arc<Config>,
    pub door: Rc<Door>,
    /// The bearer token that admits clients outside `smtp.relay_networks`.
    pub token: Option<String>,
    /// This shard's index of the `Idempotency-Key`s it owns.
    pub index: KeyIndex,
    /// Every shard's injector: a request with an `Idempotency-Key` is
    /// served by its key's owner (None: keys ignored,
    /// `inject.idempotency_window_secs` = 0).
    pub keyed: Option<Mesh<Injector>>,
    /// This shard's index.
    pub shard: usize,
    /// The keyed requests this shard is serving, for any shard's clients
    /// (`keyed.rs`: a stop waits for them).
    pub keyed_tasks: crate::shard::tasks::TaskSet,
    /// With `[cluster]`: keys are claimed fleet-wide too.
    pub cluster: Option<Arc<Cluster>>,
    pub clock: Clock,
}

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

/// The answer to an accepted request (KumoMTA's fields, plus the id).
#[derive(Debug, Serialize)]
struct Accepted {
    id: String,
    /// A templated request's messages, in the order of their recipients
    /// (one per recipient when each has values of its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
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
                Some(key) if self.keyed.is_some() => self.inject_once(key, req).await,
                _ => self.inject(req, None).await,
            };
            answer.unwrap_or_else(InjectError::into_response)
        })
    }
}

impl InjectError {
    fn into_response(self) -> Response {
        Response::json(self.status, &serde_json::json!({ "error": self.message }))
    }
}

impl Injector {
    /// Queues an admitted request's message. `rider`: a keyed request's,
    /// whose answer rides in its message's frame when it queues one.
    async fn inject(
        &self,
        req: Request,
        rider: Option<&keyed::AnswerRider<'_>>,
    ) -> Result<Response, InjectError> {
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
        self.check_release(injection.release_at)?;
        let errors = self.drop_suppressed(&mut injection);
        if injection.recipients.is_empty() {
            return Ok(Response::json(
                200,
                &Accepted {
                    id: String::new(),
                    ids: Vec::new(),
                    success_count: 0,
                    fail_count: injection.failed.len(),
                    merged_count: 0,
                    failed_recipients: injection.failed,
                    errors,
                },
            ));
        }
        let peer = req.peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let key = req.idempotency_key.clone().filter(|_| self.keyed.is_some());
        // A link names its recipient: a message each.
        let linked = injection.recipients.len() > 1
            && self.door.unsubscribe_applies(
                &injection.pool,
                &injection
                    .sender
                    .as_ref()
                    .map(Mailbox::to_string)
                    .unwrap_or_default(),
                injection.unsubscribe,
            );
        if injection.template.is_some() || linked {
            return self
                .inject_each(&injection, linked, peer, key, errors)
                .await;
        }
        self.inject_one(&injection, peer, key, errors, rider).await
    }

    /// A request of one message for all its recipients; a keyed
    /// request's answer rides in the message's frame.
    async fn inject_one(
        &self,
        injection: &Injection,
        peer: IpAddr,
        key: Option<String>,
        errors: Vec<String>,
        rider: Option<&keyed::AnswerRider<'_>>,
    ) -> Result<Response, InjectError> {
        let all: Vec<usize> = (0..injection.recipients.len()).collect();
        let id = self.door.new_id();
        let msg = self.message(id, injection, &all, &injection.content, peer, key);
        let answer_to = |accepted: crate::inbound::Accepted| {
            Response::json(
                200,
                &Accepted {
                    id: id.to_string(),
                    ids: Vec::new(),
                    success_count: accepted.recipients,
                    fail_count: injection.failed.len(),
                    merged_count: accepted.merged,
                    failed_recipients: injection.failed.clone(),
                    errors: errors.clone(),
                },
            )
        };
        let ride = |accepted| rider?.ride(answer_to(accepted).body);
        let ride: &dyn Fn(crate::inbound::Accepted) -> Option<crate::queue::KeptRider> = &ride;
        let accepted = self
            .door
            .accept_with(msg, rider.map(|_| ride))
            .await
            .map_err(refusal_answer)?;
        Ok(match rider.and_then(keyed::AnswerRider::rode) {
            // The very answer stored with the message.
            Some(body) => Response {
                status: 200,
                content_type: "application/json",
                body,
            },
            None => answer_to(accepted),
        })
    }

    /// A request of several messages: one per recipient when some
    /// recipient has template values of its own or `split` (each gets an
    /// unsubscribe link of its own), else one for all; rendered when
    /// templated, then queued together (one group commit). A message the
    /// door refuses fails its recipients; the others stay queued.
    async fn inject_each(
        &self,
        injection: &Injection,
        split: bool,
        peer: IpAddr,
        key: Option<String>,
        mut errors: Vec<String>,
    ) -> Result<Response, InjectError> {
        let plan = injection.template.as_ref();
        let per_recipient = split || plan.is_some_and(Plan::per_recipient);
        let groups = recipient_groups(injection, per_recipient);
        // Merged before rendering (one message per recipient), and by the
        // door within a message for all.
        let mut merged = injection.recipients.len() - groups.iter().map(Vec::len).sum::<usize>();
        let limits = ContentLimits::of(&self.cfg);
        let mut messages = Vec::with_capacity(groups.len());
        for group in &groups {
            let id = self.door.new_id();
            let content = match plan {
                Some(plan) => self.render(plan, id, &injection.recipients[group[0]], limits)?,
                None => injection.content.clone(),
            };
            messages.push(self.message(id, injection, group, &content, peer, key.clone()));
            // Thousands of renderings: the shard's other work gets turns.
            glommio::yield_if_needed().await;
        }
        ::metrics::counter!(crate::metrics::INJECT_RENDERED).increment(messages.len() as u64);
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        let results =
            futures::future::join_all(messages.into_iter().map(|m| self.door.accept(m))).await;
        let mut failed = injection.failed.clone();
        let (mut success, mut queued) = (0, Vec::new());
        for ((result, id), group) in results.into_iter().zip(ids).zip(&groups) {
            match result {
                Ok(accepted) => {
                    success += accepted.recipients;
                    merged += accepted.merged;
                    queued.push(id.to_string());
                }
                Err(refusal) => {
                    let why = refusal_answer(refusal).message;
                    for &i in group {
                        let address = injection.recipients[i].to_string();
                        errors.push(format!("{address}: {why}"));
                        failed.push(address);
                    }
                }
            }
        }
        Ok(Response::json(
            200,
            &Accepted {
                id: queued.first().cloned().unwrap_or_default(),
                ids: queued,
                success_count: success,
                fail_count: failed.len(),
                merged_count: merged,
                failed_recipients: failed,
                errors,
            },
        ))
    }

    /// A `deliver_after` no further ahead than `delivery.max_hold_secs`.
    fn check_release(&self, release_at: Option<u64>) -> Result<(), InjectError> {
        let furthest = self
            .clock
            .now()
            .saturating_add(self.cfg.delivery.max_hold_secs);
        match release_at {
            Some(at) if at > furthest => Err(refuse(
                400,
                format!(
                    "deliver_after is further ahead than delivery.max_hold_secs ({} s)",
                    self.cfg.delivery.max_hold_secs
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Message `id`'s content, rendered (for `rcpt` when each recipient
    /// has a message of its own).
    fn render(
        &self,
        plan: &Plan,
        id: MessageId,
        rcpt: &Mailbox,
        limits: ContentLimits,
    ) -> Result<Vec<u8>, InjectError> {
        let rcpt = plan.per_recipient().then(|| rcpt.to_string());
        let message_id = format!("{id}@{}", self.cfg.hostname());
        let rendered = plan.render(rcpt.as_deref(), &message_id).map_err(|e| {
            refuse(
                400,
                format!("{}{e}", rcpt.map(|r| format!("{r}: ")).unwrap_or_default()),
            )
        })?;
        crlf_content(&rendered, limits)
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
        // Each recipient's DSN request goes (or stays) with it.
        let rcpts = std::mem::take(&mut injection.recipients);
        let dsn = std::mem::take(&mut injection.dsn.rcpts);
        for (r, d) in rcpts.into_iter().zip(dsn) {
            let address = r.to_string();
            match door.suppressed(&sender, &address, "http") {
                Some(s) => {
                    errors.push(format!("{address}: recipient suppressed ({})", s.reason));
                    injection.failed.push(address);
                }
                None => {
                    injection.recipients.push(r);
                    injection.dsn.rcpts.push(d);
                }
            }
        }
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

    /// Message `id`: `content` to the recipients `rcpts` (indexes into
    /// the injection's), ready for the door.
    fn message(
        &self,
        id: MessageId,
        injection: &Injection,
        rcpts: &[usize],
        content: &[u8],
        peer: IpAddr,
        key: Option<String>,
    ) -> NewMessage {
        let mut envelope = self.envelope(injection, rcpts, content, peer);
        envelope.idempotency_key = key.map(Into::into);
        let only_rcpt = match rcpts {
            [only] => Some(&injection.recipients[*only]),
            _ => None,
        };
        let mut body = received_header(self.cfg.hostname(), peer, id, only_rcpt, content.len());
        let content_start = body.len();
        body.extend_from_slice(content);
        NewMessage {
            id,
            envelope,
            body,
            content_start,
            // Only relay networks or the bearer token get this far.
            trusted: true,
            complete: crate::queue::Completion {
                date: self.cfg.inject.add_date,
                message_id: self.cfg.inject.add_message_id,
                unsubscribe: injection.unsubscribe,
            },
        }
    }

    fn envelope(
        &self,
        injection: &Injection,
        rcpts: &[usize],
        content: &[u8],
        peer: IpAddr,
    ) -> Envelope {
        let sender = injection
            .sender
            .as_ref()
            .map(Mailbox::to_string)
            .unwrap_or_default();
        let addresses = rcpts
            .iter()
            .map(|&i| injection.recipients[i].to_string())
            .collect();
        let mut env = Envelope::new(sender, addresses, 0);
        env.smtputf8 = injection
            .sender
            .iter()
            .chain(rcpts.iter().map(|&i| &injection.recipients[i]))
            .any(Mailbox::is_utf8);
        env.eight_bit = !content.is_ascii();
        env.client = format!("http [{peer}]").into();
        env.meta = injection.meta.clone().map(Box::new);
        env.pool = injection.pool.clone();
        env.priority = injection.priority;
        env.release_at = injection.release_at;
        env.ret = injection.dsn.ret;
        env.envid = injection.dsn.envid.as_deref().map(Into::into);
        for (r, &i) in env.recipients.iter_mut().zip(rcpts) {
            if let Some((notify, orcpt)) = injection.dsn.rcpts.get(i) {
                r.notify = *notify;
                r.orcpt = orcpt.as_deref().map(Into::into);
            }
        }
        env
    }
}

/// The trace header, as SMTP reception writes it, with protocol `HTTP`
/// and the client's address literal for a name.
fn received_header(
    hostname: &str,
    peer: IpAddr,
    id: MessageId,
    only_rcpt: Option<&Mailbox>,
    content_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + content_len);
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
