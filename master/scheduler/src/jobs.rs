//! `JobTable`: every job (one per `Submit`), with its tasks counted by state. A job's tasks are
//! one contiguous range of ids and jobs are made in id order, so the job of a task is a binary
//! search over the jobs' first ids, and the counts move with each task's transition (the task
//! table calls [`JobTable::moved`] from its one `set_state`): a `jobs` query never scans tasks.

use crate::tasks::{state_index, STATES};
use crate::RestoreError;
use protocol::{JobId, JobStatus, TaskId, TaskState};
use std::collections::VecDeque;

#[derive(Debug)]
pub struct Job {
    pub name: String,
    /// Its tasks are `first .. first + count`.
    pub first: TaskId,
    pub count: u64,
    pub submitted_ms: u64,
    counts: [u64; STATES],
    /// Its tasks forgotten (`master forget`): out of `counts`. Once all are, the job is too.
    forgotten: u64,
    /// When its latest task became final (the job's end once none is unfinished).
    last_final_ms: Option<u64>,
}

impl Job {
    /// The last id of its range.
    pub fn last(&self) -> TaskId {
        TaskId(self.first.0 + self.count - 1)
    }

    pub fn contains(&self, id: TaskId) -> bool {
        id >= self.first && id.0 - self.first.0 < self.count
    }

    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state_index(state)]
    }

    /// Tasks not in a final state.
    pub fn unfinished(&self) -> u64 {
        TaskState::ALL
            .iter()
            .filter(|s| !s.is_final())
            .map(|&s| self.count(s))
            .sum()
    }

    /// How many of its tasks were added (a job is made before its tasks).
    fn added(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.forgotten
    }

    /// When its last task became final, once none is unfinished.
    pub fn finished_ms(&self) -> Option<u64> {
        self.last_final_ms.filter(|_| self.unfinished() == 0)
    }

    /// How many of its tasks were forgotten.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Every task of it is forgotten: the job is, too (`get` and `iter` skip it).
    pub fn is_forgotten(&self) -> bool {
        self.forgotten == self.count
    }
}

/// A job as the journal keeps it and gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    pub first: TaskId,
    pub count: u64,
    pub submitted_ms: u64,
}

#[derive(Debug)]
pub struct JobTable {
    /// `jobs[i]` has id `base + i + 1`; their ranges follow each other in id order. Jobs up to
    /// `base` were forgotten and their entries freed (`compact`).
    jobs: VecDeque<Job>,
    base: u64,
    /// The first task id no job covers.
    end_task: TaskId,
    /// The index of the job last moved: transitions come in bursts within one job (a batch
    /// dispatched, finishing), so most skip the binary search.
    hint: usize,
}

impl Default for JobTable {
    fn default() -> Self {
        JobTable {
            jobs: VecDeque::new(),
            base: 0,
            end_task: TaskId(1),
            hint: 0,
        }
    }
}

impl JobTable {
    /// Job ids handed out so far (forgotten ones included): the latest job's id.
    pub fn len(&self) -> usize {
        self.base as usize + self.jobs.len()
    }

    /// The id the next `open` will return.
    pub fn next_id(&self) -> JobId {
        JobId(self.len() as u64 + 1)
    }

    /// The lowest job id that may still be held (every one below is forgotten).
    pub fn first_kept(&self) -> JobId {
        JobId(self.base + 1)
    }

    /// The first task id no job covers.
    pub fn next_task(&self) -> TaskId {
        self.end_task
    }

    fn index(&self, id: JobId) -> Option<usize> {
        usize::try_from(id.0.checked_sub(self.base + 1)?).ok()
    }

    /// Frees the forgotten jobs at the front (retention forgets the oldest first).
    pub fn compact(&mut self) {
        let front = self.jobs.iter().take_while(|j| j.is_forgotten()).count();
        if front == 0 {
            return;
        }
        self.jobs.drain(..front);
        self.base += front as u64;
        self.hint = self.hint.saturating_sub(front);
        if self.jobs.capacity() > 2 * self.jobs.len() + 64 {
            self.jobs.shrink_to_fit();
        }
    }

    /// A new job of `count` tasks from `first`, which must follow the last job's range; its
    /// tasks are then added to the task table (which counts them here).
    pub fn open(&mut self, name: String, first: TaskId, count: u64, now_ms: u64) -> JobId {
        debug_assert_eq!(first, self.next_task(), "job ranges follow each other");
        debug_assert!(count > 0);
        self.jobs.push_back(Job {
            name,
            first,
            count,
            submitted_ms: now_ms,
            counts: [0; STATES],
            forgotten: 0,
            last_final_ms: None,
        });
        self.end_task = TaskId(first.0 + count);
        JobId(self.len() as u64)
    }

    /// Rebuilds a job from the journal; ids and ranges must come densely, in order.
    pub fn restore(&mut self, r: JobRecord) -> Result<(), RestoreError> {
        if r.id != self.next_id() || r.first != self.next_task() || r.count == 0 {
            return Err(RestoreError::BadJob {
                job: r.id,
                first: r.first,
                count: r.count,
                expected_job: self.next_id(),
                expected_first: self.next_task(),
            });
        }
        let id = self.open(r.name, r.first, r.count, r.submitted_ms);
        debug_assert_eq!(id, r.id);
        Ok(())
    }

    /// Job `id`; `None` for one never made, or forgotten.
    pub fn get(&self, id: JobId) -> Option<&Job> {
        let i = self.index(id)?;
        self.jobs.get(i).filter(|j| !j.is_forgotten())
    }

    /// Whether job `id` was made and then forgotten (a clearer answer than "unknown").
    pub fn was_forgotten(&self, id: JobId) -> bool {
        if id.0 >= 1 && id.0 <= self.base {
            return true;
        }
        self.index(id)
            .and_then(|i| self.jobs.get(i))
            .is_some_and(Job::is_forgotten)
    }

    /// Every job not forgotten, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (JobId, &Job)> {
        let base = self.base;
        self.jobs
            .iter()
            .enumerate()
            .map(move |(i, j)| (JobId(base + i as u64 + 1), j))
            .filter(|(_, j)| !j.is_forgotten())
    }

    /// A final task of some job was forgotten; returns its job and whether that job is now
    /// wholly forgotten (its name is freed then).
    pub fn forgot(&mut self, task: TaskId, state: TaskState) -> Option<(JobId, bool)> {
        let job = self.job_mut(task)?;
        job.counts[state_index(state)] -= 1;
        job.forgotten += 1;
        let whole = job.is_forgotten();
        if whole {
            job.name = String::new();
        }
        Some((JobId(self.base + self.hint as u64 + 1), whole))
    }

    /// A forgotten task of some job was skipped over at a restart (the journal no longer holds it).
    pub fn skipped(&mut self, task: TaskId) {
        if let Some(job) = self.job_mut(task) {
            job.forgotten += 1;
            debug_assert!(job.added() <= job.count);
            if job.is_forgotten() {
                job.name = String::new();
            }
        }
    }

    /// The job holding task `id`: O(log jobs).
    pub fn of_task(&self, id: TaskId) -> Option<JobId> {
        let i = self
            .jobs
            .partition_point(|j| j.first <= id)
            .checked_sub(1)?;
        self.jobs[i]
            .contains(id)
            .then_some(JobId(self.base + i as u64 + 1))
    }

    fn job_mut(&mut self, task: TaskId) -> Option<&mut Job> {
        let i = match self.jobs.get(self.hint) {
            Some(j) if j.contains(task) => self.hint,
            _ => self
                .jobs
                .partition_point(|j| j.first <= task)
                .checked_sub(1)?,
        };
        self.hint = i;
        let job = &mut self.jobs[i];
        job.contains(task).then_some(job)
    }

    /// A task of some job entered the table, in `state`.
    pub fn added(&mut self, task: TaskId, state: TaskState) {
        let job = self.job_mut(task);
        debug_assert!(job.is_some(), "task {task} added before its job");
        if let Some(job) = job {
            job.counts[state_index(state)] += 1;
            debug_assert!(job.added() <= job.count);
        }
    }

    /// A task moved from `old` to `new`; `now_ms` is when, if `new` is final.
    pub fn moved(&mut self, task: TaskId, old: TaskState, new: TaskState, now_ms: Option<u64>) {
        if let Some(job) = self.job_mut(task) {
            job.counts[state_index(old)] -= 1;
            job.counts[state_index(new)] += 1;
            if let Some(at) = now_ms.filter(|_| new.is_final()) {
                job.last_final_ms = Some(job.last_final_ms.map_or(at, |t| t.max(at)));
            }
        }
    }

    /// What `jobs` shows of job `id` at `now_ms`.
    pub fn status(&self, id: JobId, now_ms: u64) -> Option<JobStatus> {
        let job = self.get(id)?;
        let finished_ms = job.last_final_ms.filter(|_| job.unfinished() == 0);
        let end = finished_ms.unwrap_or(now_ms);
        Some(JobStatus {
            id,
            name: job.name.clone(),
            first: job.first,
            tasks: job.count,
            counts: TaskState::ALL.iter().map(|&s| (s, job.count(s))).collect(),
            submitted_ms: job.submitted_ms,
            finished_ms,
            duration_ms: end.saturating_sub(job.submitted_ms),
        })
    }

    /// Tests: every job's counts add up to its tasks once all are added.
    #[cfg(test)]
    pub fn sanity_check(&self, tasks: u64) {
        let mut next = self.jobs.front().map_or(self.end_task, |j| j.first);
        let all = self.jobs.iter().enumerate();
        for (id, job) in all.map(|(i, j)| (JobId(self.base + i as u64 + 1), j)) {
            assert_eq!(job.first, next, "job {id} does not follow the one before");
            assert_eq!(job.added(), job.count, "job {id}'s counts do not add up");
            next = TaskId(job.last().0 + 1);
        }
        assert_eq!(next.0 - 1, tasks, "jobs do not cover the task table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_finds_its_job_and_counts_follow_it() {
        let mut jobs = JobTable::default();
        let a = jobs.open("a".into(), TaskId(1), 3, 10);
        let b = jobs.open("b".into(), TaskId(4), 1, 20);
        assert_eq!((a, b), (JobId(1), JobId(2)));
        for id in 1..=4 {
            jobs.added(TaskId(id), TaskState::Queued);
        }
        assert_eq!(jobs.of_task(TaskId(0)), None);
        assert_eq!(jobs.of_task(TaskId(3)), Some(a));
        assert_eq!(jobs.of_task(TaskId(4)), Some(b));
        assert_eq!(jobs.of_task(TaskId(5)), None);
        jobs.moved(TaskId(2), TaskState::Queued, TaskState::Running, None);
        jobs.moved(TaskId(4), TaskState::Queued, TaskState::Succeeded, Some(25));
        let s = jobs.status(a, 100).expect("job a");
        assert_eq!(
            (s.count(TaskState::Queued), s.count(TaskState::Running)),
            (2, 1)
        );
        assert_eq!((s.finished_ms, s.duration_ms), (None, 90));
        let s = jobs.status(b, 100).expect("job b");
        assert_eq!((s.finished_ms, s.duration_ms), (Some(25), 5));
        assert_eq!(s.counts.len(), TaskState::ALL.len());
        jobs.sanity_check(4);
    }

    #[test]
    fn restore_refuses_jobs_out_of_order() {
        let mut jobs = JobTable::default();
        let rec = |id, first, count| JobRecord {
            id: JobId(id),
            name: "j".into(),
            first: TaskId(first),
            count,
            submitted_ms: 1,
        };
        assert!(jobs.restore(rec(1, 1, 2)).is_ok());
        assert!(jobs.restore(rec(3, 3, 2)).is_err(), "an id skipped");
        assert!(jobs.restore(rec(2, 4, 2)).is_err(), "a range skipped");
        assert!(jobs.restore(rec(2, 3, 0)).is_err(), "an empty job");
        assert!(jobs.restore(rec(2, 3, 2)).is_ok());
    }
}
