//! Child processes: spawning, output capture, and killing the whole process group, and (for a
//! stopped command, or one whose output something outside the group still holds) whatever left
//! the group, by the command's mark (see `tree`).
//!
//! Each command gets a supervisor thread that spawns the child (`posix_spawn`, through std) and
//! waits for it. The worker's sentinel (see `crate::sentinel`) is told of the child's group right
//! after the spawn and again before its leader is reaped, so that it can kill the group if the
//! worker dies, SIGKILL included. With `die_with_worker` the child also gets `PR_SET_PDEATHSIG`,
//! which takes it down even if the sentinel died too; the spawning thread must then outlive the
//! child, because the signal fires when the thread that forked exits, not the process. It is
//! opt-in because it needs a `pre_exec` hook, which makes std fork instead of `posix_spawn`:
//! measured here, that costs ~0.5 ms per command and cut a 5,000 × `true` batch from 1.19× to
//! 0.82-0.88× of `xargs -P2`. Graceful stops (SIGTERM, `--on-master-lost stop`, timeouts, cancel)
//! kill task groups either way.
//!
//! IMPORTANT: the child is its own process group leader, and its pid is the group id. Signalling
//! the group is only safe while that id cannot have been reused, that is, until the leader is
//! reaped. The supervisor therefore waits for the exit without reaping (`WNOWAIT`), then, holding
//! the control lock, kills whatever is left of the group and marks it reaped; it tells the
//! sentinel, and only then reaps it. The main loop signals the group only under the same lock and
//! only if it is not reaped.

use super::output::OutputBuffer;
use super::tree::{TaskMark, TASK_MARK_VAR};
use super::TAIL_BYTES;
use crate::sentinel::{Link, MARK_VAR};
use crate::tail::TailBuffer;
use log::{debug, warn};
use protocol::{Completion, TaskKind, TaskOutcome, TaskRef, TaskSpec};
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// After the child exits and its group is killed, how long its output pipes may stay open. Only a
/// process that left the group (setsid) can hold them longer; the task does not wait for it.
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Pipes still open this long after the group was killed: something that left the group holds
/// them, and the processes carrying the command's mark are killed (see `tree`). Far above the
/// time the readers need to take what a dead group left in the pipes.
const ESCAPE_CHECK: Duration = Duration::from_millis(50);

/// Stacks for the per-command threads: they hold a read buffer and little else, and a busy worker
/// may run hundreds of commands.
const SUPERVISOR_STACK_BYTES: usize = 256 << 10;
const READER_STACK_BYTES: usize = 192 << 10;
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a command is being stopped; the first reason given wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    TimedOut,
    Cancelled,
}

/// Shared by the main loop (which stops commands) and the supervisor (which owns the child).
#[derive(Debug)]
pub(super) struct CommandControl {
    state: Mutex<ControlState>,
    /// In the command's environment: finds its descendants that left the group.
    mark: TaskMark,
}

#[derive(Debug, Default)]
struct ControlState {
    /// The child's process group, once it is spawned.
    pgid: Option<libc::pid_t>,
    stop: Option<StopReason>,
    /// The grace is over: the group gets SIGKILL, even if it is spawned only now.
    killed: bool,
    /// The group leader has been reaped: its id may now belong to someone else.
    reaped: bool,
}

impl ControlState {
    fn signal_group(&self, signal: libc::c_int) {
        if let (Some(pgid), false) = (self.pgid, self.reaped) {
            // SAFETY: plain syscall. ESRCH (the group is already gone) is fine.
            unsafe { libc::killpg(pgid, signal) };
        }
    }
}

impl CommandControl {
    pub(super) fn new() -> Self {
        CommandControl {
            state: Mutex::default(),
            mark: TaskMark::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn mark(&self) -> &TaskMark {
        &self.mark
    }

    /// Records why the command must stop and sends SIGTERM to its group (now, or as soon as it is
    /// spawned). Returns false if it was already being stopped.
    pub(super) fn stop(&self, reason: StopReason) -> bool {
        let mut state = self.lock();
        if state.stop.is_some() {
            return false;
        }
        state.stop = Some(reason);
        state.signal_group(libc::SIGTERM);
        true
    }

    /// SIGKILLs the group if it is still there.
    pub(super) fn kill(&self) {
        let mut state = self.lock();
        state.killed = true;
        state.signal_group(libc::SIGKILL);
    }

    #[cfg(test)]
    pub(super) fn pgid(&self) -> Option<libc::pid_t> {
        self.lock().pgid
    }

    /// Records the new group; if a stop arrived while the child was being spawned, acts on it.
    fn spawned(&self, pgid: libc::pid_t) {
        let mut state = self.lock();
        state.pgid = Some(pgid);
        if state.killed {
            state.signal_group(libc::SIGKILL);
        } else if state.stop.is_some() {
            state.signal_group(libc::SIGTERM);
        }
    }

    /// Waits for the child to exit, kills what is left of its group, reaps it, and returns its
    /// status with the stop reason that applied when it died. `sentinel` forgets the group before
    /// its id is freed.
    fn reap(
        &self,
        child: &mut Child,
        sentinel: Option<&Link>,
    ) -> (io::Result<ExitStatus>, Option<StopReason>) {
        let pid = child.id() as libc::pid_t;
        if let Err(e) = wait_for_exit_without_reaping(pid) {
            // Not expected on any platform we build for. Fall back to a plain wait, which leaves
            // a moment between the reap and `reaped = true` where a stop could signal the id
            // after it was freed; reusing it needs the pid space to wrap within that moment. The
            // sentinel forgets the group first, so it can never signal a freed id; until the
            // child exits only its mark protects it.
            debug!("waitid(WNOWAIT) on {pid} failed ({e}); reaping directly");
            if let Some(sentinel) = sentinel {
                sentinel.task_reaped(pid);
            }
            let status = child.wait();
            let mut state = self.lock();
            state.reaped = true;
            return (status, state.stop);
        }
        let stop = {
            let mut state = self.lock();
            // The leader is a zombie, which keeps the group id ours. Whatever it left running
            // (background jobs, daemons) belongs to the task and goes with it; this also makes
            // sure nothing keeps the output pipes open.
            state.signal_group(libc::SIGKILL);
            state.reaped = true;
            state.stop
        };
        // Outside the lock: a slow sentinel or /proc walk may stall this thread, never the main
        // loop.
        if stop.is_some() {
            // A stopped command goes whole: what left its group (setsid) too. The leader is
            // dead, so the group's members, and nothing else, are left to carry its mark.
            let strays = self.mark.kill_all();
            if strays > 0 {
                debug!("pid {pid}: killed {strays} processes that left its process group");
            }
        }
        if let Some(sentinel) = sentinel {
            sentinel.task_reaped(pid);
        }
        // Returns at once: the child has exited.
        let status = child.wait();
        reap_orphaned_members(pid);
        (status, stop)
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything a supervisor thread needs.
pub(super) struct CommandJob {
    pub task: TaskRef,
    pub spec: Arc<TaskSpec>,
    pub started: Instant,
    pub control: Arc<CommandControl>,
    /// Also tie the child's life to the worker's with `PR_SET_PDEATHSIG` (costs a fork).
    pub die_with_worker: bool,
    /// Kills the command's group if the worker dies; `None` when there is none (unit tests).
    pub sentinel: Option<Arc<Link>>,
    /// Where stdout and stderr go on their way to the master, besides the tails; `None`: only
    /// the tails are kept (unit tests).
    pub output: Option<[Arc<OutputBuffer>; 2]>,
}

/// Starts the supervisor thread, which reports the attempt's completion on `events`.
pub(super) fn spawn_supervisor<E: From<Completion> + Send + 'static>(
    job: CommandJob,
    events: Sender<E>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("task-{}", job.task.task))
        .stack_size(SUPERVISOR_STACK_BYTES)
        .spawn(move || {
            let outcome = run(&job);
            let completion = job
                .task
                .completion(outcome, job.started.elapsed().as_millis() as u64);
            // A closed channel means the worker is exiting; nobody wants the result.
            let _ = events.send(E::from(completion));
        })?;
    Ok(())
}

fn run(job: &CommandJob) -> TaskOutcome {
    let TaskKind::Command { argv, env, cwd } = &job.spec.kind else {
        return failed("internal error: not a command".into());
    };
    let Some(program) = argv.first() else {
        return failed("command has an empty argv".into());
    };
    // Checked first because spawn's error for a bad cwd looks like a missing program.
    if let Some(dir) = cwd {
        if !Path::new(dir).is_dir() {
            return failed(format!(
                "working directory `{dir}` does not exist or is not a directory"
            ));
        }
    }
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        // IMPORTANT: a task may not set the sentinel's mark or its own: it would slip out of its
        // own worker's sweep (or its own stop), or into another's.
        .envs(
            env.iter()
                .filter(|(k, _)| k != MARK_VAR && k != TASK_MARK_VAR)
                .map(|(k, v)| (k, v)),
        )
        .env(TASK_MARK_VAR, job.control.mark.value())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    if job.die_with_worker {
        set_parent_death_signal(&mut command);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return failed(describe_spawn_error(program, &e)),
    };
    let pgid = child.id() as libc::pid_t;
    // IMPORTANT: first, to keep short the moment in which a SIGKILLed worker leaves a child the
    // sentinel does not know by its group (its mark covers that moment).
    if let Some(sentinel) = &job.sentinel {
        sentinel.task_started(pgid);
    }
    job.control.spawned(pgid);

    let stdout = Arc::new(Mutex::new(TailBuffer::new(TAIL_BYTES)));
    let stderr = Arc::new(Mutex::new(TailBuffer::new(TAIL_BYTES)));
    let (drained_tx, drained_rx) = mpsc::channel();
    let mut readers = 0;
    let [out_log, err_log] = match &job.output {
        Some([out, err]) => [Some(out.clone()), Some(err.clone())],
        None => [None, None],
    };
    if let Some(pipe) = child.stdout.take() {
        let sink = Sink {
            tail: stdout.clone(),
            log: out_log,
        };
        readers += spawn_reader(job.task, "out", pipe, sink, drained_tx.clone());
    }
    if let Some(pipe) = child.stderr.take() {
        let sink = Sink {
            tail: stderr.clone(),
            log: err_log,
        };
        readers += spawn_reader(job.task, "err", pipe, sink, drained_tx.clone());
    }
    drop(drained_tx);

    let (status, stop) = job.control.reap(&mut child, job.sentinel.as_deref());

    let drain_deadline = Instant::now() + OUTPUT_DRAIN_GRACE;
    // A stopped command's strays were killed at the reap already.
    let mut swept = stop.is_some();
    let mut drained = 0;
    while drained < readers {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        let wait = if swept { left } else { left.min(ESCAPE_CHECK) };
        match drained_rx.recv_timeout(wait) {
            Ok(()) => drained += 1,
            Err(_) if !swept => {
                // Only a process that left the group can hold the pipes now: it goes with the
                // task, as the rest of the group did.
                swept = true;
                let strays = job.control.mark.kill_all();
                debug!(
                    "task {}: output still open after the process group died; killed {strays} \
                     processes that left it",
                    job.task.task
                );
            }
            Err(_) => {
                debug!(
                    "task {}: output still open after the process group died; not waiting for it",
                    job.task.task
                );
                break;
            }
        }
    }
    let tail = |buf: &Mutex<TailBuffer>| {
        buf.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_string_lossy()
    };
    match (stop, status) {
        (Some(StopReason::Cancelled), _) => TaskOutcome::Cancelled,
        (Some(StopReason::TimedOut), _) => TaskOutcome::TimedOut {
            stdout_tail: tail(&stdout),
            stderr_tail: tail(&stderr),
        },
        (None, Ok(status)) => TaskOutcome::Exited {
            code: exit_code(status),
            stdout_tail: tail(&stdout),
            stderr_tail: tail(&stderr),
        },
        (None, Err(e)) => failed(format!("cannot wait for `{program}`: {e}")),
    }
}

/// A shell's view of an exit status: a death by signal N is 128 + N.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A run that could not start or be waited for. The message may echo a program name of up to
/// `MAX_COMMAND_BYTES`: it is cut to what the master keeps.
fn failed(mut error: String) -> TaskOutcome {
    protocol::limits::truncate_with_marker(&mut error, protocol::limits::MAX_ERROR_BYTES);
    TaskOutcome::Failed { error }
}

fn describe_spawn_error(program: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound if program.contains('/') => format!("no such program `{program}`"),
        io::ErrorKind::NotFound => format!("no such program `{program}` in PATH"),
        io::ErrorKind::PermissionDenied => format!("cannot run `{program}`: permission denied"),
        _ => format!("cannot start `{program}`: {e}"),
    }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {}

/// Blocks until `pid` has exited, leaving it a zombie so its pid (and group id) stay reserved.
fn wait_for_exit_without_reaping(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid output buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps the members of group `pgid` that are our children. They are only ours when the worker is
/// the reaper of orphans (PID 1 in a container); then nobody else would reap them and they would
/// stay zombies for the worker's life. Otherwise this returns at once (ECHILD).
///
/// The group id cannot be reused while any member, zombie or not, is left, so this only ever
/// waits for processes of this task; they were just sent SIGKILL, so it does not wait long.
fn reap_orphaned_members(pgid: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall; only children in group `pgid` are waited for.
        let rc = unsafe { libc::waitpid(-pgid, &mut status, 0) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Where a reader puts what it reads: the tail for the outcome, and the log's buffer.
struct Sink {
    tail: Arc<Mutex<TailBuffer>>,
    log: Option<Arc<OutputBuffer>>,
}

/// Copies `pipe` into the sink until end of file, then says so on `drained`. Returns how many
/// readers were started (0 or 1). The log's buffer may make it wait (see `output`): that is
/// what slows down a command that prints faster than its output reaches the master.
fn spawn_reader(
    task: TaskRef,
    stream: &str,
    mut pipe: impl Read + Send + 'static,
    sink: Sink,
    drained: Sender<()>,
) -> usize {
    let spawned = thread::Builder::new()
        .name(format!("task-{}-{stream}", task.task))
        .stack_size(READER_STACK_BYTES)
        .spawn(move || {
            let mut buf = [0u8; READ_CHUNK_BYTES];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        sink.tail
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .write(&buf[..n]);
                        if let Some(log) = &sink.log {
                            log.push(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = drained.send(());
        });
    match spawned {
        Ok(_) => 1,
        Err(e) => {
            // The pipe is dropped with the closure: the task's writes to it fail (SIGPIPE), which
            // beats hanging when the pipe fills up.
            warn!(
                "task {}: cannot start a reader for std{stream}: {e}",
                task.task
            );
            0
        }
    }
}
