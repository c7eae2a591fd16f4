//! `TaskTable`: every task the master has accepted, indexed by id, with per-state counts kept as
//! tasks move so `status` never scans the table. All state transitions happen here.

use crate::id_hash::IdHashMap;
use crate::jobs::JobTable;
use crate::stored::StoredAt;
use crate::{RestoreError, RestoredTask};
use protocol::{
    Attempt, Incarnation, JobId, TaskId, TaskOutcome, TaskRef, TaskSpec, TaskState, WorkerId,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// What a finished task produced. Held in RAM (`TaskTable::held`) only until the journal holds
/// it (then `Task::stored` says where), or for good without a journal.
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
    /// The master incarnation that handed out `attempt`: this one, or an earlier one for a run
    /// adopted after a restart.
    pub incarnation: Incarnation,
    /// The worker running it, or the one that produced its outcome.
    pub worker: Option<WorkerId>,
    pub cancel_requested: bool,
    /// Handed to a worker at least once (the dispatch latency is observed at the first handout
    /// only). Sits in padding: costs no bytes.
    pub dispatched: bool,
    /// The primary run was handed out beyond its worker's slots: until it starts, a task of
    /// higher priority may displace it. Sits in padding too.
    pub prefetched: bool,
    /// Attempts that ended in a non-zero exit or failed to start (for `retry_failed`).
    pub failed_runs: u32,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Where the journal keeps this final task's outcome (exit code, tails, error); `None` while
    /// it is held in RAM (`TaskTable::held`: not committed yet, or no journal). 8 bytes.
    pub stored: Option<StoredAt>,
    /// Only for tasks that ever ran more than one copy at once (replicas, a speculative copy):
    /// ordinary tasks pay 8 bytes for it, not a `Copies`.
    pub copies: Option<Box<Copies>>,
}

/// The runs of a task beyond its primary one (`Task::worker`, `attempt`, `started_ms`).
#[derive(Debug)]
pub struct Copies {
    /// Live runs besides the primary, each on a distinct worker.
    pub extra: Vec<Run>,
    /// Copies started in this round (the primary included), kept after the task is final as the
    /// `copies` of its outcome. A round ends when the task is re-queued.
    pub started: u32,
    /// The highest attempt number handed out: every copy has its own.
    pub issued: Attempt,
    /// A speculative copy was asked for in this round.
    pub speculated: bool,
}

impl Default for Copies {
    fn default() -> Self {
        Copies {
            extra: Vec::new(),
            started: 0,
            issued: Attempt(0),
            speculated: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub worker: WorkerId,
    pub attempt: Attempt,
    pub incarnation: Incarnation,
    pub started_ms: Option<u64>,
    /// Handed out beyond the worker's slots (`Task::prefetched`).
    pub prefetched: bool,
}

impl Run {
    pub fn task_ref(&self, task: TaskId) -> TaskRef {
        TaskRef {
            task,
            attempt: self.attempt,
            incarnation: self.incarnation,
        }
    }
}

impl Task {
    /// Whether `worker` runs exactly this run (attempt and incarnation) of this task now.
    pub fn is_run(&self, worker: WorkerId, r: TaskRef) -> bool {
        self.runs().any(|run| {
            run.worker == worker && run.attempt == r.attempt && run.incarnation == r.incarnation
        })
    }

    /// Whether some live run of this task is on `worker` (copies must go to distinct workers).
    pub fn runs_on(&self, worker: WorkerId) -> bool {
        self.runs().any(|r| r.worker == worker)
    }

    /// Every live run: the primary first.
    pub fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        let primary = match (self.state, self.worker) {
            (TaskState::Running, Some(worker)) => Some(Run {
                worker,
                attempt: self.attempt,
                incarnation: self.incarnation,
                started_ms: self.started_ms,
                prefetched: self.prefetched,
            }),
            _ => None,
        };
        let extra = match (self.state, &self.copies) {
            (TaskState::Running, Some(c)) => c.extra.as_slice(),
            _ => &[],
        };
        primary.into_iter().chain(extra.iter().copied())
    }

    /// How many copies should run in this round: the replicas, plus one if it was speculated.
    pub fn copies_wanted(&self) -> u32 {
        let speculated = self.copies.as_ref().is_some_and(|c| c.speculated);
        self.spec.replicas.max(1) + u32::from(speculated)
    }

    /// A running task that should get one more copy on another worker.
    pub fn wants_copy(&self) -> bool {
        self.state == TaskState::Running
            && !self.cancel_requested
            && self.copies.as_ref().map_or(1, |c| c.started) < self.copies_wanted()
    }

    /// The attempt number after every one handed out so far.
    fn next_attempt(&self) -> Attempt {
        let issued = self.copies.as_ref().map_or(self.attempt, |c| c.issued);
        Attempt(issued.max(self.attempt).0 + 1)
    }

    /// Makes `r`, a run handed out earlier and reported by its worker (adopted, credited), the
    /// primary. IMPORTANT: the attempt counter must not go back with it: later attempts may have
    /// been handed out and still run (cancelled, on a worker that has not answered yet), and a
    /// number handed out twice makes that worker's answer to our cancel look like the new
    /// run's end. A queued task's own `attempt` is only reserved, so everything below it may be
    /// out: that high-water is kept in `Copies::issued` (boxed only in this rare case). Found by
    /// the simulator's property test (delay plus cut links).
    fn take_reported_run(&mut self, r: TaskRef) {
        if r.attempt < self.attempt {
            let issued = Attempt(self.attempt.0 - 1);
            let c = self.copies.get_or_insert_with(Box::default);
            c.issued = c.issued.max(issued);
        }
        self.attempt = r.attempt;
        self.incarnation = r.incarnation;
        // Not placed by us: whether it was held beyond the slots is unknown, and it has started.
        self.prefetched = false;
        self.count_first_copy();
    }

    /// A run that the master did not place itself (adopted, credited) is this round's copy.
    fn count_first_copy(&mut self) {
        let attempt = self.attempt;
        if let Some(c) = &mut self.copies {
            c.started = c.started.max(1);
            c.issued = c.issued.max(attempt);
        }
    }

    /// How many copies ran for the outcome (`TaskResult::copies`).
    pub fn copies_ran(&self) -> u32 {
        match &self.copies {
            Some(c) => c.started,
            None => u32::from(self.worker.is_some()),
        }
    }
}

pub(crate) const STATES: usize = 9;

pub(crate) fn state_index(s: TaskState) -> usize {
    match s {
        TaskState::Queued => 0,
        TaskState::Running => 1,
        TaskState::Succeeded => 2,
        TaskState::Failed => 3,
        TaskState::TimedOut => 4,
        TaskState::Cancelled => 5,
        TaskState::WorkerLost => 6,
        TaskState::Waiting => 7,
        TaskState::DependencyFailed => 8,
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

#[derive(Debug)]
pub struct TaskTable {
    /// `tasks[i]` has id `base + i + 1`: every id up to `base` is forgotten, and its slot freed.
    tasks: VecDeque<Task>,
    base: u64,
    /// The spec of every forgotten task left inside the table (a tombstone: `get` does not see
    /// it, and it holds no result, no copies and no batch's spec). Compared by pointer.
    tombstone: Arc<TaskSpec>,
    /// Tasks forgotten, tombstones and freed slots together.
    forgotten: u64,
    counts: [u64; STATES],
    /// This master's incarnation: every run this table hands out carries it.
    incarnation: Incarnation,
    /// Every job, its counts moved with each task's state here (`set_state`).
    jobs: JobTable,
    /// The outcomes of final tasks that are not `stored`: finished since the last journal
    /// commit, or every one without a journal (`--no-journal` keeps outputs in memory).
    held: IdHashMap<TaskId, FinalResult>,
}

impl TaskTable {
    pub fn new(incarnation: Incarnation) -> Self {
        TaskTable {
            tasks: VecDeque::new(),
            base: 0,
            tombstone: Arc::new(TaskSpec::new(protocol::TaskKind::Sleep { ms: 0 })),
            forgotten: 0,
            counts: [0; STATES],
            incarnation,
            jobs: JobTable::default(),
            held: IdHashMap::default(),
        }
    }

    /// The outcome of final task `id` if it is held in RAM (not `stored`).
    pub fn held(&self, id: TaskId) -> Option<&FinalResult> {
        self.held.get(&id)
    }

    /// The journal committed final task `id`'s outcome at `at`: RAM keeps only the location.
    /// Ignored for a task that is not final (a stale location cannot name a newer outcome:
    /// a task is final once).
    pub fn store(&mut self, id: TaskId, at: StoredAt) {
        let Some(task) = self.get(id) else {
            return;
        };
        if !task.state.is_final() {
            return;
        }
        self.get_mut(id).stored = Some(at);
        if self.held.remove(&id).is_some() {
            // A burst of finals grows the map; give the memory back once it has drained.
            let cap = self.held.capacity();
            if cap > 1024 && cap > 4 * self.held.len() {
                self.held.shrink_to(2 * self.held.len());
            }
        }
    }

    pub fn jobs(&self) -> &JobTable {
        &self.jobs
    }

    /// Opens the job of `count` tasks from `first` (the next to be added with `add` or
    /// `restore`), following the last job's.
    pub fn open_job(&mut self, name: String, first: TaskId, count: u64, now_ms: u64) -> JobId {
        self.jobs.open(name, first, count, now_ms)
    }

    /// The job of task `id`.
    pub fn job_of(&self, id: TaskId) -> Option<JobId> {
        self.jobs.of_task(id)
    }

    /// Rebuilds a job from the journal (before its tasks).
    pub fn restore_job(&mut self, job: crate::JobRecord) -> Result<(), RestoreError> {
        self.jobs.restore(job)
    }

    /// Ids handed out so far (forgotten ones included): the last id.
    pub fn len(&self) -> usize {
        self.base as usize + self.tasks.len()
    }

    /// Tasks kept: those handed out and not forgotten.
    pub fn kept(&self) -> u64 {
        self.len() as u64 - self.forgotten
    }

    /// The id the next `add` will return. Forgotten ids are never handed out again.
    pub fn next_id(&self) -> TaskId {
        TaskId(self.len() as u64 + 1)
    }

    /// A new task: `Waiting` if its spec waits for others, else `Queued`.
    pub fn add(&mut self, spec: Arc<TaskSpec>, now_ms: u64) -> TaskId {
        let id = self.next_id();
        let state = match spec.after.is_empty() {
            true => TaskState::Queued,
            false => TaskState::Waiting,
        };
        self.tasks.push_back(Task {
            spec,
            state,
            attempt: Attempt(1),
            incarnation: self.incarnation,
            worker: None,
            cancel_requested: false,
            dispatched: false,
            prefetched: false,
            failed_runs: 0,
            submitted_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            stored: None,
            copies: None,
        });
        self.counts[state_index(state)] += 1;
        self.jobs.added(id, state);
        id
    }

    /// The task of `id`; `None` for an id never handed out, or forgotten.
    pub fn get(&self, id: TaskId) -> Option<&Task> {
        let i = id.0.checked_sub(self.base + 1)?;
        let task = self.tasks.get(usize::try_from(i).ok()?)?;
        (!Arc::ptr_eq(&task.spec, &self.tombstone)).then_some(task)
    }

    pub(super) fn get_mut(&mut self, id: TaskId) -> &mut Task {
        // Callers only pass ids they got from `get` or `add`.
        &mut self.tasks[(id.0 - self.base - 1) as usize]
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, &Task)> {
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (TaskId(self.base + i as u64 + 1), t))
            .filter(|(_, t)| !Arc::ptr_eq(&t.spec, &self.tombstone))
    }

    /// Forgets a final task: it leaves the counts (its job's too) and its memory is freed; `get`
    /// no longer finds it. Returns its state, or `None` (nothing changed) for an unknown or
    /// unfinished task. Call [`TaskTable::compact`] after a run of these.
    /// Also returns its job, and whether that job is now wholly forgotten.
    pub fn forget(&mut self, id: TaskId) -> Option<(TaskState, Option<(JobId, bool)>)> {
        let state = self.get(id).map(|t| t.state).filter(|s| s.is_final())?;
        self.counts[state_index(state)] -= 1;
        let job = self.jobs.forgot(id, state);
        self.forgotten += 1;
        let tombstone = Arc::clone(&self.tombstone);
        let task = self.get_mut(id);
        task.spec = tombstone;
        task.stored = None;
        task.copies = None;
        self.held.remove(&id);
        Some((state, job))
    }

    /// The lowest id that may still be held (every one below is forgotten).
    pub fn first_kept(&self) -> TaskId {
        TaskId(self.base + 1)
    }

    /// Marks ids `first ..= last`, none of which came back from the journal, as forgotten
    /// (restart): they are skipped over like any forgotten task, and never handed out again.
    /// `first` must be the next id.
    pub fn skip_forgotten(&mut self, first: TaskId, last: TaskId) {
        debug_assert_eq!(first, self.next_id());
        for id in first.0..=last.0 {
            self.tasks.push_back(Task {
                spec: Arc::clone(&self.tombstone),
                state: TaskState::Succeeded,
                attempt: Attempt(1),
                incarnation: self.incarnation,
                worker: None,
                cancel_requested: false,
                dispatched: false,
                prefetched: false,
                failed_runs: 0,
                submitted_ms: 0,
                started_ms: None,
                finished_ms: None,
                stored: None,
                copies: None,
            });
            self.jobs.skipped(TaskId(id));
            self.forgotten += 1;
            if self.tasks.len() == 1 {
                self.compact();
            }
        }
    }

    /// Frees the forgotten tasks at the front of the table (the oldest: what retention forgets
    /// first), and gives memory back once the table is less than half full.
    pub fn compact(&mut self) {
        let front = self
            .tasks
            .iter()
            .take_while(|t| Arc::ptr_eq(&t.spec, &self.tombstone))
            .count();
        self.tasks.drain(..front);
        self.base += front as u64;
        if self.tasks.capacity() > 2 * self.tasks.len() + 64 {
            self.tasks.shrink_to_fit();
        }
        // Outcomes held in RAM (`--no-journal`, or not committed yet) of forgotten tasks left
        // the map: give its memory back too.
        let cap = self.held.capacity();
        if cap > 1024 && cap > 4 * self.held.len() {
            self.held.shrink_to(2 * self.held.len());
        }
        self.jobs.compact();
    }

    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state_index(state)]
    }

    /// Tasks not in a final state.
    pub fn unfinished(&self) -> u64 {
        self.count(TaskState::Queued)
            + self.count(TaskState::Running)
            + self.count(TaskState::Waiting)
    }

    /// Waiting → Queued: its dependencies succeeded; the caller queues it.
    pub fn release(&mut self, id: TaskId) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Waiting));
        self.set_state(id, TaskState::Queued, None);
    }

    /// The one place a task's state changes: the table's and its job's counts move with it.
    /// `final_ms`: when, for a final state.
    fn set_state(&mut self, id: TaskId, state: TaskState, final_ms: Option<u64>) {
        let task = self.get_mut(id);
        let old = task.state;
        task.state = state;
        self.counts[state_index(old)] -= 1;
        self.counts[state_index(state)] += 1;
        self.jobs.moved(id, old, state, final_ms);
    }

    /// Queued → Running on `worker`: the primary run, the first copy of a round.
    pub fn assign(&mut self, id: TaskId, worker: WorkerId) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Queued));
        self.set_state(id, TaskState::Running, None);
        let incarnation = self.incarnation;
        let task = self.get_mut(id);
        task.worker = Some(worker);
        task.incarnation = incarnation;
        task.started_ms = None;
        task.dispatched = true;
        task.prefetched = false;
        if task.spec.replicas > 1 || task.copies.is_some() {
            let c = task.copies.get_or_insert_with(Box::default);
            // 0 in a new round (`requeue`, `unassign`); more when a round waits for a copy it
            // still owes (`await_copy`).
            c.started += 1;
            c.issued = c.issued.max(task.attempt);
        }
    }

    /// One more copy of a running task, on `worker` (which runs none yet); returns its attempt.
    pub fn add_copy(&mut self, id: TaskId, worker: WorkerId) -> Attempt {
        let incarnation = self.incarnation;
        let task = self.get_mut(id);
        debug_assert!(task.wants_copy() && !task.runs_on(worker));
        let primary = task.attempt;
        let c = task.copies.get_or_insert_with(Box::default);
        let attempt = Attempt(c.issued.max(primary).0 + 1);
        c.issued = attempt;
        c.started += 1;
        c.extra.push(Run {
            worker,
            attempt,
            incarnation,
            started_ms: None,
            prefetched: false,
        });
        attempt
    }

    /// Asks for one speculative copy of a running task; false if it already had one.
    pub fn speculate(&mut self, id: TaskId) -> bool {
        let task = self.get_mut(id);
        let c = task.copies.get_or_insert_with(|| {
            Box::new(Copies {
                started: 1,
                issued: task.attempt,
                ..Copies::default()
            })
        });
        !std::mem::replace(&mut c.speculated, true)
    }

    /// `worker`'s run of `id` was handed out beyond its slots.
    pub fn mark_prefetched(&mut self, id: TaskId, worker: WorkerId) {
        let task = self.get_mut(id);
        if task.worker == Some(worker) {
            task.prefetched = true;
        } else if let Some(c) = &mut task.copies {
            if let Some(r) = c.extra.iter_mut().find(|r| r.worker == worker) {
                r.prefetched = true;
            }
        }
    }

    pub fn mark_started(&mut self, id: TaskId, worker: WorkerId, now_ms: u64) {
        let task = self.get_mut(id);
        if task.worker == Some(worker) {
            task.started_ms = Some(now_ms);
        } else if let Some(c) = &mut task.copies {
            if let Some(r) = c.extra.iter_mut().find(|r| r.worker == worker) {
                r.started_ms = Some(now_ms);
            }
        }
    }

    /// Whether a run other than `worker`'s is live.
    pub fn has_other_runs(&self, id: TaskId, worker: WorkerId) -> bool {
        self.get(id)
            .is_some_and(|t| t.runs().any(|r| r.worker != worker))
    }

    /// Ends `worker`'s run of a task that keeps other runs: if it was the primary, another run
    /// takes its place. Call only when `has_other_runs`.
    pub fn end_run(&mut self, id: TaskId, worker: WorkerId) {
        let task = self.get_mut(id);
        let Some(c) = &mut task.copies else {
            return;
        };
        if let Some(i) = c.extra.iter().position(|r| r.worker == worker) {
            c.extra.swap_remove(i);
        } else if task.worker == Some(worker) {
            if let Some(next) = c.extra.pop() {
                task.worker = Some(next.worker);
                task.attempt = next.attempt;
                task.incarnation = next.incarnation;
                task.started_ms = next.started_ms;
                task.prefetched = next.prefetched;
            }
        }
    }

    /// Makes `worker`'s run the primary and removes every other run, returning them (the first
    /// success wins; the caller cancels the rest).
    pub fn keep_only(&mut self, id: TaskId, worker: WorkerId) -> Vec<Run> {
        let task = self.get_mut(id);
        let Some(c) = &mut task.copies else {
            return Vec::new();
        };
        let mut others = std::mem::take(&mut c.extra);
        if task.worker != Some(worker) {
            if let Some(i) = others.iter().position(|r| r.worker == worker) {
                let winner = others.swap_remove(i);
                if let Some(old) = task.worker {
                    others.push(Run {
                        worker: old,
                        attempt: task.attempt,
                        incarnation: task.incarnation,
                        started_ms: task.started_ms,
                        prefetched: task.prefetched,
                    });
                }
                task.worker = Some(winner.worker);
                task.attempt = winner.attempt;
                task.incarnation = winner.incarnation;
                task.started_ms = winner.started_ms;
                task.prefetched = winner.prefetched;
            }
        }
        others
    }

    /// Running → Queued with the same attempt: its only run was given back unstarted (retracted),
    /// so the attempt never ran and is handed out again.
    pub fn unassign(&mut self, id: TaskId) {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Running));
        self.set_state(id, TaskState::Queued, None);
        let task = self.get_mut(id);
        task.worker = None;
        task.started_ms = None;
        task.prefetched = false;
        if let Some(c) = &mut task.copies {
            c.started = 0;
        }
    }

    /// A retracted extra copy never ran: it no longer counts as started.
    pub fn uncount_copy(&mut self, id: TaskId) {
        if let Some(c) = &mut self.get_mut(id).copies {
            c.started = c.started.saturating_sub(1);
        }
    }

    pub fn request_cancel(&mut self, id: TaskId) {
        self.get_mut(id).cancel_requested = true;
    }

    /// Running → Queued with the next attempt, starting a new round of copies; the caller puts it
    /// back in the queue.
    pub fn requeue(&mut self, id: TaskId) {
        let task = self.back_with_next_attempt(id);
        if let Some(c) = &mut task.copies {
            **c = Copies {
                issued: task.attempt,
                ..Copies::default()
            };
        }
    }

    /// Running → Queued with the next attempt, in the same round: its only live run ended
    /// without success while the round still owes a copy. The copies started so far still
    /// count, so the round runs as many as it wants and no more.
    pub fn await_copy(&mut self, id: TaskId) {
        self.back_with_next_attempt(id);
    }

    /// Running → Queued with the next attempt and no run: what `requeue` and `await_copy` share.
    fn back_with_next_attempt(&mut self, id: TaskId) -> &mut Task {
        debug_assert_eq!(self.get(id).map(|t| t.state), Some(TaskState::Running));
        self.set_state(id, TaskState::Queued, None);
        let task = self.get_mut(id);
        task.attempt = task.next_attempt();
        task.worker = None;
        task.started_ms = None;
        task.prefetched = false;
        task
    }

    /// One more attempt for a task that never reached its worker's report (restart recovery).
    pub fn bump_attempt(&mut self, id: TaskId) {
        let task = self.get_mut(id);
        task.attempt = task.next_attempt();
    }

    /// Counts a failed run credited to a queued task and moves to the next attempt.
    pub fn bump_failed(&mut self, id: TaskId) {
        let task = self.get_mut(id);
        task.failed_runs += 1;
        task.attempt = task.next_attempt();
    }

    /// Running → Queued after a failed run that will be retried.
    pub fn requeue_failed(&mut self, id: TaskId) {
        self.requeue(id);
        self.get_mut(id).failed_runs += 1;
    }

    /// Queued → Running on `worker` with a run the worker already has (a reconnecting worker
    /// reports it): the task is adopted, not started again.
    pub fn adopt(&mut self, worker: WorkerId, r: TaskRef) {
        debug_assert_eq!(self.get(r.task).map(|t| t.state), Some(TaskState::Queued));
        self.set_state(r.task, TaskState::Running, None);
        let task = self.get_mut(r.task);
        task.worker = Some(worker);
        task.take_reported_run(r);
    }

    /// Adds a copy a reconnecting worker reports running (`r` is its own) to a running task.
    pub fn adopt_copy(&mut self, worker: WorkerId, r: TaskRef, now_ms: u64) {
        let attempt = r.attempt;
        let task = self.get_mut(r.task);
        debug_assert!(task.wants_copy() && !task.runs_on(worker));
        let primary = task.attempt;
        let c = task.copies.get_or_insert_with(|| {
            Box::new(Copies {
                started: 1,
                issued: primary,
                ..Copies::default()
            })
        });
        c.issued = c.issued.max(attempt).max(primary);
        c.started += 1;
        c.extra.push(Run {
            worker,
            attempt,
            incarnation: r.incarnation,
            started_ms: Some(now_ms),
            prefetched: false,
        });
    }

    /// When an adopted attempt really started is unknown; the moment we learned of it is the best
    /// bound there is (and keeps `ms` in results meaningful).
    pub fn mark_started_if_unknown(&mut self, id: TaskId, now_ms: u64) {
        let task = self.get_mut(id);
        task.started_ms.get_or_insert(now_ms);
    }

    /// Records which attempt produced an outcome that arrives for a queued task (the result of
    /// an attempt we had given up on, but that finished before anyone ran it again).
    pub fn credit(&mut self, worker: WorkerId, r: TaskRef) {
        let task = self.get_mut(r.task);
        task.worker = Some(worker);
        task.take_reported_run(r);
    }

    /// Rebuilds a task from the journal after a restart. Ids must come densely, in order.
    /// `worker` is the interned id of `outcome.worker`.
    pub fn restore(
        &mut self,
        restored: RestoredTask,
        worker: Option<WorkerId>,
    ) -> Result<(), RestoreError> {
        if restored.id != self.next_id() {
            return Err(RestoreError::MissingTask {
                expected: self.next_id(),
                got: restored.id,
            });
        }
        let id = self.add(restored.spec, restored.submitted_ms);
        if let Some(done) = restored.outcome {
            if !done.state.is_final() {
                return Err(RestoreError::NotFinal { id });
            }
            let done = *done;
            self.set_state(id, done.state, Some(done.finished_ms));
            let task = self.get_mut(id);
            task.attempt = Attempt(done.attempts.max(1));
            task.worker = worker;
            task.started_ms = done.started_ms;
            task.finished_ms = Some(done.finished_ms);
            task.stored = restored.stored;
            if restored.stored.is_none() {
                self.held.insert(
                    id,
                    FinalResult {
                        exit_code: done.exit_code,
                        stdout: done.stdout,
                        stderr: done.stderr,
                        error: done.error,
                    },
                );
            }
            let task = self.get_mut(id);
            if done.copies != task.copies_ran() {
                task.copies = Some(Box::new(Copies {
                    started: done.copies,
                    issued: task.attempt,
                    ..Copies::default()
                }));
            }
        }
        Ok(())
    }

    /// Any unfinished state → a final one.
    pub fn finish(&mut self, id: TaskId, state: TaskState, result: FinalResult, now_ms: u64) {
        debug_assert!(state.is_final());
        debug_assert!(!self.get(id).map(|t| t.state.is_final()).unwrap_or(true));
        self.set_state(id, state, Some(now_ms));
        let task = self.get_mut(id);
        task.finished_ms = Some(now_ms);
        task.stored = None;
        if let Some(c) = &mut task.copies {
            // `attempts` in results counts every run handed out, copies included.
            task.attempt = task.attempt.max(c.issued);
            c.extra = Vec::new();
        }
        self.held.insert(id, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskKind;

    #[test]
    fn a_task_costs_88_bytes() {
        // W4 (queued) and W8 (finished) count every byte of it: flags go in its padding.
        assert_eq!(std::mem::size_of::<Task>(), 88);
    }

    #[test]
    fn counts_follow_transitions() {
        let mut t = TaskTable::new(Incarnation(1));
        let spec = Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 1 }));
        let job = t.open_job("j".into(), TaskId(1), 2, 5);
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
        let s = t.jobs().status(job, 20).expect("the job");
        assert_eq!(
            (s.count(TaskState::Failed), s.count(TaskState::Queued)),
            (1, 1)
        );
        t.jobs().sanity_check(2);
    }
}
