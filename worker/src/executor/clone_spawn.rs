//! A spawn of our own for the common case (Linux, a program found by path): `clone(CLONE_VM |
//! CLONE_VFORK | CLONE_PIDFD)` on a stack kept from spawn to spawn, then `execve`.
//!
//! What it saves over std's `posix_spawn` (glibc), measured in W1 (`docs/PERFORMANCE.md`): glibc
//! maps a fresh stack for every child and unmaps it after, and the unmap of a multi-threaded
//! process costs a TLB-shootdown IPI, which a VM pays dearly; its child resets every one of the 64
//! signal dispositions (120 `rt_sigaction`), where only the few this process handles need it; std
//! copies the whole environment into a map per spawn; and the pidfd comes with the clone instead
//! of a `pidfd_open` after it.
//!
//! The child shares our memory until `execve` while the spawning thread waits (`CLONE_VFORK`), as
//! under `posix_spawn`; other threads run on. So the child calls only async-signal-safe
//! functions, allocates nothing, and touches only what the parent prepared. Every signal is
//! blocked in the spawning thread across the clone, so no handler can run in the child before it
//! has reset the handled ones to the default; it then unblocks everything, as std does for its
//! children, and so does SIGPIPE's disposition (std ignores SIGPIPE in the worker, children get
//! the default). Anything this path cannot do (a kernel without `CLONE_PIDFD`, a NUL in an
//! argument) is the caller's cue to use std's spawn.

use super::tree::TASK_MARK_VAR;
use crate::sentinel::MARK_VAR;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// The child's stack: it runs a few syscalls and `execve`.
const STACK_BYTES: usize = 64 << 10;

/// One command line to start.
pub(super) struct Request<'a> {
    /// Where the program is: a path with a `/`.
    pub program: &'a Path,
    pub argv: &'a [String],
    /// The task's variables, over the worker's own.
    pub env: &'a [(String, String)],
    pub mark: &'a str,
    pub cwd: Option<&'a str>,
    pub stdin: RawFd,
    pub die_with_worker: bool,
}

/// A child started: its own process group leader, not reaped.
pub(super) struct Child {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub stdout: File,
    pub stderr: File,
}

/// Why the fast path did not start the command.
pub(super) enum Refused {
    /// It cannot here; std's spawn should try (and report its own error if it fails too).
    Unsupported,
    /// The program could not be started: the error of its `execve` (or of the steps before).
    Failed(io::Error),
}

pub(super) struct CloneSpawner {
    stack: Vec<u128>,
    /// The worker's environment as `KEY=VALUE`, with each key's length; fixed once it runs.
    base_env: Vec<(usize, CString)>,
    /// Signals with a handler in this process: reset in the child before it unblocks signals.
    handled: Vec<c_int>,
    /// Set once the kernel refused `CLONE_PIDFD`: std's spawn from then on.
    unsupported: bool,
    /// The child's `envp` and `argv`, reused from spawn to spawn; they point into the strings of
    /// the spawn that filled them and are only read during it.
    envp: Vec<*const c_char>,
    argv: Vec<*const c_char>,
}

/// What the child reads; it lives in the parent's frame for the whole clone.
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// stdin, stdout, stderr.
    fds: [c_int; 3],
    handled: *const c_int,
    handled_len: usize,
    die_with_worker: bool,
    /// The errno of the step that failed, 0 if `execve` succeeded.
    errno: AtomicI32,
}

impl CloneSpawner {
    pub(super) fn new() -> Self {
        let base_env = std::env::vars_os()
            .filter_map(|(k, v)| {
                let key = k.len();
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                Some((key, CString::new(kv).ok()?))
            })
            .collect();
        CloneSpawner {
            stack: vec![0; STACK_BYTES / 16],
            base_env,
            handled: handled_signals(),
            unsupported: false,
            envp: Vec::new(),
            argv: Vec::new(),
        }
    }

    pub(super) fn spawn(&mut self, req: &Request) -> Result<Child, Refused> {
        if self.unsupported {
            return Err(Refused::Unsupported);
        }
        let cstr = |s: &[u8]| CString::new(s).map_err(|_| Refused::Unsupported);
        let path = cstr(req.program.as_os_str().as_bytes())?;
        let args = req
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = req.cwd.map(|d| cstr(d.as_bytes())).transpose()?;
        // The task's own variables, the last of a repeated one winning, as with std; never the
        // marks (see `command`). Keys in a set, since a task may carry thousands.
        let mut keys: HashSet<&str> = HashSet::new();
        let mut owned = Vec::with_capacity(req.env.len() + 1);
        for (k, v) in req.env.iter().rev() {
            if k != MARK_VAR && k != TASK_MARK_VAR && keys.insert(k) {
                owned.push(cstr(format!("{k}={v}").as_bytes())?);
            }
        }
        owned.reverse();
        owned.push(cstr(format!("{TASK_MARK_VAR}={}", req.mark).as_bytes())?);
        keys.insert(TASK_MARK_VAR);
        let overridden = |kv: &CString, key: usize| {
            std::str::from_utf8(&kv.as_bytes()[..key]).is_ok_and(|name| keys.contains(name))
        };
        let envp = &mut self.envp;
        envp.clear();
        envp.extend(
            self.base_env
                .iter()
                .filter(|(key, kv)| !overridden(kv, *key))
                .map(|(_, kv)| kv.as_ptr())
                .chain(owned.iter().map(|kv| kv.as_ptr())),
        );
        envp.push(std::ptr::null());
        let argv = &mut self.argv;
        argv.clear();
        argv.extend(args.iter().map(|a| a.as_ptr()));
        argv.push(std::ptr::null());

        let (out_r, out_w) = pipe().map_err(Refused::Failed)?;
        let (err_r, err_w) = pipe().map_err(Refused::Failed)?;
        let child_args = ChildArgs {
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds: [req.stdin, out_w.as_raw_fd(), err_w.as_raw_fd()],
            handled: self.handled.as_ptr(),
            handled_len: self.handled.len(),
            die_with_worker: req.die_with_worker,
            errno: AtomicI32::new(0),
        };
        let mut pidfd: c_int = -1;
        let pid = {
            let top = self.stack.as_mut_ptr_range().end as *mut c_void;
            // SAFETY: sigset_t is plain data; fill/set are plain calls on it.
            let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
            let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
            unsafe {
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            }
            // SAFETY: the child runs `child_main` on `stack` (ours, 16-byte aligned at its top,
            // unused by anything else while this thread waits for the child's execve or exit),
            // shares our memory and reads only `child_args` and what it points to, which live
            // until after this call returns.
            let pid = unsafe {
                libc::clone(
                    child_main,
                    top,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    &child_args as *const ChildArgs as *mut c_void,
                    &mut pidfd as *mut c_int,
                )
            };
            let clone_error = io::Error::last_os_error();
            // SAFETY: restores this thread's mask.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            if pid < 0 {
                if clone_error.raw_os_error() == Some(libc::EINVAL) {
                    // No CLONE_PIDFD (before Linux 5.2).
                    self.unsupported = true;
                    return Err(Refused::Unsupported);
                }
                return Err(Refused::Failed(clone_error));
            }
            pid
        };
        drop((out_w, err_w));
        // SAFETY: on success the kernel stored a fresh pidfd (close-on-exec) in `pidfd`.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let errno = child_args.errno.load(Ordering::Acquire);
        if errno != 0 {
            // It exited without running the program: reap it.
            // SAFETY: plain syscall on our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            return Err(Refused::Failed(io::Error::from_raw_os_error(errno)));
        }
        Ok(Child {
            pid,
            pidfd,
            stdout: File::from(out_r),
            stderr: File::from(err_r),
        })
    }
}

/// The child, between the clone and `execve`. Only async-signal-safe calls; returns only to
/// `_exit`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent waits for us; every
    // call below is an async-signal-safe syscall wrapper on memory the parent prepared.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |a: &ChildArgs| -> c_int {
            let errno = *libc::__errno_location();
            let errno = if errno == 0 { libc::EINVAL } else { errno };
            a.errno.store(errno, Ordering::Release);
            libc::_exit(127)
        };
        let handled = std::slice::from_raw_parts(a.handled, a.handled_len);
        for &signal in handled.iter().chain(&[libc::SIGPIPE]) {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(a);
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            let target = target as c_int;
            let ok = if fd == target {
                // Already in place: only close-on-exec to clear.
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                return fail(a);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            return fail(a);
        }
        if a.die_with_worker && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail(a);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(a)
    }
}

/// The signals with a handler in this process now (the worker installs its own before any
/// command is spawned).
fn handled_signals() -> Vec<c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&signal| {
            // SAFETY: a query only: no new action.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
            rc == 0 && old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN
        })
        .collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
