//! `TaskTable`: every task the master has accepted, indexed by id, with per-state counts kept as
//! tasks move so `status` never scans the table. All state transitions happen here.

use protocol::{Attempt, TaskId, TaskOutcome, TaskSpec, TaskState, WorkerId};
use std::sync::Arc;

/// What a finished task produced. Boxed in `Task` so queued tasks do not pay for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinalResult {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Task {
    /// Shared by every copy of a `--count` batch: a million copies cost one spec.
    pub spec: Arc<TaskSpec>,
    pub state: TaskState,
    /// The current (or last) attempt; 1 for the first run.
    pub attempt: Attempt,
    /// The worker running it, or the one that produced its outcome.
    pub worker: Option<WorkerId>,
    pub cancel_requested: bool,
    /// Attempts that ended in a non-zero exit or failed to start (for `retry_failed`).
    pub failed_runs: u32,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub result: Option<Box<FinalResult>>,
}

const STATES: usize = 7;

fn state_index(s: TaskState) -> usize {
    match s {
        TaskState::Queued => 0,
        TaskState::Running => 1,
        TaskState::Succeeded => 2,
        TaskState::Failed => 3,
        TaskState::TimedOut => 4,
        TaskState::Cancelled => 5,
        TaskState::WorkerLost => 6,
    }
}

/// The final state an outcome leads to, and what to keep of it.
pub fn settle(outcome: TaskOutcome) -> (TaskState, FinalResult) {
    match outcome {
        TaskOutcome::Exited {
            code,
            stdout_tail,
            stderr_tail,
        } => (
            if code == 0 {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            },
            FinalResult {
                exit_code: Some(code),
                stdout: stdout_tail,
                stderr: stderr_tail,
                error: None,
            },
        ),
        TaskOutcome::Failed { error } => (
            TaskState::Failed,
            FinalResult {
                error: Some(error),
                ..FinalResult::default()
            },
        ),
        TaskOutcome::TimedOut {
            stdout_tail,
            stderr_tail,
        } => (
            TaskState::TimedOut,
            FinalResult {
                exit_code: None,
                stdout: stdout_tail,
                stderr: stderr_tail,
                error: Some("timed out".into()),
            },
        ),
        TaskOutcome::Cancelled => (
            TaskState::Cancelled,
            FinalResult {
                error: Some("cancelled".into()),
                ..FinalResult::default()
            },
        ),
        TaskOutcome::WorkerLost => (
            TaskState::WorkerLost,
            FinalResult {
                error: Some("worker lost, retries exhausted".into()),
                ..FinalResult::default()
            },
        ),
    }
}

/// A task as the journal gives it back after a restart.
#[derive(Debug)]
pub struct Restored {
    pub id: TaskId,
    pub spec: Arc<TaskSpec>,
    pub submitted_ms: u64,
    pub outcome: Option<RestoredOutcome>,
}

#[derive(Debug)]
pub struct RestoredOutcome {
    pub state: TaskState,
    pub attempts: u32,
    pub worker: Option<WorkerId>,
    pub started_ms: Option<u64>,
    pub finished_ms: u64,
    pub result: FinalResult,
}

#[derive(Debug, Default)]
pub struct TaskTable {
    /// `tasks[i]` has id `i + 1`.
    tasks: Vec<Task>,
    counts: [u64; STATES],
}

impl TaskTable {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The id the next `add` will return.
    pub fn next_id(&self) -> TaskId {
        TaskId(self.tasks.len() as u64 + 1)
    }

    pub fn add(&mut self, spec: Arc<TaskSpec>, now_ms: u64) -> TaskId {
        let id = self.next_id();
        self.tasks.push(Task {
            spec,
            state: TaskState::Queued,
            attempt: Attempt(1),
            worker: None,
            cancel_requested: false,
            failed_runs: 0,
            submitted_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            result: None,
        });
        self.counts[state_index(TaskState::Queued)] += 1;
        id
    }

    pub fn get(&self, id: TaskId) -> Option<&Task> {
        let i = (id.0 as usize).checked_sub(1)?;
        self.tasks.get(i)
    }

    fn get_mut(&mut self, id: TaskId) -> &mut Task {
        // Callers only pass ids they got from `get` or `add`.
        &mut self.tasks[id.0 as usize - 1]
    }

    pub fn iter(&self) -> impl Iterator<Item = (TaskId, &Task)> {
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (TaskId(i as u64 + 1), t))
    }

    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state_index(state)]
    }

    /// Tasks not in a final state.
    pub fn unfinished(&self) -> u64 {
        self.count(TaskState::Queued) + self.count(TaskState::Running)
    }

    fn set_state(&mut self, id: TaskId, state: TaskState) {
        let task = self.get_mut(id);
        let old = task.state;
        task.state = state;
        self.counts[state_index(old)] -= 1;
        self.counts[state_index(state)] += 1;
    }

    /// Queued → Running on `worker`.
    pub fn assign(&mut self, id: TaskId, worker: WorkerId) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Queued));
        self.set_state(id, TaskState::Running);
        let task = self.get_mut(id);
        task.worker = Some(worker);
        task.started_ms = None;
    }

    pub fn mark_started(&mut self, id: TaskId, now_ms: u64) {
        self.get_mut(id).started_ms = Some(now_ms);
    }

    pub fn request_cancel(&mut self, id: TaskId) {
        self.get_mut(id).cancel_requested = true;
    }

    /// Running → Queued with the next attempt; the caller puts it back in the queue.
    pub fn requeue(&mut self, id: TaskId) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Running));
        self.set_state(id, TaskState::Queued);
        let task = self.get_mut(id);
        task.attempt = Attempt(task.attempt.0 + 1);
        task.worker = None;
        task.started_ms = None;
    }

    /// One more attempt for a task that never reached its worker's report (restart recovery).
    pub fn bump_attempt(&mut self, id: TaskId) {
        let task = self.get_mut(id);
        task.attempt = Attempt(task.attempt.0 + 1);
    }

    /// Counts a failed run credited to a queued task and moves to the next attempt.
    pub fn bump_failed(&mut self, id: TaskId) {
        let task = self.get_mut(id);
        task.failed_runs += 1;
        task.attempt = Attempt(task.attempt.0 + 1);
    }

    /// Running → Queued after a failed run that will be retried.
    pub fn requeue_failed(&mut self, id: TaskId) {
        self.requeue(id);
        self.get_mut(id).failed_runs += 1;
    }

    /// Queued → Running on `worker` with an attempt the worker already runs (a reconnecting worker
    /// reports it): the task is adopted, not started again.
    pub fn adopt(&mut self, id: TaskId, worker: WorkerId, attempt: Attempt) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Queued));
        self.set_state(id, TaskState::Running);
        let task = self.get_mut(id);
        task.worker = Some(worker);
        task.attempt = attempt;
    }

    /// When an adopted attempt really started is unknown; the moment we learned of it is the best
    /// bound there is (and keeps `ms` in results meaningful).
    pub fn mark_started_if_unknown(&mut self, id: TaskId, now_ms: u64) {
        let task = self.get_mut(id);
        task.started_ms.get_or_insert(now_ms);
    }

    /// Records which attempt produced an outcome that arrives for a queued task (the result of
    /// an attempt we had given up on, but that finished before anyone ran it again).
    pub fn credit(&mut self, id: TaskId, worker: WorkerId, attempt: Attempt) {
        let task = self.get_mut(id);
        task.worker = Some(worker);
        task.attempt = attempt;
    }

    /// Rebuilds a task from the journal after a restart. Ids must come densely, in order.
    pub fn restore(&mut self, restored: Restored) -> Result<(), String> {
        if restored.id != self.next_id() {
            return Err(format!(
                "journal is missing task {} (next restored task is {})",
                self.next_id(),
                restored.id
            ));
        }
        let id = self.add(restored.spec, restored.submitted_ms);
        if let Some(done) = restored.outcome {
            if !done.state.is_final() {
                return Err(format!("journal holds a non-final outcome for task {id}"));
            }
            self.set_state(id, done.state);
            let task = self.get_mut(id);
            task.attempt = Attempt(done.attempts.max(1));
            task.worker = done.worker;
            task.started_ms = done.started_ms;
            task.finished_ms = Some(done.finished_ms);
            task.result = Some(Box::new(done.result));
        }
        Ok(())
    }

    /// Any unfinished state → a final one.
    pub fn finish(&mut self, id: TaskId, state: TaskState, result: FinalResult, now_ms: u64) {
        debug_assert!(state.is_final());
        debug_assert!(!self.get(id).map(|t| t.state.is_final()).unwrap_or(true));
        self.set_state(id, state);
        let task = self.get_mut(id);
        task.finished_ms = Some(now_ms);
        task.result = Some(Box::new(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskKind;

    #[test]
    fn counts_follow_transitions() {
        let mut t = TaskTable::default();
        let spec = Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 1 }));
        let a = t.add(spec.clone(), 5);
        let b = t.add(spec, 5);
        assert_eq!((a, b), (TaskId(1), TaskId(2)));
        assert_eq!(t.count(TaskState::Queued), 2);
        t.assign(a, WorkerId(1));
        t.requeue(a);
        assert_eq!(t.get(a).map(|x| x.attempt), Some(Attempt(2)));
        t.assign(a, WorkerId(2));
        let (state, res) = settle(TaskOutcome::Exited {
            code: 7,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        });
        t.finish(a, state, res, 9);
        assert_eq!(t.count(TaskState::Failed), 1);
        assert_eq!(t.unfinished(), 1);
        assert!(t.get(TaskId(0)).is_none());
        assert!(t.get(TaskId(3)).is_none());
    }
}
