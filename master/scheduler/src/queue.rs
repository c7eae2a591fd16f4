//! `TaskQueue`: an indexed binary max-heap of queued task ids. Besides push and pop it removes any
//! task by id in O(log n) (cancel, retract), because it knows where every id sits in the heap.
//!
//! Ids are dense (1, 2, 3 ...), so the position index is a plain `Vec<u32>` indexed by id rather than
//! a hash map: 4 bytes per task ever seen and no hashing on the hot path.

use protocol::TaskId;
use std::cmp::Ordering;

/// Where a task sorts: higher `priority` first, then lower `order` (the submit sequence for FIFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey {
    pub priority: i32,
    pub order: u64,
}

impl QueueKey {
    /// True when `self` must leave the queue before `other`.
    pub fn before(&self, other: &QueueKey) -> bool {
        match self.priority.cmp(&other.priority) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.order < other.order,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: QueueKey,
    id: TaskId,
}

const ABSENT: u32 = u32::MAX;

/// Below this many entries a drained queue keeps its allocations.
const KEEP_ENTRIES: usize = 1024;

#[derive(Debug, Default)]
pub struct TaskQueue {
    heap: Vec<Entry>,
    /// `pos[id - base]` is the id's index in `heap`, or `ABSENT`. It spans only the ids queued
    /// since the queue was last empty (then it is freed and `base` moves on), so a master that
    /// has run millions of tasks does not keep 4 bytes for each of them (issue 13, W8).
    pos: Vec<u32>,
    base: u64,
}

impl TaskQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.slot(id).is_some()
    }

    /// Adds `id`; returns false (and changes nothing) if it is already queued.
    pub fn push(&mut self, id: TaskId, key: QueueKey) -> bool {
        if self.contains(id) {
            return false;
        }
        if self.pos.is_empty() {
            self.base = id.0;
        } else if id.0 < self.base {
            self.rebase(id.0);
        }
        let idx = self.index(id);
        if idx >= self.pos.len() {
            // Grow geometrically: ids arrive in increasing order, one resize per doubling.
            let new_len = (idx + 1).max(self.pos.len() * 2);
            self.pos.resize(new_len, ABSENT);
        }
        assert!(
            self.heap.len() < ABSENT as usize,
            "queue holds at most 2^32-1 tasks"
        );
        self.heap.push(Entry { key, id });
        let at = self.heap.len() - 1;
        self.pos[idx] = at as u32;
        self.sift_up(at);
        true
    }

    /// The task that should run next, without removing it.
    pub fn peek(&self) -> Option<TaskId> {
        self.heap.first().map(|e| e.id)
    }

    /// The next task's key, to compare the heads of several queues.
    pub fn peek_key(&self) -> Option<QueueKey> {
        self.heap.first().map(|e| e.key)
    }

    pub fn pop(&mut self) -> Option<TaskId> {
        let first = self.heap.first()?.id;
        self.remove(first);
        Some(first)
    }

    /// Removes `id` wherever it is; returns false if it was not queued.
    pub fn remove(&mut self, id: TaskId) -> bool {
        let Some(at) = self.slot(id) else {
            return false;
        };
        let idx = self.index(id);
        self.pos[idx] = ABSENT;
        let Some(last) = self.heap.pop() else {
            return false;
        };
        if at < self.heap.len() {
            // The last entry fills the hole; it may belong above or below it.
            self.place(at, last);
            if at > 0 && last.key.before(&self.heap[(at - 1) / 2].key) {
                self.sift_up(at);
            } else {
                self.sift_down(at);
            }
        }
        self.shrink();
        true
    }

    /// Gives back what a drained burst grew: all of `pos` once the queue is empty, and half of
    /// `heap` whenever it is three-quarters empty (amortised O(1) per removal).
    fn shrink(&mut self) {
        if self.heap.is_empty() {
            if self.pos.len() > KEEP_ENTRIES {
                self.pos = Vec::new();
            } else {
                self.pos.clear();
            }
        }
        let cap = self.heap.capacity();
        if cap > KEEP_ENTRIES && self.heap.len() < cap / 4 {
            self.heap.shrink_to(cap / 2);
        }
    }

    /// Moves the span down to cover `low` (an older task queued again): room for as many ids
    /// below it again as the span holds, so re-queues below the span cost amortised O(1).
    fn rebase(&mut self, low: u64) {
        let base = low.saturating_sub(self.pos.len() as u64);
        let shift = (self.base - base) as usize;
        let mut pos = Vec::with_capacity(shift + self.pos.len());
        pos.resize(shift, ABSENT);
        pos.extend_from_slice(&self.pos);
        self.pos = pos;
        self.base = base;
    }

    /// `id`'s place in `pos`; only for ids in the span (queued ones).
    fn index(&self, id: TaskId) -> usize {
        (id.0 - self.base) as usize
    }

    /// Queued ids in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.heap.iter().map(|e| e.id)
    }

    fn slot(&self, id: TaskId) -> Option<usize> {
        let idx = usize::try_from(id.0.checked_sub(self.base)?).ok()?;
        match self.pos.get(idx) {
            Some(&p) if p != ABSENT => Some(p as usize),
            _ => None,
        }
    }

    /// Puts `e` at `at` and records where it now sits.
    fn place(&mut self, at: usize, e: Entry) {
        let idx = self.index(e.id);
        self.pos[idx] = at as u32;
        self.heap[at] = e;
    }

    /// Moves the entry at `at` up to where it belongs: parents move down into the hole, the
    /// entry is written once.
    fn sift_up(&mut self, mut at: usize) {
        let e = self.heap[at];
        while at > 0 {
            let parent = (at - 1) / 2;
            if !e.key.before(&self.heap[parent].key) {
                break;
            }
            self.place(at, self.heap[parent]);
            at = parent;
        }
        self.place(at, e);
    }

    /// Moves the entry at `at` down to where it belongs. Bottom-up: the hole follows the better
    /// child to a leaf (one comparison a level), then the entry climbs back. A pop moves the last
    /// entry to the root, and in a FIFO queue that entry belongs at the bottom: it climbs
    /// nothing, where a classic sift-down compares twice a level and swaps every level.
    fn sift_down(&mut self, start: usize) {
        let n = self.heap.len();
        let e = self.heap[start];
        let mut at = start;
        loop {
            let left = 2 * at + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child = if right < n && self.heap[right].key.before(&self.heap[left].key) {
                right
            } else {
                left
            };
            self.place(at, self.heap[child]);
            at = child;
        }
        while at > start {
            let parent = (at - 1) / 2;
            if !e.key.before(&self.heap[parent].key) {
                break;
            }
            self.place(at, self.heap[parent]);
            at = parent;
        }
        self.place(at, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(priority: i32, order: u64) -> QueueKey {
        QueueKey { priority, order }
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = TaskQueue::new();
        q.push(TaskId(1), key(0, 1));
        q.push(TaskId(2), key(9, 2));
        q.push(TaskId(3), key(0, 3));
        q.push(TaskId(4), key(9, 4));
        q.push(TaskId(5), key(-1, 5));
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|t| t.0).collect();
        assert_eq!(order, vec![2, 4, 1, 3, 5]);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut q = TaskQueue::new();
        for i in 1..=100_000 {
            q.push(TaskId(i), key(0, i));
        }
        while q.pop().is_some() {}
        assert_eq!(
            (q.pos.capacity(), q.heap.capacity() <= 2 * KEEP_ENTRIES),
            (0, true)
        );
        // The next batch's span starts at its own ids; an older id still finds its place.
        q.push(TaskId(200_000), key(0, 2));
        assert_eq!((q.base, q.pos.len()), (200_000, 1), "a span of one id");
        q.push(TaskId(7), key(0, 1));
        assert!(q.base <= 7 && q.pos.len() < 300_000);
        assert_eq!(
            (q.pop(), q.pop(), q.pop()),
            (Some(TaskId(7)), Some(TaskId(200_000)), None)
        );
    }

    #[test]
    fn remove_and_duplicates() {
        let mut q = TaskQueue::new();
        assert!(q.push(TaskId(1), key(0, 1)));
        assert!(!q.push(TaskId(1), key(5, 1)), "already queued");
        assert!(q.push(TaskId(2), key(0, 2)));
        assert!(q.remove(TaskId(1)));
        assert!(!q.remove(TaskId(1)));
        assert!(!q.remove(TaskId(99)));
        assert_eq!(q.pop(), Some(TaskId(2)));
        assert_eq!(q.pop(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64, i32),
        Pop,
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..64, -3i32..3).prop_map(|(id, p)| Op::Push(id, p)),
            Just(Op::Pop),
            (1u64..64).prop_map(Op::Remove),
        ]
    }

    proptest! {
        // The heap must agree with a sorted-vector model after every operation.
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(op(), 1..300)) {
            let mut q = TaskQueue::new();
            let mut model: Vec<(i32, u64)> = Vec::new(); // (priority, id); order = id
            for op in ops {
                match op {
                    Op::Push(id, p) => {
                        let fresh = !model.iter().any(|&(_, m)| m == id);
                        prop_assert_eq!(q.push(TaskId(id), key(p, id)), fresh);
                        if fresh { model.push((p, id)); }
                    }
                    Op::Pop => {
                        model.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                        let want = if model.is_empty() { None } else { Some(TaskId(model.remove(0).1)) };
                        prop_assert_eq!(q.pop(), want);
                    }
                    Op::Remove(id) => {
                        let had = model.iter().position(|&(_, m)| m == id);
                        if let Some(i) = had { model.remove(i); }
                        prop_assert_eq!(q.remove(TaskId(id)), had.is_some());
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
