//! The delivery log: one JSON line per event, for operators and log shippers.
//!
//! Owns: [`EventLog`] and the event schema: `time` (RFC 3339, UTC), `event`
//! (Reception, Delivery, TransientFailure, Bounce, Expiration, Deletion,
//! Complaint, AsyncBounce, Unsubscribe), `id`,
//! `sender`, `recipient`, and where they apply `remote_host`, `remote_ip`,
//! `reply`, `attempt`, `tls`, `tls_policy`, `category` (TransientFailure, Bounce: the
//! bounce category), `source` and `site` (delivery attempts), and on
//! Reception `dkim` (`{"signed": ["d=... s=... a=..."]}` or
//! `{"unsigned": "no_from"}`), `priority`, `pool` (when not the default)
//! and the DSN request (`notify`, `orcpt`, `ret`, `envid`).
//!
//! Each shard opens its own append-mode handle; one event is one `write` of
//! a whole line, which O_APPEND keeps intact across shards.
//!
//! With webhooks (`[events]`), each event a webhook wants also gets a
//! unique `event_id` and goes into the shard's outbox in the spool
//! ([`outbox`]), before the caller changes the message's record;
//! [`webhook`] sends it from there.
//!
//! May call: `queue` (ids, envelopes, the kept trees of the outbox), `dkim`
//! (the signing outcome a Reception carries), `tls` (the webhooks' HTTPS),
//! `config`, `metrics`, `shard`.
//! Must not: decide anything; it only records.

pub mod client;
pub mod outbox;
pub mod webhook;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use std::rc::Rc;

use crate::config::{BacklogFull, EventsConfig};
use crate::dkim::DkimOutcome;
use crate::queue::{Envelope, MessageId};
use crate::shard::log_limit::LogLimit;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum EventKind {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    /// Removed from the queue by the administrator (`ringpost queue delete`).
    Deletion,
    /// A recipient complained (an ARF report came to a feedback address).
    Complaint,
    /// A recipient's mail failed after it was delivered to the next hop
    /// (a DSN came to a feedback address).
    AsyncBounce,
    /// A recipient unsubscribed (a one-click link, or its mailto): now
    /// suppressed for the sender domain.
    Unsubscribe,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Reception,
        EventKind::Delivery,
        EventKind::TransientFailure,
        EventKind::Bounce,
        EventKind::Expiration,
        EventKind::Deletion,
        EventKind::Complaint,
        EventKind::AsyncBounce,
        EventKind::Unsubscribe,
    ];

    /// Its place in [`EventKind::ALL`] and `config::EVENT_KINDS`.
    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        crate::config::EVENT_KINDS[self as usize]
    }
}

/// Time and id are kept raw and formatted only when the event is written:
/// with the log off, an event costs next to nothing.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub event: EventKind,
    #[serde(serialize_with = "hex_id")]
    pub id: MessageId,
    pub sender: &'a str,
    pub recipient: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// TLS protocol and cipher of the delivery connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a str>,
    /// Delivery attempts: the TLS policy the connection was held to:
    /// `dane` (the MX host's TLSA records), `mta-sts` (the domain's
    /// policy, enforce or testing), `require`, `opportunistic` or `none`
    /// (`[tls]` and shaping rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<&'static str>,
    /// TransientFailure: when TLS was why no host took the message, the
    /// failure as TLS reports name it (`certificate-host-mismatch`,
    /// `starttls-not-supported`, `validation-failure`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_failure: Option<&'static str>,
    /// TransientFailure and Bounce: what the failure means
    /// (`classify::BounceCategory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'static str>,
    /// Reception: the DKIM signatures added, or why there are none (only
    /// when signing is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim: Option<&'a DkimOutcome>,
    /// Complaint and AsyncBounce: the queue id of the report itself (`id`
    /// is the original message's, when the report could be tied to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
    /// Complaint: the ARF Feedback-Type (abuse, fraud, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<&'a str>,
    /// Complaint and AsyncBounce: who sent the report (ARF User-Agent,
    /// DSN Reporting-MTA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporter: Option<&'a str>,
    /// The application's data for the message (`Envelope::meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a serde_json::Value>,
    /// Delivery attempts: the egress source they went from (`[egress]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    /// Delivery attempts: the site they went to (its MX hosts; see
    /// `scheduler::shaping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<&'a str>,
    /// Reception: the message's egress pool (when not the default),
    /// priority lane, and the DSN request (the recipient's NOTIFY and
    /// ORCPT, the message's RET and ENVID), where given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envid: Option<&'a str>,
    /// Unsubscribe: the sender domain the recipient is now suppressed
    /// for, and how it asked (`one-click`, `mailto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
}

enum Sink {
    Off,
    Stdout,
    File(File),
}

pub struct EventLog {
    sink: Sink,
    outbox: Option<Outbound>,
}

/// Where events for the webhooks go.
struct Outbound {
    outbox: Rc<outbox::Outbox>,
    /// Bit `i`: some webhook wants events of kind `i`.
    wanted: u16,
    max_backlog: u64,
    on_full: BacklogFull,
    dropped: LogLimit,
}

impl EventLog {
    /// `target`: "stdout", "off", or a file path (appended to).
    pub fn open(target: &str) -> std::io::Result<EventLog> {
        let sink = match target {
            "off" => Sink::Off,
            "stdout" => Sink::Stdout,
            path => Sink::File(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Ok(EventLog { sink, outbox: None })
    }

    /// Also stores the events `cfg`'s webhooks want in the shard's
    /// `outbox`.
    pub fn with_webhooks(mut self, cfg: &EventsConfig, outbox: Rc<outbox::Outbox>) -> EventLog {
        let wanted = EventKind::ALL
            .iter()
            .filter(|k| cfg.webhook.iter().any(|w| w.wants(k.name())))
            .fold(0u16, |bits, k| bits | 1 << k.index());
        self.outbox = cfg.is_on().then(|| Outbound {
            outbox,
            wanted,
            max_backlog: cfg.max_backlog,
            on_full: cfg.on_backlog_full,
            dropped: LogLimit::new(std::time::Duration::from_secs(60)),
        });
        self
    }

    /// Whether reception must wait for the webhooks (`events.max_backlog`
    /// reached with `on_backlog_full = "defer"`).
    pub fn backlog_full(&self) -> bool {
        self.outbox
            .as_ref()
            .is_some_and(|o| o.on_full == BacklogFull::Defer && o.outbox.backlog() >= o.max_backlog)
    }

    pub fn write(&self, event: &Event) {
        let outbox = self
            .outbox
            .as_ref()
            .filter(|o| o.wanted & (1 << event.event.index()) != 0);
        if matches!(self.sink, Sink::Off) && outbox.is_none() {
            return;
        }
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(_) => return,
        };
        if let Some(o) = outbox {
            line = with_event_id(line);
            o.store(event, &line);
        }
        if matches!(self.sink, Sink::Off) {
            return;
        }
        line.push(b'\n');
        let result = match &self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(f) => (&*f).write_all(&line),
        };
        if let Err(e) = result {
            log::warn!("delivery log: {e}");
        }
    }

    /// One Reception event per recipient of a newly queued message, with
    /// what was decided for it at reception.
    pub fn reception(&self, id: MessageId, env: &Envelope, dkim: Option<&DkimOutcome>) {
        if !self.is_on() {
            return;
        }
        for r in &env.recipients {
            let mut event = Event::of(EventKind::Reception, id, env, &r.address);
            event.dkim = dkim;
            event.pool = Some(env.pool.as_str()).filter(|p| !p.is_empty());
            event.priority = Some(env.priority.unwrap_or_default().as_str());
            event.notify = r.notify.map(|n| n.as_text());
            event.orcpt = r.orcpt.as_deref();
            event.ret = env.ret.map(|r| r.as_text());
            event.envid = env.envid.as_deref();
            self.write(&event);
        }
    }

    /// Whether any event is written anywhere (the log, or a webhook).
    fn is_on(&self) -> bool {
        !matches!(self.sink, Sink::Off) || self.outbox.as_ref().is_some_and(|o| o.wanted != 0)
    }
}

impl Outbound {
    fn store(&self, event: &Event, json: &[u8]) {
        let outbox = &self.outbox;
        if self.on_full == BacklogFull::DropOldest && outbox.backlog() >= self.max_backlog {
            let n = outbox.drop_oldest(outbox.backlog() + 1 - self.max_backlog);
            ::metrics::counter!(crate::metrics::EVENTS_DROPPED).increment(n);
            self.dropped.log(log::Level::Warn, || {
                format!(
                    "events: {n} oldest unsent event(s) dropped: events.max_backlog ({}) reached",
                    self.max_backlog
                )
            });
        }
        let at_ms = event
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(e) = outbox.append(event.event.index(), at_ms, json) {
            log::error!("events: {e}");
        }
    }
}

/// `{...}` as `{"event_id":"<32 hex digits>",...}`: a random id, the same
/// in every repeat of the event to a webhook and in the delivery log.
fn with_event_id(json: Vec<u8>) -> Vec<u8> {
    let id: u128 = rand::random();
    let mut out = Vec::with_capacity(json.len() + 48);
    out.extend_from_slice(format!("{{\"event_id\":\"{id:032x}\",").as_bytes());
    out.extend_from_slice(&json[1..]);
    out
}

impl<'a> Event<'a> {
    /// An event of message `id` for `recipient`, with its envelope's
    /// sender and meta.
    pub fn of(event: EventKind, id: MessageId, env: &'a Envelope, recipient: &'a str) -> Event<'a> {
        let mut ev = Event::new(event, id, &env.sender, recipient);
        ev.meta = env.meta.as_deref();
        ev
    }

    pub fn new(event: EventKind, id: MessageId, sender: &'a str, recipient: &'a str) -> Event<'a> {
        Event {
            time: SystemTime::now(),
            event,
            id,
            sender,
            recipient,
            remote_host: None,
            remote_ip: None,
            reply: None,
            attempt: None,
            tls: None,
            tls_policy: None,
            tls_failure: None,
            category: None,
            report_id: None,
            feedback_type: None,
            reporter: None,
            meta: None,
            source: None,
            site: None,
            dkim: None,
            pool: None,
            priority: None,
            notify: None,
            orcpt: None,
            ret: None,
            envid: None,
            sender_domain: None,
            via: None,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let t: chrono::DateTime<chrono::Utc> = (*t).into();
    s.collect_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn hex_id<S: serde::Serializer>(id: &MessageId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_their_config_names_agree() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(k.index() as usize, i);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert_eq!(EventKind::ALL.len(), crate::config::EVENT_KINDS.len());
    }

    #[test]
    fn an_event_id_leads_the_object() {
        let json = with_event_id(br#"{"event":"Delivery"}"#.to_vec());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["event"], "Delivery");
        assert_eq!(v["event_id"].as_str().unwrap().len(), 32);
        let other = with_event_id(br#"{"event":"Delivery"}"#.to_vec());
        assert_ne!(json, other);
    }
}
