//! Priority lanes: one queue per priority (`config::Priority`), taken in
//! turns by weight, so that urgent mail goes first and bulk is never
//! starved.
//!
//! Owns: [`Lanes`], a queue of waiting items (a domain's jobs, a path's
//! waiting workers) split by lane, and the turn-taking: smooth weighted
//! round-robin over the lanes that have items (each take adds every
//! such lane's weight to its score, takes from the highest, and subtracts
//! their total from it; ties go to the higher priority). A lane that
//! empties loses its score, so an idle lane saves up no turns. Over any
//! run of takes while lanes stay busy, each gets its weight's share, and
//! a high-priority item that arrives behind a long bulk queue is taken
//! next. Pure, unit-tested.
//!
//! Must not: know what the items are.

use std::collections::VecDeque;

/// Lanes, from the highest priority (0) down.
pub const LANES: usize = 3;

#[derive(Debug)]
pub struct Lanes<T> {
    queues: [VecDeque<T>; LANES],
    scores: [i64; LANES],
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            queues: std::array::from_fn(|_| VecDeque::new()),
            scores: [0; LANES],
        }
    }
}

impl<T> Lanes<T> {
    /// Queues `item` at the back of lane `lane` (0 highest; out of range:
    /// the lowest).
    pub fn push(&mut self, lane: usize, item: T) {
        self.queues[lane.min(LANES - 1)].push_back(item);
    }

    /// The next item by the lanes' turns under `weights` (a weight of 0
    /// counts as 1).
    pub fn pop(&mut self, weights: [u32; LANES]) -> Option<T> {
        let busy: Vec<usize> = (0..LANES).filter(|&l| !self.queues[l].is_empty()).collect();
        let mut best = *busy.first()?;
        let weight = |l: usize| i64::from(weights[l].max(1));
        let total: i64 = busy.iter().map(|&l| weight(l)).sum();
        for &l in &busy {
            self.scores[l] += weight(l);
            if self.scores[l] > self.scores[best] {
                best = l;
            }
        }
        self.scores[best] -= total;
        let item = self.queues[best].pop_front();
        for l in 0..LANES {
            if self.queues[l].is_empty() {
                self.scores[l] = 0;
            }
        }
        item
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Keeps only the items `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for q in &mut self.queues {
            q.retain(&mut keep);
        }
    }

    /// Items waiting per lane.
    pub fn lengths(&self) -> [usize; LANES] {
        std::array::from_fn(|l| self.queues[l].len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_lanes_share_by_weight_and_bulk_is_never_starved() {
        let mut lanes = Lanes::default();
        for i in 0..1000 {
            lanes.push(0, ('h', i));
            lanes.push(1, ('n', i));
            lanes.push(2, ('b', i));
        }
        let taken: Vec<char> = (0..210).map(|_| lanes.pop([16, 4, 1]).unwrap().0).collect();
        let count = |c| taken.iter().filter(|t| **t == c).count();
        assert_eq!((count('h'), count('n'), count('b')), (160, 40, 10));
        // Interleaved: never more than a turn's worth of waiting for bulk.
        let gaps: Vec<usize> = taken
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == 'b')
            .map(|(i, _)| i)
            .collect();
        assert!(gaps.windows(2).all(|w| w[1] - w[0] <= 21), "{gaps:?}");
    }

    #[test]
    fn an_urgent_item_behind_a_long_bulk_queue_goes_next() {
        let mut lanes = Lanes::default();
        for i in 0..10_000 {
            lanes.push(2, i);
        }
        for _ in 0..500 {
            lanes.pop([16, 4, 1]);
        }
        lanes.push(0, -1);
        assert_eq!(lanes.pop([16, 4, 1]), Some(-1));
        assert_eq!(lanes.len(), 9_500);
        // An idle lane saves up no turns: bulk alone is taken in order.
        assert_eq!(lanes.pop([16, 4, 1]), Some(500));
        lanes.retain(|i| i % 2 == 0);
        assert_eq!(lanes.lengths(), [0, 0, 4_749], "502, 504, ... 9998");
        assert!(!lanes.is_empty());
    }
}
