//! `[events]`: where the events of the delivery log go besides the log:
//! webhooks, and what happens when they fall behind.

use serde::{Deserialize, Serialize};

use super::Problems;

/// The event kinds a webhook may ask for (`events::EventKind`'s names).
pub const EVENT_KINDS: &[&str] = &[
    "Reception",
    "Delivery",
    "TransientFailure",
    "Bounce",
    "Expiration",
    "Deletion",
    "Complaint",
    "AsyncBounce",
    "Unsubscribe",
];

/// One receiver of events, as an `[[events.webhook]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// How metrics and logs name it; also the key of its place in each
    /// shard's event store, so renaming it starts it from the oldest
    /// event still stored.
    pub name: String,
    /// `http://host[:port]/path` or `https://...` (certificates verified
    /// against the Web PKI roots, or `ca_file`).
    pub url: String,
    /// The event kinds to send (`Delivery`, `Bounce`, ...). Empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Most events in one request.
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    /// Longest an event waits for its batch to fill, in milliseconds.
    #[serde(default = "max_wait_ms")]
    pub max_wait_ms: u64,
    /// A file whose first line (at least 16 characters) is the shared
    /// secret: each request carries `X-Ringpost-Signature: sha256=HEX`,
    /// HMAC-SHA256 of the body under it. Empty: unsigned.
    #[serde(default)]
    pub secret_file: String,
    /// Seconds a request may take (connect to last byte of the answer).
    #[serde(default = "timeout_secs")]
    pub timeout_secs: u64,
    /// First wait after a failed request, in milliseconds; doubled after
    /// each failure up to `retry_max_secs`.
    #[serde(default = "retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "retry_max_secs")]
    pub retry_max_secs: u64,
    /// PEM file of the CAs an https receiver's certificate must chain to.
    /// Empty: the Web PKI roots.
    #[serde(default)]
    pub ca_file: String,
}

fn batch_size() -> usize {
    100
}
fn max_wait_ms() -> u64 {
    1000
}
fn timeout_secs() -> u64 {
    10
}
fn retry_initial_ms() -> u64 {
    1000
}
fn retry_max_secs() -> u64 {
    300
}

impl Webhook {
    /// Whether it wants events of kind `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

/// What to do when the stored events not yet sent reach
/// `events.max_backlog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogFull {
    /// New mail is refused with a temporary error (SMTP `452 4.3.1` at
    /// MAIL, HTTP 507) until the webhooks catch up: nothing is lost. The
    /// bounces and notices ringpost itself queues are still taken.
    Defer,
    /// The oldest events are dropped to make room, each counted in
    /// `ringpost_events_dropped_total` and logged (at most once a minute).
    DropOldest,
}

section! {
    /// Webhooks: every event of the delivery log (`delivery.log`; the
    /// same JSON, plus a unique `event_id`) posted to the application in
    /// batches, as a JSON array, at least once. When a webhook is
    /// configured each shard stores its events in its spool before they
    /// are sent, and a webhook's place advances only on its receiver's
    /// 2xx: a crash or a receiver that is down for hours loses nothing,
    /// and a receiver drops repeats by `event_id`. A 4xx other than 408
    /// or 429 is narrowed down by halving the batch: an event is refused
    /// for good only when the receiver refuses it alone and takes the
    /// events after it; then it is kept in the spool (`ringpost
    /// events-failed ls` lists it, `replay` sends it again), counted and
    /// logged, and sending goes on. A receiver that refuses everything (a
    /// deploy, a wrong path for a while) is down, not refusing: its events
    /// wait and are tried again like any failure. Other failures (5xx,
    /// 408, 429, timeouts, refused connections) are tried again after
    /// `retry_initial_ms`, doubling up to `retry_max_secs`.
    ///
    /// Example: `[[events.webhook]] name = "app" url =
    /// "https://app.example/hooks/mail" events = ["Delivery", "Bounce",
    /// "Complaint"] secret_file = "/etc/ringpost/webhook.secret"`.
    EventsConfig = "events" {
        /// The receivers, as `[[events.webhook]]` tables: `name`, `url`
        /// (`http://` or `https://`), `events` (the kinds to send, e.g.
        /// `["Delivery", "Bounce"]`; empty: all), `batch_size` (100),
        /// `max_wait_ms` (1000: longest an event waits for its batch to
        /// fill), `secret_file` (first line: the HMAC-SHA256 key of
        /// `X-Ringpost-Signature: sha256=HEX`; empty: unsigned),
        /// `timeout_secs` (10), `retry_initial_ms` (1000),
        /// `retry_max_secs` (300), `ca_file` (the CAs of an https
        /// receiver; empty: the Web PKI roots).
        webhook: Vec<Webhook> = Vec::new(),
        /// Events stored and not yet sent to every webhook, per shard, at
        /// which `on_backlog_full` applies.
        max_backlog: u64 = 2_000_000,
        /// `"defer"` (refuse new mail for a while; nothing is lost) or
        /// `"drop_oldest"` (keep taking mail; the oldest events are
        /// dropped, counted and logged).
        on_backlog_full: BacklogFull = BacklogFull::Defer,
    }
}

impl EventsConfig {
    pub fn is_on(&self) -> bool {
        !self.webhook.is_empty()
    }

    pub fn check(&self, p: &mut Problems) {
        let mut names = std::collections::HashSet::new();
        for w in &self.webhook {
            let at = |what: String| format!("webhook {:?}: {what}", w.name);
            if w.name.is_empty() || !names.insert(w.name.as_str()) {
                p.at(
                    "events.webhook",
                    at("the name is empty or used twice".into()),
                );
            }
            match w.url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => p.at(
                    "events.webhook",
                    at(format!("url {:?} is not http(s)://host/path", w.url)),
                ),
            }
            for kind in &w.events {
                if !EVENT_KINDS.contains(&kind.as_str()) {
                    p.at(
                        "events.webhook",
                        at(format!("unknown event {kind:?} (one of {EVENT_KINDS:?})")),
                    );
                }
            }
            if w.batch_size == 0 || w.batch_size > 10_000 {
                p.at("events.webhook", at("batch_size must be 1 to 10000".into()));
            }
            if w.timeout_secs == 0 || w.retry_initial_ms == 0 || w.retry_max_secs == 0 {
                p.at(
                    "events.webhook",
                    at(
                        "timeout_secs, retry_initial_ms and retry_max_secs must be at least 1"
                            .into(),
                    ),
                );
            }
        }
        if self.max_backlog == 0 {
            p.at("events.max_backlog", "must be at least 1");
        }
    }
}
