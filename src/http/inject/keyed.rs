//! Injection requests with an `Idempotency-Key`: each is served whole by
//! the shard that owns its key (`inbound::idempotency::owner_of`), handed
//! there over the injector mesh, so that repeats meet in one
//! `KeyIndex` and the message lands in the spool whose commit round
//! stores the answer with it (the answer rides in the message's journal
//! frame: `KeyIndex::rider`). With `[cluster]` the key is claimed in
//! Redis too, for repeats sent to another node.
//!
//! Owns: [`Injector::inject_once`] and its steps; the answers a repeat
//! gets (the first answer, 422 for another body, 409 while the first is
//! under way).
//!
//! May call: `inbound::idempotency` (the key index), `cluster` (keys
//! fleet-wide), the injector's own queueing (`super`).
//! Must not: store an answer before its messages are durable, or run a
//! keyed request anywhere but on its key's owner.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::oneshot;

use super::{Injector, refuse};
use crate::http::{Request, Response};
use crate::inbound::idempotency::{self, Begin};
use crate::queue::KeptRider;

use super::InjectError;

/// What a key holds in Redis while its first request is under way.
const FLEET_MARK: &str = "pending";

/// A key's claim in the fleet.
enum FleetClaim {
    /// Not shared (no `[cluster]`, or Redis unreachable).
    NotShared,
    /// Claimed: this request goes on.
    Ours,
    /// Another node answered it.
    Answered(String),
}

/// A keyed request's answer on its way into its message's frame: the
/// door calls [`AnswerRider::ride`] with what it accepted, just before the
/// message is stored; the answer body made there is the one the client
/// gets.
pub(super) struct AnswerRider<'a> {
    injector: &'a Injector,
    key: &'a str,
    expires: u64,
    /// The answer as it rode (None: none did).
    rode: RefCell<Option<Vec<u8>>>,
}

impl AnswerRider<'_> {
    /// The record that carries `body` (the answer) in the frame.
    pub(super) fn ride(&self, body: Vec<u8>) -> Option<KeptRider> {
        let answer = std::str::from_utf8(&body).ok()?;
        let rider = self.injector.index.rider(self.key, answer, self.expires)?;
        *self.rode.borrow_mut() = Some(body);
        Some(rider)
    }

    /// The answer that rode, if one did.
    pub(super) fn rode(&self) -> Option<Vec<u8>> {
        self.rode.borrow().clone()
    }
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

fn stopping() -> InjectError {
    refuse(503, "the server is stopping: try again")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Injector {
    /// A request with an `Idempotency-Key`: queued at most once within the
    /// window, by the shard that owns the key. The work runs there as a
    /// task of its own: a client that goes away before the answer (the
    /// case the key is for) does not cut it short, and its retry gets the
    /// answer.
    pub(super) async fn inject_once(
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
        let keyed = self.keyed.as_ref().expect("only with keys on");
        let owner = idempotency::owner_of(&key, keyed.count());
        let (tx, answer) = oneshot::channel();
        match owner == self.shard {
            true => self.clone().spawn_once(key, req, tx),
            false => keyed
                .tell(
                    owner,
                    move |there| async move { there.spawn_once(key, req, tx) },
                )
                .await
                .map_err(|_| stopping())?,
        };
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Starts [`Injector::queue_once`] as a task of this shard's keyed
    /// work (`keyed_tasks`), its answer to `tx`.
    fn spawn_once(
        self: Rc<Self>,
        key: String,
        req: Request,
        tx: oneshot::Sender<Result<Response, InjectError>>,
    ) {
        let tasks = self.keyed_tasks.clone();
        tasks.spawn(async move {
            let _ = tx.send(self.queue_once(key, req).await);
        });
    }

    /// On stop, once no more keyed requests come in: waits (until
    /// `deadline`) for those under way here, which may be other shards'
    /// clients' (whose listeners wait for their answers, not for this
    /// shard), then cancels what is left, as the shard's other tasks are.
    /// Ending this shard under one could drop it between its message's
    /// commit and its answer: the client would get 503 for a message that
    /// is queued.
    pub async fn finish_keyed(&self, deadline: std::time::Instant) {
        self.keyed_tasks.wait_until_at_most(0, deadline).await;
        self.keyed_tasks.cancel_all();
    }

    /// A keyed request on its key's owner: the first answer if the key is
    /// known, else the request queued and its answer kept.
    async fn queue_once(&self, key: String, req: Request) -> Result<Response, InjectError> {
        let digest = idempotency::digest_of(&req.body);
        let now = self.clock.now();
        match self.index.begin_waiting(&key, digest, now).await {
            Begin::New => {}
            Begin::Replay(answer) => return Ok(replayed(answer)),
            Begin::Mismatch => return Err(mismatch()),
            // (begin_waiting never answers Wait.)
            Begin::Busy | Begin::Wait(_) => return Err(busy()),
        }
        let window = self.cfg.inject.idempotency_window_secs;
        let expires = now + window;
        let fleet = self.claim_in_fleet(&key, digest, window).await;
        let rider = AnswerRider {
            injector: self,
            key: &key,
            expires,
            rode: RefCell::new(None),
        };
        let result = match &fleet {
            Ok(FleetClaim::Answered(answer)) => Ok(replayed(answer.clone())),
            Err(refusal) => Err(refusal.clone()),
            Ok(FleetClaim::Ours | FleetClaim::NotShared) => self.inject(req, Some(&rider)).await,
        };
        let stored = rider.rode.borrow().is_some();
        let answer = match (&fleet, &result) {
            (Ok(FleetClaim::Ours | FleetClaim::NotShared), Ok(r)) if r.status == 200 => {
                Some(String::from_utf8_lossy(&r.body).into_owned())
            }
            _ => None,
        };
        if let Err(e) = self
            .index
            .finish(&key, answer.clone(), expires, stored)
            .await
        {
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
}
