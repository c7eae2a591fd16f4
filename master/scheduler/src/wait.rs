//! `Waiters`: clients blocked in `wait` (or `submit --wait`), each answered once its tasks are final.

use super::{ConnId, Output};
use protocol::{FromMaster, TaskId};
use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
enum Scope {
    /// Every task with an id up to `upto`: those already final are counted when the wait starts,
    /// `remaining` are still to finish.
    All { upto: TaskId, remaining: u64 },
    /// Explicit ids still to finish.
    Ids(HashSet<TaskId>),
}

impl Scope {
    fn remaining(&self) -> u64 {
        match self {
            Scope::All { remaining, .. } => *remaining,
            Scope::Ids(ids) => ids.len() as u64,
        }
    }
}

#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    scope: Scope,
    total: u64,
    succeeded: u64,
    failed: u64,
    progress: bool,
    /// Progress changed since the last `Progress` frame.
    changed: bool,
}

#[derive(Debug, Default)]
pub struct Waiters {
    list: Vec<Waiter>,
}

/// How a new wait starts: the tasks it covers that are already final, and those still to finish.
pub struct WaitStart {
    pub succeeded: u64,
    pub failed: u64,
}

impl Waiters {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Waits for every task up to `upto`, of which `unfinished` are not final yet.
    pub fn add_all(
        &mut self,
        conn: ConnId,
        upto: TaskId,
        unfinished: u64,
        start: WaitStart,
        progress: bool,
    ) {
        self.push(
            conn,
            Scope::All {
                upto,
                remaining: unfinished,
            },
            start,
            progress,
        );
    }

    /// Waits for `pending`, plus tasks already final that `start` counts.
    pub fn add_ids(
        &mut self,
        conn: ConnId,
        pending: HashSet<TaskId>,
        start: WaitStart,
        progress: bool,
    ) {
        self.push(conn, Scope::Ids(pending), start, progress);
    }

    fn push(&mut self, conn: ConnId, scope: Scope, start: WaitStart, progress: bool) {
        let total = scope.remaining() + start.succeeded + start.failed;
        self.list.push(Waiter {
            conn,
            scope,
            total,
            succeeded: start.succeeded,
            failed: start.failed,
            progress,
            changed: true,
        });
    }

    /// A task reached a final state.
    pub fn on_final(&mut self, id: TaskId, succeeded: bool) {
        for w in &mut self.list {
            let covered = match &mut w.scope {
                Scope::All { upto, remaining } if id <= *upto && *remaining > 0 => {
                    *remaining -= 1;
                    true
                }
                Scope::Ids(ids) => ids.remove(&id),
                _ => false,
            };
            if covered {
                if succeeded {
                    w.succeeded += 1;
                } else {
                    w.failed += 1;
                }
                w.changed = true;
            }
        }
    }

    pub fn drop_conn(&mut self, conn: ConnId) {
        self.list.retain(|w| w.conn != conn);
    }

    /// Emits `Progress` for waiters that changed and `WaitDone` for those now complete (and forgets
    /// them). Called once per loop turn, so progress costs at most one frame per turn per waiter.
    pub fn flush(&mut self, out: &mut VecDeque<Output>) {
        self.list.retain_mut(|w| {
            if w.scope.remaining() == 0 {
                out.push_back(Output::Send {
                    conn: w.conn,
                    msg: FromMaster::WaitDone {
                        total: w.total,
                        succeeded: w.succeeded,
                        failed: w.failed,
                    },
                });
                return false;
            }
            if w.progress && w.changed {
                out.push_back(Output::Send {
                    conn: w.conn,
                    msg: FromMaster::Progress {
                        total: w.total,
                        finished: w.succeeded + w.failed,
                        failed: w.failed,
                    },
                });
            }
            w.changed = false;
            true
        });
    }
}
