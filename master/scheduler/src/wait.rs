//! `Waiters`: clients blocked in `wait` (or `submit --wait`), each answered once its tasks are final.

use super::id_hash::IdHashMap;
use super::session::{ClientId, Sessions};
use protocol::{FromMaster, TaskId};
use std::collections::BTreeSet;

#[derive(Debug)]
enum Scope {
    /// Every task with an id up to `upto`: those already final are counted when the wait starts,
    /// `remaining` are still to finish.
    All { upto: TaskId, remaining: u64 },
    /// Explicit ids still to finish.
    Ids(BTreeSet<TaskId>),
    /// Whole jobs, as id ranges (sorted, disjoint), of which `remaining` tasks are still to
    /// finish, and explicit ids outside them.
    Ranges {
        ids: BTreeSet<TaskId>,
        ranges: Vec<(TaskId, TaskId)>,
        remaining: u64,
    },
}

/// Whether `id` is in one of `ranges` (inclusive, sorted, disjoint): O(log ranges).
pub fn in_ranges(ranges: &[(TaskId, TaskId)], id: TaskId) -> bool {
    let i = ranges.partition_point(|&(first, _)| first <= id);
    i > 0 && id <= ranges[i - 1].1
}

impl Scope {
    fn remaining(&self) -> u64 {
        match self {
            Scope::All { remaining, .. } => *remaining,
            Scope::Ids(ids) => ids.len() as u64,
            Scope::Ranges { ids, remaining, .. } => ids.len() as u64 + remaining,
        }
    }
}

#[derive(Debug)]
struct Waiter {
    client: ClientId,
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
    /// How many waits each client has in `list`: the shell asks per gated reply, every turn.
    per_client: IdHashMap<ClientId, u32>,
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
        client: ClientId,
        upto: TaskId,
        unfinished: u64,
        start: WaitStart,
        progress: bool,
    ) {
        self.push(
            client,
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
        client: ClientId,
        pending: BTreeSet<TaskId>,
        start: WaitStart,
        progress: bool,
    ) {
        self.push(client, Scope::Ids(pending), start, progress);
    }

    /// Waits for the tasks of `ranges` (jobs: sorted, disjoint), of which `remaining` are not
    /// final, and for `pending` ids outside them, plus tasks already final that `start` counts.
    pub fn add_ranges(
        &mut self,
        client: ClientId,
        pending: BTreeSet<TaskId>,
        ranges: Vec<(TaskId, TaskId)>,
        remaining: u64,
        start: WaitStart,
        progress: bool,
    ) {
        let scope = Scope::Ranges {
            ids: pending,
            ranges,
            remaining,
        };
        self.push(client, scope, start, progress);
    }

    fn push(&mut self, client: ClientId, scope: Scope, start: WaitStart, progress: bool) {
        let total = scope.remaining() + start.succeeded + start.failed;
        *self.per_client.entry(client).or_default() += 1;
        self.list.push(Waiter {
            client,
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
                Scope::Ranges {
                    ids,
                    ranges,
                    remaining,
                } => {
                    if ids.remove(&id) {
                        true
                    } else if *remaining > 0 && in_ranges(ranges, id) {
                        *remaining -= 1;
                        true
                    } else {
                        false
                    }
                }
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

    /// Whether `client` waits for something (its connection must stay open).
    pub fn has_client(&self, client: ClientId) -> bool {
        self.per_client.contains_key(&client)
    }

    pub fn drop_client(&mut self, client: ClientId) {
        if self.per_client.remove(&client).is_some() {
            self.list.retain(|w| w.client != client);
        }
    }

    /// Emits `Progress` for waiters that changed and `WaitDone` for those now complete (and forgets
    /// them). Called once per loop turn, so progress costs at most one frame per turn per waiter.
    pub fn flush(&mut self, out: &mut Sessions) {
        let per_client = &mut self.per_client;
        self.list.retain_mut(|w| {
            if w.scope.remaining() == 0 {
                if let Some(n) = per_client.get_mut(&w.client) {
                    *n -= 1;
                    if *n == 0 {
                        per_client.remove(&w.client);
                    }
                }
                out.send_client(
                    w.client,
                    FromMaster::WaitDone {
                        total: w.total,
                        succeeded: w.succeeded,
                        failed: w.failed,
                    },
                );
                return false;
            }
            if w.progress && w.changed {
                out.send_client(
                    w.client,
                    FromMaster::Progress {
                        total: w.total,
                        finished: w.succeeded + w.failed,
                        failed: w.failed,
                    },
                );
            }
            w.changed = false;
            true
        });
    }
}
