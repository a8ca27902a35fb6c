//! Webhooks: a shard's stored events posted to the application in
//! batches, at least once.
//!
//! Owns: [`Hook`] (a webhook's settings with its secret and TLS config,
//! loaded at start-up) and [`run`], one task per webhook per shard that
//! reads the shard's outbox ([`super::outbox`]) from the webhook's cursor,
//! posts a batch as a JSON array, and moves the cursor past it only on a
//! 2xx. A 4xx other than 408 and 429 is bisected ([`AfterRefusal`]): an
//! event is refused for good (kept in the outbox's failed tree for the
//! operator, the cursor moving past it) only when it is refused alone and
//! the receiver takes the events after it; a receiver that refuses
//! everything is down, and is retried like one. Anything else (5xx, 408,
//! 429, a timeout, a refused connection) is tried again, the same batch,
//! after a back-off that doubles up to the webhook's maximum. Events the
//! operator replays (`POST /events/failed/replay`) go first. Events every
//! webhook of the shard has taken are trimmed from the outbox.
//!
//! Each request carries `X-Ringpost-Signature: sha256=HEX` (HMAC-SHA256
//! of the body under the webhook's secret, when it has one) and
//! `X-Ringpost-Batch: N`.
//!
//! May call: [`super::outbox`], [`super::client`]. Must not: change messages,
//! or block the shard (sled reads here are in-memory page reads).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::client::{PostError, Poster};
use super::outbox::{Outbox, StoredEvent};
use crate::config::{EventsConfig, Webhook};
use crate::shard::log_limit::LogLimit;
use crate::shard::stop::StopSignal;

/// How often a sender with nothing to send looks at the outbox again.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// One webhook, ready to run on any shard.
pub struct Hook {
    pub cfg: Webhook,
    secret: Option<ring::hmac::Key>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Hook {
    /// Loads every webhook's secret and TLS config (start-up, preflight).
    pub fn load_all(cfg: &EventsConfig) -> Result<Vec<Arc<Hook>>, String> {
        cfg.webhook.iter().map(Hook::load).collect()
    }

    fn load(w: &Webhook) -> Result<Arc<Hook>, String> {
        let at = |e: String| format!("webhook {:?}: {e}", w.name);
        let secret = match w.secret_file.as_str() {
            "" => None,
            path => {
                let text = std::fs::read_to_string(path).map_err(|e| at(format!("{path}: {e}")))?;
                let line = text.lines().next().unwrap_or("").trim();
                if line.len() < 16 {
                    return Err(at(format!(
                        "{path}: the secret must be at least 16 characters"
                    )));
                }
                Some(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    line.as_bytes(),
                ))
            }
        };
        let tls = match w.url.starts_with("https:") {
            false => None,
            true => {
                let ca = (!w.ca_file.is_empty()).then(|| std::path::Path::new(&w.ca_file));
                Some(crate::tls::web_client(ca).map_err(|e| at(e.to_string()))?)
            }
        };
        Ok(Arc::new(Hook {
            cfg: w.clone(),
            secret,
            tls,
        }))
    }

    /// The signature header's value for `body`.
    pub fn signature(&self, body: &[u8]) -> Option<String> {
        let key = self.secret.as_ref()?;
        let tag = ring::hmac::sign(key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("sha256={hex}"))
    }
}

/// The webhooks running on one shard: each trims only what all have.
pub struct WebhookShard {
    pub outbox: Rc<Outbox>,
    pub names: Vec<String>,
}

impl WebhookShard {
    fn trim(&self) {
        let outbox = &self.outbox;
        if let Some(min) = self.names.iter().map(|n| outbox.cursor(n)).min() {
            outbox.trim_through(min);
        }
    }
}

/// What one post came to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Taken,
    /// A 4xx other than 408, 429: this batch, or the receiver for now.
    Refused(u16),
    /// To be tried again.
    Again(String),
}

fn verdict(result: Result<u16, PostError>) -> Verdict {
    match result {
        Ok(200..=299) => Verdict::Taken,
        Ok(s @ 400..=499) if s != 408 && s != 429 => Verdict::Refused(s),
        Ok(s) => Verdict::Again(format!("answered {s}")),
        Err(e) => Verdict::Again(e.to_string()),
    }
}

/// What the sender does after a refusal. A 4xx may mean the batch is bad
/// or that the receiver is away (a deploy, a path briefly wrong), so a
/// refused batch is halved until one event is refused alone; then the
/// events after it are posted: if the receiver takes them, it is up and
/// that one event is refused for good (kept for the operator); if it
/// refuses them too, the receiver is down and the same events are tried
/// again after a back-off. No event is given up on while the receiver
/// refuses everything.
#[derive(Debug, PartialEq, Eq)]
enum AfterRefusal {
    /// Try the first `n` events of the batch.
    Halve(usize),
    /// Post the events after the lone refused one, to see whether the
    /// receiver is up.
    Probe,
}

fn after_refusal(batch_len: usize) -> AfterRefusal {
    match batch_len {
        0 | 1 => AfterRefusal::Probe,
        n => AfterRefusal::Halve(n / 2),
    }
}

/// Posts `hook`'s events from `shard`'s outbox until `stop`: replays the
/// operator asked for first, then the events after the webhook's cursor.
pub async fn run(hook: Arc<Hook>, shard: Rc<WebhookShard>, stop: StopSignal) {
    let cfg = &hook.cfg;
    let name = cfg.name.as_str();
    let poster = match Poster::new(
        &cfg.url,
        hook.tls.clone(),
        Duration::from_secs(cfg.timeout_secs),
    ) {
        Ok(p) => p,
        Err(e) => {
            log::error!("webhook {name:?}: {e}");
            return;
        }
    };
    let mut sender = Sender {
        hook: &hook,
        poster,
        stop: &stop,
        failures: LogLimit::new(Duration::from_secs(60)),
        backoff: Duration::from_millis(cfg.retry_initial_ms),
    };
    let outbox = &shard.outbox;
    let mut lag = Lag::new(name);
    let mut cursor = outbox.cursor(name);
    // Events per post: the batch size, less while a refusal is bisected.
    let mut limit = cfg.batch_size;
    while !stop.is_stopped() {
        lag.set(outbox.written_through().saturating_sub(cursor));
        match sender.replay(outbox).await {
            Replay::Stopped => break,
            Replay::Sent => continue,
            Replay::Nothing => {}
        }
        let (batch, through) = gather(&shard, cfg, cursor, limit);
        if batch.is_empty() {
            if through > cursor {
                cursor = through;
                let _ = outbox.set_cursor(name, cursor);
                shard.trim();
            }
            pause(IDLE_TICK, &stop).await;
            continue;
        }
        let age = now_ms().saturating_sub(batch[0].at_ms);
        if batch.len() < limit && age < cfg.max_wait_ms {
            pause(
                IDLE_TICK.min(Duration::from_millis(cfg.max_wait_ms - age)),
                &stop,
            )
            .await;
            continue;
        }
        let Some(v) = sender.post(&batch).await else {
            break;
        };
        let taken_through = sender.after(v, &shard, &batch, through, &mut limit).await;
        if let Some(through) = taken_through {
            limit = cfg.batch_size;
            cursor = through;
            if let Err(e) = outbox.set_cursor(name, cursor) {
                log::error!("webhook {name:?}: {e}");
            }
            shard.trim();
        }
    }
    lag.set(0);
}

/// What a look at the replay tree came to.
enum Replay {
    /// The webhook is stopping.
    Stopped,
    /// A batch of replayed events was posted (taken, refused or to retry).
    Sent,
    /// No event waits to be replayed.
    Nothing,
}

impl Sender<'_> {
    /// Posts the events the operator asked to replay, first.
    async fn replay(&mut self, outbox: &Outbox) -> Replay {
        let name = self.hook.cfg.name.as_str();
        let replay = outbox.replay_batch(name, self.hook.cfg.batch_size);
        if replay.is_empty() {
            return Replay::Nothing;
        }
        let Some(v) = self.post(&replay).await else {
            return Replay::Stopped;
        };
        match v {
            Verdict::Taken => outbox.replayed(name, &replay, false),
            Verdict::Refused(_) => outbox.replayed(name, &replay, true),
            Verdict::Again(_) => self.back_off().await,
        }
        Replay::Sent
    }

    /// After a batch's post: how far the cursor may move, if at all, and
    /// the next batch's size (`limit`: smaller while a refusal is
    /// bisected).
    async fn after(
        &mut self,
        verdict: Verdict,
        shard: &WebhookShard,
        batch: &[StoredEvent],
        through: u64,
        limit: &mut usize,
    ) -> Option<u64> {
        match verdict {
            Verdict::Taken => Some(through),
            Verdict::Again(_) => {
                self.back_off().await;
                None
            }
            Verdict::Refused(status) => match after_refusal(batch.len()) {
                AfterRefusal::Halve(n) => {
                    *limit = n;
                    None
                }
                AfterRefusal::Probe => {
                    *limit = self.hook.cfg.batch_size;
                    self.probe_past(shard, &batch[0], through, status).await
                }
            },
        }
    }
}

/// One webhook's poster on one shard, with its back-off.
struct Sender<'a> {
    hook: &'a Hook,
    poster: Poster,
    stop: &'a StopSignal,
    failures: LogLimit,
    backoff: Duration,
}

impl Sender<'_> {
    fn name(&self) -> &str {
        &self.hook.cfg.name
    }

    /// Posts `batch`, counts and logs the verdict; None when stopped (a
    /// stop does not wait for the receiver: the batch is sent again after
    /// the restart).
    async fn post(&mut self, batch: &[StoredEvent]) -> Option<Verdict> {
        let body = json_array(batch);
        let mut headers = vec![("x-ringpost-batch", batch.len().to_string())];
        if let Some(sig) = self.hook.signature(&body) {
            headers.push(("x-ringpost-signature", sig));
        }
        let (poster, stop) = (&mut self.poster, self.stop);
        let posted =
            futures_lite::future::or(async { Some(poster.post(body, &headers).await) }, async {
                stop.wait().await;
                None
            })
            .await?;
        let v = verdict(posted);
        let name = self.hook.cfg.name.clone();
        let result = match &v {
            Verdict::Taken => {
                self.backoff = Duration::from_millis(self.hook.cfg.retry_initial_ms);
                ::metrics::counter!(crate::metrics::WEBHOOK_EVENTS, "webhook" => name.clone(), "result" => "sent")
                    .increment(batch.len() as u64);
                "taken"
            }
            Verdict::Refused(_) => "refused",
            Verdict::Again(why) => {
                let (name, backoff) = (self.name().to_string(), self.backoff);
                self.failures.log(log::Level::Warn, || {
                    format!("webhook {name:?}: {why}; trying again in {backoff:?}")
                });
                "failed"
            }
        };
        ::metrics::counter!(crate::metrics::WEBHOOK_REQUESTS, "webhook" => name, "result" => result)
            .increment(1);
        Some(v)
    }

    /// Waits out the back-off, then doubles it (up to the maximum).
    async fn back_off(&mut self) {
        pause(self.backoff, self.stop).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(self.hook.cfg.retry_max_secs));
    }

    /// `lone` was refused by itself: posts the events after it. Taken:
    /// the receiver is up, so `lone` is refused for good (kept for the
    /// operator) and the cursor may move past both (returned). Otherwise
    /// the receiver is down: back off, and nothing moves.
    async fn probe_past(
        &mut self,
        shard: &WebhookShard,
        lone: &StoredEvent,
        lone_through: u64,
        status: u16,
    ) -> Option<u64> {
        let cfg = &self.hook.cfg;
        let (rest, through) = gather(shard, cfg, lone_through, cfg.batch_size);
        let up = match rest.is_empty() {
            // Nothing after it yet: wait for more before deciding.
            true => false,
            false => self.post(&rest).await? == Verdict::Taken,
        };
        let name = self.name().to_string();
        if !up {
            let backoff = self.backoff;
            self.failures.log(log::Level::Warn, || {
                format!(
                    "webhook {name:?}: the receiver refuses every batch ({status}); taken as down, trying again in {backoff:?}"
                )
            });
            self.back_off().await;
            return None;
        }
        shard.outbox.keep_failed(&name, std::slice::from_ref(lone));
        ::metrics::counter!(crate::metrics::WEBHOOK_EVENTS, "webhook" => name.clone(), "result" => "refused")
            .increment(1);
        self.failures.log(log::Level::Error, || {
            format!(
                "webhook {name:?}: the receiver refused event {} ({status}) and took the ones after it; kept for the operator (ringpost events-failed ls|replay)",
                lone.seq
            )
        });
        Some(through.max(lone_through))
    }
}

/// Up to `max` of the events `cfg` wants after `cursor`, and the sequence
/// number the cursor may move to once they are sent (past the events it
/// does not want, too).
fn gather(shard: &WebhookShard, cfg: &Webhook, cursor: u64, max: usize) -> (Vec<StoredEvent>, u64) {
    let outbox = &shard.outbox;
    let mut batch = Vec::new();
    let mut through = cursor;
    loop {
        let chunk = outbox.read_after(through, max.max(1));
        if chunk.is_empty() {
            return (batch, through);
        }
        for e in chunk {
            let wanted = crate::config::EVENT_KINDS
                .get(e.kind as usize)
                .is_some_and(|k| cfg.wants(k));
            through = e.seq;
            if wanted {
                batch.push(e);
                if batch.len() == max {
                    return (batch, through);
                }
            }
        }
    }
}

/// The events as one JSON array.
fn json_array(batch: &[StoredEvent]) -> Bytes {
    let len = batch.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.push(b']');
    Bytes::from(body)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps `d`, or until `stop`.
async fn pause(d: Duration, stop: &StopSignal) {
    futures_lite::future::or(glommio::timer::sleep(d), stop.wait()).await;
}

/// This shard's part of `ringpost_webhook_backlog` for one webhook (shards
/// add theirs up).
struct Lag {
    name: String,
    last: u64,
}

impl Lag {
    fn new(name: &str) -> Lag {
        Lag {
            name: name.to_string(),
            last: 0,
        }
    }

    fn set(&mut self, now: u64) {
        if now == self.last {
            return;
        }
        let g = ::metrics::gauge!(crate::metrics::WEBHOOK_BACKLOG, "webhook" => self.name.clone());
        if now > self.last {
            g.increment((now - self.last) as f64);
        } else {
            g.decrement((self.last - now) as f64);
        }
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_is_halved_down_to_one_event_then_probed_past() {
        assert_eq!(after_refusal(100), AfterRefusal::Halve(50));
        assert_eq!(after_refusal(3), AfterRefusal::Halve(1));
        assert_eq!(after_refusal(2), AfterRefusal::Halve(1));
        assert_eq!(after_refusal(1), AfterRefusal::Probe);
        // From a batch of 100: 6 halvings, then the probe.
        let (mut n, mut steps) = (100, 0);
        while let AfterRefusal::Halve(half) = after_refusal(n) {
            n = half;
            steps += 1;
        }
        assert_eq!((n, steps), (1, 6));
    }

    #[test]
    fn only_4xx_but_408_and_429_are_refusals() {
        assert_eq!(verdict(Ok(200)), Verdict::Taken);
        assert_eq!(verdict(Ok(204)), Verdict::Taken);
        assert_eq!(verdict(Ok(400)), Verdict::Refused(400));
        assert_eq!(verdict(Ok(404)), Verdict::Refused(404));
        assert!(matches!(verdict(Ok(408)), Verdict::Again(_)));
        assert!(matches!(verdict(Ok(429)), Verdict::Again(_)));
        assert!(matches!(verdict(Ok(500)), Verdict::Again(_)));
        assert!(matches!(verdict(Ok(302)), Verdict::Again(_)));
        assert!(matches!(
            verdict(Err(PostError::Timeout(Duration::from_secs(1)))),
            Verdict::Again(_)
        ));
    }

    #[test]
    fn a_batch_is_a_json_array_of_the_stored_objects() {
        let e = |seq, json: &str| StoredEvent {
            seq,
            kind: 1,
            at_ms: 0,
            json: sled::IVec::from(json.as_bytes()),
        };
        let body = json_array(&[e(1, r#"{"a":1}"#), e(2, r#"{"b":2}"#)]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"b": 2}]));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        let hook = Hook {
            cfg: Webhook {
                name: "t".into(),
                url: "http://127.0.0.1/".into(),
                events: vec![],
                batch_size: 1,
                max_wait_ms: 1,
                secret_file: String::new(),
                timeout_secs: 1,
                retry_initial_ms: 1,
                retry_max_secs: 1,
                ca_file: String::new(),
            },
            secret: Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe")),
            tls: None,
        };
        assert_eq!(
            hook.signature(b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
