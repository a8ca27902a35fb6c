//! The shard kit: what every part of a thread-per-core server needs and
//! nothing mail-specific.
//!
//! Owns: [`share`] (a shard's part of a global limit) and the submodules:
//! [`admission`] (connections per listener and client address),
//! [`tasks`] (task sets a shard cancels on stop), [`stop`] (the stop
//! signal), [`net`] (shared listeners that stop accepting on that signal),
//! [`mesh`] (asking another shard to run work on its own state),
//! [`clock`] (the wall clock, which tests can drive) and [`log_limit`]
//! (log lines that could repeat, rate-limited).
//!
//! May call: nothing else in the crate.
//! Must not: import any service (queue, scheduler, inbound, http, server):
//! they all stand on this, and an arrow back would make a cycle. (Which
//! shard owns a message is the queue's to say: `MessageId::shard`.)

pub mod admission;
pub mod clock;
pub mod log_limit;
pub mod mesh;
pub mod net;
pub mod stop;
pub mod tasks;

/// Shard `shard`'s share of a global limit: equal parts, the remainder to
/// the first shards, never zero. Limits are split this way so that shards
/// enforce them without talking to each other.
pub fn share(total: usize, shard: usize, shards: usize) -> usize {
    let shards = shards.max(1);
    (total / shards + usize::from(shard < total % shards)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_are_never_zero() {
        assert_eq!((0..2).map(|s| share(20, s, 2)).sum::<usize>(), 20);
        assert_eq!(
            (0..3).map(|s| share(20, s, 3)).collect::<Vec<_>>(),
            [7, 7, 6]
        );
        assert_eq!(share(1, 1, 2), 1);
    }
}
