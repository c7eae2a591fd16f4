//! Ground truth and the invariants checked against it.
//!
//! The simulator knows what the core cannot: which *logical* task each id names. Every
//! submission the client sends is an instance (a resubmission after a crash is a new one), and
//! its tasks get logical numbers `base .. base + count`. The core's `Persist(Submitted)` records
//! say which ids it gave them (`name`); a crash forgets the uncommitted ids (`forget_above`), so
//! a later submission may get the same ids for other logical tasks. Every worker run carries the
//! logical task its `Assign` named when the core sent it.
//!
//! Checked after every step (each violation is counted by [`Kind`], the first few described):
//! - an outcome the core takes for id X comes from a run of the logical task X names now
//!   (`credited`), and is one a run produced: the simulated client never cancels, so a task that
//!   ends `Cancelled` took the answer to the master's own `Cancel` of a duplicate run (`ended`);
//! - every accepted task ends exactly once: no second final while one stands (`ended`), none
//!   unfinished, and the ids the client was told still name its tasks at the end (`finish`);
//! - every `Send` and `Close` goes to a connection that is open in that master's incarnation and
//!   whose peer the message is for (checked by `world`, reported through `violation`).

use protocol::{TaskId, TaskState};

/// Descriptions kept for the report; the count goes on.
const MAX_EXAMPLES: usize = 10;

/// What was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A task took the outcome of a run of another logical task.
    Credited,
    /// A task ended `Cancelled` that no client cancelled.
    Uncancelled,
    /// A second final state while one stood.
    EndedTwice,
    /// An accepted task had not ended when the run did (without stalling).
    NeverEnded,
    /// Ids the client was told name other tasks (now, or at the end).
    Renamed,
    /// Output for a closed connection, another master's, or a peer it is not for.
    Connection,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Credited,
        Kind::Uncancelled,
        Kind::EndedTwice,
        Kind::NeverEnded,
        Kind::Renamed,
        Kind::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Credited => "credited",
            Kind::Uncancelled => "uncancelled",
            Kind::EndedTwice => "ended_twice",
            Kind::NeverEnded => "never_ended",
            Kind::Renamed => "renamed",
            Kind::Connection => "connection",
        }
    }
}
/// `LogicalTask::state` before the task ended.
const NO_STATE: u8 = u8::MAX;

/// One client submission as sent.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Which workload submission it carries.
    pub submission: usize,
    /// Its first logical task.
    pub base: u64,
    pub count: u64,
    /// When the workload first asked for it (kept across resubmissions).
    pub arrival_us: u64,
    /// The first id the client was told, once it was.
    pub acked: Option<TaskId>,
}

#[derive(Debug, Clone, Copy)]
struct LogicalTask {
    /// When its standing final was recorded.
    at_us: u64,
    /// Finals standing (recorded and not lost in a crash): 0 or 1, unless the core erred.
    ends: u8,
    /// `TaskState` index of the standing final, or `NO_STATE`.
    state: u8,
}

#[derive(Debug, Default)]
pub struct Truth {
    pub instances: Vec<Instance>,
    logical: Vec<LogicalTask>,
    /// The logical task each id of the current core names, by id - 1.
    naming: Vec<u64>,
    /// Logical tasks with a standing final.
    live_finals: u64,
    /// Per `Kind`, in `Kind::ALL` order.
    violations: [u64; Kind::ALL.len()],
    examples: Vec<String>,
}

/// Final states as a byte, in a fixed order.
const FINAL_STATES: [TaskState; 6] = [
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::TimedOut,
    TaskState::Cancelled,
    TaskState::WorkerLost,
    TaskState::DependencyFailed,
];

fn state_byte(s: TaskState) -> u8 {
    FINAL_STATES
        .iter()
        .position(|&f| f == s)
        .map_or(NO_STATE - 1, |i| i as u8)
}

/// A run's summary, from the standing finals of the tasks the last core knows.
#[derive(Debug, Default)]
pub struct Tally {
    pub finals: u64,
    pub succeeded: u64,
    pub worker_lost: u64,
    pub last_completion_us: u64,
    /// Per succeeded task: completion minus arrival, in seconds, unsorted.
    pub completion_s: Vec<f64>,
}

impl Truth {
    /// A new client submission of `count` tasks; returns its instance number.
    pub fn add_instance(&mut self, submission: usize, count: u64, arrival_us: u64) -> u32 {
        let base = self.logical.len() as u64;
        self.logical.resize(
            self.logical.len() + count as usize,
            LogicalTask {
                at_us: 0,
                ends: 0,
                state: NO_STATE,
            },
        );
        self.instances.push(Instance {
            submission,
            base,
            count,
            arrival_us,
            acked: None,
        });
        (self.instances.len() - 1) as u32
    }

    /// The core gave ids `first ..` to `logical`. Err: not the next ids.
    pub fn name(&mut self, first: TaskId, logical: std::ops::Range<u64>) -> Result<(), String> {
        let expected = self.naming.len() as u64 + 1;
        if first.0 != expected {
            return Err(format!(
                "ids out of order: got {first}, expected {expected}"
            ));
        }
        self.naming.extend(logical);
        Ok(())
    }

    /// A restarted core knows ids `1 ..= committed` only.
    pub fn forget_above(&mut self, committed: u64) {
        self.naming.truncate(committed as usize);
    }

    /// The logical task id `id` names now.
    pub fn named(&self, id: TaskId) -> Option<u64> {
        let i = (id.0 as usize).checked_sub(1)?;
        self.naming.get(i).copied()
    }

    /// Ids the current core has handed out.
    pub fn accepted(&self) -> u64 {
        self.naming.len() as u64
    }

    pub fn live_finals(&self) -> u64 {
        self.live_finals
    }

    /// The client was told `first ..` for `instance`: they must name its tasks.
    pub fn ack(&mut self, instance: u32, first: TaskId, count: u64) {
        let inst = &self.instances[instance as usize];
        let (base, expected) = (inst.base, inst.count);
        let named_right = count == expected
            && (0..count).all(|j| self.named(TaskId(first.0 + j)) == Some(base + j));
        if !named_right {
            self.violation(
                Kind::Renamed,
                format!(
                    "submission #{instance} was told ids {first}+{count}, which name other tasks"
                ),
            );
        }
        self.instances[instance as usize].acked = Some(first);
    }

    /// The core took the outcome of a run of `run` as the result of `id`.
    pub fn credited(&mut self, id: TaskId, run: u64, worker: &str) {
        let named = self.named(id);
        if named != Some(run) {
            let what = |l: Option<u64>| l.map_or("no task".to_string(), |l| self.describe(l));
            let msg = format!(
                "task {id} ({}) took the outcome of a run of {} on {worker}",
                what(named),
                what(Some(run))
            );
            self.violation(Kind::Credited, msg);
        }
    }

    /// The core recorded a final state for `id`.
    pub fn ended(&mut self, now_us: u64, id: TaskId, state: TaskState) -> Option<u64> {
        let Some(l) = self.named(id) else {
            let msg = format!("a final state for task {id}, which was never accepted");
            self.violation(Kind::EndedTwice, msg);
            return None;
        };
        let t = &mut self.logical[l as usize];
        t.ends = t.ends.saturating_add(1);
        if t.ends == 1 {
            t.at_us = now_us;
            t.state = state_byte(state);
            self.live_finals += 1;
        } else {
            let msg = format!(
                "task {id} ({}) ended a second time, as {state:?}",
                self.describe(l)
            );
            self.violation(Kind::EndedTwice, msg);
        }
        if state == TaskState::Cancelled {
            let msg = format!(
                "task {id} ({}) ended cancelled, though no client cancelled it",
                self.describe(l)
            );
            self.violation(Kind::Uncancelled, msg);
        }
        Some(l)
    }

    /// A crash lost the record of a final of `logical`: it will end again.
    pub fn unend(&mut self, logical: u64) {
        let t = &mut self.logical[logical as usize];
        if t.ends == 0 {
            return;
        }
        t.ends -= 1;
        if t.ends == 0 {
            t.state = NO_STATE;
            self.live_finals -= 1;
        }
    }

    pub fn violation(&mut self, kind: Kind, what: String) {
        self.add(kind, 1, what);
    }

    fn add(&mut self, kind: Kind, n: u64, what: String) {
        let i = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.violations[i] += n;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(format!("{}: {what}", kind.as_str()));
        }
    }

    /// Total violations, and the first few described.
    pub fn violations(&self) -> (u64, &[String]) {
        (self.violations.iter().sum(), &self.examples)
    }

    /// The nonzero counts per kind.
    pub fn by_kind(&self) -> Vec<(&'static str, u64)> {
        Kind::ALL
            .iter()
            .zip(self.violations)
            .filter(|&(_, n)| n > 0)
            .map(|(k, n)| (k.as_str(), n))
            .collect()
    }

    pub fn count(&self, kind: Kind) -> u64 {
        let i = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.violations[i]
    }

    /// "submission #3 task 5": instance and index within it.
    fn describe(&self, logical: u64) -> String {
        let i = self.instances.partition_point(|x| x.base <= logical) - 1;
        format!("submission #{i} task {}", logical - self.instances[i].base)
    }

    /// End-of-run checks and figures: every task the client was told of is still known under
    /// its ids, and, unless the run `stalled` (then the unfinished count as lost in the report,
    /// as tasks no worker may run do), every task the last core knows ended.
    pub fn finish(&mut self, stalled: bool) -> Tally {
        let mut tally = Tally::default();
        let mut never = 0u64;
        for &l in &self.naming {
            let t = self.logical[l as usize];
            if t.ends == 0 {
                never += 1;
                continue;
            }
            tally.finals += 1;
            tally.last_completion_us = tally.last_completion_us.max(t.at_us);
            match FINAL_STATES.get(t.state as usize) {
                Some(TaskState::Succeeded) => {
                    tally.succeeded += 1;
                    let i = self.instances.partition_point(|x| x.base <= l) - 1;
                    let arrival = self.instances[i].arrival_us;
                    tally
                        .completion_s
                        .push(t.at_us.saturating_sub(arrival) as f64 / 1e6);
                }
                Some(TaskState::WorkerLost) => tally.worker_lost += 1,
                _ => {}
            }
        }
        if never > 0 && !stalled {
            self.add(
                Kind::NeverEnded,
                never,
                format!("{never} accepted tasks never ended"),
            );
        }
        let mut lost = 0u64;
        for inst in &self.instances {
            let Some(first) = inst.acked else { continue };
            lost += (0..inst.count)
                .filter(|&j| self.named(TaskId(first.0 + j)) != Some(inst.base + j))
                .count() as u64;
        }
        if lost > 0 {
            self.add(
                Kind::Renamed,
                lost,
                format!("{lost} tasks the client was told of are no longer known under their ids"),
            );
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_submissions() -> Truth {
        let mut t = Truth::default();
        let a = t.add_instance(0, 2, 0);
        t.name(TaskId(1), 0..2).expect("ids");
        t.ack(a, TaskId(1), 2);
        t
    }

    #[test]
    fn an_outcome_of_another_task_is_a_violation() {
        let mut t = two_submissions();
        t.credited(TaskId(1), 0, "w");
        assert_eq!(t.violations().0, 0);
        t.credited(TaskId(2), 0, "w");
        let (n, examples) = t.violations();
        assert_eq!((n, t.count(Kind::Credited)), (1, 1));
        assert!(
            examples[0].contains("task 2 (submission #0 task 1)")
                && examples[0].contains("run of submission #0 task 0"),
            "{examples:?}"
        );
    }

    #[test]
    fn a_reused_id_credited_with_the_old_run_is_a_violation() {
        // Submission 1 got ids 3-4, a crash forgot them, and its resubmission got them again.
        let mut t = two_submissions();
        let lost = t.add_instance(1, 2, 10);
        t.name(TaskId(3), 2..4).expect("ids");
        t.forget_above(2);
        let again = t.add_instance(1, 2, 10);
        t.name(TaskId(3), 4..6).expect("ids");
        t.ack(again, TaskId(3), 2);
        assert_eq!(t.violations().0, 0);
        assert!(t.instances[lost as usize].acked.is_none());
        t.credited(TaskId(3), 2, "w");
        assert_eq!(t.violations().0, 1, "a run of the forgotten submission");
    }

    #[test]
    fn every_task_ends_exactly_once() {
        let mut t = two_submissions();
        assert_eq!(t.ended(5, TaskId(1), TaskState::Succeeded), Some(0));
        t.ended(6, TaskId(1), TaskState::Failed);
        assert_eq!(t.violations().0, 1, "a second final");
        t.unend(0);
        t.unend(0);
        assert_eq!(t.live_finals(), 0);
        t.ended(7, TaskId(1), TaskState::Succeeded);
        let tally = t.finish(false);
        assert_eq!((tally.finals, tally.succeeded), (1, 1));
        let (n, examples) = t.violations();
        assert_eq!(n, 2, "task 2 never ended: {examples:?}");
        assert!(examples[1].contains("1 accepted tasks never ended"));
        assert_eq!(t.by_kind(), [("ended_twice", 1), ("never_ended", 1)]);
    }

    #[test]
    fn a_cancelled_end_nobody_asked_for_is_a_violation() {
        let mut t = two_submissions();
        t.ended(5, TaskId(2), TaskState::Cancelled);
        assert_eq!(t.count(Kind::Uncancelled), 1);
        assert!(t.violations().1[0].contains("no client cancelled it"));
    }

    #[test]
    fn acknowledged_ids_that_name_others_are_violations() {
        let mut t = two_submissions();
        t.ended(1, TaskId(1), TaskState::Succeeded);
        t.ended(1, TaskId(2), TaskState::Succeeded);
        // A crash forgets ids the client was told of (the journal lost them).
        t.forget_above(0);
        let b = t.add_instance(0, 2, 0);
        t.name(TaskId(1), 2..4).expect("ids");
        t.ack(b, TaskId(1), 2);
        t.ended(2, TaskId(1), TaskState::Succeeded);
        t.ended(2, TaskId(2), TaskState::Succeeded);
        t.finish(true);
        let (n, examples) = t.violations();
        assert_eq!((n, t.count(Kind::Renamed)), (2, 2), "{examples:?}");
        assert!(examples[0].contains("2 tasks the client was told of"));
        assert!(t.name(TaskId(9), 0..1).is_err());
    }
}
