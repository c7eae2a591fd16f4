//! The sentinel: a small process forked from the worker at start that kills what the worker leaves
//! running when it dies, however it dies (SIGKILL and the OOM killer included).
//!
//! Commands stay the worker's children, spawned with `posix_spawn` (see `executor::command`); the
//! sentinel only keeps a list. Right after each spawn the worker writes the command's process
//! group to a pipe the sentinel reads, and it writes again just before reaping the group's leader,
//! while the leader is still a zombie and its id cannot be reused. The worker holds the only
//! write end (close-on-exec, so no command inherits it), so the sentinel reads end-of-file exactly
//! when the worker is gone. It then SIGKILLs every group it still knows, and every process that
//! carries this incarnation's mark in its environment (see `mark`), and exits.
//!
//! The guarantee, and where it ends:
//! - A command and everything in its process group die within ~20 ms of the worker, by
//!   default and without the fork that `--tasks-die-with-worker` costs. So does any descendant
//!   that left the group (`setsid`) but kept the environment; a command spawned in the instant
//!   between `posix_spawn` and its record is caught by its mark.
//! - Not covered: a process that left the group *and* dropped the mark (`setsid env -i ...`), or
//!   whose environment the sentinel may not read (another user's, a setuid program's).
//! - If the sentinel dies too (`pkill -9` of both, the OOM killer choosing both), nothing kills the
//!   commands at once; the next worker started with the same name kills the marked ones its dead
//!   predecessor left. `--tasks-die-with-worker` adds `PR_SET_PDEATHSIG` for that case.
//! - The sentinel runs in its own process group and ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT:
//!   a Ctrl-C or `kill` aimed at the worker (or its terminal's job) stops the worker, which then
//!   stops its tasks itself, and the sentinel follows it out.

mod groups;
mod mark;

use crate::procfs;
use groups::{Groups, Record};
use log::{debug, info, warn};
use mark::Mark;
pub use mark::{env_value, MARK_VAR};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The worker's end of the pipe, set once by [`start`].
static LINK: OnceLock<Arc<Link>> = OnceLock::new();

/// After each read, the sentinel waits this long before the next, so that records written
/// meanwhile arrive in one read: a busy worker writes two per command, and a wake-up per record
/// cost the sentinel ~20 µs of CPU per command. The worker's death is noticed at most this much
/// later; the pipe holds 13,000 records, far more than a worker spawns in this time.
const READ_COALESCE: Duration = Duration::from_millis(20);

/// Sweeps for marked processes after the worker is gone: one more after each that killed
/// something (a process may fork while it is being killed); bounded for a fork bomb.
const SWEEP_ROUNDS: usize = 8;

/// Name of the sentinel process (`ps -o comm`; at most 15 bytes). It does not contain "worker",
/// so `pkill worker` leaves it to clean up after the worker.
#[cfg(target_os = "linux")]
const PROCESS_NAME: &[u8] = b"task-sentinel\0";

/// Marks this process's future children with its incarnation and forks the sentinel. Call once,
/// first thing, while the process has a single thread: after `fork` the child runs ordinary code,
/// which is only safe if no other thread held a lock at that moment, and `set_var` is only safe
/// while no thread reads the environment.
pub fn start(worker_name: &str) -> io::Result<()> {
    // A second sentinel would see end-of-file at once and kill the first one's commands.
    if LINK.get().is_some() {
        return Ok(());
    }
    if procfs::own_thread_count().is_some_and(|threads| threads > 1) {
        return Err(io::Error::other(
            "the sentinel must be started before any thread",
        ));
    }
    let worker = std::process::id() as libc::pid_t;
    let mark = Mark {
        pid: worker,
        start_ticks: procfs::start_ticks(worker).unwrap_or(0),
        name: worker_name.to_owned(),
    };
    // Inherited by every command, through posix_spawn's default environment; no cost per spawn.
    std::env::set_var(MARK_VAR, mark.to_string());
    let (read, write) = cloexec_pipe()?;
    // SAFETY: the process has one thread (checked above), so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(write);
            serve(read, &mark)
        }
        sentinel => {
            drop(read);
            debug!("sentinel started as pid {sentinel}");
            // Cannot fail: one thread, and checked above.
            let _ = LINK.set(Arc::new(Link::new(write, Some(sentinel))));
            Ok(())
        }
    }
}

/// The link to this process's sentinel, if [`start`] ran.
pub fn link() -> Option<Arc<Link>> {
    LINK.get().cloned()
}

/// The worker's side: tells the sentinel which process groups to kill if the worker dies.
/// Called by the thread that spawns a command (the worker's loop, or the executor's IO thread for
/// one on standby) and by the IO thread before a reap (see `executor::reactor`); each record is one
/// `write` of 5 bytes, which a pipe never interleaves with another. A write blocks only if the
/// sentinel stopped reading with 64 KiB (13,000 records) unread, which it does only when it is
/// stuck itself; that stalls the writer and loses nothing.
#[derive(Debug)]
pub struct Link {
    pipe: File,
    /// The sentinel's pid, to reap it if it dies before us.
    sentinel: Option<libc::pid_t>,
    /// Set once a write failed: the sentinel is gone, and further records would fail too.
    lost: AtomicBool,
}

impl Link {
    pub(crate) fn new(pipe: File, sentinel: Option<libc::pid_t>) -> Self {
        Link {
            pipe,
            sentinel,
            lost: AtomicBool::new(false),
        }
    }

    /// `pgid` was just spawned as the leader of its own group.
    pub fn task_started(&self, pgid: libc::pid_t) {
        self.send(Record::Started(pgid));
    }

    /// The leader of `pgid` exited and is about to be reaped. IMPORTANT: call while it is still
    /// a zombie; after the reap its id may belong to someone else.
    pub fn task_reaped(&self, pgid: libc::pid_t) {
        self.send(Record::Reaped(pgid));
    }

    fn send(&self, record: Record) {
        if self.lost.load(Ordering::Relaxed) {
            return;
        }
        let bytes = record.encode();
        loop {
            match (&self.pipe).write(&bytes) {
                Ok(written) => {
                    debug_assert_eq!(written, bytes.len(), "a short write to a pipe");
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.on_lost(&e),
            }
        }
    }

    fn on_lost(&self, e: &io::Error) {
        if self.lost.swap(true, Ordering::Relaxed) {
            return;
        }
        warn!(
            "the sentinel is gone ({e}): if this worker is killed, its commands may outlive it \
             until a worker of the same name starts"
        );
        if let Some(pid) = self.sentinel {
            // Reap it rather than keep a zombie (the worker may be PID 1 in a container, where
            // nobody else would). EPIPE means its read end is closed, so it is exiting: wait for
            // that; otherwise only reap it if it is already dead.
            let flags = if e.raw_os_error() == Some(libc::EPIPE) {
                0
            } else {
                libc::WNOHANG
            };
            // SAFETY: plain syscall on our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), flags) };
        }
    }
}

fn cloexec_pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    for fd in fds {
        // IMPORTANT: a command holding the write end would keep the sentinel from ever seeing
        // the worker die. (One thread, so no spawn can slip in before this.)
        // SAFETY: plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((read, write))
}

/// The sentinel process: never returns into the worker's code.
fn serve(pipe: File, mark: &Mark) -> ! {
    let clean = panic::catch_unwind(AssertUnwindSafe(|| watch(pipe, mark))).is_ok();
    // SAFETY: ends this process at once, without running the worker's exit handlers a second
    // time.
    unsafe { libc::_exit(if clean { 0 } else { 1 }) }
}

fn watch(mut pipe: File, mark: &Mark) {
    detach();
    // SAFETY: plain syscall.
    let me = unsafe { libc::getpid() };
    let spare = [me, mark.pid];

    let left = procfs::kill_by_environment(&spare, libc::SIGKILL, |_, environ| {
        env_value(environ, MARK_VAR).is_some_and(|value| {
            // A zombie predecessor is dead: its commands are left over.
            mark.is_left_by_predecessor(value, |pid, start| {
                procfs::live_start_ticks(pid) == Some(start)
            })
        })
    });
    if !left.is_empty() {
        info!(
            "killed {} processes left by an earlier worker named {:?}",
            left.len(),
            mark.name
        );
    }

    let mut groups = Groups::default();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            // The worker is gone: it held the only write end.
            Ok(0) => break,
            Ok(n) => {
                groups.handle_bytes(&buf[..n]);
                std::thread::sleep(READ_COALESCE);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("sentinel: cannot read from the worker ({e}); acting as if it were gone");
                break;
            }
        }
    }
    if groups.garbled() > 0 {
        warn!("sentinel: {} garbled records", groups.garbled());
    }

    let mut killed_groups = BTreeSet::new();
    for pgid in groups.live() {
        // The worker died before reaping this leader, so it is alive or a zombie waiting for
        // init: its id is still this group's.
        // SAFETY: plain syscall.
        if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
            killed_groups.insert(pgid);
        }
    }
    let own = mark.to_string();
    let mut strays = BTreeSet::new();
    for _ in 0..SWEEP_ROUNDS {
        let found = procfs::kill_by_environment(&spare, libc::SIGKILL, |pid, environ| {
            env_value(environ, MARK_VAR) == Some(own.as_bytes())
                && !strays.contains(&pid)
                && !procfs::process_group(pid).is_some_and(|g| killed_groups.contains(&g))
        });
        if found.is_empty() {
            break;
        }
        strays.extend(found);
    }
    if !killed_groups.is_empty() || !strays.is_empty() {
        info!(
            "worker {} is gone: killed {} command process groups and {} other processes it started",
            mark.pid,
            killed_groups.len(),
            strays.len()
        );
    }
}

/// Out of the worker's way: its own process group (a signal to the worker's job does not reach
/// it), deaf to the signals that ask a process to stop (it stops when the worker does), and no
/// stdin or stdout (a caller reading the worker's stdout sees it close when the worker exits).
/// Stderr stays: it is the worker's log.
fn detach() {
    // SAFETY: plain syscalls on this process; failures leave it where it was, which still works.
    unsafe {
        libc::setpgid(0, 0);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            // Its log lines must not stop it when it is a background job of a terminal.
            libc::SIGTTOU,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_NAME, PROCESS_NAME.as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}
