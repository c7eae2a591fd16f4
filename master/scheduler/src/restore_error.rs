//! Why the journal's contents cannot be taken back by `Core::restore`.

use protocol::{Incarnation, JobId, TaskId};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// The journal recorded no start of a master, not even this one.
    NoIncarnation,
    /// Incarnations must grow, and so must the first id of each.
    DisorderedHistory {
        earlier: (Incarnation, TaskId),
        later: (Incarnation, TaskId),
    },
    /// The history ends with another incarnation than the one the core was made for.
    WrongIncarnation {
        journal: Incarnation,
        core: Incarnation,
    },
    /// Restored ids must be dense from 1, in order.
    MissingTask { expected: TaskId, got: TaskId },
    /// An outcome whose state is not final.
    NotFinal { id: TaskId },
    /// Jobs must be dense from 1 and their task ranges follow each other, none empty.
    BadJob {
        job: JobId,
        first: TaskId,
        count: u64,
        expected_job: JobId,
        expected_first: TaskId,
    },
    /// Restored jobs hold more (or other) tasks than the journal has.
    JobPastTasks { job: JobId, tasks: u64 },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::NoIncarnation => write!(f, "no incarnation recorded"),
            RestoreError::DisorderedHistory { earlier, later } => write!(
                f,
                "incarnation {} (first id {}) follows incarnation {} (first id {})",
                later.0, later.1, earlier.0, earlier.1
            ),
            RestoreError::WrongIncarnation { journal, core } => write!(
                f,
                "the journal's last incarnation is {journal}, the master's {core}"
            ),
            RestoreError::MissingTask { expected, got } => write!(
                f,
                "journal is missing task {expected} (next restored task is {got})"
            ),
            RestoreError::NotFinal { id } => {
                write!(f, "journal holds a non-final outcome for task {id}")
            }
            RestoreError::BadJob {
                job,
                first,
                count,
                expected_job,
                expected_first,
            } => write!(
                f,
                "journal holds job {job} of {count} tasks from {first}; expected job \
                 {expected_job} from task {expected_first}"
            ),
            RestoreError::JobPastTasks { job, tasks } => write!(
                f,
                "journal holds job {job} past its last task ({tasks} tasks)"
            ),
        }
    }
}

impl std::error::Error for RestoreError {}
