//! `LoadHeap`: the workers with a free slot as an indexed 4-ary min-heap of their placement keys
//! (least-loaded and weighted). The best worker sits at the root; a worker whose key changes moves
//! from where it sits, down after it took a task and up after one finished, so an assignment costs
//! a few comparisons in a shallow tree: no search for the old key, no node to allocate or merge.
//! With 10,000 workers an ordered set paid a remove and an insert for every task placed, which
//! W2's two workers never notice and W5 did.
//!
//! Worker ids are dense (1, 2, 3 ...), so where each one sits is a plain `Vec<u32>` by id.

use protocol::WorkerId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Sort key, best (smallest) first: a score in millionths, a tie-breaker where larger is better,
/// then the id, so no two workers' keys are equal.
pub type LoadKey = (u64, Reverse<u32>, WorkerId);

const ARITY: usize = 4;
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct LoadHeap {
    heap: Vec<LoadKey>,
    /// `pos[id]`: where worker `id` sits in `heap`, or `ABSENT`.
    pos: Vec<u32>,
}

impl LoadHeap {
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The worker's key, if it is held.
    pub fn get(&self, worker: WorkerId) -> Option<&LoadKey> {
        match self.pos.get(worker.0 as usize) {
            Some(&at) if at != ABSENT => self.heap.get(at as usize),
            _ => None,
        }
    }

    /// Holds the worker (`key.2`) with `key`, whether or not it was held before.
    pub fn set(&mut self, key: LoadKey) {
        let id = key.2 .0 as usize;
        if self.pos.len() <= id {
            self.pos.resize(id + 1, ABSENT);
        }
        match self.pos[id] {
            ABSENT => {
                let at = self.heap.len();
                self.heap.push(key);
                self.pos[id] = at as u32;
                self.sift_up(at);
            }
            at => self.replace(at as usize, key),
        }
    }

    /// Lets the worker go; returns whether it was held.
    pub fn remove(&mut self, worker: WorkerId) -> bool {
        let id = worker.0 as usize;
        let at = match self.pos.get(id) {
            Some(&at) if at != ABSENT => at as usize,
            _ => return false,
        };
        self.pos[id] = ABSENT;
        let Some(last) = self.heap.pop() else {
            return false;
        };
        if at < self.heap.len() {
            // The last entry fills the hole; it may belong above or below it.
            self.pos[last.2 .0 as usize] = at as u32;
            self.replace(at, last);
        }
        true
    }

    /// The best key whose worker `excluded` lets through. The root unless it is excluded; else
    /// the heap is walked best first, below excluded entries only (a copy excludes a few workers).
    pub fn first_excluding(&self, excluded: impl Fn(WorkerId) -> bool) -> Option<LoadKey> {
        let root = *self.heap.first()?;
        if !excluded(root.2) {
            return Some(root);
        }
        // Every entry sorts after its parent, so the first one let through is the best.
        let mut frontier = BinaryHeap::new();
        frontier.push(Reverse((root, 0usize)));
        while let Some(Reverse((key, at))) = frontier.pop() {
            if !excluded(key.2) {
                return Some(key);
            }
            let first_child = ARITY * at + 1;
            for child in first_child..(first_child + ARITY).min(self.heap.len()) {
                frontier.push(Reverse((self.heap[child], child)));
            }
        }
        None
    }

    /// Puts `key` at `at` (whose worker's position is already `at`) and moves it into place.
    fn replace(&mut self, at: usize, key: LoadKey) {
        let old = std::mem::replace(&mut self.heap[at], key);
        if key < old {
            self.sift_up(at);
        } else {
            self.sift_down(at);
        }
    }

    fn sift_up(&mut self, mut at: usize) {
        let key = self.heap[at];
        while at > 0 {
            let parent = (at - 1) / ARITY;
            if self.heap[parent] <= key {
                break;
            }
            self.place(at, self.heap[parent]);
            at = parent;
        }
        self.place(at, key);
    }

    fn sift_down(&mut self, mut at: usize) {
        let key = self.heap[at];
        let n = self.heap.len();
        loop {
            let first_child = ARITY * at + 1;
            if first_child >= n {
                break;
            }
            let end = (first_child + ARITY).min(n);
            let mut best = first_child;
            for child in first_child + 1..end {
                if self.heap[child] < self.heap[best] {
                    best = child;
                }
            }
            if self.heap[best] >= key {
                break;
            }
            self.place(at, self.heap[best]);
            at = best;
        }
        self.place(at, key);
    }

    fn place(&mut self, at: usize, key: LoadKey) {
        self.heap[at] = key;
        self.pos[key.2 .0 as usize] = at as u32;
    }

    /// Every entry sorts after its parent and every position points at its entry.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        for (at, key) in self.heap.iter().enumerate() {
            assert_eq!(self.pos[key.2 .0 as usize] as usize, at);
            if at > 0 {
                assert!(self.heap[(at - 1) / ARITY] < *key, "heap order at {at}");
            }
        }
        let held = self.pos.iter().filter(|&&p| p != ABSENT).count();
        assert_eq!(held, self.heap.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn key(score: u64, free: u32, id: u32) -> LoadKey {
        (score, Reverse(free), WorkerId(id))
    }

    #[test]
    fn the_root_is_the_best_and_moves_follow_changes() {
        let mut h = LoadHeap::default();
        h.set(key(5, 1, 1));
        h.set(key(3, 1, 2));
        h.set(key(3, 2, 3));
        assert_eq!(h.first_excluding(|_| false), Some(key(3, 2, 3)));
        h.set(key(9, 0, 3));
        assert_eq!(h.first_excluding(|_| false), Some(key(3, 1, 2)));
        assert_eq!(h.first_excluding(|w| w == WorkerId(2)), Some(key(5, 1, 1)));
        assert!(h.remove(WorkerId(2)));
        assert!(!h.remove(WorkerId(2)));
        assert_eq!(h.get(WorkerId(2)), None);
        assert_eq!(h.get(WorkerId(3)), Some(&key(9, 0, 3)));
        assert_eq!(h.first_excluding(|w| w != WorkerId(3)), Some(key(9, 0, 3)));
        assert_eq!(h.first_excluding(|_| true), None);
        h.sanity_check();
    }

    proptest! {
        /// Whatever is set and removed, the heap picks what an ordered set of the same keys
        /// picks first, with or without exclusions.
        #[test]
        fn picks_as_an_ordered_set_would(
            ops in proptest::collection::vec((1u32..40, 0u64..6, 0u32..3, any::<bool>()), 1..300),
            excluded in proptest::collection::btree_set(1u32..40, 0..6),
        ) {
            let mut h = LoadHeap::default();
            let mut set: BTreeSet<LoadKey> = BTreeSet::new();
            for (id, score, free, keep) in ops {
                if let Some(old) = h.get(WorkerId(id)).copied() {
                    set.remove(&old);
                }
                if keep {
                    h.set(key(score, free, id));
                    set.insert(key(score, free, id));
                } else {
                    h.remove(WorkerId(id));
                }
                h.sanity_check();
                prop_assert_eq!(h.len(), set.len());
                prop_assert_eq!(h.first_excluding(|_| false), set.first().copied());
                let is_excluded = |w: WorkerId| excluded.contains(&w.0);
                prop_assert_eq!(
                    h.first_excluding(is_excluded),
                    set.iter().copied().find(|k| !is_excluded(k.2))
                );
            }
        }
    }
}
