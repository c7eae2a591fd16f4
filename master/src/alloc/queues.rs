//! `AllocQueues`: the allocation queues' decisions, without IO. It takes the time, the demand
//! (queued tasks a queue's workers could run), the workers that joined from allocations and the
//! batch system's answers, and returns what to run (`Action`). The shell runs the commands off
//! the loop and persists the queues (`AllocQueues` is serde) before it runs any submission, so a
//! restarted master knows every job it may have submitted.

use log::{info, warn};
use protocol::{AllocState, AllocationStatus, QueueParams, QueueStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Submission failures in a row (sbatch errors, jobs that ended with no worker) that pause a
/// queue.
pub const FAILURES_TO_PAUSE: u32 = 3;
/// The first pause; each later one doubles, up to `PAUSE_MAX_MS`.
const PAUSE_FIRST_MS: u64 = 60_000;
const PAUSE_MAX_MS: u64 = 30 * 60_000;
/// How often the batch system's queue is read while a queue has active allocations.
pub const POLL_EVERY_MS: u64 = 2_000;
/// Finished and failed allocations kept per queue for `alloc list`.
const KEPT_ENDED: usize = 20;
/// The most queues one master holds.
pub const MAX_QUEUES: usize = 64;

/// A worker that joined from an allocation: (job id, name, connected, slots).
pub type AllocWorker<'a> = (&'a str, &'a str, bool, u32);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submit a job named `job_name` of `workers` workers for `queue` (answer: `submitted`).
    Submit {
        queue: u32,
        job_name: String,
        workers: u32,
    },
    /// Read the batch system's queue for these job names (answer: `polled`).
    Poll {
        job_names: Vec<String>,
        issued_ms: u64,
    },
    /// Cancel these jobs (best effort; `polled` sees them go).
    Cancel { job_ids: Vec<String> },
}

/// A job as the batch system lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub job_name: String,
    pub job_id: String,
    /// Slurm's state name (`PENDING`, `RUNNING`, `COMPLETING` ...).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Allocation {
    job_name: String,
    job_id: Option<String>,
    state: AllocState,
    workers: u32,
    submitted_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    error: Option<String>,
    joined: BTreeSet<String>,
    /// When the job id became known: a poll issued before cannot speak of the job.
    known_ms: u64,
    /// `sbatch` is running for it in this master's life (not persisted: after a restart a
    /// `Submitting` allocation is looked up by name).
    #[serde(skip)]
    in_flight: bool,
    /// Cancelled by `alloc remove` once its id is known.
    cancel: bool,
    /// Tasks waiting when it was submitted (for the log line).
    #[serde(default)]
    waiting: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queue {
    id: u32,
    name: String,
    params: QueueParams,
    removing: bool,
    failures: u32,
    pauses: u32,
    paused_until_ms: Option<u64>,
    paused_reason: Option<String>,
    next_seq: u32,
    /// The most slots a worker of this queue had: what one pending worker is expected to take.
    slots_seen: u32,
    allocations: Vec<Allocation>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AllocQueues {
    /// Names this master's jobs (part of every job name), so two masters never take each
    /// other's jobs for their own.
    tag: String,
    next_queue: u32,
    queues: BTreeMap<u32, Queue>,
    #[serde(skip)]
    next_poll_ms: u64,
    #[serde(skip)]
    poll_in_flight: bool,
    /// Something changed that the store must write before the shell acts.
    #[serde(skip)]
    dirty: bool,
}

impl AllocQueues {
    pub fn new(tag: String) -> Self {
        AllocQueues {
            tag,
            next_queue: 1,
            ..AllocQueues::default()
        }
    }

    /// Whether the state changed since the last `take_dirty`.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// The queue's settings, for the shell that writes its job scripts.
    pub fn params(&self, queue: u32) -> Option<(&str, &QueueParams)> {
        self.queues
            .get(&queue)
            .map(|q| (q.name.as_str(), &q.params))
    }

    pub fn add(&mut self, params: QueueParams) -> Result<(u32, String), String> {
        if self.queues.len() >= MAX_QUEUES {
            return Err(format!(
                "a master holds at most {MAX_QUEUES} allocation queues"
            ));
        }
        let id = self.next_queue;
        let name = params
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{id}", params.manager));
        if self.queues.values().any(|q| q.name == name) {
            return Err(format!("an allocation queue named {name:?} exists already"));
        }
        self.next_queue += 1;
        info!(
            "alloc {name}: created ({} workers at most, {} per allocation, backlog {}, idle \
             timeout {} ms)",
            params.max_workers, params.workers_per_alloc, params.backlog, params.idle_timeout_ms
        );
        self.queues.insert(
            id,
            Queue {
                id,
                name: name.clone(),
                params,
                removing: false,
                failures: 0,
                pauses: 0,
                paused_until_ms: None,
                paused_reason: None,
                next_seq: 1,
                slots_seen: 1,
                allocations: Vec::new(),
            },
        );
        self.dirty = true;
        Ok((id, name))
    }

    /// Stops submitting for `id`, cancels its pending jobs; running ones drain and the queue
    /// goes once none is left. Returns the job ids to cancel and how many allocations drain.
    pub fn remove(&mut self, id: u32) -> Result<(Vec<String>, u32), String> {
        let q = self
            .queues
            .get_mut(&id)
            .ok_or_else(|| format!("no allocation queue {id}"))?;
        q.removing = true;
        let mut cancelled = Vec::new();
        let mut draining = 0;
        for a in q.allocations.iter_mut().filter(|a| a.state.is_active()) {
            match a.state {
                AllocState::Running => draining += 1,
                _ => {
                    a.cancel = true;
                    cancelled.extend(a.job_id.clone());
                }
            }
        }
        info!(
            "alloc {}: removing ({} pending cancelled, {draining} running left to drain)",
            q.name,
            cancelled.len()
        );
        self.dirty = true;
        self.drop_removed();
        Ok((cancelled, draining))
    }

    fn drop_removed(&mut self) {
        self.queues.retain(|_, q| {
            let gone = q.removing && !q.allocations.iter().any(|a| a.state.is_active());
            if gone {
                info!("alloc {}: removed", q.name);
            }
            !gone
        });
    }

    /// When `tick` has something to do next, if ever.
    pub fn next_due_ms(&self) -> Option<u64> {
        (!self.queues.is_empty()).then_some(self.next_poll_ms)
    }

    /// Decides. `waiting(group)`: queued tasks a worker of that group could run; `workers`:
    /// (job id, worker name, connected, slots) of every worker that joined from an allocation.
    pub fn tick(
        &mut self,
        now_ms: u64,
        waiting: impl Fn(Option<&str>) -> u64,
        workers: &[AllocWorker],
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.learn_workers(now_ms, workers);
        let mut cancel = Vec::new();
        for q in self.queues.values_mut() {
            for a in &mut q.allocations {
                if a.cancel && a.state.is_active() && a.state != AllocState::Running {
                    if let Some(id) = &a.job_id {
                        cancel.push(id.clone());
                        a.cancel = false;
                    }
                }
            }
            if let Some(submit) = decide(q, now_ms, waiting(q.params.group.as_deref()), &self.tag) {
                actions.push(submit);
                self.dirty = true;
            }
        }
        if !cancel.is_empty() {
            actions.push(Action::Cancel { job_ids: cancel });
        }
        if now_ms >= self.next_poll_ms && !self.poll_in_flight {
            let job_names: Vec<String> = self
                .queues
                .values()
                .flat_map(|q| &q.allocations)
                .filter(|a| a.state.is_active() && !a.in_flight)
                .map(|a| a.job_name.clone())
                .collect();
            self.next_poll_ms = now_ms + POLL_EVERY_MS;
            if !job_names.is_empty() {
                self.poll_in_flight = true;
                actions.push(Action::Poll {
                    job_names,
                    issued_ms: now_ms,
                });
            }
        }
        actions
    }

    fn learn_workers(&mut self, now_ms: u64, workers: &[AllocWorker]) {
        if workers.is_empty() {
            return;
        }
        for q in self.queues.values_mut() {
            // Ended allocations gain no workers: only active ones are matched.
            let active = q
                .allocations
                .iter_mut()
                .filter(|a| a.job_id.is_some() && a.state.is_active());
            for a in active {
                let job = a.job_id.as_deref();
                for &(_, name, _, slots) in workers.iter().filter(|w| Some(w.0) == job) {
                    if !a.joined.contains(name) {
                        a.joined.insert(name.to_string());
                        info!(
                            "alloc {}: worker {name} joined from job {}",
                            q.name,
                            job_label(a)
                        );
                        q.slots_seen = q.slots_seen.max(slots);
                        q.failures = 0;
                        q.pauses = 0;
                        self.dirty = true;
                    }
                }
                if !a.joined.is_empty() && a.state == AllocState::Pending {
                    a.state = AllocState::Running;
                    a.started_ms.get_or_insert(now_ms);
                    self.dirty = true;
                }
            }
        }
    }

    /// `sbatch` answered for `job_name`: its job id, or why it failed.
    pub fn submitted(&mut self, now_ms: u64, job_name: &str, result: Result<String, String>) {
        let Some(q) = self
            .queues
            .values_mut()
            .find(|q| q.allocations.iter().any(|a| a.job_name == job_name))
        else {
            return;
        };
        let removing = q.removing;
        let Some(a) = q.allocations.iter_mut().find(|a| a.job_name == job_name) else {
            return;
        };
        a.in_flight = false;
        self.dirty = true;
        match result {
            Ok(job_id) => {
                info!(
                    "alloc {}: submitted job {job_id} for {} ({} waiting)",
                    q.name,
                    protocol::plural::count(u64::from(a.workers), "worker", "workers"),
                    protocol::plural::count(a.waiting, "task", "tasks")
                );
                a.state = AllocState::Pending;
                a.job_id = Some(job_id);
                a.known_ms = now_ms;
                a.cancel = removing;
            }
            Err(error) => {
                a.state = AllocState::Failed;
                a.finished_ms = Some(now_ms);
                a.error = Some(error.clone());
                warn!("alloc {}: job submission failed: {error}", q.name);
                failed(q, now_ms, &error);
            }
        }
    }

    /// The batch system listed these of the polled jobs (`Err`: the poll itself failed).
    pub fn polled(&mut self, now_ms: u64, issued_ms: u64, result: Result<Vec<Listed>, String>) {
        self.poll_in_flight = false;
        let listed = match result {
            Ok(listed) => listed,
            Err(e) => {
                warn!("alloc: reading the batch queue failed: {e}");
                return;
            }
        };
        for q in self.queues.values_mut() {
            for i in 0..q.allocations.len() {
                let a = &mut q.allocations[i];
                if !a.state.is_active() || a.in_flight || a.known_ms > issued_ms {
                    continue;
                }
                match listed.iter().find(|l| l.job_name == a.job_name) {
                    Some(l) => {
                        if a.job_id.is_none() {
                            info!(
                                "alloc {}: job {} found by name after a restart",
                                q.name, l.job_id
                            );
                            a.job_id = Some(l.job_id.clone());
                            if q.removing {
                                a.cancel = true;
                            }
                        }
                        let state = match l.state.as_str() {
                            "PENDING" | "CONFIGURING" | "REQUEUED" | "SUSPENDED" => {
                                AllocState::Pending
                            }
                            _ => AllocState::Running,
                        };
                        if state == AllocState::Running && a.state != AllocState::Running {
                            info!("alloc {}: job {} running", q.name, l.job_id);
                            a.started_ms.get_or_insert(now_ms);
                            a.state = state;
                        } else if a.state == AllocState::Submitting {
                            a.state = state;
                        }
                    }
                    None => {
                        a.finished_ms = Some(now_ms);
                        let job = job_label(a);
                        if a.joined.is_empty() {
                            let why = match a.job_id {
                                None => "never reached the batch queue (found by name after a \
                                         restart: not there)"
                                    .to_string(),
                                Some(_) if a.cancel => "cancelled".to_string(),
                                Some(_) => {
                                    "ended before any worker joined (see its output file)".into()
                                }
                            };
                            warn!("alloc {}: job {job} failed: {why}", q.name);
                            a.state = AllocState::Failed;
                            a.error = Some(why.clone());
                            if !a.cancel && a.job_id.is_some() {
                                failed(q, now_ms, &why);
                            }
                        } else {
                            info!(
                                "alloc {}: job {job} finished ({} joined)",
                                q.name,
                                protocol::plural::count_usize(a.joined.len(), "worker", "workers")
                            );
                            a.state = AllocState::Finished;
                        }
                    }
                }
                self.dirty = true;
            }
            trim_ended(q);
        }
        self.drop_removed();
    }

    /// `alloc list`. Learns the workers first: a worker that joined since the last tick is
    /// listed under its allocation, as `status` already shows it.
    pub fn status(
        &mut self,
        now_ms: u64,
        waiting: impl Fn(Option<&str>) -> u64,
        workers: &[AllocWorker],
    ) -> Vec<QueueStatus> {
        self.learn_workers(now_ms, workers);
        self.queues
            .values()
            .map(|q| QueueStatus {
                id: q.id,
                name: q.name.clone(),
                params: q.params.clone(),
                state: if q.removing {
                    "removing"
                } else if q.paused_until_ms.is_some_and(|t| t > now_ms) {
                    "paused"
                } else {
                    "active"
                }
                .into(),
                paused_reason: q.paused_reason.clone(),
                paused_until_ms: q.paused_until_ms,
                waiting_tasks: waiting(q.params.group.as_deref()),
                allocations: q
                    .allocations
                    .iter()
                    .map(|a| AllocationStatus {
                        job_id: a.job_id.clone(),
                        job_name: a.job_name.clone(),
                        state: a.state,
                        workers: a.workers,
                        joined: a.joined.iter().cloned().collect(),
                        connected: workers
                            .iter()
                            .filter(|w| Some(w.0) == a.job_id.as_deref() && w.2)
                            .count() as u32,
                        submitted_ms: a.submitted_ms,
                        started_ms: a.started_ms,
                        finished_ms: a.finished_ms,
                        error: a.error.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// The job id for log lines.
fn job_label(a: &Allocation) -> &str {
    a.job_id.as_deref().unwrap_or("(no id)")
}

/// Whether `q` submits now, and what.
fn decide(q: &mut Queue, now_ms: u64, waiting: u64, tag: &str) -> Option<Action> {
    if q.removing || waiting == 0 {
        return None;
    }
    if let Some(until) = q.paused_until_ms {
        if now_ms < until {
            return None;
        }
        info!("alloc {}: resuming after its pause", q.name);
        q.paused_until_ms = None;
        q.paused_reason = None;
        q.failures = 0;
    }
    let active = || q.allocations.iter().filter(|a| a.state.is_active());
    if active().any(|a| a.in_flight) {
        return None;
    }
    let pending: Vec<&Allocation> = active()
        .filter(|a| a.state != AllocState::Running)
        .collect();
    if pending.len() >= q.params.backlog as usize {
        return None;
    }
    // Tasks that the workers already asked for will take need no new allocation.
    let pending_workers: u64 = pending.iter().map(|a| u64::from(a.workers)).sum();
    if waiting <= pending_workers * u64::from(q.slots_seen) {
        return None;
    }
    let planned: u32 = active().map(|a| a.workers).sum();
    let workers = q
        .params
        .workers_per_alloc
        .min(q.params.max_workers.saturating_sub(planned));
    if workers == 0 {
        return None;
    }
    let job_name = format!("ballast-{tag}-{}-{}", q.id, q.next_seq);
    q.next_seq += 1;
    log::debug!("alloc {}: submitting job {job_name}", q.name);
    q.allocations.push(Allocation {
        job_name: job_name.clone(),
        job_id: None,
        state: AllocState::Submitting,
        workers,
        submitted_ms: now_ms,
        started_ms: None,
        finished_ms: None,
        error: None,
        joined: BTreeSet::new(),
        known_ms: now_ms,
        in_flight: true,
        cancel: false,
        waiting,
    });
    Some(Action::Submit {
        queue: q.id,
        job_name,
        workers,
    })
}

/// One more failure in a row; pauses the queue at `FAILURES_TO_PAUSE`.
fn failed(q: &mut Queue, now_ms: u64, error: &str) {
    q.failures += 1;
    if q.failures < FAILURES_TO_PAUSE {
        return;
    }
    let pause = PAUSE_FIRST_MS
        .saturating_mul(1 << q.pauses.min(10))
        .min(PAUSE_MAX_MS);
    q.pauses += 1;
    q.failures = 0;
    q.paused_until_ms = Some(now_ms + pause);
    let reason = format!("{FAILURES_TO_PAUSE} failures in a row, the last: {error}");
    warn!(
        "alloc {}: paused for {} s after {reason}",
        q.name,
        pause / 1_000
    );
    q.paused_reason = Some(reason);
}

/// Keeps the last `KEPT_ENDED` ended allocations.
fn trim_ended(q: &mut Queue) {
    let ended = q
        .allocations
        .iter()
        .filter(|a| !a.state.is_active())
        .count();
    let mut drop = ended.saturating_sub(KEPT_ENDED);
    q.allocations.retain(|a| {
        if drop > 0 && !a.state.is_active() {
            drop -= 1;
            return false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Manager;

    fn params(max_workers: u32, backlog: u32) -> QueueParams {
        QueueParams {
            manager: Manager::Slurm,
            max_workers,
            workers_per_alloc: 1,
            time_limit_ms: None,
            backlog,
            idle_timeout_ms: 10_000,
            name: None,
            group: None,
            sbatch_args: Vec::new(),
            worker_program: None,
            master_addr: None,
            worker_tls_cert: None,
            worker_tls_key: None,
        }
    }

    fn submits(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Submit { job_name, .. } => Some(job_name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn submits_while_tasks_wait_within_backlog_and_max_workers() {
        let mut q = AllocQueues::new("t".into());
        q.add(params(2, 1)).expect("added");
        assert!(submits(&q.tick(0, |_| 0, &[])).is_empty(), "nothing waits");
        let first = submits(&q.tick(1, |_| 20, &[]));
        assert_eq!(first, ["ballast-t-1-1"]);
        // Backlog 1: nothing more until the first is answered and running.
        assert!(submits(&q.tick(2, |_| 20, &[])).is_empty());
        q.submitted(3, "ballast-t-1-1", Ok("6".into()));
        assert!(submits(&q.tick(4, |_| 20, &[])).is_empty(), "still pending");
        let joined = [("6", "w1", true, 1)];
        assert_eq!(submits(&q.tick(5, |_| 19, &joined)), ["ballast-t-1-2"]);
        q.submitted(6, "ballast-t-1-2", Ok("7".into()));
        let both = [("6", "w1", true, 1), ("7", "w2", true, 1)];
        // Two workers is --max-workers: no third job however many wait.
        assert!(submits(&q.tick(7, |_| 18, &both)).is_empty());
        // Gone from squeue: both finished (each had a worker), and nothing waits any more.
        q.polled(8, 7, Ok(Vec::new()));
        let status = q.status(9, |_| 0, &[]);
        let states: Vec<_> = status[0].allocations.iter().map(|a| a.state).collect();
        assert_eq!(states, [AllocState::Finished, AllocState::Finished]);
        assert_eq!(status[0].allocations[0].joined, ["w1"]);
    }

    #[test]
    fn repeated_failures_pause_the_queue_and_it_resumes_later() {
        let mut q = AllocQueues::new("t".into());
        q.add(params(4, 1)).expect("added");
        for i in 0..FAILURES_TO_PAUSE {
            let now = u64::from(i) * 10;
            let job = submits(&q.tick(now, |_| 5, &[]));
            assert_eq!(job.len(), 1, "try {i}");
            q.submitted(
                now + 1,
                &job[0],
                Err("sbatch: error: invalid partition".into()),
            );
        }
        let status = q.status(40, |_| 5, &[]);
        assert_eq!(status[0].state, "paused");
        assert!(status[0]
            .paused_reason
            .as_deref()
            .unwrap_or("")
            .contains("invalid partition"));
        assert!(submits(&q.tick(40, |_| 5, &[])).is_empty(), "paused");
        assert_eq!(submits(&q.tick(PAUSE_FIRST_MS + 30, |_| 5, &[])).len(), 1);
    }

    #[test]
    fn a_restarted_master_finds_its_job_by_name_and_does_not_submit_twice() {
        let mut q = AllocQueues::new("t".into());
        q.add(params(1, 1)).expect("added");
        submits(&q.tick(0, |_| 5, &[]));
        // The master dies before sbatch answers; the saved state comes back.
        let saved = serde_json::to_string(&q).expect("serialises");
        let mut q: AllocQueues = serde_json::from_str(&saved).expect("reads back");
        let actions = q.tick(100, |_| 5, &[]);
        assert!(submits(&actions).is_empty(), "{actions:?}");
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Poll { job_names, .. }
            if job_names == &["ballast-t-1-1".to_string()])));
        let listed = Listed {
            job_name: "ballast-t-1-1".into(),
            job_id: "42".into(),
            state: "PENDING".into(),
        };
        q.polled(101, 100, Ok(vec![listed]));
        let status = q.status(102, |_| 5, &[]);
        assert_eq!(status[0].allocations[0].job_id.as_deref(), Some("42"));
        assert_eq!(status[0].allocations[0].state, AllocState::Pending);
    }

    #[test]
    fn a_worker_that_joined_since_the_last_tick_is_listed() {
        // Found by the Slurm test: `alloc list` right after the batch named one worker of two,
        // though `results` already showed the other running tasks.
        let mut q = AllocQueues::new("t".into());
        q.add(params(1, 1)).expect("added");
        let jobs = submits(&q.tick(0, |_| 3, &[]));
        q.submitted(1, &jobs[0], Ok("5".into()));
        let status = q.status(2, |_| 3, &[("5", "w", true, 1)]);
        assert_eq!(status[0].allocations[0].joined, ["w"]);
        assert_eq!(status[0].allocations[0].state, AllocState::Running);
    }

    #[test]
    fn remove_cancels_pending_jobs_and_drains_running_ones() {
        let mut q = AllocQueues::new("t".into());
        let (id, _) = q.add(params(2, 2)).expect("added");
        let jobs = submits(&q.tick(0, |_| 9, &[]));
        q.submitted(1, &jobs[0], Ok("1".into()));
        let jobs = submits(&q.tick(2, |_| 9, &[]));
        q.submitted(3, &jobs[0], Ok("2".into()));
        q.tick(4, |_| 9, &[("1", "w", true, 1)]);
        assert_eq!(q.remove(id), Ok((vec!["2".to_string()], 1)));
        assert!(
            submits(&q.tick(5, |_| 9, &[])).is_empty(),
            "a removed queue submits nothing"
        );
        q.polled(10, 9, Ok(Vec::new()));
        assert!(q.is_empty(), "gone once nothing is active");
    }
}
