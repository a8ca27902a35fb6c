//! The wall clock, in Unix seconds.
//!
//! Owns: [`Clock`]: the system clock in production, a clock a test sets
//! and moves by hand (retry times, expiry, anything dated), and
//! [`unix_now`] for code that only ever wants the real time (log lines,
//! trace headers); [`parse_duration`], a span of seconds as an operator
//! types it (the CLI's `--for`, `--since`; the status page's find box).
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

/// "90", "90s", "30m", "2h", "1d": seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of seconds, or 30m, 2h, 1d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(format!("`{text}`: must be at least one second")),
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
