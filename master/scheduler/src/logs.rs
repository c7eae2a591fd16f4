//! Full task logs, the core's half: which output a worker sends is accepted, and when a task's log
//! is complete. The bytes themselves are the shell's (`master/src/logs/`, files under the data dir
//! or memory): the core hands them on in [`LogOp`]s, in order with the rest of its output, and
//! never reads or keeps them.
//!
//! IMPORTANT: output is accepted only for a run its worker may report (the current run on that
//! worker, or a run it was handed and that may still end its waiting task: `handed.rs`), so no
//! other worker can write into a task's log, and output of a run that can no longer count (a
//! losing copy after the win, a run of another submission) is dropped. The store keeps one log
//! per run; when the task is final [`LogOp::End`] says which run's log is the task's.

use crate::ConnId;
use protocol::{Attempt, OutputChunk, OutputStream, TaskId};
use std::collections::HashSet;

/// What the shell's log store is told to do.
#[derive(Debug, Clone, PartialEq)]
pub enum LogOp {
    /// Store these bytes of this run.
    Append(OutputChunk),
    /// `task` is final: keep the log of run `attempt` (`None`: of its latest run; the task
    /// ended without a report from a run, e.g. its worker was lost) and drop the others. The
    /// tails are the result's (for a stream whose whole output is its tail, no file is needed).
    End {
        task: TaskId,
        attempt: Option<Attempt>,
        stdout_tail: String,
        stderr_tail: String,
    },
    /// Answer the client on `conn` with a `FromMaster::Log` from the store. `done`: the task is
    /// final; `tail`: its result's tail of `stream`, what a task with no stored log printed.
    Read {
        conn: ConnId,
        task: TaskId,
        stream: OutputStream,
        offset: u64,
        done: bool,
        tail: Option<String>,
    },
    /// These tasks (inclusive id ranges) are forgotten: remove their logs.
    Forget { ranges: Vec<(TaskId, TaskId)> },
}

/// Tasks that have had output accepted and are not final yet: only those get a [`LogOp::End`],
/// so the many tasks that print nothing cost the store nothing. Only looked up, never iterated.
#[derive(Debug, Default)]
pub struct LoggedTasks {
    tasks: HashSet<TaskId>,
}

impl LoggedTasks {
    /// Output of `task` was accepted.
    pub fn note(&mut self, task: TaskId) {
        self.tasks.insert(task);
    }

    /// `task` is final: whether the store holds output of it.
    pub fn end(&mut self, task: TaskId) -> bool {
        !self.tasks.is_empty() && self.tasks.remove(&task)
    }
}
