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
//! dedicated host. With `fail_rate > 0` it dies after exponentially distributed up-times (a
//! closed socket: `handle_disconnect`), loses what it was running, and comes back `recover` later
//! on a fresh connection under the same name. Each worker draws its failures from its own seeded
//! stream, so every policy in a comparison faces the same failures.
//!
//! Without faults every message is handled the moment it is sent. With them (`faults`), messages
//! travel through the event queue with a delay, a connection can be cut under a live worker
//! (which reconnects, reports what it still runs and what finished meanwhile, as the real worker
//! does), and the master can crash and restart from the records the simulated `journal`
//! committed. Counts come from the core's `Persist` records, and `invariants` checks them and
//! every output against the simulator's ground truth after every step.

use super::faults::{Backoff, CrashPlan, Faults, TurnFacts, STABLE_CONNECTION_US};
use super::invariants::{Kind, Truth};
use super::journal::{self, SimJournal};
use super::net::{Net, Owner, Refused};
use super::workload::{base_seconds, exponential, unit, Workload};
use super::SimError;
use crate::core::policy::{PolicyKind, QueueOrder, SplitMix64};
use crate::core::{ConnId, Core, CoreConfig, Output, Record};
use protocol::{
    Attempt, Completion, FromMaster, Incarnation, LoadReport, Role, TaskId, TaskOutcome, TaskRef,
    TaskState, ToMaster, WorkerInfo, PROTOCOL_VERSION,
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

/// More stream tags (see `STREAM_SPEEDS`).
pub const STREAM_CRASHES: u64 = 5;
pub const STREAM_CLIENT_NET: u64 = 6;
/// Worker `i`'s message delays and connection cuts use `STREAM_WORKER_NET + i`.
pub const STREAM_WORKER_NET: u64 = 2 << 32;

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
    pub faults: Faults,
}

/// What one run produced. Counts come from the core's records, not from the simulator's guesses.
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
    /// Broken invariants (see `invariants`), and the first few described.
    pub invariant_violations: u64,
    pub violations: Vec<String>,
    /// Nonzero violation counts by kind (`invariants::Kind`).
    pub violation_kinds: Vec<(&'static str, u64)>,
    /// Master crashes that happened.
    pub crashes: u32,
    /// Worker connections cut (`--drop-rate`).
    pub drops: u64,
    /// Tasks the client sent again because a crash forgot their unacknowledged submission.
    pub resubmitted: u64,
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
        conn: ConnId,
    },
    Fail {
        worker: u32,
        incarnation: u32,
    },
    /// A worker process starts (at time 0, and after a failure) and connects.
    Connect {
        worker: u32,
    },
    /// A live worker process tries again after losing its connection.
    Reconnect {
        worker: u32,
        incarnation: u32,
    },
    Timer,
    /// A delayed message reaches the master (`tag`: see `World::send_to_core`).
    ToCore {
        conn: ConnId,
        msg: Box<ToMaster>,
        tag: Option<u64>,
    },
    /// A delayed message reaches its peer; `tags`: the logical task of each `Assign`ment.
    ToPeer {
        conn: ConnId,
        msg: Box<FromMaster>,
        tags: Vec<u64>,
    },
    /// The peer sees its connection end (after everything the master sent before).
    PeerLost {
        conn: ConnId,
    },
    ClientConnect,
    /// The oldest pending journal record has waited the group-commit window.
    CommitDue,
    MasterRestart,
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

/// The logical task of a run whose `Assign` named an id the core did not know.
const NO_TASK: u64 = u64::MAX;

#[derive(Debug)]
struct Running {
    task: TaskId,
    attempt: Attempt,
    /// The master incarnation that handed it out.
    master: Incarnation,
    start_us: u64,
    /// Speed-1 microseconds of work it takes.
    work_us: f64,
    /// The logical task its `Assign` named (see `invariants`).
    logical: u64,
}

#[derive(Debug)]
struct SimWorker {
    /// The connection it has (handshaking or welcomed), if any.
    conn: Option<ConnId>,
    /// `Welcome` came on `conn`: results go out at once rather than wait.
    up: bool,
    /// Bumped at every death: events of an earlier life are ignored.
    incarnation: u32,
    /// Started and never connected yet: runs nothing.
    fresh: bool,
    heartbeat_us: u64,
    running: Slab<Running>,
    /// Results of runs that ended while no connection was up, with their logical tasks.
    buffered: Vec<(Completion, u64)>,
    backoff: Backoff,
    connected_us: u64,
    rng: SplitMix64,
    /// Message delays and cuts.
    net: SplitMix64,
    work_us: f64,
    done: u64,
    failures: u64,
}

#[derive(Debug)]
struct SimClient {
    conn: Option<ConnId>,
    /// Instances sent on `conn` whose `Submitted` has not come, in order.
    awaiting: VecDeque<u32>,
    /// Workload submissions to send once connected (index, first arrival), in order.
    backlog: VecDeque<(usize, u64)>,
    /// Workload submissions handed to the client so far.
    next: usize,
    backoff: Backoff,
    net: SplitMix64,
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
    core_config: CoreConfig,
    core: Core,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    workers: Vec<SimWorker>,
    net: Net,
    client: SimClient,
    /// Client submissions the core received whose ids it has not recorded yet, with how many of
    /// their tasks it has recorded.
    core_submits: VecDeque<(u32, u64)>,
    truth: Truth,
    timer_at_us: Option<u64>,
    nonces: SplitMix64,
    total: u64,
    requeued: u64,
    failures: u64,
    first_submit_us: Option<u64>,
    last_progress_us: u64,
    /// No progress for this long ends the run (see `stall_limit_us`).
    stall_limit_us: u64,
    stalled: bool,
    events: u64,
    /// Set by input delivered while draining: the core may have more to do this turn.
    delivered: bool,
    /// Loop turns so far.
    turn: u64,
    // Master crashes (only with `--master-crashes`).
    journal: Option<SimJournal>,
    crash_plan: Option<CrashPlan>,
    commit_due_at_us: Option<u64>,
    /// Client replies of this turn behind the commit, and whether the client's gate is down.
    gated: Vec<(ConnId, FromMaster)>,
    client_gated: bool,
    facts: TurnFacts,
    master_up: bool,
    /// Bumped at every restart.
    master: u32,
    up_since_us: u64,
    crashes: u32,
    drops: u64,
    resubmitted: u64,
    #[cfg(test)]
    misreported: bool,
}

impl<'a> World<'a> {
    fn new(cfg: &'a WorldConfig, fleet: &'a [WorkerSpec], workload: &'a Workload) -> Self {
        let crashes = cfg.faults.master_crashes > 0;
        let core_config = CoreConfig {
            policy: cfg.policy,
            order: cfg.order,
            seed: cfg.seed,
            heartbeat_interval_ms: cfg.heartbeat_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            // The records are the ground truth of what the core decided, journal or not.
            persist: true,
            // The simulated client is one long session; an idle close would only add noise.
            client_idle_timeout_ms: None,
            ..CoreConfig::default()
        };
        let workers = (0..fleet.len())
            .map(|i| SimWorker {
                conn: None,
                up: false,
                incarnation: 0,
                fresh: true,
                heartbeat_us: cfg.heartbeat_ms * 1_000,
                running: Slab::new(),
                buffered: Vec::new(),
                backoff: Backoff::default(),
                connected_us: 0,
                rng: stream(cfg.seed, STREAM_WORKER + i as u64),
                net: stream(cfg.seed, STREAM_WORKER_NET + i as u64),
                work_us: 0.0,
                done: 0,
                failures: 0,
            })
            .collect();
        let total = workload.tasks();
        let crash_plan = crashes.then(|| {
            let last = workload.submissions.last().map_or(0, |s| s.at_us);
            let bound = super::report::lower_bound_s(fleet, workload);
            let horizon_us = last + (bound * 1e6).min(1e15) as u64;
            CrashPlan::new(
                cfg.faults.master_crashes,
                stream(cfg.seed, STREAM_CRASHES),
                workload,
                horizon_us,
            )
        });
        World {
            cfg,
            fleet,
            workload,
            core: Core::new(core_config.clone()),
            core_config,
            heap: BinaryHeap::new(),
            seq: 0,
            workers,
            net: Net::default(),
            client: SimClient {
                conn: None,
                awaiting: VecDeque::new(),
                backlog: VecDeque::new(),
                next: 0,
                backoff: Backoff::default(),
                net: stream(cfg.seed, STREAM_CLIENT_NET),
            },
            core_submits: VecDeque::new(),
            truth: Truth::default(),
            timer_at_us: None,
            nonces: stream(cfg.seed, STREAM_NONCES),
            total,
            requeued: 0,
            failures: 0,
            first_submit_us: None,
            last_progress_us: 0,
            stall_limit_us: stall_limit_us(cfg, fleet, workload),
            stalled: false,
            events: 0,
            delivered: false,
            turn: 0,
            journal: crashes.then(SimJournal::default),
            crash_plan,
            commit_due_at_us: None,
            gated: Vec::new(),
            client_gated: false,
            facts: TurnFacts::default(),
            master_up: true,
            master: 0,
            up_since_us: 0,
            crashes: 0,
            drops: 0,
            resubmitted: 0,
            #[cfg(test)]
            misreported: false,
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
        self.open_client(0);
        for w in 0..self.fleet.len() as u32 {
            self.schedule(0, Event::Connect { worker: w });
        }
        if let Some(first) = self.workload.submissions.first() {
            self.schedule(first.at_us + 1_000, Event::Submit(0));
        }
        while let Some(head) = self.heap.peek() {
            let now_us = head.at_us;
            if self.client_idle() && self.truth.live_finals() >= self.truth.accepted() {
                break;
            }
            if self.client_idle()
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

    /// Every workload submission was sent and acknowledged.
    fn client_idle(&self) -> bool {
        self.client.next >= self.workload.submissions.len()
            && self.client.backlog.is_empty()
            && self.client.awaiting.is_empty()
    }

    fn apply(&mut self, now_us: u64, event: Event) -> Result<(), SimError> {
        let now_ms = now_us / 1_000;
        match event {
            Event::Submit(i) => {
                self.first_submit_us.get_or_insert(now_us);
                self.last_progress_us = now_us;
                self.client.next = i + 1;
                if self.client.conn.is_some() {
                    self.send_submission(now_us, i, now_us);
                } else {
                    self.client.backlog.push_back((i, now_us));
                }
                if let Some(next) = self.workload.submissions.get(i + 1) {
                    self.schedule((next.at_us + 1_000).max(now_us), Event::Submit(i + 1));
                }
            }
            Event::Connect { worker } => self.start_process(now_us, worker),
            Event::Reconnect {
                worker,
                incarnation,
            } => {
                let w = &self.workers[worker as usize];
                if w.incarnation == incarnation && w.conn.is_none() {
                    self.open_conn(now_us, worker);
                }
            }
            Event::Heartbeat { worker, conn } => {
                let w = &self.workers[worker as usize];
                if w.conn != Some(conn) || !w.up {
                    return Ok(());
                }
                let next = now_us + w.heartbeat_us;
                let load = self.load(worker);
                self.send_to_core(now_us, conn, ToMaster::Load(load), None);
                self.schedule(next, Event::Heartbeat { worker, conn });
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
                if self.workers[worker as usize].incarnation != incarnation {
                    return Ok(());
                }
                let conn = self.workers[worker as usize].conn;
                self.die(now_us, worker);
                if let Some(conn) = conn {
                    if self.master_up && self.net.link(conn).core_open {
                        self.close_core_side(conn, false);
                        self.core
                            .handle_disconnect(now_ms, conn, "simulated worker failure");
                        self.count_requeued(worker);
                    }
                }
                self.workers[worker as usize].running.clear();
            }
            Event::Timer => {
                if self.timer_at_us == Some(now_us) {
                    self.timer_at_us = None;
                }
                if self.master_up {
                    self.core.handle_timeout(now_ms);
                }
            }
            Event::ToCore { conn, msg, tag } => self.deliver_to_core(now_us, conn, *msg, tag),
            Event::ToPeer { conn, msg, tags } => self.deliver_to_peer(now_us, conn, *msg, tags)?,
            Event::PeerLost { conn } => self.peer_lost(now_us, conn),
            Event::ClientConnect => {
                if self.client.conn.is_none() {
                    self.open_client(now_us);
                }
            }
            Event::CommitDue => {
                if self.commit_due_at_us == Some(now_us) {
                    self.commit_due_at_us = None;
                }
            }
            Event::MasterRestart => self.restart(now_us)?,
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

    // ---- the wire ----------------------------------------------------------------------------

    /// When a message sent now on `conn` arrives: after a random delay, never before the one
    /// sent before it in the same direction.
    fn arrival_us(&mut self, now_us: u64, conn: ConnId, to_core: bool) -> u64 {
        let d = self.cfg.faults.delay_us;
        let rng = match self.net.link(conn).owner {
            Owner::Worker(w) => &mut self.workers[w as usize].net,
            Owner::Client => &mut self.client.net,
        };
        let draw = rng.below((d + 1).min(usize::MAX as u64) as usize) as u64;
        self.net.arrival_us(conn, to_core, now_us, draw)
    }

    /// Whether `--drop-rate` cuts worker `worker`'s connection at this message.
    fn cuts(&mut self, worker: u32) -> bool {
        let rate = self.cfg.faults.drop_rate;
        rate > 0.0 && unit(&mut self.workers[worker as usize].net) < rate
    }

    /// A peer sends `msg` on `conn`. `tag`: the instance of a `Submit`, or the logical task of
    /// the run a single `Finished` reports.
    fn send_to_core(&mut self, now_us: u64, conn: ConnId, msg: ToMaster, tag: Option<u64>) {
        let link = self.net.link(conn);
        if !link.peer_open {
            return;
        }
        if let Owner::Worker(w) = link.owner {
            if self.cuts(w) {
                return self.cut(now_us, w, conn);
            }
        }
        if self.cfg.faults.delay_us == 0 {
            self.deliver_to_core(now_us, conn, msg, tag);
        } else {
            let at = self.arrival_us(now_us, conn, true);
            self.schedule(
                at,
                Event::ToCore {
                    conn,
                    msg: Box::new(msg),
                    tag,
                },
            );
        }
    }

    fn deliver_to_core(&mut self, now_us: u64, conn: ConnId, msg: ToMaster, tag: Option<u64>) {
        if !self.master_up || !self.net.link(conn).core_open {
            return; // Lost with the connection.
        }
        let now_ms = now_us / 1_000;
        let credit = match (&msg, tag) {
            (ToMaster::Submit { .. }, Some(instance)) => {
                self.core_submits.push_back((instance as u32, 0));
                None
            }
            (ToMaster::Finished(done), Some(run)) if done.len() == 1 => {
                let id = done[0].task;
                Some((id, run, self.is_final(id)))
            }
            _ => None,
        };
        self.core.handle_message(now_ms, conn, msg);
        // The one way an outcome is credited: this completion made its task final.
        if let Some((id, run, false)) = credit {
            if self.is_final(id) {
                let worker = match self.net.link(conn).owner {
                    Owner::Worker(w) => self.fleet[w as usize].name.as_str(),
                    Owner::Client => "the client",
                };
                self.truth.credited(id, run, worker);
            }
        }
    }

    fn is_final(&self, id: TaskId) -> bool {
        self.core.task(id).is_some_and(|t| t.state.is_final())
    }

    /// The core's output for `conn` goes on the wire.
    fn send_to_peer(&mut self, now_us: u64, conn: ConnId, msg: FromMaster) -> Result<(), SimError> {
        // What each assignment names, as the sending core knows it.
        let tags = match &msg {
            FromMaster::Assign(list) => list
                .iter()
                .map(|a| self.truth.named(a.task).unwrap_or(NO_TASK))
                .collect(),
            _ => Vec::new(),
        };
        if self.cfg.faults.delay_us == 0 {
            return self.deliver_to_peer(now_us, conn, msg, tags);
        }
        let at = self.arrival_us(now_us, conn, false);
        self.schedule(
            at,
            Event::ToPeer {
                conn,
                msg: Box::new(msg),
                tags,
            },
        );
        Ok(())
    }

    /// The core's side of `conn` closes (the core forgot it, or is gone).
    fn close_core_side(&mut self, conn: ConnId, by_core: bool) {
        self.net.close_core_side(conn, by_core, self.turn);
    }

    /// The peer of `conn` sees it end once what was sent before has arrived.
    fn lose_peer_after_data(&mut self, now_us: u64, conn: ConnId) {
        if self.cfg.faults.delay_us == 0 {
            self.peer_lost(now_us, conn);
        } else {
            let at = self.net.link(conn).to_peer_us.max(now_us);
            self.schedule(at, Event::PeerLost { conn });
        }
    }

    fn peer_lost(&mut self, now_us: u64, conn: ConnId) {
        let link = self.net.link_mut(conn);
        if !link.peer_open {
            return;
        }
        link.peer_open = false;
        match link.owner {
            Owner::Worker(w) if self.workers[w as usize].conn == Some(conn) => {
                self.worker_offline(now_us, w)
            }
            Owner::Client if self.client.conn == Some(conn) => self.client_offline(now_us),
            _ => {}
        }
    }

    /// `--drop-rate`: the connection breaks under a live worker; both ends see it now and what
    /// was in flight is lost.
    fn cut(&mut self, now_us: u64, worker: u32, conn: ConnId) {
        self.drops += 1;
        self.net.link_mut(conn).peer_open = false;
        if self.master_up && self.net.link(conn).core_open {
            self.close_core_side(conn, false);
            self.core
                .handle_disconnect(now_us / 1_000, conn, "simulated connection drop");
            self.count_requeued(worker);
        }
        if self.workers[worker as usize].conn == Some(conn) {
            self.worker_offline(now_us, worker);
        }
    }

    // ---- workers -----------------------------------------------------------------------------

    /// A worker process starts: it connects, and may die after an exponential up-time.
    fn start_process(&mut self, now_us: u64, worker: u32) {
        self.workers[worker as usize].fresh = true;
        self.open_conn(now_us, worker);
        let w = &mut self.workers[worker as usize];
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

    /// One connection attempt; a master that is down refuses it, and the worker backs off.
    fn open_conn(&mut self, now_us: u64, worker: u32) {
        if !self.master_up {
            return self.retry_later(now_us, worker);
        }
        let spec = &self.fleet[worker as usize];
        let info = WorkerInfo {
            allocation: None,
            name: spec.name.clone(),
            host: format!("sim-{}", spec.name),
            cpus: spec.slots,
            slots: spec.slots,
            pid: worker + 1,
            group: Some(format!("g{}", spec.group)),
            prefetch: 0,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        };
        let conn = self.net.open(Owner::Worker(worker), self.master);
        let nonce = self.nonce();
        self.core
            .handle_connect(now_us / 1_000, conn, format!("sim:{}", conn.0), nonce);
        let w = &mut self.workers[worker as usize];
        w.conn = Some(conn);
        w.up = false;
        w.connected_us = now_us;
        let fresh = std::mem::replace(&mut w.fresh, false);
        let hello = ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker(info),
            auth: Vec::new(),
            nonce: vec![5; 32],
        };
        self.send_to_core(now_us, conn, hello, None);
        if fresh {
            // A fresh process runs nothing yet; the core gives no work before this report.
            self.send_to_core(now_us, conn, ToMaster::Running(Vec::new()), None);
        }
    }

    /// The worker lost its connection but lives on: its tasks keep running, their results are
    /// buffered, and it reconnects after a backoff, as the real worker does.
    fn worker_offline(&mut self, now_us: u64, worker: u32) {
        let w = &mut self.workers[worker as usize];
        w.conn = None;
        w.up = false;
        if now_us.saturating_sub(w.connected_us) >= STABLE_CONNECTION_US {
            w.backoff.reset();
        }
        self.retry_later(now_us, worker);
    }

    fn retry_later(&mut self, now_us: u64, worker: u32) {
        let w = &mut self.workers[worker as usize];
        let delay = w.backoff.next_delay_us(&mut w.net);
        let incarnation = w.incarnation;
        self.schedule(
            now_us + delay,
            Event::Reconnect {
                worker,
                incarnation,
            },
        );
    }

    /// Work done by a task that ran from `start_us` until `now_us` (capped at its whole work).
    fn work_done(&self, worker: u32, r: &Running, now_us: u64) -> f64 {
        let ran_us = now_us.saturating_sub(r.start_us) as f64;
        (ran_us * self.fleet[worker as usize].rate()).min(r.work_us)
    }

    /// The worker's process is gone: what it was running and had buffered is lost with it (the
    /// caller clears `running` once the core has been told).
    fn die(&mut self, now_us: u64, worker: u32) {
        let lost: f64 = self.workers[worker as usize]
            .running
            .iter()
            .map(|(_, r)| self.work_done(worker, r, now_us))
            .sum();
        let w = &mut self.workers[worker as usize];
        if let Some(conn) = w.conn.take() {
            self.net.link_mut(conn).peer_open = false;
        }
        w.work_us += lost;
        w.up = false;
        w.buffered.clear();
        w.backoff.reset();
        w.incarnation += 1;
        w.failures += 1;
        self.failures += 1;
        self.schedule(now_us + self.cfg.recover_us, Event::Connect { worker });
    }

    /// After the core dropped `worker`: counts the tasks it held that went back to the queue
    /// (the others are final, `WorkerLost` past their retries). Asks the core rather than
    /// predicting it.
    fn count_requeued(&mut self, worker: u32) {
        for (_, r) in &self.workers[worker as usize].running {
            if self.core.task(r.task).map(|t| t.state) == Some(TaskState::Queued) {
                self.requeued += 1;
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
        let c = Completion {
            task: r.task,
            attempt: r.attempt,
            incarnation: r.master,
            outcome,
            run_ms: run_us / 1_000,
        };
        #[cfg(test)]
        self.misreport(now_us, worker, &c, r.logical);
        self.report(now_us, worker, c, r.logical);
        self.last_progress_us = now_us;
    }

    /// Test only (`Faults::misreport_once`): a worker that mixes up its slots once, reporting a
    /// result also as that of another task it runs.
    #[cfg(test)]
    fn misreport(&mut self, now_us: u64, worker: u32, c: &Completion, logical: u64) {
        if !self.cfg.faults.misreport_once || self.misreported {
            return;
        }
        let w = &self.workers[worker as usize];
        let Some((task, attempt, incarnation)) = w
            .running
            .iter()
            .find(|(_, o)| o.logical != logical)
            .map(|(_, o)| (o.task, o.attempt, o.master))
        else {
            return;
        };
        self.misreported = true;
        let wrong = Completion {
            task,
            attempt,
            incarnation,
            ..c.clone()
        };
        self.report(now_us, worker, wrong, logical);
    }

    /// A finished run's result goes to the master now, or waits for the next connection.
    fn report(&mut self, now_us: u64, worker: u32, c: Completion, logical: u64) {
        let w = &self.workers[worker as usize];
        match w.conn.filter(|_| w.up) {
            Some(conn) => {
                self.send_to_core(now_us, conn, ToMaster::Finished(vec![c]), Some(logical))
            }
            None => self.workers[worker as usize].buffered.push((c, logical)),
        }
    }

    fn on_welcome(&mut self, now_us: u64, worker: u32, conn: ConnId, heartbeat_interval_ms: u64) {
        let interval_us = heartbeat_interval_ms.max(1) * 1_000;
        let w = &mut self.workers[worker as usize];
        w.heartbeat_us = interval_us;
        w.up = true;
        // Spread heartbeats over the interval, as independent hosts would.
        let phase = w.rng.below(interval_us as usize) as u64;
        // As the real worker: load first, then what it still runs (a restarted master adopts
        // those instead of running them twice), then what finished while it was away.
        let load = self.load(worker);
        self.send_to_core(now_us, conn, ToMaster::Load(load), None);
        let w = &mut self.workers[worker as usize];
        let running: Vec<TaskRef> = w
            .running
            .iter()
            .map(|(_, r)| TaskRef {
                task: r.task,
                attempt: r.attempt,
                incarnation: r.master,
            })
            .collect();
        let buffered = std::mem::take(&mut w.buffered);
        self.send_to_core(now_us, conn, ToMaster::Running(running), None);
        for (c, logical) in buffered {
            self.send_to_core(now_us, conn, ToMaster::Finished(vec![c]), Some(logical));
        }
        self.delivered = true;
        self.schedule(now_us + phase + 1, Event::Heartbeat { worker, conn });
    }

    fn on_assign(
        &mut self,
        now_us: u64,
        worker: u32,
        conn: ConnId,
        list: Vec<protocol::Assignment>,
        tags: Vec<u64>,
    ) {
        let incarnation = self.workers[worker as usize].incarnation;
        let mut started = Vec::with_capacity(list.len());
        let rate = self.fleet[worker as usize].rate();
        for (k, a) in list.into_iter().enumerate() {
            let w = &self.workers[worker as usize];
            if w.running.iter().any(|(_, r)| {
                r.task == a.task && r.attempt == a.attempt && r.master == a.incarnation
            }) {
                // As the real worker: "assigned twice; ignoring the second".
                continue;
            }
            let work_us = base_seconds(&a.spec) * 1e6;
            let natural_us = (work_us / rate).ceil() as u64;
            let (run_us, timed_out) = match a.spec.timeout_ms {
                Some(t) if natural_us > t.saturating_mul(1_000) => (t.saturating_mul(1_000), true),
                _ => (natural_us, false),
            };
            let slot = self.workers[worker as usize].running.insert(Running {
                task: a.task,
                attempt: a.attempt,
                master: a.incarnation,
                start_us: now_us,
                work_us,
                logical: tags.get(k).copied().unwrap_or(NO_TASK),
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
        if !started.is_empty() {
            self.send_to_core(now_us, conn, ToMaster::Started(started), None);
        }
    }

    /// Kill on request: report Cancelled now, as a real worker would.
    fn on_cancel(&mut self, now_us: u64, worker: u32, conn: ConnId, refs: Vec<TaskRef>) {
        let mut done = Vec::new();
        for r in refs {
            let found = self.workers[worker as usize]
                .running
                .iter()
                .find(|(_, x)| {
                    x.task == r.task && x.attempt == r.attempt && x.master == r.incarnation
                })
                .map(|(k, _)| k);
            if let Some(k) = found {
                let x = self.workers[worker as usize].running.remove(k);
                let work = self.work_done(worker, &x, now_us);
                self.workers[worker as usize].work_us += work;
                let c = Completion {
                    task: x.task,
                    attempt: x.attempt,
                    incarnation: x.master,
                    outcome: TaskOutcome::Cancelled,
                    run_ms: (now_us - x.start_us) / 1_000,
                };
                done.push((c, x.logical));
            }
        }
        if !done.is_empty() {
            for (c, logical) in done {
                self.send_to_core(now_us, conn, ToMaster::Finished(vec![c]), Some(logical));
            }
            self.delivered = true;
        }
    }

    // ---- the client --------------------------------------------------------------------------

    /// The client (re)connects and sends what it has not had acknowledged.
    fn open_client(&mut self, now_us: u64) {
        if !self.master_up {
            let delay = self.client.backoff.next_delay_us(&mut self.client.net);
            return self.schedule(now_us + delay, Event::ClientConnect);
        }
        let conn = self.net.open(Owner::Client, self.master);
        self.client.conn = Some(conn);
        self.client.backoff.reset();
        let nonce = self.nonce();
        self.core
            .handle_connect(now_us / 1_000, conn, "sim-client".into(), nonce);
        let hello = ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            auth: Vec::new(),
            nonce: vec![5; 32],
        };
        self.send_to_core(now_us, conn, hello, None);
        while let Some((i, arrival_us)) = self.client.backlog.pop_front() {
            self.send_submission(now_us, i, arrival_us);
        }
    }

    /// Sends workload submission `i` as a new instance (first asked for at `arrival_us`).
    fn send_submission(&mut self, now_us: u64, i: usize, arrival_us: u64) {
        let Some(conn) = self.client.conn else {
            return self.client.backlog.push_back((i, arrival_us));
        };
        let s = &self.workload.submissions[i];
        let specs: Vec<_> = self.workload.specs(s).cloned().collect();
        let count = s.count;
        let tasks = specs.len() as u64 * u64::from(count);
        let instance = self.truth.add_instance(i, tasks, arrival_us);
        self.client.awaiting.push_back(instance);
        self.send_to_core(
            now_us,
            conn,
            ToMaster::Submit {
                specs,
                count,
                name: None,
            },
            Some(u64::from(instance)),
        );
        // As `submit --wait` does: the connection then waits, and its `Submitted` may be held
        // for a later commit (the shell's gate rule), which crashes must not turn into a lie.
        self.send_to_core(
            now_us,
            conn,
            ToMaster::WaitSubmitted { progress: false },
            None,
        );
    }

    /// The master went away: a submission it never acknowledged is forgotten with it (nothing
    /// was committed, or the reply would have come first), so the client sends it again as a
    /// new one once it is back.
    fn client_offline(&mut self, now_us: u64) {
        self.client.conn = None;
        let awaiting = std::mem::take(&mut self.client.awaiting);
        for &instance in awaiting.iter().rev() {
            let inst = &self.truth.instances[instance as usize];
            self.resubmitted += inst.count;
            self.client
                .backlog
                .push_front((inst.submission, inst.arrival_us));
        }
        let delay = self.client.backoff.next_delay_us(&mut self.client.net);
        self.schedule(now_us + delay, Event::ClientConnect);
    }

    // ---- the master --------------------------------------------------------------------------

    /// The master dies at the end of a turn, before its commit.
    fn crash(&mut self, now_us: u64) {
        self.crashes += 1;
        self.master_up = false;
        if let Some(journal) = &mut self.journal {
            for lost in journal.crash() {
                if let Some(logical) = lost.logical {
                    self.truth.unend(logical);
                }
            }
            self.truth.forget_above(journal.committed_ids());
        }
        self.core_submits.clear();
        self.gated.clear();
        self.client_gated = false;
        self.timer_at_us = None;
        self.commit_due_at_us = None;
        for conn in self.net.core_open() {
            self.close_core_side(conn, false);
            self.lose_peer_after_data(now_us, conn);
        }
        let downtime = self.cfg.faults.downtime_us;
        self.schedule(now_us + downtime, Event::MasterRestart);
    }

    fn restart(&mut self, now_us: u64) -> Result<(), SimError> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        self.core = journal::restart(self.core_config.clone(), now_us / 1_000, journal)
            .map_err(|e| SimError::Core(format!("restart from the journal: {e}")))?;
        self.master_up = true;
        self.master += 1;
        self.up_since_us = now_us;
        Ok(())
    }

    // ---- the turn ----------------------------------------------------------------------------

    /// Drains the core and dispatches until neither has anything left for this instant, then
    /// applies the commit rule (or crashes just before it).
    fn end_turn(&mut self, now_us: u64) -> Result<(), SimError> {
        let now_ms = now_us / 1_000;
        if self.master_up {
            for _ in 0..MAX_ROUNDS_PER_TURN {
                self.delivered = false;
                self.drain(now_us)?;
                self.core.dispatch(now_ms);
                self.drain(now_us)?;
                if !self.delivered {
                    break;
                }
            }
            self.commit_or_crash(now_us)?;
        }
        if self.master_up {
            if let Some(at_ms) = self.core.poll_timeout() {
                let at_us = (at_ms * 1_000).max(now_us + 1);
                if self.timer_at_us.is_none_or(|t| at_us < t) {
                    self.timer_at_us = Some(at_us);
                    self.schedule(at_us, Event::Timer);
                }
            }
        }
        self.turn += 1;
        Ok(())
    }

    /// The shell's end of a turn: frames to workers are out; commit if a client reply waits (or
    /// the group-commit window passed), then let the replies go. A planned crash strikes first.
    fn commit_or_crash(&mut self, now_us: u64) -> Result<(), SimError> {
        let Some(pending) = self.journal.as_ref().map(SimJournal::pending) else {
            return Ok(());
        };
        self.facts.pending_records = pending > 0;
        let facts = std::mem::take(&mut self.facts);
        if let Some(plan) = &mut self.crash_plan {
            if plan.fires(now_us, self.up_since_us, facts) {
                self.crash(now_us);
                return Ok(());
            }
        }
        let force = self
            .core
            .commit_forced_by(self.gated.iter().map(|(conn, _)| *conn));
        let due = self
            .journal
            .as_mut()
            .and_then(|j| j.end_turn(now_us, force));
        if let Some(at) = due {
            if self.commit_due_at_us != Some(at) {
                self.commit_due_at_us = Some(at);
                self.schedule(at, Event::CommitDue);
            }
        }
        if self.journal.as_ref().is_some_and(|j| j.pending() > 0) {
            return Ok(()); // held until the commit that makes them true
        }
        self.client_gated = false;
        for (conn, msg) in std::mem::take(&mut self.gated) {
            self.send_to_peer(now_us, conn, msg)?;
        }
        Ok(())
    }

    fn drain(&mut self, now_us: u64) -> Result<(), SimError> {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => self.on_send(now_us, conn, msg)?,
                Output::Close { conn, reason } => self.on_close(now_us, conn, reason)?,
                Output::Persist(record) => self.on_persist(now_us, record)?,
                // Simulated workers print nothing and simulated clients read no logs.
                Output::Log(_) => {}
                // Simulated clients make no allocation queues.
                Output::Alloc { .. } => {}
            }
        }
        Ok(())
    }

    /// Checks an output's connection: opened by this master, still open (or closed by the peer
    /// in this very turn, when the output was queued before), and, for a `Send`, a peer the
    /// message is for. Returns whether the output goes out.
    fn check_output(&mut self, conn: ConnId, msg: Option<&FromMaster>) -> bool {
        let refused = match self.net.check_output(conn, msg, self.master, self.turn) {
            Ok(goes) => return goes,
            Err(r) => r,
        };
        let c = conn.0;
        let what = match refused {
            Refused::NeverOpened => format!("output for connection {c}, never opened"),
            Refused::OtherMaster(m) => format!(
                "master incarnation {} wrote to connection {c} of incarnation {m}",
                self.master
            ),
            Refused::Closed => format!("output for connection {c} after it closed"),
            Refused::NotForPeer(Owner::Worker(w)) => format!(
                "connection {c} of worker {} was sent a client's reply",
                self.fleet[w as usize].name
            ),
            Refused::NotForPeer(Owner::Client) => {
                format!("connection {c} of the client was sent a worker's message")
            }
        };
        self.truth.violation(Kind::Connection, what);
        false
    }

    fn on_send(&mut self, now_us: u64, conn: ConnId, msg: FromMaster) -> Result<(), SimError> {
        if !self.check_output(conn, Some(&msg)) {
            return Ok(());
        }
        match self.net.link(conn).owner {
            Owner::Client => {
                if self.journal.is_some() && (self.client_gated || crate::core::needs_commit(&msg))
                {
                    // Behind the gate until this turn's commit, as in the shell.
                    self.client_gated = true;
                    self.gated.push((conn, msg));
                    return Ok(());
                }
            }
            Owner::Worker(w) => {
                if let (FromMaster::Assign(list), Some(j)) = (&msg, &self.journal) {
                    let committed = j.committed_ids();
                    if list.iter().any(|a| a.task.0 > committed) {
                        self.facts.assigned_uncommitted = true;
                    }
                }
                if self.cuts(w) {
                    self.cut(now_us, w, conn);
                    return Ok(());
                }
            }
        }
        self.send_to_peer(now_us, conn, msg)
    }

    fn on_close(
        &mut self,
        now_us: u64,
        conn: ConnId,
        reason: crate::core::CloseReason,
    ) -> Result<(), SimError> {
        if !self.check_output(conn, None) {
            return Ok(());
        }
        self.close_core_side(conn, true);
        match self.net.link(conn).owner {
            Owner::Worker(w) => {
                // The core gave up on this worker (e.g. heartbeat timeout) and has re-queued its
                // tasks; the worker sees the connection end and reconnects.
                self.count_requeued(w);
                self.lose_peer_after_data(now_us, conn);
                Ok(())
            }
            Owner::Client => Err(SimError::Core(format!(
                "the core closed the client: {reason}"
            ))),
        }
    }

    fn on_persist(&mut self, now_us: u64, record: Record) -> Result<(), SimError> {
        let logical = match &record {
            Record::Submitted { first, count, .. } => {
                let Some((instance, done)) = self.core_submits.front_mut() else {
                    return Err(SimError::Core(format!(
                        "the core accepted tasks {first}.. that nobody submitted"
                    )));
                };
                let inst = &self.truth.instances[*instance as usize];
                let (base, of) = (inst.base + *done, inst.count);
                *done += count;
                if *done >= of {
                    self.core_submits.pop_front();
                }
                self.truth
                    .name(*first, base..base + count)
                    .map_err(SimError::Core)?;
                None
            }
            Record::Finished { id, outcome } => self.truth.ended(now_us, *id, outcome.state),
            Record::Job(_) | Record::Forgotten { .. } => None,
        };
        if let Some(j) = &mut self.journal {
            j.record(record, logical);
        }
        Ok(())
    }

    fn deliver_to_peer(
        &mut self,
        now_us: u64,
        conn: ConnId,
        msg: FromMaster,
        tags: Vec<u64>,
    ) -> Result<(), SimError> {
        let link = self.net.link(conn);
        if !link.peer_open {
            return Ok(()); // Lost with the connection.
        }
        match (link.owner, msg) {
            (Owner::Client, FromMaster::Submitted { first, count, .. }) => {
                let Some(instance) = self.client.awaiting.pop_front() else {
                    return Err(SimError::Core(format!(
                        "ids {first}+{count} for no submission"
                    )));
                };
                self.truth.ack(instance, first, count);
            }
            (Owner::Client, FromMaster::Error { message }) => {
                return Err(SimError::Core(format!(
                    "the core refused a request: {message}"
                )))
            }
            (Owner::Worker(worker), msg) => {
                if self.workers[worker as usize].conn != Some(conn) {
                    return Ok(()); // For a connection that is already gone.
                }
                match msg {
                    FromMaster::Welcome {
                        heartbeat_interval_ms,
                        ..
                    } => self.on_welcome(now_us, worker, conn, heartbeat_interval_ms),
                    FromMaster::Assign(list) => self.on_assign(now_us, worker, conn, list, tags),
                    FromMaster::Cancel(refs) => self.on_cancel(now_us, worker, conn, refs),
                    FromMaster::Rejected { reason, .. } => {
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

    fn finish(mut self) -> RunResult {
        let tally = self.truth.finish(self.stalled);
        let unfinished = self.total.saturating_sub(tally.finals);
        let other_failed = tally.finals - tally.succeeded - tally.worker_lost;
        if cfg!(debug_assertions) && other_failed == 0 && !self.cfg.faults.any() {
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
        let start = self.first_submit_us.unwrap_or(0);
        if cfg!(debug_assertions) && !self.cfg.faults.any() && !self.stalled {
            // The core's own report (`GET /api/v1/report`), kept as it went, agrees with the
            // simulator's ground truth (the core's clock is milliseconds: a step each end).
            let r = self.core.report();
            debug_assert_eq!(
                (r.completed, r.lost, r.requeued),
                (tally.succeeded, tally.worker_lost, self.requeued),
                "the core's report vs the ground truth"
            );
            let truth_ms = tally.last_completion_us.saturating_sub(start) as f64 / 1e3;
            debug_assert!(
                (r.makespan_s * 1e3 - truth_ms).abs() <= 2.0,
                "the core's makespan {} s vs the ground truth {truth_ms} ms",
                r.makespan_s
            );
        }
        let mut completion_s = tally.completion_s;
        completion_s.sort_by(f64::total_cmp);
        let (violations, examples) = self.truth.violations();
        RunResult {
            tasks: self.total,
            succeeded: tally.succeeded,
            worker_lost: tally.worker_lost,
            other_failed,
            unfinished,
            requeued: self.requeued,
            failures: self.failures,
            makespan_us: tally.last_completion_us.saturating_sub(start),
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
            invariant_violations: violations,
            violations: examples.to_vec(),
            violation_kinds: self.truth.by_kind(),
            crashes: self.crashes,
            drops: self.drops,
            resubmitted: self.resubmitted,
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
