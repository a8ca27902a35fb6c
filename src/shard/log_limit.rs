//! Logging what can repeat many times a second without flooding the log:
//! the first occurrence is logged, then at most one line per interval,
//! saying how many were left out.
//!
//! Owns: [`LogLimit`]. Lives on one shard (`Cell`s); each shard keeps its
//! own, so a log shows each shard's count.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct LogLimit {
    interval: Duration,
    last: Cell<Option<Instant>>,
    left_out: Cell<u64>,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            last: Cell::new(None),
            left_out: Cell::new(0),
        }
    }

    /// Logs `message()` at `level` unless a line was logged within the
    /// interval; then it is only counted, and the next line says how many.
    /// Returns whether a line was written.
    pub fn log(&self, level: log::Level, message: impl FnOnce() -> String) -> bool {
        let now = Instant::now();
        if self.last.get().is_some_and(|t| now - t < self.interval) {
            self.left_out.set(self.left_out.get() + 1);
            return false;
        }
        self.last.set(Some(now));
        match self.left_out.replace(0) {
            0 => log::log!(level, "{}", message()),
            n => log::log!(
                level,
                "{} (and {n} more like it in the last {} s)",
                message(),
                self.interval.as_secs()
            ),
        }
        true
    }

    /// How many were left out since the last line (for tests).
    pub fn left_out(&self) -> u64 {
        self.left_out.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_and_the_rest_counted() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let written: Vec<bool> = (0..5)
            .map(|_| limit.log(log::Level::Error, || "x".into()))
            .collect();
        assert_eq!(written, [true, false, false, false, false]);
        assert_eq!(limit.left_out(), 4);
    }
}
