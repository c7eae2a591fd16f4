//! Replies that come in chunks (`Results`, `Status`, `Jobs`), made one chunk at a time. A request starts a
//! cursor and sends its first chunk; the next chunk is made only once the shell reports that the
//! connection's write buffer has drained ([`Core::handle_drain`]), so a client that does not read
//! costs the master one chunk, not the whole reply (issue 14: 400 pipelined `Results` from a
//! client that never read took 1.6 GB). Like the rest of the crate this does no IO: the shell
//! says how many bytes wait ([`Backlog`]), the core decides.
//!
//! Backpressure for clients, as the core answers [`Core::wants_input`]: no frame of a client is
//! read while its chunked reply is unfinished or its last chunk is not drained, while more than
//! [`CLIENT_BACKLOG_MAX_BYTES`] wait for it, or while the bytes waiting for every connection
//! together pass [`REPLY_BYTES_IN_FLIGHT_MAX`]. Workers are always read: their heartbeats and
//! results must not stall behind a client.

use crate::{ClientId, ConnId, Core};
use protocol::budget::sequence_len;
use protocol::codec::encoded_len;
use protocol::limits::{cut_argv, keep_tail, truncate_with_marker, MAX_NAME_BYTES};
use protocol::{FromMaster, JobId, StatusReport, TaskId, TaskResult, TaskState, WorkerStatus};
use serde::Serialize;
use std::collections::BTreeMap;

/// Reply chunks are kept well under `MAX_FRAME`.
pub const REPLY_FRAME_BUDGET: usize = 4 << 20;
/// The next chunk is made once fewer bytes than this wait for the connection.
pub const DRAIN_LOW_WATER_BYTES: usize = 1 << 20;
/// A client is not read while this many bytes wait for it (replies it has not read).
pub const CLIENT_BACKLOG_MAX_BYTES: usize = 4 << 20;
/// No client is read, and no chunk made, while the bytes waiting for all connections together
/// pass this; the shell closes a connection that has not taken a byte for
/// [`STALLED_READER_MS`] while they do.
pub const REPLY_BYTES_IN_FLIGHT_MAX: usize = 256 << 20;
/// See [`REPLY_BYTES_IN_FLIGHT_MAX`].
pub const STALLED_READER_MS: u64 = 30_000;
/// Most tasks in one `ResultsPage` (a larger `limit` is cut to it).
pub const PAGE_LIMIT_MAX: u32 = 1_000;
/// Most tasks one `ResultsPage` looks at, so a page filtered by a rare state never walks a table
/// of millions in one turn: the page then holds fewer tasks and `next` says where to go on.
pub const PAGE_SCAN_MAX: usize = 100_000;
/// The stdout and stderr tails in a page are cut to their last this many bytes each (a page of a
/// thousand tasks stays a few MiB); one task's own result has them whole.
pub const PAGE_TAIL_BYTES: usize = 1 << 10;
/// A command's argv in a page is cut to its first this many bytes ([`cut_argv`]: an argv may be
/// a MiB); one task's own result has it whole.
pub const PAGE_ARGV_BYTES: usize = 1 << 10;

/// What the shell holds for one connection, and for all, not yet written to their sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes waiting for this connection.
    pub conn_bytes: usize,
    /// Bytes waiting for every connection together.
    pub total_bytes: usize,
}

impl Backlog {
    fn over_budget(self) -> bool {
        self.total_bytes >= REPLY_BYTES_IN_FLIGHT_MAX
    }
}

/// Where a chunked reply stands.
#[derive(Debug)]
enum Cursor {
    /// Every task with an index from `next` below `end` (the tasks known when asked).
    AllResults { next: usize, end: usize },
    /// These ids (checked to exist when asked), from `pos`.
    Results { ids: Vec<TaskId>, pos: usize },
    /// Id ranges (inclusive, sorted, disjoint: jobs and ids merged), from range `at`, id `next`.
    Ranges {
        ranges: Vec<(TaskId, TaskId)>,
        at: usize,
        next: TaskId,
    },
    /// Jobs (`ids` empty: every job below index `end`), from `pos`; durations as of `now_ms`.
    Jobs {
        ids: Vec<JobId>,
        pos: usize,
        end: usize,
        now_ms: u64,
    },
    /// One page of the task list: tasks from index `next` on, in `state` if given, until `left`
    /// more are sent or `scan_left` more are looked at.
    Page {
        state: Option<TaskState>,
        next: usize,
        left: u32,
        scan_left: usize,
    },
    /// The counts taken when asked; workers from index `next` below `end`.
    Status {
        header: StatusReport,
        next: usize,
        end: usize,
    },
}

/// The chunked replies in progress, per client. `None`: the last chunk is out, and the client
/// waits for it to drain before it is read again.
#[derive(Debug, Default)]
pub struct Replies {
    pending: BTreeMap<ClientId, Option<Cursor>>,
}

impl Replies {
    pub fn drop_client(&mut self, client: ClientId) {
        self.pending.remove(&client);
    }

    /// Whether `client` has a reply in progress (or its last chunk not yet drained).
    pub fn has_client(&self, client: ClientId) -> bool {
        self.pending.contains_key(&client)
    }
}

/// Takes `make(0)`, `make(1)` ... while their encoding as a sequence stays within `budget`
/// (always at least one, if there is one); `make` returning `None` ends the batch.
fn fill_chunk<T: Serialize>(budget: usize, mut make: impl FnMut(usize) -> Option<T>) -> Vec<T> {
    let mut chunk = Vec::new();
    let mut item_bytes = 0;
    while let Some(item) = make(chunk.len()) {
        let len = encoded_len(&item);
        if !chunk.is_empty() && sequence_len(chunk.len() + 1, item_bytes + len) > budget {
            break; // made for nothing: it opens the next chunk
        }
        item_bytes += len;
        chunk.push(item);
    }
    chunk
}

impl Core {
    /// Whether the shell may hand the core more frames from `conn` now (see the module doc).
    /// IMPORTANT: a shell that reads a client while this says no lets the client make the master
    /// build replies it does not read; the core stays correct (an unfinished reply is then
    /// finished at once, before the next request), but memory is no longer bounded.
    pub fn wants_input(&self, conn: ConnId, backlog: Backlog) -> bool {
        let Some(client) = self.session.client_on(conn) else {
            return true; // a worker, a handshake, or gone
        };
        !self.replies.pending.contains_key(&client)
            && backlog.conn_bytes < CLIENT_BACKLOG_MAX_BYTES
            && !backlog.over_budget()
    }

    /// The shell's write buffer for `conn` holds `backlog.conn_bytes`. If the client there has a
    /// chunked reply in progress and the buffer is low (and the global budget allows), its next
    /// chunk is made; a reply whose last chunk has drained is forgotten, and the client may be
    /// read again. Anything else is a no-op, so the shell may call it for any connection.
    pub fn handle_drain(&mut self, _now_ms: u64, conn: ConnId, backlog: Backlog) {
        let Some(client) = self.session.client_on(conn) else {
            return;
        };
        match self.replies.pending.get(&client) {
            None => {}
            Some(_) if backlog.conn_bytes >= DRAIN_LOW_WATER_BYTES || backlog.over_budget() => {}
            Some(None) => {
                self.replies.pending.remove(&client);
            }
            Some(Some(_)) => self.next_chunk(client),
        }
    }

    /// Connections whose client has a chunked reply in progress (or not yet drained).
    pub fn replies_pending(&self) -> Vec<ConnId> {
        self.replies
            .pending
            .keys()
            .filter_map(|&client| self.session.conn_of(client))
            .collect()
    }

    /// Answers `Results` for every task (`ids` empty) or for these ids, all known.
    pub(crate) fn start_results(&mut self, client: ClientId, ids: Vec<TaskId>) {
        let cursor = if ids.is_empty() {
            Cursor::AllResults {
                next: 0,
                end: self.tasks.len(),
            }
        } else {
            Cursor::Results { ids, pos: 0 }
        };
        self.start_reply(client, cursor);
    }

    /// Answers `Results` for these ids and whole jobs (`ranges`), all known: in id order, each
    /// task once, a job's range walked as the reply goes (never a list of its ids).
    pub(crate) fn start_ranges(
        &mut self,
        client: ClientId,
        ids: Vec<TaskId>,
        ranges: Vec<(TaskId, TaskId)>,
    ) {
        let mut all: Vec<(TaskId, TaskId)> = ids.into_iter().map(|id| (id, id)).collect();
        all.extend(ranges);
        all.sort_unstable();
        let mut merged: Vec<(TaskId, TaskId)> = Vec::with_capacity(all.len());
        for (first, last) in all {
            match merged.last_mut() {
                Some(prev) if first.0 <= prev.1 .0.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        let next = merged.first().map_or(TaskId(1), |r| r.0);
        let cursor = Cursor::Ranges {
            ranges: merged,
            at: 0,
            next,
        };
        self.start_reply(client, cursor);
    }

    /// Answers `Jobs`: these (all known) or every job, in chunks.
    pub(crate) fn start_jobs(&mut self, now_ms: u64, client: ClientId, ids: Vec<JobId>) {
        let end = if ids.is_empty() {
            self.tasks.jobs().len()
        } else {
            ids.len()
        };
        // Every job: from the first one not freed (the ids before are forgotten).
        let pos = match ids.is_empty() {
            true => self.tasks.jobs().first_kept().0 as usize - 1,
            false => 0,
        };
        let cursor = Cursor::Jobs {
            ids,
            pos,
            end,
            now_ms,
        };
        self.start_reply(client, cursor);
    }

    /// Answers `Status`: the counts now, the workers in chunks.
    pub(crate) fn start_status(&mut self, client: ClientId) {
        let header = self.status_counts();
        let end = self.workers.iter().count();
        self.start_reply(
            client,
            Cursor::Status {
                header,
                next: 0,
                end,
            },
        );
    }

    /// Answers `ResultsPage`: tasks after `after`, oldest first, in `state` if given.
    pub(crate) fn start_page(
        &mut self,
        client: ClientId,
        state: Option<TaskState>,
        after: TaskId,
        limit: u32,
    ) {
        let cursor = Cursor::Page {
            state,
            // Ids start at 1, so task `after` sits at index `after - 1`: the next is at `after`.
            next: usize::try_from(after.0).unwrap_or(usize::MAX),
            left: limit.clamp(1, PAGE_LIMIT_MAX),
            scan_left: PAGE_SCAN_MAX,
        };
        self.start_reply(client, cursor);
    }

    /// The next chunk of a page from index `next`: its tasks, and the page's `next`, `left` and
    /// `scan_left` after them. Never looks past `scan_left` tasks.
    fn page_chunk(
        &self,
        state: Option<TaskState>,
        next: usize,
        left: u32,
        scan_left: usize,
    ) -> (Vec<TaskResult>, usize, u32, usize) {
        let end = self.tasks.len().min(next.saturating_add(scan_left));
        let mut at = next;
        // The index of every task made, so one left out of a full chunk opens the next chunk.
        let mut made_at = Vec::new();
        let tasks = fill_chunk(REPLY_FRAME_BUDGET, |i| {
            if i >= left as usize {
                return None;
            }
            while at < end {
                let index = at;
                at += 1;
                let id = TaskId(index as u64 + 1);
                let Some(t) = self.tasks.get(id) else {
                    continue; // forgotten
                };
                if state.is_none_or(|s| s == t.state) {
                    let mut view = self.result_view(id, t);
                    keep_tail(&mut view.stdout, PAGE_TAIL_BYTES);
                    keep_tail(&mut view.stderr, PAGE_TAIL_BYTES);
                    if let Some(argv) = &mut view.cmd {
                        cut_argv(argv, PAGE_ARGV_BYTES);
                    }
                    made_at.push(index);
                    return Some(view);
                }
            }
            None
        });
        let resume = made_at.get(tasks.len()).copied().unwrap_or(at);
        let left = left - tasks.len() as u32;
        let scan_left = scan_left - (resume - next);
        (tasks, resume, left, scan_left)
    }

    fn start_reply(&mut self, client: ClientId, cursor: Cursor) {
        // A request while a reply is unfinished only comes from a shell that read the client
        // anyway: finish that reply first, so chunks never interleave.
        while let Some(Some(_)) = self.replies.pending.get(&client) {
            self.next_chunk(client);
        }
        self.replies.pending.insert(client, Some(cursor));
        self.next_chunk(client);
    }

    /// Makes and sends the next chunk of `client`'s reply.
    fn next_chunk(&mut self, client: ClientId) {
        let Some(Some(cursor)) = self.replies.pending.remove(&client) else {
            return;
        };
        let (msg, rest) = match cursor {
            Cursor::AllResults { next, end } => {
                // Forgotten ids are skipped (`made_at` keeps where each task kept sits).
                let mut at = next.max(self.tasks.first_kept().0 as usize - 1);
                let mut made_at = Vec::new();
                let tasks = fill_chunk(REPLY_FRAME_BUDGET, |_| {
                    while at < end {
                        let index = at;
                        at += 1;
                        let id = TaskId(index as u64 + 1);
                        if let Some(t) = self.tasks.get(id) {
                            made_at.push(index);
                            return Some(self.result_view(id, t));
                        }
                    }
                    None
                });
                let next = made_at.get(tasks.len()).copied().unwrap_or(at);
                let more = next < end;
                let rest = more.then_some(Cursor::AllResults { next, end });
                (FromMaster::Results { tasks, more }, rest)
            }
            Cursor::Results { ids, pos } => {
                let tasks = fill_chunk(REPLY_FRAME_BUDGET, |i| {
                    let id = *ids.get(pos + i)?;
                    self.tasks.get(id).map(|t| self.result_view(id, t))
                });
                let pos = pos + tasks.len();
                // A listed id that vanished would end the reply early rather than loop.
                let more = pos < ids.len() && !tasks.is_empty();
                let rest = more.then_some(Cursor::Results { ids, pos });
                (FromMaster::Results { tasks, more }, rest)
            }
            Cursor::Ranges { ranges, at, next } => {
                let (mut at, mut id) = (at, next);
                let tasks = fill_chunk(REPLY_FRAME_BUDGET, |_| {
                    // Forgotten ids of a range are skipped.
                    loop {
                        let &(_, last) = ranges.get(at)?;
                        let this = id;
                        if this >= last {
                            at += 1;
                            id = ranges.get(at).map_or(this, |r| r.0);
                        } else {
                            id = TaskId(this.0 + 1);
                        }
                        if let Some(t) = self.tasks.get(this) {
                            return Some(self.result_view(this, t));
                        }
                    }
                });
                // `fill_chunk` may have made one task more than it kept: go on after the last
                // one kept.
                let rest = tasks
                    .last()
                    .and_then(|t| after_in(&ranges, t.id))
                    .map(|(at, next)| Cursor::Ranges { ranges, at, next });
                let more = rest.is_some();
                (FromMaster::Results { tasks, more }, rest)
            }
            Cursor::Jobs {
                ids,
                pos,
                end,
                now_ms,
            } => {
                // Forgotten jobs are skipped (listed ones were checked when asked).
                let mut at = pos;
                let mut made_at = Vec::new();
                let jobs = fill_chunk(REPLY_FRAME_BUDGET, |_| {
                    while at < end {
                        let index = at;
                        at += 1;
                        let id = ids.get(index).copied().unwrap_or(JobId(index as u64 + 1));
                        if let Some(status) = self.tasks.jobs().status(id, now_ms) {
                            made_at.push(index);
                            return Some(status);
                        }
                    }
                    None
                });
                let pos = made_at.get(jobs.len()).copied().unwrap_or(at);
                let more = pos < end && !jobs.is_empty();
                let rest = more.then_some(Cursor::Jobs {
                    ids,
                    pos,
                    end,
                    now_ms,
                });
                (FromMaster::Jobs { jobs, more }, rest)
            }
            Cursor::Page {
                state,
                next,
                left,
                scan_left,
            } => {
                let (tasks, next, left, scan_left) = self.page_chunk(state, next, left, scan_left);
                let len = self.tasks.len();
                let done = left == 0 || scan_left == 0 || next >= len;
                let rest = (!done).then_some(Cursor::Page {
                    state,
                    next,
                    left,
                    scan_left,
                });
                // The last task looked at has index `next - 1`, so id `next`.
                let after = (done && next < len).then_some(TaskId(next as u64));
                let msg = FromMaster::ResultsPage {
                    tasks,
                    more: !done,
                    next: after,
                };
                (msg, rest)
            }
            Cursor::Status { header, next, end } => {
                let workers = fill_chunk(REPLY_FRAME_BUDGET, |i| {
                    (next + i < end)
                        .then(|| self.workers.iter().nth(next + i))
                        .flatten()
                        .map(|w| capped(self.worker_status(w)))
                });
                let next = next + workers.len();
                let more = next < end && !workers.is_empty();
                let report = StatusReport {
                    workers,
                    ..header.clone()
                };
                let rest = more.then_some(Cursor::Status { header, next, end });
                (FromMaster::Status { report, more }, rest)
            }
        };
        self.replies.pending.insert(client, rest);
        self.session.send_client(client, msg);
    }
}

/// The first id after `id` in `ranges` (inclusive, sorted, disjoint): its range's index and the
/// id; `None` past the last range.
fn after_in(ranges: &[(TaskId, TaskId)], id: TaskId) -> Option<(usize, TaskId)> {
    let at = ranges.partition_point(|&(_, last)| last <= id);
    let &(first, _) = ranges.get(at)?;
    Some((at, first.max(TaskId(id.0 + 1))))
}

/// A worker's names as a status shows them: cut to [`MAX_NAME_BYTES`], whatever its `Hello` said,
/// so a status row always fits a chunk.
fn capped(mut w: WorkerStatus) -> WorkerStatus {
    truncate_with_marker(&mut w.name, MAX_NAME_BYTES);
    truncate_with_marker(&mut w.host, MAX_NAME_BYTES);
    truncate_with_marker(&mut w.addr, MAX_NAME_BYTES);
    if let Some(g) = &mut w.group {
        truncate_with_marker(g, MAX_NAME_BYTES);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Chunk after chunk from a cursor covers every item once, in order, each chunk within
        /// the budget unless it is one item alone, and greedy.
        #[test]
        fn chunks_made_from_a_cursor_cover_all_within_budget(
            lens in proptest::collection::vec(0usize..300, 0..80),
            budget in 1usize..1_000,
        ) {
            let items: Vec<String> =
                lens.iter().enumerate().map(|(i, &n)| format!("{i}:{}", "z".repeat(n))).collect();
            let mut next = 0;
            let mut got = Vec::new();
            while next < items.len() {
                let chunk = fill_chunk(budget, |i| items.get(next + i).cloned());
                prop_assert!(!chunk.is_empty());
                prop_assert!(chunk.len() == 1 || encoded_len(&chunk) <= budget);
                if let Some(after) = items.get(next + chunk.len()) {
                    let mut grown = chunk.clone();
                    grown.push(after.clone());
                    prop_assert!(encoded_len(&grown) > budget, "greedy");
                }
                next += chunk.len();
                got.extend(chunk);
            }
            prop_assert_eq!(got, items);
        }
    }
}
