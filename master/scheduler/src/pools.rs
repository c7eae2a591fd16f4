//! `Pools`: the queues and placements of worker groups. A task without a group may run on any
//! worker; a task with group G only on G's members. Each pool has its own queue and its own
//! placement over its members; the shared pool's placement holds every worker.
//!
//! The next task to place is the best queue head (priority, then order) among pools that have a
//! worker with a free slot, so a full group never blocks the others and priorities hold across
//! pools wherever the same workers could take either task. With no groups this is exactly one
//! queue and one placement: no extra cost per task.

use super::policy::{Capacity, Pick, Placement, PolicyKind};
use super::queue::{QueueKey, TaskQueue};
use protocol::{TaskId, WorkerId};
use std::collections::BTreeMap;

#[derive(Debug)]
struct Pool {
    queue: TaskQueue,
    placement: Placement,
}

/// What `Pools::queue_lens` gives.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLens {
    pub listed: Vec<(String, u64)>,
    /// Groups with waiting tasks left out, and those tasks.
    pub unlisted_groups: u64,
    pub unlisted_tasks: u64,
}

#[derive(Debug)]
pub struct Pools {
    kind: PolicyKind,
    seed: u64,
    shared: Pool,
    /// Group pools by index; `by_name` maps names to indices (ordered, so scans are deterministic).
    groups: Vec<Pool>,
    by_name: BTreeMap<String, usize>,
}

impl Pools {
    pub fn new(kind: PolicyKind, seed: u64) -> Self {
        Pools {
            kind,
            seed,
            shared: Pool {
                queue: TaskQueue::new(),
                placement: Placement::new(kind, seed),
            },
            groups: Vec::new(),
            by_name: BTreeMap::new(),
        }
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Queued tasks in all pools.
    pub fn len(&self) -> usize {
        self.shared.queue.len() + self.groups.iter().map(|p| p.queue.len()).sum::<usize>()
    }

    /// Queued tasks that a worker of `group` could run: the shared pool's and its group's.
    pub fn waiting_for(&self, group: Option<&str>) -> u64 {
        let own = group
            .and_then(|g| self.by_name.get(g))
            .map_or(0, |&i| self.groups[i].queue.len());
        (self.shared.queue.len() + own) as u64
    }

    /// Queue length per group (`""`: the default pool first, then by name): every group ever
    /// seen while there are at most `limit`; beyond, only the first `limit` with waiting tasks,
    /// the others summed in `QueueLens::unlisted_*` (a submission may name a million groups; a
    /// scrape or an event must stay small).
    pub fn queue_lens(&self, limit: usize) -> QueueLens {
        let mut lens = QueueLens {
            listed: vec![(String::new(), self.shared.queue.len() as u64)],
            unlisted_groups: 0,
            unlisted_tasks: 0,
        };
        let all = self.by_name.len() <= limit;
        for (name, &i) in &self.by_name {
            let n = self.groups[i].queue.len() as u64;
            if all || (n > 0 && lens.listed.len() <= limit) {
                lens.listed.push((name.clone(), n));
            } else if n > 0 {
                lens.unlisted_groups += 1;
                lens.unlisted_tasks += n;
            }
        }
        lens
    }

    fn pool_mut(&mut self, group: Option<&str>) -> &mut Pool {
        let Some(name) = group else {
            return &mut self.shared;
        };
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                let i = self.groups.len();
                // A distinct seed per pool so two groups do not draw the same sequence.
                let seed = self.seed.wrapping_add(i as u64 + 1);
                self.groups.push(Pool {
                    queue: TaskQueue::new(),
                    placement: Placement::new(self.kind, seed),
                });
                self.by_name.insert(name.to_string(), i);
                i
            }
        };
        &mut self.groups[i]
    }

    #[cfg(test)]
    fn pool(&self, group: Option<&str>) -> Option<&Pool> {
        match group {
            None => Some(&self.shared),
            Some(name) => self.by_name.get(name).map(|&i| &self.groups[i]),
        }
    }

    pub fn push(&mut self, id: TaskId, group: Option<&str>, key: QueueKey) -> bool {
        self.pool_mut(group).queue.push(id, key)
    }

    pub fn remove(&mut self, id: TaskId, group: Option<&str>) -> bool {
        match group {
            None => self.shared.queue.remove(id),
            Some(name) => match self.by_name.get(name) {
                Some(&i) => self.groups[i].queue.remove(id),
                None => false,
            },
        }
    }

    #[cfg(test)]
    pub fn contains(&self, id: TaskId, group: Option<&str>) -> bool {
        self.pool(group).is_some_and(|p| p.queue.contains(id))
    }

    /// Whether any worker has room for a task (every worker is a candidate of the shared pool
    /// while it has room, whatever its group).
    pub fn any_room(&self) -> bool {
        self.shared.placement.has_candidates()
    }

    /// A worker's new capacity, in the shared pool and in its group's.
    pub fn update(&mut self, worker: WorkerId, group: Option<&str>, cap: Capacity) {
        self.shared.placement.update(worker, cap);
        if group.is_some() {
            self.pool_mut(group).placement.update(worker, cap);
        }
    }

    pub fn remove_worker(&mut self, worker: WorkerId, group: Option<&str>) {
        self.shared.placement.remove(worker);
        if group.is_some() {
            self.pool_mut(group).placement.remove(worker);
        }
    }

    /// Whether the shared pool and `group`'s hold `worker` as `update` with `cap` would.
    #[cfg(test)]
    pub fn agrees(&self, worker: WorkerId, group: Option<&str>, cap: Option<Capacity>) -> bool {
        let in_group = match group {
            None => true,
            // A group pool is made at the first update; none yet means it was never placed.
            Some(_) => self
                .pool(group)
                .map_or(cap.is_none_or(|c| c.free() == 0), |p| {
                    p.placement.agrees(worker, cap)
                }),
        };
        in_group && self.shared.placement.agrees(worker, cap)
    }

    /// Takes the next task to place and the worker for it, if any task can be placed now.
    /// The caller assigns it and then calls `update` for that worker. `excluded(task, worker)`
    /// keeps copies of one task on distinct workers; a head task whose every candidate is
    /// excluded comes back as `Next::Blocked` (taken out of the queue: the caller pushes it back
    /// once it has placed the rest, so it does not hold up the tasks behind it).
    pub fn next(&mut self, excluded: impl Fn(TaskId, WorkerId) -> bool) -> Next {
        let mut best: Option<(QueueKey, Option<usize>)> = None;
        if self.shared.placement.has_candidates() {
            best = self.shared.queue.peek_key().map(|k| (k, None));
        }
        for (i, pool) in self.groups.iter().enumerate() {
            if !pool.placement.has_candidates() {
                continue;
            }
            if let Some(k) = pool.queue.peek_key() {
                if best.is_none_or(|(b, _)| k.before(&b)) {
                    best = Some((k, Some(i)));
                }
            }
        }
        let Some((_, index)) = best else {
            return Next::Done;
        };
        let pool = match index {
            None => &mut self.shared,
            Some(i) => &mut self.groups[i],
        };
        let Some(id) = pool.queue.pop() else {
            return Next::Done;
        };
        match pool.placement.pick_excluding(|w| excluded(id, w)) {
            Some(pick) => Next::Place(id, pick),
            None => Next::Blocked(id),
        }
    }

    /// The head of every queue whose workers are all full, best first: tasks that wait although
    /// a worker may hold a prefetched task of lower priority.
    pub fn waiting_heads(&self) -> Vec<(TaskId, QueueKey, Option<&str>)> {
        let mut heads = Vec::new();
        if !self.shared.placement.has_candidates() {
            if let (Some(id), Some(k)) = (self.shared.queue.peek(), self.shared.queue.peek_key()) {
                heads.push((id, k, None));
            }
        }
        for (name, &i) in &self.by_name {
            let pool = &self.groups[i];
            if pool.placement.has_candidates() {
                continue;
            }
            if let (Some(id), Some(k)) = (pool.queue.peek(), pool.queue.peek_key()) {
                heads.push((id, k, Some(name.as_str())));
            }
        }
        // Best first: higher priority, then lower order (a total order, as `sort_by` needs).
        heads.sort_by(|a, b| {
            b.1.priority
                .cmp(&a.1.priority)
                .then(a.1.order.cmp(&b.1.order))
        });
        heads
    }
}

/// What `Pools::next` found.
#[derive(Debug, PartialEq)]
pub enum Next {
    Place(TaskId, Pick),
    /// Every free worker already runs a copy of this task (or is the one it was taken from).
    Blocked(TaskId),
    /// Nothing can be placed now.
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(busy: u32, slots: u32) -> Capacity {
        Capacity {
            cpu_percent: 0.0,
            busy,
            slots,
            prefetch: 0,
        }
    }

    fn placed(n: Next) -> Option<(TaskId, Pick)> {
        match n {
            Next::Place(id, pick) => Some((id, pick)),
            _ => None,
        }
    }

    fn key(priority: i32, order: u64) -> QueueKey {
        QueueKey { priority, order }
    }

    #[test]
    fn group_tasks_only_go_to_members_and_shared_tasks_anywhere() {
        let mut p = Pools::new(PolicyKind::LeastLoaded, 0);
        p.update(WorkerId(1), Some("a"), cap(0, 1));
        p.update(WorkerId(2), Some("b"), cap(0, 1));
        p.push(TaskId(1), Some("b"), key(0, 1));
        p.push(TaskId(2), Some("b"), key(0, 2));
        p.push(TaskId(3), None, key(0, 3));
        let (t, pick) = placed(p.next(|_, _| false)).expect("b's task first (oldest)");
        assert_eq!((t, pick.worker), (TaskId(1), WorkerId(2)));
        p.update(WorkerId(2), Some("b"), cap(1, 1));
        // b is full: its second task waits, the shared task goes to a's worker.
        let (t, pick) = placed(p.next(|_, _| false)).expect("shared task");
        assert_eq!((t, pick.worker), (TaskId(3), WorkerId(1)));
        p.update(WorkerId(1), Some("a"), cap(1, 1));
        assert_eq!(p.next(|_, _| false), Next::Done);
        assert_eq!(p.len(), 1);
        assert!(p.contains(TaskId(2), Some("b")));
    }

    #[test]
    fn a_group_without_members_holds_its_tasks() {
        let mut p = Pools::new(PolicyKind::RoundRobin, 0);
        p.update(WorkerId(1), None, cap(0, 4));
        p.push(TaskId(1), Some("gpu"), key(9, 1));
        p.push(TaskId(2), None, key(0, 2));
        let (t, _) = placed(p.next(|_, _| false))
            .expect("the shared task runs despite a higher-priority gpu task");
        assert_eq!(t, TaskId(2));
        assert_eq!(p.next(|_, _| false), Next::Done);
        assert!(p.remove(TaskId(1), Some("gpu")));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn queue_lengths_list_a_bounded_number_of_groups() {
        use crate::queue::QueueKey;
        let mut p = Pools::new(PolicyKind::LeastLoaded, 1);
        let key = QueueKey {
            priority: 0,
            order: 0,
        };
        for g in 0..5u64 {
            p.push(TaskId(g + 1), Some(&format!("g{g}")), key);
        }
        p.remove(TaskId(1), Some("g0"));
        let all = p.queue_lens(5);
        assert_eq!(
            all.listed.len(),
            6,
            "the default pool and every group, empty g0 too"
        );
        assert_eq!((all.unlisted_groups, all.unlisted_tasks), (0, 0));
        let some = p.queue_lens(2);
        let names: Vec<&str> = some.listed.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(names, vec!["", "g1", "g2"], "non-empty ones, by name");
        assert_eq!((some.unlisted_groups, some.unlisted_tasks), (2, 2));
    }
}
