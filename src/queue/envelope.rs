//! The queue record of one message: its envelope and per-recipient state.
//!
//! Owns: [`Envelope`], its on-disk encoding (JSON: small, readable with
//! `queue show`, and tolerant of fields added later through serde defaults).
//!
//! Must not: hold the body; bodies live in segments (see `queue::segment`),
//! and the record says where.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::frame::BodyRef;
use crate::dsn::{Notify, Ret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: Box<str>,
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<Arc<str>>,
    /// DSN (RFC 3461): the notices the sender asked for (None: the
    /// default, a failure notice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// DSN: the original recipient, `type;address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<Box<str>>,
    /// A delay notice was sent for it (at most one is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
    /// Its last attempt was not made: a hold (a suspension or a cap) kept
    /// it, so it goes as soon as a hold ends rather than at its retry time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// The egress source its last attempt went from (`[egress]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
    /// The site its last attempt went to (its domain's MX hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Arc<str>>,
}

impl Recipient {
    pub fn pending(address: String) -> Recipient {
        Recipient {
            address: address.into(),
            status: RecipientStatus::Pending,
            attempts: 0,
            last_reply: None,
            notify: None,
            orcpt: None,
            delay_notified: false,
            held: false,
            source: None,
            site: None,
        }
    }
}

/// The domain of an address (a recipient's destination, a sender's
/// domain), lower-cased; empty for the null sender.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase()
}

/// Pure: removes the recipients listed again (the domain part compared
/// without regard to case, the local part as given: RFC 5321 2.4), keeping
/// each first occurrence with its DSN request. How many were removed.
pub fn merge_duplicate_recipients(recipients: &mut Vec<Recipient>) -> usize {
    if recipients.len() < 2 {
        return 0;
    }
    let before = recipients.len();
    let mut seen = std::collections::HashSet::with_capacity(before);
    recipients.retain(|r| seen.insert(recipient_key(&r.address)));
    before - recipients.len()
}

/// Pure: what makes two recipient addresses the same mailbox: the local
/// part as given, the domain part without regard to case (RFC 5321 2.4).
pub fn recipient_key(address: &str) -> (String, String) {
    match address.rsplit_once('@') {
        Some((local, domain)) => (local.to_string(), domain.to_ascii_lowercase()),
        None => (address.to_string(), String::new()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Unix seconds when the message was accepted.
    pub created: u64,
    /// Delivery attempts made for the message as a whole.
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds when the next delivery attempt is due.
    pub next_due: u64,
    /// Where the body (with its Received: header) is stored; set by
    /// `Spool::enqueue`.
    #[serde(default)]
    pub body: BodyRef,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub eight_bit: bool,
    /// Who sent it: `helo [ip]`, for logs and `queue show`.
    #[serde(default)]
    pub client: Arc<str>,
    /// The application's own data for this message (a JSON object: the
    /// injection's `meta`, or the trusted `X-Ringpost-Meta` header),
    /// copied into every event of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<serde_json::Value>>,
    /// The egress pool it goes out through (`[egress]`); empty: the
    /// default pool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// Its delivery priority (`[priority]`): the injection's, a trusted
    /// client's header, or its pool's. None: normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::config::Priority>,
    /// DSN (RFC 3461): how much of the message a failure notice returns
    /// (None: the headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// DSN: the sender's id of the transaction, returned in notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<Box<str>>,
    /// The message's `Message-ID:` (without its angle brackets), when it
    /// has exactly one, valid: a key `queue find` looks messages up by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Box<str>>,
    /// The injection request's `Idempotency-Key`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<Box<str>>,
    /// A record for a kept tree that rides in this message's journal frame
    /// (`kept::KeptRider`): set by the door, written with the frame and
    /// taken off before the record goes to sled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rider: Option<Box<super::kept::KeptRider>>,
    /// What DKIM signing did (`dkim::DkimOutcome::summary`); None when
    /// signing is not configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<Arc<str>>,
    /// Scheduled delivery: no attempt before this Unix second (the
    /// injection's `deliver_after`, SMTP's `HOLDFOR=`/`HOLDUNTIL=`, RFC
    /// 4865). The first `next_due` is set from it at reception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_at: Option<u64>,
}

impl Envelope {
    /// Whether a recipient at `domain` (any case) is still pending.
    pub fn has_pending_at(&self, domain: &str) -> bool {
        self.recipients.iter().any(|r| {
            r.status == RecipientStatus::Pending
                && r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
        })
    }

    /// A new message's envelope: every recipient pending, due now.
    pub fn new(sender: String, recipients: Vec<String>, now: u64) -> Envelope {
        Envelope {
            sender,
            recipients: recipients.into_iter().map(Recipient::pending).collect(),
            created: now,
            attempts: 0,
            next_due: now,
            body: BodyRef::default(),
            smtputf8: false,
            eight_bit: false,
            client: Arc::default(),
            meta: None,
            pool: String::new(),
            priority: None,
            ret: None,
            envid: None,
            message_id: None,
            idempotency_key: None,
            rider: None,
            dkim: None,
            release_at: None,
        }
    }

    /// Body size in bytes, as stored.
    pub fn size(&self) -> u64 {
        self.body.len
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Envelope always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        let mut env: Envelope = serde_json::from_slice(bytes)?;
        // JSON gives serde no length: the list grew to hold 4 at least,
        // 336 bytes too many for the usual one recipient, held as long as
        // the message is queued.
        env.recipients.shrink_to_fit();
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_recipients_merge_by_local_part_and_domain_in_any_case() {
        let r = |a: &str, notify: Option<&str>| Recipient {
            notify: notify.and_then(crate::dsn::Notify::parse),
            ..Recipient::pending(a.to_string())
        };
        let mut list = vec![
            r("b@example.com", Some("SUCCESS")),
            r("b@example.com", None),
            r("b@Example.COM", Some("NEVER")),
            r("B@example.com", None),
            r("c@example.com", None),
        ];
        assert_eq!(merge_duplicate_recipients(&mut list), 2);
        let left: Vec<&str> = list.iter().map(|r| &*r.address).collect();
        assert_eq!(left, ["b@example.com", "B@example.com", "c@example.com"]);
        assert_eq!(list[0].notify, crate::dsn::Notify::parse("SUCCESS"));
        assert_eq!(merge_duplicate_recipients(&mut list), 0);
    }

    #[test]
    fn round_trip() {
        let mut e = Envelope::new("a@b.example".into(), vec!["c@d.example".into()], 1);
        e.eight_bit = true;
        e.body.len = 10;
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        assert!(Envelope::decode(b"{not json").is_err());
    }
}
