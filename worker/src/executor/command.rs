//! Child processes: spawning, and killing the whole process group, and (for a stopped command, or
//! one whose output something outside the group still holds) whatever left the group, by the
//! command's mark (see `tree`). Their output and their exit are watched by the executor's one IO
//! thread (see `reactor`), which calls the functions here.
//!
//! Commands are spawned by `clone_spawn` (`clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD)` and `execve`,
//! no `fork`, no stack mapped per spawn) when the program was found by path, and by std's spawn
//! otherwise (its `posix_spawn` path: no `pre_exec`), which then also says why a program cannot
//! be found. The worker's sentinel (see `crate::sentinel`) is told of the child's group right
//! after the spawn and again before its leader is reaped, so that it can kill the group if the
//! worker dies, SIGKILL included. With `die_with_worker` the child also gets `PR_SET_PDEATHSIG`,
//! which takes it down even if the sentinel died too; the spawning thread must then outlive the
//! child, because the signal fires when the thread that forked exits, not the process: the
//! worker's loop spawns on the main thread, which lives as long as the process, and the IO thread
//! spawns the commands on standby and lives until every command is reaped. The clone path sets it in
//! the child at no cost; std's path needs a `pre_exec` hook for it, which makes std fork (measured
//! here: ~0.5 ms per command, a 5,000 × `true` batch from 1.19× to 0.82-0.88× of `xargs -P2`).
//! Graceful stops (SIGTERM, `--on-master-lost stop`, timeouts, cancel) kill task groups either way.
//!
//! IMPORTANT: the child is its own process group leader, and its pid is the group id. Signalling
//! the group is only safe while that id cannot have been reused, that is, until the leader is
//! reaped. The IO thread therefore learns of the exit without reaping (a pidfd turning readable,
//! or `waitid(WNOWAIT)`), then, holding the control lock, kills whatever is left of the group and
//! marks it reaped ([`CommandControl::exited`]); it tells the sentinel, and only then reaps it. The
//! main loop signals the group only under the same lock and only if it is not reaped.

use super::clone_spawn::{self, CloneSpawner, Refused};
use super::output::OutputBuffer;
use super::program_path::ProgramPaths;
use super::tree::{TaskMark, TASK_MARK_VAR};
use crate::sentinel::{Link, MARK_VAR};
use log::debug;
use protocol::{TaskKind, TaskOutcome, TaskRef, TaskSpec};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// Why a command is being stopped; the first reason given wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    TimedOut,
    Cancelled,
}

/// Shared by the main loop (which stops commands) and the IO thread (which owns the child).
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

    /// The leader has exited and is not reaped yet (a zombie, which keeps the group id ours):
    /// kills whatever is left of its group, marks it reaped, and returns the stop reason that
    /// applied when it died. The caller then tells the sentinel and reaps the leader.
    pub(super) fn exited(&self) -> Option<StopReason> {
        let mut state = self.lock();
        // Whatever it left running (background jobs, daemons) belongs to the task and goes with
        // it; this also makes sure nothing in the group keeps the output pipes open.
        state.signal_group(libc::SIGKILL);
        state.reaped = true;
        state.stop
    }

    /// SIGKILLs every process carrying the command's mark (what left its group); returns how
    /// many. Walks `/proc`: only for stopped commands, or output held open after the group died.
    pub(super) fn kill_marked(&self) -> usize {
        self.mark.kill_all()
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the IO thread needs to run a command.
pub(super) struct CommandJob {
    pub task: TaskRef,
    pub spec: Arc<TaskSpec>,
    pub started: Instant,
    pub control: Arc<CommandControl>,
    /// Also tie the child's life to the worker's with `PR_SET_PDEATHSIG`.
    pub die_with_worker: bool,
    /// Watch the exit without a pidfd, as on kernels before 5.3 (tests of that path).
    #[cfg(test)]
    pub without_pidfd: bool,
    /// Kills the command's group if the worker dies; `None` when there is none (unit tests).
    pub sentinel: Option<Arc<Link>>,
    /// Where stdout and stderr go on their way to the master, besides the tails; `None`: only
    /// the tails are kept (unit tests).
    pub output: Option<[Arc<OutputBuffer>; 2]>,
}

/// A child just spawned: the IO thread watches its exit, reads its pipes and reaps it ([`wait`]).
pub(super) struct Spawned {
    pub pid: libc::pid_t,
    /// Readable once the child has exited; `None` if the kernel has no pidfds (before 5.3): then
    /// the IO thread polls with `waitid(WNOHANG | WNOWAIT)`.
    pub pidfd: Option<OwnedFd>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// Spawns the job's command (in its own process group, stdin from /dev/null, stdout and stderr
/// to pipes) and tells the sentinel and the control of its group. `Err`: the outcome of a
/// command that could not start.
pub(super) fn spawn(
    job: &CommandJob,
    paths: &mut ProgramPaths,
    spawner: &mut CloneSpawner,
) -> Result<Spawned, TaskOutcome> {
    let TaskKind::Command { argv, env, cwd } = &job.spec.kind else {
        return Err(failed("internal error: not a command".into()));
    };
    let Some(program) = argv.first() else {
        return Err(failed("command has an empty argv".into()));
    };
    // Checked first because spawn's error for a bad cwd looks like a missing program.
    if let Some(dir) = cwd {
        if !Path::new(dir).is_dir() {
            return Err(failed(format!(
                "working directory `{dir}` does not exist or is not a directory"
            )));
        }
    }
    let found = paths.resolve(program, env, Instant::now());
    let by_path = found
        .as_deref()
        .or_else(|| program.contains('/').then(|| Path::new(program)));
    #[cfg(test)]
    let by_path = by_path.filter(|_| !job.without_pidfd);
    if let (Some(path), Some(stdin)) = (by_path, dev_null_fd()) {
        let request = clone_spawn::Request {
            program: path,
            argv,
            env,
            mark: job.control.mark.value(),
            cwd: cwd.as_deref(),
            stdin,
            die_with_worker: job.die_with_worker,
        };
        match spawner.spawn(&request) {
            Ok(child) => {
                return Ok(spawned(
                    job,
                    child.pid,
                    Some(child.pidfd),
                    Some(child.stdout),
                    Some(child.stderr),
                ))
            }
            Err(Refused::Failed(e)) if found.is_some() && e.kind() == io::ErrorKind::NotFound => {
                // Gone since it was found: the search of std's spawn has the last word.
                paths.forget(program, env);
                return spawn_with_std(job, program, Path::new(program));
            }
            Err(Refused::Failed(e)) => return Err(failed(describe_spawn_error(program, &e))),
            Err(Refused::Unsupported) => {}
        }
    }
    spawn_with_std(job, program, found.as_deref().unwrap_or(Path::new(program)))
}

/// The spawn through std (`posix_spawn`, or `fork` with `die_with_worker`): for what the clone
/// path does not do.
fn spawn_with_std(job: &CommandJob, program: &str, path: &Path) -> Result<Spawned, TaskOutcome> {
    let mut child = command(job, path)
        .spawn()
        .map_err(|e| failed(describe_spawn_error(program, &e)))?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    #[cfg(test)]
    if job.without_pidfd {
        return Ok(spawned(job, pid, None, stdout, stderr));
    }
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) => {
            debug!("pidfd_open({pid}) failed ({e}); polling for its exit");
            None
        }
    };
    Ok(spawned(job, pid, pidfd, stdout, stderr))
}

/// Tells the sentinel and the control of a child just spawned.
fn spawned(
    job: &CommandJob,
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    stdout: Option<File>,
    stderr: Option<File>,
) -> Spawned {
    // IMPORTANT: first, to keep short the moment in which a SIGKILLed worker leaves a child the
    // sentinel does not know by its group (its mark covers that moment).
    if let Some(sentinel) = &job.sentinel {
        sentinel.task_started(pid);
    }
    job.control.spawned(pid);
    Spawned {
        pid,
        pidfd,
        stdout,
        stderr,
    }
}

/// Waits for our child `pid` (which has exited, so this returns at once) and reaps it.
pub(super) fn wait(pid: libc::pid_t) -> io::Result<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The command line of `job`'s command, run from `program` (its `argv[0]`, or where that was
/// found on `PATH`; the child sees `argv[0]` unchanged): in its own process group, stdin from
/// /dev/null, stdout and stderr to pipes.
fn command(job: &CommandJob, program: &Path) -> Command {
    let mut command = Command::new(program);
    let TaskKind::Command { argv, env, cwd } = &job.spec.kind else {
        return command;
    };
    if let Some(arg0) = argv.first() {
        command.arg0(arg0);
    }
    command
        .args(argv.iter().skip(1))
        // IMPORTANT: a task may not set the sentinel's mark or its own: it would slip out of its
        // own worker's sweep (or its own stop), or into another's.
        .envs(
            env.iter()
                .filter(|(k, _)| k != MARK_VAR && k != TASK_MARK_VAR)
                .map(|(k, v)| (k, v)),
        )
        .env(TASK_MARK_VAR, job.control.mark.value())
        .stdin(dev_null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    if job.die_with_worker {
        set_parent_death_signal(&mut command);
    }
    command
}

/// One `/dev/null` opened once (close-on-exec), which costs less than the path lookup of opening
/// it per spawn.
fn dev_null_file() -> Option<&'static File> {
    static DEV_NULL: OnceLock<Option<File>> = OnceLock::new();
    DEV_NULL
        .get_or_init(|| File::open("/dev/null").ok())
        .as_ref()
}

fn dev_null_fd() -> Option<RawFd> {
    dev_null_file().map(AsRawFd::as_raw_fd)
}

/// Stdin for a command spawned by std: a duplicate of [`dev_null_file`] (`Stdio::null`, still
/// the fallback).
fn dev_null() -> Stdio {
    dev_null_file()
        .and_then(|f| f.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// A pidfd for our own child `pid`, which is not reaped yet (so the pid is still it).
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscall; on success the returned descriptor is fresh and ours
        // (close-on-exec, as pidfds always are).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// The outcome of a command that exited with `status` after the stop `stop` (if any); `tails`
/// are its stdout and stderr tails.
pub(super) fn outcome(
    program: &str,
    status: io::Result<ExitStatus>,
    stop: Option<StopReason>,
    tails: [String; 2],
) -> TaskOutcome {
    let [stdout_tail, stderr_tail] = tails;
    match (stop, status) {
        (Some(StopReason::Cancelled), _) => TaskOutcome::Cancelled,
        (Some(StopReason::TimedOut), _) => TaskOutcome::TimedOut {
            stdout_tail,
            stderr_tail,
        },
        (None, Ok(status)) => TaskOutcome::Exited {
            code: exit_code(status),
            stdout_tail,
            stderr_tail,
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
pub(super) fn failed(mut error: String) -> TaskOutcome {
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

/// Whether `pid` has exited, leaving it a zombie so its pid (and group id) stay reserved: the
/// exit check for when there is no pidfd.
pub(super) fn has_exited(pid: libc::pid_t) -> io::Result<bool> {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid output buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if rc == 0 {
            // SAFETY: waitid filled `info` (si_pid stays 0 when nothing has exited).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps the members of group `pgid` that are our children, without waiting; returns whether
/// some are still alive (call again later). They are only ours when the worker is the reaper of
/// orphans (PID 1 in a container); then nobody else would reap them and they would stay zombies
/// for the worker's life. Otherwise this returns false at once (ECHILD).
///
/// The group id cannot be reused while any member, zombie or not, is left, so this only ever
/// reaps processes of this task; they were just sent SIGKILL, so they do not stay long.
pub(super) fn reap_orphaned_members(pgid: libc::pid_t) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall; only children in group `pgid` are waited for.
        let rc = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        match rc {
            0 => return true,
            rc if rc > 0 => {}
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}
