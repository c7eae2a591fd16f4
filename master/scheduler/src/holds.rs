//! `Holds`: queued tasks kept out of the queue until a time (retry backoff, and the grace period
//! after a restart), by release time and by task, the two kept together.

use crate::id_hash::IdHashMap;
use protocol::TaskId;
use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub struct Holds {
    /// Ordered by release time, then id: tasks are released in one deterministic order.
    by_time: BTreeSet<(u64, TaskId)>,
    /// Each held task's release time; only looked up, never iterated.
    by_task: IdHashMap<TaskId, u64>,
}

impl Holds {
    /// Holds `id` until `until_ms` (replacing an earlier hold).
    pub fn hold(&mut self, id: TaskId, until_ms: u64) {
        self.unhold(id);
        self.by_time.insert((until_ms, id));
        self.by_task.insert(id, until_ms);
    }

    /// Takes `id` out of the holds; returns whether it was held.
    pub fn unhold(&mut self, id: TaskId) -> bool {
        match self.by_task.remove(&id) {
            Some(at) => self.by_time.remove(&(at, id)),
            None => false,
        }
    }

    /// The next task whose time has come by `now_ms`, taken out of the holds.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<TaskId> {
        let &(at, id) = self.by_time.first()?;
        if at > now_ms {
            return None;
        }
        self.by_time.pop_first();
        self.by_task.remove(&id);
        Some(id)
    }

    /// When the next hold ends.
    pub fn next_release(&self) -> Option<u64> {
        self.by_time.first().map(|&(at, _)| at)
    }

    #[cfg(test)]
    pub fn contains(&self, id: TaskId) -> bool {
        self.by_task.contains_key(&id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        assert_eq!(self.by_time.len(), self.by_task.len());
        self.by_task.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_in_time_order_and_a_new_hold_replaces_the_old() {
        let mut h = Holds::default();
        h.hold(TaskId(1), 50);
        h.hold(TaskId(2), 10);
        h.hold(TaskId(1), 5);
        assert_eq!(h.len(), 2);
        assert_eq!(h.next_release(), Some(5));
        assert_eq!(h.pop_due(4), None);
        assert_eq!(h.pop_due(20), Some(TaskId(1)));
        assert_eq!(h.pop_due(20), Some(TaskId(2)));
        assert_eq!(h.pop_due(100), None);
        h.hold(TaskId(3), 1);
        assert!(h.unhold(TaskId(3)) && !h.unhold(TaskId(3)));
        assert_eq!(h.len(), 0);
    }
}
