//! A command's whole process tree, including what left its process group.
//!
//! Signals to a command go to its process group, but a descendant that called `setsid` (or
//! `setpgid`) is in another group and escapes them. Every command is therefore spawned with its
//! own mark in the environment, `BALLAST_TASK=<worker pid>.<worker start ticks>.<n>` (unique per
//! spawn for this worker's life; inherited by every descendant that keeps its environment, and
//! still there after the leader died and they were reparented). Stopping a command signals its
//! group and every process carrying its mark, found in `/proc` by `crate::procfs`.
//!
//! Cost: the mark is one more variable in the spawn's environment (std then builds the `envp`
//! itself; the spawn stays `posix_spawn`). The `/proc` walk happens only when a command is
//! stopped (timeout, cancel), or when its output is still held open after its group was killed,
//! which only a process that left the group can do: never on the ordinary exit path. Not
//! covered: a descendant that dropped its environment too (`setsid env -i ...`), or whose
//! environment we may not read (setuid, another user); the sentinel has the same limits.

use crate::procfs;
use crate::sentinel::env_value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that names a command's process tree. A task may not set it (it
/// could take another command's processes down with its own).
pub const TASK_MARK_VAR: &str = "BALLAST_TASK";

/// Sweeps after the leader died: each one kills what the previous one's victims forked while
/// they were dying. Processes being SIGKILLed fork no more, so two rounds nearly always suffice.
const SWEEP_ROUNDS: usize = 4;

/// One command's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskMark(String);

impl TaskMark {
    /// A mark no other command of this worker life has.
    pub(super) fn new() -> TaskMark {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        static LIFE: OnceLock<String> = OnceLock::new();
        let life = LIFE.get_or_init(|| {
            let pid = std::process::id();
            let ticks = procfs::start_ticks(pid as libc::pid_t).unwrap_or(0);
            format!("{pid}.{ticks}")
        });
        TaskMark(format!("{life}.{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    pub(super) fn value(&self) -> &str {
        &self.0
    }

    /// SIGKILLs every process carrying this mark, again until a pass finds no new one (bounded
    /// by `SWEEP_ROUNDS`); returns how many were killed.
    pub(super) fn kill_all(&self) -> usize {
        let mut killed: Vec<libc::pid_t> = Vec::new();
        for _ in 0..SWEEP_ROUNDS {
            // A process just killed may not be a zombie yet: it is not signalled twice.
            let found = self.sweep(libc::SIGKILL, &killed);
            if found.is_empty() {
                break;
            }
            killed.extend(found);
        }
        killed.len()
    }

    fn sweep(&self, signal: libc::c_int, done: &[libc::pid_t]) -> Vec<libc::pid_t> {
        // SAFETY: plain syscall.
        let me = unsafe { libc::getpid() };
        procfs::kill_by_environment(&[me], signal, |pid, environ| {
            !done.contains(&pid) && env_value(environ, TASK_MARK_VAR) == Some(self.0.as_bytes())
        })
    }
}
