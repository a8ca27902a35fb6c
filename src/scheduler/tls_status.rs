//! Receivers' TLS as this shard's deliveries met it, per destination
//! domain: the TLS policy the last attempt was held to, how many attempts
//! a policy held (DANE, MTA-STS, `require`) and how many of them TLS
//! failed, and the last such failure. What `queue summary` and the status
//! page show of it (merged over the shards by `http::admin`); the counts
//! per policy and result are in `ringpost_outbound_tls_sessions_total`,
//! each attempt's in the delivery log.
//!
//! Owns: [`TlsBook`] (one per shard, in memory: counts since start) and
//! [`TlsDestination`] (one domain's line). Bounded: at most
//! [`MAX_DESTINATIONS`] domains, the one seen longest ago making room.
//!
//! May call: `outbound` (the attempt's labels); the scheduler's book
//! (`Scheduler::tls_destinations`). Must not: look anything
//! up, or keep anything in the spool.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::outbound::Attempt;

/// Domains a shard keeps a line for.
pub const MAX_DESTINATIONS: usize = 1000;

/// One destination domain's TLS, as delivery met it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsDestination {
    pub domain: String,
    /// The TLS policy the last attempt was held to: `dane`, `mta-sts`,
    /// `require` (or, after a TLS failure of an opportunistic attempt,
    /// `opportunistic`).
    pub policy: String,
    /// Attempts since start that a TLS policy held, or that TLS failed.
    pub attempts: u64,
    /// Of them, those TLS (or the policy itself) failed.
    pub failures: u64,
    /// The last failure, as TLS reports name it (`certificate-expired`,
    /// `dnssec-invalid`, ...), and its reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reply: Option<String>,
    /// When (Unix seconds; 0: none).
    #[serde(default)]
    pub last_failure_at: u64,
    /// The last attempt (Unix seconds).
    pub last_at: u64,
}

impl TlsDestination {
    /// Folds another shard's line for the same domain into this one.
    pub fn merge(&mut self, other: TlsDestination) {
        self.attempts += other.attempts;
        self.failures += other.failures;
        if other.last_at > self.last_at {
            self.last_at = other.last_at;
            self.policy = other.policy;
        }
        if other.last_failure_at > self.last_failure_at {
            self.last_failure_at = other.last_failure_at;
            self.last_failure = other.last_failure;
            self.last_failure_reply = other.last_failure_reply;
        }
    }
}

/// One shard's lines, by domain.
#[derive(Debug, Default)]
pub struct TlsBook {
    lines: HashMap<String, TlsDestination>,
}

impl TlsBook {
    /// Notes `attempt` to `domain` at `now`, if a TLS policy held it or
    /// TLS failed it; a held attempt (never tried) is not noted.
    pub fn note(&mut self, domain: &str, attempt: &Attempt, now: u64) {
        let policy = attempt.tls_policy.unwrap_or("none");
        let held_to_policy = matches!(policy, "dane" | "mta-sts" | "require");
        if attempt.held || !(held_to_policy || attempt.tls_failure.is_some()) {
            return;
        }
        if !self.lines.contains_key(domain) && self.lines.len() >= MAX_DESTINATIONS {
            let oldest = self
                .lines
                .values()
                .min_by_key(|l| l.last_at)
                .map(|l| l.domain.clone());
            if let Some(d) = oldest {
                self.lines.remove(&d);
            }
        }
        let line = self
            .lines
            .entry(domain.to_string())
            .or_insert_with(|| TlsDestination {
                domain: domain.to_string(),
                ..TlsDestination::default()
            });
        line.policy = policy.to_string();
        line.attempts += 1;
        line.last_at = now;
        if let Some(failure) = attempt.tls_failure {
            line.failures += 1;
            line.last_failure = Some(failure.to_string());
            line.last_failure_reply = attempt.outcomes.first().map(|o| o.reply().to_string());
            line.last_failure_at = now;
        }
    }

    /// Every line (in no order).
    pub fn lines(&self) -> Vec<TlsDestination> {
        self.lines.values().cloned().collect()
    }
}

impl super::Scheduler {
    /// This shard's lines, for `queue summary` and the status page.
    pub fn tls_destinations(&self) -> Vec<TlsDestination> {
        self.tls_book.borrow().lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::DeliveryOutcome;

    fn attempt(policy: &'static str, failure: Option<&'static str>) -> Attempt {
        let outcome = match failure {
            Some(_) => DeliveryOutcome::Temporary {
                reply: "451 4.7.5 DANE: no".into(),
            },
            None => DeliveryOutcome::Delivered {
                reply: "250 ok".into(),
            },
        };
        Attempt {
            tls_policy: Some(policy),
            tls_failure: failure,
            ..Attempt::all(outcome, 1)
        }
    }

    #[test]
    fn attempts_under_a_policy_and_tls_failures_are_noted_per_domain() {
        let mut book = TlsBook::default();
        book.note("a.example", &attempt("dane", None), 10);
        book.note("a.example", &attempt("dane", Some("dnssec-invalid")), 20);
        book.note("a.example", &attempt("dane", None), 30);
        book.note("plain.example", &attempt("opportunistic", None), 30);
        book.note(
            "b.example",
            &attempt("opportunistic", Some("certificate-expired")),
            40,
        );
        let mut lines = book.lines();
        lines.sort_by(|x, y| x.domain.cmp(&y.domain));
        assert_eq!(lines.len(), 2, "an opportunistic success is no line");
        let a = &lines[0];
        assert_eq!((a.attempts, a.failures, a.last_at), (3, 1, 30));
        assert_eq!(a.last_failure.as_deref(), Some("dnssec-invalid"));
        assert_eq!(a.last_failure_reply.as_deref(), Some("451 4.7.5 DANE: no"));
        assert_eq!(a.last_failure_at, 20);

        let mut other = TlsDestination {
            domain: "a.example".into(),
            policy: "mta-sts".into(),
            attempts: 2,
            failures: 2,
            last_failure: Some("certificate-host-mismatch".into()),
            last_failure_reply: Some("r".into()),
            last_failure_at: 25,
            last_at: 25,
        };
        other.merge(a.clone());
        assert_eq!((other.attempts, other.failures), (5, 3));
        assert_eq!(other.policy, "dane", "the later attempt's");
        assert_eq!(
            other.last_failure.as_deref(),
            Some("certificate-host-mismatch"),
            "the later failure's"
        );
    }

    #[test]
    fn the_book_is_bounded_by_evicting_the_longest_unseen() {
        let mut book = TlsBook::default();
        for i in 0..MAX_DESTINATIONS as u64 {
            book.note(&format!("d{i}.example"), &attempt("require", None), 100 + i);
        }
        book.note("new.example", &attempt("require", None), 5000);
        let lines = book.lines();
        assert_eq!(lines.len(), MAX_DESTINATIONS);
        assert!(lines.iter().all(|l| l.domain != "d0.example"));
        assert!(lines.iter().any(|l| l.domain == "new.example"));
    }
}
