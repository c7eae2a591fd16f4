//! What the worker and its sentinel read from `/proc` (start times, environments) and how they
//! signal a process found there without hitting another that took the same pid meanwhile: the
//! sentinel sweeps a dead worker's commands by its mark, the executor a stopped task's
//! descendants that left its process group (`setsid`) by the task's mark. Linux only; elsewhere
//! nothing is found and only process groups are signalled.

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::{self, File};
    use std::io::{self, Read};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// When process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub fn start_ticks(pid: libc::pid_t) -> Option<u64> {
        stat_field(pid, 22)?.parse().ok()
    }

    /// Like [`start_ticks`], but `None` for a zombie: a dead process its parent has not reaped
    /// yet is not alive, whatever its start time says (field 3 is its state).
    pub fn live_start_ticks(pid: libc::pid_t) -> Option<u64> {
        match stat_field(pid, 3)?.as_str() {
            "Z" | "X" => None,
            _ => start_ticks(pid),
        }
    }

    /// How many threads this process has (`Threads:` in `/proc/self/status`).
    pub fn own_thread_count() -> Option<usize> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))?
            .trim()
            .parse()
            .ok()
    }

    /// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
    pub fn process_group(pid: libc::pid_t) -> Option<libc::pid_t> {
        stat_field(pid, 5)?.parse().ok()
    }

    /// Field `n` (counted from 1, as in proc(5)) of `/proc/<pid>/stat`, for `n` of 3 or more.
    fn stat_field(pid: libc::pid_t, n: usize) -> Option<String> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces and parentheses.
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(n - 3).map(str::to_owned)
    }

    /// Sends `signal` to every process (except those in `spare`) that `doomed(pid, environment)`
    /// condemns, and returns their pids. Processes whose environment cannot be read (another
    /// user's, non-dumpable ones) and zombies (their environment reads empty) are skipped. One
    /// pass: what a killed process forks while it is being killed needs another.
    pub fn kill_by_environment(
        spare: &[libc::pid_t],
        signal: libc::c_int,
        mut doomed: impl FnMut(libc::pid_t, &[u8]) -> bool,
    ) -> Vec<libc::pid_t> {
        let mut killed = Vec::new();
        let Ok(dir) = fs::read_dir("/proc") else {
            return killed;
        };
        // Reused for every process: environments are up to a few hundred KiB.
        let mut environ = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if spare.contains(&pid) {
                continue;
            }
            // IMPORTANT: the handle is taken before the environment is read, so the process that
            // is killed is the one that was read (or, if it exited in between, none).
            let handle = match Handle::open(pid) {
                Ok(handle) => handle,
                Err(_) => continue,
            };
            environ.clear();
            let read = File::open(format!("/proc/{pid}/environ"))
                .and_then(|mut f| f.read_to_end(&mut environ));
            if read.is_err() || !doomed(pid, &environ) {
                continue;
            }
            if handle.kill(signal).is_ok() {
                killed.push(pid);
            }
        }
        killed
    }

    /// A process to signal: a pidfd where the kernel has them (5.3+), else the bare pid, which
    /// leaves the usual moment in which the pid could be reused.
    enum Handle {
        PidFd(OwnedFd),
        Pid(libc::pid_t),
    }

    impl Handle {
        fn open(pid: libc::pid_t) -> io::Result<Handle> {
            // SAFETY: plain syscall; the result is a new descriptor we own, or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just returned to us and nothing else owns it.
                return Ok(Handle::PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSYS) => Ok(Handle::Pid(pid)),
                _ => Err(e),
            }
        }

        fn kill(&self, signal: libc::c_int) -> io::Result<()> {
            // SAFETY: plain syscalls; ESRCH (it exited) is reported as an error.
            let rc = unsafe {
                match self {
                    Handle::PidFd(fd) => libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    ) as libc::c_int,
                    Handle::Pid(pid) => libc::kill(*pid, signal),
                }
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn our_own_start_time_is_readable_and_stable() {
            let me = std::process::id() as libc::pid_t;
            let first = start_ticks(me).expect("/proc/self/stat");
            assert_eq!(start_ticks(me), Some(first));
        }

        #[test]
        fn our_process_group_is_the_one_getpgrp_gives() {
            let me = std::process::id() as libc::pid_t;
            // SAFETY: plain syscall.
            assert_eq!(process_group(me), Some(unsafe { libc::getpgrp() }));
        }

        #[test]
        fn a_missing_process_has_no_start_time() {
            // Above the largest pid_max Linux allows (2^22).
            assert_eq!(start_ticks(1 << 23), None);
        }
    }
}

#[cfg(target_os = "linux")]
pub use linux::{
    kill_by_environment, live_start_ticks, own_thread_count, process_group, start_ticks,
};

#[cfg(not(target_os = "linux"))]
pub fn start_ticks(_pid: libc::pid_t) -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn live_start_ticks(_pid: libc::pid_t) -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn own_thread_count() -> Option<usize> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn process_group(_pid: libc::pid_t) -> Option<libc::pid_t> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn kill_by_environment(
    _spare: &[libc::pid_t],
    _signal: libc::c_int,
    _doomed: impl FnMut(libc::pid_t, &[u8]) -> bool,
) -> Vec<libc::pid_t> {
    Vec::new()
}
