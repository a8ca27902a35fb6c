//! The wall clock, in Unix seconds.
//!
//! Owns: [`Clock`]: the system clock in production, a clock a test sets
//! and moves by hand (retry times, expiry, anything dated), and
//! [`unix_now`] for code that only ever wants the real time (log lines,
//! trace headers).
//!
//! Concurrency: a manual clock is shared by every shard of a test server
//! (an atomic), so moving it moves all of them.
//!
//! Must not: be used for durations (that is `std::time::Instant`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where "now" comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// A test's clock: only [`Clock::advance`] and [`Clock::set`] move it.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock that reads `start`.
    pub fn manual(start: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start)))
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => unix_now(),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, secs: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(secs, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, secs: u64) {
        if let Clock::Manual(t) = self {
            t.store(secs, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.now(), 1_000);
        shared.advance(60);
        assert_eq!(c.now(), 1_060);
        c.set(5);
        assert_eq!(shared.now(), 5);
        assert!(Clock::System.now() > 1_600_000_000);
    }
}
