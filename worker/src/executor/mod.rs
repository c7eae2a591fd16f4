//! Runs task attempts: child processes, and the synthetic `Sleep` and `Spin` tasks.
//!
//! [`Executor`] is driven by the session's loop and never blocks it. Its methods are of four kinds:
//! - getters: [`Executor::running`], [`Executor::is_running`], [`Executor::running_refs`];
//! - commands: [`Executor::start`], [`Executor::cancel`], [`Executor::cancel_all`],
//!   [`Executor::kill_all`];
//! - input: [`Executor::handle_finished`] (a completion the IO thread or a spin thread sent
//!   through the events channel) and [`Executor::handle_timeout`] (time passed);
//! - output: [`Executor::poll_timeout`], the next instant `handle_timeout` has work to do.
//!
//! Completions known inside a call (a zero-length task, a cancelled sleep) are appended to the
//! caller's `done` vector; completions produced by threads (commands, spins) arrive as `E` on the
//! channel given to [`Executor::new`], and must be passed back to `handle_finished`.
//!
//! Sleeps cost no thread: they are entries in a timer heap. Spins burn a CPU each, on a pool that
//! grows to the largest number run at once. Commands cost no thread of their own: the caller's
//! thread spawns them (`clone` and `execve`, see `command`; those on standby, the IO thread), and
//! one IO thread, started with the first command, reads their pipes and reaps them (pidfds and
//! `poll`, see `reactor`). Their timeouts and kills are timers
//! here, and stops are signalled from the caller's thread. Commands are reported to the process's
//! sentinel, if it has one (see `crate::sentinel`), which kills them if the worker dies.

mod clone_spawn;
mod command;
mod output;
mod program_path;
mod reactor;
mod spin;
mod tree;

pub use output::{Wake, OUTPUT_BUFFER_BYTES};

use crate::sentinel::{self, Link};
use command::{CommandControl, StopReason};
use log::{debug, warn};
use output::OutputBuffer;
use protocol::{Assignment, Completion, OutputChunk, OutputStream, TaskKind, TaskOutcome, TaskRef};
use reactor::Reactor;
use spin::{SpinJob, SpinPool};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much of each output stream a command's outcome carries.
pub const TAIL_BYTES: usize = 64 << 10;

/// The most bytes of one stream in one `OutputChunk`.
pub const OUTPUT_CHUNK_BYTES: usize = OUTPUT_BUFFER_BYTES;

const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

/// Time between SIGTERM and SIGKILL when a command is timed out or cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

pub struct Executor<E> {
    events: Sender<E>,
    kill_grace: Duration,
    /// Commands also get `PR_SET_PDEATHSIG` (see `command`).
    die_with_worker: bool,
    /// Watch commands' exits as on a kernel without pidfds (tests of that path).
    #[cfg(test)]
    without_pidfds: bool,
    /// Told of every command's process group, to kill them if the worker dies.
    sentinel: Option<Arc<Link>>,
    running: HashMap<TaskRef, Entry>,
    timers: BinaryHeap<Timer>,
    /// Source of entry ids, so a timer left over from an earlier run of the same `TaskRef` is
    /// recognised as stale.
    next_id: u64,
    spins: SpinPool<E>,
    /// Wakes the loop when a command printed; `None`: output is not streamed, only its tails.
    wake: Option<Wake>,
    /// Commands' output not yet taken, until their completion has been reported with it.
    outputs: BTreeMap<TaskRef, [Arc<OutputBuffer>; 2]>,
    /// Where `take_output` stopped last: the next turn starts after it, so one loud task
    /// cannot keep the others' output waiting.
    output_cursor: Option<TaskRef>,
    /// Reused by `take_output`.
    pieces: Vec<(u64, Vec<u8>)>,
    /// Bytes of each stream of a command streamed at most: the master's `--log-limit`.
    output_limit: u64,
    /// The commands' IO thread, started with the first command, and its waker as the output
    /// buffers' `space`.
    reactor: Option<(Reactor, Wake)>,
    /// Entries on standby (`held`).
    standing_by: usize,
    /// Started from standby, not yet taken by `take_started`.
    started: Vec<TaskRef>,
    /// Reused by `sync_standby`.
    promoted: Vec<(TaskRef, Instant)>,
}

struct Entry {
    id: u64,
    started: Instant,
    kind: Running,
    /// On standby, not started yet (see [`Executor::stand_by`]).
    held: Option<Held>,
}

/// What a command on standby needs once it starts.
struct Held {
    priority: i32,
    timeout_ms: Option<u64>,
}

enum Running {
    /// Ends when its `SleepEnd` timer fires.
    Sleep,
    /// Ends when its thread reports; the flag asks it to stop early.
    Spin { cancel: Arc<AtomicBool> },
    /// Ends when the IO thread reports.
    Command { control: Arc<CommandControl> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// A sleep task is over; `timed_out` when its timeout was shorter than its length.
    SleepEnd { timed_out: bool },
    /// A command's timeout: SIGTERM its process group.
    Timeout,
    /// The grace after SIGTERM is over: SIGKILL the group.
    Kill,
}

#[derive(Debug)]
struct Timer {
    at: Instant,
    task: TaskRef,
    entry: u64,
    kind: TimerKind,
}

// Ordered so that `BinaryHeap` (a max-heap) pops the earliest deadline first; entry ids break ties
// in start order.
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.entry.cmp(&self.entry))
    }
}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Timer {}

/// How a synthetic task that was not cancelled ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    TimedOut,
}

impl Ending {
    fn outcome(self) -> TaskOutcome {
        match self {
            Ending::Exited => TaskOutcome::Exited {
                code: 0,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            },
            Ending::TimedOut => TaskOutcome::TimedOut {
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            },
        }
    }
}

impl<E: From<Completion> + Send + 'static> Executor<E> {
    /// `events` receives the completions of thread-run tasks; `kill_grace` is the time between
    /// SIGTERM and SIGKILL (normally [`KILL_GRACE`]). Commands are reported to the sentinel if
    /// [`sentinel::start`] ran before.
    pub fn new(events: Sender<E>, kill_grace: Duration) -> Self {
        Executor {
            spins: SpinPool::new(events.clone()),
            events,
            kill_grace,
            die_with_worker: false,
            #[cfg(test)]
            without_pidfds: false,
            sentinel: sentinel::link(),
            running: HashMap::new(),
            timers: BinaryHeap::new(),
            next_id: 0,
            wake: None,
            outputs: BTreeMap::new(),
            output_cursor: None,
            pieces: Vec::new(),
            output_limit: protocol::limits::DEFAULT_LOG_LIMIT_BYTES,
            reactor: None,
            standing_by: 0,
            started: Vec::new(),
            promoted: Vec::new(),
        }
    }

    /// Commands started from now on stream at most this much of each stream (the master keeps
    /// no more: `FromMaster::LogLimit`).
    pub fn set_output_limit(&mut self, bytes: u64) {
        self.output_limit = bytes;
    }

    /// Streams commands' output (see `output`): `wake` is called, from the IO thread, when
    /// there is some to take with [`Executor::take_output`].
    pub fn with_output(mut self, wake: Wake) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Also gives commands `PR_SET_PDEATHSIG`, for when the sentinel dies with the worker, at a
    /// cost per spawn (see `command`).
    pub fn with_tasks_die_with_worker(mut self, on: bool) -> Self {
        self.die_with_worker = on;
        self
    }

    /// Watches commands' exits by polling `waitid`, as on kernels without pidfds.
    #[cfg(test)]
    fn without_pidfds(mut self) -> Self {
        self.without_pidfds = true;
        self
    }

    /// Reports commands to this link instead of the process's sentinel.
    #[cfg(test)]
    fn with_sentinel(mut self, link: Arc<Link>) -> Self {
        self.sentinel = Some(link);
        self
    }

    /// Attempts started and not yet reported finished.
    pub fn running(&self) -> usize {
        self.running.len() - self.standing_by
    }

    /// Whether that attempt is running now.
    pub fn is_running(&self, task: TaskRef) -> bool {
        self.running.contains_key(&task)
    }

    /// The attempts running now, in a stable order.
    pub fn running_refs(&self) -> Vec<TaskRef> {
        let mut refs: Vec<TaskRef> = self.running.keys().copied().collect();
        refs.sort_by_key(|r| (r.task, r.attempt));
        refs
    }

    /// Starts an attempt. Returns false (and runs nothing) if that attempt is already running.
    pub fn start(
        &mut self,
        now: Instant,
        assignment: &Assignment,
        done: &mut Vec<Completion>,
    ) -> bool {
        let task = assignment.task_ref();
        if self.running.contains_key(&task) {
            warn!(
                "task {} attempt {} assigned twice; ignoring the second",
                task.task, task.attempt
            );
            return false;
        }
        let spec = &assignment.spec;
        debug!(
            "task {} attempt {} starts: {:?}",
            task.task, task.attempt, spec.kind
        );
        self.next_id += 1;
        let id = self.next_id;
        self.drop_stale_timers();
        let kind = match &spec.kind {
            TaskKind::Sleep { ms } => {
                let (run_ms, ending) = synthetic_run(*ms, spec.timeout_ms);
                if run_ms == 0 {
                    done.push(completion(task, ending.outcome(), 0));
                    return true;
                }
                self.timers.push(Timer {
                    at: now + Duration::from_millis(run_ms),
                    task,
                    entry: id,
                    kind: TimerKind::SleepEnd {
                        timed_out: ending == Ending::TimedOut,
                    },
                });
                Running::Sleep
            }
            TaskKind::Spin { ms } => {
                let (run_ms, ending) = synthetic_run(*ms, spec.timeout_ms);
                if run_ms == 0 {
                    done.push(completion(task, ending.outcome(), 0));
                    return true;
                }
                let cancel = Arc::new(AtomicBool::new(false));
                let job = SpinJob {
                    task,
                    started: now,
                    until: now + Duration::from_millis(run_ms),
                    ending,
                    cancel: cancel.clone(),
                };
                if let Err(e) = self.spins.submit(job) {
                    let error = format!("cannot start a spin thread: {e}");
                    done.push(completion(task, TaskOutcome::Failed { error }, 0));
                    return true;
                }
                Running::Spin { cancel }
            }
            TaskKind::Command { .. } => match self.command_job(now, task, spec) {
                Ok((job, control)) => {
                    if let Some((reactor, _)) = &mut self.reactor {
                        reactor.submit(job);
                    }
                    if let Some(timeout_ms) = spec.timeout_ms {
                        self.arm_timeout(now, task, id, timeout_ms);
                    }
                    Running::Command { control }
                }
                Err(failed) => {
                    done.push(failed);
                    return true;
                }
            },
        };
        self.running.insert(
            task,
            Entry {
                id,
                started: now,
                kind,
                held: None,
            },
        );
        true
    }

    /// Holds a command ready to start the moment a running command completes, on the IO thread
    /// and without a turn of the caller's loop (see `Reactor::stand_by`); it counts in
    /// [`Executor::standing_by`], not in [`Executor::running`], until it starts. The caller
    /// learns that it started from [`Executor::take_started`], and starts it itself with
    /// [`Executor::promote`] when a slot is free otherwise. Anything but a command starts now, as
    /// with [`Executor::start`]. Returns false if that attempt is already here.
    pub fn stand_by(
        &mut self,
        now: Instant,
        assignment: &Assignment,
        done: &mut Vec<Completion>,
    ) -> bool {
        let task = assignment.task_ref();
        let spec = &assignment.spec;
        if !matches!(spec.kind, TaskKind::Command { .. }) || self.running.contains_key(&task) {
            return self.start(now, assignment, done);
        }
        let (job, control) = match self.command_job(now, task, spec) {
            Ok(made) => made,
            Err(failed) => {
                done.push(failed);
                return true;
            }
        };
        if let Some((reactor, _)) = &self.reactor {
            reactor.stand_by(job);
        }
        self.next_id += 1;
        self.running.insert(
            task,
            Entry {
                id: self.next_id,
                started: now,
                kind: Running::Command { control },
                held: Some(Held {
                    priority: spec.priority,
                    timeout_ms: spec.timeout_ms,
                }),
            },
        );
        self.standing_by += 1;
        true
    }

    /// Commands on standby (see [`Executor::stand_by`]).
    pub fn standing_by(&self) -> usize {
        self.standing_by
    }

    /// The lowest priority on standby, if any.
    pub fn lowest_standby_priority(&self) -> Option<i32> {
        if self.standing_by == 0 {
            return None;
        }
        self.running
            .values()
            .filter_map(|e| e.held.as_ref().map(|h| h.priority))
            .min()
    }

    /// Starts one command on standby now, because a slot is free. Returns false if none is left.
    pub fn promote(&mut self, now: Instant) -> bool {
        if self.standing_by == 0 {
            return false;
        }
        let promoted = self.reactor.as_mut().and_then(|(r, _)| r.promote());
        match promoted {
            Some(task) => self.mark_started(task, now),
            // The IO thread started it a moment ago: its start is in the promoted list.
            None => self.sync_standby(),
        }
        true
    }

    /// Moves the attempts that started since the last call, from standby, into `out`: they are
    /// to be reported as `Started`.
    pub fn take_started(&mut self, out: &mut Vec<TaskRef>) {
        self.sync_standby();
        out.append(&mut self.started);
    }

    /// Takes back the commands of `tasks` still on standby; returns them as the assignments they
    /// were, in the order of `tasks`. Nothing of them ran.
    pub fn withdraw(&mut self, tasks: &[TaskRef]) -> Vec<Assignment> {
        if self.standing_by == 0 || tasks.is_empty() {
            return Vec::new();
        }
        let Some((reactor, _)) = &self.reactor else {
            return Vec::new();
        };
        let mut jobs = reactor.withdraw(tasks);
        // Whatever is not among them started on the IO thread meanwhile.
        self.sync_standby();
        jobs.sort_by_key(|j| tasks.iter().position(|t| *t == j.task));
        jobs.into_iter()
            .map(|job| {
                self.running.remove(&job.task);
                self.drop_output(job.task);
                self.standing_by -= 1;
                Assignment {
                    task: job.task.task,
                    attempt: job.task.attempt,
                    incarnation: job.task.incarnation,
                    spec: job.spec,
                }
            })
            .collect()
    }

    /// Takes back every command on standby; returns them in the order they were put there.
    pub fn withdraw_all(&mut self) -> Vec<Assignment> {
        if self.standing_by == 0 {
            return Vec::new();
        }
        let mut held: Vec<(u64, TaskRef)> = self
            .running
            .iter()
            .filter(|(_, e)| e.held.is_some())
            .map(|(t, e)| (e.id, *t))
            .collect();
        // In the order they were put on standby.
        held.sort_unstable();
        let held: Vec<TaskRef> = held.into_iter().map(|(_, t)| t).collect();
        self.withdraw(&held)
    }

    /// A command whose job the IO thread has (from `submit`, or from standby) has started.
    fn mark_started(&mut self, task: TaskRef, at: Instant) {
        let Some(entry) = self.running.get_mut(&task) else {
            return;
        };
        let Some(held) = entry.held.take() else {
            return;
        };
        self.standing_by -= 1;
        entry.started = at;
        let id = entry.id;
        if let Some(timeout_ms) = held.timeout_ms {
            self.arm_timeout(at, task, id, timeout_ms);
        }
        self.started.push(task);
    }

    /// Learns which commands the IO thread started from standby.
    fn sync_standby(&mut self) {
        if self.standing_by == 0 {
            return;
        }
        if let Some((reactor, _)) = &self.reactor {
            reactor.take_promoted(&mut self.promoted);
        }
        let mut promoted = std::mem::take(&mut self.promoted);
        for (task, at) in promoted.drain(..) {
            self.mark_started(task, at);
        }
        self.promoted = promoted;
    }

    fn arm_timeout(&mut self, now: Instant, task: TaskRef, entry: u64, timeout_ms: u64) {
        self.timers.push(Timer {
            at: now + Duration::from_millis(timeout_ms),
            task,
            entry,
            kind: TimerKind::Timeout,
        });
    }

    /// A command's job for the IO thread (started with the first command), with its control and
    /// output buffers; `Err`: the completion of a command that cannot run.
    fn command_job(
        &mut self,
        now: Instant,
        task: TaskRef,
        spec: &Arc<protocol::TaskSpec>,
    ) -> Result<(command::CommandJob, Arc<CommandControl>), Completion> {
        let space = match &self.reactor {
            Some((_, space)) => space.clone(),
            None => match Reactor::start(self.events.clone()) {
                Ok(reactor) => {
                    let waker = reactor.waker();
                    let space: Wake = Arc::new(move || waker.wake());
                    self.reactor = Some((reactor, space.clone()));
                    space
                }
                Err(e) => {
                    let error = format!("cannot start the task IO thread: {e}");
                    return Err(completion(task, TaskOutcome::Failed { error }, 0));
                }
            },
        };
        let control = Arc::new(CommandControl::new());
        let output = self.wake.as_ref().map(|wake| {
            let buffers = [
                Arc::new(OutputBuffer::new(
                    wake.clone(),
                    space.clone(),
                    self.output_limit,
                )),
                Arc::new(OutputBuffer::new(wake.clone(), space, self.output_limit)),
            ];
            self.outputs.insert(task, buffers.clone());
            buffers
        });
        let job = command::CommandJob {
            task,
            spec: spec.clone(),
            started: now,
            control: control.clone(),
            die_with_worker: self.die_with_worker,
            #[cfg(test)]
            without_pidfd: self.without_pidfds,
            sentinel: self.sentinel.clone(),
            output,
        };
        Ok((job, control))
    }

    /// Stops an attempt on the master's request. A sleep ends at once; a spin or command reports
    /// `Cancelled` through the channel once it has stopped. Unknown attempts are ignored: they
    /// finished already, and their completion is on its way.
    pub fn cancel(&mut self, now: Instant, task: TaskRef, done: &mut Vec<Completion>) {
        let Some(entry) = self.running.get(&task) else {
            debug!(
                "cancel for task {} attempt {}, which is not running",
                task.task, task.attempt
            );
            return;
        };
        if entry.held.is_some() {
            if self.withdraw(&[task]).is_empty() {
                // Started meanwhile: stopped below as any running command is.
                return self.cancel(now, task, done);
            }
            debug!(
                "task {} attempt {} cancelled on standby",
                task.task, task.attempt
            );
            done.push(completion(task, TaskOutcome::Cancelled, 0));
            return;
        }
        debug!("task {} attempt {} cancelled", task.task, task.attempt);
        let id = entry.id;
        match &entry.kind {
            Running::Sleep => {
                let run_ms = millis_since(entry.started, now);
                self.running.remove(&task);
                done.push(completion(task, TaskOutcome::Cancelled, run_ms));
            }
            Running::Spin { cancel } => cancel.store(true, Ordering::Relaxed),
            Running::Command { control } => {
                if control.stop(StopReason::Cancelled) {
                    self.schedule_kill(now, task, id);
                }
            }
        }
    }

    /// Cancels every running attempt (the worker is stopping).
    pub fn cancel_all(&mut self, now: Instant, done: &mut Vec<Completion>) {
        let tasks: Vec<TaskRef> = self.running.keys().copied().collect();
        for task in tasks {
            self.cancel(now, task, done);
        }
    }

    /// SIGKILLs every command's process group and tells every spin to stop, without grace.
    pub fn kill_all(&mut self) {
        for entry in self.running.values() {
            match &entry.kind {
                Running::Sleep => {}
                Running::Spin { cancel } => cancel.store(true, Ordering::Relaxed),
                Running::Command { control } => {
                    control.stop(StopReason::Cancelled);
                    control.kill();
                }
            }
        }
    }

    /// A completion sent by a task thread: forgets the attempt. Returns false if the attempt was
    /// not running (a bug somewhere; the caller should not report it).
    pub fn handle_finished(&mut self, completion: &Completion) -> bool {
        let task = completion.task_ref();
        // A command started from standby reports its start before its end (see `reactor`).
        self.sync_standby();
        match self.running.remove(&task) {
            Some(entry) => {
                if entry.held.is_some() {
                    self.standing_by -= 1;
                }
                if let Running::Spin { .. } = entry.kind {
                    self.spins.job_done();
                }
                debug!(
                    "task {} attempt {} finished in {} ms: {:?}",
                    task.task, task.attempt, completion.run_ms, completion.outcome
                );
                true
            }
            None => {
                warn!(
                    "completion for task {} attempt {}, which was not running",
                    task.task, task.attempt
                );
                false
            }
        }
    }

    /// Takes what running commands printed, at most `budget` bytes in all (in chunks of at most
    /// [`OUTPUT_CHUNK_BYTES`]), starting after the command served last. Returns whether some was
    /// left behind. Finished commands are skipped: their rest goes with their completion
    /// ([`Executor::finish_output`]).
    pub fn take_output(&mut self, mut budget: usize, out: &mut Vec<OutputChunk>) -> bool {
        let mut left = false;
        let after = match self.output_cursor {
            Some(c) => (Bound::Excluded(c), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let before = match self.output_cursor {
            Some(c) => (Bound::Unbounded, Bound::Included(c)),
            None => (
                Bound::Unbounded,
                Bound::Excluded(TaskRef {
                    task: protocol::TaskId(0),
                    attempt: protocol::Attempt(0),
                    incarnation: protocol::Incarnation(0),
                }),
            ),
        };
        let order = self.outputs.range(after).chain(self.outputs.range(before));
        for (&task, buffers) in order {
            if !self.running.contains_key(&task) {
                continue;
            }
            if budget == 0 {
                left = true;
                break;
            }
            for (stream, buffer) in STREAMS.into_iter().zip(buffers) {
                left |= buffer.take(budget.min(OUTPUT_CHUNK_BYTES), &mut self.pieces);
                for (offset, bytes) in self.pieces.drain(..) {
                    budget = budget.saturating_sub(bytes.len());
                    out.push(OutputChunk {
                        task,
                        stream,
                        offset,
                        bytes,
                    });
                }
            }
            self.output_cursor = Some(task);
        }
        left
    }

    /// Everything left of a finished command's output, to go before its completion; its
    /// buffers are then given up.
    pub fn finish_output(&mut self, task: TaskRef, out: &mut Vec<OutputChunk>) {
        let Some(buffers) = self.outputs.remove(&task) else {
            return;
        };
        for (stream, buffer) in STREAMS.into_iter().zip(&buffers) {
            // Bounded: the buffer holds at most OUTPUT_BUFFER_BYTES and its reader is done (or
            // gave up on the pipe), and each pass takes a chunk.
            while buffer.take(OUTPUT_CHUNK_BYTES, &mut self.pieces) {}
            // Past the limit, an empty chunk where the stream ended tells the master how much
            // it did not get.
            let end = buffer.end_past_limit().map(|end| (end, Vec::new()));
            for (offset, bytes) in self.pieces.drain(..).chain(end) {
                out.push(OutputChunk {
                    task,
                    stream,
                    offset,
                    bytes,
                });
            }
            buffer.abandon();
        }
    }

    /// Gives up a command's output: nobody will be told of it.
    pub fn drop_output(&mut self, task: TaskRef) {
        if let Some(buffers) = self.outputs.remove(&task) {
            buffers.iter().for_each(|b| b.abandon());
        }
    }

    /// Gives up every command's output (the worker stops).
    pub fn drop_all_output(&mut self) {
        for buffers in std::mem::take(&mut self.outputs).values() {
            buffers.iter().for_each(|b| b.abandon());
        }
    }

    /// Fires every timer due at `now`. A call with nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Instant, done: &mut Vec<Completion>) {
        while let Some(timer) = self.timers.peek() {
            if timer.at > now {
                break;
            }
            let Some(timer) = self.timers.pop() else {
                break;
            };
            let Some(entry) = self.running.get(&timer.task) else {
                continue;
            };
            if entry.id != timer.entry {
                continue;
            }
            match (timer.kind, &entry.kind) {
                (TimerKind::SleepEnd { timed_out }, Running::Sleep) => {
                    let run_ms = millis_since(entry.started, now);
                    self.running.remove(&timer.task);
                    let ending = if timed_out {
                        Ending::TimedOut
                    } else {
                        Ending::Exited
                    };
                    done.push(completion(timer.task, ending.outcome(), run_ms));
                }
                (TimerKind::Timeout, Running::Command { control }) => {
                    debug!(
                        "task {} attempt {} timed out; terminating it",
                        timer.task.task, timer.task.attempt
                    );
                    if control.stop(StopReason::TimedOut) {
                        self.schedule_kill(now, timer.task, timer.entry);
                    }
                }
                (TimerKind::Kill, Running::Command { control }) => control.kill(),
                (kind, _) => debug_assert!(false, "timer {kind:?} on the wrong kind of task"),
            }
        }
    }

    /// When [`Executor::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.at)
    }

    /// Timers of attempts that ended early (a cancelled sleep, a command that finished before
    /// its timeout) stay in the heap until their deadline, which may be hours away. Rebuilding the
    /// heap once stale entries outnumber live ones keeps it O(running), amortised O(1) per start.
    fn drop_stale_timers(&mut self) {
        // Each attempt has at most two live timers (timeout and kill, or its sleep end).
        const SLACK: usize = 1024;
        if self.timers.len() <= 2 * self.running.len() + SLACK {
            return;
        }
        let running = &self.running;
        self.timers
            .retain(|t| running.get(&t.task).is_some_and(|e| e.id == t.entry));
    }

    fn schedule_kill(&mut self, now: Instant, task: TaskRef, entry: u64) {
        self.timers.push(Timer {
            at: now + self.kill_grace,
            task,
            entry,
            kind: TimerKind::Kill,
        });
    }

    /// The environment mark of a running command (see `tree`).
    #[cfg(test)]
    fn task_mark(&self, task: TaskRef) -> Option<String> {
        match &self.running.get(&task)?.kind {
            Running::Command { control } => Some(control.mark().value().to_owned()),
            _ => None,
        }
    }

    /// The process group of a running command, once its child exists.
    #[cfg(test)]
    fn pgid(&self, task: TaskRef) -> Option<libc::pid_t> {
        match &self.running.get(&task)?.kind {
            Running::Command { control } => control.pgid(),
            _ => None,
        }
    }
}

/// How long a synthetic task of `ms` runs under `timeout_ms`, and how it ends.
fn synthetic_run(ms: u64, timeout_ms: Option<u64>) -> (u64, Ending) {
    match timeout_ms {
        Some(timeout) if timeout < ms => (timeout, Ending::TimedOut),
        _ => (ms, Ending::Exited),
    }
}

fn completion(task: TaskRef, outcome: TaskOutcome, run_ms: u64) -> Completion {
    task.completion(outcome, run_ms)
}

fn millis_since(start: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(start).as_millis() as u64
}

#[cfg(test)]
mod tests;
