//! When a message is tried again, and when it is given up: pure decisions
//! over an envelope and the time, unit-tested here.
//!
//! Owns: [`RetryPolicy`] (from `[delivery]`), [`backoff`] and [`decide`],
//! which says what becomes of a message at the end of a delivery round.
//!
//! Must not: read the clock (the caller passes `now`) or change anything.

use crate::config::DeliveryConfig;
use crate::queue::{Envelope, RecipientStatus};

/// The retry schedule and the age limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay after a temporary failure; doubles each attempt.
    pub initial_secs: u64,
    /// Longest delay.
    pub max_secs: u64,
    /// Age at which a message still failing temporarily expires.
    pub max_age_secs: u64,
}

impl RetryPolicy {
    pub fn of(d: &DeliveryConfig) -> RetryPolicy {
        RetryPolicy {
            initial_secs: d.retry_initial_secs,
            max_secs: d.retry_max_secs,
            max_age_secs: d.max_age_secs,
        }
    }
}

/// What becomes of a message at the end of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// No recipient is pending: the message leaves the queue.
    Done,
    /// Recipients are still pending past the age limit: they fail (4.4.7)
    /// and the message leaves the queue.
    Expired,
    /// Try the pending recipients again at `next_due` (Unix seconds), as
    /// attempt `attempts`.
    Retry { next_due: u64, attempts: u32 },
}

/// Delay before attempt `attempts + 1`: `initial * 2^(attempts-1)`, capped.
pub fn backoff(attempts: u32, initial: u64, max: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    initial.saturating_mul(1u64 << exp).min(max)
}

/// Pure: the end of `env`'s round at `now`.
pub fn decide(env: &Envelope, now: u64, policy: &RetryPolicy) -> RoundEnd {
    let pending = env
        .recipients
        .iter()
        .any(|r| r.status == RecipientStatus::Pending);
    if !pending {
        return RoundEnd::Done;
    }
    // Scheduled mail's age counts from its release, not its reception.
    let since = env.release_at.map_or(env.created, |at| at.max(env.created));
    if now >= since.saturating_add(policy.max_age_secs) {
        return RoundEnd::Expired;
    }
    let attempts = env.attempts + 1;
    RoundEnd::Retry {
        next_due: now + backoff(attempts, policy.initial_secs, policy.max_secs),
        attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_mail_ages_from_its_release() {
        let mut env = Envelope::new("s@x".into(), vec!["r@y".into()], 1_000);
        env.release_at = Some(1_000 + 10 * 86_400);
        let later = 1_000 + 10 * 86_400 + 60;
        assert!(matches!(
            decide(&env, later, &POLICY),
            RoundEnd::Retry { .. }
        ));
        assert_eq!(
            decide(&env, 1_000 + 11 * 86_400, &POLICY),
            RoundEnd::Expired
        );
    }

    const POLICY: RetryPolicy = RetryPolicy {
        initial_secs: 60,
        max_secs: 3600,
        max_age_secs: 86_400,
    };

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff(1, 60, 3600), 60);
        assert_eq!(backoff(2, 60, 3600), 120);
        assert_eq!(backoff(7, 60, 3600), 3600);
        assert_eq!(backoff(u32::MAX, 60, 3600), 3600);
    }

    #[test]
    fn a_round_ends_done_retried_or_expired() {
        let mut env = Envelope::new("s@x".into(), vec!["a@y".into(), "b@y".into()], 1_000);
        assert_eq!(
            decide(&env, 1_010, &POLICY),
            RoundEnd::Retry {
                next_due: 1_070,
                attempts: 1
            }
        );
        env.attempts = 3;
        assert_eq!(
            decide(&env, 2_000, &POLICY),
            RoundEnd::Retry {
                next_due: 2_480,
                attempts: 4
            }
        );
        assert_eq!(decide(&env, 1_000 + 86_400, &POLICY), RoundEnd::Expired);
        env.recipients[0].status = RecipientStatus::Delivered;
        env.recipients[1].status = RecipientStatus::Failed;
        assert_eq!(decide(&env, 1_000 + 86_400, &POLICY), RoundEnd::Done);
    }
}
