//! The scheduler core. It does no IO: no sockets, no clock, no files, no randomness. The shell (or a
//! test, or the simulator) feeds it events with the current time and drains what it wants sent.
//!
//! Methods come in four kinds:
//! - input: `handle_connect`, `handle_message`, `handle_disconnect`, `handle_timeout`;
//! - the per-turn step: `dispatch` places queued tasks on workers and flushes batched replies;
//! - output: `poll_output` (messages to send, connections to close) and `poll_timeout` (when
//!   `handle_timeout` wants to be called next);
//! - getters: `status`, `task`.
//!
//! Call order for one loop turn: any number of `handle_*`, then `dispatch(now)`, then drain
//! `poll_output` until `None`, then sleep until `poll_timeout` or the next event.
//!
//! Two layers: the session layer (`session.rs`) owns connections, the handshake and the master's
//! identity, and turns connection ids into the `WorkerId`s and `ClientId`s that the scheduling
//! part (`Core`'s tables, placement, rebalancing, speculation) speaks; all output leaves through
//! it. The scheduling part never sees a `ConnId`.
//!
//! Time is milliseconds on a clock the caller chooses. The master passes milliseconds since the Unix
//! epoch derived from a monotonic clock, so timestamps in results are wall-clock; the simulator
//! passes virtual time.

mod deps;
mod epochs;
pub mod events;
mod forget;
mod group_commit;
mod handed;
mod holds;
mod id_hash;
mod jobs;
mod load_heap;
mod log_limit;
mod logs;
pub mod metrics;
pub mod policy;
mod pools;
mod prefetch;
pub mod queue;
mod rebalance;
mod replies;
mod restore_error;
mod session;
mod speculation;
mod stored;
mod tasks;
mod wait;
mod workers;

use deps::{Deps, Release};
pub use epochs::EpochStart;
use epochs::Epochs;
use events::{Event as StreamEvent, Events};
pub use group_commit::{GroupCommit, COMMIT_BATCH_MAX, COMMIT_WINDOW_US};
use handed::GivenUp;
use holds::Holds;
use id_hash::IdHashMap;
pub use jobs::JobRecord;
use log::{debug, info, log, warn, Level};
use log_limit::LogLimiter;
pub use logs::LogOp;
use logs::LoggedTasks;
use metrics::Metrics;
use policy::{PolicyKind, QueueOrder};
use pools::{Next, Pools};
use protocol::budget::chunks_within;
use protocol::codec::encoded_len;
use protocol::limits::{
    LimitError, MAX_ERROR_BYTES, MAX_JOB_NAME_BYTES, MAX_NAME_BYTES, MAX_OUTPUT_CHUNK_BYTES,
    MAX_TAIL_BYTES,
};
use protocol::{
    After, Assignment, Attempt, Completion, FromMaster, Incarnation, JobId, OutputChunk,
    OutputStream, StatusReport, TaskId, TaskOutcome, TaskRef, TaskResult, TaskSpec, TaskState,
    ToMaster, WorkerId, WorkerInfo, WorkerState, WorkerStatus,
};
use queue::QueueKey;
use rebalance::Unstarted;
use replies::Replies;
pub use replies::{
    Backlog, CLIENT_BACKLOG_MAX_BYTES, DRAIN_LOW_WATER_BYTES, PAGE_ARGV_BYTES, PAGE_LIMIT_MAX,
    PAGE_SCAN_MAX, PAGE_TAIL_BYTES, REPLY_BYTES_IN_FLIGHT_MAX, REPLY_FRAME_BUDGET,
    STALLED_READER_MS,
};
pub use restore_error::RestoreError;
pub use session::{ClientId, CloseReason, ConnId, Refusal, Violation};
use session::{Departed, Inbound, SessionConfig, Sessions, WorkerHello};
use speculation::RunEstimate;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
pub use stored::{NoReader, OutcomeReader, StoredAt};
pub use tasks::FinalResult;
use tasks::{settle, Task, TaskTable};
use wait::{WaitStart, Waiters};
use workers::{PlacementChange, WorkerTable};

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub policy: PolicyKind,
    /// Which queued task goes first within a priority level.
    pub order: QueueOrder,
    /// Seeds the randomised policies (power-of-two), so a run can be replayed.
    pub seed: u64,
    /// How often workers are asked to report load.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is dead.
    pub heartbeat_timeout_ms: u64,
    /// A connection that has not said a valid `Hello` by then is closed.
    pub handshake_timeout_ms: u64,
    /// Shared secret; `None` accepts every peer.
    pub token: Option<Vec<u8>>,
    /// Emit `Output::Persist` records for a journal.
    pub persist: bool,
    /// After a restart, unfinished tasks wait this long for their workers to reconnect and claim
    /// them before they are run again.
    pub recovery_grace_ms: u64,
    /// Start a copy of a task running longer than this many times its size-scaled estimate, when
    /// a slot is idle (`master --speculate F`); `None`: never.
    pub speculate: Option<f64>,
    /// Names this master's data dir in `Welcome` (random per start without a journal).
    pub master_id: u64,
    /// This start of the master; `restore` brings the earlier ones.
    pub incarnation: Incarnation,
    /// A client with nothing in flight (no `wait`) that sends nothing for this long is closed
    /// (`master --client-idle-timeout`); `None`: never.
    pub client_idle_timeout_ms: Option<u64>,
    /// The most tasks the master holds (finished ones included): a submission that would pass it
    /// is refused whole (`master --max-tasks`).
    pub max_tasks: u64,
    /// Bytes of each stream of a task kept in its log (`master --log-limit`); workers are told
    /// when it is not the default, so they send no more.
    pub log_limit_bytes: u64,
    /// Forget the tasks of a job once it has been wholly finished this long (`master
    /// --keep-finished D`); `None`: keep everything until `master forget`.
    pub keep_finished_ms: Option<u64>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            policy: PolicyKind::LeastLoaded,
            order: QueueOrder::Fifo,
            seed: 0,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            token: None,
            persist: false,
            recovery_grace_ms: 5_000,
            speculate: None,
            master_id: 0,
            incarnation: Incarnation(1),
            client_idle_timeout_ms: Some(DEFAULT_CLIENT_IDLE_TIMEOUT_MS),
            max_tasks: u64::MAX,
            log_limit_bytes: protocol::limits::DEFAULT_LOG_LIMIT_BYTES,
            keep_finished_ms: None,
        }
    }
}

/// Room `Core::stale_placement` keeps between turns.
const STALE_PLACEMENT_KEPT: usize = 4096;

/// `master --client-idle-timeout`'s default: an idle connection costs some 65 KiB and a place
/// under `--max-connections`; a person typing commands reconnects each time anyway.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 5 * 60 * 1_000;

/// What the core wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        conn: ConnId,
        msg: FromMaster,
    },
    /// Flush what is queued for `conn`, then close it. The core has already forgotten it.
    Close {
        conn: ConnId,
        reason: CloseReason,
    },
    /// Make this durable. IMPORTANT: the shell must commit every `Persist` of a turn before it
    /// writes that turn's bytes to sockets, so no client hears of work that could still be lost.
    Persist(Record),
    /// A task log's bytes, end or read, for the shell's log store (`logs.rs`).
    Log(LogOp),
    /// A client's request about allocation queues, for the shell's allocator (it runs the batch
    /// system's commands); the shell answers on `conn`.
    Alloc {
        conn: ConnId,
        request: AllocRequest,
    },
}

/// What a client asked of the allocation queues (`master alloc ...`).
#[derive(Debug, Clone, PartialEq)]
pub enum AllocRequest {
    Add(Box<protocol::QueueParams>),
    List,
    Remove { id: u32 },
}

/// Whether a reply speaks of durable state (ids, results, completion, status) and so must wait
/// for the turn's journal commit. Frames to workers never wait: assignments are not journaled, and
/// workers stay busy during the fsync. The shell and the simulator apply the same rule.
pub fn needs_commit(msg: &FromMaster) -> bool {
    matches!(
        msg,
        FromMaster::Submitted { .. }
            | FromMaster::Results { .. }
            | FromMaster::WaitDone { .. }
            | FromMaster::Progress { .. }
            | FromMaster::CancelDone { .. }
            | FromMaster::Status { .. }
            | FromMaster::ResultsPage { .. }
            | FromMaster::Jobs { .. }
            | FromMaster::Log { .. }
            | FromMaster::Forgotten { .. }
    )
}

/// What the journal keeps: enough to rebuild the queue and the results after a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Ids `first .. first + count` were accepted, all with `spec`.
    Submitted {
        first: TaskId,
        count: u64,
        spec: Arc<TaskSpec>,
        submitted_ms: u64,
    },
    /// A task reached its final state.
    Finished { id: TaskId, outcome: Outcome },
    /// A job was made (one per `Submit`, before the `Submitted` records of its tasks), or named
    /// at recovery for tasks an older journal kept without one.
    Job(JobRecord),
    /// These tasks (inclusive, final) were forgotten: the journal drops what it kept of them,
    /// and never gives their ids back.
    Forgotten { ranges: Vec<(TaskId, TaskId)> },
}

/// A task's final outcome as it is made durable and read back: the one shape from the core's
/// `Persist` to the journal's rows and back into `restore`. What a finished task needs beyond
/// its spec (priority, submission time ...), which the journal keeps once per batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Always final (`TaskState::is_final`).
    pub state: TaskState,
    pub attempts: u32,
    /// How many copies ran for this outcome (`TaskResult::copies`).
    pub copies: u32,
    /// Name of the worker that produced it (shared with the worker table).
    pub worker: Option<Arc<str>>,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: u64,
}

impl Outcome {
    /// A task that never ran and fails with `error`.
    fn refused(now_ms: u64, error: String) -> Outcome {
        Outcome {
            state: TaskState::Failed,
            attempts: 1,
            copies: 0,
            worker: None,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
            started_ms: None,
            finished_ms: now_ms,
        }
    }

    /// Cuts every field to its limit (`protocol::limits`), as a worker's report is cut.
    fn cap(&mut self) {
        use protocol::limits::{keep_tail, truncate_with_marker};
        keep_tail(&mut self.stdout, MAX_TAIL_BYTES);
        keep_tail(&mut self.stderr, MAX_TAIL_BYTES);
        if let Some(error) = &mut self.error {
            truncate_with_marker(error, MAX_ERROR_BYTES);
        }
        if let Some(worker) = self.worker.as_mut().filter(|w| w.len() > MAX_NAME_BYTES) {
            let mut cut = worker.to_string();
            truncate_with_marker(&mut cut, MAX_NAME_BYTES);
            *worker = Arc::from(cut);
        }
    }
}

/// A task read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredTask {
    pub id: TaskId,
    /// Shared by every task of one batch.
    pub spec: Arc<TaskSpec>,
    pub submitted_ms: u64,
    /// The final outcome, if it had one. Boxed so a million unfinished tasks cost 32 bytes each.
    pub outcome: Option<Box<Outcome>>,
    /// Where the journal holds `outcome`: then its tails (stdout, stderr, error) may be left
    /// empty here, and are read back through the core's `OutcomeReader` when asked for.
    pub stored: Option<StoredAt>,
}

/// How often timers are checked. Failure detection is exact to within this.
const SWEEP_INTERVAL_MS: u64 = 100;
/// Lines about one worker's bad reports (dropped results) per second; the rest are counted and
/// summed up once a second.
const PEER_LINES_PER_SECOND: u32 = 5;
/// Per-task log lines beyond this many per second go to `debug`, with a summary at `info`.
const TASK_LINES_PER_SECOND: u32 = 20;
/// One submission may create at most this many tasks (about 1 GiB of task records): a client
/// cannot make the master allocate without bound in one request.
const MAX_TASKS_PER_SUBMIT: u64 = 10_000_000;
/// One `Cancel` may name jobs of at most this many tasks together: its `CancelDone` lists each
/// (up to 10 bytes an id), and must fit a frame. `master cancel --job` cancels by ids instead.
const MAX_CANCEL_JOB_TASKS: u64 = 1_000_000;
/// Groups a submission is checked for in its warnings (a task file may name a thousand; the
/// reply stays a few lines, and the check one pass over the workers).
const MAX_SUBMIT_WARNINGS: usize = 8;
/// Groups a status names as waiting for a worker (the rest are in `queued` all the same).
const MAX_UNSERVED_LISTED: usize = 16;
/// Retry backoff after a failed run: 200 ms, doubling, at most 30 s.
const RETRY_BACKOFF_BASE_MS: u64 = 200;
const RETRY_BACKOFF_MAX_MS: u64 = 30_000;

pub struct Core {
    config: CoreConfig,
    /// Connections, handshakes and the way out: the rest of `Core` never sees a `ConnId`.
    session: Sessions,
    tasks: TaskTable,
    /// Queued tasks and worker placement, per group.
    pools: Pools,
    workers: WorkerTable,
    waiters: Waiters,
    /// The job of each client's last accepted `Submit`, for its `WaitSubmitted`.
    last_job: IdHashMap<ClientId, JobId>,
    /// Chunked replies in progress, one chunk at a time (`replies.rs`).
    replies: Replies,
    /// Assignments made this turn, sent as one frame per worker by `dispatch`.
    assign_batches: BTreeMap<WorkerId, Vec<Assignment>>,
    /// Something may be placeable: set only by `enqueue` (a task entered a queue) and `learn`
    /// (a worker may have room, or something for rebalancing).
    dirty: bool,
    /// Workers whose capacity changed since placement last heard: placement is read only while
    /// placing, so the finishes of one turn refresh a worker there once, not once per task (a
    /// `Finished` of 8 was 8 ordered-set moves). Refreshed from the worker table, so a worker may
    /// be listed more than once and placement ends where the table says (a repeat is a no-op
    /// for least-loaded and round-robin; power-of-two re-inserts, which reorders its pool, the
    /// same way every run).
    stale_placement: Vec<WorkerId>,
    next_sweep_ms: Option<u64>,
    /// Queued tasks kept out of the queue until a time: retry backoff, and the grace period after
    /// a restart.
    holds: Holds,
    /// Tasks given back by a worker (`Retracted`), and that worker: the next placement of each
    /// goes elsewhere if it can, or rebalancing could hand it straight back. Only looked up.
    avoid: IdHashMap<TaskId, WorkerId>,
    /// Unstarted runs on prefetching workers, for displacement by higher priorities.
    unstarted: Unstarted,
    /// Run time per unit of `size`, for speculation.
    estimate: RunEstimate,
    /// Which incarnation submitted which ids: a run is credited only to its own task.
    epochs: Epochs,
    /// Runs taken back from lost workers: a late report of one is believed only from its worker.
    given_up: GivenUp,
    /// Warnings about one worker's reports: a few a second, then a summary line.
    peer_log: LogLimiter<WorkerId>,
    chatter: Chatter,
    /// When idle clients are looked for next (once a second is plenty for a timeout of minutes).
    next_idle_check_ms: u64,
    /// Histograms and the report's accumulators, updated where the events happen (`metrics.rs`).
    metrics: Metrics,
    /// The SSE stream, off while nobody subscribes (`events.rs`).
    events: Events,
    /// Waiting tasks and what they wait for (`deps.rs`).
    deps: Deps,
    /// What ended tasks released, still to apply (`settle_releases`): a worklist, so a chain of
    /// a million dependency failures does not recurse.
    releases: Vec<Release>,
    /// `settle_releases` is applying `releases` (a `finish` inside it only adds to them).
    settling: bool,
    /// Unfinished tasks whose output the log store holds (`logs.rs`).
    logged: LoggedTasks,
    /// When `--keep-finished` looks for jobs to forget next (`forget.rs`).
    next_retention_ms: u64,
    /// Set by `expect_forgotten`: the journal's next id, for a restore with forgotten ids.
    restore_next_id: Option<TaskId>,
    /// Reads back the outcomes the journal holds (`stored.rs`); the shell's.
    reader: Box<dyn OutcomeReader>,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        let incarnation = config.incarnation;
        let session = Sessions::new(SessionConfig {
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            handshake_timeout_ms: config.handshake_timeout_ms,
            token: config.token.clone(),
            master_id: config.master_id,
            incarnation,
        });
        Core {
            pools: Pools::new(config.policy, config.seed),
            config,
            session,
            tasks: TaskTable::new(incarnation),
            workers: WorkerTable::default(),
            waiters: Waiters::default(),
            last_job: IdHashMap::default(),
            replies: Replies::default(),
            assign_batches: BTreeMap::new(),
            dirty: false,
            stale_placement: Vec::new(),
            next_sweep_ms: None,
            holds: Holds::default(),
            avoid: IdHashMap::default(),
            unstarted: Unstarted::default(),
            estimate: RunEstimate::default(),
            epochs: Epochs::fresh(incarnation),
            given_up: GivenUp::default(),
            peer_log: LogLimiter::new(PEER_LINES_PER_SECOND, 1_000),
            chatter: Chatter::default(),
            next_idle_check_ms: 0,
            metrics: Metrics::default(),
            events: Events::default(),
            deps: Deps::default(),
            releases: Vec::new(),
            settling: false,
            logged: LoggedTasks::default(),
            next_retention_ms: 0,
            restore_next_id: None,
            reader: Box::new(NoReader),
        }
    }

    /// Installs the reader of outcomes the journal holds (see `handle_stored`). Call before
    /// `restore`'s tasks are asked about.
    pub fn set_outcome_reader(&mut self, reader: Box<dyn OutcomeReader>) {
        self.reader = reader;
    }

    /// The journal committed these final outcomes (`Record::Finished`) at these places: the
    /// core drops its copies of them and reads them back through its reader when needed.
    /// IMPORTANT: only after the commit: a reader sees committed rows only.
    pub fn handle_stored(&mut self, stored: &[(TaskId, StoredAt)]) {
        for &(id, at) in stored {
            self.tasks.store(id, at);
        }
    }

    /// A final task's outcome: held in RAM, or read back from where it is stored. `None` for a
    /// task that is not final, or whose stored outcome cannot be read (the reader says why).
    fn final_result(&self, id: TaskId, t: &Task) -> Option<std::borrow::Cow<'_, FinalResult>> {
        use std::borrow::Cow;
        if let Some(r) = self.tasks.held(id) {
            return Some(Cow::Borrowed(r));
        }
        let mut r = self.reader.read(id, t.stored?)?;
        // Rows written before the limits: what the master serves must fit a frame.
        protocol::limits::keep_tail(&mut r.stdout, MAX_TAIL_BYTES);
        protocol::limits::keep_tail(&mut r.stderr, MAX_TAIL_BYTES);
        if let Some(error) = &mut r.error {
            protocol::limits::truncate_with_marker(error, MAX_ERROR_BYTES);
        }
        Some(Cow::Owned(r))
    }

    /// Says, before `restore`, that the journal handed out every id below `next_id`, and that
    /// those missing from `restore`'s tasks were forgotten (`master forget`): they are skipped
    /// over, never handed out again.
    pub fn expect_forgotten(&mut self, next_id: TaskId) {
        self.restore_next_id = Some(next_id);
    }

    /// Rebuilds state from the journal; call once, before any connection. Finished tasks keep
    /// their results; unfinished ones wait `recovery_grace_ms` for a reconnecting worker to claim
    /// them, then run again with the next attempt. Returns (finished, unfinished).
    /// `history` lists every incarnation's start, this one (`config.incarnation`) last. `jobs`
    /// come densely in id order; tasks past the last job's range (from a journal older than
    /// jobs) get one job per batch, named after its spec, and recorded.
    pub fn restore(
        &mut self,
        now_ms: u64,
        tasks: Vec<RestoredTask>,
        history: Vec<EpochStart>,
        jobs: Vec<JobRecord>,
    ) -> Result<(u64, u64), RestoreError> {
        let epochs = Epochs::from_history(history)?;
        if epochs.current() != self.config.incarnation {
            return Err(RestoreError::WrongIncarnation {
                journal: epochs.current(),
                core: self.config.incarnation,
            });
        }
        self.epochs = epochs;
        for job in jobs {
            self.tasks.restore_job(job)?;
        }
        let covered = self.tasks.jobs().next_task().0 - 1;
        let known = match self.restore_next_id {
            Some(next) => next.0 - 1,
            None => tasks.len() as u64,
        };
        if covered > known {
            return Err(RestoreError::JobPastTasks {
                job: JobId(self.tasks.jobs().len() as u64),
                tasks: known,
            });
        }
        let orphans = tasks.partition_point(|t| t.id.0 <= covered);
        self.name_orphans(&tasks[orphans..]);
        let gaps_allowed = self.restore_next_id.is_some();
        let (mut finished, mut unfinished) = (0, 0);
        // Batches with dependencies: (first, count, spec). Their gates are made once every task
        // is back, since a task may wait for a later id of its own submission.
        let mut gated: Vec<(TaskId, u64, Arc<TaskSpec>)> = Vec::new();
        // Tasks of one batch share their spec: check each spec once.
        let mut checked: Option<(*const TaskSpec, Result<(), LimitError>)> = None;
        for mut t in tasks {
            if let Some(outcome) = &mut t.outcome {
                // Rows written before the limits: what the master serves must fit a frame.
                outcome.cap();
            } else {
                let ptr = Arc::as_ptr(&t.spec);
                let verdict = match &checked {
                    Some((p, v)) if *p == ptr => v.clone(),
                    _ => {
                        let v = protocol::limits::check_spec(&t.spec);
                        checked = Some((ptr, v.clone()));
                        v
                    }
                };
                if let Err(e) = verdict {
                    // IMPORTANT: an over-limit spec from an older journal would be handed to a
                    // worker in a frame that cannot be sent; it fails here, durably, instead.
                    warn!("task {} from the journal fails: {e}", t.id);
                    let outcome = Outcome::refused(now_ms, format!("refused at recovery: {e}"));
                    if self.config.persist {
                        self.session.push_record(Record::Finished {
                            id: t.id,
                            outcome: outcome.clone(),
                        });
                    }
                    t.outcome = Some(Box::new(outcome));
                }
            }
            let worker = t
                .outcome
                .as_ref()
                .and_then(|o| o.worker.as_deref())
                .map(|name| self.workers.intern(name));
            let is_final = t.outcome.is_some();
            let id = t.id;
            if !t.spec.after.is_empty() {
                match gated.last_mut() {
                    Some((first, count, spec))
                        if Arc::ptr_eq(spec, &t.spec) && first.0 + *count == id.0 =>
                    {
                        *count += 1
                    }
                    _ => gated.push((id, 1, t.spec.clone())),
                }
            }
            self.metrics.submitted(t.submitted_ms);
            if let Some(o) = &t.outcome {
                self.metrics
                    .finished(o.finished_ms, t.submitted_ms, o.state);
            }
            if gaps_allowed && id > self.tasks.next_id() {
                self.tasks
                    .skip_forgotten(self.tasks.next_id(), TaskId(id.0 - 1));
            }
            self.tasks.restore(t, worker)?;
            if is_final {
                finished += 1;
            } else if self.tasks.get(id).map(|t| t.state) == Some(TaskState::Waiting) {
                // Never ran: no attempt to count, no worker to wait for. Its gate comes below.
                unfinished += 1;
            } else {
                // The attempt that was in flight when the master died counts as one.
                self.tasks.bump_attempt(id);
                self.holds.hold(id, now_ms + self.config.recovery_grace_ms);
                unfinished += 1;
            }
        }
        for (first, count, spec) in gated {
            let last = TaskId(first.0 + count - 1);
            let waiting = (first.0..=last.0)
                .any(|i| self.tasks.get(TaskId(i)).map(|t| t.state) == Some(TaskState::Waiting));
            if waiting {
                // A dependency may have ended while the master was down (or in the same turn as
                // the crash): what it releases is applied now, durably.
                let ranges = id_ranges(&spec.after);
                let existing = self.dependency_verdict(&ranges, TaskId(u64::MAX));
                self.gate(first, count, ranges, TaskId(u64::MAX), existing);
            }
        }
        if let Some(next) = self.restore_next_id.take() {
            if next > self.tasks.next_id() {
                // The newest tasks were forgotten: their ids stay used.
                self.tasks
                    .skip_forgotten(self.tasks.next_id(), TaskId(next.0 - 1));
            }
            self.tasks.compact();
        }
        self.settle_releases(now_ms);
        Ok((finished, unfinished))
    }

    /// Jobs for restored tasks that have none (`tasks` are those past the last job): one per
    /// batch (a run of tasks sharing a spec and a submission time), recorded so the ids stay.
    fn name_orphans(&mut self, tasks: &[RestoredTask]) {
        let mut rest = tasks;
        let mut next = TaskId(tasks.first().map_or(0, |_| self.tasks.jobs().next_task().0));
        while let Some(head) = rest.first() {
            if head.id != next {
                return; // a gap in the ids: `TaskTable::restore` refuses it
            }
            let len = rest
                .iter()
                .zip(head.id.0..)
                .take_while(|(t, id)| {
                    t.id.0 == *id
                        && Arc::ptr_eq(&t.spec, &head.spec)
                        && t.submitted_ms == head.submitted_ms
                })
                .count();
            next = TaskId(head.id.0 + len as u64);
            let name = protocol::names::job_name(&head.spec);
            let first = head.id;
            let id = self
                .tasks
                .open_job(name.clone(), first, len as u64, head.submitted_ms);
            if self.config.persist {
                self.session.push_record(Record::Job(JobRecord {
                    id,
                    name,
                    first,
                    count: len as u64,
                    submitted_ms: head.submitted_ms,
                }));
            }
            rest = &rest[len..];
        }
    }

    /// What the tasks of `ranges` below `new_from` (the ones submitted before) say for a gate:
    /// how many have not succeeded, or the first that ended otherwise. A scan: O(ids in them).
    fn dependency_verdict(&self, ranges: &[(u64, u64)], new_from: TaskId) -> Verdict {
        let mut remaining = 0u64;
        for &(a, b) in ranges {
            for i in a..=b.min(new_from.0.saturating_sub(1)) {
                match self.tasks.get(TaskId(i)).map(|t| t.state) {
                    Some(TaskState::Succeeded) => {}
                    Some(s) if !s.is_final() => remaining += 1,
                    // Final otherwise; or missing (checked at submit; from a journal, an id that
                    // is not there cannot be waited for).
                    _ => return Verdict::Failed(TaskId(i)),
                }
            }
        }
        Verdict::Remaining(remaining)
    }

    /// Makes the gate of tasks `first .. first + count` (all `Waiting`), which wait for the
    /// normalised `ranges`: `existing` is the verdict of the ids below `new_from`; the ids at or
    /// past it belong to the same submission (not final yet). A dependency that ended otherwise
    /// than succeeded fails them, none left to wait for runs them: both through `releases`.
    fn gate(
        &mut self,
        first: TaskId,
        count: u64,
        ranges: Vec<(u64, u64)>,
        new_from: TaskId,
        existing: Verdict,
    ) {
        let mut remaining = match existing {
            Verdict::Failed(because) => {
                self.releases.push(Release::Fail {
                    first,
                    count,
                    because,
                });
                return;
            }
            Verdict::Remaining(n) => n,
        };
        for &(a, b) in &ranges {
            let new_start = a.max(new_from.0);
            if new_start <= b {
                remaining += b - new_start + 1;
            }
        }
        if remaining == 0 {
            self.releases.push(Release::Run { first, count });
        } else {
            self.deps.add(first, count, ranges, remaining);
        }
    }

    /// Applies what ended tasks released: waiting tasks run, or end `DependencyFailed` (which
    /// releases their own dependents in turn, through the same list).
    fn settle_releases(&mut self, now_ms: u64) {
        if self.settling {
            return;
        }
        self.settling = true;
        while let Some(r) = self.releases.pop() {
            match r {
                Release::Run { first, count } => {
                    for i in first.0..first.0 + count {
                        let id = TaskId(i);
                        if self.tasks.get(id).map(|t| t.state) != Some(TaskState::Waiting) {
                            continue;
                        }
                        self.tasks.release(id);
                        self.events.queued(now_ms, i);
                        self.enqueue(id);
                    }
                    debug!(
                        "tasks {first}..={}: dependencies succeeded, queued",
                        first.0 + count - 1
                    );
                }
                Release::Fail {
                    first,
                    count,
                    because,
                } => {
                    let error = match self.tasks.get(because).map(|t| t.state) {
                        Some(TaskState::Failed) | None => format!("dependency {because} failed"),
                        Some(s) => format!("dependency {because} failed ({})", s.as_str()),
                    };
                    let mut ended = 0u64;
                    for i in first.0..first.0 + count {
                        let id = TaskId(i);
                        if self.tasks.get(id).map(|t| t.state) != Some(TaskState::Waiting) {
                            continue;
                        }
                        let result = FinalResult {
                            error: Some(error.clone()),
                            ..FinalResult::default()
                        };
                        self.finish(now_ms, id, TaskState::DependencyFailed, result, None);
                        ended += 1;
                    }
                    if ended > 0 {
                        // Per-task chatter like any other end: a failure at the head of a chain
                        // of 100,000 made 100,000 `info` lines, one per gate.
                        let level = self.chatter.task_line(now_ms, Event::Finished);
                        let last = first.0 + count - 1;
                        let ids = if last == first.0 {
                            format!("{first}")
                        } else {
                            format!("{first}-{last}")
                        };
                        log!(
                            level,
                            "{} ({ids}) dependency_failed: {error}",
                            protocol::plural::count(ended, "task", "tasks")
                        );
                    }
                }
            }
        }
        self.settling = false;
    }

    // ---- input -------------------------------------------------------------------------------

    /// A connection was accepted. `nonce` must be fresh and unpredictable (the shell's randomness).
    pub fn handle_connect(&mut self, now_ms: u64, conn: ConnId, addr: String, nonce: Vec<u8>) {
        if let Some(earlier) = self.session.connect(now_ms, conn, addr, nonce) {
            self.depart(now_ms, earlier, &"its connection id was reused");
        }
        self.arm_sweep(now_ms);
    }

    /// A local client on `conn` (the HTTP API): a client session without a handshake, because the
    /// shell has already checked the caller (its bearer token). Its requests are then handed in
    /// with `handle_message` and answered like any client's, through the same journal gate.
    pub fn handle_local_client(&mut self, now_ms: u64, conn: ConnId, addr: String) {
        if let Some(earlier) = self.session.connect_local(now_ms, conn, addr) {
            self.depart(now_ms, earlier, &"its connection id was reused");
        }
        self.arm_sweep(now_ms);
    }

    /// One decoded frame from `conn`.
    pub fn handle_message(&mut self, now_ms: u64, conn: ConnId, msg: ToMaster) {
        match self.session.receive(now_ms, conn, msg) {
            Inbound::Handled => {}
            Inbound::WorkerHello(hello) => self.register_worker(now_ms, hello),
            Inbound::Worker(id, msg) => self.on_worker_message(now_ms, id, msg),
            Inbound::Client(id, msg) => self.on_client_message(now_ms, id, msg),
        }
    }

    /// The connection closed or failed (socket error, bad frame). Idempotent.
    pub fn handle_disconnect(&mut self, now_ms: u64, conn: ConnId, reason: impl fmt::Display) {
        if let Some(peer) = self.session.disconnect(conn, &reason) {
            self.depart(now_ms, peer, &reason);
        }
    }

    /// Timers: heartbeats, handshakes and held tasks. A call before a deadline is a no-op.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.release_holds(now_ms);
        self.retain(now_ms);
        self.summarise_events(now_ms);
        match self.next_sweep_ms {
            Some(at) if now_ms >= at => {}
            _ => return,
        }
        self.next_sweep_ms = None;
        self.session.expire_handshakes(now_ms);
        self.session.summarise_logs(now_ms);
        for s in self.peer_log.summarise(now_ms) {
            let name = s
                .peer
                .and_then(|w| self.workers.name(w))
                .unwrap_or("other workers");
            info!(
                "worker {name}: {} more lines about dropped reports in the last {:.1} s (not \
                 logged one by one)",
                s.suppressed,
                s.over_ms as f64 / 1e3
            );
        }
        let timeout = self.config.heartbeat_timeout_ms;
        // In id order, so the simulator replays from a seed.
        let silent: Vec<(WorkerId, u64)> = self
            .workers
            .iter()
            .filter(|w| w.is_alive())
            .map(|w| (w.id, now_ms.saturating_sub(w.last_seen_ms)))
            .filter(|&(_, quiet)| quiet >= timeout)
            .collect();
        for (id, quiet_ms) in silent {
            // The connection first, so nothing said while the worker is lost can reach it.
            let reason = CloseReason::HeartbeatTimeout { quiet_ms };
            self.session.close_worker(id, reason.clone());
            self.lose_worker(now_ms, id, &reason);
        }
        if let Some(factor) = self.config.speculate {
            self.speculate(now_ms, factor);
        }
        self.close_idle_clients(now_ms);
        self.chatter.summarise(now_ms, self.pools.len());
        // Suppressed lines are summed up even after their peers have gone.
        if !self.session.is_empty()
            || self.session.has_pending_logs()
            || self.peer_log.has_pending()
        {
            self.arm_sweep(now_ms);
        }
    }

    /// Closes clients that sent nothing for `client_idle_timeout_ms` and wait for nothing.
    fn close_idle_clients(&mut self, now_ms: u64) {
        let Some(timeout_ms) = self.config.client_idle_timeout_ms else {
            return;
        };
        if now_ms < self.next_idle_check_ms {
            return;
        }
        self.next_idle_check_ms = now_ms + 1_000;
        for (client, idle_ms) in self.session.idle_clients(now_ms, timeout_ms) {
            // IMPORTANT: a `wait` may rightly last for hours with nothing said, and a client
            // reading a long reply sends nothing until it has it all.
            if self.waiters.has_client(client) || self.replies.has_client(client) {
                continue;
            }
            debug!("{client}: idle for {idle_ms} ms, closing");
            self.close_client(client, CloseReason::ClientIdle { idle_ms });
        }
    }

    /// Closes a client's connection from the core's side (the session forgets it at once, and
    /// no `Departed` follows), and forgets what the core kept for it.
    fn close_client(&mut self, client: ClientId, reason: CloseReason) {
        self.session.close_client(client, reason);
        self.forget_client(client);
    }

    /// A client is gone: its waits, replies in progress and last job go with it.
    fn forget_client(&mut self, client: ClientId) {
        self.waiters.drop_client(client);
        self.replies.drop_client(client);
        self.last_job.remove(&client);
    }

    /// A peer's connection is gone: a worker's tasks go back, a client's waits end.
    fn depart(&mut self, now_ms: u64, peer: Departed, reason: &dyn fmt::Display) {
        match peer {
            Departed::Worker(id) => self.lose_worker(now_ms, id, reason),
            Departed::Client(id) => self.forget_client(id),
        }
    }

    // ---- the per-turn step -------------------------------------------------------------------

    /// Places queued tasks on workers with free slots, then sends this turn's batched frames.
    pub fn dispatch(&mut self, now_ms: u64) {
        // Every turn, placing or not, so the list holds at most one turn's changes.
        self.refresh_placement();
        if self.dirty {
            self.dirty = false;
            self.place(now_ms);
            if self.workers.prefetching() > 0 {
                self.displace_prefetched(now_ms);
                self.rebalance();
            }
        }
        for (worker, batch) in std::mem::take(&mut self.assign_batches) {
            if !self.workers.is_alive(worker) {
                continue;
            }
            for chunk in chunks_within(batch, REPLY_FRAME_BUDGET) {
                if chunk.len() == 1 {
                    // Alone in its chunk: it may be too big for any frame (a spec accepted before
                    // the limits). Such a run fails, saying why, rather than wait forever for a
                    // frame that is never sent.
                    let len = encoded_len(&FromMaster::Assign(chunk.clone()));
                    if len + 4 > protocol::MAX_FRAME {
                        self.unsendable(now_ms, worker, &chunk[0], len);
                        continue;
                    }
                }
                self.session.send_worker(worker, FromMaster::Assign(chunk));
            }
        }
        if !self.waiters.is_empty() {
            self.waiters.flush(&mut self.session);
        }
    }

    /// An assignment that cannot be encoded within a frame: its run ends as failed to start.
    fn unsendable(&mut self, now_ms: u64, worker: WorkerId, a: &Assignment, len: usize) {
        let error = format!(
            "cannot hand the task to a worker: its assignment is {len} bytes encoded, more than \
             the frame limit of {} bytes",
            protocol::MAX_FRAME
        );
        warn!("task {}: {error}", a.task);
        self.on_finished(
            now_ms,
            worker,
            a.task_ref().completion(TaskOutcome::Failed { error }, 0),
        );
    }

    fn place(&mut self, now_ms: u64) {
        let mut blocked = Vec::new();
        loop {
            // The last assignment changed its worker's capacity.
            self.refresh_placement();
            let (tasks, avoid, workers) = (&self.tasks, &self.avoid, &self.workers);
            let next = self.pools.next(|id, w| {
                tasks.get(id).is_some_and(|t| {
                    t.runs_on(w)
                        || t.spec.time_request_ms.is_some_and(|needed| {
                            workers.get(w).is_some_and(|w| !w.lives_for(now_ms, needed))
                        })
                }) || (!avoid.is_empty() && avoid.get(&id) == Some(&w))
            });
            match next {
                Next::Place(id, pick) => self.assign_run(now_ms, id, pick.worker, pick.score),
                // Avoiding the worker a task was retracted from is a preference: with nowhere
                // else to go, it goes back.
                Next::Blocked(id) if self.avoid.remove(&id).is_some() => self.put_back(id),
                Next::Blocked(id) => blocked.push(id),
                Next::Done => break,
            }
        }
        for id in blocked {
            self.put_back(id);
        }
    }

    /// Hands `id` to `worker`: its first run if it is queued, another copy if it runs already.
    fn assign_run(&mut self, now_ms: u64, id: TaskId, worker: WorkerId, score: f64) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let attempt = if t.state == TaskState::Queued {
            let attempt = t.attempt;
            if !t.dispatched {
                self.metrics.assigned_first(now_ms, t.submitted_ms);
            }
            self.tasks.assign(id, worker);
            attempt
        } else {
            self.tasks.add_copy(id, worker)
        };
        if !self.avoid.is_empty() {
            self.avoid.remove(&id);
        }
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let (spec, priority) = (task.spec.clone(), task.spec.priority);
        let copy = task
            .copies
            .as_ref()
            .map(|c| (c.started, task.copies_wanted()));
        let wants_copy = task.wants_copy();
        let key = queue_key(self.config.order, id, task);
        let Some(change) = self.workers.assign(worker, id) else {
            return;
        };
        self.learn(change);
        self.workers.note_handed(worker, id, now_ms);
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        // Only a run held beyond the slots can be displaced or moved: one handed to a free slot
        // starts at once. Indexing only those keeps a wide prefetching worker (64 slots, one
        // held) from paying an ordered-set insert and remove for every task it runs; and only
        // once priorities differ, when displacement can happen (`Unstarted`).
        let held = w.busy() > w.info.slots as usize;
        self.events.task(now_ms, || StreamEvent::Task {
            id: id.0,
            state: TaskState::Running.as_str(),
            worker: Some(w.info.name.clone()),
            at_ms: now_ms,
        });
        let level = self.chatter.task_line(now_ms, Event::Assigned);
        log!(
            level,
            "task {id} (priority {priority}, attempt {attempt}) -> {} (score {score:.2}){}",
            w.info.name,
            copy.map(|(n, of)| format!(", copy {n} of {of}"))
                .unwrap_or_default()
        );
        if held {
            self.tasks.mark_prefetched(id, worker);
            if self.unstarted.indexing() {
                self.unstarted.insert(key.priority, key.order, id, worker);
            }
        }
        if wants_copy {
            // The next copy goes out in queue order, like any task, to another worker.
            self.put_back(id);
        }
        self.assign_batches
            .entry(worker)
            .or_default()
            .push(Assignment {
                task: id,
                attempt,
                incarnation: self.epochs.current(),
                spec,
            });
    }

    // ---- output ------------------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<Output> {
        self.session.poll_output()
    }

    /// Tasks queued or running: none means no output is on its way (the shell then gives
    /// the memory of a burst back, see `server.rs`).
    pub fn tasks_in_flight(&self) -> u64 {
        self.tasks.count(TaskState::Queued) + self.tasks.count(TaskState::Running)
    }

    /// The gate rule, one copy for the shell and the simulator: whether replies gated on these
    /// connections (waiting for the journal commit) force the commit at the end of this turn.
    /// A client blocked in a wait does not: the wait's own answer will, and the group commit's
    /// window bounds the rest (see [`GroupCommit`]). So `submit --wait` of a short task costs one
    /// commit, not two.
    pub fn commit_forced_by(&self, gated: impl IntoIterator<Item = ConnId>) -> bool {
        gated.into_iter().any(|conn| !self.waits_on(conn))
    }

    /// Whether a client on `conn` is blocked in a wait.
    fn waits_on(&self, conn: ConnId) -> bool {
        self.session
            .client_on(conn)
            .is_some_and(|client| self.waiters.has_client(client))
    }

    /// Whether `dispatch` or `poll_output` has something to do (the shell loops until not).
    pub fn has_work(&self) -> bool {
        self.dirty || self.session.has_output()
    }

    /// When `handle_timeout` should next be called, if at all.
    pub fn poll_timeout(&self) -> Option<u64> {
        let hold = self.holds.next_release();
        [
            self.next_sweep_ms,
            hold,
            self.events.next_deadline(),
            self.retention_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- getters -----------------------------------------------------------------------------

    /// The whole status at once (tests, the simulator); clients get it in chunks.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            workers: self.workers.iter().map(|w| self.worker_status(w)).collect(),
            ..self.status_counts()
        }
    }

    fn worker_status(&self, w: &workers::Worker) -> WorkerStatus {
        WorkerStatus {
            allocation: w.info.allocation.as_ref().map(|a| a.job_id.clone()),
            allocation_ends_ms: w.ends_at_ms,
            id: w.id,
            name: w.info.name.clone(),
            group: w.info.group.clone(),
            host: w.info.host.clone(),
            addr: w.addr.clone(),
            state: if w.is_alive() {
                WorkerState::Alive
            } else {
                WorkerState::Dead
            },
            slots: w.info.slots,
            prefetch: w.prefetch_now(),
            running: w.assigned.len() as u32,
            cpu_percent: w.load.cpu_percent,
            load_avg_1m: w.load.load_avg_1m,
            mem_used: w.load.mem_used,
            mem_total: w.load.mem_total,
            done: w.done,
            last_seen_ms: w.heard.then_some(w.last_seen_ms),
        }
    }

    /// The status without its workers.
    fn status_counts(&self) -> StatusReport {
        let t = &self.tasks;
        StatusReport {
            policy: self.pools.kind().to_string(),
            workers: Vec::new(),
            queued: t.count(TaskState::Queued),
            running: t.count(TaskState::Running),
            succeeded: t.count(TaskState::Succeeded),
            failed: t.count(TaskState::Failed)
                + t.count(TaskState::TimedOut)
                + t.count(TaskState::Cancelled)
                + t.count(TaskState::WorkerLost)
                + t.count(TaskState::DependencyFailed),
            waiting: t.count(TaskState::Waiting),
            unserved: self.unserved_groups(),
        }
    }

    /// Groups with queued tasks and no live worker of theirs, at most [`MAX_UNSERVED_LISTED`]
    /// (a submission may name a thousand groups; a status stays small). One pass over the
    /// workers, and only when some group has queued tasks.
    fn unserved_groups(&self) -> Vec<(String, u64)> {
        let lens = self.pools.queue_lens(MAX_UNSERVED_LISTED);
        let waiting: Vec<&(String, u64)> = lens
            .listed
            .iter()
            .skip(1) // the shared pool: any worker serves it
            .filter(|(_, n)| *n > 0)
            .collect();
        if waiting.is_empty() {
            return Vec::new();
        }
        let served: BTreeSet<&str> = self
            .workers
            .iter()
            .filter(|w| w.is_alive())
            .filter_map(|w| w.info.group.as_deref())
            .collect();
        waiting
            .into_iter()
            .filter(|(g, _)| !served.contains(g.as_str()))
            .take(MAX_UNSERVED_LISTED)
            .cloned()
            .collect()
    }

    pub fn task(&self, id: TaskId) -> Option<TaskResult> {
        self.tasks.get(id).map(|t| self.result_view(id, t))
    }

    // ---- joining -----------------------------------------------------------------------------

    /// A worker passed the handshake: give it its id (its old one if the name is known) and let
    /// the session layer bind and welcome it.
    fn register_worker(&mut self, now_ms: u64, hello: WorkerHello) {
        let WorkerHello { ticket, info, addr } = hello;
        if let Some(refusal) = self.name_taken(now_ms, &info) {
            return self.session.refuse_worker(now_ms, ticket, refusal);
        }
        let (name, slots, host) = (info.name.clone(), info.slots, info.host.clone());
        let (prefetch, adaptive) = (info.prefetch, info.prefetch_adaptive);
        let heartbeat_ms = self.heartbeat_for(&info);
        // A worker coming back (perhaps in another group) leaves the pools it was in and enters
        // the ones it belongs to now.
        let (joined, change) = self.workers.register(info, addr.clone(), now_ms);
        self.learn(change);
        let id = joined.id;
        let replaced = self.session.accept_worker(ticket, id, heartbeat_ms);
        if self.config.log_limit_bytes != protocol::limits::DEFAULT_LOG_LIMIT_BYTES {
            // After `Welcome`, before any task: the worker streams no more than we keep.
            self.session.send_worker(
                id,
                FromMaster::LogLimit {
                    per_stream_bytes: self.config.log_limit_bytes,
                },
            );
        }
        debug_assert_eq!(
            replaced, joined.replaced,
            "the tables agree on who was alive"
        );
        if joined.replaced {
            // The same worker reconnected before we noticed its old connection die.
            self.requeue_from(now_ms, id, &"reconnected on a new connection");
        }
        let prefetch = match (prefetch, adaptive) {
            (0, _) => String::new(),
            (n, false) => format!(", prefetch {n}"),
            (n, true) => format!(", prefetch up to {n} while its tasks are short"),
        };
        self.events.worker(|| StreamEvent::WorkerJoined {
            worker: name.clone(),
            group: self.workers.get(id).and_then(|w| w.info.group.clone()),
            addr: addr.clone(),
            slots,
            at_ms: now_ms,
        });
        // "worker NAME joined" is what scripts grep for; the id only disambiguates.
        info!(
            "worker {name} joined from {addr} ({id}, host {host}, {}{prefetch})",
            protocol::plural::count(slots, "slot", "slots")
        );
    }

    /// The heartbeat interval to tell a worker: the one it asked for if that meets the timeout
    /// (at least two reports per timeout), else ours, with a line that says so. A worker that
    /// reports every 5 s against a 3 s timeout would be declared dead every 3 s, forever.
    fn heartbeat_for(&self, info: &WorkerInfo) -> u64 {
        let ours = self.config.heartbeat_interval_ms;
        let timeout = self.config.heartbeat_timeout_ms;
        match info.heartbeat_interval_ms {
            0 => ours,
            asked if asked.saturating_mul(2) <= timeout => asked,
            asked => {
                info!(
                    "worker {} asked for heartbeat {}; told to use {}, the timeout is {}",
                    info.name,
                    ms(asked),
                    ms(ours),
                    ms(timeout)
                );
                ours
            }
        }
    }

    /// Why `info` may not take its name now: another live worker holds it. A worker that really
    /// restarted finds its old connection gone (closed, or silent past the heartbeat timeout and
    /// swept) and takes its name and id back; the same process (host and pid) reconnecting
    /// before we saw its old connection die replaces it.
    fn name_taken(&self, now_ms: u64, info: &WorkerInfo) -> Option<Refusal> {
        let old = self.workers.by_name(&info.name).filter(|w| w.is_alive())?;
        let quiet_ms = now_ms.saturating_sub(old.last_seen_ms);
        let timeout_ms = self.config.heartbeat_timeout_ms;
        let same_process = old.info.host == info.host && old.info.pid == info.pid;
        if same_process || quiet_ms >= timeout_ms {
            return None;
        }
        Some(Refusal::NameInUse {
            name: info.name.clone(),
            addr: old.addr.clone(),
            quiet_ms,
            timeout_ms,
        })
    }

    // ---- workers -----------------------------------------------------------------------------

    fn on_worker_message(&mut self, now_ms: u64, id: WorkerId, msg: ToMaster) {
        self.workers.seen(id, now_ms);
        match msg {
            ToMaster::Load(load) => {
                if let Some(change) = self.workers.set_load(id, load) {
                    self.learn(change);
                }
            }
            ToMaster::Started(refs) => {
                for r in refs {
                    if self.is_current(id, r) {
                        if let Some(t) = self.tasks.get(r.task).filter(|_| r.attempt.0 == 1) {
                            self.metrics.started_first(now_ms, t.submitted_ms);
                        }
                        self.tasks.mark_started(r.task, id, now_ms);
                        self.forget_unstarted(r.task, id);
                        if let Some(change) = self.workers.note_started(id, r.task, now_ms) {
                            self.learn(change);
                        }
                    }
                }
            }
            ToMaster::Retracted(refs) => self.on_retracted(id, refs),
            ToMaster::Finished(done) => {
                let mut drops = FrameDrops::default();
                for c in done {
                    // A worker that broke the protocol mid-frame is forgotten: the rest of its
                    // frame is not credited to anything.
                    if !self.workers.is_alive(id) {
                        break;
                    }
                    if let Some((why, r)) = self.on_finished(now_ms, id, c) {
                        drops.add(why, r);
                    }
                }
                self.log_drops(now_ms, id, &drops);
            }
            ToMaster::Running(refs) => self.on_running(now_ms, id, refs),
            ToMaster::Output(chunks) => self.on_output(id, chunks),
            // Its disconnect follows; only the log line differs.
            ToMaster::Leaving => self.workers.leaving(id),
            other => {
                self.worker_broke_protocol(now_ms, id, Violation::WorkerMayNotSend(other.name()))
            }
        }
    }

    /// Output of running commands: each chunk is accepted only for a run whose outcome may still
    /// count, and only from the worker it was handed to (`logs.rs`); the rest is dropped with one
    /// line per frame.
    fn on_output(&mut self, worker: WorkerId, chunks: Vec<OutputChunk>) {
        let mut dropped = 0usize;
        let mut first = None;
        for chunk in chunks {
            let r = chunk.task;
            // The offset is the worker's word: one whose chunk would end past u64::MAX is no
            // stream's, and would wrap the store's count of bytes received.
            let counts = chunk.bytes.len() <= MAX_OUTPUT_CHUNK_BYTES
                && chunk.offset.checked_add(chunk.bytes.len() as u64).is_some()
                && (self.is_current(worker, r)
                    || (self.epochs.owns(r)
                        && self.tasks.get(r.task).map(|t| t.state) == Some(TaskState::Queued)
                        && self.may_report(worker, r)));
            if !counts {
                dropped += 1;
                first.get_or_insert(r);
                continue;
            }
            self.logged.note(r.task);
            self.session.push_log(LogOp::Append(chunk));
        }
        if let Some(r) = first {
            // Expected for a copy that lost (it prints on until it is killed): debug only.
            debug!(
                "dropped {dropped} output chunks from worker {worker} for runs that cannot count \
                 (first: task {} attempt {})",
                r.task, r.attempt
            );
        }
    }

    /// Whether `r` names the attempt `worker` is currently supposed to run.
    fn is_current(&self, worker: WorkerId, r: TaskRef) -> bool {
        self.tasks.get(r.task).is_some_and(|t| t.is_run(worker, r))
    }

    /// Whether `worker` may report run `r`, which is not current: a run of this incarnation only
    /// if it was handed to that worker (and given up when the master lost it); a run of an
    /// earlier one (unknown: assignments are not journaled) only if the worker could have been
    /// given the task at all, by its group.
    fn may_report(&self, worker: WorkerId, r: TaskRef) -> bool {
        if r.incarnation == self.epochs.current() {
            return self.given_up.was_handed(worker, r);
        }
        let (Some(t), Some(w)) = (self.tasks.get(r.task), self.workers.get(worker)) else {
            return false;
        };
        t.spec.group.is_none() || t.spec.group == w.info.group
    }

    /// One line per kind of dropped result in a frame, each with its count and first run: a
    /// forged or broken frame of thousands of ids costs a few lines, not thousands, and a worker
    /// that sends many such frames is limited per second on top (`peer_log`).
    fn log_drops(&mut self, now_ms: u64, worker: WorkerId, drops: &FrameDrops) {
        for (why, count, first) in drops.kinds() {
            let level = match why {
                // A copy cancelled because another won is expected, not news.
                Dropped::StaleCancelled => Level::Debug,
                Dropped::Stale => Level::Info,
                Dropped::Forged | Dropped::ReusedId => Level::Warn,
            };
            if level <= Level::Info && !self.peer_log.allow(now_ms, &worker) {
                continue;
            }
            let name = self.workers.name(worker).unwrap_or("?");
            log!(
                level,
                "dropped {count} {} from worker {name} ({worker}) (first: task {} attempt {}, \
                 incarnation {})",
                why.describe(),
                first.task,
                first.attempt,
                first.incarnation
            );
        }
    }

    /// Credits one completion; returns why it was dropped, if it was.
    fn on_finished(
        &mut self,
        now_ms: u64,
        worker: WorkerId,
        mut c: Completion,
    ) -> Option<(Dropped, TaskRef)> {
        // IMPORTANT: before anything keeps or journals it: the outcome's record and every reply
        // that carries it must fit a frame, whatever the worker sent.
        if protocol::limits::cap_outcome(&mut c.outcome) {
            debug!("task {}: the worker's report was cut to its limits", c.task);
        }
        let r = c.task_ref();
        if matches!(c.outcome, TaskOutcome::WorkerLost) {
            self.worker_broke_protocol(now_ms, worker, Violation::WorkerLostReported);
            return None;
        }
        if let Some(change) = self.workers.drained(worker, r) {
            // A losing copy is gone: its slot is free now.
            self.learn(change);
        }
        if !self.is_current(worker, r) {
            if !self.epochs.owns(r) {
                // IMPORTANT: this run was handed out by an earlier incarnation for a submission
                // that died uncommitted with it; the id now names another task.
                return Some((Dropped::ReusedId, r));
            }
            let waiting = self.tasks.get(c.task).map(|t| t.state) == Some(TaskState::Queued);
            // IMPORTANT: a stale `Cancelled` answers a cancel of ours (a duplicate run, a losing
            // copy); it never says how the task ended. Found by the simulator with cut links.
            if !waiting || matches!(c.outcome, TaskOutcome::Cancelled) {
                // Final already, or running as another attempt (or unknown): that attempt's
                // result will count.
                let why = match c.outcome {
                    TaskOutcome::Cancelled => Dropped::StaleCancelled,
                    _ => Dropped::Stale,
                };
                return Some((why, r));
            }
            // IMPORTANT: only the worker the run was handed to may end a waiting task with it;
            // anything else is a forged result (or another worker's mistake).
            if !self.may_report(worker, r) {
                return Some((Dropped::Forged, r));
            }
            // The attempt we gave up on (its worker vanished, or the master restarted) finished
            // before anyone ran the task again: take its result rather than run it twice.
            self.dequeue(c.task);
            self.holds.unhold(c.task);
            self.tasks.credit(worker, r);
            // When it started is unknown here (given up, or an earlier incarnation's); its own
            // run time says, so `results` still shows how long it ran.
            self.tasks
                .mark_started_if_unknown(c.task, now_ms.saturating_sub(c.run_ms));
            info!(
                "task {} attempt {} finished on {} while waiting to run again: result kept",
                c.task,
                c.attempt,
                self.workers.name(worker).unwrap_or("?")
            );
        } else {
            if let Some(change) = self.workers.note_run(worker, c.run_ms) {
                self.learn(change);
            }
            if let Some(change) = self.workers.unassign(worker, c.task) {
                self.learn(change);
            }
            self.forget_unstarted(c.task, worker);
        }
        self.workers.count_done(worker, c.run_ms);
        self.metrics.ran(c.run_ms);
        let succeeded = matches!(c.outcome, TaskOutcome::Exited { code: 0, .. });
        if succeeded {
            if let Some(t) = self.tasks.get(c.task) {
                self.estimate.record(t.spec.size, c.run_ms);
            }
            // The first success wins: the other copies are cancelled.
            let others = self.tasks.keep_only(c.task, worker);
            self.cancel_runs(c.task, others);
        } else if self.tasks.has_other_runs(c.task, worker) {
            self.tasks.end_run(c.task, worker);
            info!(
                "copy of task {} (attempt {}) ended on {} without success; other copies run on",
                c.task,
                c.attempt,
                self.workers.name(worker).unwrap_or("?")
            );
            return None;
        } else if self.tasks.get(c.task).is_some_and(Task::wants_copy) {
            // No other copy runs, but the round still owes one (not placed yet: too few free
            // workers): it runs before the task is judged, as it would have beside this one.
            // Found by an adversarial run: a `--replicas 2` task failed with one copy run.
            self.tasks.await_copy(c.task);
            // Queued already for the owed copy, as a task that wants one is: a no-op then.
            self.enqueue(c.task);
            self.avoid.insert(c.task, worker);
            self.events.queued(now_ms, c.task.0);
            info!(
                "copy of task {} (attempt {}) ended on {} without success; the copy still owed \
                 runs next",
                c.task,
                c.attempt,
                self.workers.name(worker).unwrap_or("?")
            );
            return None;
        }
        let failed_run = match &c.outcome {
            TaskOutcome::Failed { .. } => true,
            TaskOutcome::Exited { code, .. } => *code != 0,
            _ => false,
        };
        if failed_run && self.retry_after_failure(now_ms, c.task, worker) {
            return None;
        }
        let (state, result) = settle(c.outcome);
        let level = self.chatter.task_line(now_ms, Event::Finished);
        log!(
            level,
            "task {} {} on {} in {} ms{}",
            c.task,
            state.as_str(),
            self.workers.name(worker).unwrap_or("?"),
            c.run_ms,
            result
                .exit_code
                .filter(|&code| code != 0)
                .map(|code| format!(" (exit {code})"))
                .unwrap_or_default()
        );
        self.finish(now_ms, c.task, state, result, Some(c.attempt));
        None
    }

    /// Re-queues a failed run if its spec allows more (`retry_failed`), after a backoff that doubles
    /// with each failure. Returns whether it did.
    fn retry_after_failure(&mut self, now_ms: u64, id: TaskId, worker: WorkerId) -> bool {
        let Some(t) = self.tasks.get(id) else {
            return false;
        };
        if t.cancel_requested || t.failed_runs >= t.spec.retry_failed {
            return false;
        }
        let n = t.failed_runs + 1;
        let of = t.spec.retry_failed;
        let delay_ms = (RETRY_BACKOFF_BASE_MS << (n - 1).min(16)).min(RETRY_BACKOFF_MAX_MS);
        let running = t.state == TaskState::Running;
        self.drop_copy_request(id);
        if running {
            self.tasks.requeue_failed(id);
        } else {
            self.tasks.bump_failed(id);
        }
        self.metrics.retried += 1;
        self.events.queued(now_ms, id.0);
        let worker = self.workers.name(worker).unwrap_or("?");
        info!("task {id} failed on {worker}; retry {n}/{of} in {delay_ms} ms");
        self.holds.hold(id, now_ms + delay_ms);
        true
    }

    /// A (re)connected worker says what it is running: adopt attempts nobody else runs, cancel the
    /// rest, so nothing runs twice.
    fn on_running(&mut self, now_ms: u64, worker: WorkerId, refs: Vec<TaskRef>) {
        let mut cancel = Vec::new();
        let mut adopted = 0;
        let mut foreign = 0;
        let mut forged = Vec::new();
        for r in refs {
            if self.is_current(worker, r) {
                continue;
            }
            if !self.epochs.owns(r) {
                // A run of a submission lost with an earlier incarnation: nobody owns it.
                foreign += 1;
                cancel.push(r);
                continue;
            }
            if !self.may_report(worker, r) {
                // Never handed to this worker: not adopted, and stopped if it really runs.
                forged.push(r);
                cancel.push(r);
                continue;
            }
            let Some(t) = self.tasks.get(r.task) else {
                cancel.push(r);
                continue;
            };
            if t.state == TaskState::Queued {
                self.dequeue(r.task);
                self.holds.unhold(r.task);
                self.tasks.adopt(worker, r);
                self.tasks.mark_started_if_unknown(r.task, now_ms);
            } else if t.wants_copy() && !t.runs_on(worker) {
                // A copy of a redundant task that the task still wants: keep it as one.
                self.tasks.adopt_copy(worker, r, now_ms);
            } else {
                cancel.push(r);
                continue;
            }
            // Adopted runs may leave a redundant task wanting more copies: queue the request,
            // or drop it if this run was the last one wanted.
            if self.tasks.get(r.task).is_some_and(|t| t.wants_copy()) {
                self.enqueue(r.task);
            } else {
                self.drop_copy_request(r.task);
            }
            if let Some(change) = self.workers.assign(worker, r.task) {
                self.learn(change);
            }
            adopted += 1;
        }
        if let Some(change) = self.workers.mark_ready(worker) {
            self.learn(change);
        }
        let name = self.workers.name(worker).unwrap_or("?").to_string();
        if adopted > 0 {
            info!(
                "worker {name} still runs {}: adopted, not re-run",
                protocol::plural::count_usize(adopted, "task", "tasks")
            );
        }
        if foreign > 0 {
            warn!(
                "worker {name} runs {foreign} tasks handed out by an earlier incarnation of this \
                 master and never committed: cancelling them"
            );
        }
        if cancel.len() > foreign + forged.len() {
            info!(
                "worker {name} runs {} attempts that are final or run elsewhere: cancelling them",
                cancel.len() - foreign - forged.len()
            );
        }
        if let Some(first) = forged.first() {
            if self.peer_log.allow(now_ms, &worker) {
                warn!(
                    "worker {name} reports {} runs it was never handed (first: task {} attempt \
                     {}, incarnation {}): not adopted, cancelled",
                    forged.len(),
                    first.task,
                    first.attempt,
                    first.incarnation
                );
            }
        }
        if !cancel.is_empty() {
            self.session.send_worker(worker, FromMaster::Cancel(cancel));
        }
    }

    /// Puts a queued task into its pool's queue: the next `dispatch` places it.
    fn enqueue(&mut self, id: TaskId) {
        self.put_back(id);
        self.dirty = true;
    }

    /// Puts a task back into its pool's queue while placement runs (it could not go anywhere
    /// now, or wants its next copy): no new pass is needed for it.
    fn put_back(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.get(id) {
            let key = queue_key(self.config.order, id, t);
            self.pools.push(id, t.spec.group.as_deref(), key);
            if self.unstarted.saw_priority(key.priority) {
                self.index_held_runs();
            }
        }
    }

    /// Takes a task out of its pool's queue; returns whether it was there.
    fn dequeue(&mut self, id: TaskId) -> bool {
        match self.tasks.get(id) {
            Some(t) => self.pools.remove(id, t.spec.group.as_deref()),
            None => false,
        }
    }

    #[cfg(test)]
    fn is_queued(&self, id: TaskId) -> bool {
        self.tasks
            .get(id)
            .is_some_and(|t| self.pools.contains(id, t.spec.group.as_deref()))
    }

    /// Tells placement what changed about a worker. Every change to a worker's capacity comes
    /// from a `WorkerTable` method as a `PlacementChange`, so none can skip this.
    fn learn(&mut self, change: PlacementChange) {
        match change {
            PlacementChange::Capacity { worker, freed } => {
                self.stale_placement.push(worker);
                if freed {
                    self.dirty = true;
                }
            }
            PlacementChange::Joined {
                worker,
                previous_group,
            } => {
                if let Some(group) = previous_group {
                    self.pools.remove_worker(worker, group.as_deref());
                }
                if let Some(w) = self.workers.get(worker) {
                    self.pools
                        .update(worker, w.info.group.as_deref(), w.capacity());
                }
                self.dirty = true;
            }
            PlacementChange::Left { worker, group } => {
                self.pools.remove_worker(worker, group.as_deref());
            }
        }
    }

    /// Tells placement the capacity of every worker in `stale_placement`, as the table has it now.
    fn refresh_placement(&mut self) {
        for worker in self.stale_placement.drain(..) {
            // Placement holds live workers only: a dead one's last tasks leaving changes none.
            if let Some(w) = self.workers.get(worker).filter(|w| w.is_alive()) {
                self.pools
                    .update(worker, w.info.group.as_deref(), w.capacity());
            }
        }
        // A burst turn (millions of finishes) does not keep its room.
        if self.stale_placement.capacity() > STALE_PLACEMENT_KEPT {
            self.stale_placement = Vec::new();
        }
    }

    /// Moves held tasks whose time has come into the queue.
    fn release_holds(&mut self, now_ms: u64) {
        while let Some(id) = self.holds.pop_due(now_ms) {
            if self.tasks.get(id).map(|t| t.state) == Some(TaskState::Queued) {
                self.enqueue(id);
            }
        }
    }

    /// The worker sent what it may not: its connection is closed (after an `Error`) and it is
    /// lost, its tasks re-queued.
    fn worker_broke_protocol(&mut self, now_ms: u64, worker: WorkerId, v: Violation) {
        let Some(w) = self.workers.get(worker).filter(|w| w.is_alive()) else {
            return;
        };
        warn!(
            "protocol error from worker {} at {}: {v}",
            w.info.name, w.addr
        );
        // The connection first, so nothing said while the worker is lost can reach it.
        self.session.close_worker(worker, CloseReason::Protocol(v));
        self.lose_worker(now_ms, worker, &v);
    }

    /// A worker is gone: its unfinished tasks go back to the queue, or fail past their retries.
    fn lose_worker(&mut self, now_ms: u64, id: WorkerId, reason: &dyn fmt::Display) {
        let Some(change) = self.workers.lose(id) else {
            return;
        };
        self.learn(change);
        let (requeued, failed) = self.requeue_from(now_ms, id, reason);
        let name = self.workers.name(id).unwrap_or("?");
        let requeued_tasks = protocol::plural::count_usize(requeued, "task", "tasks");
        if self.workers.get(id).is_some_and(|w| w.left) {
            // Stopped on purpose (it said `Leaving`): news, not a warning.
            info!("worker {name} ({id}) left; {requeued_tasks} re-queued, {failed} failed");
        } else {
            warn!(
                "worker {name} ({id}) lost: {reason}; {requeued_tasks} re-queued, {failed} failed"
            );
        }
        self.events.worker(|| StreamEvent::WorkerLost {
            worker: name.to_string(),
            reason: reason.to_string(),
            requeued: requeued as u64,
            failed: failed as u64,
            at_ms: now_ms,
        });
    }

    /// Takes every task away from `id`: back to the queue with the next attempt (keeping its place),
    /// or final if cancelled or out of retries. Returns (re-queued, finished).
    fn requeue_from(
        &mut self,
        now_ms: u64,
        id: WorkerId,
        reason: &dyn fmt::Display,
    ) -> (usize, usize) {
        let Some((lost, change)) = self.workers.take_assigned(id) else {
            return (0, 0);
        };
        self.learn(change);
        let (mut requeued, mut finished) = (0, 0);
        let current = self.epochs.current();
        for task in lost {
            // Its late report (after a reconnect) is believed from this worker only.
            if let Some(run) = self
                .tasks
                .get(task)
                .and_then(|t| t.runs().find(|r| r.worker == id))
            {
                if run.incarnation == current {
                    self.given_up.record(task, id, run.attempt);
                }
            }
            if self.tasks.has_other_runs(task, id) {
                // Another copy runs on: the task is not lost.
                self.tasks.end_run(task, id);
                continue;
            }
            self.drop_copy_request(task);
            let Some(t) = self.tasks.get(task) else {
                continue;
            };
            if t.cancel_requested {
                self.finish(
                    now_ms,
                    task,
                    TaskState::Cancelled,
                    settle(TaskOutcome::Cancelled).1,
                    None,
                );
                finished += 1;
            } else if t.attempt.0 > t.spec.max_retries {
                let (state, mut result) = settle(TaskOutcome::WorkerLost);
                result.error = Some(format!(
                    "worker lost ({reason}) on attempt {}, retries exhausted",
                    t.attempt
                ));
                self.finish(now_ms, task, state, result, None);
                finished += 1;
            } else {
                self.tasks.requeue(task);
                self.metrics.requeued += 1;
                self.events.queued(now_ms, task.0);
                self.enqueue(task);
                debug!("task {task} re-queued after losing its worker");
                requeued += 1;
            }
        }
        (requeued, finished)
    }

    // ---- clients -----------------------------------------------------------------------------

    fn on_client_message(&mut self, now_ms: u64, client: ClientId, msg: ToMaster) {
        match msg {
            ToMaster::Submit { specs, count, name } => {
                self.on_submit(now_ms, client, specs, count, name)
            }
            ToMaster::Status => self.start_status(client),
            // Repeated ids would cost work and reply bytes per repeat (a 16 MiB frame holds ~2M).
            ToMaster::Results { ids, jobs } => self.on_results(client, unique(ids), unique(jobs)),
            ToMaster::Wait {
                ids,
                progress,
                jobs,
            } => self.on_wait(client, unique(ids), progress, unique(jobs)),
            ToMaster::Cancel { ids, jobs } => {
                self.on_cancel(now_ms, client, unique(ids), unique(jobs))
            }
            ToMaster::Jobs { ids } => self.on_jobs(now_ms, client, unique(ids)),
            ToMaster::Forget {
                ids,
                jobs,
                finished_before_ms,
            } => self.on_forget(
                now_ms,
                client,
                unique(ids),
                unique(jobs),
                finished_before_ms,
            ),
            ToMaster::ResultsPage {
                state,
                after,
                limit,
            } => self.start_page(client, state, after, limit),
            ToMaster::Log {
                task,
                stream,
                offset,
            } => self.on_log(client, task, stream, offset),
            ToMaster::AllocAdd(params) => self.on_alloc(client, AllocRequest::Add(params)),
            ToMaster::AllocList => self.on_alloc(client, AllocRequest::List),
            ToMaster::AllocRemove { id } => self.on_alloc(client, AllocRequest::Remove { id }),
            ToMaster::WaitSubmitted { progress } => match self.last_job.get(&client) {
                Some(&job) => self.wait_jobs(client, Vec::new(), progress, vec![job]),
                None => self.error(
                    client,
                    "nothing submitted on this connection to wait for".into(),
                ),
            },
            other => {
                let v = Violation::ClientMayNotSend(other.name());
                self.close_client(client, CloseReason::Protocol(v));
            }
        }
    }

    fn on_submit(
        &mut self,
        now_ms: u64,
        client: ClientId,
        specs: Vec<TaskSpec>,
        count: u32,
        name: Option<String>,
    ) {
        // A refused Submit leaves its WaitSubmitted nothing to wait for, not the one before.
        self.last_job.remove(&client);
        if specs.is_empty() || count == 0 {
            return self.error(client, "nothing to submit".into());
        }
        if let Some(name) = &name {
            if name.is_empty() {
                // A blank name in every `jobs` row names nothing; leave it out for the default.
                return self.error(client, "the job name is empty".into());
            }
            if name.len() > MAX_JOB_NAME_BYTES {
                return self.error(
                    client,
                    format!(
                        "the job name is {} bytes, more than the limit of {MAX_JOB_NAME_BYTES}",
                        name.len()
                    ),
                );
            }
        }
        let asked = specs.len() as u64 * count as u64;
        if asked > MAX_TASKS_PER_SUBMIT {
            return self.error(
                client,
                format!(
                    "{asked} tasks in one submission; at most {MAX_TASKS_PER_SUBMIT} at a time"
                ),
            );
        }
        let held = self.tasks.kept();
        if held.saturating_add(asked) > self.config.max_tasks {
            warn!(
                "refused a submission of {asked} tasks: {held} held, --max-tasks {}",
                self.config.max_tasks
            );
            return self.error(
                client,
                format!(
                    "cannot accept {asked} more tasks: the master holds {held} and its limit \
                     (--max-tasks) is {}",
                    self.config.max_tasks
                ),
            );
        }
        for (i, spec) in specs.iter().enumerate() {
            if let Err(e) = spec.validate() {
                return self.error(client, format!("task {} of the submission: {e}", i + 1));
            }
        }
        let warnings = self.submit_warnings(&specs);
        let first = self.tasks.next_id();
        let jobs = self.tasks.jobs();
        let job_range = |j: JobId| jobs.get(j).map(|job| (job.first, job.last()));
        let specs = match resolve_after(specs, first, count, job_range) {
            Ok(specs) => specs,
            Err(e) => return self.error(client, e),
        };
        // What the tasks submitted before say, per distinct `after` (a file whose every line
        // waits for one job scans it once), within a budget: a Submit cannot make the loop
        // walk more tasks than it could create.
        let mut verdicts: HashMap<Vec<(u64, u64)>, Verdict> = HashMap::new();
        let mut scan_budget = MAX_TASKS_PER_SUBMIT;
        let mut gated = Vec::new();
        let mut next = first.0;
        for spec in &specs {
            if !spec.after.is_empty() {
                let ranges = id_ranges(&spec.after);
                if !verdicts.contains_key(&ranges) {
                    let scanned: u64 = ranges
                        .iter()
                        .filter(|r| r.0 < first.0)
                        .map(|&(a, b)| b.min(first.0 - 1) - a + 1)
                        .sum();
                    if scanned > scan_budget {
                        return self.error(
                            client,
                            format!(
                                "the submission waits for more than {MAX_TASKS_PER_SUBMIT} \
                                 earlier tasks (each distinct after counted); split it"
                            ),
                        );
                    }
                    scan_budget -= scanned;
                    let verdict = self.dependency_verdict(&ranges, first);
                    verdicts.insert(ranges.clone(), verdict);
                }
                gated.push((TaskId(next), ranges));
            }
            next += u64::from(count);
        }
        let name = name.unwrap_or_else(|| protocol::names::job_name(&specs[0]));
        let job = self.tasks.open_job(name.clone(), first, asked, now_ms);
        if self.config.persist {
            // IMPORTANT: before its tasks' records: recovery reads a job before its tasks.
            self.session.push_record(Record::Job(JobRecord {
                id: job,
                name,
                first,
                count: asked,
                submitted_ms: now_ms,
            }));
        }
        let mut total = 0u64;
        self.metrics.submitted(now_ms);
        for spec in specs {
            let spec = Arc::new(spec);
            if self.config.persist {
                self.session.push_record(Record::Submitted {
                    first: self.tasks.next_id(),
                    count: count as u64,
                    spec: spec.clone(),
                    submitted_ms: now_ms,
                });
            }
            for _ in 0..count {
                let id = self.tasks.add(spec.clone(), now_ms);
                if spec.after.is_empty() {
                    self.enqueue(id);
                }
                total += 1;
            }
        }
        // IMPORTANT: every gate before any release is applied: a release may end tasks of this
        // submission, and a gate made later would count them as not yet final.
        for (gate_first, ranges) in gated {
            let existing = verdicts
                .get(&ranges)
                .copied()
                .unwrap_or(Verdict::Remaining(0));
            self.gate(gate_first, u64::from(count), ranges, first, existing);
        }
        self.settle_releases(now_ms);
        let last = TaskId(first.0 + total - 1);
        self.events.task(now_ms, || StreamEvent::Submitted {
            first: first.0,
            last: last.0,
            at_ms: now_ms,
        });
        info!(
            "accepted job {job}: {} ({first}..={last}), {} queued",
            protocol::plural::count(total, "task", "tasks"),
            self.pools.len()
        );
        self.last_job.insert(client, job);
        self.session.send_client(
            client,
            FromMaster::Submitted {
                first,
                count: total,
                job,
                warnings,
            },
        );
    }

    /// What a person submitting `specs` should hear now: a group that no live worker serves
    /// (its tasks wait until one joins), or more replicas than live workers that may run them
    /// (only that many copies start now). At most [`MAX_SUBMIT_WARNINGS`] lines; costs one pass
    /// over the workers, and only for a submission with a group or replicas.
    fn submit_warnings(&self, specs: &[TaskSpec]) -> Vec<String> {
        // The most replicas asked for, per group (`None`: any worker), for a few groups only.
        let mut asked: BTreeMap<Option<&str>, u32> = BTreeMap::new();
        for spec in specs {
            if spec.group.is_none() && spec.replicas <= 1 {
                continue;
            }
            let key = spec.group.as_deref();
            if !asked.contains_key(&key) && asked.len() >= MAX_SUBMIT_WARNINGS {
                continue;
            }
            let most = asked.entry(key).or_insert(1);
            *most = (*most).max(spec.replicas);
        }
        if asked.is_empty() {
            return Vec::new();
        }
        let mut live: BTreeMap<Option<&str>, u64> = asked.keys().map(|&g| (g, 0)).collect();
        for w in self.workers.iter().filter(|w| w.is_alive()) {
            if let Some(n) = live.get_mut(&None) {
                *n += 1;
            }
            if let Some(g) = w.info.group.as_deref() {
                if let Some(n) = live.get_mut(&Some(g)) {
                    *n += 1;
                }
            }
        }
        let mut warnings = Vec::new();
        for (group, replicas) in asked {
            let k = live.get(&group).copied().unwrap_or(0);
            match group {
                Some(g) if k == 0 => warnings.push(format!(
                    "no live worker is in group {g}: its tasks wait until one joins"
                )),
                _ if u64::from(replicas) > k && k > 0 => {
                    let whose = match group {
                        Some(g) => format!("of group {g} "),
                        None => String::new(),
                    };
                    warnings.push(format!(
                        "--replicas {replicas}, but only {k} live {} {whose}can run them: only \
                         {k} {} can run now",
                        if k == 1 { "worker" } else { "workers" },
                        if k == 1 { "copy" } else { "copies" },
                    ));
                }
                _ => {}
            }
        }
        warnings
    }

    /// The log store holds output of unfinished `task` from before a restart: its log is to be
    /// ended like any other (`LogOp::End`). Call before any connection.
    pub fn note_logged(&mut self, task: TaskId) {
        self.logged.note(task);
    }

    /// The id ranges of `jobs`, or the first unknown one.
    fn job_ranges(&self, jobs: &[JobId]) -> Result<Vec<(TaskId, TaskId)>, JobId> {
        jobs.iter()
            .map(|&id| {
                self.tasks
                    .jobs()
                    .get(id)
                    .map(|j| (j.first, j.last()))
                    .ok_or(id)
            })
            .collect()
    }

    /// A read of a task's log: the store (the shell's) answers, told whether the task is final
    /// and, for a final one, the tail to show if the store has nothing of it.
    fn on_alloc(&mut self, client: ClientId, request: AllocRequest) {
        if let Some(conn) = self.session.conn_of(client) {
            self.session.push_alloc(conn, request);
        }
    }

    /// Queued tasks that a worker of `group` could run (the allocator's demand).
    pub fn waiting_for(&self, group: Option<&str>) -> u64 {
        self.pools.waiting_for(group)
    }

    /// Every worker that joined from a batch-system allocation: its job id, name, whether it
    /// is connected, and its slots.
    pub fn allocation_workers(&self) -> impl Iterator<Item = (&str, &str, bool, u32)> {
        self.workers.iter().filter_map(|w| {
            let a = w.info.allocation.as_ref()?;
            Some((
                a.job_id.as_str(),
                w.info.name.as_str(),
                w.is_alive(),
                w.info.slots,
            ))
        })
    }

    fn on_log(&mut self, client: ClientId, task: TaskId, stream: OutputStream, offset: u64) {
        let Some(t) = self.tasks.get(task) else {
            return self.error(client, format!("unknown task id {task}"));
        };
        let Some(conn) = self.session.conn_of(client) else {
            return;
        };
        let done = t.state.is_final();
        let tail = done.then(|| {
            self.final_result(task, t)
                .map(|r| match stream {
                    OutputStream::Stdout => r.into_owned().stdout,
                    OutputStream::Stderr => r.into_owned().stderr,
                })
                .unwrap_or_default()
        });
        self.session.push_log(LogOp::Read {
            conn,
            task,
            stream,
            offset,
            done,
            tail,
        });
    }

    fn on_results(&mut self, client: ClientId, ids: Vec<TaskId>, jobs: Vec<JobId>) {
        if let Some(&id) = ids.iter().find(|&&id| self.tasks.get(id).is_none()) {
            return self.error(client, format!("unknown task id {id}"));
        }
        let ranges = match self.job_ranges(&jobs) {
            Ok(ranges) => ranges,
            Err(job) => return self.error(client, self.unknown_job(job)),
        };
        // Chunk by chunk, as the connection drains (`replies.rs`).
        if jobs.is_empty() {
            self.start_results(client, ids);
        } else {
            self.start_ranges(client, ids, ranges);
        }
    }

    fn on_jobs(&mut self, now_ms: u64, client: ClientId, ids: Vec<JobId>) {
        if let Some(&id) = ids.iter().find(|&&id| self.tasks.jobs().get(id).is_none()) {
            return self.error(client, self.unknown_job(id));
        }
        self.start_jobs(now_ms, client, ids);
    }

    fn on_wait(&mut self, client: ClientId, ids: Vec<TaskId>, progress: bool, jobs: Vec<JobId>) {
        if !jobs.is_empty() {
            return self.wait_jobs(client, ids, progress, jobs);
        }
        if ids.is_empty() {
            // The jobs with tasks unfinished now, and the latest job (what a `submit` just before
            // asked for, even if it ended already), each counted whole: a summary that also
            // counted the whole history would report last week's failures (and exit 1) for a
            // batch that succeeded. O(jobs), once per request.
            let latest = JobId(self.tasks.jobs().len() as u64);
            let jobs: Vec<JobId> = self
                .tasks
                .jobs()
                .iter()
                .filter(|&(id, j)| j.unfinished() > 0 || id == latest)
                .map(|(id, _)| id)
                .collect();
            if !jobs.is_empty() {
                return self.wait_jobs(client, ids, progress, jobs);
            }
            let upto = TaskId(self.tasks.len() as u64);
            let start = WaitStart {
                succeeded: 0,
                failed: 0,
            };
            let unfinished = self.tasks.unfinished();
            self.waiters
                .add_all(client, upto, unfinished, start, progress);
            return;
        }
        let mut start = WaitStart {
            succeeded: 0,
            failed: 0,
        };
        match self.pending_ids(ids, &[], &mut start) {
            Ok(pending) => self.waiters.add_ids(client, pending, start, progress),
            Err(id) => self.error(client, format!("unknown task id {id}")),
        }
    }

    /// The unfinished ones of `ids` outside `ranges` (those are counted with their jobs); the
    /// final ones are counted into `start`. `Err`: the first unknown id.
    fn pending_ids(
        &self,
        ids: Vec<TaskId>,
        ranges: &[(TaskId, TaskId)],
        start: &mut WaitStart,
    ) -> Result<BTreeSet<TaskId>, TaskId> {
        let mut pending = BTreeSet::new();
        for id in ids {
            if wait::in_ranges(ranges, id) {
                continue;
            }
            match self.tasks.get(id).map(|t| t.state) {
                None => return Err(id),
                Some(s) if !s.is_final() => {
                    pending.insert(id);
                }
                Some(TaskState::Succeeded) => start.succeeded += 1,
                Some(_) => start.failed += 1,
            }
        }
        Ok(pending)
    }

    /// A wait for whole jobs (and ids): a job's tasks are counted from its counts, not one by
    /// one, so waiting for a job of a million tasks costs its range, not a million entries.
    fn wait_jobs(&mut self, client: ClientId, ids: Vec<TaskId>, progress: bool, jobs: Vec<JobId>) {
        let mut ranges = match self.job_ranges(&jobs) {
            Ok(ranges) => ranges,
            Err(job) => return self.error(client, self.unknown_job(job)),
        };
        ranges.sort_unstable();
        let mut start = WaitStart {
            succeeded: 0,
            failed: 0,
        };
        let mut remaining = 0;
        for &job in &jobs {
            let Some(j) = self.tasks.jobs().get(job) else {
                continue;
            };
            let unfinished = j.unfinished();
            let succeeded = j.count(TaskState::Succeeded);
            remaining += unfinished;
            start.succeeded += succeeded;
            // Forgotten tasks (their outcome is gone) are not counted at all.
            start.failed += j.count - unfinished - succeeded - j.forgotten();
        }
        let pending = match self.pending_ids(ids, &ranges, &mut start) {
            Ok(pending) => pending,
            Err(id) => return self.error(client, format!("unknown task id {id}")),
        };
        self.waiters
            .add_ranges(client, pending, ranges, remaining, start, progress);
    }

    fn on_cancel(&mut self, now_ms: u64, client: ClientId, ids: Vec<TaskId>, jobs: Vec<JobId>) {
        let ranges = match self.job_ranges(&jobs) {
            Ok(ranges) => ranges,
            Err(job) => return self.error(client, self.unknown_job(job)),
        };
        let by_job: u64 = ranges.iter().map(|(f, l)| l.0 - f.0 + 1).sum();
        if by_job > MAX_CANCEL_JOB_TASKS {
            return self.error(
                client,
                format!(
                    "those jobs hold {by_job} tasks; at most {MAX_CANCEL_JOB_TASKS} are cancelled \
                     by job at once (name their ids instead)"
                ),
            );
        }
        let mut cancelled = Vec::new();
        let mut already_final = Vec::new();
        let mut unknown = Vec::new();
        let mut kills: BTreeMap<WorkerId, Vec<TaskRef>> = BTreeMap::new();
        let listed: HashSet<TaskId> = if ranges.is_empty() {
            HashSet::new()
        } else {
            ids.iter().copied().collect()
        };
        // A job's tasks after the ids, each once.
        let of_jobs = ranges
            .iter()
            .flat_map(|&(first, last)| (first.0..=last.0).map(TaskId))
            .filter(|id| !listed.contains(id));
        for id in ids.into_iter().chain(of_jobs) {
            let Some(t) = self.tasks.get(id) else {
                unknown.push(id);
                continue;
            };
            match t.state {
                TaskState::Queued => {
                    if !self.dequeue(id) {
                        self.holds.unhold(id);
                    }
                    self.finish(
                        now_ms,
                        id,
                        TaskState::Cancelled,
                        settle(TaskOutcome::Cancelled).1,
                        None,
                    );
                    cancelled.push(id);
                }
                TaskState::Waiting => {
                    self.finish(
                        now_ms,
                        id,
                        TaskState::Cancelled,
                        settle(TaskOutcome::Cancelled).1,
                        None,
                    );
                    cancelled.push(id);
                }
                TaskState::Running => {
                    for run in t.runs() {
                        kills.entry(run.worker).or_default().push(run.task_ref(id));
                    }
                    self.drop_copy_request(id);
                    self.tasks.request_cancel(id);
                    cancelled.push(id);
                }
                _ => already_final.push(id),
            }
        }
        for (worker, refs) in kills {
            self.session.send_worker(worker, FromMaster::Cancel(refs));
        }
        if !cancelled.is_empty() {
            info!(
                "cancelling {}",
                protocol::plural::count_usize(cancelled.len(), "task", "tasks")
            );
        }
        self.session.send_client(
            client,
            FromMaster::CancelDone {
                cancelled,
                already_final,
                unknown,
            },
        );
    }

    // ---- helpers -----------------------------------------------------------------------------

    /// The one place a task becomes final: tables, counters and waiters move together.
    /// `run`: the attempt whose report ended the task, if one did (its log is the task's).
    fn finish(
        &mut self,
        now_ms: u64,
        id: TaskId,
        state: TaskState,
        result: FinalResult,
        run: Option<Attempt>,
    ) {
        if self.logged.end(id) {
            self.session.push_log(LogOp::End {
                task: id,
                attempt: run,
                stdout_tail: result.stdout.clone(),
                stderr_tail: result.stderr.clone(),
            });
        }
        self.drop_copy_request(id);
        if !self.avoid.is_empty() {
            self.avoid.remove(&id);
        }
        self.tasks.finish(id, state, result, now_ms);
        if let Some(t) = self.tasks.get(id) {
            self.metrics.finished(now_ms, t.submitted_ms, state);
            let worker = t.worker;
            self.events.task(now_ms, || StreamEvent::Task {
                id: id.0,
                state: state.as_str(),
                worker: worker
                    .and_then(|w| self.workers.name(w))
                    .map(str::to_string),
                at_ms: now_ms,
            });
        }
        self.given_up.forget(id);
        self.waiters.on_final(id, state == TaskState::Succeeded);
        if self.config.persist {
            if let Some(t) = self.tasks.get(id) {
                let outcome = self.outcome_of(id, t, now_ms);
                self.session.push_record(Record::Finished { id, outcome });
            }
        }
        self.deps
            .on_final(id, state == TaskState::Succeeded, &mut self.releases);
        if !self.releases.is_empty() {
            self.settle_releases(now_ms);
        }
    }

    /// What the journal keeps of a final task.
    fn outcome_of(&self, id: TaskId, t: &Task, now_ms: u64) -> Outcome {
        let r = self.tasks.held(id);
        Outcome {
            state: t.state,
            attempts: t.attempt.0,
            copies: t.copies_ran(),
            worker: t.worker.and_then(|w| self.workers.shared_name(w)),
            exit_code: r.and_then(|r| r.exit_code),
            stdout: r.map(|r| r.stdout.clone()).unwrap_or_default(),
            stderr: r.map(|r| r.stderr.clone()).unwrap_or_default(),
            error: r.and_then(|r| r.error.clone()),
            started_ms: t.started_ms,
            finished_ms: t.finished_ms.unwrap_or(now_ms),
        }
    }

    fn result_view(&self, id: TaskId, t: &Task) -> TaskResult {
        let (exit_code, stdout, stderr, error) = match self.final_result(id, t) {
            Some(r) => {
                let r = r.into_owned();
                (r.exit_code, r.stdout, r.stderr, r.error)
            }
            None => (None, String::new(), String::new(), None),
        };
        TaskResult {
            id,
            state: t.state,
            kind: t.spec.kind.name(),
            cmd: t.spec.kind.argv().map(<[String]>::to_vec),
            group: t.spec.group.clone(),
            exit_code,
            worker: t
                .worker
                .and_then(|w| self.workers.name(w))
                .map(str::to_string),
            attempts: t.attempt.0,
            copies: t.copies_ran(),
            priority: t.spec.priority,
            submitted_ms: t.submitted_ms,
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            stdout,
            stderr,
            error,
            // Every task has one (a restore names jobs for tasks without one).
            job: self.tasks.job_of(id).unwrap_or(JobId(0)),
            name: t.spec.name.clone(),
            after: t.spec.after.clone(),
        }
    }

    /// A task that runs several copies may sit in the queue for its next one; once it is final,
    /// re-queued or cancelled, it wants none.
    fn drop_copy_request(&mut self, id: TaskId) {
        if self
            .tasks
            .get(id)
            .is_some_and(|t| t.copies.is_some() || t.spec.replicas > 1)
        {
            self.dequeue(id);
        }
    }

    /// Cancels runs of `task` that lost the race (another copy succeeded). Their slots stay busy
    /// (`draining`) until the workers report them ended.
    fn cancel_runs(&mut self, task: TaskId, runs: Vec<tasks::Run>) {
        for run in runs {
            let r = run.task_ref(task);
            if let Some(change) = self.workers.drain(run.worker, r) {
                self.learn(change);
            }
            self.forget_unstarted(task, run.worker);
            self.session
                .send_worker(run.worker, FromMaster::Cancel(vec![r]));
        }
    }

    /// Refuses a client's request; the connection stays open.
    fn error(&mut self, client: ClientId, message: String) {
        debug!("request refused: {message}");
        self.session
            .send_client(client, FromMaster::Error { message });
    }

    fn arm_sweep(&mut self, now_ms: u64) {
        if self.next_sweep_ms.is_none() {
            self.next_sweep_ms = Some(now_ms + SWEEP_INTERVAL_MS);
        }
    }

    /// Cross-structure invariants; tests call this after every step.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        let mut queued = 0;
        let mut copy_requests = 0;
        for (id, t) in self.tasks.iter() {
            match t.state {
                TaskState::Queued => {
                    queued += 1;
                    assert!(
                        self.is_queued(id) != self.holds.contains(id),
                        "queued task {id} must be in exactly one of the queue and the holds"
                    );
                }
                TaskState::Running => {
                    let mut seen = HashSet::new();
                    for run in t.runs() {
                        let w = self.workers.get(run.worker);
                        assert!(
                            w.is_some_and(|w| w.assigned.contains(&id) && w.is_alive()),
                            "running task {id} not held by a live worker"
                        );
                        assert!(seen.insert(run.worker), "two copies of {id} on one worker");
                    }
                    assert!(!seen.is_empty(), "running task {id} has no run");
                    if self.is_queued(id) {
                        assert!(t.wants_copy(), "running task {id} queued but wants no copy");
                        copy_requests += 1;
                    }
                }
                _ => assert!(!self.is_queued(id)),
            }
        }
        assert_eq!(queued + copy_requests, self.pools.len() + self.holds.len());
        for client in self.last_job.keys() {
            assert!(
                self.session.conn_of(*client).is_some(),
                "{client} is gone but its last job is kept"
            );
        }
        self.check_dependencies();
        self.tasks.jobs().sanity_check(self.tasks.len() as u64);
        // Every job's counts, kept on transitions, against a scan of its tasks.
        for (job, j) in self.tasks.jobs().iter() {
            for state in TaskState::ALL {
                let scanned = (j.first.0..=j.last().0)
                    .filter(|&id| self.tasks.get(TaskId(id)).is_some_and(|t| t.state == state))
                    .count() as u64;
                assert_eq!(
                    j.count(state),
                    scanned,
                    "job {job}: {} count",
                    state.as_str()
                );
            }
        }
        self.workers.sanity_check();
        self.session.sanity_check();
        self.deps.sanity_check();
        assert!(self.releases.is_empty() && !self.settling);
        for w in self.workers.iter() {
            assert_eq!(
                w.is_alive(),
                self.session.has_worker(w.id),
                "worker {} is alive exactly while it has a connection",
                w.id
            );
            if !w.is_alive() {
                assert!(w.assigned.is_empty(), "dead worker {} holds tasks", w.id);
            }
            assert!(
                // A refresh mends a live worker's entries, never a dead one's.
                (w.is_alive() && self.stale_placement.contains(&w.id))
                    || self.pools.agrees(
                        w.id,
                        w.info.group.as_deref(),
                        w.is_alive().then(|| w.capacity())
                    ),
                "placement has a stale capacity for worker {}",
                w.id
            );
            for &id in &w.assigned {
                assert!(
                    self.tasks.get(id).is_some_and(|t| t.runs_on(w.id)),
                    "worker {} holds task {id} that does not run there",
                    w.id
                );
            }
        }
    }
}

#[cfg(test)]
impl Core {
    /// What dependencies promise, by a scan: a task waits exactly while some dependency has not
    /// succeeded and none ended otherwise; a task that left `Waiting` for a queue (or ran) saw
    /// every dependency succeed; one that ended `DependencyFailed` has a dependency that ended
    /// otherwise. Small tables only (tests).
    pub fn check_dependencies(&self) {
        for (id, t) in self.tasks.iter() {
            if t.spec.after.is_empty() {
                continue;
            }
            // A forgotten dependency was final, its outcome no longer known: it says nothing.
            let next = self.tasks.next_id().0;
            let (forgotten, states): (Vec<u64>, Vec<u64>) = id_ranges(&t.spec.after)
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .partition(|&i| i < next && self.tasks.get(TaskId(i)).is_none());
            let states: Vec<Option<TaskState>> = states
                .into_iter()
                .map(|i| self.tasks.get(TaskId(i)).map(|d| d.state))
                .collect();
            let bad = !forgotten.is_empty()
                || states
                    .iter()
                    .any(|s| s.is_none_or(|s| s.is_final() && s != TaskState::Succeeded));
            let all_ok = states.iter().all(|&s| s == Some(TaskState::Succeeded));
            match t.state {
                TaskState::Waiting if !forgotten.is_empty() => {}
                TaskState::Waiting => {
                    assert!(!bad, "task {id} waits for a dependency that failed");
                    assert!(!all_ok, "task {id} waits though its dependencies succeeded");
                }
                TaskState::DependencyFailed => {
                    assert!(bad, "task {id} dependency_failed with no failed dependency")
                }
                TaskState::Queued | TaskState::Running => assert!(
                    all_ok || !forgotten.is_empty(),
                    "task {id} is {:?} before its dependencies succeeded",
                    t.state
                ),
                // Final: what it ended as is checked when it did (or came from a journal).
                _ => {}
            }
            if t.dispatched {
                assert!(
                    all_ok || !forgotten.is_empty(),
                    "task {id} ran before its dependencies succeeded"
                );
            }
        }
    }
}

/// A duration for a log line: `5s`, `1.5s`, `250ms`.
fn ms(ms: u64) -> String {
    if ms >= 1_000 && ms % 100 == 0 {
        format!("{}s", ms as f64 / 1e3)
    } else {
        format!("{ms}ms")
    }
}

/// The id ranges of a resolved `after` (only `After::Ids` are left once a submission is accepted).
fn id_ranges(after: &[After]) -> Vec<(u64, u64)> {
    let ranges = after
        .iter()
        .filter_map(|a| match a {
            After::Ids { first, last } => Some((first.0, last.0)),
            After::Spec(_) | After::Job(_) => None,
        })
        .collect();
    deps::normalise(ranges)
}

/// Checks and resolves every spec's `after` for a submission whose ids start at `first`, each
/// spec `count` times: references within it become the id ranges of that spec's copies, a job
/// its range (`job_range`: first and last id of a job, if there is one), and the whole is kept
/// sorted and merged. Refused: a cycle, a reference out of the submission, an id not submitted
/// before it, an unknown job.
fn resolve_after(
    mut specs: Vec<TaskSpec>,
    first: TaskId,
    count: u32,
    job_range: impl Fn(JobId) -> Option<(TaskId, TaskId)>,
) -> Result<Vec<TaskSpec>, String> {
    protocol::dag::check(&specs).map_err(|e| e.to_string())?;
    let count = u64::from(count);
    for (i, spec) in specs.iter_mut().enumerate() {
        if spec.after.is_empty() {
            continue;
        }
        let mut ranges = Vec::with_capacity(spec.after.len());
        for a in &spec.after {
            match *a {
                After::Ids { last, .. } if last >= first => {
                    return Err(format!(
                        "task {} of the submission waits for task {last}, which does not exist",
                        i + 1
                    ));
                }
                After::Ids { first, last } => ranges.push((first.0, last.0)),
                After::Spec(j) => {
                    let start = first.0 + u64::from(j) * count;
                    ranges.push((start, start + count - 1));
                }
                After::Job(job) => match job_range(job) {
                    Some((a, b)) => ranges.push((a.0, b.0)),
                    None => {
                        return Err(format!(
                            "task {} of the submission waits for job {job}, which does not exist",
                            i + 1
                        ))
                    }
                },
            }
        }
        spec.after = deps::normalise(ranges)
            .into_iter()
            .map(|(a, b)| After::Ids {
                first: TaskId(a),
                last: TaskId(b),
            })
            .collect();
    }
    Ok(specs)
}

/// `ids` without repeats, first occurrence kept (the set is only looked up: the order is the
/// input's).
fn unique<T: Copy + Eq + std::hash::Hash>(ids: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

fn queue_key(order: QueueOrder, id: TaskId, t: &Task) -> QueueKey {
    // The id is the submit sequence, so a re-queued task keeps its place among equals.
    QueueKey {
        priority: t.spec.priority,
        order: order.tie_breaker(id.0, t.spec.size),
    }
}

/// What the earlier tasks a gate waits for say (`Core::dependency_verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This many have not succeeded yet (none ended otherwise).
    Remaining(u64),
    /// This one ended otherwise than succeeded (or does not exist).
    Failed(TaskId),
}

/// Why a reported completion was not credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// The task is final, runs as another attempt, or is unknown.
    Stale,
    /// As `Stale`, a `Cancelled` (the answer to a cancel of ours).
    StaleCancelled,
    /// Of a submission lost with an earlier incarnation: the id names another task now.
    ReusedId,
    /// A run the master never handed to this worker.
    Forged,
}

impl Dropped {
    const ALL: [Dropped; 4] = [
        Dropped::Stale,
        Dropped::StaleCancelled,
        Dropped::ReusedId,
        Dropped::Forged,
    ];

    fn describe(self) -> &'static str {
        match self {
            Dropped::Stale => {
                "stale results (the task is final, unknown, or runs as another attempt)"
            }
            Dropped::StaleCancelled => "stale cancellations",
            Dropped::ReusedId => {
                "results of runs handed out before their task was submitted (ids reused after a \
                 crash)"
            }
            Dropped::Forged => "results for runs it was never handed",
        }
    }
}

/// The dropped completions of one `Finished` frame, by kind: a count and the first run.
#[derive(Debug, Default)]
struct FrameDrops {
    kinds: [(u64, Option<TaskRef>); 4],
}

impl FrameDrops {
    fn add(&mut self, why: Dropped, r: TaskRef) {
        let i = Dropped::ALL.iter().position(|&d| d == why).unwrap_or(0);
        let (count, first) = &mut self.kinds[i];
        *count += 1;
        first.get_or_insert(r);
    }

    fn kinds(&self) -> impl Iterator<Item = (Dropped, u64, TaskRef)> + '_ {
        Dropped::ALL
            .iter()
            .zip(&self.kinds)
            .filter_map(|(&why, &(count, first))| first.map(|r| (why, count, r)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Assigned,
    Finished,
}

/// Keeps per-task log lines readable: the first few each second at `info`, the rest at `debug`
/// with a one-line summary, so a 200,000-task batch does not flood the terminal or slow the loop.
#[derive(Debug, Default)]
struct Chatter {
    window_start_ms: u64,
    lines: u32,
    assigned: u64,
    finished: u64,
}

impl Chatter {
    fn task_line(&mut self, now_ms: u64, event: Event) -> Level {
        if now_ms >= self.window_start_ms + 1_000 && self.lines <= TASK_LINES_PER_SECOND {
            self.window_start_ms = now_ms;
            self.lines = 0;
            self.assigned = 0;
            self.finished = 0;
        }
        self.lines += 1;
        match event {
            Event::Assigned => self.assigned += 1,
            Event::Finished => self.finished += 1,
        }
        if self.lines <= TASK_LINES_PER_SECOND {
            Level::Info
        } else {
            Level::Debug
        }
    }

    fn summarise(&mut self, now_ms: u64, queued: usize) {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed < 1_000 || self.lines <= TASK_LINES_PER_SECOND {
            return;
        }
        info!(
            "last {:.1} s: {} tasks assigned, {} finished, {queued} queued (per-task lines at debug)",
            elapsed as f64 / 1e3,
            self.assigned,
            self.finished
        );
        self.window_start_ms = now_ms;
        self.lines = 0;
        self.assigned = 0;
        self.finished = 0;
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
