//! The JSON shapes of a status report and a task result, as `master status --json`, `master
//! results --json` and the HTTP API (`/api/v1/...`) all print them. Field names are the
//! command-line contract, so they are spelled out here rather than derived from wire types that
//! may grow; fields are added, never renamed.

use protocol::{After, JobStatus, StatusReport, TaskResult, TaskState, WorkerStatus};
use serde::ser::Serializer;
use serde::Serialize;

#[derive(Serialize, Debug)]
pub struct StatusView<'a> {
    pub workers: Vec<WorkerView<'a>>,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub policy: &'a str,
    /// Tasks waiting for their dependencies (added after the first fields).
    pub waiting: u64,
    /// Groups with queued tasks and no live worker: `[{"group": "gpu", "queued": 4}]`.
    pub unserved_groups: Vec<UnservedView<'a>>,
}

#[derive(Serialize, Debug)]
pub struct UnservedView<'a> {
    pub group: &'a str,
    pub queued: u64,
}

#[derive(Serialize, Debug)]
pub struct WorkerView<'a> {
    pub id: u32,
    pub name: &'a str,
    pub addr: &'a str,
    /// "alive" | "dead"
    pub state: &'static str,
    pub slots: u32,
    /// Tasks it may hold beyond `slots`, not yet started.
    pub prefetch: u32,
    pub running: u32,
    /// f32 on purpose: serde_json prints it with f32 precision (35.2, not 35.20000076293945).
    pub cpu_percent: f32,
    pub done: u64,
    pub host: &'a str,
    pub load_avg_1m: f32,
    /// The worker's group, or null for the shared pool.
    pub group: Option<&'a str>,
    /// Epoch ms of the last frame heard from it; null if it has not connected since the master
    /// started (a worker named only by restored results).
    pub last_seen_ms: Option<u64>,
    /// The batch-system job it runs in (a Slurm job id), or null (added with issue 12).
    pub allocation: Option<&'a str>,
    /// Epoch ms when that job's time runs out; null when unknown or unlimited.
    pub allocation_ends_ms: Option<u64>,
}

impl<'a> From<&'a WorkerStatus> for WorkerView<'a> {
    fn from(w: &'a WorkerStatus) -> Self {
        WorkerView {
            id: w.id.0,
            name: &w.name,
            addr: &w.addr,
            state: w.state.as_str(),
            slots: w.slots,
            prefetch: w.prefetch,
            running: w.running,
            cpu_percent: w.cpu_percent,
            done: w.done,
            host: &w.host,
            load_avg_1m: w.load_avg_1m,
            group: w.group.as_deref(),
            last_seen_ms: w.last_seen_ms,
            allocation: w.allocation.as_deref(),
            allocation_ends_ms: w.allocation_ends_ms,
        }
    }
}

impl<'a> From<&'a StatusReport> for StatusView<'a> {
    fn from(r: &'a StatusReport) -> Self {
        StatusView {
            workers: r.workers.iter().map(WorkerView::from).collect(),
            queued: r.queued,
            running: r.running,
            succeeded: r.succeeded,
            failed: r.failed,
            policy: &r.policy,
            waiting: r.waiting,
            unserved_groups: r
                .unserved
                .iter()
                .map(|(group, queued)| UnservedView {
                    group,
                    queued: *queued,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct ResultView<'a> {
    pub id: u64,
    /// `TaskState::as_str`: queued | running | succeeded | failed | timed_out | cancelled | worker_lost
    pub state: &'static str,
    pub exit_code: Option<i32>,
    pub worker: Option<&'a str>,
    pub attempts: u32,
    /// Copies that ran for this outcome: 1 ordinarily, 0 if it never ran, more for replicas.
    pub copies: u32,
    pub priority: i32,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub error: Option<&'a str>,
    // Added after the first fields (scripts match their order): what the task is.
    /// "command" | "sleep" | "spin"
    pub kind: &'static str,
    /// A command's argv, null for a synthetic task. Whole, except in a page of
    /// `GET /api/v1/tasks` (its first KiB, then a marker element `[... N bytes cut]`).
    pub cmd: Option<&'a [String]>,
    /// The group the task is bound to, or null for any worker.
    pub group: Option<&'a str>,
    /// The job (submission) it belongs to.
    pub job: u64,
    /// The task's name (a task file's `"name"`), or null.
    pub name: Option<&'a str>,
    /// What it waits (or waited) for: a number per task, `"5-9"` per range; `[]` for none.
    pub after: AfterList<'a>,
}

/// `after` as JSON: `[12, "5-9"]`, so a task waiting for a million others is one string.
#[derive(Debug)]
pub struct AfterList<'a>(pub &'a [After]);

impl Serialize for AfterList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Entry {
            One(u64),
            Range(String),
        }
        serializer.collect_seq(self.0.iter().map(|a| match a {
            After::Ids { first, last } if first == last => Entry::One(first.0),
            other => Entry::Range(other.to_string()),
        }))
    }
}

impl<'a> From<&'a TaskResult> for ResultView<'a> {
    fn from(t: &'a TaskResult) -> Self {
        ResultView {
            id: t.id.0,
            state: t.state.as_str(),
            exit_code: t.exit_code,
            worker: t.worker.as_deref(),
            attempts: t.attempts,
            copies: t.copies,
            priority: t.priority,
            submitted_ms: t.submitted_ms,
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            stdout: &t.stdout,
            stderr: &t.stderr,
            error: t.error.as_deref(),
            kind: t.kind.as_str(),
            cmd: t.cmd.as_deref(),
            group: t.group.as_deref(),
            job: t.job.0,
            name: t.name.as_deref(),
            after: AfterList(&t.after),
        }
    }
}

/// One job as `master jobs --json` and `GET /api/v1/jobs` show it: `{"id", "name", "tasks",
/// then one count per state of `TaskState::ALL` under its own name ("queued", "running",
/// "succeeded", "failed", "timed_out", "cancelled", "worker_lost", and any state added later),
/// "submitted_ms", "duration_ms" (so far, or until its last task ended), "finished_ms" (null
/// while a task is unfinished), "first_id", "last_id"}`.
#[derive(Debug)]
pub struct JobView<'a>(pub &'a JobStatus);

impl Serialize for JobView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let j = self.0;
        let mut map = s.serialize_map(Some(TaskState::ALL.len() + 8))?;
        map.serialize_entry("id", &j.id.0)?;
        map.serialize_entry("name", &j.name)?;
        map.serialize_entry("tasks", &j.tasks)?;
        for state in TaskState::ALL {
            map.serialize_entry(state.as_str(), &j.count(state))?;
        }
        map.serialize_entry("submitted_ms", &j.submitted_ms)?;
        map.serialize_entry("duration_ms", &j.duration_ms)?;
        map.serialize_entry("finished_ms", &j.finished_ms)?;
        map.serialize_entry("first_id", &j.first.0)?;
        map.serialize_entry("last_id", &(j.first.0 + j.tasks.saturating_sub(1)))?;
        map.end()
    }
}
