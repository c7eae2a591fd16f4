//! The executor's one IO thread: it reads the pipes of every command and learns of their exits,
//! with `poll(2)` over a pidfd and two pipes per command and one waker. No thread per command: a
//! command costs three descriptors and a few hundred bytes while it runs.
//!
//! The session's loop starts a command itself with [`Reactor::submit`] and hands the child over
//! (a queue and a wake): the child runs while this thread wakes, instead of waiting for it (one
//! thread hop fewer before a command starts, W7). Commands on standby are started by this thread.
//! The price: the loop waits for each spawn until the child's `execve` has loaded the program,
//! about 0.1 ms from a local disk, longer from a slow file system (a hung one holds the loop, its
//! heartbeats with it, and the master then takes the worker for lost and runs its tasks again
//! elsewhere, as for any worker that stops answering).
//! It reports each completion on the executor's events channel, as the per-command threads did
//! before it. Stops (SIGTERM, SIGKILL) are sent by the loop itself, through each command's
//! `CommandControl`; this thread only sees their effect (the exit).
//!
//! A command ends in this order (see `command` for why): its pidfd turns readable (it exited and
//! is a zombie); under the control lock its group gets SIGKILL and is marked reaped; a stopped
//! command's marked strays are killed; the sentinel forgets the group; the leader is reaped. Its
//! completion is then sent once both pipes reached end of file, or, if something that left the
//! group holds them, once the marked processes were killed (`ESCAPE_CHECK`) and at the latest
//! after `OUTPUT_DRAIN_GRACE`: the pipes are then read on and their bytes dropped until they close,
//! as the reader threads did, so the stray never blocks on a full pipe and never gets SIGPIPE.
//!
//! IMPORTANT: nothing here may block for long: one stuck command would hold up every other's
//! output and completion. Pipes are non-blocking, a pipe whose output buffer is full is not polled
//! until the loop made room (see `output`), orphaned group members are reaped with `WNOHANG` and
//! retried, and the only slow calls are the `/proc` walks for stopped commands' strays (rare, and
//! a few ms) and the spawn itself.

use super::clone_spawn::CloneSpawner;
use super::command::{self, CommandJob, Spawned, StopReason};
use super::program_path::ProgramPaths;
use super::TAIL_BYTES;
use crate::tail::TailBuffer;
use log::{debug, warn};
use protocol::{Completion, TaskKind, TaskRef};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// After the child exits and its group is killed, how long its output pipes may stay open. Only a
/// process that left the group (setsid) can hold them longer; the task does not wait for it.
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Pipes still open this long after the group was killed: something that left the group holds
/// them, and the processes carrying the command's mark are killed (see `tree`). Far above the
/// time this thread needs to read what a dead group left in the pipes.
const ESCAPE_CHECK: Duration = Duration::from_millis(50);

/// How often exits are checked without pidfds (kernels before 5.3), and orphaned group members
/// retried.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// One read; a pipe holds 64 KiB by default.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The thread holds a read buffer (on the heap) and little else.
const STACK_BYTES: usize = 256 << 10;

/// The session's side of the IO thread.
pub(super) struct Reactor {
    shared: Arc<Shared>,
    /// The caller's own spawn (see `submit`); the thread has another for standby.
    paths: ProgramPaths,
    spawner: CloneSpawner,
}

/// A command the loop started (or failed to), for the thread to watch (or report).
enum Handed {
    Started(CommandJob, Spawned),
    Refused(CommandJob, protocol::TaskOutcome),
}

struct Shared {
    /// Commands handed over and not yet picked up by the thread. Bounded by the slots: the loop
    /// starts no more commands than it has slots.
    queue: Mutex<Vec<Handed>>,
    /// Commands to start the moment one of the running ones completes (see [`Reactor::stand_by`]).
    standby: Mutex<Standby>,
    waker: Waker,
    /// The executor is gone: the thread exits once its commands are reaped.
    closing: AtomicBool,
}

/// Commands held ready for the next free slot, and those this thread started from here that the
/// loop has not heard of yet.
#[derive(Default)]
struct Standby {
    jobs: VecDeque<CommandJob>,
    promoted: Vec<(TaskRef, Instant)>,
}

/// Wakes the IO thread out of `poll`: one byte on a socket pair, drained by the thread.
#[derive(Clone)]
pub(super) struct Waker {
    tx: Arc<UnixStream>,
}

impl Waker {
    pub(super) fn wake(&self) {
        // A full socket already holds a wake, so WouldBlock loses nothing; other errors mean the
        // thread is gone.
        let _ = (&*self.tx).write(&[1]);
    }
}

impl Reactor {
    /// Starts the IO thread; completions go to `events`.
    pub(super) fn start<E: From<Completion> + Send + 'static>(
        events: Sender<E>,
    ) -> io::Result<Reactor> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            standby: Mutex::default(),
            waker: Waker { tx: Arc::new(tx) },
            closing: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("task-io".into())
            .stack_size(STACK_BYTES)
            .spawn(move || Thread::new(thread_shared, rx, events).run())?;
        Ok(Reactor {
            shared,
            paths: ProgramPaths::new(std::env::var_os("PATH").unwrap_or_default()),
            spawner: CloneSpawner::new(),
        })
    }

    /// Wakes the thread, from any thread (the output buffers' `space`).
    pub(super) fn waker(&self) -> Waker {
        self.shared.waker.clone()
    }

    /// Spawns a command on the caller's thread and hands it to the thread, which watches it and
    /// reports its completion (a command that could not start, too). With
    /// `--tasks-die-with-worker` the child dies with the caller's thread: the session's, which
    /// lives as long as the worker.
    pub(super) fn submit(&mut self, job: CommandJob) {
        let handed = match command::spawn(&job, &mut self.paths, &mut self.spawner) {
            Ok(spawned) => Handed::Started(job, spawned),
            Err(outcome) => Handed::Refused(job, outcome),
        };
        let first = {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.push(handed);
            queue.len() == 1
        };
        // Only the first of a batch needs to wake the thread: it takes the whole queue.
        if first {
            self.shared.waker.wake();
        }
    }
}

impl Reactor {
    /// Holds a command to be started by this thread as soon as any running command completes,
    /// before that completion is reported: a slot freed on this thread is refilled without the
    /// two thread hops through the loop. The loop learns of the start from
    /// [`Reactor::take_promoted`].
    pub(super) fn stand_by(&self, job: CommandJob) {
        self.standby().jobs.push_back(job);
    }

    /// Moves the commands this thread started from standby into `out`, with when they started.
    pub(super) fn take_promoted(&self, out: &mut Vec<(TaskRef, Instant)>) {
        out.append(&mut self.standby().promoted);
    }

    /// Starts the first command on standby now (a slot is free and no completion of ours will
    /// start it); `None` if there is none left, which means this thread has just started it.
    pub(super) fn promote(&mut self) -> Option<TaskRef> {
        let mut job = self.standby().jobs.pop_front()?;
        // Its run starts now, not when it went on standby (as on the thread's own promotion).
        job.started = Instant::now();
        let task = job.task;
        self.submit(job);
        Some(task)
    }

    /// Takes back the standby commands of `tasks` that have not started; returns them.
    pub(super) fn withdraw(&self, tasks: &[TaskRef]) -> Vec<CommandJob> {
        let mut standby = self.standby();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < standby.jobs.len() {
            if tasks.contains(&standby.jobs[i].task) {
                taken.extend(standby.jobs.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }

    fn standby(&self) -> MutexGuard<'_, Standby> {
        self.shared
            .standby
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.waker.wake();
    }
}

/// One command, from its spawn to its completion.
struct Watched {
    job: CommandJob,
    spawned: Spawned,
    /// stdout, stderr: open until end of file (or given up on).
    pipes: [Option<Pipe>; 2],
    tails: [TailBuffer; 2],
    exit: Option<Exit>,
}

struct Pipe {
    file: Box<dyn ReadFd>,
}

trait ReadFd: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ReadFd for T {}

/// What is known once the leader exited and was reaped.
struct Exit {
    status: io::Result<ExitStatus>,
    stop: Option<StopReason>,
    /// The marked processes were killed (or need not be: a stopped command's were, at the reap).
    swept: bool,
    /// When the strays are looked for if the pipes are still open.
    escape_at: Instant,
    /// When the pipes are given up on.
    give_up_at: Instant,
}

/// What a `pollfd` entry stands for.
#[derive(Clone, Copy)]
enum Slot {
    Waker,
    Exit(usize),
    Pipe(usize, usize),
    Detached(usize),
}

struct Thread<E> {
    shared: Arc<Shared>,
    wake_rx: UnixStream,
    events: Sender<E>,
    commands: Vec<Watched>,
    /// Pipes of finished commands still held open by a stray: read and dropped until they close.
    /// One per stray that left the group and the mark both, which nothing else bounds either.
    detached: Vec<Pipe>,
    /// Groups whose members are our children (we are PID 1) and were not all reaped yet.
    orphans: Vec<libc::pid_t>,
    /// Reused every turn.
    fds: Vec<libc::pollfd>,
    slots: Vec<Slot>,
    incoming: Vec<Handed>,
    buf: Vec<u8>,
    /// Programs found on `PATH`, so a spawn does not search it again.
    paths: ProgramPaths,
    spawner: CloneSpawner,
}

impl<E: From<Completion> + Send + 'static> Thread<E> {
    fn new(shared: Arc<Shared>, wake_rx: UnixStream, events: Sender<E>) -> Self {
        Thread {
            shared,
            wake_rx,
            events,
            commands: Vec::new(),
            detached: Vec::new(),
            orphans: Vec::new(),
            fds: Vec::new(),
            slots: Vec::new(),
            incoming: Vec::new(),
            buf: vec![0; READ_CHUNK_BYTES],
            // The worker's environment is fixed once it runs (the token is removed at start).
            paths: ProgramPaths::new(std::env::var_os("PATH").unwrap_or_default()),
            spawner: CloneSpawner::new(),
        }
    }

    fn run(mut self) {
        loop {
            self.take_submitted();
            if self.shared.closing.load(Ordering::Acquire)
                && self.commands.is_empty()
                && self.queue_is_empty()
            {
                // IMPORTANT: only now, with every child reaped: with `--tasks-die-with-worker`
                // a child dies when the thread that spawned it exits.
                return;
            }
            self.poll_once();
        }
    }

    /// Nothing handed over since `take_submitted`: a child the loop started just before it
    /// dropped the reactor is still watched and reaped.
    fn queue_is_empty(&self) -> bool {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Watches what the loop started.
    fn take_submitted(&mut self) {
        // The waker is drained when `poll` finds it readable, not here: a wake for a job taken
        // below at worst ends the next poll at once, which costs less than a read every turn.
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *queue, &mut self.incoming);
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        for handed in incoming.drain(..) {
            match handed {
                Handed::Started(job, spawned) => self.watch(job, spawned),
                Handed::Refused(job, outcome) => self.report(&job, outcome),
            }
        }
        self.incoming = incoming;
    }

    fn spawn(&mut self, job: CommandJob) {
        match command::spawn(&job, &mut self.paths, &mut self.spawner) {
            Ok(spawned) => self.watch(job, spawned),
            Err(outcome) => self.report(&job, outcome),
        }
    }

    fn watch(&mut self, job: CommandJob, mut spawned: Spawned) {
        let pipes = [
            spawned.stdout.take().and_then(|p| pipe(Box::new(p))),
            spawned.stderr.take().and_then(|p| pipe(Box::new(p))),
        ];
        self.commands.push(Watched {
            job,
            spawned,
            pipes,
            tails: [TailBuffer::new(TAIL_BYTES), TailBuffer::new(TAIL_BYTES)],
            exit: None,
        });
    }

    /// A command completed, so its slot is free: starts the first one on standby, if any.
    fn promote_standby(&mut self) {
        if self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        let job = {
            let mut standby = self
                .shared
                .standby
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(mut job) = standby.jobs.pop_front() else {
                return;
            };
            job.started = Instant::now();
            standby.promoted.push((job.task, job.started));
            job
        };
        self.spawn(job);
    }

    fn report(&self, job: &CommandJob, outcome: protocol::TaskOutcome) {
        let completion = job
            .task
            .completion(outcome, job.started.elapsed().as_millis() as u64);
        // A closed channel means the worker is exiting; nobody wants the result.
        let _ = self.events.send(E::from(completion));
    }

    /// One `poll` and everything it found, then the deadlines due.
    fn poll_once(&mut self) {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut soonest = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        self.fds.clear();
        self.slots.clear();
        self.fds.push(pollfd(self.wake_rx.as_raw_fd()));
        self.slots.push(Slot::Waker);
        for (i, c) in self.commands.iter().enumerate() {
            match (&c.exit, &c.spawned.pidfd) {
                (None, Some(fd)) => {
                    self.fds.push(pollfd(fd.as_raw_fd()));
                    self.slots.push(Slot::Exit(i));
                }
                (None, None) => soonest(now + EXIT_POLL),
                (Some(exit), _) => {
                    soonest(exit.give_up_at);
                    if !exit.swept {
                        soonest(exit.escape_at);
                    }
                }
            }
            for (s, pipe) in c.pipes.iter().enumerate() {
                let Some(pipe) = pipe else { continue };
                // A full output buffer: not polled until the loop made room (it wakes us).
                let room = match &c.job.output {
                    Some(buffers) => buffers[s].room(READ_CHUNK_BYTES),
                    None => READ_CHUNK_BYTES,
                };
                if room > 0 {
                    self.fds.push(pollfd(pipe.file.as_raw_fd()));
                    self.slots.push(Slot::Pipe(i, s));
                }
            }
        }
        for (i, pipe) in self.detached.iter().enumerate() {
            self.fds.push(pollfd(pipe.file.as_raw_fd()));
            self.slots.push(Slot::Detached(i));
        }
        if !self.orphans.is_empty() {
            soonest(now + EXIT_POLL);
        }
        let timeout_ms = match deadline {
            // Rounded up, so that a deadline is never polled for early in a busy loop.
            Some(at) => at
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as libc::c_int,
            None => -1,
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds, each naming a descriptor we own.
        let n = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // Not expected (EINVAL past RLIMIT_NOFILE entries, ENOMEM): do not spin.
                warn!("task IO: poll failed: {e}");
                thread::sleep(EXIT_POLL);
            }
            return;
        }
        let mut dead_detached = Vec::new();
        for k in 0..self.fds.len() {
            if self.fds[k].revents == 0 {
                continue;
            }
            match self.slots[k] {
                Slot::Waker => self.drain_waker(),
                Slot::Exit(i) => {
                    // A pidfd is readable exactly when its process exited; anything else
                    // (POLLNVAL, POLLERR) is checked, since reaping a live child would block.
                    let exited = self.fds[k].revents & libc::POLLIN != 0
                        || !matches!(command::has_exited(self.commands[i].spawned.pid), Ok(false));
                    if exited {
                        self.on_exit(i);
                    }
                }
                Slot::Pipe(i, s) => self.read_pipe(i, s),
                Slot::Detached(i) => {
                    if !drain(&mut *self.detached[i].file, &mut self.buf) {
                        dead_detached.push(i);
                    }
                }
            }
        }
        for i in dead_detached.into_iter().rev() {
            self.detached.swap_remove(i);
        }
        // Exits without pidfds, and retries.
        for i in 0..self.commands.len() {
            let c = &self.commands[i];
            if c.exit.is_none() && c.spawned.pidfd.is_none() {
                match command::has_exited(c.spawned.pid) {
                    Ok(false) => {}
                    Ok(true) | Err(_) => self.on_exit(i),
                }
            }
        }
        self.orphans
            .retain(|&pgid| command::reap_orphaned_members(pgid));
        self.finish_commands(Instant::now());
    }

    fn drain_waker(&mut self) {
        let mut bytes = [0u8; 64];
        // A short read took everything there was: no second call to hear `WouldBlock`.
        while matches!((&self.wake_rx).read(&mut bytes), Ok(n) if n == bytes.len()) {}
    }

    /// The leader of command `i` exited (it is a zombie): the reap, in the order `command` says.
    fn on_exit(&mut self, i: usize) {
        let c = &mut self.commands[i];
        if c.exit.is_some() {
            return;
        }
        let pid = c.spawned.pid;
        let stop = c.job.control.exited();
        if stop.is_some() {
            // A stopped command goes whole: what left its group (setsid) too. The leader is
            // dead, so the group's members, and nothing else, are left to carry its mark.
            let strays = c.job.control.kill_marked();
            if strays > 0 {
                debug!("pid {pid}: killed {strays} processes that left its process group");
            }
        }
        if let Some(sentinel) = &c.job.sentinel {
            sentinel.task_reaped(pid);
        }
        // Returns at once: the child has exited.
        let status = command::wait(pid);
        c.spawned.pidfd = None;
        if command::reap_orphaned_members(pid) {
            self.orphans.push(pid);
        }
        let now = Instant::now();
        c.exit = Some(Exit {
            status,
            stop,
            swept: stop.is_some(),
            escape_at: now + ESCAPE_CHECK,
            give_up_at: now + OUTPUT_DRAIN_GRACE,
        });
    }

    /// Reads what there is of stream `s` of command `i`, at most what its output buffer has
    /// room for.
    fn read_pipe(&mut self, i: usize, s: usize) {
        let c = &mut self.commands[i];
        let Some(pipe) = &mut c.pipes[s] else { return };
        let room = match &c.job.output {
            Some(buffers) => buffers[s].room(READ_CHUNK_BYTES),
            None => READ_CHUNK_BYTES,
        };
        if room == 0 {
            return;
        }
        loop {
            match pipe.file.read(&mut self.buf[..room]) {
                Ok(0) => break,
                Ok(n) => {
                    let bytes = &self.buf[..n];
                    c.tails[s].write(bytes);
                    if let Some(buffers) = &c.job.output {
                        buffers[s].push(bytes);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        // End of file (or an error, which a pipe only gives when it is gone).
        c.pipes[s] = None;
    }

    /// Sends the completions of the commands that are over, and handles their deadlines.
    fn finish_commands(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.commands.len() {
            let c = &mut self.commands[i];
            let Some(exit) = &mut c.exit else {
                i += 1;
                continue;
            };
            let open = c.pipes.iter().any(Option::is_some);
            if open && !exit.swept && now >= exit.escape_at {
                // Only a process that left the group can hold the pipes now: it goes with the
                // task, as the rest of the group did.
                exit.swept = true;
                let strays = c.job.control.kill_marked();
                debug!(
                    "task {}: output still open after the process group died; killed {strays} \
                     processes that left it",
                    c.job.task.task
                );
            }
            if open && now < exit.give_up_at {
                i += 1;
                continue;
            }
            if open {
                debug!(
                    "task {}: output still open after the process group died; not waiting for it",
                    c.job.task.task
                );
            }
            let c = self.commands.swap_remove(i);
            self.detached.extend(c.pipes.into_iter().flatten());
            let Some(exit) = c.exit else { continue };
            let program = match &c.job.spec.kind {
                TaskKind::Command { argv, .. } => argv.first().map_or("", String::as_str),
                _ => "",
            };
            let [out, err] = &c.tails;
            let tails = [out.to_string_lossy(), err.to_string_lossy()];
            let outcome = command::outcome(program, exit.status, exit.stop, tails);
            // IMPORTANT: before the report, so that the loop, which learns of promotions when
            // it handles a completion, hears of this start before this completion.
            self.promote_standby();
            self.report(&c.job, outcome);
        }
    }
}

/// Makes a child's pipe non-blocking; `None` (the pipe dropped, the task's writes then fail) if
/// that fails, which beats blocking the IO thread.
fn pipe(file: Box<dyn ReadFd>) -> Option<Pipe> {
    let fd: RawFd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor we own.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        warn!(
            "cannot make a task's pipe non-blocking: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    Some(Pipe { file })
}

/// Reads and drops what a detached pipe holds; false once it is closed.
fn drain(file: &mut dyn ReadFd, buf: &mut [u8]) -> bool {
    loop {
        match file.read(buf) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
