//! `GivenUp`: runs this incarnation handed to a worker and then took back when it lost that
//! worker, kept until their task is final. A late report of such a run (the worker reconnects
//! and says it finished, or still runs it) is believed only from the worker it was handed to:
//! any other worker's report of it is forged, or a mistake, and is dropped.
//!
//! Runs that a live worker holds are in the task table (`Task::is_run`); runs handed out by an
//! earlier incarnation are not known at all (assignments are not journaled), so for those only
//! what the master can still check is checked (see `Core::may_report`).

use crate::id_hash::IdHashMap;
use protocol::{Attempt, TaskId, TaskRef, WorkerId};

/// Runs kept per task: a task loses at most `max_retries + 1` primary runs, and a handful of
/// copies. Beyond this the oldest is forgotten (its late result is then dropped and the task
/// runs again: waste, never a wrong result).
const MAX_PER_TASK: usize = 8;

#[derive(Debug, Default)]
pub struct GivenUp {
    /// Only looked up by task, never iterated.
    runs: IdHashMap<TaskId, Vec<(WorkerId, Attempt)>>,
}

impl GivenUp {
    /// The master gave up on `worker`'s run `attempt` of `task` (it lost the worker).
    pub fn record(&mut self, task: TaskId, worker: WorkerId, attempt: Attempt) {
        let runs = self.runs.entry(task).or_default();
        if runs.len() == MAX_PER_TASK {
            runs.remove(0);
        }
        runs.push((worker, attempt));
    }

    /// Whether `r` (of this incarnation) was handed to `worker` and given up.
    pub fn was_handed(&self, worker: WorkerId, r: TaskRef) -> bool {
        self.runs
            .get(&r.task)
            .is_some_and(|runs| runs.contains(&(worker, r.attempt)))
    }

    /// `task` is final: no late report of it is credited any more.
    pub fn forget(&mut self, task: TaskId) {
        self.runs.remove(&task);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Incarnation;

    fn r(task: u64, attempt: u32) -> TaskRef {
        TaskRef {
            task: TaskId(task),
            attempt: Attempt(attempt),
            incarnation: Incarnation(1),
        }
    }

    #[test]
    fn only_the_worker_it_was_handed_to_may_report_it() {
        let mut g = GivenUp::default();
        g.record(TaskId(1), WorkerId(1), Attempt(1));
        assert!(g.was_handed(WorkerId(1), r(1, 1)));
        assert!(!g.was_handed(WorkerId(2), r(1, 1)), "another worker");
        assert!(!g.was_handed(WorkerId(1), r(1, 2)), "another attempt");
        assert!(!g.was_handed(WorkerId(1), r(2, 1)), "another task");
        g.forget(TaskId(1));
        assert!(!g.was_handed(WorkerId(1), r(1, 1)));
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn a_task_keeps_at_most_its_latest_runs() {
        let mut g = GivenUp::default();
        for a in 1..=(MAX_PER_TASK as u32 + 2) {
            g.record(TaskId(1), WorkerId(a), Attempt(a));
        }
        assert!(!g.was_handed(WorkerId(1), r(1, 1)), "the oldest is gone");
        assert!(g.was_handed(WorkerId(10), r(1, 10)));
    }
}
