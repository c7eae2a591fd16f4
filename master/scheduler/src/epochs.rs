//! `Epochs`: which incarnation of this master first handed out which task ids, so a report about a
//! run is credited only to the task that run belongs to.
//!
//! Frames to workers leave before the turn's journal commit, so a master that dies in that window
//! can have handed out ids that no journal row holds. The next incarnation hands the same ids out
//! again, for other submissions. A run is named by `TaskRef { task, attempt, incarnation }`; the
//! task with id X was submitted by the last incarnation that had started when X was committed, so
//! a run of X handed out by an earlier incarnation belongs to some other, forgotten submission.

use crate::RestoreError;
use protocol::{Incarnation, TaskId, TaskRef};

/// When an incarnation started: every id it committed is `>= first_id`, and every id an earlier
/// one committed is below it (it is the journal's next id at that start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub incarnation: Incarnation,
    pub first_id: TaskId,
}

#[derive(Debug, Clone)]
pub struct Epochs {
    /// Ordered by incarnation (and so by `first_id`); the last is the current one.
    starts: Vec<EpochStart>,
}

impl Epochs {
    /// A master with no history: every task is its own.
    pub fn fresh(current: Incarnation) -> Self {
        Epochs {
            starts: vec![EpochStart {
                incarnation: current,
                first_id: TaskId(1),
            }],
        }
    }

    /// The journal's history, current incarnation last. Refuses histories that are not ordered.
    pub fn from_history(starts: Vec<EpochStart>) -> Result<Self, RestoreError> {
        if starts.is_empty() {
            return Err(RestoreError::NoIncarnation);
        }
        for w in starts.windows(2) {
            if w[1].incarnation <= w[0].incarnation || w[1].first_id < w[0].first_id {
                return Err(RestoreError::DisorderedHistory {
                    earlier: (w[0].incarnation, w[0].first_id),
                    later: (w[1].incarnation, w[1].first_id),
                });
            }
        }
        Ok(Epochs { starts })
    }

    pub fn current(&self) -> Incarnation {
        self.starts[self.starts.len() - 1].incarnation
    }

    /// The incarnation that submitted task `id`: the last one that started at or below it.
    fn submitted_by(&self, id: TaskId) -> Incarnation {
        let i = self.starts.partition_point(|s| s.first_id <= id);
        // Ids below the first start's `first_id` are from before incarnations were recorded (a
        // journal migrated from schema 2): they count as the first incarnation's, whose workers
        // are the first that can report runs at all.
        self.starts[i.saturating_sub(1)].incarnation
    }

    /// Whether run `r` can belong to the task this master knows as `r.task`: it was handed out
    /// after that task was submitted, by this master's history (never "from the future", which
    /// only a different master could send).
    pub fn owns(&self, r: TaskRef) -> bool {
        r.incarnation <= self.current() && self.submitted_by(r.task) <= r.incarnation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Attempt;

    fn r(task: u64, incarnation: u32) -> TaskRef {
        TaskRef {
            task: TaskId(task),
            attempt: Attempt(1),
            incarnation: Incarnation(incarnation),
        }
    }

    fn start(incarnation: u32, first_id: u64) -> EpochStart {
        EpochStart {
            incarnation: Incarnation(incarnation),
            first_id: TaskId(first_id),
        }
    }

    #[test]
    fn a_run_from_before_its_task_was_submitted_is_not_its_own() {
        // Incarnation 1 committed ids 1..=10 and died having handed out 11 and 12 uncommitted;
        // incarnation 2 committed 11..=20 (new submissions); 3 is current.
        let e = Epochs::from_history(vec![start(1, 1), start(2, 11), start(3, 21)]).expect("ok");
        assert_eq!(e.current(), Incarnation(3));
        assert!(e.owns(r(5, 1)), "a task of 1, run by 1");
        assert!(e.owns(r(5, 2)) && e.owns(r(5, 3)), "re-run by a later one");
        assert!(
            !e.owns(r(11, 1)),
            "id 11 of incarnation 1 was a lost submission"
        );
        assert!(e.owns(r(11, 2)) && e.owns(r(11, 3)));
        assert!(!e.owns(r(21, 2)), "id 21 is incarnation 3's");
        assert!(e.owns(r(21, 3)));
        assert!(!e.owns(r(5, 4)), "no run from the future");
    }

    #[test]
    fn an_incarnation_that_committed_nothing_owns_nothing_new() {
        // 2 started at id 11 and committed nothing; 3 started at 11 too.
        let e = Epochs::from_history(vec![start(1, 1), start(2, 11), start(3, 11)]).expect("ok");
        assert!(!e.owns(r(11, 2)), "anything 2 handed out as 11 was lost");
        assert!(e.owns(r(11, 3)));
        assert!(e.owns(r(10, 2)));
    }

    #[test]
    fn tasks_from_before_a_migration_belong_to_the_first_incarnation() {
        let e = Epochs::from_history(vec![start(1, 11), start(2, 20)]).expect("ok");
        assert!(e.owns(r(5, 1)) && e.owns(r(5, 2)));
        assert!(!e.owns(r(20, 1)));
    }

    #[test]
    fn disordered_history_is_refused() {
        assert!(Epochs::from_history(vec![]).is_err());
        assert!(Epochs::from_history(vec![start(2, 1), start(1, 5)]).is_err());
        assert!(Epochs::from_history(vec![start(1, 5), start(2, 1)]).is_err());
        assert!(Epochs::fresh(Incarnation(1)).owns(r(1, 1)));
    }
}
