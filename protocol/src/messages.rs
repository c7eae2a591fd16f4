//! Wire types. `ToMaster` is everything a worker or client sends; `FromMaster` everything the master
//! sends. Batched variants (`Assign`, `Started`, `Finished`) carry many items per frame so a busy
//! connection costs one frame per loop turn, not one per task.

pub use crate::alloc::{
    AllocState, AllocationInfo, AllocationStatus, Manager, QueueParams, QueueStatus,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A task's id: dense, starting at 1. Never reused for an acknowledged task; an id handed out for a
/// submission that a crash lost before its commit is handed out again by the next incarnation, so
/// an id alone never names a run: [`TaskRef`] adds the attempt and the incarnation.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// A job's id: dense, starting at 1. Every `Submit` makes one job, and its tasks are one
/// contiguous range of ids, so a job is a name, a range and a submission time.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A worker's id, assigned by the master at registration.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

/// Which run of a task this is (1 for the first). Bumped on every re-queue so a late report from an
/// older attempt is recognised and dropped.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt(pub u32);

/// One life of a master on one data dir: bumped (and made durable) at every start, carried in
/// `Welcome` and in every task reference, so a report from a run that an earlier life handed out is
/// recognised as such. A master without a journal has only incarnation 1, and a random `master_id`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(pub u32);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never `w3`: that reads as a worker's name (the README's workers are `w1`, `w2`).
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What to run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// A child process: argv is executed directly (no shell), in its own process group.
    Command {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
    },
    /// Synthetic: idle for `ms` inside the worker (demos, benchmarks).
    Sleep { ms: u64 },
    /// Synthetic: burn one CPU for `ms` inside the worker (load experiments).
    Spin { ms: u64 },
}

/// Which [`TaskKind`] a task is, without its arguments (results show it).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindName {
    Command,
    Sleep,
    Spin,
}

impl KindName {
    /// The name used in `--json` output: "command" | "sleep" | "spin".
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Command => "command",
            KindName::Sleep => "sleep",
            KindName::Spin => "spin",
        }
    }
}

impl TaskKind {
    pub fn name(&self) -> KindName {
        match self {
            TaskKind::Command { .. } => KindName::Command,
            TaskKind::Sleep { .. } => KindName::Sleep,
            TaskKind::Spin { .. } => KindName::Spin,
        }
    }

    /// The argv of a command; `None` for a synthetic task.
    pub fn argv(&self) -> Option<&[String]> {
        match self {
            TaskKind::Command { argv, .. } => Some(argv),
            TaskKind::Sleep { .. } | TaskKind::Spin { .. } => None,
        }
    }
}

/// A submitted unit of work and how to treat it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub kind: TaskKind,
    /// Higher runs first; FIFO among equals.
    pub priority: i32,
    /// Estimated cost, in arbitrary units (seconds by convention).
    pub size: f64,
    /// Kill the task after this long; `None` lets it run forever.
    pub timeout_ms: Option<u64>,
    /// How many times a task lost with its worker is run again before it fails as `WorkerLost`.
    pub max_retries: u32,
    /// How many times a non-zero exit (or a failure to start) is run again, with backoff.
    #[serde(default)]
    pub retry_failed: u32,
    /// Only workers of this group may run it; `None`: any worker.
    #[serde(default)]
    pub group: Option<String>,
    /// Run this many copies at once, on distinct workers; the first success wins and the other
    /// copies are cancelled. 1 for an ordinary task.
    #[serde(default = "one")]
    pub replicas: u32,
    /// A name for people (`"name": "fetch"` in a task file; results show it). At most
    /// `limits::MAX_NAME_BYTES`.
    #[serde(default)]
    pub name: Option<String>,
    /// What the task waits for: it runs only once every task named here has succeeded, and ends
    /// `DependencyFailed` without running if one ends otherwise. Empty: it runs at once. At most
    /// `limits::MAX_AFTER` entries; the master keeps only `After::Ids` (it resolves the others
    /// when it accepts the submission).
    #[serde(default)]
    pub after: Vec<After>,
    /// How long the task may need to run: it is placed only on a worker whose allocation lives
    /// at least this long (`submit --time-request`); `None`: any worker.
    #[serde(default)]
    pub time_request_ms: Option<u64>,
}

/// One entry of [`TaskSpec::after`]. Ranges, so a task waiting for a million others costs one
/// entry, not a million.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum After {
    /// Tasks `first ..= last`, submitted before this submission.
    Ids { first: TaskId, last: TaskId },
    /// Every task made from the spec at this index of the same `Submit` (its `count` copies): a
    /// task file's `"after": ["fetch"]`. The master turns it into `Ids` when it accepts the
    /// submission, and refuses the whole submission on a cycle or an index out of range.
    Spec(u32),
    /// Every task of this job (`submit --after-job J`): resolved to its id range at accept, so
    /// a job of a million tasks is one entry.
    Job(JobId),
}

impl After {
    /// One existing task.
    pub fn id(id: TaskId) -> After {
        After::Ids {
            first: id,
            last: id,
        }
    }
}

impl fmt::Display for After {
    /// `12`, `5-9`, or `spec 3` (an unresolved reference within a submission).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            After::Ids { first, last } if first == last => write!(f, "{first}"),
            After::Ids { first, last } => write!(f, "{first}-{last}"),
            After::Spec(i) => write!(f, "spec {}", u64::from(*i) + 1),
            After::Job(j) => write!(f, "job {j}"),
        }
    }
}

pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// The most copies one task may ask for (`replicas`).
pub const MAX_REPLICAS: u32 = 64;

fn one() -> u32 {
    1
}

impl TaskSpec {
    pub fn new(kind: TaskKind) -> Self {
        TaskSpec {
            kind,
            priority: 0,
            size: 1.0,
            timeout_ms: None,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_failed: 0,
            group: None,
            replicas: 1,
            name: None,
            after: Vec::new(),
            time_request_ms: None,
        }
    }

    /// Why this spec cannot be accepted, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let TaskKind::Command { argv, .. } = &self.kind {
            if argv.is_empty() || argv[0].is_empty() {
                return Err("command has an empty argv".into());
            }
        }
        if !self.size.is_finite() || self.size < 0.0 {
            return Err(format!(
                "size must be a finite number >= 0, got {}",
                self.size
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err("timeout must be greater than zero".into());
        }
        for a in &self.after {
            if let After::Ids { first, last } = a {
                if first.0 == 0 || first > last {
                    return Err(format!("after: {first}-{last} is not a range of task ids"));
                }
            }
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(format!(
                "replicas must be 1 to {MAX_REPLICAS}, got {}",
                self.replicas
            ));
        }
        crate::limits::check_spec(self).map_err(|e| e.to_string())
    }
}

/// Who a worker is, sent once in its `Hello`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub cpus: u32,
    pub slots: u32,
    pub pid: u32,
    /// The group (network, pool) this worker serves; `None`: the default pool.
    pub group: Option<String>,
    /// How many tasks beyond `slots` it will hold, not yet started, to hide dispatch latency. The
    /// master may take them back (`Retract`) to run them elsewhere.
    #[serde(default)]
    pub prefetch: u32,
    /// `prefetch` is a ceiling, not a request (the worker's default, no `--prefetch`): the master
    /// holds tasks beyond the slots only while this worker's recent runs are short next to the
    /// round trip a freed slot waits for its next task, and none while they are long. `false`:
    /// it holds `prefetch` whatever the runs take (`--prefetch K` given).
    #[serde(default)]
    pub prefetch_adaptive: bool,
    /// The heartbeat interval the worker asks for (`worker --heartbeat`); 0: whatever the master
    /// says. The master answers in `Welcome` with the interval to use, which meets its timeout.
    #[serde(default)]
    pub heartbeat_interval_ms: u64,
    /// The batch-system allocation it runs in (Slurm's job), if any.
    #[serde(default)]
    pub allocation: Option<Box<AllocationInfo>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Role {
    Worker(WorkerInfo),
    Client,
}

/// A worker's load: sent every heartbeat interval, and it is the heartbeat.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadReport {
    /// Whole-host CPU use, 0..=100.
    pub cpu_percent: f32,
    pub load_avg_1m: f32,
    pub mem_used: u64,
    pub mem_total: u64,
    /// Tasks the worker is running right now.
    pub running: u32,
}

/// One task handed to a worker. The spec is shared (`Arc`) so the master never copies it to send it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: TaskId,
    pub attempt: Attempt,
    pub incarnation: Incarnation,
    pub spec: Arc<TaskSpec>,
}

impl Assignment {
    pub fn task_ref(&self) -> TaskRef {
        TaskRef {
            task: self.task,
            attempt: self.attempt,
            incarnation: self.incarnation,
        }
    }
}

/// Names one run of one task: the attempt, handed out by the master's incarnation `incarnation`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskRef {
    pub task: TaskId,
    pub attempt: Attempt,
    pub incarnation: Incarnation,
}

impl TaskRef {
    /// The report that this run ended with `outcome`.
    pub fn completion(self, outcome: TaskOutcome, run_ms: u64) -> Completion {
        Completion {
            task: self.task,
            attempt: self.attempt,
            incarnation: self.incarnation,
            outcome,
            run_ms,
        }
    }
}

/// How one attempt ended, as the worker saw it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// The process exited; a death by signal N is reported as code 128 + N, as shells do.
    Exited {
        code: i32,
        stdout_tail: String,
        stderr_tail: String,
    },
    /// The task could not be started (no such program, bad cwd ...).
    Failed { error: String },
    /// Killed after its `timeout_ms`.
    TimedOut {
        stdout_tail: String,
        stderr_tail: String,
    },
    /// Killed on request.
    Cancelled,
    /// Its worker died (decided by the master, never sent by a worker).
    WorkerLost,
}

/// A finished attempt, reported by the worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Completion {
    pub task: TaskId,
    pub attempt: Attempt,
    pub incarnation: Incarnation,
    pub outcome: TaskOutcome,
    pub run_ms: u64,
}

impl Completion {
    pub fn task_ref(&self) -> TaskRef {
        TaskRef {
            task: self.task,
            attempt: self.attempt,
            incarnation: self.incarnation,
        }
    }
}

/// Everything a peer (worker or client) sends to the master.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToMaster {
    /// The first frame of every connection, answering the master's `Greeting`.
    Hello {
        version: u32,
        role: Role,
        /// Empty without a token; with one, the peer's MAC over both nonces, its role and the
        /// direction (`auth::peer_answer`).
        auth: Vec<u8>,
        /// The peer's own fresh nonce (`auth::NONCE_LEN` bytes): the master's proof in `Welcome`
        /// covers it, so a recorded `Welcome` cannot be replayed to this peer.
        nonce: Vec<u8>,
    },
    // From workers.
    Load(LoadReport),
    Started(Vec<TaskRef>),
    Finished(Vec<Completion>),
    // From clients; each is answered by one reply (`Results` may come in several chunks).
    /// Submit every spec `count` times; the new ids are one contiguous range, one job.
    Submit {
        specs: Vec<TaskSpec>,
        count: u32,
        /// The job's name (at most `limits::MAX_JOB_NAME_BYTES`); `None`: the master names it
        /// after its first spec.
        name: Option<String>,
    },
    Status,
    /// Results of these tasks and of every task of these jobs; both empty means all.
    Results {
        ids: Vec<TaskId>,
        jobs: Vec<JobId>,
    },
    /// Reply once all these tasks and those of these jobs (both empty: every job unfinished now,
    /// and the latest job) are finished. With `progress`, `Progress` frames come first, at most one per master
    /// loop turn.
    Wait {
        ids: Vec<TaskId>,
        progress: bool,
        jobs: Vec<JobId>,
    },
    /// Cancel these tasks and every unfinished task of these jobs.
    Cancel {
        ids: Vec<TaskId>,
        jobs: Vec<JobId>,
    },
    /// From workers, right after `Welcome`: the attempts this worker is running now (empty on a fresh
    /// start). After a reconnect or a master restart the master adopts them instead of re-running.
    Running(Vec<TaskRef>),
    /// From workers, answering `Retract`: the attempts given back, never started. Asked-for attempts
    /// missing here had started (or finished) and will report as usual.
    Retracted(Vec<TaskRef>),
    /// One page of results (the HTTP API's task list): tasks with an id above `after`, oldest
    /// first, only those in `state` if given, at most `limit` (the master caps it). Answered by
    /// `ResultsPage` chunks.
    ResultsPage {
        state: Option<TaskState>,
        after: TaskId,
        limit: u32,
    },
    /// These jobs (empty: all), each with its counts by state; answered by `Jobs` chunks.
    Jobs {
        ids: Vec<JobId>,
    },
    /// From workers: what running commands printed since the last frame, in stream order per
    /// run (batched per worker loop turn; each chunk at most `limits::MAX_OUTPUT_CHUNK_BYTES`).
    Output(Vec<OutputChunk>),
    /// From clients: the stored log of `task`'s `stream` from byte `offset` on. Answered by one
    /// `Log` frame of at most `limits::MAX_LOG_READ_BYTES`; the client asks again from where it
    /// ended.
    Log {
        task: TaskId,
        stream: OutputStream,
        offset: u64,
    },
    /// Worker: it stops on purpose (SIGINT, SIGTERM) and closes its connection next, so the
    /// master logs it as having left rather than as lost. Best effort: a worker that cannot send
    /// it is taken for lost, which changes nothing but the log line.
    Leaving,
    /// From clients (since version 7): drop these finished tasks, and the finished tasks of these
    /// jobs, from the master's memory, its journal and its log store; with `finished_before_ms`
    /// only those that finished at least that long ago (ids and jobs both empty: every finished
    /// task). Unfinished tasks are never forgotten: named ones are reported in `Forgotten`.
    /// Forgotten ids are never handed out again. Answered by one `Forgotten`.
    Forget {
        ids: Vec<TaskId>,
        jobs: Vec<JobId>,
        finished_before_ms: Option<u64>,
    },
    /// From clients (since version 8): make an allocation queue; answered by `AllocAdded`.
    AllocAdd(Box<QueueParams>),
    /// Every allocation queue with its allocations; answered by `AllocQueues`.
    AllocList,
    /// Cancel the queue's pending allocations and let its running ones drain; answered by
    /// `AllocRemoved`.
    AllocRemove {
        id: u32,
    },
    /// From clients (since version 11): as `Wait` for the job of this connection's last
    /// `Submit`. Written right behind that `Submit`, in the same write, it spares a one-command
    /// `submit --wait` the round trip between `Submitted` and `Wait`; `Submitted`, then the
    /// wait's `Progress` frames and `WaitDone`, answer the two. An `Error` when the connection
    /// has submitted nothing (or its last `Submit` was refused).
    WaitSubmitted {
        progress: bool,
    },
}

/// Which output of a command.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Bytes one run printed on one stream, starting at byte `offset` of that stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OutputChunk {
    pub task: TaskRef,
    pub stream: OutputStream,
    pub offset: u64,
    #[serde(with = "crate::bytes")]
    pub bytes: Vec<u8>,
}

impl ToMaster {
    /// The variant's name, for logs and errors: a whole message printed with `{:?}` could be
    /// megabytes of specs or task output.
    pub fn name(&self) -> &'static str {
        match self {
            ToMaster::Hello { .. } => "Hello",
            ToMaster::Load(_) => "Load",
            ToMaster::Started(_) => "Started",
            ToMaster::Finished(_) => "Finished",
            ToMaster::Submit { .. } => "Submit",
            ToMaster::Status => "Status",
            ToMaster::Results { .. } => "Results",
            ToMaster::Wait { .. } => "Wait",
            ToMaster::Cancel { .. } => "Cancel",
            ToMaster::Running(_) => "Running",
            ToMaster::Retracted(_) => "Retracted",
            ToMaster::ResultsPage { .. } => "ResultsPage",
            ToMaster::Jobs { .. } => "Jobs",
            ToMaster::Output(_) => "Output",
            ToMaster::Log { .. } => "Log",
            ToMaster::Leaving => "Leaving",
            ToMaster::Forget { .. } => "Forget",
            ToMaster::AllocAdd(_) => "AllocAdd",
            ToMaster::AllocList => "AllocList",
            ToMaster::AllocRemove { .. } => "AllocRemove",
            ToMaster::WaitSubmitted { .. } => "WaitSubmitted",
        }
    }
}

/// Where a task is in its life. `Queued`, `Running` and `Waiting` are not final; the others are.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    WorkerLost,
    /// Waits for its dependencies (`TaskSpec::after`) to succeed; not in any queue.
    Waiting,
    /// A dependency ended in another state than `Succeeded`: it never ran (final).
    DependencyFailed,
}

impl TaskState {
    /// Every state, in the order tables and metrics list them.
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::WorkerLost,
        TaskState::Waiting,
        TaskState::DependencyFailed,
    ];

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskState::Queued | TaskState::Running | TaskState::Waiting
        )
    }

    /// The name used in `--json` output and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::WorkerLost => "worker_lost",
            TaskState::Waiting => "waiting",
            TaskState::DependencyFailed => "dependency_failed",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Alive,
    Dead,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Alive => "alive",
            WorkerState::Dead => "dead",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub id: WorkerId,
    pub name: String,
    pub group: Option<String>,
    pub host: String,
    pub addr: String,
    pub state: WorkerState,
    pub slots: u32,
    /// Tasks it may hold beyond its slots, not yet started.
    pub prefetch: u32,
    /// Tasks the master has handed this worker that have not finished (prefetched ones included).
    pub running: u32,
    pub cpu_percent: f32,
    pub load_avg_1m: f32,
    pub mem_used: u64,
    pub mem_total: u64,
    /// Attempts this worker has finished, whatever their outcome.
    pub done: u64,
    /// When the master last heard a frame from it (ms since the Unix epoch); `None` for a worker
    /// named by restored results that has not connected since this master started.
    pub last_seen_ms: Option<u64>,
    /// The batch-system job it runs in, if any.
    pub allocation: Option<String>,
    /// When its allocation ends (ms since the Unix epoch); `None`: no limit known.
    pub allocation_ends_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub policy: String,
    pub workers: Vec<WorkerStatus>,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    /// Every unsuccessful final state: failed, timed out, cancelled, worker lost, dependency
    /// failed.
    pub failed: u64,
    /// Tasks waiting for their dependencies.
    pub waiting: u64,
    /// Groups whose queue holds tasks while no live worker serves the group: `(group, queued)`,
    /// by name, at most a few (the core's bound).
    pub unserved: Vec<(String, u64)>,
}

/// One task as `results` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub id: TaskId,
    pub state: TaskState,
    /// What the task is: a command or a synthetic one.
    pub kind: KindName,
    /// A command's argv (in a `ResultsPage`, cut by [`crate::limits::cut_argv`] to its first
    /// KiB); `None` for a synthetic task.
    pub cmd: Option<Vec<String>>,
    /// The group the task is bound to; `None`: any worker.
    pub group: Option<String>,
    pub exit_code: Option<i32>,
    /// Name of the worker that produced the outcome (or runs the task now).
    pub worker: Option<String>,
    pub attempts: u32,
    /// How many copies of the task ran for this outcome: 1 for an ordinary task, up to `replicas`
    /// (plus a speculative copy) for a redundant one, 0 if it never ran.
    pub copies: u32,
    pub priority: i32,
    /// Milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub stdout: String,
    pub stderr: String,
    /// Why it failed, when that is not an exit code.
    pub error: Option<String>,
    /// The job (submission) it belongs to.
    pub job: JobId,
    /// The spec's name, if it has one.
    pub name: Option<String>,
    /// What it waits (or waited) for: id ranges.
    pub after: Vec<After>,
}

/// One job as `jobs` shows it: its tasks counted by state, kept as tasks move (never a scan).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    /// Its tasks are ids `first .. first + tasks`.
    pub first: TaskId,
    pub tasks: u64,
    /// How many of its tasks are in each state, for every state of [`TaskState::ALL`], in that
    /// order (a state added later is listed too, without a new field).
    pub counts: Vec<(TaskState, u64)>,
    /// Milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// When its last task became final, once every one is; `None` while some still run.
    pub finished_ms: Option<u64>,
    /// From submission until `finished_ms`, or until the reply was made while it runs.
    pub duration_ms: u64,
}

impl JobStatus {
    /// How many of its tasks are in `state`.
    pub fn count(&self, state: TaskState) -> u64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |&(_, n)| n)
    }

    /// Tasks in an unsuccessful final state, every kind together (the table's `failed`).
    pub fn unsuccessful(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| s.is_final() && *s != TaskState::Succeeded)
            .map(|&(_, n)| n)
            .sum()
    }
}

/// Why a `Hello` was refused, for a peer that acts on the kind (the reason is for people).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Another protocol version.
    Version,
    /// The token's proof was missing or wrong.
    Authentication,
    /// The declared `WorkerInfo` is not acceptable (slots, name, sizes, heartbeat).
    InvalidInfo,
    /// A live worker already has this name; it may be free again once that one is gone.
    NameInUse,
    /// The master speaks TLS and the peer did not: sent in plaintext, instead of `Greeting`.
    TlsRequired,
}

/// Everything the master sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FromMaster {
    /// The master speaks first on every connection.
    Greeting {
        version: u32,
        nonce: Vec<u8>,
    },
    Welcome {
        /// Set for workers, `None` for clients.
        worker_id: Option<WorkerId>,
        /// How often to report (a worker): the interval it asked for if that meets the
        /// master's heartbeat timeout, else the master's own.
        heartbeat_interval_ms: u64,
        /// Names the master's data dir (random at its creation; random per start without a
        /// journal). A worker whose runs came from another master stops them: nobody owns them.
        master_id: u64,
        /// This life of that master; the tasks it hands out carry it.
        incarnation: Incarnation,
        /// Empty without a token; with one, the master's MAC over both nonces, the peer's role
        /// and the direction (`auth::master_proof`). A peer with a token refuses a master that
        /// does not prove it.
        proof: Vec<u8>,
    },
    /// The handshake failed; the master closes the connection after this.
    Rejected {
        reason: String,
        kind: RejectKind,
    },
    // To workers.
    Assign(Vec<Assignment>),
    Cancel(Vec<TaskRef>),
    /// Give back these attempts if they have not started; answered by `Retracted`.
    Retract(Vec<TaskRef>),
    // To clients.
    /// Ids `first .. first + count` were accepted, as job `job`.
    Submitted {
        first: TaskId,
        count: u64,
        job: JobId,
        /// What the person should know about the accepted tasks (a group with no live worker,
        /// more replicas than live workers); at most a few short lines, made by the core.
        warnings: Vec<String>,
    },
    /// One chunk of a `Status` reply; `more` says another follows. Every chunk carries the same
    /// counts (taken when the request was read) and the next workers, in id order.
    Status {
        report: StatusReport,
        more: bool,
    },
    /// One chunk of a `Results` reply; `more` says another follows.
    Results {
        tasks: Vec<TaskResult>,
        more: bool,
    },
    Progress {
        total: u64,
        finished: u64,
        failed: u64,
    },
    WaitDone {
        total: u64,
        succeeded: u64,
        failed: u64,
    },
    CancelDone {
        /// Tasks that were queued or running and are now cancelled (running ones are being killed).
        cancelled: Vec<TaskId>,
        /// Tasks that had already finished.
        already_final: Vec<TaskId>,
        unknown: Vec<TaskId>,
    },
    Error {
        message: String,
    },
    /// One chunk of a `ResultsPage` reply; `more` says another follows. The last chunk's `next`
    /// is the `after` of the following page, or `None` when no task past this page was there.
    ResultsPage {
        tasks: Vec<TaskResult>,
        more: bool,
        next: Option<TaskId>,
    },
    /// One chunk of a `Jobs` reply, in id order; `more` says another follows.
    Jobs {
        jobs: Vec<JobStatus>,
        more: bool,
    },
    /// The answer to `Log`: the bytes of the log from `offset` (possibly none), and where the
    /// stored log ends now. `done`: the task is final and `bytes` reach the end of its log, so
    /// nothing more will come. `removed`: the full log was removed (`--log-budget`) and `bytes`
    /// come from the 64 KiB tail of the result. `attempt`: the run whose stored log this is
    /// (`None`: the bytes are the result's tail, or nothing is stored yet). A task's log is
    /// its counting run's, and that run can change under a reader (a retry, the winning copy of
    /// a replicated task), so a reader that sees another run than before starts again from 0.
    Log {
        task: TaskId,
        stream: OutputStream,
        offset: u64,
        #[serde(with = "crate::bytes")]
        bytes: Vec<u8>,
        end: u64,
        done: bool,
        removed: bool,
        attempt: Option<Attempt>,
    },
    /// To a worker, right after `Welcome` when the master keeps another amount than
    /// `limits::DEFAULT_LOG_LIMIT_BYTES` of each stream (`--log-limit`): the worker sends no more
    /// of a stream than this (the rest it only counts, and says where the stream ended).
    LogLimit {
        per_stream_bytes: u64,
    },
    /// The answer to `Forget`: how many tasks were forgotten, per job in id order (at most
    /// `limits::MAX_FORGET_LISTED` jobs, `jobs_left_out` more), and which named tasks were not:
    /// `unfinished` (still queued, waiting or running: never forgotten) and `unknown` (never
    /// accepted, or forgotten before), each at most `limits::MAX_FORGET_LISTED` ids with the
    /// full counts beside.
    Forgotten {
        tasks: u64,
        jobs: Vec<JobForgotten>,
        jobs_left_out: u64,
        unfinished: Vec<TaskId>,
        unfinished_count: u64,
        unknown: Vec<TaskId>,
        unknown_count: u64,
    },
    /// The answer to `AllocAdd`.
    AllocAdded {
        id: u32,
        name: String,
    },
    /// The answer to `AllocList`, in id order.
    AllocQueues(Vec<QueueStatus>),
    /// The answer to `AllocRemove`: the job ids cancelled (pending) and how many running
    /// allocations are left to drain.
    AllocRemoved {
        id: u32,
        cancelled: Vec<String>,
        draining: u32,
    },
}

/// What one `Forget` did to one job.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobForgotten {
    pub job: JobId,
    /// Its tasks forgotten by this request.
    pub tasks: u64,
    /// No task of it is left: the job itself is forgotten (`jobs` omits it, `results --job`
    /// says it is unknown).
    pub whole: bool,
}

impl FromMaster {
    /// The variant's name, for logs and errors (see [`ToMaster::name`]).
    pub fn name(&self) -> &'static str {
        match self {
            FromMaster::Greeting { .. } => "Greeting",
            FromMaster::Welcome { .. } => "Welcome",
            FromMaster::Rejected { .. } => "Rejected",
            FromMaster::Assign(_) => "Assign",
            FromMaster::Cancel(_) => "Cancel",
            FromMaster::Retract(_) => "Retract",
            FromMaster::Submitted { .. } => "Submitted",
            FromMaster::Status { .. } => "Status",
            FromMaster::Results { .. } => "Results",
            FromMaster::Progress { .. } => "Progress",
            FromMaster::WaitDone { .. } => "WaitDone",
            FromMaster::CancelDone { .. } => "CancelDone",
            FromMaster::Error { .. } => "Error",
            FromMaster::ResultsPage { .. } => "ResultsPage",
            FromMaster::Jobs { .. } => "Jobs",
            FromMaster::Log { .. } => "Log",
            FromMaster::LogLimit { .. } => "LogLimit",
            FromMaster::Forgotten { .. } => "Forgotten",
            FromMaster::AllocAdded { .. } => "AllocAdded",
            FromMaster::AllocQueues(_) => "AllocQueues",
            FromMaster::AllocRemoved { .. } => "AllocRemoved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name is the variant's own, as `Debug` spells it.
    fn named_as_debug(debug: String, name: &str) {
        let variant = debug.split([' ', '(', '{']).next().unwrap_or_default();
        assert_eq!(variant, name, "{debug}");
    }

    #[test]
    fn every_message_is_named_after_its_variant() {
        let run = TaskRef {
            task: TaskId(1),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        };
        let to_master = [
            ToMaster::Hello {
                version: 1,
                role: Role::Client,
                auth: vec![],
                nonce: vec![],
            },
            ToMaster::Load(LoadReport::default()),
            ToMaster::Started(vec![run]),
            ToMaster::Finished(vec![]),
            ToMaster::Submit {
                specs: vec![],
                count: 1,
                name: None,
            },
            ToMaster::Status,
            ToMaster::Results {
                ids: vec![],
                jobs: vec![],
            },
            ToMaster::Wait {
                ids: vec![],
                progress: false,
                jobs: vec![],
            },
            ToMaster::Cancel {
                ids: vec![],
                jobs: vec![],
            },
            ToMaster::Running(vec![]),
            ToMaster::Retracted(vec![]),
            ToMaster::ResultsPage {
                state: None,
                after: TaskId(0),
                limit: 1,
            },
            ToMaster::Jobs { ids: vec![] },
            ToMaster::Output(vec![]),
            ToMaster::Log {
                task: TaskId(1),
                stream: OutputStream::Stdout,
                offset: 0,
            },
            ToMaster::Leaving,
            ToMaster::Forget {
                ids: vec![],
                jobs: vec![JobId(1)],
                finished_before_ms: Some(1),
            },
            ToMaster::WaitSubmitted { progress: true },
        ];
        for msg in &to_master {
            named_as_debug(format!("{msg:?}"), msg.name());
        }
        let from_master = [
            FromMaster::Greeting {
                version: 1,
                nonce: vec![],
            },
            FromMaster::Welcome {
                worker_id: None,
                heartbeat_interval_ms: 1,
                master_id: 1,
                incarnation: Incarnation(1),
                proof: vec![],
            },
            FromMaster::Rejected {
                reason: "r".into(),
                kind: RejectKind::Version,
            },
            FromMaster::Assign(vec![]),
            FromMaster::Cancel(vec![run]),
            FromMaster::Retract(vec![]),
            FromMaster::Submitted {
                first: TaskId(1),
                count: 1,
                job: JobId(1),
                warnings: vec!["w".into()],
            },
            FromMaster::Status {
                report: StatusReport {
                    policy: "p".into(),
                    workers: vec![],
                    queued: 0,
                    running: 0,
                    succeeded: 0,
                    failed: 0,
                    waiting: 0,
                    unserved: vec![("g".into(), 1)],
                },
                more: false,
            },
            FromMaster::Results {
                tasks: vec![],
                more: false,
            },
            FromMaster::Progress {
                total: 0,
                finished: 0,
                failed: 0,
            },
            FromMaster::WaitDone {
                total: 0,
                succeeded: 0,
                failed: 0,
            },
            FromMaster::CancelDone {
                cancelled: vec![],
                already_final: vec![],
                unknown: vec![],
            },
            FromMaster::Error {
                message: "m".into(),
            },
            FromMaster::ResultsPage {
                tasks: vec![],
                more: false,
                next: None,
            },
            FromMaster::Jobs {
                jobs: vec![],
                more: false,
            },
            FromMaster::Log {
                task: TaskId(1),
                stream: OutputStream::Stderr,
                offset: 0,
                bytes: vec![],
                end: 0,
                done: true,
                removed: false,
                attempt: None,
            },
            FromMaster::LogLimit {
                per_stream_bytes: 1,
            },
            FromMaster::Forgotten {
                tasks: 1,
                jobs: vec![JobForgotten {
                    job: JobId(1),
                    tasks: 1,
                    whole: true,
                }],
                jobs_left_out: 0,
                unfinished: vec![],
                unfinished_count: 0,
                unknown: vec![],
                unknown_count: 0,
            },
        ];
        for msg in &from_master {
            named_as_debug(format!("{msg:?}"), msg.name());
        }
    }
}
