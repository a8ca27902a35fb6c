//! A recipient's unsubscribe, whichever way it came: the one-click link
//! (`http::unsubscribe`, on its public listener) or mail to the mailto
//! address (the door, through [`Unsubscriber::take_mail`]).
//!
//! Owns: [`Unsubscriber`]: verifies a token (`unsubscribe::verify`, under
//! the secrets in force and `unsubscribe.link_lifetime_days`), puts the
//! recipient on the suppression list for the sender domain the link names
//! (reason `Unsubscribe`, source `unsubscribe`, no expiry; stored durably
//! before anyone is told it is done, and shared with the fleet like any
//! addition) and writes one `Unsubscribe` event (the delivery log,
//! webhooks; its `id` is the message the link came in, so `queue trace`
//! shows it beside that message's delivery). A repeat changes nothing and
//! writes no second event.
//!
//! May call: `unsubscribe` (tokens), `suppression`, `events`, `queue`
//! (ids), `metrics`, `shard`.
//! Must not: decide who gets links (the door does) or speak HTTP.

use std::rc::Rc;
use std::sync::Arc;

use crate::events::{Event, EventKind, EventLog};
use crate::shard::clock::Clock;
use crate::suppression::{Suppression, SuppressionError, SuppressionList};
use crate::unsubscribe::{Claim, Links, TokenError};

/// What became of a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// Suppressed now.
    Now,
    /// Suppressed for that sender domain already: nothing changed.
    Already,
}

pub struct Unsubscriber {
    links: Arc<Links>,
    suppressions: Arc<SuppressionList>,
    events: Rc<EventLog>,
    clock: Clock,
    lifetime_secs: u64,
}

impl Unsubscriber {
    pub fn new(
        links: Arc<Links>,
        suppressions: Arc<SuppressionList>,
        events: Rc<EventLog>,
        clock: Clock,
        lifetime_secs: u64,
    ) -> Unsubscriber {
        Unsubscriber {
            links,
            suppressions,
            events,
            clock,
            lifetime_secs,
        }
    }

    /// What `token` says, if it is one of ours and alive.
    pub fn claim(&self, token: &str) -> Result<Claim, TokenError> {
        let secrets = self.links.keyring.current();
        crate::unsubscribe::verify(&secrets, token, self.clock.now(), self.lifetime_secs)
    }

    /// Whether the claim's recipient is suppressed for its sender domain
    /// (or every sender) now.
    pub fn is_suppressed(&self, claim: &Claim) -> bool {
        let domain = claim.sender_domain.to_ascii_lowercase();
        self.suppressions
            .check_domain(&domain, &claim.recipient, self.clock.now())
            .is_some()
    }

    /// Suppresses the claim's recipient for its sender domain, durably,
    /// and writes the event; `via`: "one-click" or "mailto".
    pub fn apply(
        &self,
        claim: &Claim,
        via: &'static str,
    ) -> Result<Unsubscribed, SuppressionError> {
        let now = self.clock.now();
        let scope = claim.sender_domain.to_ascii_lowercase();
        if self
            .suppressions
            .get(&scope, &claim.recipient)
            .is_some_and(|s| s.is_live(now))
        {
            return Ok(Unsubscribed::Already);
        }
        self.suppressions.add_durably(&[Suppression {
            address: claim.recipient.to_lowercase(),
            scope,
            reason: "Unsubscribe".into(),
            source: "unsubscribe".into(),
            added: now,
            expires: 0,
        }])?;
        ::metrics::counter!(crate::metrics::SUPPRESSIONS_ADDED, "source" => "unsubscribe")
            .increment(1);
        let mut ev = Event::new(EventKind::Unsubscribe, claim.message, "", &claim.recipient);
        ev.sender_domain = Some(&claim.sender_domain);
        ev.via = Some(via);
        self.events.write(&ev);
        Ok(Unsubscribed::Now)
    }

    /// Mail to the mailto address: the token is the subject's last word
    /// (`unsubscribe TOKEN`, as the link writes it). A request that names
    /// no valid token is counted and dropped (the sender cannot do
    /// better); Err only when the suppression could not be stored.
    pub fn take_mail(&self, content: &[u8]) -> Result<(), SuppressionError> {
        let subject = crate::proto::header::field_value(content, "Subject").unwrap_or_default();
        let claim = crate::unsubscribe::token_of_subject(&subject)
            .ok_or(TokenError::Malformed)
            .and_then(|t| self.claim(t));
        let result = match claim {
            Ok(claim) => match self.apply(&claim, "mailto")? {
                Unsubscribed::Now => "unsubscribed",
                Unsubscribed::Already => "already",
            },
            Err(e) => e.as_str(),
        };
        count("mailto", result);
        Ok(())
    }
}

/// Counts a request in `ringpost_unsubscribe_requests_total`.
pub fn count(via: &'static str, result: &'static str) {
    ::metrics::counter!(crate::metrics::UNSUBSCRIBE_REQUESTS, "via" => via, "result" => result)
        .increment(1);
}
