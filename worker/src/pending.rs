//! Assignments held but not started: the worker's share of the master's queue (`--prefetch`).
//!
//! Plain data, no IO and no clock. Tasks leave it best first: higher `spec.priority` first, and in
//! arrival order among equal priorities, since the master sends them in its own queue order.
//!
//! Shaped for the hot path: every assignment goes in and out once, often a batch of zero-length
//! tasks per loop turn, while `Cancel` and `Retract` are rare. So there is one FIFO per priority
//! and no index by attempt: taking attempts out scans the queue once per request, which its bound
//! (`slots + prefetch`, see the session) keeps short. An index (a `HashMap` by attempt beside a
//! `BTreeMap` in start order) halved the worker's zero-length task throughput.

use protocol::{Assignment, TaskRef};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::mem;

#[derive(Default)]
pub struct PendingQueue {
    /// One FIFO per priority. `BTreeMap` iterates keys ascending, hence `Reverse`: the highest
    /// priority comes first. No FIFO is left empty.
    by_priority: BTreeMap<Reverse<i32>, VecDeque<Assignment>>,
    len: usize,
}

impl PendingQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an assignment behind those of equal or higher priority. It does not look for the same
    /// attempt already pending: the master assigns an attempt once, and the executor refuses to
    /// start an attempt that is running.
    pub fn push(&mut self, assignment: Assignment) {
        self.by_priority
            .entry(Reverse(assignment.spec.priority))
            .or_default()
            .push_back(assignment);
        self.len += 1;
    }

    /// The assignment to start next.
    pub fn peek(&self) -> Option<&Assignment> {
        self.by_priority.values().next()?.front()
    }

    /// Puts back an assignment taken out, ahead of those of its priority.
    pub fn push_front(&mut self, assignment: Assignment) {
        self.by_priority
            .entry(Reverse(assignment.spec.priority))
            .or_default()
            .push_front(assignment);
        self.len += 1;
    }

    /// Takes the assignment to start next.
    pub fn pop(&mut self) -> Option<Assignment> {
        let mut first = self.by_priority.first_entry()?;
        let assignment = first.get_mut().pop_front();
        if first.get().is_empty() {
            first.remove();
        }
        debug_assert!(assignment.is_some(), "an empty FIFO was left in the queue");
        self.len -= 1;
        assignment
    }

    /// Takes out those of `tasks` that are pending, in one pass over the queue, and returns them
    /// in the order of `tasks`. A repeated attempt is taken out and returned once.
    pub fn remove(&mut self, tasks: &[TaskRef]) -> Vec<TaskRef> {
        if self.is_empty() || tasks.is_empty() {
            return Vec::new();
        }
        let mut wanted: HashSet<TaskRef> = tasks.iter().copied().collect();
        let mut found = HashSet::new();
        self.by_priority.retain(|_, fifo| {
            fifo.retain(|a| {
                let task = task_ref(a);
                if wanted.remove(&task) {
                    found.insert(task);
                    false
                } else {
                    true
                }
            });
            !fifo.is_empty()
        });
        self.len -= found.len();
        tasks.iter().filter(|t| found.remove(t)).copied().collect()
    }

    /// Forgets every pending assignment; returns how many there were.
    pub fn clear(&mut self) -> usize {
        self.by_priority.clear();
        mem::take(&mut self.len)
    }
}

fn task_ref(assignment: &Assignment) -> TaskRef {
    assignment.task_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Attempt, Incarnation, TaskId, TaskKind, TaskSpec};
    use std::sync::Arc;

    fn assignment(id: u64, priority: i32) -> Assignment {
        let mut spec = TaskSpec::new(TaskKind::Sleep { ms: 1 });
        spec.priority = priority;
        Assignment {
            task: TaskId(id),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
            spec: Arc::new(spec),
        }
    }

    fn r(id: u64) -> TaskRef {
        TaskRef {
            task: TaskId(id),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        }
    }

    fn drain(queue: &mut PendingQueue) -> Vec<u64> {
        let ids: Vec<u64> = std::iter::from_fn(|| queue.pop().map(|a| a.task.0)).collect();
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
        ids
    }

    #[test]
    fn higher_priority_first() {
        let mut queue = PendingQueue::default();
        for (id, priority) in [
            (1, 0),
            (2, 5),
            (3, -2),
            (4, 1),
            (5, i32::MIN),
            (6, i32::MAX),
        ] {
            queue.push(assignment(id, priority));
        }
        assert_eq!(queue.len(), 6);
        assert_eq!(drain(&mut queue), [6, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn arrival_order_among_equal_priorities() {
        let mut queue = PendingQueue::default();
        for (id, priority) in [(5, 1), (3, 1), (9, 2), (1, 1), (7, 2)] {
            queue.push(assignment(id, priority));
        }
        assert_eq!(drain(&mut queue), [9, 7, 5, 3, 1]);
    }

    #[test]
    fn later_arrivals_of_equal_priority_queue_behind_earlier_ones() {
        let mut queue = PendingQueue::default();
        queue.push(assignment(1, 0));
        queue.push(assignment(2, 0));
        assert_eq!(queue.pop().map(|a| a.task), Some(TaskId(1)));
        queue.push(assignment(3, 0));
        // A priority emptied and refilled starts a new FIFO, still in arrival order.
        queue.push(assignment(4, 1));
        assert_eq!(queue.pop().map(|a| a.task), Some(TaskId(4)));
        queue.push(assignment(5, 1));
        assert_eq!(drain(&mut queue), [5, 2, 3]);
    }

    #[test]
    fn remove_takes_out_only_pending_attempts_asked_for() {
        let mut queue = PendingQueue::default();
        for (id, priority) in [(1, 0), (2, 3), (3, 0), (4, 3), (5, 1)] {
            queue.push(assignment(id, priority));
        }
        let other_attempt = TaskRef {
            task: TaskId(3),
            attempt: Attempt(2),
            incarnation: Incarnation(1),
        };
        // Answered in the order asked; 9 was never pending, attempt 2 of task 3 is another run,
        // and a repeated request counts once.
        let asked = [r(5), r(9), r(2), other_attempt, r(5)];
        assert_eq!(queue.remove(&asked), [r(5), r(2)]);
        assert_eq!(queue.len(), 3);
        assert!(queue.remove(&[r(2)]).is_empty(), "already removed");
        assert!(queue.remove(&[]).is_empty());
        assert_eq!(drain(&mut queue), [4, 1, 3]);
        assert!(queue.remove(&[r(1)]).is_empty(), "nothing pending");
    }

    #[test]
    fn remove_can_empty_a_priority() {
        let mut queue = PendingQueue::default();
        for (id, priority) in [(1, 0), (2, 7), (3, 7)] {
            queue.push(assignment(id, priority));
        }
        assert_eq!(queue.remove(&[r(3), r(2)]), [r(3), r(2)]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop().map(|a| a.task), Some(TaskId(1)));
        assert!(queue.pop().is_none());
    }

    #[test]
    fn clear_counts_what_it_dropped() {
        let mut queue = PendingQueue::default();
        for id in 1..=3 {
            queue.push(assignment(id, id as i32));
        }
        assert_eq!(queue.clear(), 3);
        assert!(queue.is_empty());
        assert!(queue.pop().is_none());
        assert!(queue.remove(&[r(1)]).is_empty());
        queue.push(assignment(1, 0));
        assert_eq!(drain(&mut queue), [1], "usable again");
    }
}
