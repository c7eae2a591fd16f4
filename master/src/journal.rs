//! The master's durability journal: an embedded SQLite database (WAL mode) at `DIR/ballast.db`.
//!
//! It keeps only what a restart needs: every accepted submission (one row per batch: the spec
//! once and an id range, so a million `--count` copies are one row) and every final outcome (one
//! row per commit holding that turn's finals, as a blob of `protocol` frames; a later outcome for
//! an id replaces an earlier one). Assignments and attempts in flight are not journaled: an
//! unfinished task is simply run again after a restart.
//!
//! Group commit: `record_*` calls accumulate in one open transaction and `commit` ends it, so the
//! shell pays one fsync per event-loop turn, however many records the turn produced. Finals are
//! cheaper still: `record_final` only appends a frame to a buffer, and `commit` stores the buffer
//! as one row, so SQLite's per-row work is paid once per turn, not once per task. Only committed
//! work survives a crash or a drop; records added since the last commit are lost.
//!
//! Call order for one loop turn: any number of `record_submit` / `record_final`, then `commit`.
//! IMPORTANT: only after `commit` returns may the turn's replies go to sockets, so no client hears
//! of work that could still be lost. Ids are dense from 1 and batches are recorded in id order,
//! exactly as the core hands them out; recovery checks the same.
//!
//! Every error is sticky: after one, the journal is behind the caller's state, so every later
//! call fails with [`JournalError::Poisoned`] and the master must stop (a restart recovers from
//! the last commit). The database is opened in exclusive locking mode: while a master runs, no
//! other process (a second master, the `sqlite3` shell) can open it.
//!
//! The schema is versioned (`SCHEMA_VERSION`): `open` migrates a journal of an older version in
//! place (see `migrate`) and refuses one of a newer version.
//!
//! Beside the database, `marks` keeps how far the last commit got (written after each commit,
//! before its replies leave): `open` refuses a database that holds less ([`JournalError::Lost`]),
//! which is how a WAL damaged in the middle is found, since SQLite replays it silently up to the
//! bad frame. [`OpenOptions::accept_loss`] starts anyway and records the lost ids as failed.

mod marks;
mod migrate;
mod recover;
#[cfg(test)]
mod tests;

use crate::core::{EpochStart, FinalResult, JobRecord, Outcome, RestoredTask, StoredAt};
use log::{error, info, warn};
use marks::{MarkValues, Marks};
use protocol::{Incarnation, TaskId, TaskSpec, TaskState};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

/// The database file inside the data directory.
pub const DB_FILE: &str = "ballast.db";
pub use marks::MARKS_FILE;

/// How `open` treats a journal that holds less than its marks say it committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Start anyway (`master --accept-journal-loss`): the lost ids are recorded as failed tasks
    /// (so no id is ever handed out twice, and a client asking about one hears why), the
    /// incarnations go on above the lost ones, and the loss is logged. Without it `open` refuses
    /// with [`JournalError::Lost`].
    pub accept_loss: bool,
}

/// The schema this master writes. Bump it with every change to the tables below or to
/// `FinalEntry`, and teach `inspect` and `migrate` to upgrade from the previous one.
/// Version 2 added `copies` to `FinalEntry`; version 3 the identity tables (`IDENTITY_TABLES`);
/// version 4 the `jobs` table (`JOBS_TABLE`); version 5 retention (`FORGET_TABLES`: the
/// `forgotten` ranges, the id span of each `final_batches` row) and incremental vacuum.
pub const SCHEMA_VERSION: i64 = 5;

/// The tables of versions 1 and 2. STRICT so SQLite rejects a value of the wrong type instead of
/// storing it.
const SCHEMA: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
-- Ids first_id .. first_id + count were accepted with this spec (serde_json of TaskSpec).
CREATE TABLE batches (
    first_id     INTEGER PRIMARY KEY,
    count        INTEGER NOT NULL,
    spec         TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL
) STRICT;
-- The final outcomes of one commit (rarely a few rows per commit, see FINAL_BLOB_FLUSH_BYTES):
-- protocol frames (protocol::encode_frame) of FinalEntry, back to back. Replayed in seq order,
-- so for an id recorded twice the later outcome wins.
CREATE TABLE final_batches (
    seq     INTEGER PRIMARY KEY,
    records BLOB NOT NULL
) STRICT;
";

/// Added in version 3: who this master is, and every start of it. A worker's report about a run
/// is credited to the task that run belongs to by its incarnation (see `master/scheduler/src/epochs.rs`).
pub(crate) const IDENTITY_TABLES: &str = "
-- One row: the random id that names this data dir to workers (Welcome.master_id).
CREATE TABLE master (id INTEGER NOT NULL) STRICT;
-- One row per start: the incarnation, and the journal's next id then (every id it commits is at
-- least that, every id an earlier one committed is below it).
CREATE TABLE incarnations (
    incarnation INTEGER PRIMARY KEY,
    first_id    INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL
) STRICT;
";

/// Added in version 4: every submission is a job, its tasks one range of ids. Jobs are dense
/// from 1 and their ranges follow each other; a version 3 journal gets one job per batch.
pub(crate) const JOBS_TABLE: &str = "
-- Tasks first_id .. first_id + count are job id, named name (at most MAX_JOB_NAME_BYTES).
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    first_id     INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    submitted_ms INTEGER NOT NULL
) STRICT;
";

/// Added in version 5: tasks forgotten (`master forget`, `--keep-finished`). Their ids stay
/// used (the next id is past every range here even when no batch reaches it), their outcomes
/// are filtered out when the finals are replayed, and rows that hold only forgotten tasks are
/// deleted: a `batches` row once its whole range is forgotten, a `final_batches` row once its
/// `min_id ..= max_id` is (NULL: not known, never deleted). The newest `final_batches` row is
/// emptied rather than deleted, so `seq` (what the marks check) never goes back.
pub(crate) const FORGET_TABLES: &str = "
-- Tasks first_id ..= last_id are forgotten. Disjoint; adjacent ranges are merged.
CREATE TABLE forgotten (
    first_id INTEGER PRIMARY KEY,
    last_id  INTEGER NOT NULL
) STRICT;
ALTER TABLE final_batches ADD COLUMN min_id INTEGER;
ALTER TABLE final_batches ADD COLUMN max_id INTEGER;
-- So a forget finds the rows inside its range without a scan of every row.
CREATE INDEX final_batches_by_max_id ON final_batches (max_id);
CREATE INDEX jobs_by_first_id ON jobs (first_id);
";

/// Pages `compact_step` gives back per call (4 KiB each): about a millisecond of work, so a
/// turn never stalls on a vacuum.
pub const VACUUM_PAGES_PER_STEP: u32 = 128;

const INSERT_JOB: &str =
    "INSERT INTO jobs (id, name, first_id, count, submitted_ms) VALUES (?1, ?2, ?3, ?4, ?5)";

const INSERT_BATCH: &str =
    "INSERT INTO batches (first_id, count, spec, submitted_ms) VALUES (?1, ?2, ?3, ?4)";
/// `seq` is chosen before the row is written (one more than the largest so far; the largest is
/// never deleted, see `FORGET_TABLES`), so each record knows its place (`StoredAt`) as it is
/// buffered.
const INSERT_FINALS: &str =
    "INSERT INTO final_batches (seq, records, min_id, max_id) VALUES (?1, ?2, ?3, ?4)";
const SELECT_FINALS: &str = "SELECT records FROM final_batches WHERE seq = ?1";

/// A turn's finals buffer is written out as a row once it reaches this, before the commit: it
/// bounds the buffer (a final can carry two 64 KiB output tails, a turn can hold thousands) and
/// keeps every blob far below SQLite's 1 GB limit. Ordinary turns stay one row.
const FINAL_BLOB_FLUSH_BYTES: usize = 4 << 20;

/// After a checkpoint, a WAL grown by one huge turn is truncated back to this, so a burst does
/// not pin its disk space forever.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

/// What the finals buffer keeps allocated between turns.
const FINAL_BUF_KEEP_BYTES: usize = 256 << 10;

/// Entries of the uncommitted-finals list kept allocated between commits (16 B each).
const COMMITTED_KEEP: usize = 1 << 16;

/// Everything the journal held at `open`: enough to rebuild the master's task table.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// Every recorded task in id order, as the core's `restore` takes them. Copies of one batch
    /// share one `Arc<TaskSpec>`.
    pub tasks: Vec<RestoredTask>,
    /// The first id never recorded (1 for an empty journal).
    pub next_id: TaskId,
    /// Names this data dir; made once, at creation.
    pub master_id: u64,
    /// Every start of a master on this journal, this one last (recorded and committed by `open`).
    pub history: Vec<EpochStart>,
    /// Every job in id order (dense from 1, their ranges following each other from task 1);
    /// tasks past the last one's range have none yet (the core names them).
    pub jobs: Vec<JobRecord>,
    /// Forgotten tasks (inclusive, disjoint, in order): not in `tasks`, ids below `next_id`.
    pub forgotten: Vec<(TaskId, TaskId)>,
}

/// One final outcome inside a `final_batches` blob, one frame each. Borrows on the way in (no copy
/// of the output tails), owns on the way out (`FrameDecoder` needs `DeserializeOwned`).
/// IMPORTANT: this is the on-disk format: a change to it is a schema change (bincode frames are
/// positional, so even a new field at the end breaks reading older blobs).
#[derive(Debug, Serialize, Deserialize)]
struct FinalEntry<'a> {
    id: u64,
    state: TaskState,
    attempts: u32,
    /// Since version 2.
    copies: u32,
    worker: Option<Cow<'a, str>>,
    exit_code: Option<i32>,
    stdout: Cow<'a, str>,
    stderr: Cow<'a, str>,
    error: Option<Cow<'a, str>>,
    started_ms: Option<u64>,
    finished_ms: u64,
}

impl<'a> FinalEntry<'a> {
    fn borrowed(id: TaskId, rec: &'a Outcome) -> FinalEntry<'a> {
        FinalEntry {
            id: id.0,
            state: rec.state,
            attempts: rec.attempts,
            copies: rec.copies,
            worker: rec.worker.as_deref().map(Cow::Borrowed),
            exit_code: rec.exit_code,
            stdout: Cow::Borrowed(&rec.stdout),
            stderr: Cow::Borrowed(&rec.stderr),
            error: rec.error.as_deref().map(Cow::Borrowed),
            started_ms: rec.started_ms,
            finished_ms: rec.finished_ms,
        }
    }

    fn into_record(self) -> (u64, Outcome) {
        let rec = Outcome {
            state: self.state,
            attempts: self.attempts,
            copies: self.copies,
            worker: self.worker.map(|w| Arc::from(w.as_ref())),
            exit_code: self.exit_code,
            stdout: self.stdout.into_owned(),
            stderr: self.stderr.into_owned(),
            error: self.error.map(Cow::into_owned),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
        };
        (self.id, rec)
    }
}

/// What one `commit` covered, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Records made durable; 0 means the commit was a no-op (no write, no fsync).
    pub records: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {}", path.display(), protocol::Cause(cause))]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The data directory's path names a file (or something else that is not a directory).
    #[error("data directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// The file at the database path is not an SQLite database, or it is damaged.
    #[error(
        "{}: the journal is damaged, or not an SQLite database ({source}); the master cannot \
         read it: restore the data directory from a backup, or move it aside to start empty \
         (its tasks are then lost)",
        path.display()
    )]
    NotADatabase {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// Another process (most likely another master) has the database open.
    #[error("{}: locked by another process (another master on this data dir?)", path.display())]
    Locked { path: PathBuf },
    /// An SQLite database some other program wrote: it has tables but no ballast schema.
    #[error("{}: an SQLite database, but not a ballast journal; left alone", path.display())]
    NotBallast { path: PathBuf },
    /// Written by a newer ballast whose schema this master does not know.
    #[error(
        "{}: database schema version {found} is newer than this master ({supported}); upgrade ballast",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The schema version row is missing, duplicated or holds a version that never existed.
    #[error("{}: bad schema version: {detail}", path.display())]
    BadSchemaVersion { path: PathBuf, detail: String },
    /// SQLite would not switch to WAL mode (some file systems cannot do it).
    #[error("{}: cannot enable WAL mode (journal mode stays {mode})", path.display())]
    NoWal { path: PathBuf, mode: String },
    /// A stored spec does not parse as this version's `TaskSpec`, or is not a valid spec.
    #[error("{}: batches row first_id={first_id}: bad task spec: {detail}", path.display())]
    BadSpec {
        path: PathBuf,
        first_id: i64,
        detail: String,
    },
    /// A stored row holds an impossible value (overlapping ranges, an unknown state, ...).
    #[error("{}: {table} row {id}: {detail}", path.display())]
    BadRow {
        path: PathBuf,
        table: &'static str,
        id: i64,
        detail: String,
    },
    /// `record_submit` whose range does not start right after the last one recorded (ids are
    /// dense from 1, as the core hands them out).
    #[error("cannot journal tasks from {first}: the next id to record is {expected}")]
    OutOfOrder { first: TaskId, expected: TaskId },
    /// `record_job` with another id than the next, or a range that does not follow the last
    /// job's (jobs are dense from 1, as the core makes them).
    #[error(
        "cannot journal job {job} from task {first}: the next job to record is {expected_job}, \
         from task {expected_first}"
    )]
    JobOutOfOrder {
        job: protocol::JobId,
        first: TaskId,
        expected_job: protocol::JobId,
        expected_first: TaskId,
    },
    /// `record_final` for an id that was never recorded as submitted.
    #[error("cannot journal the outcome of task {id}: it was never recorded as submitted")]
    UnknownTask { id: TaskId },
    /// `record_final` with a state that is not final.
    #[error("cannot journal task {id} as final in state {}", state.as_str())]
    NotFinal { id: TaskId, state: TaskState },
    /// A value the journal cannot store faithfully (above SQLite's i64, a non-finite size ...).
    #[error("cannot journal {what}: {detail}")]
    Unrepresentable { what: &'static str, detail: String },
    /// The journal cannot be written: a read-only file system, a directory or file without
    /// write permission.
    #[error(
        "{}: read-only ({detail}): make the data directory writable or choose another --data-dir",
        path.display()
    )]
    ReadOnly { path: PathBuf, detail: String },
    /// The disk (or the user's quota) is full.
    #[error("{}: no space left on device ({detail})", path.display())]
    NoSpace { path: PathBuf, detail: String },
    /// Any other SQLite failure: an I/O error, ...
    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// An earlier error left the journal behind the caller's state; restart to recover.
    #[error("journal unusable after an earlier error ({first}); restart the master")]
    Poisoned { first: String },
    /// The database holds less than its marks file says was committed (and acknowledged): the
    /// WAL or the database was damaged, truncated or replaced by an older copy. SQLite itself
    /// cannot tell: its WAL replay stops quietly at the first bad frame.
    #[error(
        "{}: the journal lost acknowledged work: {loss} ({} records more than the database \
         holds; the WAL or the database was damaged or replaced). The master will not start on \
         it: restore the data directory from a backup, or start with --accept-journal-loss to \
         record the lost tasks as failed and go on",
        path.display(),
        marks.display()
    )]
    Lost {
        path: PathBuf,
        marks: PathBuf,
        loss: Loss,
    },
    /// The marks file holds bytes but no valid record, so the journal cannot be checked.
    #[error(
        "{}: the journal's marks file is damaged, so the master cannot check that the journal \
         is whole; start with --accept-journal-loss to go on without the check (it writes new marks)",
        marks.display()
    )]
    MarksDamaged { marks: PathBuf },
    /// The marks file belongs to another journal (another master id) than the database.
    #[error(
        "{}: the marks file was written for another journal (master id {found:#x}, this one is \
         {expected:#x}): the database was replaced; start with --accept-journal-loss to go on \
         with this database (it writes new marks)",
        marks.display()
    )]
    ForeignMarks {
        marks: PathBuf,
        found: u64,
        expected: u64,
    },
    /// The marks file could not be read or written.
    #[error("{}: {source}", marks.display())]
    MarksIo {
        marks: PathBuf,
        source: std::io::Error,
    },
}

/// What a journal lost, by its marks: the last committed state it no longer reaches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loss {
    /// Accepted task ids the database does not hold: `first ..= last`.
    pub ids: Option<(TaskId, TaskId)>,
    /// Commits of final outcomes it does not hold: the tasks they finished look unfinished and
    /// run again.
    pub final_commits: u64,
    /// Starts of the master it does not hold.
    pub incarnations: u64,
}

impl Loss {
    fn is_empty(&self) -> bool {
        self.ids.is_none() && self.final_commits == 0 && self.incarnations == 0
    }

    /// How many task ids were lost.
    pub fn lost_ids(&self) -> u64 {
        self.ids.map_or(0, |(first, last)| last.0 - first.0 + 1)
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some((first, last)) = self.ids {
            parts.push(format!(
                "tasks {first} to {last} ({} tasks) were accepted but are missing",
                self.lost_ids()
            ));
        }
        if self.final_commits > 0 {
            parts.push(format!(
                "the results of {} commits are missing (those tasks would run again)",
                self.final_commits
            ));
        }
        if self.incarnations > 0 {
            parts.push(format!(
                "{} starts of the master are missing",
                self.incarnations
            ));
        }
        if parts.is_empty() {
            parts.push("nothing".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// The open journal. Not `Sync`: it belongs to the event loop.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// Records added since the last commit; a transaction is open exactly when this is non-zero.
    pending: usize,
    /// The id the next `record_submit` must start at: one past the last recorded (committed or
    /// not).
    next_id: u64,
    /// Reused for each spec's JSON so `record_submit` does not allocate per call.
    spec_buf: Vec<u8>,
    /// This turn's finals not yet in `final_batches`: frames of `FinalEntry`. Reused across
    /// turns; see `FINAL_BLOB_FLUSH_BYTES` for its bound.
    final_buf: Vec<u8>,
    /// The first error, once one happened; see `JournalError::Poisoned`.
    poisoned: Option<String>,
    /// The id the next `record_job` must have, and the first task id it must start at: jobs
    /// are dense and their ranges follow each other.
    next_job: u64,
    jobs_end: u64,
    /// The largest `final_batches.seq` written (committed or not).
    finals_seq: u64,
    /// Where each final recorded since the last commit sits (`StoredAt`), in record order.
    uncommitted: Vec<(TaskId, StoredAt)>,
    /// The same for the finals the last `commit` made durable (`committed_finals`).
    committed: Vec<(TaskId, StoredAt)>,
    /// The last `final_batches` blob read back (`read_final`): a results page reads many
    /// tasks of one blob in a row. At most one blob (a few MiB).
    read_cache: Option<(u64, Vec<u8>)>,
    /// What every commit writes to the marks file after SQLite's commit; `None` only inside
    /// `open`, before the file is made.
    marks: Option<Marks>,
    /// The data dir's id and this start's incarnation, for the marks.
    master_id: u64,
    incarnation: u64,
    /// The lowest and highest id in `final_buf` (`final_batches.min_id`, `max_id`).
    final_span: Option<(u64, u64)>,
    /// Forgotten ranges, merged (first -> last), as the `forgotten` table holds them.
    forgotten: std::collections::BTreeMap<u64, u64>,
    /// Rows were deleted: `compact_step` has pages to give back.
    vacuum_due: bool,
}

impl Journal {
    /// Opens (creating the directory and database if missing) the journal in `dir` and reads back
    /// everything committed. Fails with a typed error, and changes nothing, when the file is not a
    /// ballast journal this master understands, or when it holds less than its marks say.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
        Journal::open_with(dir, OpenOptions::default())
    }

    /// [`Journal::open`] with options.
    pub fn open_with(
        dir: &Path,
        options: OpenOptions,
    ) -> Result<(Journal, Recovered), JournalError> {
        if dir.exists() && !dir.is_dir() {
            return Err(JournalError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|cause| JournalError::CreateDir {
            path: dir.to_path_buf(),
            cause,
        })?;
        let path = dir.join(DB_FILE);
        check_writable(dir, &path)?;
        let marks_path = dir.join(MARKS_FILE);
        let found_marks = marks::read(&marks_path).map_err(|source| JournalError::MarksIo {
            marks: marks_path.clone(),
            source,
        })?;
        let conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
        // IMPORTANT: until the journal passed its checks, closing must not checkpoint: a refused
        // start leaves the WAL exactly as it found it (frames past a damaged one included), for
        // whoever tries to rescue it.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| classify(&path, e))?;
        let found = prepare(&conn, &path).map_err(|e| refine(&conn, e))?;
        let mut recovered = match found {
            Found::Empty | Found::Current => recover::read_all(&conn, &path)?,
            Found::V4 => {
                let recovered = migrate::from_v4(&conn, &path)?;
                info!(
                    "journal schema 4 migrated to {SCHEMA_VERSION} ({})",
                    path.display()
                );
                recovered
            }
            Found::V3 => {
                let recovered = migrate::from_v3(&conn, &path)?;
                info!(
                    "journal schema 3 migrated to {SCHEMA_VERSION}: {} jobs, one per batch ({})",
                    recovered.jobs.len(),
                    path.display()
                );
                recovered
            }
            Found::V2 => {
                let recovered = migrate::from_v2(&conn, &path)?;
                info!(
                    "journal schema 2 migrated to {SCHEMA_VERSION} ({})",
                    path.display()
                );
                recovered
            }
            Found::V1 => {
                let (recovered, rewritten) = migrate::from_v1(&conn, &path)?;
                info!(
                    "journal schema 1 migrated to {SCHEMA_VERSION}: {rewritten} outcome rows \
                     rewritten ({})",
                    path.display()
                );
                recovered
            }
        };
        let reached = reached(&conn, &path, recovered.next_id)?;
        let check = check_marks(found_marks, &reached, &path, &marks_path, options)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
            .map_err(|e| classify(&path, e))?;
        enable_incremental_vacuum(&conn, &path)?;
        let mut journal = Journal {
            conn,
            path,
            pending: 0,
            next_id: recovered.next_id.0,
            spec_buf: Vec::with_capacity(256),
            final_buf: Vec::new(),
            poisoned: None,
            next_job: recovered.jobs.len() as u64 + 1,
            jobs_end: recovered.jobs.last().map_or(1, |j| j.first.0 + j.count),
            finals_seq: reached.finals_seq,
            uncommitted: Vec::new(),
            committed: Vec::new(),
            read_cache: None,
            marks: None,
            master_id: 0,
            incarnation: 0,
            final_span: None,
            forgotten: recovered
                .forgotten
                .iter()
                .map(|&(a, b)| (a.0, b.0))
                .collect(),
            vacuum_due: false,
        };
        let mut min_incarnation = 0;
        let mut master_hint = None;
        if let MarksCheck::Accepted { loss, marks } = &check {
            min_incarnation = marks.incarnation;
            if reached.master_id.is_none() {
                master_hint = Some(marks.master_id);
            }
            journal.accept_loss(loss, &mut recovered)?;
        }
        let (master_id, history) = start_incarnation(
            &journal.conn,
            &journal.path,
            recovered.next_id,
            min_incarnation,
            master_hint,
        )
        .map_err(|e| refine(&journal.conn, e))?;
        recovered.master_id = master_id;
        journal.master_id = master_id;
        journal.incarnation = history.last().map_or(0, |s| u64::from(s.incarnation.0));
        recovered.history = history;
        let values = journal.mark_values();
        let marks = Marks::create(&marks_path, values)
            .map_err(|source| marks_io_error(&journal.path, &marks_path, source))?;
        journal.marks = Some(marks);
        Ok((journal, recovered))
    }

    /// Records the ids the marks say were accepted, and the database lost, as failed tasks (a
    /// client asking about one hears why; no id is handed out twice), and says loudly what is
    /// gone. Called by `open` with `--accept-journal-loss`, before the new incarnation.
    fn accept_loss(&mut self, loss: &Loss, recovered: &mut Recovered) -> Result<(), JournalError> {
        error!(
            "journal {}: STARTING WITH LOST WORK (--accept-journal-loss): {loss}",
            self.path.display()
        );
        let Some((first, last)) = loss.ids else {
            return Ok(());
        };
        let count = last.0 - first.0 + 1;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // What the task was is gone with it: a placeholder keeps the ids dense.
        let spec = Arc::new(TaskSpec::new(protocol::TaskKind::Sleep { ms: 0 }));
        let outcome = Outcome {
            state: TaskState::Failed,
            attempts: 0,
            copies: 0,
            worker: None,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(format!(
                "lost: the master accepted this task, but its journal was damaged and lost it \
                 (tasks {first} to {last}); started with --accept-journal-loss"
            )),
            started_ms: None,
            finished_ms: now_ms,
        };
        if self.jobs_end == first.0 {
            // A job for them too, unless jobs were lost with them (the core names those).
            let job = JobRecord {
                id: protocol::JobId(self.next_job),
                name: "lost (--accept-journal-loss)".into(),
                first,
                count,
                submitted_ms: now_ms,
            };
            self.record_job(&job)?;
            recovered.jobs.push(job);
        }
        self.record_submit(first, count, &spec, now_ms)?;
        if recovered.tasks.try_reserve(count as usize).is_err() {
            return Err(JournalError::Unrepresentable {
                what: "the lost tasks",
                detail: format!("{count} tasks do not fit in memory"),
            });
        }
        for id in first.0..=last.0 {
            self.record_final(TaskId(id), &outcome)?;
            recovered.tasks.push(RestoredTask {
                id: TaskId(id),
                spec: Arc::clone(&spec),
                submitted_ms: now_ms,
                stored: None,
                outcome: Some(Box::new(outcome.clone())),
            });
        }
        self.commit()?;
        recovered.next_id = TaskId(last.0 + 1);
        warn!(
            "journal {}: tasks {first} to {last} ({count}) recorded as failed (lost)",
            self.path.display()
        );
        Ok(())
    }

    fn mark_values(&self) -> MarkValues {
        MarkValues {
            master_id: self.master_id,
            next_id: self.next_id,
            finals_seq: self.finals_seq,
            incarnation: self.incarnation,
        }
    }

    /// Records that ids `first .. first + count` were accepted, all with `spec`: one row whatever
    /// `count` is. Durable at the next `commit`. An empty range records nothing.
    pub fn record_submit(
        &mut self,
        first: TaskId,
        count: u64,
        spec: &TaskSpec,
        submitted_ms: u64,
    ) -> Result<(), JournalError> {
        self.check()?;
        if count == 0 {
            return Ok(());
        }
        let result = self.insert_batch(first, count, spec, submitted_ms);
        self.settle(result)
    }

    /// Records a job: the next id, its range following the last job's. Durable at the next
    /// `commit`.
    pub fn record_job(&mut self, job: &JobRecord) -> Result<(), JournalError> {
        self.check()?;
        let result = self.insert_job(job);
        self.settle(result)
    }

    /// Records a task's final outcome; recording one id twice keeps the last. Durable at the next
    /// `commit`. Usually only checks and buffers: the write happens at `commit`.
    pub fn record_final(&mut self, id: TaskId, rec: &Outcome) -> Result<(), JournalError> {
        self.check()?;
        let result = self.append_final(id, rec);
        self.settle(result)
    }

    /// Makes everything recorded since the last commit durable (one fsync). A no-op, with no write
    /// at all, when nothing was recorded.
    pub fn commit(&mut self) -> Result<CommitStats, JournalError> {
        self.check()?;
        if self.pending == 0 {
            self.committed.clear();
            return Ok(CommitStats::default());
        }
        let result = self.flush_finals().and_then(|()| {
            self.conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map_err(|e| self.sqlite_error(e))
        });
        self.settle(result)?;
        // After SQLite's commit, so the marks never claim more than the database holds; before
        // the caller sends the turn's replies. (Inside `open`, before the file exists, the marks
        // are written whole at its end.)
        let values = self.mark_values();
        if let Some(marks) = &mut self.marks {
            let result = marks
                .write(values)
                .map_err(|source| marks_io_error(&self.path, marks.path(), source));
            self.settle(result)?;
        }
        let records = std::mem::take(&mut self.pending);
        std::mem::swap(&mut self.committed, &mut self.uncommitted);
        self.uncommitted.clear();
        // A burst of finals (200,000 in one commit) must not pin its lists.
        if self.uncommitted.capacity() > COMMITTED_KEEP {
            self.uncommitted = Vec::new();
        }
        Ok(CommitStats { records })
    }

    /// Records that tasks `ranges` (inclusive, final, each once) are forgotten: the ranges are
    /// kept, and every row that now holds only forgotten tasks is deleted (the pages they free
    /// are given back by `compact_step`). Durable at the next `commit`.
    pub fn record_forgotten(&mut self, ranges: &[(TaskId, TaskId)]) -> Result<(), JournalError> {
        self.check()?;
        let result = self.forget(ranges);
        self.settle(result)
    }

    /// Whether `compact_step` has work: pages freed by forgetting not yet given back.
    pub fn vacuum_due(&self) -> bool {
        self.vacuum_due
    }

    /// Gives back up to `VACUUM_PAGES_PER_STEP` free pages to the file system (incremental
    /// vacuum, its own small transaction), between turns: never with records pending. Returns
    /// whether more are left.
    pub fn compact_step(&mut self) -> Result<bool, JournalError> {
        self.check()?;
        if !self.vacuum_due || self.pending > 0 {
            return Ok(self.vacuum_due);
        }
        // IMPORTANT: stepped to the end: each step of this pragma frees one page (`execute_batch`
        // steps once, so it would free one page per call).
        let result = self
            .conn
            .prepare_cached(&format!(
                "PRAGMA incremental_vacuum({VACUUM_PAGES_PER_STEP})"
            ))
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .and_then(|()| {
                self.conn
                    .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
            })
            .map_err(|e| self.sqlite_error(e));
        let free = self.settle(result)?;
        self.vacuum_due = free > 0;
        Ok(self.vacuum_due)
    }

    /// Where the finals made durable by the last `commit` sit, for `Core::handle_stored`.
    pub fn committed_finals(&self) -> &[(TaskId, StoredAt)] {
        &self.committed
    }

    /// Reads back the outcome of task `id` stored at `at` (one indexed row fetch, or none when
    /// the last read was of the same row). `Ok(None)` when that place holds no record of `id`.
    pub fn read_final(
        &mut self,
        id: TaskId,
        at: StoredAt,
    ) -> Result<Option<FinalResult>, JournalError> {
        let seq = at.seq();
        if self.read_cache.as_ref().is_none_or(|(s, _)| *s != seq) {
            self.read_cache = None;
            let blob: Option<Vec<u8>> = self
                .conn
                .prepare_cached(SELECT_FINALS)
                .and_then(|mut stmt| stmt.query_row([seq as i64], |r| r.get(0)))
                .optional()
                .map_err(|e| self.sqlite_error(e))?;
            let Some(blob) = blob else {
                return Ok(None);
            };
            self.read_cache = Some((seq, blob));
        }
        let Some((_, blob)) = &self.read_cache else {
            return Ok(None);
        };
        let bad = |detail: String| JournalError::BadRow {
            path: self.path.clone(),
            table: "final_batches",
            id: seq as i64,
            detail,
        };
        let start = at.offset();
        let Some(header) = blob.get(start..start + 4) else {
            return Err(bad(format!("no record at offset {start}")));
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(frame) = blob.get(start..start + 4 + len) else {
            return Err(bad(format!("record at offset {start} is cut short")));
        };
        let mut decoder = protocol::FrameDecoder::new();
        decoder.extend(frame);
        let entry = match decoder.next_frame::<FinalEntry<'static>>() {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(bad(format!("record at offset {start} is cut short"))),
            Err(e) => return Err(bad(format!("record at offset {start}: {e}"))),
        };
        if entry.id != id.0 {
            return Ok(None);
        }
        let (_, rec) = entry.into_record();
        Ok(Some(FinalResult {
            exit_code: rec.exit_code,
            stdout: rec.stdout,
            stderr: rec.stderr,
            error: rec.error,
        }))
    }

    /// Records waiting for the next `commit`.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self) -> Result<(), JournalError> {
        match &self.poisoned {
            Some(first) => Err(JournalError::Poisoned {
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the journal on any error: the caller's state now holds something the disk never
    /// will, so recording on would leave a journal that does not replay (a final without its
    /// submission, a hole in the ids). The open transaction is rolled back; a restart recovers
    /// the last commit.
    fn settle<T>(&mut self, result: Result<T, JournalError>) -> Result<T, JournalError> {
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
            if !self.conn.is_autocommit() {
                // Best effort: a failed ROLLBACK changes nothing, the close rolls back anyway.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.pending = 0;
            self.final_buf = Vec::new();
            self.final_span = None;
        }
        result
    }

    fn insert_batch(
        &mut self,
        first: TaskId,
        count: u64,
        spec: &TaskSpec,
        submitted_ms: u64,
    ) -> Result<(), JournalError> {
        // Strict, so a submission the caller forgot to record fails now, not at the next restart.
        if first.0 != self.next_id {
            return Err(JournalError::OutOfOrder {
                first,
                expected: TaskId(self.next_id),
            });
        }
        let end = first
            .0
            .checked_add(count)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or_else(|| JournalError::Unrepresentable {
                what: "a task id range",
                detail: format!("{first} + {count} is past {}", i64::MAX),
            })?;
        let submitted = to_i64("submitted_ms", submitted_ms)?;
        // serde_json writes a NaN or infinite f64 as `null`, which would not parse back: refuse
        // it here rather than leave a journal that cannot be recovered.
        if !spec.size.is_finite() {
            return Err(JournalError::Unrepresentable {
                what: "a task spec",
                detail: format!("size {} is not finite", spec.size),
            });
        }
        self.spec_buf.clear();
        serde_json::to_writer(&mut self.spec_buf, spec).map_err(|e| {
            JournalError::Unrepresentable {
                what: "a task spec",
                detail: e.to_string(),
            }
        })?;
        let json =
            std::str::from_utf8(&self.spec_buf).map_err(|e| JournalError::Unrepresentable {
                what: "a task spec",
                detail: e.to_string(),
            })?;
        let result = begin_if_idle(&self.conn, self.pending).and_then(|()| {
            let mut stmt = self.conn.prepare_cached(INSERT_BATCH)?;
            stmt.execute(params![first.0 as i64, count as i64, json, submitted])
        });
        result.map_err(|e| self.sqlite_error(e))?;
        self.pending += 1;
        self.next_id = end;
        Ok(())
    }

    fn insert_job(&mut self, job: &JobRecord) -> Result<(), JournalError> {
        if job.id.0 != self.next_job || job.first.0 != self.jobs_end || job.count == 0 {
            return Err(JournalError::JobOutOfOrder {
                job: job.id,
                first: job.first,
                expected_job: protocol::JobId(self.next_job),
                expected_first: TaskId(self.jobs_end),
            });
        }
        let end = job
            .first
            .0
            .checked_add(job.count)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or_else(|| JournalError::Unrepresentable {
                what: "a job's id range",
                detail: format!("{} + {} is past {}", job.first, job.count, i64::MAX),
            })?;
        let submitted = to_i64("submitted_ms", job.submitted_ms)?;
        let result = begin_if_idle(&self.conn, self.pending).and_then(|()| {
            let mut stmt = self.conn.prepare_cached(INSERT_JOB)?;
            stmt.execute(params![
                job.id.0 as i64,
                job.name,
                job.first.0 as i64,
                job.count as i64,
                submitted
            ])
        });
        result.map_err(|e| self.sqlite_error(e))?;
        self.pending += 1;
        self.next_job += 1;
        self.jobs_end = end;
        Ok(())
    }

    fn append_final(&mut self, id: TaskId, rec: &Outcome) -> Result<(), JournalError> {
        if id.0 == 0 || id.0 >= self.next_id {
            return Err(JournalError::UnknownTask { id });
        }
        if !rec.state.is_final() {
            return Err(JournalError::NotFinal {
                id,
                state: rec.state,
            });
        }
        // Bincode stores any u64, but the journal keeps promising what SQLite columns could hold,
        // and recovery checks the same.
        if let Some(ms) = rec.started_ms {
            to_i64("started_ms", ms)?;
        }
        to_i64("finished_ms", rec.finished_ms)?;
        begin_if_idle(&self.conn, self.pending).map_err(|e| self.sqlite_error(e))?;
        let at = StoredAt::new(self.finals_seq + 1, self.final_buf.len() as u64);
        // Only a record above `MAX_FRAME` fails here; the buffer is then left as it was.
        protocol::encode_frame(&FinalEntry::borrowed(id, rec), &mut self.final_buf).map_err(
            |e| JournalError::Unrepresentable {
                what: "a task outcome",
                detail: e.to_string(),
            },
        )?;
        self.final_span = Some(match self.final_span {
            Some((lo, hi)) => (lo.min(id.0), hi.max(id.0)),
            None => (id.0, id.0),
        });
        self.pending += 1;
        // Every record starts below FINAL_BLOB_FLUSH_BYTES, so `at` always fits; were it not to,
        // the core would just keep that outcome in RAM.
        if let Some(at) = at {
            self.uncommitted.push((id, at));
        }
        if self.final_buf.len() >= FINAL_BLOB_FLUSH_BYTES {
            self.flush_finals()?;
        }
        Ok(())
    }

    /// Inserts the buffered finals as one `final_batches` row inside the open transaction, then
    /// empties the buffer (keeping a sane allocation for the next turn).
    fn flush_finals(&mut self) -> Result<(), JournalError> {
        if self.final_buf.is_empty() {
            return Ok(());
        }
        debug_assert!(
            !self.conn.is_autocommit(),
            "finals buffered outside a transaction"
        );
        let (lo, hi) = self.final_span.take().unwrap_or_default();
        let seq = self.finals_seq + 1;
        self.conn
            .prepare_cached(INSERT_FINALS)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    seq as i64,
                    &self.final_buf[..],
                    lo as i64,
                    hi as i64
                ])
            })
            .map_err(|e| self.sqlite_error(e))?;
        self.finals_seq = seq;
        self.final_buf.clear();
        // A busy turn grows it to FINAL_BLOB_FLUSH_BYTES (a huge record past it); an idle
        // master must not keep megabytes for it (W8 counts the master's RSS).
        if self.final_buf.capacity() > FINAL_BUF_KEEP_BYTES {
            self.final_buf.shrink_to(FINAL_BUF_KEEP_BYTES);
        }
        Ok(())
    }

    fn forget(&mut self, ranges: &[(TaskId, TaskId)]) -> Result<(), JournalError> {
        for &(first, last) in ranges {
            if first.0 == 0 || first > last || last.0 >= self.next_id {
                return Err(JournalError::Unrepresentable {
                    what: "forgotten tasks",
                    detail: format!("{first} to {last}: not ids this journal handed out"),
                });
            }
            to_i64("a forgotten id", last.0)?;
        }
        begin_if_idle(&self.conn, self.pending).map_err(|e| self.sqlite_error(e))?;
        // IMPORTANT: finals of this turn still buffered may name these tasks (a task that ended
        // and was forgotten in one turn): out first, so the deletions below see their row.
        self.flush_finals()?;
        for &(first, last) in ranges {
            let (a, b) = self.merge_forgotten(first.0, last.0);
            let result = self.delete_forgotten(a, b);
            result.map_err(|e| self.sqlite_error(e))?;
        }
        self.pending += 1;
        self.vacuum_due = true;
        Ok(())
    }

    /// Adds `first ..= last` to the forgotten ranges (memory and table), merged with its
    /// neighbours; returns the merged range.
    fn merge_forgotten(&mut self, first: u64, last: u64) -> (u64, u64) {
        let (mut a, mut b) = (first, last);
        // A range that ends right before (or overlaps) `first`.
        if let Some((&pa, &pb)) = self.forgotten.range(..=first).next_back() {
            if pb.saturating_add(1) >= first {
                a = pa;
                b = b.max(pb);
            }
        }
        // Ranges that start inside or right after.
        let after: Vec<(u64, u64)> = self
            .forgotten
            .range(a..=b.saturating_add(1))
            .map(|(&x, &y)| (x, y))
            .collect();
        for (x, y) in after {
            b = b.max(y);
            self.forgotten.remove(&x);
        }
        self.forgotten.insert(a, b);
        (a, b)
    }

    /// Replaces the table's ranges inside `a ..= b` by that one range, and deletes the rows
    /// wholly inside it.
    fn delete_forgotten(&mut self, a: u64, b: u64) -> rusqlite::Result<()> {
        let (a, b) = (a as i64, b as i64);
        let c = &self.conn;
        c.prepare_cached("DELETE FROM forgotten WHERE first_id >= ?1 AND first_id <= ?2")?
            .execute(params![a, b])?;
        c.prepare_cached("INSERT INTO forgotten (first_id, last_id) VALUES (?1, ?2)")?
            .execute(params![a, b])?;
        c.prepare_cached(
            "DELETE FROM batches WHERE first_id >= ?1 AND first_id <= ?2 \
             AND first_id + count - 1 <= ?2",
        )?
        .execute(params![a, b])?;
        // Jobs keep their row (ids and ranges stay dense); the name of a forgotten one goes.
        c.prepare_cached(
            "UPDATE jobs SET name = '' WHERE first_id >= ?1 AND first_id <= ?2 \
             AND first_id + count - 1 <= ?2",
        )?
        .execute(params![a, b])?;
        let newest: i64 = c
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM final_batches")?
            .query_row([], |r| r.get(0))?;
        c.prepare_cached(
            "DELETE FROM final_batches WHERE max_id >= ?1 AND max_id <= ?2 AND min_id >= ?1 \
             AND seq < ?3",
        )?
        .execute(params![a, b, newest])?;
        c.prepare_cached(
            "UPDATE final_batches SET records = x'', min_id = NULL, max_id = NULL \
             WHERE seq = ?3 AND max_id >= ?1 AND max_id <= ?2 AND min_id >= ?1",
        )?
        .execute(params![a, b, newest])?;
        Ok(())
    }

    fn sqlite_error(&self, e: rusqlite::Error) -> JournalError {
        refine(&self.conn, classify(&self.path, e))
    }
}

/// Turns on incremental vacuum for a journal made without it (before version 5): one VACUUM,
/// once, which rewrites the file (logged: on a large journal it takes a while).
fn enable_incremental_vacuum(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let sql = |e| classify(path, e);
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(sql)?;
    // 2: INCREMENTAL.
    if mode == 2 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
        .map_err(sql)?;
    info!(
        "journal {}: incremental vacuum turned on (one VACUUM, {} ms)",
        path.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The journal as the shell holds it: shared with the core's [`JournalReader`], which reads
/// outcomes back from the same connection (the database is opened in exclusive locking mode, so
/// a second connection could not). One thread uses both; the lock is never contended.
pub type SharedJournal = Arc<Mutex<Journal>>;

/// Locks the shared journal. A panic while it was held leaves it poisoned for std, but the
/// journal's own state (`poisoned`) is what says whether it may be used.
pub fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The core's [`OutcomeReader`]: reads finished tasks' outcomes back from the journal for
/// `results`, `logs` and the HTTP task endpoints. Holds the journal weakly, so dropping the
/// shell's handle closes the database whatever the core still holds.
/// IMPORTANT: the shell must not hold the journal's lock while it calls into the core for a
/// reply (`poll_output`, `task`): the reader takes the same lock.
#[derive(Debug)]
pub struct JournalReader {
    journal: Weak<Mutex<Journal>>,
}

impl JournalReader {
    pub fn new(journal: &SharedJournal) -> JournalReader {
        JournalReader {
            journal: Arc::downgrade(journal),
        }
    }
}

impl crate::core::OutcomeReader for JournalReader {
    fn read(&self, id: TaskId, at: StoredAt) -> Option<FinalResult> {
        let journal = self.journal.upgrade()?;
        let mut journal = lock(&journal);
        match journal.read_final(id, at) {
            Ok(Some(r)) => Some(r),
            Ok(None) => {
                warn!(
                    "journal: no outcome of task {id} at row {} offset {}",
                    at.seq(),
                    at.offset()
                );
                None
            }
            Err(e) => {
                warn!("journal: cannot read the outcome of task {id}: {e}");
                None
            }
        }
    }
}

/// The first record of a turn opens the transaction that `commit` ends.
fn begin_if_idle(conn: &Connection, pending: usize) -> rusqlite::Result<()> {
    if pending == 0 {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    }
    Ok(())
}

/// A failed write of the marks file, named like the database's own failures where it can be.
fn marks_io_error(db: &Path, marks: &Path, source: std::io::Error) -> JournalError {
    let detail = format!("{}: {source}", marks.display());
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => JournalError::NoSpace {
            path: db.to_path_buf(),
            detail,
        },
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => JournalError::ReadOnly {
            path: db.to_path_buf(),
            detail,
        },
        _ => JournalError::MarksIo {
            marks: marks.to_path_buf(),
            source,
        },
    }
}

fn to_i64(what: &'static str, v: u64) -> Result<i64, JournalError> {
    i64::try_from(v).map_err(|_| JournalError::Unrepresentable {
        what,
        detail: format!("{v} is past {}", i64::MAX),
    })
}

/// Names the failures a person can act on; the rest stay SQLite's own words with the path.
/// An I/O error says only which call failed; [`refine`] adds what the system said.
fn classify(path: &Path, e: rusqlite::Error) -> JournalError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            JournalError::NotADatabase { path, source: e }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => JournalError::Locked { path },
        Some(ErrorCode::ReadOnly) => JournalError::ReadOnly {
            path,
            detail: e.to_string(),
        },
        Some(ErrorCode::DiskFull) => JournalError::NoSpace {
            path,
            detail: e.to_string(),
        },
        _ => JournalError::Sqlite { path, source: e },
    }
}

/// An SQLite I/O error (`SQLITE_IOERR_WRITE`, `_FSYNC`, `_LOCK`, ...) as what the system call
/// behind it said, `errno` (`sqlite3_system_errno` of the connection that failed): no space or
/// quota left, or a read-only file system or missing permission. Other errors pass unchanged.
fn refine_io(err: JournalError, errno: i32) -> JournalError {
    let JournalError::Sqlite { path, source } = err else {
        return err;
    };
    if source.sqlite_error_code() != Some(ErrorCode::SystemIoFailure) {
        return JournalError::Sqlite { path, source };
    }
    let detail = format!("{}; {source}", std::io::Error::from_raw_os_error(errno));
    match errno {
        libc::ENOSPC | libc::EDQUOT => JournalError::NoSpace { path, detail },
        libc::EROFS | libc::EACCES | libc::EPERM => JournalError::ReadOnly { path, detail },
        _ => JournalError::Sqlite { path, source },
    }
}

/// [`refine_io`] with the errno of `conn`'s last failure.
fn refine(conn: &Connection, err: JournalError) -> JournalError {
    // SAFETY: the handle is live for as long as `conn`; the call only reads its last error.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
    refine_io(err, errno)
}

/// Refuses a data directory this process cannot write (a read-only mount, no permission) before
/// SQLite reports it as a bare I/O error. Root passes permission checks, not a read-only mount.
fn check_writable(dir: &Path, db: &Path) -> Result<(), JournalError> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(()); // a NUL in the path: SQLite's open reports it
    };
    // SAFETY: plain syscall on a valid C string.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => Err(JournalError::ReadOnly {
            path: db.to_path_buf(),
            detail: format!("{}: {e}", dir.display()),
        }),
        _ => Ok(()),
    }
}

/// What `inspect` found in the file.
enum Found {
    /// No tables at all: a new (or empty) file.
    Empty,
    /// A ballast journal of this master's schema version.
    Current,
    /// A version 1 journal: `migrate::from_v1` upgrades it in place.
    V1,
    /// A version 2 journal: `migrate::from_v2` adds the identity tables.
    V2,
    /// A version 3 journal: `migrate::from_v3` adds the jobs table, one job per batch.
    V3,
    /// A version 4 journal: `migrate::from_v4` adds the retention tables.
    V4,
}

/// How far the database reaches, in the marks' terms (read at `open`, before this start adds its
/// incarnation). `master_id` is `None` for a new database.
struct Reached {
    master_id: Option<u64>,
    next_id: u64,
    finals_seq: u64,
    incarnation: u64,
}

fn reached(conn: &Connection, path: &Path, next_id: TaskId) -> Result<Reached, JournalError> {
    let sql = |e| classify(path, e);
    let master_id = conn
        .query_row("SELECT id FROM master LIMIT 1", [], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(sql)?
        .map(|id| id as u64);
    let finals_seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM final_batches", [], |r| {
            r.get(0)
        })
        .map_err(sql)?;
    let incarnation: i64 = conn
        .query_row(
            "SELECT coalesce(max(incarnation), 0) FROM incarnations",
            [],
            |r| r.get(0),
        )
        .map_err(sql)?;
    Ok(Reached {
        master_id,
        next_id: next_id.0,
        finals_seq: finals_seq.max(0) as u64,
        incarnation: incarnation.max(0) as u64,
    })
}

/// What `check_marks` decided.
enum MarksCheck {
    /// Nothing lost (or nothing to check against).
    Whole,
    /// Lost, and `--accept-journal-loss` says go on; `marks` is what was committed.
    Accepted { loss: Loss, marks: MarkValues },
}

/// Compares what the database reaches with what its marks say was committed.
fn check_marks(
    found: marks::Found,
    reached: &Reached,
    path: &Path,
    marks_path: &Path,
    options: OpenOptions,
) -> Result<MarksCheck, JournalError> {
    let marks = match found {
        marks::Found::None => return Ok(MarksCheck::Whole),
        marks::Found::Damaged if options.accept_loss => {
            warn!(
                "journal {}: marks file {} damaged; going on without the check \
                 (--accept-journal-loss)",
                path.display(),
                marks_path.display()
            );
            return Ok(MarksCheck::Whole);
        }
        marks::Found::Damaged => {
            return Err(JournalError::MarksDamaged {
                marks: marks_path.to_path_buf(),
            })
        }
        marks::Found::Marks(marks) => marks,
    };
    // A database without a master id is new: everything the marks speak of is gone, and the
    // data dir keeps its identity if the loss is accepted.
    if let Some(id) = reached.master_id.filter(|&id| id != marks.master_id) {
        if options.accept_loss {
            warn!(
                "journal {}: marks file {} is another journal's (master id {:#x}, this one \
                 {id:#x}); ignored (--accept-journal-loss)",
                path.display(),
                marks_path.display(),
                marks.master_id
            );
            return Ok(MarksCheck::Whole);
        }
        return Err(JournalError::ForeignMarks {
            marks: marks_path.to_path_buf(),
            found: marks.master_id,
            expected: id,
        });
    }
    let loss = Loss {
        ids: (marks.next_id > reached.next_id)
            .then(|| (TaskId(reached.next_id), TaskId(marks.next_id - 1))),
        final_commits: marks.finals_seq.saturating_sub(reached.finals_seq),
        incarnations: marks.incarnation.saturating_sub(reached.incarnation),
    };
    if loss.is_empty() {
        return Ok(MarksCheck::Whole);
    }
    if !options.accept_loss {
        return Err(JournalError::Lost {
            path: path.to_path_buf(),
            marks: marks_path.to_path_buf(),
            loss,
        });
    }
    Ok(MarksCheck::Accepted { loss, marks })
}

/// Makes this start of the master durable before it can hand out anything: the data dir's id
/// (created once) and a new incarnation row starting at `next_id`. Returns the id and every
/// incarnation so far, this one last.
///
/// `min_incarnation`: the new incarnation is above it too (starts the journal lost, see
/// `accept_loss`); `master_hint`: the id a new database takes instead of a random one.
fn start_incarnation(
    conn: &Connection,
    path: &Path,
    next_id: TaskId,
    min_incarnation: u64,
    master_hint: Option<u64>,
) -> Result<(u64, Vec<EpochStart>), JournalError> {
    let sql = |e| classify(path, e);
    let bad = |table: &'static str, id: i64, detail: String| JournalError::BadRow {
        path: path.to_path_buf(),
        table,
        id,
        detail,
    };
    let tx = conn.unchecked_transaction().map_err(sql)?;
    let ids = tx
        .prepare("SELECT id FROM master")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<i64>, _>>()
        })
        .map_err(sql)?;
    let master_id = match (&ids[..], master_hint) {
        ([], Some(hint)) => {
            let id = hint as i64;
            tx.execute("INSERT INTO master (id) VALUES (?1)", [id])
                .map_err(sql)?;
            id
        }
        ([], None) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| JournalError::Unrepresentable {
                what: "the master id",
                detail: format!("no randomness: {e}"),
            })?;
            let id = i64::from_le_bytes(bytes);
            tx.execute("INSERT INTO master (id) VALUES (?1)", [id])
                .map_err(sql)?;
            id
        }
        (&[id], _) => id,
        _ => {
            return Err(bad(
                "master",
                0,
                format!("{} rows, expected one", ids.len()),
            ))
        }
    };
    let rows = tx
        .prepare("SELECT incarnation, first_id FROM incarnations ORDER BY incarnation")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<(i64, i64)>, _>>()
        })
        .map_err(sql)?;
    let mut history = Vec::with_capacity(rows.len() + 1);
    for (incarnation, first_id) in rows {
        let (Ok(n), Ok(first)) = (u32::try_from(incarnation), u64::try_from(first_id)) else {
            return Err(bad(
                "incarnations",
                incarnation,
                format!("first_id {first_id} out of range"),
            ));
        };
        if first > next_id.0 {
            return Err(bad(
                "incarnations",
                incarnation,
                format!("first_id {first} is past the last recorded task"),
            ));
        }
        history.push(EpochStart {
            incarnation: Incarnation(n),
            first_id: TaskId(first),
        });
    }
    let last = history
        .last()
        .map_or(0, |s| s.incarnation.0)
        .max(u32::try_from(min_incarnation).unwrap_or(u32::MAX));
    let Some(current) = last.checked_add(1) else {
        return Err(bad(
            "incarnations",
            i64::from(last),
            "no incarnation after it".into(),
        ));
    };
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    tx.execute(
        "INSERT INTO incarnations (incarnation, first_id, started_ms) VALUES (?1, ?2, ?3)",
        params![i64::from(current), to_i64("an id", next_id.0)?, started_ms],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    history.push(EpochStart {
        incarnation: Incarnation(current),
        first_id: next_id,
    });
    Ok((master_id as u64, history))
}

/// Takes the file for this connection alone, checks what it holds (reading only, so a file it
/// refuses is left exactly as it was), then switches to WAL and creates the schema if needed.
/// An older schema is reported, not yet migrated: `open` migrates it together with the read-back.
fn prepare(conn: &Connection, path: &Path) -> Result<Found, JournalError> {
    let sql = |e| classify(path, e);
    // A second master on the same file must fail at once with `Locked`, not wait.
    conn.busy_timeout(Duration::ZERO).map_err(sql)?;
    // Exclusive before WAL: the connection then holds the file lock until it closes (a second
    // master on the same data dir is refused) and keeps the WAL index in memory (no -shm file).
    conn.query_row("PRAGMA locking_mode = EXCLUSIVE", [], |_| Ok(()))
        .map_err(sql)?;
    let found = inspect(conn, path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL in WAL mode: every commit fsyncs the WAL, so a committed turn survives power loss.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(sql)?;
    conn.query_row(
        &format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}"),
        [],
        |_| Ok(()),
    )
    .map_err(sql)?;
    if let Found::Empty = found {
        // Before the first table: only then does it take without a VACUUM.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(sql)?;
        let tx = conn.unchecked_transaction().map_err(sql)?;
        tx.execute_batch(SCHEMA).map_err(sql)?;
        tx.execute_batch(IDENTITY_TABLES).map_err(sql)?;
        tx.execute_batch(JOBS_TABLE).map_err(sql)?;
        tx.execute_batch(FORGET_TABLES).map_err(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [SCHEMA_VERSION],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(found)
}

/// Reads what kind of file this is. The first statement that reads the file, so a garbage file
/// fails here, as `NotADatabase`.
fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

fn inspect(conn: &Connection, path: &Path) -> Result<Found, JournalError> {
    let sql = |e| classify(path, e);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(sql)?;
    let has_version = table_exists(conn, "schema_version").map_err(sql)?;
    match (has_version, tables) {
        (false, 0) => return Ok(Found::Empty),
        (false, _) => {
            return Err(JournalError::NotBallast {
                path: path.to_path_buf(),
            })
        }
        (true, _) => {}
    }
    let bad = |detail: String| JournalError::BadSchemaVersion {
        path: path.to_path_buf(),
        detail,
    };
    let mut stmt = conn
        .prepare("SELECT version FROM schema_version")
        .map_err(sql)?;
    let versions = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .and_then(|rows| rows.collect::<Result<Vec<i64>, _>>())
        .map_err(sql)?;
    let [found] = versions[..] else {
        return Err(bad(format!("{} rows, expected one", versions.len())));
    };
    if found > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    match found {
        SCHEMA_VERSION => Ok(Found::Current),
        4 => Ok(Found::V4),
        3 => Ok(Found::V3),
        2 => Ok(Found::V2),
        1 => {
            // Version 1 changed in place before its release (per-task `finals` rows became
            // `final_batches`): a file from such a build must be refused by name, not fail
            // later as "no such table".
            let has_final_batches = table_exists(conn, "final_batches").map_err(sql)?;
            if !has_final_batches {
                return Err(bad(
                    "version 1 without table final_batches: written by a pre-release build; \
                     move the data directory away"
                        .into(),
                ));
            }
            Ok(Found::V1)
        }
        _ => Err(bad(format!("version {found} never existed"))),
    }
}
