//! Rebalancing of prefetched work. A worker started with `--prefetch K` holds up to K tasks beyond
//! its slots, not yet started, so it never waits a round trip for its next task. Two things keep
//! that from costing balance or priority:
//!
//! - **Retract**: when a worker has a free slot (and nothing queued fits it), the master asks the
//!   most loaded worker holding tasks it may run to give back unstarted ones (`Retract`). The
//!   worker answers with what it really returned (`Retracted`); the rest had started. Returned
//!   tasks are queued again, keep their attempt (they never ran), and are not placed back on the
//!   worker they came from.
//! - **Displace**: when a task waits because every worker is full, and a worker holds an unstarted
//!   task of lower priority, the waiting task is sent to that worker (whose local queue starts
//!   higher priorities first) and the lower one is retracted. So a prefetched task never starts
//!   before a queued task of higher priority that could take its slot.

use super::{queue_key, Core};
use log::{debug, info};
use protocol::{FromMaster, TaskId, TaskRef, TaskState, WorkerId};
use std::cmp::Reverse;
use std::collections::BTreeSet;

/// Donors looked at in one rebalancing, most loaded first, for one holding tasks an idle worker
/// may run: bounded, as with groups none may fit and there may be thousands.
const DONORS_TRIED: usize = 16;
/// Idle workers looked at in one rebalancing (the first in id order): room for what a donor
/// gives back, while a turn's cost stays bounded when thousands are idle beside donors whose
/// tasks none of them may run (which may recur at every turn).
const IDLE_CONSIDERED: usize = 256;

/// Runs handed to workers beyond their slots (prefetched) and not yet reported started, the ones a
/// worker would start last first: lowest priority, then latest in queue order. Entries are
/// removed when a run starts or finishes; any other way a run ends (worker lost, cancelled,
/// retracted) leaves an entry that is found stale and dropped when it is next looked at.
///
/// Only a task of higher priority displaces, so while every task queued has had one priority
/// nothing is indexed: with 10,000 prefetching workers half of a batch's runs are held, and an
/// insert and a remove in a set of 40,000 for each was a cost W2's two workers never pay. The
/// first task of a second priority turns indexing on for good (`Core::index_held_runs`), from the
/// runs marked prefetched as they were handed out.
#[derive(Debug, Default)]
pub struct Unstarted {
    set: BTreeSet<(i32, Reverse<u64>, TaskId, WorkerId)>,
    /// The one priority of every task queued so far (`None` before the first).
    only_priority: Option<i32>,
    indexing: bool,
}

impl Unstarted {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn indexing(&self) -> bool {
        self.indexing
    }

    /// A task of `priority` is queued. True when it is the first of a second priority: indexing
    /// starts, and the runs held so far must be indexed by the caller.
    pub fn saw_priority(&mut self, priority: i32) -> bool {
        if self.indexing {
            return false;
        }
        match self.only_priority {
            None => {
                self.only_priority = Some(priority);
                false
            }
            Some(p) => {
                self.indexing = p != priority;
                self.indexing
            }
        }
    }

    pub fn insert(&mut self, priority: i32, order: u64, task: TaskId, worker: WorkerId) {
        self.set.insert((priority, Reverse(order), task, worker));
    }

    pub fn remove(&mut self, priority: i32, order: u64, task: TaskId, worker: WorkerId) {
        self.set.remove(&(priority, Reverse(order), task, worker));
    }
}

impl Core {
    /// Indexes the unstarted runs each live worker holds beyond its slots (`Run::prefetched`),
    /// once, when indexing starts (`Unstarted`). O(running tasks), once in a master's life.
    pub(super) fn index_held_runs(&mut self) {
        let mut held = Vec::new();
        for w in self.workers.iter().filter(|w| w.is_alive()) {
            for &task in &w.assigned {
                let Some(t) = self.tasks.get(task) else {
                    continue;
                };
                let prefetched = t
                    .runs()
                    .any(|r| r.worker == w.id && r.prefetched && r.started_ms.is_none());
                if prefetched {
                    held.push((queue_key(self.config.order, task, t), task, w.id));
                }
            }
        }
        for (key, task, worker) in held {
            self.unstarted.insert(key.priority, key.order, task, worker);
        }
    }

    /// Forgets `task`'s unstarted entry on `worker` (it started, or finished).
    pub(super) fn forget_unstarted(&mut self, task: TaskId, worker: WorkerId) {
        if self.unstarted.is_empty() {
            return;
        }
        if let Some(t) = self.tasks.get(task) {
            let k = queue_key(self.config.order, task, t);
            self.unstarted.remove(k.priority, k.order, task, worker);
        }
    }

    /// Whether `worker` has been handed `task` and has not said it started it, and no retract
    /// of it is outstanding.
    fn is_unstarted(&self, task: TaskId, worker: WorkerId) -> Option<TaskRef> {
        let t = self.tasks.get(task)?;
        let run = t
            .runs()
            .find(|r| r.worker == worker && r.started_ms.is_none())?;
        let r = run.task_ref(task);
        let w = self.workers.get(worker)?;
        let asked = w.retracting.iter().any(|refs| refs.contains(&r));
        (w.is_alive() && !asked).then_some(r)
    }

    /// Sends waiting tasks to workers that hold unstarted tasks of lower priority, retracting
    /// those. Runs after placement, so any task still queued found every worker full.
    pub(super) fn displace_prefetched(&mut self, now_ms: u64) {
        while !self.unstarted.is_empty() {
            // `waiting_heads` reads placement, which assignments below change.
            self.refresh_placement();
            let heads: Vec<(TaskId, i32, Option<String>)> = self
                .pools
                .waiting_heads()
                .into_iter()
                .map(|(id, key, group)| (id, key.priority, group.map(str::to_string)))
                .collect();
            let mut moved = false;
            for (head, priority, group) in heads {
                let Some((victim, worker)) =
                    self.lowest_unstarted_below(head, priority, group.as_deref())
                else {
                    continue;
                };
                self.pools.remove(head, group.as_deref());
                self.assign_run(now_ms, head, worker, 0.0);
                let name = self.workers.name(worker).unwrap_or("?").to_string();
                let victim_priority = self.tasks.get(victim.task).map_or(0, |t| t.spec.priority);
                info!(
                    "task {head} (priority {priority}) displaces prefetched task {} \
                     (priority {victim_priority}) on {name}: retracting it",
                    victim.task
                );
                self.send_retract(worker, vec![victim]);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// The unstarted run of lowest priority below `priority` on a live worker that may run `head`
    /// (same group, no copy of it yet). Drops the stale entries it passes.
    fn lowest_unstarted_below(
        &mut self,
        head: TaskId,
        priority: i32,
        group: Option<&str>,
    ) -> Option<(TaskRef, WorkerId)> {
        let mut stale = Vec::new();
        let mut found = None;
        for &entry in &self.unstarted.set {
            let (p, _, task, worker) = entry;
            if p >= priority {
                break;
            }
            let Some(r) = self.is_unstarted(task, worker) else {
                stale.push(entry);
                continue;
            };
            let Some(w) = self.workers.get(worker) else {
                continue;
            };
            let fits = group.is_none() || w.info.group.as_deref() == group;
            let has_copy = self.tasks.get(head).is_some_and(|t| t.runs_on(worker));
            if fits && !has_copy {
                found = Some((entry, r, worker));
                break;
            }
        }
        for entry in stale {
            self.unstarted.set.remove(&entry);
        }
        let (entry, r, worker) = found?;
        self.unstarted.set.remove(&entry);
        Some((r, worker))
    }

    /// When a worker has a free slot, asks the most loaded worker holding unstarted tasks it
    /// may run to give them back. Runs after placement, so a task still queued is one no worker
    /// with room may take (its group has none): it does not stop idle workers from being helped.
    pub(super) fn rebalance(&mut self) {
        // No room anywhere means no idle worker: checked before the index is settled, so a busy
        // batch (every worker full, tasks queued) pays nothing here.
        if self.workers.prefetching() == 0 || !self.pools.any_room() {
            return;
        }
        // From the table's index: nothing here is O(workers) unless there is a donor, and a
        // donor asked leaves the index until it answers.
        let donors = self.workers.donors(DONORS_TRIED);
        if donors.is_empty() {
            return;
        }
        let idle_total = self.workers.idle_count();
        let idle: Vec<(WorkerId, u32, Option<String>)> = self
            .workers
            .idle()
            .take(IDLE_CONSIDERED)
            .map(|w| {
                let free = (w.info.slots as usize).saturating_sub(w.busy()) as u32;
                (w.id, free, w.info.group.clone())
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        let free: u32 = idle.iter().map(|i| i.1).sum();
        // The first donor, most loaded first, with tasks the idle workers may run: the top one
        // may hold only tasks of a group none of them serves.
        for (backlog, donor) in donors {
            let candidates = self.retractable(donor, &idle);
            if candidates.is_empty() {
                continue;
            }
            let take = backlog.min(free as usize);
            let refs: Vec<TaskRef> = candidates.into_iter().take(take).collect();
            // A few names: there may be thousands of idle workers.
            const NAMED: usize = 5;
            let mut names: Vec<String> = idle
                .iter()
                .take(NAMED)
                .filter_map(|i| self.workers.name(i.0).map(str::to_string))
                .collect();
            if idle_total > NAMED {
                names.push(format!("and {} more", idle_total - NAMED));
            }
            let (donor_name, busy, slots) = self.workers.get(donor).map_or(("?", 0, 0), |w| {
                (w.info.name.as_str(), w.busy(), w.info.slots)
            });
            info!(
                "rebalancing: {} idle; asking {donor_name} ({busy} tasks on {slots} slots) to \
                 return {} unstarted tasks",
                names.join(", "),
                refs.len()
            );
            self.send_retract(donor, refs);
            return;
        }
    }

    /// `donor`'s unstarted runs that one of the `idle` workers may run, the ones it would start
    /// last first.
    fn retractable(
        &self,
        donor: WorkerId,
        idle: &[(WorkerId, u32, Option<String>)],
    ) -> Vec<TaskRef> {
        let mut candidates: Vec<(i32, Reverse<u64>, TaskRef)> = Vec::new();
        let Some(w) = self.workers.get(donor) else {
            return Vec::new();
        };
        for &task in &w.assigned {
            let Some(t) = self.tasks.get(task) else {
                continue;
            };
            let runnable = idle
                .iter()
                .any(|(i, _, g)| (t.spec.group.is_none() || t.spec.group == *g) && !t.runs_on(*i));
            if !runnable || t.state != TaskState::Running {
                continue;
            }
            if let Some(r) = self.is_unstarted(task, donor) {
                let k = queue_key(self.config.order, task, t);
                candidates.push((k.priority, Reverse(k.order), r));
            }
        }
        candidates.sort_unstable_by_key(|c| (c.0, c.1, c.2.task));
        candidates.into_iter().map(|c| c.2).collect()
    }

    fn send_retract(&mut self, worker: WorkerId, refs: Vec<TaskRef>) {
        if !self.workers.is_alive(worker) {
            return;
        }
        self.workers.ask_retract(worker, refs.clone());
        self.session.send_worker(worker, FromMaster::Retract(refs));
    }

    /// The answer to `Retract`: these attempts never started and are ours to place again.
    pub(super) fn on_retracted(&mut self, worker: WorkerId, returned: Vec<TaskRef>) {
        let Some((asked, answered)) = self.workers.answer_retract(worker) else {
            return;
        };
        let mut requeued = 0;
        for r in returned {
            if !asked.contains(&r) || !self.is_current(worker, r) {
                debug!("ignoring a returned task {} we did not ask for", r.task);
                continue;
            }
            if let Some(change) = self.workers.unassign(worker, r.task) {
                self.learn(change);
            }
            if self.tasks.has_other_runs(r.task, worker) {
                // An extra copy: it never ran, so it is owed again.
                self.tasks.end_run(r.task, worker);
                self.tasks.uncount_copy(r.task);
            } else {
                self.tasks.unassign(r.task);
            }
            self.forget_unstarted(r.task, worker);
            self.avoid.insert(r.task, worker);
            self.enqueue(r.task);
            requeued += 1;
        }
        self.learn(answered);
        let name = self.workers.name(worker).unwrap_or("?");
        info!(
            "rebalanced: {name} returned {requeued} of {} tasks (the rest had started); \
             queued again",
            asked.len()
        );
    }
}
