//! The simulated world: virtual time, an event queue, one client and many simulated workers, all
//! driving the real [`Core`] through its sans-IO API exactly as the mio shell does, minus sockets.
//!
//! Time is in microseconds here (task durations divided by worker speeds are rarely whole
//! milliseconds); the core is handed `now_us / 1000`. Events are kept in a binary heap keyed by
//! (time, sequence), so events at the same instant run in the order they were scheduled and a run
//! is a pure function of its inputs and seed.
//!
//! One loop turn takes every event due at the earliest pending instant, feeds each to the core
//! (`handle_*`), then alternates draining `poll_output` (answering what workers would answer:
//! `Welcome` → `Load` + `Running`, `Assign` → `Started` and a scheduled completion) and
//! `dispatch(now)` until the core has nothing more to say, and finally arms a timer event at
//! `poll_timeout()`.
//!
//! A simulated worker, once welcomed, sends `Load` every heartbeat interval the master asked for,
//! runs each assigned task for `base / rate` seconds (`base`: the sleep or spin, or a command's
//! size; a spec's timeout ends it earlier as `TimedOut`) and reports `Finished`. A host has a
//! `speed` (how fast its cores are; the master cannot see it) and may carry a `background` load
//! `b` in [0, 1) from other work that takes that share of every core, as CPU steal does on a
//! crowded VM host: its tasks run at `rate = speed × (1 - b)` and it reports
//! `cpu_percent = 100 × (b + (1 - b) × running / slots)`, which is `running / slots × 100` on a
//! dedicated host. With `fail_rate > 0` it dies after exponentially distributed up-times (a closed socket: `handle_disconnect`), loses what it was running, and
//! comes back `recover` later on a fresh connection under the same name. Each worker draws its
//! failures from its own seeded stream, so every policy in a comparison faces the same failures.

use super::workload::{base_seconds, exponential, unit, Workload};
use super::SimError;
use crate::core::policy::{PolicyKind, QueueOrder, SplitMix64};
use crate::core::{ConnId, Core, CoreConfig, Output};
use protocol::{
    Attempt, Completion, FromMaster, Incarnation, LoadReport, Role, TaskId, TaskOutcome, TaskState,
    ToMaster, WorkerInfo, PROTOCOL_VERSION,
};
use slab::Slab;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Derives an independent stream for one purpose (`tag`) from the run's seed.
pub fn stream(seed: u64, tag: u64) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ tag.wrapping_mul(0xA24B_AED4_963E_E407));
    SplitMix64::new(mix.next_u64())
}

/// Stream tags: changing one never shifts the draws of another.
pub const STREAM_SPEEDS: u64 = 1;
pub const STREAM_WORKLOAD: u64 = 2;
pub const STREAM_NONCES: u64 = 3;
pub const STREAM_BACKGROUND: u64 = 4;
/// Worker `i` uses `STREAM_WORKER + i`.
pub const STREAM_WORKER: u64 = 1 << 32;

/// One simulated worker host.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub name: String,
    pub group: u32,
    /// How fast the host's cores are, relative to 1 (invisible to the master).
    pub speed: f64,
    /// Other work on the host, as a share of every core, in [0, 1).
    pub background: f64,
    pub slots: u32,
}

impl WorkerSpec {
    /// Seconds of speed-1 work a running task does per second.
    pub fn rate(&self) -> f64 {
        self.speed * (1.0 - self.background)
    }

    /// The most speed-1 work per second the host's tasks can do (all slots busy).
    pub fn capacity(&self) -> f64 {
        f64::from(self.slots) * self.rate()
    }

    /// Whole-host CPU use with `n` tasks running, in percent.
    pub fn cpu_percent(&self, n: u32) -> f64 {
        let share = f64::from(n) / f64::from(self.slots.max(1));
        ((self.background + (1.0 - self.background) * share) * 100.0).min(100.0)
    }
}

/// `workers` hosts split into `groups` contiguous blocks named `g{group}-w{index in group}`, with
/// speeds drawn uniformly in `[1 / spread, spread]` and background loads uniformly in
/// `[0, background]`, each from its own stream.
pub fn fleet(
    workers: u32,
    groups: u32,
    slots: u32,
    speed_spread: f64,
    background: f64,
    seed: u64,
) -> Vec<WorkerSpec> {
    let mut rng = stream(seed, STREAM_SPEEDS);
    let mut bg_rng = stream(seed, STREAM_BACKGROUND);
    let groups = groups.clamp(1, workers.max(1));
    let start = |g: u32| (u64::from(g) * u64::from(workers) / u64::from(groups)) as u32;
    let (lo, hi) = (1.0 / speed_spread, speed_spread);
    let mut fleet = Vec::with_capacity(workers as usize);
    for g in 0..groups {
        for (j, _) in (start(g)..start(g + 1)).enumerate() {
            let speed = if speed_spread > 1.0 {
                lo + unit(&mut rng) * (hi - lo)
            } else {
                1.0
            };
            let background = if background > 0.0 {
                unit(&mut bg_rng) * background
            } else {
                0.0
            };
            fleet.push(WorkerSpec {
                name: format!("g{g}-w{j}"),
                group: g,
                speed,
                background,
                slots,
            });
        }
    }
    fleet
}

/// How the world is run.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub policy: PolicyKind,
    pub order: QueueOrder,
    pub seed: u64,
    /// Failures per worker per virtual second while up.
    pub fail_rate: f64,
    pub recover_us: u64,
    pub heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// What one run produced. Counts come from the core's state, not from the simulator's guesses.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub tasks: u64,
    pub succeeded: u64,
    /// Final as `WorkerLost` (retries exhausted).
    pub worker_lost: u64,
    /// Final as failed, timed out or cancelled.
    pub other_failed: u64,
    /// Still queued or running when the run ended (only if it stalled).
    pub unfinished: u64,
    /// Times a task went back to the queue because its worker was lost.
    pub requeued: u64,
    pub failures: u64,
    /// From the first submission to the last task that became final.
    pub makespan_us: u64,
    /// Per succeeded task: completion minus submission, in seconds, ascending.
    pub completion_s: Vec<f64>,
    pub workers: Vec<WorkerResult>,
    /// Nothing moved for too long; the rest counts as lost.
    pub stalled: bool,
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerResult {
    /// Speed-1 seconds of work done, including attempts lost to failures.
    pub work_s: f64,
    /// Attempts finished here.
    pub done: u64,
    pub failures: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Submit(usize),
    /// A running task reaches its end (or its timeout).
    Finish {
        worker: u32,
        incarnation: u32,
        slot: usize,
        task: TaskId,
        timed_out: bool,
    },
    Heartbeat {
        worker: u32,
        incarnation: u32,
    },
    Fail {
        worker: u32,
        incarnation: u32,
    },
    /// (Re)connect: at start, and after a failure.
    Connect {
        worker: u32,
    },
    Timer,
}

#[derive(Debug)]
struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

// IMPORTANT: ordered by (time, sequence) only, reversed so the std max-heap pops the earliest;
// `seq` is unique, so the order is total and replayable.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_us, other.seq).cmp(&(self.at_us, self.seq))
    }
}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}

#[derive(Debug)]
struct Running {
    task: TaskId,
    attempt: Attempt,
    /// The master incarnation that handed it out.
    master: Incarnation,
    start_us: u64,
    /// Speed-1 microseconds of work it takes.
    work_us: f64,
}

#[derive(Debug)]
struct SimWorker {
    conn: Option<ConnId>,
    /// Bumped at every death: events of an earlier life are ignored.
    incarnation: u32,
    heartbeat_us: u64,
    running: Slab<Running>,
    rng: SplitMix64,
    work_us: f64,
    done: u64,
    failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Owner {
    Nobody,
    Client,
    Worker(u32),
}

/// Most drain/dispatch rounds in one turn: a join takes two (Welcome → Load, then placement), so
/// more means the core and the simulator are answering each other forever.
const MAX_ROUNDS_PER_TURN: usize = 8;

/// Runs one simulation to the end and reports what happened.
pub fn run(
    cfg: &WorldConfig,
    fleet: &[WorkerSpec],
    workload: &Workload,
) -> Result<RunResult, SimError> {
    let mut world = World::new(cfg, fleet, workload);
    world.run()?;
    Ok(world.finish())
}

struct World<'a> {
    cfg: &'a WorldConfig,
    fleet: &'a [WorkerSpec],
    workload: &'a Workload,
    core: Core,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    workers: Vec<SimWorker>,
    /// Who holds each connection id (ids are never reused).
    owners: Vec<Owner>,
    client: ConnId,
    /// Submission times of requests whose `Submitted` reply has not come yet.
    awaiting_ids: VecDeque<u64>,
    /// Submission time of each task, by id - 1.
    arrival_us: Vec<u64>,
    timer_at_us: Option<u64>,
    nonces: SplitMix64,
    total: u64,
    /// Tasks known to be final.
    finals: u64,
    succeeded: u64,
    worker_lost: u64,
    requeued: u64,
    failures: u64,
    first_submit_us: Option<u64>,
    last_completion_us: u64,
    last_progress_us: u64,
    /// No progress for this long ends the run (see `stall_limit_us`).
    stall_limit_us: u64,
    stalled: bool,
    completion_s: Vec<f64>,
    events: u64,
    /// Set by input delivered while draining: the core may have more to do this turn.
    delivered: bool,
}

impl<'a> World<'a> {
    fn new(cfg: &'a WorldConfig, fleet: &'a [WorkerSpec], workload: &'a Workload) -> Self {
        let core = Core::new(CoreConfig {
            policy: cfg.policy,
            order: cfg.order,
            seed: cfg.seed,
            heartbeat_interval_ms: cfg.heartbeat_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            ..CoreConfig::default()
        });
        let workers = (0..fleet.len())
            .map(|i| SimWorker {
                conn: None,
                incarnation: 0,
                heartbeat_us: cfg.heartbeat_ms * 1_000,
                running: Slab::new(),
                rng: stream(cfg.seed, STREAM_WORKER + i as u64),
                work_us: 0.0,
                done: 0,
                failures: 0,
            })
            .collect();
        let total = workload.tasks();
        World {
            cfg,
            fleet,
            workload,
            core,
            heap: BinaryHeap::new(),
            seq: 0,
            workers,
            owners: Vec::new(),
            client: ConnId(0),
            awaiting_ids: VecDeque::new(),
            arrival_us: Vec::with_capacity(total as usize),
            timer_at_us: None,
            nonces: stream(cfg.seed, STREAM_NONCES),
            total,
            finals: 0,
            succeeded: 0,
            worker_lost: 0,
            requeued: 0,
            failures: 0,
            first_submit_us: None,
            last_completion_us: 0,
            last_progress_us: 0,
            stall_limit_us: stall_limit_us(cfg, fleet, workload),
            stalled: false,
            completion_s: Vec::new(),
            events: 0,
            delivered: false,
        }
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at_us,
            seq: self.seq,
            event,
        });
    }

    fn new_conn(&mut self, owner: Owner) -> ConnId {
        let conn = ConnId(self.owners.len());
        self.owners.push(owner);
        conn
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = Vec::with_capacity(32);
        for _ in 0..4 {
            n.extend_from_slice(&self.nonces.next_u64().to_le_bytes());
        }
        n
    }

    fn run(&mut self) -> Result<(), SimError> {
        // The client and the fleet join at time 0; work starts arriving 1 ms later, so every
        // worker has said hello and reported its load before the first placement.
        let client = self.new_conn(Owner::Client);
        self.client = client;
        let nonce = self.nonce();
        self.core
            .handle_connect(0, client, "sim-client".into(), nonce);
        self.core.handle_message(
            0,
            client,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Client,
                auth: Vec::new(),
            },
        );
        for w in 0..self.fleet.len() as u32 {
            self.schedule(0, Event::Connect { worker: w });
        }
        if let Some(first) = self.workload.submissions.first() {
            self.schedule(first.at_us + 1_000, Event::Submit(0));
        }
        while let Some(head) = self.heap.peek() {
            let now_us = head.at_us;
            if self.finals >= self.total && self.awaiting_ids.is_empty() && self.submitted_all() {
                break;
            }
            if self.submitted_all()
                && now_us.saturating_sub(self.last_progress_us) > self.stall_limit_us
            {
                self.stalled = true;
                break;
            }
            while self.heap.peek().is_some_and(|e| e.at_us == now_us) {
                let Some(e) = self.heap.pop() else { break };
                self.events += 1;
                self.apply(now_us, e.event)?;
            }
            self.end_turn(now_us)?;
        }
        Ok(())
    }

    fn submitted_all(&self) -> bool {
        // Submissions are scheduled one after another; the last one sent leaves none in the heap.
        self.arrival_us.len() as u64 >= self.total
    }

    fn apply(&mut self, now_us: u64, event: Event) -> Result<(), SimError> {
        let now_ms = now_us / 1_000;
        match event {
            Event::Submit(i) => {
                let s = &self.workload.submissions[i];
                let specs = self.workload.specs(s).cloned().collect();
                let count = s.count;
                self.first_submit_us.get_or_insert(now_us);
                self.awaiting_ids.push_back(now_us);
                self.last_progress_us = now_us;
                self.core
                    .handle_message(now_ms, self.client, ToMaster::Submit { specs, count });
                if let Some(next) = self.workload.submissions.get(i + 1) {
                    self.schedule((next.at_us + 1_000).max(now_us), Event::Submit(i + 1));
                }
            }
            Event::Connect { worker } => self.connect(now_us, worker),
            Event::Heartbeat {
                worker,
                incarnation,
            } => {
                let w = &self.workers[worker as usize];
                if w.incarnation != incarnation {
                    return Ok(());
                }
                let Some(conn) = w.conn else { return Ok(()) };
                let next = now_us + w.heartbeat_us;
                let load = self.load(worker);
                self.core.handle_message(now_ms, conn, ToMaster::Load(load));
                self.schedule(
                    next,
                    Event::Heartbeat {
                        worker,
                        incarnation,
                    },
                );
            }
            Event::Finish {
                worker,
                incarnation,
                slot,
                task,
                timed_out,
            } => self.finish_task(now_us, worker, incarnation, slot, task, timed_out),
            Event::Fail {
                worker,
                incarnation,
            } => {
                let w = &self.workers[worker as usize];
                if w.incarnation != incarnation {
                    return Ok(());
                }
                if let Some(conn) = w.conn {
                    self.die(now_us, worker);
                    self.core
                        .handle_disconnect(now_ms, conn, "simulated worker failure");
                    self.account_losses(now_us, worker);
                }
            }
            Event::Timer => {
                if self.timer_at_us == Some(now_us) {
                    self.timer_at_us = None;
                }
                self.core.handle_timeout(now_ms);
            }
        }
        Ok(())
    }

    fn load(&self, worker: u32) -> LoadReport {
        let running = self.workers[worker as usize].running.len() as u32;
        LoadReport {
            cpu_percent: self.fleet[worker as usize].cpu_percent(running) as f32,
            load_avg_1m: running as f32,
            running,
            ..LoadReport::default()
        }
    }

    fn connect(&mut self, now_us: u64, worker: u32) {
        let spec = &self.fleet[worker as usize];
        let info = WorkerInfo {
            name: spec.name.clone(),
            host: format!("sim-{}", spec.name),
            cpus: spec.slots,
            slots: spec.slots,
            pid: worker + 1,
            group: Some(format!("g{}", spec.group)),
            prefetch: 0,
        };
        let conn = self.new_conn(Owner::Worker(worker));
        let nonce = self.nonce();
        let now_ms = now_us / 1_000;
        self.core
            .handle_connect(now_ms, conn, format!("sim:{}", conn.0), nonce);
        self.core.handle_message(
            now_ms,
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(info),
                auth: Vec::new(),
            },
        );
        // A fresh incarnation runs nothing yet; the core gives no work before this report.
        self.core
            .handle_message(now_ms, conn, ToMaster::Running(Vec::new()));
        let w = &mut self.workers[worker as usize];
        w.conn = Some(conn);
        if self.cfg.fail_rate > 0.0 {
            let up_s = exponential(&mut w.rng, self.cfg.fail_rate);
            let incarnation = w.incarnation;
            self.schedule(
                now_us + (up_s * 1e6).ceil() as u64,
                Event::Fail {
                    worker,
                    incarnation,
                },
            );
        }
    }

    /// Work done by a task that ran from `start_us` until `now_us` (capped at its whole work).
    fn work_done(&self, worker: u32, r: &Running, now_us: u64) -> f64 {
        let ran_us = now_us.saturating_sub(r.start_us) as f64;
        (ran_us * self.fleet[worker as usize].rate()).min(r.work_us)
    }

    /// The worker's process is gone: what it was running is lost with it.
    fn die(&mut self, now_us: u64, worker: u32) {
        let lost: f64 = self.workers[worker as usize]
            .running
            .iter()
            .map(|(_, r)| self.work_done(worker, r, now_us))
            .sum();
        let w = &mut self.workers[worker as usize];
        w.work_us += lost;
        w.conn = None;
        w.incarnation += 1;
        w.failures += 1;
        self.failures += 1;
        self.schedule(now_us + self.cfg.recover_us, Event::Connect { worker });
    }

    /// After the core dropped `worker`: each task it held is either back in the queue or final
    /// (`WorkerLost` past its retries). Asks the core rather than predicting it.
    fn account_losses(&mut self, now_us: u64, worker: u32) {
        let running = std::mem::take(&mut self.workers[worker as usize].running);
        for (_, r) in running {
            match self.core.task(r.task).map(|t| t.state) {
                Some(TaskState::Queued) => self.requeued += 1,
                Some(TaskState::WorkerLost) => {
                    self.worker_lost += 1;
                    self.finals += 1;
                    self.last_completion_us = self.last_completion_us.max(now_us);
                }
                Some(s) if s.is_final() => {
                    self.finals += 1;
                    self.last_completion_us = self.last_completion_us.max(now_us);
                }
                _ => {}
            }
        }
    }

    fn finish_task(
        &mut self,
        now_us: u64,
        worker: u32,
        incarnation: u32,
        slot: usize,
        task: TaskId,
        timed_out: bool,
    ) {
        let w = &self.workers[worker as usize];
        if w.incarnation != incarnation {
            return; // That life ended; its results were lost with it.
        }
        if w.running.get(slot).is_none_or(|r| r.task != task) {
            return; // Cancelled, and the slot reused.
        }
        let Some(conn) = w.conn else { return };
        let r = self.workers[worker as usize].running.remove(slot);
        let work = self.work_done(worker, &r, now_us);
        let w = &mut self.workers[worker as usize];
        w.work_us += if timed_out { work } else { r.work_us };
        w.done += 1;
        let run_us = now_us - r.start_us;
        let outcome = if timed_out {
            TaskOutcome::TimedOut {
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            }
        } else {
            TaskOutcome::Exited {
                code: 0,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            }
        };
        self.core.handle_message(
            now_us / 1_000,
            conn,
            ToMaster::Finished(vec![Completion {
                task: r.task,
                attempt: r.attempt,
                incarnation: r.master,
                outcome,
                run_ms: run_us / 1_000,
            }]),
        );
        self.last_progress_us = now_us;
        if timed_out {
            // The core decides whether a timed-out task is final or retried.
            if self.core.task(r.task).is_some_and(|t| t.state.is_final()) {
                self.finals += 1;
                self.last_completion_us = now_us;
            }
            return;
        }
        self.finals += 1;
        self.succeeded += 1;
        self.last_completion_us = now_us;
        if let Some(&at) = self.arrival_us.get(r.task.0 as usize - 1) {
            self.completion_s.push((now_us - at) as f64 / 1e6);
        }
    }

    /// Drains the core and dispatches until neither has anything left for this instant.
    fn end_turn(&mut self, now_us: u64) -> Result<(), SimError> {
        let now_ms = now_us / 1_000;
        for _ in 0..MAX_ROUNDS_PER_TURN {
            self.delivered = false;
            self.drain(now_us)?;
            self.core.dispatch(now_ms);
            self.drain(now_us)?;
            if !self.delivered {
                break;
            }
        }
        if let Some(at_ms) = self.core.poll_timeout() {
            let at_us = (at_ms * 1_000).max(now_us + 1);
            if self.timer_at_us.is_none_or(|t| at_us < t) {
                self.timer_at_us = Some(at_us);
                self.schedule(at_us, Event::Timer);
            }
        }
        Ok(())
    }

    fn drain(&mut self, now_us: u64) -> Result<(), SimError> {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => self.deliver(now_us, conn, msg)?,
                Output::Close { conn, reason } => match self.owner(conn) {
                    Owner::Worker(worker) if self.workers[worker as usize].conn == Some(conn) => {
                        // The core gave up on this worker (e.g. heartbeat timeout) and has
                        // re-queued its tasks; the process restarts like after a crash.
                        self.die(now_us, worker);
                        self.account_losses(now_us, worker);
                    }
                    Owner::Client => {
                        return Err(SimError::Core(format!(
                            "the core closed the client: {reason}"
                        )))
                    }
                    _ => {}
                },
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        Ok(())
    }

    fn owner(&self, conn: ConnId) -> Owner {
        self.owners.get(conn.0).copied().unwrap_or(Owner::Nobody)
    }

    fn deliver(&mut self, now_us: u64, conn: ConnId, msg: FromMaster) -> Result<(), SimError> {
        let now_ms = now_us / 1_000;
        match (self.owner(conn), msg) {
            (Owner::Client, FromMaster::Submitted { first, count }) => {
                let at = self.awaiting_ids.pop_front().unwrap_or(now_us);
                if first.0 != self.arrival_us.len() as u64 + 1 {
                    return Err(SimError::Core(format!(
                        "ids out of order: got {first}, expected {}",
                        self.arrival_us.len() + 1
                    )));
                }
                self.arrival_us
                    .extend(std::iter::repeat_n(at, count as usize));
            }
            (Owner::Client, FromMaster::Error { message }) => {
                return Err(SimError::Core(format!(
                    "the core refused a request: {message}"
                )))
            }
            (Owner::Worker(worker), msg) => {
                let w = &self.workers[worker as usize];
                if w.conn != Some(conn) {
                    return Ok(()); // For a connection that is already gone.
                }
                let incarnation = w.incarnation;
                match msg {
                    FromMaster::Welcome {
                        heartbeat_interval_ms,
                        ..
                    } => {
                        let interval_us = heartbeat_interval_ms.max(1) * 1_000;
                        let w = &mut self.workers[worker as usize];
                        w.heartbeat_us = interval_us;
                        // Spread heartbeats over the interval, as independent hosts would.
                        let phase = w.rng.below(interval_us as usize) as u64;
                        let load = self.load(worker);
                        self.core.handle_message(now_ms, conn, ToMaster::Load(load));
                        self.core
                            .handle_message(now_ms, conn, ToMaster::Running(Vec::new()));
                        self.delivered = true;
                        self.schedule(
                            now_us + phase + 1,
                            Event::Heartbeat {
                                worker,
                                incarnation,
                            },
                        );
                    }
                    FromMaster::Assign(list) => {
                        let mut started = Vec::with_capacity(list.len());
                        let rate = self.fleet[worker as usize].rate();
                        for a in list {
                            let work_us = base_seconds(&a.spec) * 1e6;
                            let natural_us = (work_us / rate).ceil() as u64;
                            let (run_us, timed_out) = match a.spec.timeout_ms {
                                Some(t) if natural_us > t.saturating_mul(1_000) => {
                                    (t.saturating_mul(1_000), true)
                                }
                                _ => (natural_us, false),
                            };
                            let slot = self.workers[worker as usize].running.insert(Running {
                                task: a.task,
                                attempt: a.attempt,
                                master: a.incarnation,
                                start_us: now_us,
                                work_us,
                            });
                            self.schedule(
                                now_us.saturating_add(run_us),
                                Event::Finish {
                                    worker,
                                    incarnation,
                                    slot,
                                    task: a.task,
                                    timed_out,
                                },
                            );
                            started.push(a.task_ref());
                        }
                        self.last_progress_us = now_us;
                        self.core
                            .handle_message(now_ms, conn, ToMaster::Started(started));
                    }
                    FromMaster::Cancel(refs) => {
                        // Kill on request: report Cancelled now, as a real worker would.
                        let mut done = Vec::new();
                        for r in refs {
                            let found = self.workers[worker as usize]
                                .running
                                .iter()
                                .find(|(_, x)| {
                                    x.task == r.task
                                        && x.attempt == r.attempt
                                        && x.master == r.incarnation
                                })
                                .map(|(k, _)| k);
                            if let Some(k) = found {
                                let x = self.workers[worker as usize].running.remove(k);
                                let work = self.work_done(worker, &x, now_us);
                                self.workers[worker as usize].work_us += work;
                                done.push(Completion {
                                    task: x.task,
                                    attempt: x.attempt,
                                    incarnation: x.master,
                                    outcome: TaskOutcome::Cancelled,
                                    run_ms: (now_us - x.start_us) / 1_000,
                                });
                            }
                        }
                        if !done.is_empty() {
                            self.finals += done.len() as u64;
                            self.core
                                .handle_message(now_ms, conn, ToMaster::Finished(done));
                            self.delivered = true;
                        }
                    }
                    FromMaster::Rejected { reason } => {
                        return Err(SimError::Core(format!(
                            "the core rejected worker {}: {reason}",
                            self.fleet[worker as usize].name
                        )))
                    }
                    FromMaster::Error { message } => {
                        return Err(SimError::Core(format!(
                            "the core reported an error to worker {}: {message}",
                            self.fleet[worker as usize].name
                        )))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> RunResult {
        let unfinished = self.total.saturating_sub(self.finals);
        let other_failed = self.finals - self.succeeded - self.worker_lost;
        if cfg!(debug_assertions) && other_failed == 0 {
            // Cross-check against the core: every re-queue after a loss bumped an attempt.
            let reruns: u64 = (1..=self.total)
                .filter_map(|id| self.core.task(TaskId(id)))
                .map(|t| u64::from(t.attempts.saturating_sub(1)))
                .sum();
            debug_assert_eq!(
                reruns, self.requeued,
                "re-queues seen vs attempts in the core"
            );
        }
        let mut completion_s = self.completion_s;
        completion_s.sort_by(f64::total_cmp);
        let start = self.first_submit_us.unwrap_or(0);
        RunResult {
            tasks: self.total,
            succeeded: self.succeeded,
            worker_lost: self.worker_lost,
            other_failed,
            unfinished,
            requeued: self.requeued,
            failures: self.failures,
            makespan_us: self.last_completion_us.saturating_sub(start),
            completion_s,
            workers: self
                .workers
                .iter()
                .map(|w| WorkerResult {
                    work_s: w.work_us / 1e6,
                    done: w.done,
                    failures: w.failures,
                })
                .collect(),
            stalled: self.stalled,
            events: self.events,
        }
    }
}

/// How long the world may go without progress (a submission, an assignment or a completion)
/// while work is unfinished before the run is called stalled: far longer than any task on the
/// slowest worker, a recovery, or failure detection, so only a run that can never finish (say,
/// tasks no worker may run) ends this way.
fn stall_limit_us(cfg: &WorldConfig, fleet: &[WorkerSpec], workload: &Workload) -> u64 {
    let slowest = fleet
        .iter()
        .map(WorkerSpec::rate)
        .fold(f64::INFINITY, f64::min)
        .max(1e-9);
    let longest = workload
        .templates
        .iter()
        .map(base_seconds)
        .fold(0.0, f64::max);
    let longest_us = (longest / slowest * 1e6).min(1e15) as u64;
    let detect_us = cfg.heartbeat_timeout_ms * 1_000;
    [
        120_000_000,
        4 * longest_us,
        4 * cfg.recover_us,
        4 * detect_us,
    ]
    .into_iter()
    .max()
    .unwrap_or(120_000_000)
}
