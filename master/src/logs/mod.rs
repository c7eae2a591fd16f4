//! The log store: every task's whole stdout and stderr, as the workers stream them (the shell's
//! half of `scheduler/src/logs.rs`; the core decides what is accepted and when a log is complete,
//! this keeps the bytes).
//!
//! With a data dir the logs live in `DIR/logs/`, one file per run and stream, named
//! `<task>.<attempt>.stdout` / `.stderr`, holding the bytes as printed: the directory describes
//! itself, so a restarted master finds them again (`LogStore::recover`) with no SQLite schema
//! change. A stream is kept in memory until it passes 64 KiB and only then spills to its file; a
//! finished task whose output is its result's tail (`results --json`, already in the journal) gets
//! no file at all, so the many tasks that print a line cost no file. Without a data dir every log
//! is kept in memory, under the same caps.
//!
//! Caps: `--log-limit` per stream (past it the bytes are counted, not kept, and the log ends with
//! one line that says how many were dropped) and `--log-budget` for all logs together (the logs
//! of the oldest finished tasks are removed first, one `info` line each; a read of a removed log
//! gets the result's tail and is told so).
//!
//! Files are written with plain `write`, no `fsync`: a log survives the master's death (the
//! kernel has the bytes), not the machine's.

#[cfg(test)]
mod tests;

use crate::core::{ConnId, LogOp};
use log::{info, warn};
use protocol::limits::{MAX_LOG_READ_BYTES, MAX_TAIL_BYTES};
use protocol::{Attempt, FromMaster, OutputChunk, OutputStream, TaskId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// `master --log-limit`'s default, per stream (the workers' too).
pub use protocol::limits::DEFAULT_LOG_LIMIT_BYTES;
/// `master --log-budget`'s default, for all logs.
pub const DEFAULT_LOG_BUDGET_BYTES: u64 = 10 << 30;
/// A stream is held in memory up to this size before it gets its file: the size of the tail the
/// result keeps anyway, so that a small output that is its own tail needs no file.
const SPILL_BYTES: usize = MAX_TAIL_BYTES;
/// Runs kept per unfinished task (copies of a redundant task, retries); beyond it the oldest
/// run's log goes. A task has at most 64 copies at once and one is the winner.
const MAX_RUNS_PER_TASK: usize = 8;
/// Removed logs remembered (so a read says the log was removed rather than pass the tail off as
/// the whole output): 8 bytes and some each. Past it, a read of one just gets the tail.
const MAX_REMEMBERED_REMOVALS: usize = 1 << 20;

/// Why the store cannot start.
#[derive(Debug, Error)]
pub enum LogStoreError {
    /// The logs directory cannot be created or read.
    #[error("cannot use the log directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Bytes kept per stream of a run.
    pub per_stream: u64,
    /// Bytes kept for all logs.
    pub budget: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            per_stream: DEFAULT_LOG_LIMIT_BYTES,
            budget: DEFAULT_LOG_BUDGET_BYTES,
        }
    }
}

pub struct LogStore {
    /// `DIR/logs`; `None`: memory only.
    dir: Option<PathBuf>,
    limits: LogLimits,
    /// Bytes held, in memory and files.
    total: u64,
    /// Only looked up by task (the order of eviction is `finished`'s).
    tasks: HashMap<TaskId, TaskLogs>,
    /// Finished tasks with a stored log, oldest first: the budget removes from the front.
    finished: VecDeque<TaskId>,
    /// Tasks whose log the budget removed.
    removed: HashSet<TaskId>,
    /// Finished tasks that had the logs of several runs and whose log is now their result's
    /// tail (or empty): the run that counts, so a reader of another run's log learns that its
    /// log is another's (`FromMaster::Log::attempt`). Rare (retries, copies); capped as `removed`.
    ended_as_tail: HashMap<TaskId, Attempt>,
    /// A file error is logged once at `warn` (then at debug), not once per chunk.
    io_warned: bool,
}

#[derive(Debug, Default)]
struct TaskLogs {
    /// Its runs' logs, in the order they began; once final, only the run that counts.
    runs: Vec<RunLog>,
    done: bool,
}

#[derive(Debug)]
struct RunLog {
    attempt: Attempt,
    streams: [StreamLog; 2],
}

#[derive(Debug, Default)]
struct StreamLog {
    /// The bytes, while they are not in a file.
    mem: Vec<u8>,
    /// The bytes are in the file (`mem` is empty), `len` of them.
    in_file: bool,
    len: u64,
    /// The worker's offset of the next byte expected.
    received: u64,
    /// Bytes past the caps, counted, not kept.
    dropped: u64,
}

impl StreamLog {
    fn stored(&self) -> u64 {
        if self.in_file {
            self.len
        } else {
            self.mem.len() as u64
        }
    }
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

fn file_name(task: TaskId, attempt: Attempt, stream: OutputStream) -> String {
    format!("{}.{}.{}", task.0, attempt.0, stream.as_str())
}

/// The run and stream a file of the directory holds, if it is one of ours.
fn parse_name(name: &str) -> Option<(TaskId, Attempt, OutputStream)> {
    let mut parts = name.split('.');
    let task = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    let stream = match parts.next()? {
        "stdout" => OutputStream::Stdout,
        "stderr" => OutputStream::Stderr,
        _ => return None,
    };
    parts
        .next()
        .is_none()
        .then_some((TaskId(task), Attempt(attempt), stream))
}

impl LogStore {
    /// A store in memory only (`--no-journal`).
    pub fn in_memory(limits: LogLimits) -> Self {
        LogStore {
            dir: None,
            limits,
            total: 0,
            tasks: HashMap::new(),
            finished: VecDeque::new(),
            removed: HashSet::new(),
            ended_as_tail: HashMap::new(),
            io_warned: false,
        }
    }

    /// A store in `dir` (created if need be), with the logs a previous master left there. Call
    /// [`LogStore::recover`] once the journal is read, to sort them out.
    pub fn open(dir: PathBuf, limits: LogLimits) -> Result<Self, LogStoreError> {
        let err = |source| LogStoreError::Dir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(err)?;
        let mut store = LogStore::in_memory(limits);
        for entry in fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name();
            let Some((task, attempt, stream)) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let logs = store.tasks.entry(task).or_default();
            let run = match logs.runs.iter().position(|r| r.attempt == attempt) {
                Some(i) => &mut logs.runs[i],
                None => {
                    logs.runs.push(RunLog {
                        attempt,
                        streams: Default::default(),
                    });
                    logs.runs.sort_by_key(|r| r.attempt);
                    let i = logs.runs.iter().position(|r| r.attempt == attempt);
                    &mut logs.runs[i.unwrap_or_default()]
                }
            };
            let s = &mut run.streams[index(stream)];
            s.in_file = true;
            s.len = meta.len();
            s.received = meta.len();
            store.total += meta.len();
        }
        store.dir = Some(dir);
        Ok(store)
    }

    /// Sorts out the logs found at `open`: `state(task)` says whether the journal knows the task
    /// (`None`: it does not, and its files go) and whether it is final (then only its latest
    /// run's log is kept, and it joins the budget's queue, oldest file first). Returns the
    /// unfinished tasks that have a log, which the core must know of to end them
    /// (`Core::note_logged`).
    pub fn recover(&mut self, state: impl Fn(TaskId) -> Option<bool>) -> Vec<TaskId> {
        let mut unfinished = Vec::new();
        let mut finals = Vec::new();
        let found: Vec<TaskId> = self.tasks.keys().copied().collect();
        for task in found {
            match state(task) {
                None => self.remove_task(task),
                Some(false) => unfinished.push(task),
                Some(true) => {
                    let Some(mut logs) = self.tasks.remove(&task) else {
                        continue;
                    };
                    let last = logs.runs.pop();
                    for run in logs.runs.drain(..) {
                        self.delete_run(task, &run);
                    }
                    if let Some(run) = last {
                        let mtime = self.mtime(task, &run);
                        logs.runs.push(run);
                        logs.done = true;
                        finals.push((mtime, task));
                        self.tasks.insert(task, logs);
                    }
                }
            }
        }
        finals.sort();
        self.finished.extend(finals.into_iter().map(|(_, t)| t));
        if !self.tasks.is_empty() {
            info!(
                "found the logs of {} tasks ({} bytes) in {}",
                self.tasks.len(),
                self.total,
                self.dir
                    .as_deref()
                    .map(Path::display)
                    .map_or_else(String::new, |d| d.to_string())
            );
        }
        self.keep_budget(0);
        unfinished
    }

    fn mtime(&self, task: TaskId, run: &RunLog) -> std::time::SystemTime {
        STREAMS
            .iter()
            .filter_map(|&s| self.path(task, run.attempt, s))
            .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(std::time::UNIX_EPOCH)
    }

    /// Bytes held now, in memory and files.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Applies an operation of the core's; a `Read` becomes the reply to send.
    pub fn apply(&mut self, op: LogOp) -> Option<(ConnId, FromMaster)> {
        match op {
            LogOp::Append(chunk) => {
                self.append(chunk);
                None
            }
            LogOp::End {
                task,
                attempt,
                stdout_tail,
                stderr_tail,
            } => {
                self.end(task, attempt, [&stdout_tail, &stderr_tail]);
                None
            }
            LogOp::Read {
                conn,
                task,
                stream,
                offset,
                done,
                tail,
            } => Some((conn, self.read(task, stream, offset, done, tail))),
            LogOp::Forget { ranges } => {
                self.forget(&ranges);
                None
            }
        }
    }

    /// Removes the logs of forgotten tasks (all final): their files go, and what is remembered
    /// of them. Walks the ranges' ids or the stored tasks, whichever is fewer.
    fn forget(&mut self, ranges: &[(TaskId, TaskId)]) {
        let ids: u64 = ranges.iter().map(|(a, b)| b.0 - a.0 + 1).sum();
        let inside = |id: TaskId| ranges.iter().any(|&(a, b)| a <= id && id <= b);
        let stored: Vec<TaskId> = if ids <= self.tasks.len() as u64 {
            ranges
                .iter()
                .flat_map(|&(a, b)| (a.0..=b.0).map(TaskId))
                .filter(|id| self.tasks.contains_key(id))
                .collect()
        } else {
            self.tasks
                .keys()
                .copied()
                .filter(|&id| inside(id))
                .collect()
        };
        for task in stored {
            self.remove_task(task);
        }
        if !self.removed.is_empty() {
            self.removed.retain(|&id| !inside(id));
        }
        if !self.ended_as_tail.is_empty() {
            self.ended_as_tail.retain(|&id, _| !inside(id));
        }
        // The budget's queue drops them too (removing a log that is gone is a no-op anyway).
        self.finished.retain(|&id| !inside(id));
    }

    fn path(&self, task: TaskId, attempt: Attempt, stream: OutputStream) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(file_name(task, attempt, stream)))
    }

    fn append(&mut self, chunk: OutputChunk) {
        let OutputChunk {
            task: r,
            stream,
            offset,
            bytes,
        } = chunk;
        // The offset is the worker's word: a chunk that would end past u64::MAX is no stream's
        // (the core drops it too), and `received` below must not wrap.
        if offset.checked_add(bytes.len() as u64).is_none() {
            return;
        }
        let logs = self.tasks.entry(r.task).or_default();
        if logs.done {
            return; // the core ended it; nothing after that counts
        }
        let i = match logs.runs.iter().position(|run| run.attempt == r.attempt) {
            Some(i) => i,
            None => {
                if logs.runs.len() == MAX_RUNS_PER_TASK {
                    let oldest = logs.runs.remove(0);
                    self.delete_run(r.task, &oldest);
                }
                let logs = self.tasks.entry(r.task).or_default();
                logs.runs.push(RunLog {
                    attempt: r.attempt,
                    streams: Default::default(),
                });
                logs.runs.len() - 1
            }
        };
        let s = &mut self.tasks.entry(r.task).or_default().runs[i].streams[index(stream)];
        let mut bytes = &bytes[..];
        // Bytes sent twice (a frame resent after a reconnect) are taken once; bytes that never
        // came (a frame lost with a connection) are marked where they are missing, unless the
        // stream is past its limit: then the worker skipped them (it sends no more than the
        // limit, and an empty chunk where the stream ended) and they only count as dropped.
        let skip = s.received.saturating_sub(offset);
        let gap = offset.saturating_sub(s.received);
        if gap == 0 && skip >= bytes.len() as u64 {
            return;
        }
        bytes = &bytes[(skip as usize).min(bytes.len())..];
        s.received = offset.max(s.received) + bytes.len() as u64;
        if gap > 0 && s.stored() >= self.limits.per_stream {
            s.dropped += gap;
        } else if gap > 0 {
            let line =
                format!(
                "{}[ballast: {gap} bytes of this output were lost on the way from the worker]\n",
                if self.ends_with_newline(r.task, i, stream) { "" } else { "\n" }
            );
            self.write(r.task, i, stream, line.as_bytes());
        }
        let s = &self.tasks[&r.task].runs[i].streams[index(stream)];
        let room = self.limits.per_stream.saturating_sub(s.stored());
        let mut take = (bytes.len() as u64).min(room);
        if self.total + take > self.limits.budget {
            self.keep_budget(take);
            take = take.min(self.limits.budget.saturating_sub(self.total));
        }
        let dropped = bytes.len() as u64 - take;
        if let Some(logs) = self.tasks.get_mut(&r.task) {
            logs.runs[i].streams[index(stream)].dropped += dropped;
        }
        if take > 0 {
            self.write(r.task, i, stream, &bytes[..take as usize]);
        }
    }

    fn ends_with_newline(&self, task: TaskId, run: usize, stream: OutputStream) -> bool {
        let Some(r) = self.tasks.get(&task).and_then(|l| l.runs.get(run)) else {
            return true;
        };
        let s = &r.streams[index(stream)];
        if s.stored() == 0 {
            return true;
        }
        if !s.in_file {
            return s.mem.last() == Some(&b'\n');
        }
        let Some(path) = self.path(task, r.attempt, stream) else {
            return true;
        };
        let mut last = [0u8; 1];
        File::open(path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(s.len - 1))?;
                f.read_exact(&mut last)
            })
            .map_or(true, |()| last[0] == b'\n')
    }

    /// Appends to the stream of run number `run`, spilling it to its file when it grows past
    /// `SPILL_BYTES` (with a data dir). Counted in `total` whether or not it reached the disk.
    fn write(&mut self, task: TaskId, run: usize, stream: OutputStream, bytes: &[u8]) {
        let path = {
            let r = &self.tasks[&task].runs[run];
            self.path(task, r.attempt, stream)
        };
        let Some(logs) = self.tasks.get_mut(&task) else {
            return;
        };
        let s = &mut logs.runs[run].streams[index(stream)];
        let result = match path {
            Some(path) if s.in_file || s.mem.len() + bytes.len() > SPILL_BYTES => {
                let spill = std::mem::take(&mut s.mem);
                let first = !s.in_file;
                s.in_file = true;
                s.len += (spill.len() + bytes.len()) as u64;
                append_file(&path, first, &spill, bytes)
            }
            _ => {
                s.mem.extend_from_slice(bytes);
                Ok(())
            }
        };
        self.total += bytes.len() as u64;
        if let Err(e) = result {
            self.io_error(&format!("cannot write the log of task {task}: {e}"));
        }
    }

    fn io_error(&mut self, message: &str) {
        if std::mem::replace(&mut self.io_warned, true) {
            log::debug!("{message}");
        } else {
            warn!("{message} (further log store errors at debug)");
        }
    }

    fn end(&mut self, task: TaskId, attempt: Option<Attempt>, tails: [&String; 2]) {
        let Some(mut logs) = self.tasks.remove(&task) else {
            return;
        };
        // Runs a reader may have read: any but the one that counts means a switch.
        let runs_before = logs.runs.len();
        let winner = attempt.or_else(|| logs.runs.last().map(|r| r.attempt));
        let keep = match attempt {
            Some(a) => logs.runs.iter().position(|r| r.attempt == a),
            None => logs.runs.len().checked_sub(1),
        };
        let kept = keep.map(|i| logs.runs.remove(i));
        for run in logs.runs.drain(..) {
            self.delete_run(task, &run);
        }
        let Some(run) = kept else {
            // The run that counts printed nothing: its log is its (empty) tail.
            self.note_ended_as_tail(task, winner, runs_before >= 1);
            return;
        };
        logs.runs.push(run);
        logs.done = true;
        self.tasks.insert(task, logs);
        let mut any = false;
        for stream in STREAMS {
            let i = index(stream);
            let s = &self.tasks[&task].runs[0].streams[i];
            let dropped = s.dropped;
            if dropped > 0 {
                let line =
                    format!(
                    "{}[ballast: {dropped} more bytes were dropped: the log limit is {} bytes a \
                     stream (--log-limit), {} in all (--log-budget)]\n",
                    if self.ends_with_newline(task, 0, stream) { "" } else { "\n" },
                    self.limits.per_stream,
                    self.limits.budget
                );
                self.write(task, 0, stream, line.as_bytes());
            }
            let attempt = self.tasks[&task].runs[0].attempt;
            let path = self.path(task, attempt, stream);
            let Some(logs) = self.tasks.get_mut(&task) else {
                return;
            };
            let s = &mut logs.runs[0].streams[i];
            // A stream that never passed the tail's size is all in the tail when the lengths
            // agree: then the tail is the log, even if the store missed a piece of it (held in
            // memory by a master that died; marked as a gap) that the worker's result has. No
            // U+FFFD: then the tail is the bytes as printed, not their lossy UTF-8.
            let whole_tail = s.dropped == 0
                && s.received <= SPILL_BYTES as u64
                && s.received == tails[i].len() as u64
                && !tails[i].contains('\u{FFFD}');
            if !s.in_file && (s.mem == tails[i].as_bytes() || whole_tail) {
                // The result's tail is the whole output: nothing to keep twice.
                self.total -= s.mem.len() as u64;
                s.mem = Vec::new();
                continue;
            }
            if s.stored() == 0 {
                continue;
            }
            any = true;
            if !s.in_file {
                if let Some(path) = path {
                    let spill = std::mem::take(&mut s.mem);
                    s.in_file = true;
                    s.len = spill.len() as u64;
                    if let Err(e) = append_file(&path, true, &spill, &[]) {
                        self.io_error(&format!("cannot write the log of task {task}: {e}"));
                    }
                }
            }
        }
        if any {
            self.finished.push_back(task);
        } else {
            self.tasks.remove(&task);
            self.note_ended_as_tail(task, winner, runs_before > 1);
        }
    }

    fn note_ended_as_tail(&mut self, task: TaskId, winner: Option<Attempt>, switched: bool) {
        if let (true, Some(a)) = (switched, winner) {
            if self.ended_as_tail.len() < MAX_REMEMBERED_REMOVALS {
                self.ended_as_tail.insert(task, a);
            }
        }
    }

    /// Removes the logs of the oldest finished tasks until `more` bytes fit the budget (or no
    /// finished log is left: the logs of running tasks are never removed).
    fn keep_budget(&mut self, more: u64) {
        while self.total + more > self.limits.budget {
            let Some(task) = self.finished.pop_front() else {
                return;
            };
            let before = self.total;
            self.remove_task(task);
            if self.removed.len() < MAX_REMEMBERED_REMOVALS {
                self.removed.insert(task);
            }
            info!(
                "removed the log of task {task} ({} bytes) to stay within --log-budget ({} bytes)",
                before - self.total,
                self.limits.budget
            );
        }
    }

    fn remove_task(&mut self, task: TaskId) {
        if let Some(logs) = self.tasks.remove(&task) {
            for run in &logs.runs {
                self.delete_run(task, run);
            }
        }
    }

    fn delete_run(&mut self, task: TaskId, run: &RunLog) {
        for stream in STREAMS {
            let s = &run.streams[index(stream)];
            self.total -= s.stored().min(self.total);
            if s.in_file {
                if let Some(path) = self.path(task, run.attempt, stream) {
                    if let Err(e) = fs::remove_file(&path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            self.io_error(&format!("cannot remove {}: {e}", path.display()));
                        }
                    }
                }
            }
        }
    }

    /// The answer to a read of `task`'s `stream` from `offset`: its stored log (of the run that
    /// counts, or of the latest run while it runs), else the result's tail for a final task.
    fn read(
        &mut self,
        task: TaskId,
        stream: OutputStream,
        offset: u64,
        done: bool,
        tail: Option<String>,
    ) -> FromMaster {
        // A final task's stream with nothing stored was its tail (or never had a byte).
        let run = self
            .tasks
            .get(&task)
            .and_then(|l| l.runs.last())
            .filter(|run| {
                let s = &run.streams[index(stream)];
                !done || s.in_file || !s.mem.is_empty()
            });
        let Some(run) = run else {
            let bytes = tail.map(String::into_bytes).unwrap_or_default();
            let end = bytes.len() as u64;
            let from = offset.min(end) as usize;
            let to = (from + MAX_LOG_READ_BYTES).min(bytes.len());
            let piece = bytes[from..to].to_vec();
            return FromMaster::Log {
                task,
                stream,
                offset,
                done: done && to == bytes.len(),
                end,
                bytes: piece,
                removed: self.removed.contains(&task),
                attempt: self.ended_as_tail.get(&task).copied(),
            };
        };
        let attempt = run.attempt;
        let s = &run.streams[index(stream)];
        let end = s.stored();
        let want = end.saturating_sub(offset).min(MAX_LOG_READ_BYTES as u64) as usize;
        let bytes = if want == 0 {
            Vec::new()
        } else if s.in_file {
            let path = self.path(task, attempt, stream);
            match path.map(|p| read_at(&p, offset, want)) {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    self.io_error(&format!("cannot read the log of task {task}: {e}"));
                    Vec::new()
                }
                None => Vec::new(),
            }
        } else {
            s.mem[offset as usize..offset as usize + want].to_vec()
        };
        let reached = offset + bytes.len() as u64 >= end;
        FromMaster::Log {
            task,
            stream,
            offset,
            bytes,
            end,
            done: done && reached,
            removed: false,
            attempt: Some(attempt),
        }
    }
}

/// A size as `--log-limit` takes it: bytes, or a number with `K`, `M`, `G` (powers of 1024;
/// `KiB`, `KB`, `MiB` ... spell the same), e.g. `64MiB`, `1.5G`, `500k`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "expected a size such as 64MiB or 10G, got {text:?}"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 64MiB or 10G, got {text:?}"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size out of range: {text:?}"));
    }
    Ok(bytes as u64)
}

/// Appends `a` then `b` to the file at `path` (created, or emptied, when `create`).
fn append_file(path: &Path, create: bool, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut file = if create {
        File::create(path)?
    } else {
        OpenOptions::new().append(true).open(path)?
    };
    file.write_all(a)?;
    file.write_all(b)
}

fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}
