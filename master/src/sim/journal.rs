//! The simulated journal: the core's `Persist` records, committed with the real shell's rule
//! (`server.rs`, `docs/DESIGN.md` "Durability"), so a simulated crash loses exactly what a real
//! one would.
//!
//! Records of a turn are pending until a commit. A turn whose client replies depend on the
//! journal commits at its end, before those replies leave (frames to workers left earlier);
//! otherwise records wait for the group commit, at most [`COMMIT_WINDOW_US`] after the oldest of
//! them (or until [`COMMIT_BATCH_MAX`] pile up). A commit makes every pending record durable, so
//! what is committed is always a prefix of what was recorded.

use crate::core::{
    Core, CoreConfig, EpochStart, GroupCommit, JobRecord, Outcome, Record, RestoreError,
    RestoredTask,
};
use protocol::{Incarnation, TaskId, TaskSpec};
use std::sync::Arc;

pub use crate::core::{COMMIT_BATCH_MAX, COMMIT_WINDOW_US};

/// A record not yet committed, with the logical task a final belongs to (see `invariants`), so
/// a crash can take back what it loses.
#[derive(Debug)]
pub struct Pending {
    pub record: Record,
    pub logical: Option<u64>,
}

#[derive(Debug)]
struct Batch {
    first: TaskId,
    count: u64,
    spec: Arc<TaskSpec>,
    submitted_ms: u64,
}

#[derive(Debug, Default)]
pub struct SimJournal {
    pending: Vec<Pending>,
    /// Committed submissions, in id order (dense from 1).
    batches: Vec<Batch>,
    /// Committed jobs, in id order (dense from 1), as the real journal's `jobs` table.
    jobs: Vec<JobRecord>,
    /// The last committed final of each committed id, by id - 1.
    finals: Vec<Option<Box<Outcome>>>,
    /// When the oldest pending record was seen at a turn's end.
    group_commit: GroupCommit,
    pub commits: u64,
    /// Every start of the master, as the real journal's `incarnations` table: the first master
    /// (incarnation 1, from id 1) is implied until the first restart records it.
    history: Vec<EpochStart>,
}

impl SimJournal {
    pub fn record(&mut self, record: Record, logical: Option<u64>) {
        self.pending.push(Pending { record, logical });
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Ids `1 ..= committed_ids()` are durable.
    pub fn committed_ids(&self) -> u64 {
        self.finals.len() as u64
    }

    /// The group-commit rule at the end of a turn at `now_us`; `force`: a client reply of this
    /// turn waits for the commit. Returns when the next commit is due if it did not commit.
    pub fn end_turn(&mut self, now_us: u64, force: bool) -> Option<u64> {
        if self.group_commit.due(now_us, self.pending.len(), force) {
            self.commit();
        }
        self.group_commit.deadline_us()
    }

    fn commit(&mut self) {
        self.commits += 1;
        for p in std::mem::take(&mut self.pending) {
            match p.record {
                Record::Submitted {
                    first,
                    count,
                    spec,
                    submitted_ms,
                } => {
                    // The core hands out ids densely; recovery would refuse a gap, and the
                    // simulator checks the ids it is given (`Truth::name`).
                    debug_assert_eq!(first.0, self.committed_ids() + 1);
                    self.finals
                        .resize_with(self.finals.len() + count as usize, || None);
                    self.batches.push(Batch {
                        first,
                        count,
                        spec,
                        submitted_ms,
                    });
                }
                Record::Job(job) => self.jobs.push(job),
                // The simulator never forgets (no `Forget`, no `--keep-finished`).
                Record::Forgotten { .. } => {}
                Record::Finished { id, outcome } => {
                    if let Some(slot) = (id.0 as usize)
                        .checked_sub(1)
                        .and_then(|i| self.finals.get_mut(i))
                    {
                        // A later final for an id replaces an earlier one, as in the real journal.
                        *slot = Some(Box::new(outcome));
                    }
                }
            }
        }
    }

    /// A restart: the next incarnation, starting at the first id never committed. Durable at once,
    /// as the real master commits it before it listens.
    fn start_incarnation(&mut self) -> Incarnation {
        if self.history.is_empty() {
            self.history.push(EpochStart {
                incarnation: Incarnation(1),
                first_id: TaskId(1),
            });
        }
        let last = self.history[self.history.len() - 1].incarnation;
        let next = Incarnation(last.0 + 1);
        self.history.push(EpochStart {
            incarnation: next,
            first_id: TaskId(self.committed_ids() + 1),
        });
        next
    }

    /// The master died: what was not committed is gone. Returns it.
    pub fn crash(&mut self) -> Vec<Pending> {
        self.group_commit.reset();
        std::mem::take(&mut self.pending)
    }

    /// What a restarted master reads back, as `journal/recover.rs` makes it: batches expanded in
    /// id order, the last final of each id.
    fn restored_tasks(&self) -> Vec<RestoredTask> {
        let mut tasks = Vec::with_capacity(self.finals.len());
        for b in &self.batches {
            for id in b.first.0..b.first.0 + b.count {
                tasks.push(RestoredTask {
                    id: TaskId(id),
                    spec: Arc::clone(&b.spec),
                    submitted_ms: b.submitted_ms,
                    stored: None,
                    outcome: self.finals[id as usize - 1].clone(),
                });
            }
        }
        tasks
    }
}

/// The restart glue, in one place: a new incarnation of the core rebuilt from the committed
/// records and the incarnation history, as the real master's `open_journal` does.
pub fn restart(
    mut config: CoreConfig,
    now_ms: u64,
    journal: &mut SimJournal,
) -> Result<Core, RestoreError> {
    config.incarnation = journal.start_incarnation();
    let mut core = Core::new(config);
    core.restore(
        now_ms,
        journal.restored_tasks(),
        journal.history.clone(),
        journal.jobs.clone(),
    )?;
    Ok(core)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{TaskKind, TaskState};

    fn submitted(first: u64, count: u64) -> Record {
        Record::Submitted {
            first: TaskId(first),
            count,
            spec: Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 10 })),
            submitted_ms: 5,
        }
    }

    fn finished(id: u64, state: TaskState) -> Record {
        Record::Finished {
            id: TaskId(id),
            outcome: Outcome {
                state,
                exit_code: Some(0),
                copies: 1,
                worker: Some("w".into()),
                attempts: 1,
                started_ms: Some(6),
                finished_ms: 8,
                stdout: "out".into(),
                stderr: String::new(),
                error: None,
            },
        }
    }

    #[test]
    fn replies_force_a_commit_and_the_rest_waits_for_the_window() {
        let mut j = SimJournal::default();
        j.record(submitted(1, 3), None);
        assert_eq!(j.end_turn(100, true), None, "a reply waits: committed");
        assert_eq!(j.committed_ids(), 3);
        j.record(finished(2, TaskState::Succeeded), Some(1));
        assert_eq!(j.end_turn(200, false), Some(200 + COMMIT_WINDOW_US));
        assert_eq!(j.end_turn(5_000, false), Some(200 + COMMIT_WINDOW_US));
        assert_eq!(j.pending(), 1);
        assert_eq!(j.end_turn(200 + COMMIT_WINDOW_US, false), None);
        assert_eq!(j.pending(), 0);
        assert_eq!(j.commits, 2);
    }

    #[test]
    fn a_crash_loses_what_is_pending_and_restore_reads_the_rest() {
        let mut j = SimJournal::default();
        j.record(submitted(1, 2), None);
        j.record(finished(1, TaskState::Failed), Some(0));
        j.end_turn(0, true);
        j.record(finished(1, TaskState::Succeeded), Some(0));
        j.record(submitted(3, 4), None);
        let lost = j.crash();
        assert_eq!(lost.len(), 2);
        assert_eq!(lost[0].logical, Some(0));
        let tasks = j.restored_tasks();
        assert_eq!(tasks.len(), 2, "the uncommitted submission is gone");
        let r = tasks[0].outcome.as_ref().expect("task 1 had a final");
        assert_eq!(
            r.state,
            TaskState::Failed,
            "the later final was not committed"
        );
        assert_eq!(r.finished_ms, 8);
        assert!(tasks[1].outcome.is_none());
        let core = restart(CoreConfig::default(), 10, &mut j).expect("restore");
        assert_eq!(
            core.task(TaskId(1)).map(|t| t.state),
            Some(TaskState::Failed)
        );
        assert_eq!(
            core.task(TaskId(2)).map(|t| t.state),
            Some(TaskState::Queued)
        );
        assert!(core.task(TaskId(3)).is_none());
    }
}
