//! The group-commit rule, one copy for the shell and the simulator. Time is microseconds on the
//! caller's clock (monotonic in the shell, virtual in the simulator); no IO.

/// How long a record may wait for its commit when no reply depends on it. A crash loses at most
/// this much of finished work (those tasks run again); nothing a client was told is ever lost.
pub const COMMIT_WINDOW_US: u64 = 10_000;
/// Commit at once past this many pending records, to bound the open transaction.
pub const COMMIT_BATCH_MAX: usize = 1 << 16;

/// When the oldest record not yet committed was made.
#[derive(Debug, Default, Clone)]
pub struct GroupCommit {
    since_us: Option<u64>,
}

impl GroupCommit {
    /// At the end of a turn with `pending` records: whether to commit them now. `force`: a reply
    /// of this turn waits for the commit. Answering `true` forgets the wait, so commit at once.
    pub fn due(&mut self, now_us: u64, pending: usize, force: bool) -> bool {
        if pending == 0 {
            self.since_us = None;
            return false;
        }
        let since = *self.since_us.get_or_insert(now_us);
        let due = force || now_us >= since + COMMIT_WINDOW_US || pending >= COMMIT_BATCH_MAX;
        if due {
            self.since_us = None;
        }
        due
    }

    /// When the records waiting now must be committed at the latest.
    pub fn deadline_us(&self) -> Option<u64> {
        self.since_us.map(|since| since + COMMIT_WINDOW_US)
    }

    /// Records waiting were lost (a crash): nothing waits any more.
    pub fn reset(&mut self) {
        self.since_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_forces_the_commit_and_the_rest_waits_for_the_window() {
        let mut g = GroupCommit::default();
        assert!(!g.due(0, 0, true), "nothing to commit");
        assert!(g.due(5, 3, true));
        assert_eq!(g.deadline_us(), None);
        assert!(!g.due(100, 1, false));
        assert_eq!(g.deadline_us(), Some(100 + COMMIT_WINDOW_US));
        assert!(
            !g.due(5_000, 2, false),
            "the window runs from the oldest record"
        );
        assert!(g.due(100 + COMMIT_WINDOW_US, 2, false));
        assert!(!g.due(200, 1, false));
        assert!(
            g.due(201, COMMIT_BATCH_MAX, false),
            "a full batch does not wait"
        );
    }
}
