//! What the real world does to the core, seeded so a run replays: message delay (which reorders
//! across connections but never within one, as TCP does), connections cut under a worker, and
//! master crashes with a restart from the journal.
//!
//! - `--delay D`: every message, either way, arrives after a delay drawn uniformly in `[0, D]`,
//!   but never before one sent earlier on the same connection in the same direction.
//! - `--drop-rate F`: every message on a worker's connection, either way, cuts the connection
//!   instead with probability `F`. Both ends see the disconnect at once and what was in flight is
//!   lost; the worker keeps running its tasks, buffers their results and reconnects with the real
//!   worker's backoff ([`Backoff`]). The client's connection is never cut.
//! - `--master-crashes N`: the master dies `N` times ([`CrashPlan`]) at the end of a loop turn,
//!   after that turn's frames to workers left and before its journal commit: what was not
//!   committed is lost, every connection closes (peers still get what was already sent, then the
//!   FIN), and the master comes back `--master-downtime` later from the committed records.

use super::workload::{unit, Workload};
use crate::core::policy::SplitMix64;

/// The faults of one run. All zero: the simulator of before, byte for byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Largest message delay, in microseconds.
    pub delay_us: u64,
    /// Probability that a message on a worker's connection cuts it.
    pub drop_rate: f64,
    pub master_crashes: u32,
    /// How long a crashed master stays down.
    pub downtime_us: u64,
    /// Test only: the first result a worker reports is also reported as another task's, so a
    /// test can check that the invariant checker sees a misattributed outcome.
    #[cfg(test)]
    pub misreport_once: bool,
}

impl Faults {
    /// Whether any fault is injected (then messages may go through the event queue).
    pub fn any(&self) -> bool {
        self.delay_us > 0 || self.drop_rate > 0.0 || self.master_crashes > 0
    }
}

/// The real worker's reconnect schedule (`worker/src/session.rs`, `worker/src/backoff.rs`):
/// nominal delay from 100 ms doubling to 5 s, each draw uniform in `[nominal / 2, nominal]`, back
/// to the start after a connection that lasted 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    nominal_us: u64,
}

const BACKOFF_BASE_US: u64 = 100_000;
const BACKOFF_CAP_US: u64 = 5_000_000;
pub const STABLE_CONNECTION_US: u64 = 10_000_000;

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            nominal_us: BACKOFF_BASE_US,
        }
    }
}

impl Backoff {
    /// How long to wait before the next attempt; advances the schedule.
    pub fn next_delay_us(&mut self, rng: &mut SplitMix64) -> u64 {
        let high = self.nominal_us;
        let low = high / 2;
        self.nominal_us = (self.nominal_us * 2).min(BACKOFF_CAP_US);
        low + rng.below((high - low + 1) as usize) as u64
    }

    pub fn reset(&mut self) {
        self.nominal_us = BACKOFF_BASE_US;
    }
}

/// Where in a turn a crash may land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// Right after a turn that sent workers tasks whose submission is not committed yet: the
    /// window in which a crash forgets tasks that workers run on.
    Window,
    /// After any turn with records waiting for their group commit (finals then run again).
    Uncommitted,
}

/// What a turn did, as far as choosing a crash point goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnFacts {
    /// Some `Assign` of this turn names a task whose submission is not committed.
    pub assigned_uncommitted: bool,
    /// Records wait for a commit.
    pub pending_records: bool,
}

/// A crash that waits for a turn of its kind this long, then takes a lesser one: a window
/// crash then settles for uncommitted records, and that for any turn.
const WINDOW_PATIENCE_US: u64 = 3_000_000;
const UNCOMMITTED_PATIENCE_US: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
struct PlannedCrash {
    due_us: u64,
    kind: CrashKind,
}

/// When the master crashes: crash `i` is a window crash for even `i` (due at a random
/// submission's time, so it lands in that submission's turn if slots are free, or in the turn
/// of the resubmission after an earlier crash), else an uncommitted one due at a uniform time in
/// `[0, horizon]`. Crashes happen in order of due time, one per turn, only while the master is up;
/// patience counts from the later of the due time and the last restart.
#[derive(Debug, Clone)]
pub struct CrashPlan {
    planned: Vec<PlannedCrash>,
    next: usize,
}

impl CrashPlan {
    pub fn new(n: u32, mut rng: SplitMix64, workload: &Workload, horizon_us: u64) -> Self {
        let mut planned: Vec<PlannedCrash> = (0..n)
            .map(|i| {
                if i % 2 == 0 && !workload.submissions.is_empty() {
                    let s = &workload.submissions[rng.below(workload.submissions.len())];
                    PlannedCrash {
                        // When the client sends it (see `World::run`).
                        due_us: s.at_us + 1_000,
                        kind: CrashKind::Window,
                    }
                } else {
                    PlannedCrash {
                        due_us: (unit(&mut rng) * horizon_us as f64) as u64,
                        kind: CrashKind::Uncommitted,
                    }
                }
            })
            .collect();
        planned.sort_by_key(|c| c.due_us);
        CrashPlan { planned, next: 0 }
    }

    /// Whether the master crashes at the end of this turn, at `now_us`, having been up since
    /// `up_since_us`. A `true` consumes the crash.
    pub fn fires(&mut self, now_us: u64, up_since_us: u64, turn: TurnFacts) -> bool {
        let Some(c) = self.planned.get(self.next) else {
            return false;
        };
        if now_us < c.due_us {
            return false;
        }
        let waited = now_us - c.due_us.max(up_since_us);
        let uncommitted_from = match c.kind {
            CrashKind::Window => WINDOW_PATIENCE_US,
            CrashKind::Uncommitted => 0,
        };
        let fire = (c.kind == CrashKind::Window && turn.assigned_uncommitted)
            || (waited >= uncommitted_from && turn.pending_records)
            || waited >= uncommitted_from + UNCOMMITTED_PATIENCE_US;
        if fire {
            self.next += 1;
        }
        fire
    }

    /// Whether a crash is still to come (the run waits for none: one that is not due before the
    /// work is done never happens).
    pub fn remaining(&self) -> usize {
        self.planned.len() - self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::workload::Submission;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut rng = SplitMix64::new(7);
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay_us(&mut rng)).collect();
        assert!((50_000..=100_000).contains(&delays[0]), "{delays:?}");
        assert!((100_000..=200_000).contains(&delays[1]), "{delays:?}");
        assert!(
            delays[9] >= 2_500_000 && delays[9] <= 5_000_000,
            "{delays:?}"
        );
        b.reset();
        assert!(b.next_delay_us(&mut rng) <= 100_000);
    }

    #[test]
    fn a_window_crash_waits_for_its_window_then_settles() {
        let workload = Workload {
            templates: Vec::new(),
            order: Vec::new(),
            submissions: vec![Submission {
                at_us: 0,
                specs: 0..0,
                count: 1,
            }],
        };
        let mut plan = CrashPlan::new(1, SplitMix64::new(1), &workload, 1_000_000);
        let quiet = TurnFacts::default();
        let pending = TurnFacts {
            pending_records: true,
            ..TurnFacts::default()
        };
        let window = TurnFacts {
            assigned_uncommitted: true,
            pending_records: true,
        };
        assert!(!plan.fires(500, 0, window), "not due yet");
        assert!(!plan.fires(2_000, 0, pending), "waits for a window");
        assert!(!plan.fires(2_000 + WINDOW_PATIENCE_US, 3_000_000, pending));
        assert!(plan.fires(2_000, 0, window));
        assert_eq!(plan.remaining(), 0);
        assert!(!plan.fires(2_000, 0, window), "each crash happens once");

        let mut plan = CrashPlan::new(1, SplitMix64::new(1), &workload, 1_000_000);
        let late = 1_000 + WINDOW_PATIENCE_US;
        assert!(!plan.fires(late, 0, quiet));
        assert!(
            plan.fires(late, 0, pending),
            "impatient: uncommitted records do"
        );
    }
}
