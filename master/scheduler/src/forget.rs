//! Retention: dropping finished tasks (`master forget`, `master --keep-finished D`). A forgotten
//! task leaves the task table (its memory is freed: `TaskTable::forget`, `compact`), its job's
//! counts (a job all of whose tasks are forgotten is forgotten too), the journal
//! (`Record::Forgotten`) and the log store (`LogOp::Forget`). Its id is never handed out again.
//! Only final tasks are ever forgotten: nothing waits for them, no worker runs them, and the
//! dependency gates they ended were settled when they did.
//!
//! Like the rest of the core this does no IO: the journal and the log store are told through
//! `Output`s, in order with the reply.

use crate::{ClientId, Core, LogOp, Record};
use log::info;
use protocol::limits::MAX_FORGET_LISTED;
use protocol::{FromMaster, JobForgotten, JobId, TaskId, TaskState};

/// `--keep-finished` forgets at most this many tasks per check, so one huge job cannot stall a
/// loop turn (the rest go at the next check, which then comes at once).
pub(crate) const RETENTION_TASKS_PER_CHECK: u64 = 200_000;
/// How often `--keep-finished` looks for jobs to forget, at most (its duration, if shorter, but
/// not below `RETENTION_MIN_INTERVAL_MS`).
const RETENTION_INTERVAL_MS: u64 = 1_000;
const RETENTION_MIN_INTERVAL_MS: u64 = 100;

/// What one forget did: the ranges of ids forgotten and the per-job summary.
#[derive(Debug, Default)]
struct Forgetting {
    /// Inclusive, in the order forgotten (ascending within a request), adjacent ones merged.
    ranges: Vec<(TaskId, TaskId)>,
    tasks: u64,
    jobs: Vec<JobForgotten>,
    jobs_left_out: u64,
    /// The last job counted in `jobs_left_out`.
    left_out_last: Option<JobId>,
}

impl Forgetting {
    fn note(&mut self, id: TaskId, job: Option<(JobId, bool)>) {
        self.tasks += 1;
        match self.ranges.last_mut() {
            Some((_, last)) if last.0 + 1 == id.0 => *last = id,
            _ => self.ranges.push((id, id)),
        }
        let Some((job, whole)) = job else {
            return;
        };
        if let Some(j) = self.jobs.last_mut().filter(|j| j.job == job) {
            j.tasks += 1;
            j.whole |= whole;
        } else if self.jobs.len() < MAX_FORGET_LISTED {
            self.jobs.push(JobForgotten {
                job,
                tasks: 1,
                whole,
            });
        } else if self.left_out_last != Some(job) {
            self.left_out_last = Some(job);
            self.jobs_left_out += 1;
        }
    }
}

/// At most `MAX_FORGET_LISTED` ids, and the full count.
#[derive(Debug, Default)]
struct Listed {
    ids: Vec<TaskId>,
    count: u64,
}

impl Listed {
    fn push(&mut self, id: TaskId) {
        self.count += 1;
        if self.ids.len() < MAX_FORGET_LISTED {
            self.ids.push(id);
        }
    }
}

impl Core {
    /// `Forget`: the finished tasks named, and those of the jobs named (both empty: every task),
    /// that finished at least `finished_before_ms` ago if given.
    pub(crate) fn on_forget(
        &mut self,
        now_ms: u64,
        client: ClientId,
        ids: Vec<TaskId>,
        jobs: Vec<JobId>,
        finished_before_ms: Option<u64>,
    ) {
        let ranges = match self.job_ranges(&jobs) {
            Ok(ranges) => ranges,
            Err(job) => return self.error(client, self.unknown_job(job)),
        };
        let cutoff = finished_before_ms.map(|d| now_ms.saturating_sub(d));
        let mut done = Forgetting::default();
        let mut unfinished = Listed::default();
        let mut unknown = Listed::default();
        let everything = ids.is_empty() && jobs.is_empty();
        let mut sorted = ids;
        sorted.sort_unstable();
        for id in sorted {
            match self.tasks.get(id) {
                None => unknown.push(id),
                Some(t) if !t.state.is_final() => unfinished.push(id),
                Some(_) => self.forget_one(id, cutoff, &mut done),
            }
        }
        let all = [(self.tasks.first_kept(), TaskId(self.tasks.len() as u64))];
        let walk: &[(TaskId, TaskId)] = if everything { &all } else { &ranges };
        for &(first, last) in walk {
            for i in first.0..=last.0 {
                let id = TaskId(i);
                match self.tasks.get(id) {
                    None => {}
                    // Unfinished tasks of a job are counted, not listed one by one.
                    Some(t) if !t.state.is_final() => unfinished.count += 1,
                    Some(_) => self.forget_one(id, cutoff, &mut done),
                }
            }
        }
        self.forgotten(&done);
        if done.tasks > 0 {
            info!(
                "forgot {}{}",
                protocol::plural::count(done.tasks, "task", "tasks"),
                jobs_note(&done)
            );
        }
        self.session.send_client(
            client,
            FromMaster::Forgotten {
                tasks: done.tasks,
                jobs: done.jobs,
                jobs_left_out: done.jobs_left_out,
                unfinished: unfinished.ids,
                unfinished_count: unfinished.count,
                unknown: unknown.ids,
                unknown_count: unknown.count,
            },
        );
    }

    /// Forgets `id` (final) if it finished at or before `cutoff` (if any).
    fn forget_one(&mut self, id: TaskId, cutoff: Option<u64>, done: &mut Forgetting) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let (finished_ms, dispatched) = (t.finished_ms, t.dispatched);
        if let Some(cutoff) = cutoff {
            // A task with no end time (none is final without one) is never too young.
            if finished_ms.is_some_and(|at| at > cutoff) {
                return;
            }
        }
        if let Some((state, job)) = self.tasks.forget(id) {
            self.metrics.forgotten_succeeded += u64::from(state == TaskState::Succeeded);
            self.metrics.forgotten_dispatched += u64::from(dispatched);
            done.note(id, job);
        }
    }

    /// Tells the journal and the log store, and frees the table's front.
    fn forgotten(&mut self, done: &Forgetting) {
        if done.ranges.is_empty() {
            return;
        }
        self.tasks.compact();
        if self.config.persist {
            self.session.push_record(Record::Forgotten {
                ranges: done.ranges.clone(),
            });
        }
        self.session.push_log(LogOp::Forget {
            ranges: done.ranges.clone(),
        });
    }

    /// `--keep-finished`: forgets the tasks of every job that has been wholly finished for at
    /// least `keep_ms` (a job with unfinished tasks keeps its finished ones until it ends), one
    /// log line per job. A scan of the jobs not forgotten yet, at most once per interval.
    pub(crate) fn retain(&mut self, now_ms: u64) {
        let Some(keep_ms) = self.config.keep_finished_ms else {
            return;
        };
        if now_ms < self.next_retention_ms {
            return;
        }
        let interval = keep_ms.clamp(RETENTION_MIN_INTERVAL_MS, RETENTION_INTERVAL_MS);
        self.next_retention_ms = now_ms + interval;
        let cutoff = now_ms.saturating_sub(keep_ms);
        let due: Vec<(JobId, TaskId, TaskId)> = self
            .tasks
            .jobs()
            .iter()
            .filter(|(_, j)| j.unfinished() == 0 && j.finished_ms().is_some_and(|at| at <= cutoff))
            .map(|(id, j)| (id, j.first, j.last()))
            .collect();
        let mut done = Forgetting::default();
        for (job, first, last) in due {
            if done.tasks >= RETENTION_TASKS_PER_CHECK {
                // The rest at the next turn.
                self.next_retention_ms = now_ms;
                break;
            }
            let before = done.tasks;
            for i in first.0..=last.0 {
                if done.tasks >= RETENTION_TASKS_PER_CHECK {
                    break;
                }
                self.forget_one(TaskId(i), None, &mut done);
            }
            if done.tasks > before {
                info!(
                    "forgot {} of job {job} (older than {})",
                    protocol::plural::count(done.tasks - before, "finished task", "finished tasks"),
                    protocol::duration::format_duration(std::time::Duration::from_millis(keep_ms))
                );
            }
        }
        self.forgotten(&done);
    }

    /// When `retain` wants to run next.
    pub(crate) fn retention_deadline(&self) -> Option<u64> {
        self.config.keep_finished_ms.map(|_| self.next_retention_ms)
    }

    /// The error for a job that is not there: forgotten, or never made.
    pub(crate) fn unknown_job(&self, job: JobId) -> String {
        if self.tasks.jobs().was_forgotten(job) {
            format!("unknown job {job} (its tasks were forgotten)")
        } else {
            format!("unknown job {job}")
        }
    }
}

/// ` (job 3)`, ` (jobs 3, 4)`, or nothing.
fn jobs_note(done: &Forgetting) -> String {
    match done.jobs.as_slice() {
        [] => String::new(),
        [j] => format!(" (job {})", j.job),
        jobs if jobs.len() <= 8 => {
            let ids: Vec<String> = jobs.iter().map(|j| j.job.to_string()).collect();
            format!(" (jobs {})", ids.join(", "))
        }
        jobs => format!(" ({} jobs)", jobs.len() as u64 + done.jobs_left_out),
    }
}
