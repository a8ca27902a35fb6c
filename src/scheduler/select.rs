//! Which queued messages a bulk action is about: a [`Selector`] (what the
//! operator knows: domain, sender, recipient, pool, egress source, site,
//! meta entry, priority lane, age, state; every given criterion must hold)
//! and the shard's matching messages ([`Scheduler::select`]).
//!
//! Matching goes through the queue's own index where a criterion is one
//! of its keys (recipient, sender, meta: `index::QueueIndex`, shared with
//! `queue find`), else walks the shard's in-memory state once; it never
//! reads a message body or the spool.
//!
//! May call: `history::lookup` (keys and their normalization), `state`.
//! Must not: change anything (the bulk actions in `bulk` do).

use serde::{Deserialize, Serialize};

use super::Scheduler;
use super::state::{Entry, State};
use crate::history::Lookup;
use crate::queue::{MessageId, RecipientStatus};

/// What a bulk action applies to (see the module header). An empty
/// selector matches every queued message, which must be said (`all`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// A recipient domain with a pending recipient (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The envelope sender (the domain part in any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// A recipient (the domain part in any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcpt: Option<String>,
    /// The egress pool the message was sent into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The egress source a pending recipient was last tried from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The site (MX host set) a pending recipient was last tried at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// One entry of the application's meta: `NAME=VALUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// The priority lane: `high`, `normal` or `bulk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Accepted at least this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_secs: Option<u64>,
    /// Where it stands: `scheduled` (waiting for the first attempt at the
    /// time its sender chose), `deferred` (waiting for a retry), `held` (every
    /// pending domain suspended), `queued` (waiting for a worker) or
    /// `delivering`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Every queued message: required when no criterion is given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// The states a selector may name (as `queue ls` shows them; `held` is
/// shown as `suspended`).
const STATES: [&str; 5] = ["scheduled", "deferred", "held", "queued", "delivering"];

/// A selector checked and ready to match (see [`Selector::compile`]).
#[derive(Debug, Clone)]
pub struct Compiled {
    sel: Selector,
    /// The recipient, sender and meta criteria as lookup keys, in that
    /// order of preference for the index.
    keys: Vec<Lookup>,
}

impl Selector {
    /// Whether no criterion is given.
    pub fn is_empty(&self) -> bool {
        let Selector {
            domain,
            sender,
            rcpt,
            pool,
            source,
            site,
            meta,
            priority,
            older_than_secs,
            state,
            all: _,
        } = self;
        domain.is_none()
            && sender.is_none()
            && rcpt.is_none()
            && pool.is_none()
            && source.is_none()
            && site.is_none()
            && meta.is_none()
            && priority.is_none()
            && older_than_secs.is_none()
            && state.is_none()
    }

    /// Checks every criterion; Err says which one is wrong and why.
    pub fn compile(&self) -> Result<Compiled, String> {
        if self.is_empty() && !self.all {
            return Err("no criterion given: to act on every queued message, say all".into());
        }
        if !self.is_empty() && self.all {
            return Err("all cannot be combined with criteria".into());
        }
        let mut keys = Vec::new();
        for (kind, value) in [
            ("rcpt", &self.rcpt),
            ("sender", &self.sender),
            ("meta", &self.meta),
        ] {
            if let Some(v) = value {
                keys.push(Lookup::parse(kind, v).map_err(|e| format!("{kind}: {e}"))?);
            }
        }
        if let Some(p) = &self.priority
            && !crate::config::Priority::ALL.iter().any(|l| l.as_str() == p)
        {
            return Err(format!("priority: `{p}` is not high, normal or bulk"));
        }
        if let Some(s) = &self.state
            && !STATES.contains(&s.as_str())
        {
            return Err(format!("state: `{s}` is not one of {}", STATES.join(", ")));
        }
        for (name, value) in [
            ("domain", &self.domain),
            ("pool", &self.pool),
            ("source", &self.source),
            ("site", &self.site),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{name}: empty"));
            }
        }
        let mut sel = self.clone();
        sel.domain = sel.domain.map(|d| d.to_ascii_lowercase());
        Ok(Compiled { sel, keys })
    }
}

impl Compiled {
    /// Whether queued message `e` matches at `now` (Unix seconds), in
    /// `st` (for holds).
    pub fn matches(&self, e: &Entry, st: &State, now: u64) -> bool {
        let s = &self.sel;
        let env = &e.env;
        let pending = || {
            env.recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Pending)
        };
        self.matches_envelope(env)
            && s.source
                .as_deref()
                .is_none_or(|x| pending().any(|r| r.source.as_deref() == Some(x)))
            && s.site
                .as_deref()
                .is_none_or(|x| pending().any(|r| r.site.as_deref() == Some(x)))
            && s.older_than_secs
                .is_none_or(|age| now.saturating_sub(env.created) >= age)
            && s.state.as_deref().is_none_or(|want| {
                let is = e.state_name(st);
                want == is || (want == "held" && is == "suspended")
            })
    }

    /// Whether `env` matches what a message has from its arrival on:
    /// recipient, sender and meta keys, a pending recipient at the
    /// domain, the pool, the priority (the other criteria are not looked
    /// at: a bounce rule has none of them).
    pub fn matches_envelope(&self, env: &crate::queue::Envelope) -> bool {
        let s = &self.sel;
        if !self.keys.iter().all(|k| k.found_in(env)) {
            return false;
        }
        s.domain.as_deref().is_none_or(|d| env.has_pending_at(d))
            && s.pool.as_deref().is_none_or(|p| env.pool == p)
            && s.priority
                .as_deref()
                .is_none_or(|p| env.priority.unwrap_or_default().as_str() == p)
    }

    /// The index key to start from, if a criterion is one.
    fn index_key(&self) -> Option<&Lookup> {
        self.keys.first()
    }
}

impl Scheduler {
    /// This shard's queued messages that `sel` matches, oldest first.
    pub fn select(&self, sel: &Compiled) -> Vec<MessageId> {
        let now = self.clock.now();
        let st = self.state.borrow();
        let mut ids: Vec<(u64, MessageId)> = match sel.index_key() {
            Some(key) => st
                .index
                .candidates(key)
                .filter_map(|id| Some((id, st.messages.get(&id)?)))
                .filter(|(_, e)| sel.matches(e, &st, now))
                .map(|(id, e)| (e.env.created, id))
                .collect(),
            None => st
                .messages
                .iter()
                .filter(|(_, e)| sel.matches(e, &st, now))
                .map(|(id, e)| (e.env.created, *id))
                .collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(f: impl FnOnce(&mut Selector)) -> Result<Compiled, String> {
        let mut s = Selector::default();
        f(&mut s);
        s.compile()
    }

    #[test]
    fn a_selector_says_what_is_wrong_with_it() {
        let err = |f: fn(&mut Selector)| sel(f).unwrap_err();
        assert!(err(|_| {}).contains("say all"));
        assert!(
            err(|s| {
                s.all = true;
                s.pool = Some("p".into());
            })
            .contains("cannot be combined")
        );
        assert!(err(|s| s.meta = Some("campaign".into())).starts_with("meta:"));
        assert!(err(|s| s.priority = Some("urgent".into())).contains("not high"));
        assert!(err(|s| s.state = Some("stuck".into())).contains("deferred, held"));
        assert!(err(|s| s.domain = Some(" ".into())).starts_with("domain: empty"));
        assert!(sel(|s| s.all = true).is_ok());
        assert!(sel(|s| s.meta = Some("campaign=spring".into())).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<Selector>(r#"{"campaign":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `campaign`"), "{e}");
    }
}
