//! The mark every command inherits: an environment variable naming the worker incarnation that
//! started it, `BALLAST_WORKER_LIFE=<pid>:<start ticks>:<name>`. No IO.
//!
//! A process group says which commands a worker runs while it runs them; the mark still says it
//! after the worker is gone, for the processes the sentinel could not know of by group: a command
//! spawned in the instant before its group was recorded, a descendant that left its group, and
//! what an incarnation whose sentinel was killed too left behind. The pid and start time (in clock
//! ticks since boot, as in `/proc/<pid>/stat`) tell one incarnation from another, and from a later
//! process that got the same pid.

use std::fmt;

pub const MARK_VAR: &str = "BALLAST_WORKER_LIFE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub pid: libc::pid_t,
    pub start_ticks: u64,
    pub name: String,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name goes last: it may contain anything, `:` included.
        write!(f, "{}:{}:{}", self.pid, self.start_ticks, self.name)
    }
}

/// The parts of a mark read from another process, borrowed from its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignMark<'a> {
    pub pid: libc::pid_t,
    pub start_ticks: u64,
    pub name: &'a [u8],
}

impl<'a> ForeignMark<'a> {
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        let mut parts = value.splitn(3, |&b| b == b':');
        let pid = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let start_ticks = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let name = parts.next()?;
        Some(ForeignMark {
            pid,
            start_ticks,
            name,
        })
    }
}

impl Mark {
    /// Whether a process marked `value` was left by an earlier incarnation of this worker: same
    /// name, another incarnation, and that incarnation is not running (`alive(pid, start_ticks)`
    /// says whether a process with that pid and start time exists). A namesake that still runs
    /// (two workers misconfigured with one name) keeps its commands.
    pub fn is_left_by_predecessor(
        &self,
        value: &[u8],
        alive: impl FnOnce(libc::pid_t, u64) -> bool,
    ) -> bool {
        let Some(other) = ForeignMark::parse(value) else {
            return false;
        };
        other.name == self.name.as_bytes()
            && (other.pid, other.start_ticks) != (self.pid, self.start_ticks)
            && !alive(other.pid, other.start_ticks)
    }
}

/// The value of `key` in an environment block as `/proc/<pid>/environ` holds it (`KEY=value`
/// entries, each ended by a NUL).
pub fn env_value<'a>(environ: &'a [u8], key: &str) -> Option<&'a [u8]> {
    environ.split(|&b| b == 0).find_map(|entry| {
        entry
            .strip_prefix(key.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Mark {
        Mark {
            pid: 100,
            start_ticks: 5000,
            name: "w1".into(),
        }
    }

    #[test]
    fn a_mark_reads_back_with_a_colon_in_the_name() {
        let mark = Mark {
            pid: 42,
            start_ticks: 123_456,
            name: "gpu:0".into(),
        };
        let text = mark.to_string();
        assert_eq!(
            ForeignMark::parse(text.as_bytes()),
            Some(ForeignMark {
                pid: 42,
                start_ticks: 123_456,
                name: b"gpu:0",
            })
        );
    }

    #[test]
    fn garbage_is_no_mark() {
        for value in [&b""[..], b"12", b"12:x:w1", b"-:1:w1", b"1:2"] {
            assert_eq!(ForeignMark::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_dead_namesake_left_it() {
        assert!(me().is_left_by_predecessor(b"90:4000:w1", |_, _| false));
    }

    #[test]
    fn a_running_namesake_keeps_its_commands() {
        assert!(!me()
            .is_left_by_predecessor(b"90:4000:w1", |pid, start| { (pid, start) == (90, 4000) }));
    }

    #[test]
    fn an_earlier_process_with_the_same_pid_is_another_incarnation() {
        // Pid 100 ran a worker w1 before ours got the pid; its start time differs.
        assert!(
            me().is_left_by_predecessor(b"100:10:w1", |pid, start| { (pid, start) == (100, 5000) })
        );
    }

    #[test]
    fn our_own_commands_and_other_names_are_not_leftovers() {
        assert!(!me().is_left_by_predecessor(b"100:5000:w1", |_, _| false));
        assert!(!me().is_left_by_predecessor(b"90:4000:w2", |_, _| false));
        assert!(!me().is_left_by_predecessor(b"90:4000:w1x", |_, _| false));
        assert!(!me().is_left_by_predecessor(b"junk", |_, _| false));
    }

    #[test]
    fn env_value_finds_the_exact_key() {
        let environ = b"PATH=/bin\0BALLAST_WORKER_LIFE_X=no\0BALLAST_WORKER_LIFE=1:2:w\0";
        assert_eq!(env_value(environ, MARK_VAR), Some(&b"1:2:w"[..]));
        assert_eq!(env_value(b"PATH=/bin\0", MARK_VAR), None);
        assert_eq!(env_value(b"", MARK_VAR), None);
        // An entry cut off at the end of the block still counts.
        assert_eq!(env_value(b"A=1\0B=2", "B"), Some(&b"2"[..]));
    }
}
