//! The worker's life: connect (with backoff), heartbeat, run what the master assigns, report what
//! finished, and reconnect when the master goes away.
//!
//! One thread runs [`run`]; everything else reaches it through one channel of [`Event`]s: the
//! connect thread (at most one at a time), the reader thread of the current connection, the task
//! threads (completions) and the signal thread. A loop turn waits for the first event or the next
//! deadline (heartbeat, task timer, reconnect, stop), handles everything already queued, starts
//! pending tasks into the free slots, then hands what the turn produced (one `Started` and one
//! `Finished` frame, split only if outputs are large, then the answers to `Retract`) to the
//! connection's writer thread in one piece. That batching is what lets a worker keep up with tens
//! of thousands of zero-length tasks per second.
//!
//! The loop never blocks on the socket (it writes only with a non-blocking `send` when the writer
//! thread is idle), so a master that does not read (stopped, partitioned, overloaded) cannot hold
//! up task timers, kills or SIGTERM: see [`Outbox`]. While
//! the outbox is full the turn's reports wait here; a master that takes no byte for
//! `STALL_HEARTBEATS` heartbeats is lost, as if it had closed the socket.
//!
//! Assignments wait in a [`PendingQueue`] and start, best first, only while fewer than `slots`
//! tasks run; up to `prefetch` more may wait there so that a freed slot is refilled without a round
//! trip to the master. Tasks that have not started belong to the master: it may take them back
//! (`Retract`), and they are dropped, never started, when the master connection is lost.

use crate::backoff::{seed_from_clock_and_pid, Backoff};
use crate::error::WorkerError;
use crate::executor::{Executor, Wake, KILL_GRACE};
use crate::outbox::{Outbox, WriterNote, OUTBOX_LIMIT};
use crate::pending::PendingQueue;
use crate::sampler::LoadSampler;
use crate::signals::signal_name;
use crate::task_log::TaskLog;
use log::{debug, error, info, warn};
use protocol::budget::chunks_within;
use protocol::connection::{FrameReader, Welcome};
use protocol::tls::ClientTls;
use protocol::{
    Completion, Connection, ConnectionError, FromMaster, OutputChunk, RejectKind, Role,
    TaskOutcome, TaskRef, ToMaster, WorkerInfo,
};
use std::collections::HashSet;
use std::mem;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Reconnect delays: first ~100 ms, doubling up to 5 s.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A connection that lasted this long worked: the next reconnect starts the backoff afresh. A
/// master that accepts and then drops us at once keeps the delays growing.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// TCP connect timeout per address (the handshake has its own, in `protocol`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connection failures after the first are logged at info at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Used when the master's `Welcome` asks for a zero heartbeat interval.
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(1);
/// Events handled per loop turn before the turn's output is flushed: bounds report latency when
/// the channel is never empty.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// Budget for one `Finished` frame, far below `MAX_FRAME` (16 MiB): 64 KiB tails of a few hundred
/// commands could otherwise exceed it, and smaller frames keep the master's loop turns short.
const FINISHED_FRAME_BYTES: usize = 1 << 20;
/// A master that says our name is in use (a live worker has it) is asked again this many times,
/// this far apart, before the worker gives up: the holder may be a previous life of ours whose
/// connection the master has not yet seen die, which its heartbeat timeout (3 s by default)
/// settles.
const NAME_IN_USE_RETRIES: u32 = 3;
const NAME_IN_USE_DELAY: Duration = Duration::from_secs(2);
/// Commands' output taken per loop turn, in all. With `OUTPUT_BACKLOG_BYTES` this bounds what a
/// heartbeat or a completion can find ahead of it in the outbox to about 2 MiB.
const TURN_OUTPUT_BYTES: usize = 1 << 20;
/// One `Output` frame's budget.
const OUTPUT_FRAME_BYTES: usize = 1 << 20;
/// While the worker holds more than half its prefetch unstarted, the master has nothing to send
/// it back: a turn's `Started` and `Finished` wait up to this long to travel with later turns'.
/// Short tasks then cost the master (and our reader) one wakeup per few tasks, not one per task;
/// a run's start or end reaches the master at most this much late.
const REPORT_WAIT: Duration = Duration::from_millis(5);
/// After stopping tasks, how long past the SIGKILL to wait for their threads to report.
const STOP_SLACK: Duration = Duration::from_secs(1);
/// A master that takes no byte of ours for this many heartbeat intervals (ours or the master's,
/// whichever is longer) is lost: the master's default heartbeat timeout is 3 intervals, too.
const STALL_HEARTBEATS: u32 = 3;

/// What to do when the master connection breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMasterLost {
    /// Keep the tasks running, reconnect, and report them to the next master connection.
    Wait,
    /// Kill the tasks and exit with status 1.
    Stop,
}

pub struct Config {
    pub master_addr: String,
    /// Shared secret for the handshake, if the master wants one.
    pub token: Option<Vec<u8>>,
    /// TLS to the master, with `--tls-ca`.
    pub tls: Option<ClientTls>,
    pub info: WorkerInfo,
    /// The heartbeat interval asked for (also sent in `WorkerInfo`); the master may tell us a
    /// shorter one to meet its timeout, which wins.
    pub heartbeat: Option<Duration>,
    pub on_master_lost: OnMasterLost,
    /// Commands die with the worker even when it is SIGKILLed (`PR_SET_PDEATHSIG`).
    pub tasks_die_with_worker: bool,
    /// Exit (status 0) after this long with no task running or held: a worker of a batch
    /// allocation ends the allocation so. `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Everything the loop reacts to, from whichever thread.
pub enum Event {
    /// A connect attempt (handshake included) finished.
    Connected {
        attempt: u64,
        result: Result<(Connection, Welcome), ConnectionError>,
    },
    /// A message from the master on connection `conn`.
    Frame { conn: u64, msg: FromMaster },
    /// Connection `conn` broke (or the master closed it).
    Lost { conn: u64, error: ConnectionError },
    /// A connection's writer caught up after its outbox was full (one of an abandoned connection
    /// costs a spurious turn, nothing more).
    Drained,
    /// A task thread finished an attempt.
    Finished(Completion),
    /// SIGINT or SIGTERM arrived.
    Signal(libc::c_int),
    /// A command printed: there is output to take (one such event until the loop has taken it
    /// all, not one per read).
    Output,
}

impl From<Completion> for Event {
    fn from(c: Completion) -> Self {
        Event::Finished(c)
    }
}

/// Runs the worker until it is told to stop (`Ok`), rejected, or loses its master under
/// `OnMasterLost::Stop`. `events` must be a sender for `inbox`; the signal thread uses another.
pub fn run(
    config: Config,
    events: Sender<Event>,
    inbox: Receiver<Event>,
) -> Result<(), WorkerError> {
    let mut session = Session::new(config, events);
    session.connect(Instant::now());
    loop {
        let first = match session.poll_timeout() {
            Some(at) => match inbox.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                // The session holds a sender, so the channel cannot close.
                Err(RecvTimeoutError::Disconnected) => None,
            },
            // Only while a connect thread is out, which always reports.
            None => inbox.recv().ok(),
        };
        let now = Instant::now();
        if let Some(event) = first {
            session.handle_event(now, event);
            for event in inbox.try_iter().take(MAX_EVENTS_PER_TURN) {
                session.handle_event(now, event);
            }
        }
        session.handle_timeout(now);
        session.start_pending(now);
        session.flush(now);
        session.note_idle(now);
        if let Some(result) = session.poll_exit(Instant::now()) {
            return result;
        }
    }
}

/// The state of the master connection.
enum Link {
    /// Waiting out a backoff delay before the next attempt.
    Idle {
        retry_at: Instant,
    },
    /// A connect thread is working on `attempt`.
    Connecting {
        attempt: u64,
    },
    Up(Up),
    /// The worker is stopping and wants no connection.
    Closed,
}

struct Up {
    conn: u64,
    out: Outbox,
    heartbeat: Duration,
    /// Unwritten bytes waiting this long with none written mean a master that does not read.
    stall_timeout: Duration,
    next_heartbeat: Instant,
    since: Instant,
}

struct Stopping {
    result: Result<(), WorkerError>,
    give_up_at: Instant,
}

struct Session {
    config: Config,
    events: Sender<Event>,
    link: Link,
    /// Tags connect attempts and connections, so that events of abandoned ones are recognised.
    last_tag: u64,
    backoff: Backoff,
    failures: FailureLog,
    executor: Executor<Event>,
    sampler: LoadSampler,
    /// This turn's output. Reused from turn to turn so a busy loop does not allocate for them.
    started: Vec<TaskRef>,
    /// This turn's completions; while the master is away, every completion since. That backlog
    /// is bounded by the attempts that were running when the master went away, since nothing new
    /// starts without a master.
    finished: Vec<Completion>,
    /// This turn's answers to `Retract`, one per request, written after `started` and `finished`.
    retracted: Vec<Vec<TaskRef>>,
    /// Assigned, not started. Its bound is the master's: `slots + prefetch` held in all, one more
    /// briefly while the master swaps in a higher-priority task (see `start_pending`).
    pending: PendingQueue,
    /// Whether we warned that the master assigned more than `slots + prefetch` (warn once per
    /// episode).
    over_limit: bool,
    /// The per-task lines of the terminal, rate-limited.
    task_log: TaskLog,
    stopping: Option<Stopping>,
    /// The master (its data dir) whose tasks we run: set by the first `Welcome`.
    master_id: Option<u64>,
    /// Runs of another master, stopped when we found ourselves talking to a different one: their
    /// ends are reported to nobody. Emptied as they end.
    disowned: HashSet<TaskRef>,
    /// Refusals in a row because a live worker holds our name.
    name_in_use: u32,
    /// This turn's command output, sent before `finished` (reused from turn to turn).
    output: Vec<OutputChunk>,
    /// Output was left behind for lack of this turn's budget: the next turn comes at once.
    output_more: bool,
    /// Since when no task has been running or held (`--idle-timeout`); `None` while busy.
    idle_since: Option<Instant>,
    /// When the reports waiting under [`REPORT_WAIT`] go at the latest; `None`: none wait.
    reports_due: Option<Instant>,
}

impl Session {
    fn new(config: Config, events: Sender<Event>) -> Self {
        let wake_events = events.clone();
        let wake: Wake = Arc::new(move || {
            // A closed channel means the worker is exiting.
            let _ = wake_events.send(Event::Output);
        });
        Session {
            executor: Executor::new(events.clone(), KILL_GRACE)
                .with_tasks_die_with_worker(config.tasks_die_with_worker)
                .with_output(wake),
            config,
            events,
            link: Link::Closed,
            last_tag: 0,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP, seed_from_clock_and_pid()),
            failures: FailureLog::default(),
            sampler: LoadSampler::new(),
            started: Vec::new(),
            finished: Vec::new(),
            retracted: Vec::new(),
            pending: PendingQueue::default(),
            over_limit: false,
            task_log: TaskLog::default(),
            stopping: None,
            master_id: None,
            disowned: HashSet::new(),
            name_in_use: 0,
            output: Vec::new(),
            output_more: false,
            idle_since: Some(Instant::now()),
            reports_due: None,
        }
    }

    /// Starts or ends the idle period at the end of a turn.
    fn note_idle(&mut self, now: Instant) {
        let idle = self.executor.running() == 0
            && self.executor.standing_by() == 0
            && self.pending.is_empty();
        match (idle, self.idle_since) {
            (true, None) => self.idle_since = Some(now),
            (false, Some(_)) => self.idle_since = None,
            _ => {}
        }
    }

    /// When the idle timeout ends the worker, if it is idle and has one.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.stopping.is_some() {
            return None;
        }
        Some(self.idle_since? + self.config.idle_timeout?)
    }

    fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.last_tag
    }

    /// The next instant at which `handle_timeout` has work.
    fn poll_timeout(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Idle { retry_at } => Some(*retry_at),
            Link::Up(up) => {
                let stall = up.out.stall_deadline(up.stall_timeout);
                Some(stall.map_or(up.next_heartbeat, |at| at.min(up.next_heartbeat)))
            }
            Link::Connecting { .. } | Link::Closed => None,
        };
        [
            link,
            self.output_more.then(Instant::now),
            self.executor.poll_timeout(),
            self.stopping.as_ref().map(|s| s.give_up_at),
            self.idle_deadline(),
            self.reports_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected { attempt, result } => self.on_connected(now, attempt, result),
            Event::Frame { conn, msg } if self.is_current(conn) => self.on_frame(now, msg),
            Event::Lost { conn, error } if self.is_current(conn) => {
                self.on_lost(now, &error.to_string())
            }
            // Nothing to do now: this turn's `flush` queues what waited.
            Event::Drained => {}
            // From a connection already given up.
            Event::Frame { .. } | Event::Lost { .. } => {}
            Event::Finished(completion) => {
                let run = completion.task_ref();
                if self.executor.handle_finished(&completion) {
                    if self.disowned.is_empty() || !self.disowned.remove(&run) {
                        self.finished.push(completion);
                    } else {
                        self.executor.drop_output(run);
                    }
                }
            }
            // This turn's `flush` takes it.
            Event::Output => {}
            Event::Signal(signal) => self.on_signal(now, signal),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.idle_deadline().is_some_and(|at| at <= now) {
            let idle = self.config.idle_timeout.unwrap_or_default();
            info!(
                "{}: idle for {}: exiting (--idle-timeout)",
                self.config.info.name,
                protocol::duration::format_duration(idle)
            );
            self.begin_stop(now, Ok(()));
        }
        self.executor.handle_timeout(now, &mut self.finished);
        if !self.disowned.is_empty() {
            let disowned = &mut self.disowned;
            let executor = &mut self.executor;
            self.finished.retain(|c| {
                let gone = disowned.remove(&c.task_ref());
                if gone {
                    executor.drop_output(c.task_ref());
                }
                !gone
            });
        }
        match &self.link {
            Link::Idle { retry_at } if now >= *retry_at => self.connect(now),
            Link::Up(up) if up.out.stalled(now, up.stall_timeout) => {
                let why = format!(
                    "it took none of our data for {} ms",
                    up.stall_timeout.as_millis()
                );
                self.on_lost(now, &why);
            }
            Link::Up(up) if now >= up.next_heartbeat => self.queue_load(now),
            _ => {}
        }
    }

    /// Hands this turn's output to the writer. Without a connection, `Started` is dropped (the
    /// next master learns of running tasks from their completions) and completions wait; while
    /// the outbox is full, everything waits (bounded: the master assigns no more tasks before it
    /// hears of these).
    fn flush(&mut self, now: Instant) {
        // Set again below if reports wait on a connection that takes them.
        let reports_due = self.reports_due.take();
        if self.stopping.is_some() {
            // Tasks killed because the worker stops are not reported: the master must see them
            // lost with the worker and run them again, not as cancelled.
            self.started.clear();
            self.finished.clear();
            self.retracted.clear();
            self.executor.drop_all_output();
            self.output_more = false;
            return;
        }
        let Link::Up(up) = &mut self.link else {
            // The answers were for a connection that is gone, whose master forgets this worker's
            // pending tasks anyway. Output waits (and then its commands, on their full pipes).
            self.started.clear();
            self.retracted.clear();
            self.output_more = false;
            return;
        };
        if !up.out.accepting() {
            return; // the reports go once the writer drains (`Event::Drained`)
        }
        let held = self.executor.standing_by() + self.pending.len();
        self.reports_due = reports_due;
        let report = reports_go(
            &mut self.reports_due,
            now,
            !self.started.is_empty() || !self.finished.is_empty(),
            !self.retracted.is_empty() || held * 2 <= self.config.info.prefetch as usize,
        );
        if report && !self.started.is_empty() {
            let msg = ToMaster::Started(mem::take(&mut self.started));
            up.out.queue(&msg);
            if let ToMaster::Started(mut refs) = msg {
                refs.clear();
                self.started = refs;
            }
        }
        // IMPORTANT: a finished command's output goes before its completion, so the master has
        // its whole log when it hears that the task ended.
        if report {
            for c in &self.finished {
                self.executor.finish_output(c.task_ref(), &mut self.output);
            }
        }
        self.output_more = up.out.wants_output()
            && self
                .executor
                .take_output(TURN_OUTPUT_BYTES, &mut self.output);
        if !self.output.is_empty() {
            for chunk in chunks_within(mem::take(&mut self.output), OUTPUT_FRAME_BYTES) {
                up.out.queue(&ToMaster::Output(chunk));
            }
        }
        self.task_log.tick(now);
        if report && !self.finished.is_empty() {
            for c in &self.finished {
                self.task_log.finished(now, c);
            }
            queue_finished(&mut up.out, &mut self.finished);
        }
        for returned in self.retracted.drain(..) {
            up.out.queue(&ToMaster::Retracted(returned));
        }
        up.out.send(now);
    }

    /// The worker's exit status, once it is done.
    fn poll_exit(&mut self, now: Instant) -> Option<Result<(), WorkerError>> {
        let stopping = self.stopping.as_ref()?;
        let left = self.executor.running();
        if left > 0 && now < stopping.give_up_at {
            return None;
        }
        if left > 0 {
            warn!("{left} tasks did not report after SIGKILL; exiting anyway");
            self.executor.kill_all();
        }
        self.stopping.take().map(|s| s.result)
    }

    fn is_current(&self, conn: u64) -> bool {
        matches!(&self.link, Link::Up(up) if up.conn == conn)
    }

    /// Starts a connect attempt on its own thread, so the loop keeps running tasks meanwhile.
    fn connect(&mut self, now: Instant) {
        let attempt = self.next_tag();
        let addr = self.config.master_addr.clone();
        let role = Role::Worker(self.config.info.clone());
        let token = self.config.token.clone();
        let tls = self.config.tls.clone();
        let events = self.events.clone();
        let spawned = thread::Builder::new()
            .name("connect".into())
            .spawn(move || {
                let result = Connection::connect(
                    &addr,
                    role,
                    token.as_deref(),
                    tls.as_ref(),
                    CONNECT_TIMEOUT,
                );
                let _ = events.send(Event::Connected { attempt, result });
            });
        self.link = match spawned {
            Ok(_) => Link::Connecting { attempt },
            Err(e) => {
                warn!("cannot start a connect thread: {e}");
                Link::Idle {
                    retry_at: now + self.backoff.next_delay(),
                }
            }
        };
    }

    fn on_connected(
        &mut self,
        now: Instant,
        attempt: u64,
        result: Result<(Connection, Welcome), ConnectionError>,
    ) {
        if !matches!(self.link, Link::Connecting { attempt: a } if a == attempt) {
            // Stopping meanwhile; dropping the connection closes it.
            return;
        }
        let addr = self.config.master_addr.clone();
        let (connection, welcome) = match result {
            Ok(ok) => ok,
            // TLS on one side only, or a certificate we do not trust: retrying cannot help.
            Err(
                e @ (ConnectionError::Tls(_)
                | ConnectionError::Rejected {
                    kind: RejectKind::TlsRequired,
                    ..
                }),
            ) => {
                let line = e.to_string();
                error!("{line}");
                return self.begin_stop(now, Err(WorkerError::Tls { line }));
            }
            Err(ConnectionError::Rejected {
                reason,
                kind: RejectKind::NameInUse,
                ..
            }) if self.name_in_use < NAME_IN_USE_RETRIES => {
                self.name_in_use += 1;
                warn!(
                    "the master at {addr} says our name is in use: {reason}; asking again in {} s \
                     ({} of {NAME_IN_USE_RETRIES})",
                    NAME_IN_USE_DELAY.as_secs(),
                    self.name_in_use
                );
                self.link = Link::Idle {
                    retry_at: now + NAME_IN_USE_DELAY,
                };
                return;
            }
            Err(ConnectionError::Rejected {
                reason,
                kind: RejectKind::Authentication,
                token_sent,
                ..
            }) => {
                // Say which side of the token is wrong, as far as the handshake can tell.
                let hint = if token_sent {
                    "the master holds another token (check --token or BALLAST_TOKEN)"
                } else {
                    "the master requires a token: set --token or BALLAST_TOKEN"
                };
                return self.rejected(now, addr, format!("{reason}: {hint}"));
            }
            Err(ConnectionError::Rejected { reason, .. }) => {
                return self.rejected(now, addr, reason)
            }
            Err(e @ ConnectionError::Version { .. }) => {
                return self.rejected(now, addr, e.to_string())
            }
            Err(ConnectionError::MasterUnproven { .. }) => {
                // Retrying cannot help: someone must give both the same token.
                let e = WorkerError::MasterUnproven { addr };
                error!("{e}");
                return self.begin_stop(now, Err(e));
            }
            Err(e) => {
                self.failures.note(now, &addr, &e);
                self.link = Link::Idle {
                    retry_at: now + self.backoff.next_delay(),
                };
                return;
            }
        };
        self.name_in_use = 0;
        self.adopt_master(now, &addr, welcome.master_id);
        // A master with another `--log-limit` says so right after `Welcome`.
        self.executor
            .set_output_limit(protocol::limits::DEFAULT_LOG_LIMIT_BYTES);
        let (reader, writer) = connection.split();
        let conn = self.next_tag();
        if let Err(e) = spawn_reader(reader, conn, self.events.clone()) {
            warn!("cannot start a reader thread: {e}");
            writer.shutdown();
            self.link = Link::Idle {
                retry_at: now + self.backoff.next_delay(),
            };
            return;
        }
        let (stream, buf) = writer.into_parts();
        let events = self.events.clone();
        let notify = move |note| {
            let event = match note {
                WriterNote::Failed(e) => Event::Lost {
                    conn,
                    error: ConnectionError::Io(e),
                },
                WriterNote::Drained => Event::Drained,
            };
            events.send(event).is_ok()
        };
        let out = match Outbox::start(stream, buf, OUTBOX_LIMIT, notify) {
            Ok(out) => out,
            Err(e) => {
                // `start` shut the socket down, which ends the reader.
                warn!("cannot start a writer thread: {e}");
                self.link = Link::Idle {
                    retry_at: now + self.backoff.next_delay(),
                };
                return;
            }
        };
        let master_heartbeat = match welcome.heartbeat_interval_ms {
            0 => {
                if self.config.heartbeat.is_none() {
                    warn!(
                        "the master asked for a zero heartbeat interval; using {} ms",
                        FALLBACK_HEARTBEAT.as_millis()
                    );
                }
                FALLBACK_HEARTBEAT
            }
            ms => Duration::from_millis(ms),
        };
        // The master says what meets its timeout; a faster interval of our own is fine too.
        let heartbeat = match self.config.heartbeat {
            Some(asked) if master_heartbeat < asked => {
                info!(
                    "the master told us to report every {} ms, not the {} ms asked for \
                     (--heartbeat): its heartbeat timeout needs it; adjusted",
                    master_heartbeat.as_millis(),
                    asked.as_millis()
                );
                master_heartbeat
            }
            Some(asked) => asked,
            None => master_heartbeat,
        };
        let stall_timeout = heartbeat.max(master_heartbeat) * STALL_HEARTBEATS;
        // The name first: the master's internal id (`#3`) only disambiguates.
        let id = welcome
            .worker_id
            .map_or_else(String::new, |id| format!(" ({id})"));
        info!(
            "connected to the master at {addr} as worker {}{id} ({}, prefetch {}, heartbeat \
             every {} ms, master incarnation {})",
            self.config.info.name,
            protocol::plural::count(self.config.info.slots, "slot", "slots"),
            self.config.info.prefetch,
            heartbeat.as_millis(),
            welcome.incarnation
        );
        if !self.finished.is_empty() {
            info!(
                "reporting {} attempts that finished while the master was away",
                self.finished.len()
            );
        }
        self.failures = FailureLog::default();
        self.link = Link::Up(Up {
            conn,
            out,
            heartbeat,
            stall_timeout,
            next_heartbeat: now,
            since: now,
        });
        // IMPORTANT: the first Load goes out before the completions buffered while away (queued
        // by this turn's flush), so the master sees a live worker before its reports; `Running`
        // lets a restarted master adopt attempts in flight instead of running them twice.
        self.queue_load(now);
        let mut running = self.executor.running_refs();
        running.retain(|r| !self.disowned.contains(r));
        if let Link::Up(up) = &mut self.link {
            up.out.queue(&ToMaster::Running(running));
        }
    }

    /// IMPORTANT: task ids and incarnations are only unique within one master's data dir. Runs of
    /// another master (its data dir moved away, or a master without a journal restarted) belong
    /// to no task here; reporting them could credit a stranger's result to a task with the same
    /// id, so they are stopped and forgotten.
    fn adopt_master(&mut self, now: Instant, addr: &str, master_id: u64) {
        let previous = self.master_id.replace(master_id);
        if previous.is_none_or(|p| p == master_id) {
            return;
        }
        let runs = self.executor.running_refs();
        warn!(
            "the master at {addr} is not the one our tasks came from (id {master_id:016x}, was \
             {:016x}): stopping {} tasks and dropping {} results of the old one",
            previous.unwrap_or_default(),
            runs.len(),
            self.finished.len()
        );
        let mut ended = Vec::new();
        for r in &runs {
            self.executor.cancel(now, *r, &mut ended);
        }
        self.disowned
            .extend(runs.into_iter().filter(|r| self.executor.is_running(*r)));
        self.finished.clear();
        self.started.clear();
    }

    fn rejected(&mut self, now: Instant, addr: String, reason: String) {
        error!("the master at {addr} rejected this worker: {reason}");
        self.begin_stop(now, Err(WorkerError::Rejected { addr, reason }));
    }

    fn on_frame(&mut self, now: Instant, msg: FromMaster) {
        match msg {
            // Started by `start_pending` at the end of the turn.
            FromMaster::Assign(assignments) => {
                for a in assignments {
                    let (task, attempt) = (a.task, a.attempt);
                    if self.executor.is_running(a.task_ref()) {
                        warn!("task {task} attempt {attempt} assigned twice; ignoring the second");
                    } else {
                        self.pending.push(a);
                    }
                }
            }
            FromMaster::LogLimit { per_stream_bytes } => {
                self.executor.set_output_limit(per_stream_bytes);
            }
            FromMaster::Cancel(tasks) => {
                let mut unstarted: HashSet<TaskRef> =
                    self.pending.remove(&tasks).into_iter().collect();
                for task in tasks {
                    if !unstarted.remove(&task) {
                        self.executor.cancel(now, task, &mut self.finished);
                        continue;
                    }
                    debug!(
                        "task {} attempt {} cancelled before it started",
                        task.task, task.attempt
                    );
                    // Reported as a cancelled running task would be, so the master needs no
                    // second path for it.
                    self.finished
                        .push(task.completion(TaskOutcome::Cancelled, 0));
                }
            }
            FromMaster::Retract(tasks) => {
                let asked = tasks.len();
                let mut returned = self.pending.remove(&tasks);
                returned.extend(self.executor.withdraw(&tasks).iter().map(|a| a.task_ref()));
                info!(
                    "returned {} of {asked} tasks to the master (the rest had started)",
                    returned.len()
                );
                // Answered even when empty: the master counts on one answer per request.
                self.retracted.push(returned);
            }
            FromMaster::Rejected { reason, .. } => {
                let addr = self.config.master_addr.clone();
                self.rejected(now, addr, reason);
            }
            other => {
                warn!("ignoring a message the master should not send to a worker");
                debug!("ignored: {other:?}");
            }
        }
    }

    fn on_lost(&mut self, now: Instant, why: &str) {
        let Link::Up(mut up) = mem::replace(&mut self.link, Link::Closed) else {
            return;
        };
        // Also wakes our reader and writer threads, which then exit.
        let mut unsent = up.out.close();
        if !unsent.is_empty() {
            debug!(
                "{} completions had not reached the master; they wait for the next connection",
                unsent.len()
            );
            // They finished before this turn's.
            unsent.append(&mut self.finished);
            self.finished = unsent;
        }
        let addr = self.config.master_addr.clone();
        let running = self.executor.running();
        match self.config.on_master_lost {
            OnMasterLost::Stop => {
                error!(
                    "lost the master at {addr} ({why}); stopping {} and exiting",
                    protocol::plural::count_usize(running, "running task", "running tasks")
                );
                let reason = why.to_string();
                self.begin_stop(now, Err(WorkerError::MasterLost { addr, reason }));
            }
            OnMasterLost::Wait => {
                info!(
                    "lost the master at {addr} ({why}); reconnecting, {} running",
                    protocol::plural::count_usize(running, "task keeps", "tasks keep")
                );
                self.drop_pending("the master connection is lost");
                if now.saturating_duration_since(up.since) >= STABLE_CONNECTION {
                    self.backoff.reset();
                }
                self.link = Link::Idle {
                    retry_at: now + self.backoff.next_delay(),
                };
            }
        }
    }

    fn on_signal(&mut self, now: Instant, signal: libc::c_int) {
        let name = signal_name(signal);
        match &mut self.stopping {
            Some(stopping) => {
                warn!("{name} again: killing all tasks now");
                self.executor.kill_all();
                stopping.give_up_at = now;
            }
            None => {
                info!(
                    "{name}: stopping {} and exiting",
                    protocol::plural::count_usize(
                        self.executor.running(),
                        "running task",
                        "running tasks"
                    )
                );
                self.begin_stop(now, Ok(()));
            }
        }
    }

    /// Closes the connection, asks every task to stop (SIGTERM, SIGKILL after the grace) and
    /// arranges for `poll_exit` to return `result` once they are gone.
    fn begin_stop(&mut self, now: Instant, result: Result<(), WorkerError>) {
        if let (Link::Up(up), Ok(())) = (&mut self.link, &result) {
            // A stop on purpose: say so, so the master logs `left`, not `lost`. Best effort:
            // written at once if the socket takes it (it is empty but for this), dropped by the
            // close below otherwise.
            up.out.queue(&ToMaster::Leaving);
            up.out.send(now);
        }
        if let Link::Up(up) = &mut self.link {
            // The master sees the worker gone at once and re-queues its tasks. What had not been
            // written is not reported, as nothing is once the worker stops (see `flush`).
            up.out.close();
        }
        self.link = Link::Closed;
        self.drop_pending("the worker stops");
        self.executor.cancel_all(now, &mut self.finished);
        if self.stopping.is_none() {
            self.stopping = Some(Stopping {
                result,
                give_up_at: now + KILL_GRACE + STOP_SLACK,
            });
        }
    }

    /// Starts pending tasks, best first, while a slot is free. Called once per loop turn, after
    /// the turn's events and timers, so every slot freed in the turn (a completion, a timer, a
    /// cancel) is refilled here and nowhere else. Cheap when there is nothing to do, so it needs
    /// no dirty flag.
    fn start_pending(&mut self, now: Instant) {
        debug_assert!(
            self.pending.is_empty() || matches!(self.link, Link::Up(_)),
            "pending tasks outlived their master connection"
        );
        let slots = self.config.info.slots as usize;
        self.put_back_outranked_standby();
        // Slots freed other than by a command's completion on the IO thread (which starts a
        // standby command itself): a sleep, a cancel, a completion it reported before the
        // standby was there.
        while self.executor.running() < slots && self.executor.promote(now) {}
        // Bounded by the queue: every iteration takes one task out. A zero-length task finishes
        // inside `start` and takes no slot, so a batch of them starts in one turn.
        while self.executor.running() < slots {
            let Some(a) = self.pending.pop() else {
                break;
            };
            self.task_log.started(now, &a);
            if self.executor.start(now, &a, &mut self.finished) {
                self.started.push(a.task_ref());
            }
        }
        // Every slot is busy: the next commands wait on the IO thread, which starts one the
        // moment a command completes, without two thread hops through this loop (a short task's
        // slot would idle for them).
        while self.executor.running() >= slots && self.executor.standing_by() < slots {
            match self.pending.peek() {
                Some(a) if matches!(a.spec.kind, protocol::TaskKind::Command { .. }) => {}
                _ => break,
            }
            let Some(a) = self.pending.pop() else {
                break;
            };
            self.task_log.standing_by(now, &a);
            self.executor.stand_by(now, &a, &mut self.finished);
        }
        let before = self.started.len();
        self.executor.take_started(&mut self.started);
        if !self.disowned.is_empty() && self.started.len() > before {
            let disowned = &self.disowned;
            self.started.retain(|r| !disowned.contains(r));
        }
        // When the master swaps a higher-priority task in and the task it retracts had already
        // started, we hold one more than `slots + prefetch` for a while: normal, not worth a
        // warning. Beyond that the master and this worker disagree about the limit.
        let limit = slots.saturating_add(self.config.info.prefetch as usize);
        let held = self.executor.running() + self.executor.standing_by() + self.pending.len();
        if held > limit + 1 && !self.over_limit {
            warn!(
                "the master assigned more than our {slots} slots + {} prefetch: \
                 holding all {held} tasks",
                self.config.info.prefetch
            );
        }
        self.over_limit = held > limit + 1;
    }

    /// A task that arrived after the commands on standby and outranks one of them goes first:
    /// they go back to the pending queue, ahead of their equals.
    fn put_back_outranked_standby(&mut self) {
        let Some(best) = self.pending.peek().map(|a| a.spec.priority) else {
            return;
        };
        if self
            .executor
            .lowest_standby_priority()
            .is_none_or(|lowest| best <= lowest)
        {
            return;
        }
        for a in self.executor.withdraw_all().into_iter().rev() {
            self.pending.push_front(a);
        }
    }

    /// Forgets the tasks that have not started. They are the master's: it re-queues them when it
    /// sees this worker gone, so starting them later could run them twice.
    fn drop_pending(&mut self, why: &str) {
        let dropped = self.pending.clear() + self.executor.withdraw_all().len();
        if dropped > 0 {
            info!(
                "{why}: dropping {dropped} tasks that had not started (the master re-queues them)"
            );
        }
    }

    fn queue_load(&mut self, now: Instant) {
        let running = u32::try_from(self.executor.running()).unwrap_or(u32::MAX);
        let report = self.sampler.sample(running);
        if let Link::Up(up) = &mut self.link {
            // A full outbox means the master is behind on our data: one more report would wait
            // behind the rest, and the stall check watches that the master reads at all.
            if up.out.accepting() {
                up.out.queue(&ToMaster::Load(report));
            }
            // From now, not from the missed deadline: a stalled loop sends one report, not a burst.
            up.next_heartbeat = now + up.heartbeat;
        }
    }
}

/// Whether this turn's reports (`pending`: there are some) go now, with `at_once` when the master
/// needs them now (it must refill our prefetch, or waits for a `Retracted` that must not overtake
/// them); otherwise they wait up to [`REPORT_WAIT`], `due` keeping when.
fn reports_go(due: &mut Option<Instant>, now: Instant, pending: bool, at_once: bool) -> bool {
    if !pending || at_once {
        *due = None;
        return true;
    }
    let at = *due.get_or_insert(now + REPORT_WAIT);
    if now < at {
        return false;
    }
    *due = None;
    true
}

/// Queues `finished` as `Finished` frames of at most `FINISHED_FRAME_BYTES` each and leaves it
/// empty (keeping its allocation in the common one-frame case).
fn queue_finished(out: &mut Outbox, finished: &mut Vec<Completion>) {
    for mut chunk in chunks_within(mem::take(finished), FINISHED_FRAME_BYTES) {
        out.queue_finished(&mut chunk);
        *finished = chunk;
    }
}

/// Forwards every frame of connection `conn` to the loop, then how it ended.
fn spawn_reader(mut reader: FrameReader, conn: u64, events: Sender<Event>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("master-reader".into())
        .spawn(move || loop {
            match reader.recv::<FromMaster>() {
                Ok(msg) => {
                    if events.send(Event::Frame { conn, msg }).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = events.send(Event::Lost { conn, error });
                    return;
                }
            }
        })?;
    Ok(())
}

/// Logs connection failures without flooding: the first at info, then at most one info line per
/// `FAILURE_LOG_INTERVAL` with a count, the rest at debug.
#[derive(Default)]
struct FailureLog {
    failures: u32,
    last_info: Option<Instant>,
}

impl FailureLog {
    fn note(&mut self, now: Instant, addr: &str, error: &ConnectionError) {
        self.failures += 1;
        // `Connect` and `HandshakeTimeout` errors already name the address.
        let what = match error {
            ConnectionError::Connect { .. } | ConnectionError::HandshakeTimeout { .. } => {
                error.to_string()
            }
            _ => format!("handshake with the master at {addr} failed: {error}"),
        };
        let due = match self.last_info {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= FAILURE_LOG_INTERVAL,
        };
        if !due {
            debug!("{what} (attempt {})", self.failures);
            return;
        }
        self.last_info = Some(now);
        if self.failures == 1 {
            info!("{what}; retrying with backoff");
        } else {
            info!("{what}; still retrying ({} attempts so far)", self.failures);
        }
    }
}

#[cfg(test)]
mod tests;
