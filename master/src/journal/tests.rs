use super::*;
use protocol::TaskKind;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ballast-journal-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join(DB_FILE)
    }

    fn wal_len(&self) -> u64 {
        std::fs::metadata(self.0.join(format!("{DB_FILE}-wal")))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> (Journal, Recovered) {
    let (mut j, mut rec) = Journal::open(&dir.0).expect("open journal");
    fill(&mut j, &mut rec);
    (j, rec)
}

/// Reads every stored outcome's tails back into `rec` (recovery leaves them on disk, where
/// `read_final` finds them), so tests compare what was recorded with what a reader gets.
fn fill(j: &mut Journal, rec: &mut Recovered) {
    for t in &mut rec.tasks {
        let (Some(at), Some(o)) = (t.stored.take(), t.outcome.as_deref_mut()) else {
            continue;
        };
        let r = j
            .read_final(t.id, at)
            .expect("reads")
            .expect("holds the task");
        assert_eq!(r.exit_code, o.exit_code, "task {}", t.id);
        (o.stdout, o.stderr, o.error) = (r.stdout, r.stderr, r.error);
    }
}

/// A plain SQLite connection, for tests that tamper with the file behind the journal's back.
fn raw(dir: &TempDir) -> Connection {
    Connection::open(dir.db()).expect("raw open")
}

fn sleep_spec(ms: u64) -> TaskSpec {
    TaskSpec::new(TaskKind::Sleep { ms })
}

/// Every field away from its default, and text that needs escaping.
fn command_spec() -> TaskSpec {
    TaskSpec {
        time_request_ms: None,
        kind: TaskKind::Command {
            argv: vec!["sh".into(), "-c".into(), "echo \"ünï\" \\ $X".into()],
            env: vec![("X".into(), "a=b".into())],
            cwd: Some("/tmp".into()),
        },
        priority: -3,
        size: 2.5,
        timeout_ms: Some(1_500),
        max_retries: 1,
        retry_failed: 2,
        group: Some("gpu".into()),
        replicas: 1,
        name: Some("fetch \"ü\"".into()),
        after: vec![protocol::After::Ids {
            first: protocol::TaskId(1),
            last: protocol::TaskId(3),
        }],
    }
}

fn succeeded(stdout: &str) -> Outcome {
    Outcome {
        state: TaskState::Succeeded,
        attempts: 2,
        // A replicated task: three copies ran, worker-a's won.
        copies: 3,
        worker: Some("worker-a".into()),
        exit_code: Some(0),
        stdout: stdout.into(),
        stderr: "warn\n".into(),
        error: None,
        started_ms: Some(1_000),
        finished_ms: 1_250,
    }
}

fn cancelled() -> Outcome {
    Outcome {
        state: TaskState::Cancelled,
        attempts: 1,
        copies: 0,
        worker: None,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: Some("cancelled".into()),
        started_ms: None,
        finished_ms: 900,
    }
}

fn rows(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count rows")
}

#[test]
fn round_trip() {
    let dir = TempDir::new("round-trip");
    let nested = TempDir(dir.0.join("a/b"));
    let (mut j, rec) = Journal::open(&nested.0).expect("creates missing dirs");
    assert_eq!(j.path(), nested.db());
    assert_eq!(
        rec,
        Recovered {
            tasks: vec![],
            next_id: TaskId(1),
            master_id: rec.master_id,
            history: vec![EpochStart {
                incarnation: Incarnation(1),
                first_id: TaskId(1)
            }],
            jobs: vec![],
            forgotten: vec![],
        }
    );
    let master_id = rec.master_id;

    j.record_submit(TaskId(1), 2, &command_spec(), 100)
        .expect("submit");
    j.record_submit(TaskId(3), 1, &sleep_spec(5), 101)
        .expect("submit");
    j.record_final(TaskId(2), &succeeded("out\0 ünï\n"))
        .expect("final");
    j.record_final(TaskId(3), &cancelled()).expect("final");
    assert_eq!(j.pending(), 4);
    assert_eq!(j.commit().expect("commit"), CommitStats { records: 4 });
    drop(j);

    let (mut j, mut rec) = Journal::open(&nested.0).expect("reopen");
    fill(&mut j, &mut rec);
    assert_eq!(rec.next_id, TaskId(4));
    assert_eq!(rec.master_id, master_id, "the data dir keeps its id");
    let starts: Vec<(u32, u64)> = rec
        .history
        .iter()
        .map(|s| (s.incarnation.0, s.first_id.0))
        .collect();
    assert_eq!(starts, [(1, 1), (2, 4)], "each open is a new incarnation");
    let ids: Vec<u64> = rec.tasks.iter().map(|t| t.id.0).collect();
    assert_eq!(ids, [1, 2, 3]);
    let [a, b, c] = &rec.tasks[..] else {
        panic!("three tasks expected")
    };
    assert_eq!(*a.spec, command_spec());
    assert!(Arc::ptr_eq(&a.spec, &b.spec), "a batch shares one spec");
    assert_eq!(*c.spec, sleep_spec(5));
    assert_eq!((a.submitted_ms, c.submitted_ms), (100, 101));
    assert_eq!(a.outcome, None);
    assert_eq!(b.outcome.as_deref(), Some(&succeeded("out\0 ünï\n")));
    assert_eq!(c.outcome.as_deref(), Some(&cancelled()));
    let copies = |t: &RestoredTask| t.outcome.as_ref().map(|o| o.copies);
    assert_eq!((copies(b), copies(c)), (Some(3), Some(0)), "copies kept");

    // Ids carry on densely from the recovered ones: backwards or a gap is refused.
    j.record_submit(TaskId(4), 1, &sleep_spec(1), 102)
        .expect("next id");
    drop(j);
    for first in [2, 6] {
        let (mut j, _) = Journal::open(&nested.0).expect("reopen");
        assert!(matches!(
            j.record_submit(TaskId(first), 1, &sleep_spec(1), 103),
            Err(JournalError::OutOfOrder {
                expected: TaskId(4),
                ..
            })
        ));
    }
}

#[test]
fn million_copies_are_one_row_and_share_one_spec() {
    const N: u64 = 1_000_000;
    let dir = TempDir::new("million");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), N, &sleep_spec(20), 7)
        .expect("submit");
    j.record_final(TaskId(500_000), &succeeded("half"))
        .expect("final");
    assert_eq!(j.commit().expect("commit").records, 2);
    assert_eq!(rows(&j.conn, "batches"), 1);
    assert_eq!(rows(&j.conn, "final_batches"), 1);
    drop(j);

    let started = Instant::now();
    let (_, rec) = open(&dir);
    let took = started.elapsed();
    assert_eq!(rec.tasks.len() as u64, N);
    assert_eq!(rec.next_id, TaskId(N + 1));
    let first = &rec.tasks[0].spec;
    assert!(rec.tasks.iter().all(|t| Arc::ptr_eq(&t.spec, first)));
    assert_eq!(Arc::strong_count(first), N as usize);
    assert!(rec
        .tasks
        .iter()
        .enumerate()
        .all(|(i, t)| t.id.0 == i as u64 + 1));
    let done: Vec<u64> = rec
        .tasks
        .iter()
        .filter(|t| t.outcome.is_some())
        .map(|t| t.id.0)
        .collect();
    assert_eq!(done, [500_000]);
    // Generous: it is a loop over memory, not a million rows (tens of ms in release).
    assert!(took < Duration::from_secs(10), "recovery took {took:?}");
}

#[test]
fn uncommitted_records_are_lost_on_drop() {
    let dir = TempDir::new("drop");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 10, &sleep_spec(1), 1)
        .expect("submit");
    j.record_final(TaskId(1), &cancelled()).expect("final");
    j.commit().expect("commit");
    // A turn that never commits: a new batch, a new final, and a replaced one.
    j.record_submit(TaskId(11), 5, &sleep_spec(2), 2)
        .expect("submit");
    j.record_final(TaskId(2), &cancelled()).expect("final");
    j.record_final(TaskId(1), &succeeded("replaced"))
        .expect("final");
    drop(j);

    let (mut j, rec) = open(&dir);
    assert_eq!(rec.tasks.len(), 10);
    assert_eq!(rec.next_id, TaskId(11));
    assert_eq!(rec.tasks[0].outcome.as_deref(), Some(&cancelled()));
    assert!(rec.tasks[1..].iter().all(|t| t.outcome.is_none()));
    // The lost ids are handed out again after the restart.
    j.record_submit(TaskId(11), 1, &sleep_spec(3), 3)
        .expect("submit");
    assert_eq!(j.commit().expect("commit").records, 1);
}

/// Environment variable that turns `crash_child` from a no-op into the crashing half of
/// `crash_keeps_only_committed_work`.
const CRASH_DIR_VAR: &str = "BALLAST_JOURNAL_CRASH_DIR";

/// Run by `crash_keeps_only_committed_work` in a child process, which dies mid-turn without
/// closing the database, as with `kill -9`.
#[test]
#[ignore = "helper: does something only when run by crash_keeps_only_committed_work"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_VAR) else {
        return;
    };
    let (mut j, _) = Journal::open(Path::new(&dir)).expect("open");
    j.record_submit(TaskId(1), 3_000, &sleep_spec(1), 1)
        .expect("submit");
    j.commit().expect("commit");
    for id in 1..=10 {
        j.record_final(TaskId(id), &succeeded("ok")).expect("final");
    }
    j.commit().expect("commit");
    // An uncommitted turn larger than SQLite's page cache, so some of it spills into the WAL
    // before the crash: those frames have no commit mark and must be ignored.
    let big = "x".repeat(4_096);
    for id in 11..=3_000 {
        j.record_final(TaskId(id), &succeeded(&big)).expect("final");
    }
    j.record_submit(TaskId(3_001), 5, &sleep_spec(2), 2)
        .expect("submit");
    std::process::abort();
}

#[test]
fn crash_keeps_only_committed_work() {
    let dir = TempDir::new("crash");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["journal::tests::crash_child", "--exact", "--ignored"])
        .env(CRASH_DIR_VAR, &dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run child");
    assert!(!status.success(), "the child must die, not finish");
    assert!(
        dir.wal_len() > 4 << 20,
        "the dead turn spilled into the WAL"
    );

    let (_, rec) = open(&dir);
    assert_eq!(rec.tasks.len(), 3_000);
    assert_eq!(rec.next_id, TaskId(3_001));
    let done: Vec<u64> = rec
        .tasks
        .iter()
        .filter(|t| t.outcome.is_some())
        .map(|t| t.id.0)
        .collect();
    assert_eq!(done, (1..=10).collect::<Vec<u64>>());
}

#[test]
fn empty_commit_writes_nothing() {
    let dir = TempDir::new("empty-commit");
    let (mut j, _) = open(&dir);
    let (wal, changes) = (dir.wal_len(), j.conn.total_changes());
    assert_eq!(j.commit().expect("commit"), CommitStats { records: 0 });
    assert_eq!((dir.wal_len(), j.conn.total_changes()), (wal, changes));
    assert!(j.conn.is_autocommit(), "no transaction was opened");

    j.record_submit(TaskId(1), 1, &sleep_spec(1), 1)
        .expect("submit");
    assert_eq!(j.commit().expect("commit").records, 1);
    let wal = dir.wal_len();
    assert!(wal > 0, "a real commit writes the WAL");
    assert_eq!(j.commit().expect("commit").records, 0);
    assert_eq!(dir.wal_len(), wal);
}

#[test]
fn final_recorded_twice_keeps_the_last() {
    let dir = TempDir::new("twice");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 2, &sleep_spec(1), 1)
        .expect("submit");
    j.record_final(TaskId(1), &cancelled()).expect("final");
    j.record_final(TaskId(1), &succeeded("second"))
        .expect("final");
    j.commit().expect("commit");
    j.record_final(TaskId(2), &succeeded("first"))
        .expect("final");
    j.commit().expect("commit");
    j.record_final(TaskId(2), &cancelled()).expect("final");
    j.commit().expect("commit");
    assert_eq!(rows(&j.conn, "final_batches"), 3, "one row per commit");
    drop(j);
    let (_, rec) = open(&dir);
    assert_eq!(rec.tasks[0].outcome.as_deref(), Some(&succeeded("second")));
    assert_eq!(rec.tasks[1].outcome.as_deref(), Some(&cancelled()));
}

#[test]
fn settings_are_exclusive_wal_full() {
    let dir = TempDir::new("settings");
    let (j, _) = open(&dir);
    let pragma = |name: &str| -> String {
        j.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .expect("pragma")
    };
    assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
    assert_eq!(pragma("synchronous"), "Integer(2)", "FULL");
    assert_eq!(pragma("locking_mode"), r#"Text("exclusive")"#);
    assert!(!dir.0.join(format!("{DB_FILE}-shm")).exists());
}

#[test]
fn an_error_poisons_the_journal_and_rolls_back_the_turn() {
    let dir = TempDir::new("poison");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 2, &sleep_spec(1), 1)
        .expect("submit");
    j.commit().expect("commit");
    j.record_submit(TaskId(3), 1, &sleep_spec(1), 2)
        .expect("submit");
    let mut not_final = cancelled();
    not_final.state = TaskState::Running;
    assert!(matches!(
        j.record_final(TaskId(1), &not_final),
        Err(JournalError::NotFinal { .. })
    ));
    assert!(matches!(j.commit(), Err(JournalError::Poisoned { .. })));
    assert!(matches!(
        j.record_final(TaskId(1), &cancelled()),
        Err(JournalError::Poisoned { .. })
    ));
    drop(j);
    let (mut j, rec) = open(&dir);
    assert_eq!(rec.tasks.len(), 2, "the poisoned turn was rolled back");

    let err = j
        .record_final(TaskId(3), &cancelled())
        .expect_err("unknown");
    assert!(matches!(err, JournalError::UnknownTask { id: TaskId(3) }));
    let mut nan = sleep_spec(1);
    nan.size = f64::NAN;
    let (mut j, _) = open_after(j, &dir);
    assert!(matches!(
        j.record_submit(TaskId(3), 1, &nan, 1),
        Err(JournalError::Unrepresentable { .. })
    ));
    let (mut j, _) = open_after(j, &dir);
    assert!(matches!(
        j.record_submit(TaskId(3), 1, &sleep_spec(1), u64::MAX),
        Err(JournalError::Unrepresentable { .. })
    ));
}

/// Closes `j` and opens the same journal again.
fn open_after(j: Journal, dir: &TempDir) -> (Journal, Recovered) {
    drop(j);
    open(dir)
}

#[test]
fn a_second_master_is_locked_out() {
    let dir = TempDir::new("locked");
    let (j, _) = open(&dir);
    let err = Journal::open(&dir.0).expect_err("second open");
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(&dir.db().display().to_string()));
    drop(j);
    open(&dir);
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 1, &sleep_spec(1), 1)
        .expect("submit");
    j.commit().expect("commit");
    drop(j);
    raw(&dir)
        .execute("UPDATE schema_version SET version = 7", [])
        .expect("tamper");
    let err = Journal::open(&dir.0).expect_err("newer");
    assert!(
        matches!(
            err,
            JournalError::NewerSchema {
                found: 7,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("database schema version 7 is newer than this master (5); upgrade ballast"),
        "{msg}"
    );
    assert!(msg.contains(&dir.db().display().to_string()));
    // Refused, not reset.
    assert_eq!(rows(&raw(&dir), "batches"), 1);
}

#[test]
fn pre_release_layout_is_refused_and_left_alone() {
    let dir = TempDir::new("pre-release");
    drop(open(&dir));
    // What builds before `final_batches` wrote, still as version 1.
    raw(&dir)
        .execute_batch(
            "DROP TABLE final_batches;
             CREATE TABLE finals (id INTEGER PRIMARY KEY, state TEXT NOT NULL) STRICT;
             UPDATE schema_version SET version = 1;",
        )
        .expect("tamper");
    let err = Journal::open(&dir.0).expect_err("pre-release");
    assert!(
        matches!(err, JournalError::BadSchemaVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("final_batches"), "{err}");
    assert_eq!(rows(&raw(&dir), "finals"), 0, "left alone");
}

/// The tables as version 1 created them, frozen here (not `SCHEMA`, which may move on).
const V1_TABLES: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
CREATE TABLE batches (
    first_id     INTEGER PRIMARY KEY,
    count        INTEGER NOT NULL,
    spec         TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE final_batches (
    seq     INTEGER PRIMARY KEY,
    records BLOB NOT NULL
) STRICT;
INSERT INTO schema_version (version) VALUES (1);
";

/// One final outcome as version 1 encoded it: `FinalEntry` without `copies`. Its own type, not
/// the migration's, so a change to either is caught here.
#[derive(Serialize)]
struct V1Entry<'a> {
    id: u64,
    state: TaskState,
    attempts: u32,
    worker: Option<&'a str>,
    exit_code: Option<i32>,
    stdout: &'a str,
    stderr: &'a str,
    error: Option<&'a str>,
    started_ms: Option<u64>,
    finished_ms: u64,
}

fn v1_blob(entries: &[(u64, &Outcome)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(id, rec) in entries {
        let entry = V1Entry {
            id,
            state: rec.state,
            attempts: rec.attempts,
            worker: rec.worker.as_deref(),
            exit_code: rec.exit_code,
            stdout: &rec.stdout,
            stderr: &rec.stderr,
            error: rec.error.as_deref(),
            started_ms: rec.started_ms,
            finished_ms: rec.finished_ms,
        };
        protocol::encode_frame(&entry, &mut out).expect("encode");
    }
    out
}

/// A version 1 data dir: ids 1..=4 in one batch (a spec without `replicas`, as version 1 wrote
/// it), and one `final_batches` row per blob.
fn v1_journal(dir: &TempDir, blobs: &[Vec<u8>]) {
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let conn = raw(dir);
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(V1_TABLES).expect("v1 tables");
    let mut spec = serde_json::to_value(sleep_spec(1)).expect("json");
    spec.as_object_mut()
        .and_then(|o| o.remove("replicas"))
        .expect("a replicas key to drop");
    conn.execute(
        "INSERT INTO batches VALUES (1, 4, ?1, 5)",
        [spec.to_string()],
    )
    .expect("batch");
    for b in blobs {
        conn.execute("INSERT INTO final_batches (records) VALUES (?1)", [b])
            .expect("finals");
    }
}

fn version(conn: &Connection) -> i64 {
    conn.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .expect("version")
}

fn final_blobs(dir: &TempDir) -> Vec<Vec<u8>> {
    let conn = raw(dir);
    let mut stmt = conn
        .prepare("SELECT records FROM final_batches ORDER BY seq")
        .expect("select");
    let blobs = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect::<Result<Vec<Vec<u8>>, _>>())
        .expect("blobs");
    blobs
}

#[test]
fn version_1_is_migrated_in_place_once() {
    let dir = TempDir::new("v1");
    let mut failed = succeeded("first try");
    failed.state = TaskState::Failed;
    let mut lost = succeeded("lost");
    lost.state = TaskState::WorkerLost;
    // Task 1 is recorded twice (the later row wins), task 4 never finished.
    v1_journal(
        &dir,
        &[
            v1_blob(&[(1, &failed), (2, &cancelled())]),
            v1_blob(&[(1, &succeeded("ok")), (3, &lost)]),
        ],
    );
    let (mut j, rec) = open(&dir);
    assert_eq!(version(&j.conn), SCHEMA_VERSION);
    assert_eq!(rows(&j.conn, "final_batches"), 2, "rewritten, not added");
    assert_eq!(rec.next_id, TaskId(5));
    assert!(rec.tasks.iter().all(|t| *t.spec == sleep_spec(1)));
    // With a worker: one copy ran (version 1 had no replicas); without: it never ran.
    let with_copies = |mut r: Outcome, copies| {
        r.copies = copies;
        Some(r)
    };
    let outcomes: Vec<Option<Outcome>> = rec
        .tasks
        .iter()
        .map(|t| t.outcome.as_deref().cloned())
        .collect();
    assert_eq!(
        outcomes,
        [
            with_copies(succeeded("ok"), 1),
            with_copies(cancelled(), 0),
            with_copies(lost, 1),
            None,
        ]
    );

    // The migrated journal is an ordinary version 2 one: it records, and it reopens as it was,
    // with no second migration (which would misread version 2 entries).
    j.record_final(TaskId(4), &succeeded("after"))
        .expect("final");
    j.commit().expect("commit");
    drop(j);
    let blobs = final_blobs(&dir);
    let (_, again) = open(&dir);
    assert_eq!(again.tasks[..3], rec.tasks[..3]);
    assert_eq!(again.tasks[3].outcome.as_deref(), Some(&succeeded("after")));
    assert_eq!(final_blobs(&dir), blobs, "not rewritten again");
    assert_eq!(version(&raw(&dir)), SCHEMA_VERSION);
}

#[test]
fn version_1_without_outcomes_migrates() {
    let dir = TempDir::new("v1-empty");
    v1_journal(&dir, &[]);
    let (_, rec) = open(&dir);
    assert_eq!(rec.tasks.len(), 4);
    assert!(rec.tasks.iter().all(|t| t.outcome.is_none()));
    assert_eq!(version(&raw(&dir)), SCHEMA_VERSION);
}

#[test]
fn a_version_1_journal_that_fails_to_migrate_is_left_as_it_was() {
    let good = v1_blob(&[(1, &succeeded("ok"))]);
    let cases: [(&str, Vec<Vec<u8>>); 3] = [
        // Damaged: the rewrite itself fails.
        (
            "truncated",
            vec![good.clone(), good[..good.len() - 1].to_vec()],
        ),
        (
            "undecodable",
            vec![good.clone(), vec![0, 0, 0, 3, 0xff, 0xff, 0xff]],
        ),
        // Decodes, but names a task no batch holds: the read-back fails after the rewrite.
        (
            "no batch holds this task id",
            vec![good.clone(), v1_blob(&[(9, &cancelled())])],
        ),
    ];
    for (want, blobs) in cases {
        let dir = TempDir::new("v1-bad");
        v1_journal(&dir, &blobs);
        let err = Journal::open(&dir.0).expect_err(want);
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                JournalError::BadRow {
                    table: "final_batches",
                    id: 2,
                    ..
                }
            ),
            "{want}: {msg}"
        );
        assert!(msg.contains(want), "{want}: {msg}");
        assert_eq!(version(&raw(&dir)), 1, "{want}: rolled back");
        assert_eq!(final_blobs(&dir), blobs, "{want}: rolled back");
    }
}

#[test]
fn versions_that_never_existed_are_refused() {
    for bad in [0, -1] {
        let dir = TempDir::new("no-such-version");
        drop(open(&dir));
        raw(&dir)
            .execute("UPDATE schema_version SET version = ?1", [bad])
            .expect("tamper");
        let err = Journal::open(&dir.0).expect_err("never existed");
        assert!(
            matches!(err, JournalError::BadSchemaVersion { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("never existed"), "{err}");
    }
}

#[test]
fn garbage_file_is_refused_and_left_alone() {
    for len in [10, 100_000] {
        let dir = TempDir::new("garbage");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let garbage: Vec<u8> = b"not a database\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
        std::fs::write(dir.db(), &garbage).expect("write garbage");
        let err = Journal::open(&dir.0).expect_err("garbage");
        assert!(matches!(err, JournalError::NotADatabase { .. }), "{err}");
        assert!(err.to_string().contains(&dir.db().display().to_string()));
        assert_eq!(std::fs::read(dir.db()).expect("read back"), garbage);
    }
}

#[test]
fn foreign_database_is_refused_and_left_alone() {
    let dir = TempDir::new("foreign");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    raw(&dir)
        .execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        .expect("foreign db");
    let err = Journal::open(&dir.0).expect_err("foreign");
    assert!(matches!(err, JournalError::NotBallast { .. }), "{err}");
    let mode: String = raw(&dir)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "delete", "not switched to WAL");
}

#[test]
fn bad_rows_are_typed_errors_naming_the_row() {
    // `SLEEP` stands for a valid spec, `EMPTY_ARGV` for one that parses but does not validate.
    let sleep = serde_json::to_string(&sleep_spec(1)).expect("json");
    let empty_argv = serde_json::to_string(&TaskSpec::new(TaskKind::Command {
        argv: vec![],
        env: vec![],
        cwd: None,
    }))
    .expect("json");
    type Expect = fn(&JournalError) -> bool;
    let cases: [(&str, Expect); 4] = [
        (
            r#"INSERT INTO batches VALUES (1, 2, '{"kind": "nope"}', 5)"#,
            |e| matches!(e, JournalError::BadSpec { first_id: 1, .. }),
        ),
        ("INSERT INTO batches VALUES (1, 2, 'EMPTY_ARGV', 5)", |e| {
            matches!(e, JournalError::BadSpec { first_id: 1, .. })
        }),
        // Overlap, then a gap.
        (
            "INSERT INTO batches VALUES (1, 5, 'SLEEP', 5), (3, 1, 'SLEEP', 5)",
            |e| {
                matches!(
                    e,
                    JournalError::BadRow {
                        table: "batches",
                        id: 3,
                        ..
                    }
                )
            },
        ),
        (
            "INSERT INTO batches VALUES (1, 1, 'SLEEP', 5), (3, 1, 'SLEEP', 5)",
            |e| {
                matches!(
                    e,
                    JournalError::BadRow {
                        table: "batches",
                        id: 3,
                        ..
                    }
                )
            },
        ),
    ];
    for (sql, expected) in cases {
        let dir = TempDir::new("bad-row");
        drop(open(&dir));
        let sql = sql
            .replace("SLEEP", &sleep)
            .replace("EMPTY_ARGV", &empty_argv);
        raw(&dir).execute_batch(&sql).expect("tamper");
        let err = Journal::open(&dir.0).expect_err(&sql);
        assert!(expected(&err), "{sql}: {err}");
        assert!(err.to_string().contains(&dir.db().display().to_string()));
    }
}

/// A `final_batches` blob as `commit` writes it.
fn blob(entries: &[(u64, &Outcome)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(id, rec) in entries {
        protocol::encode_frame(&FinalEntry::borrowed(TaskId(id), rec), &mut out).expect("encode");
    }
    out
}

#[test]
fn each_commit_of_finals_is_one_row() {
    let dir = TempDir::new("one-row");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 2_000, &sleep_spec(1), 1)
        .expect("submit");
    j.commit().expect("commit");
    assert_eq!(rows(&j.conn, "final_batches"), 0, "a turn without finals");
    let mut next = 1u64;
    let mut expected = Vec::new();
    for (turn, n) in [1u64, 100, 1_000].into_iter().enumerate() {
        for _ in 0..n {
            let rec = succeeded(&format!("task {next}"));
            j.record_final(TaskId(next), &rec).expect("final");
            expected.push(rec);
            next += 1;
        }
        assert!(!j.conn.is_autocommit(), "finals alone open the transaction");
        assert_eq!(j.commit().expect("commit").records, n as usize);
        assert!(j.conn.is_autocommit());
        assert_eq!(rows(&j.conn, "final_batches"), turn as i64 + 1);
        assert!(j.final_buf.is_empty());
    }
    drop(j);
    let (_, rec) = open(&dir);
    let outcomes: Vec<&Outcome> = rec
        .tasks
        .iter()
        .filter_map(|t| t.outcome.as_deref())
        .collect();
    assert_eq!(outcomes, expected.iter().collect::<Vec<_>>());
    assert!(rec.tasks[..expected.len()]
        .iter()
        .all(|t| t.outcome.is_some()));
}

#[test]
fn big_turns_are_split_and_the_buffer_shrinks_back() {
    let dir = TempDir::new("big-turn");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 200, &sleep_spec(1), 1)
        .expect("submit");
    // 200 finals with two 64 KiB tails each: 25 MiB in one turn.
    let tail = "y".repeat(64 << 10);
    let mut big = succeeded(&tail);
    big.stderr = tail.clone();
    for id in 1..=200 {
        j.record_final(TaskId(id), &big).expect("final");
        assert!(
            j.final_buf.len() < FINAL_BLOB_FLUSH_BYTES,
            "flushed as it fills"
        );
    }
    assert_eq!(j.commit().expect("commit").records, 201);
    let blobs = rows(&j.conn, "final_batches");
    assert!((6..=8).contains(&blobs), "{blobs} rows of at most 4 MiB");
    let max_blob: i64 = j
        .conn
        .query_row("SELECT max(length(records)) FROM final_batches", [], |r| {
            r.get(0)
        })
        .expect("max");
    assert!(max_blob < (FINAL_BLOB_FLUSH_BYTES + (256 << 10)) as i64);

    // One outcome of 12 MiB grows the buffer past the bound; the commit gives the memory back.
    let huge = succeeded(&"z".repeat(12 << 20));
    j.record_final(TaskId(1), &huge).expect("final");
    j.commit().expect("commit");
    assert!(j.final_buf.capacity() <= 2 * FINAL_BLOB_FLUSH_BYTES);
    drop(j);
    let (_, rec) = open(&dir);
    assert_eq!(rec.tasks[0].outcome.as_deref(), Some(&huge));
    assert!(rec.tasks[1..]
        .iter()
        .all(|t| t.outcome.as_deref() == Some(&big)));
}

#[test]
fn an_outcome_too_large_for_a_frame_poisons() {
    let dir = TempDir::new("too-large");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 1, &sleep_spec(1), 1)
        .expect("submit");
    j.commit().expect("commit");
    let huge = succeeded(&"z".repeat(protocol::MAX_FRAME));
    let err = j.record_final(TaskId(1), &huge).expect_err("too large");
    assert!(matches!(err, JournalError::Unrepresentable { .. }), "{err}");
    assert!(matches!(j.commit(), Err(JournalError::Poisoned { .. })));
    assert!(j.conn.is_autocommit(), "rolled back");
}

#[test]
fn a_failed_finals_insert_poisons_and_rolls_back() {
    let dir = TempDir::new("insert-fails");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 3, &sleep_spec(1), 1)
        .expect("submit");
    j.record_final(TaskId(1), &cancelled()).expect("final");
    j.commit().expect("commit");
    j.record_submit(TaskId(4), 1, &sleep_spec(1), 2)
        .expect("submit");
    j.record_final(TaskId(2), &cancelled()).expect("final");
    // Inside the turn's transaction, so the rollback restores the table.
    j.conn
        .execute_batch("DROP TABLE final_batches")
        .expect("sabotage");
    let err = j.commit().expect_err("insert fails");
    assert!(matches!(err, JournalError::Sqlite { .. }), "{err}");
    assert!(j.conn.is_autocommit(), "rolled back");
    assert_eq!(j.pending(), 0);
    assert!(matches!(j.commit(), Err(JournalError::Poisoned { .. })));
    assert!(matches!(
        j.record_final(TaskId(3), &cancelled()),
        Err(JournalError::Poisoned { .. })
    ));
    drop(j);
    let (_, rec) = open(&dir);
    assert_eq!(rec.next_id, TaskId(4));
    let done: Vec<u64> = rec
        .tasks
        .iter()
        .filter(|t| t.outcome.is_some())
        .map(|t| t.id.0)
        .collect();
    assert_eq!(done, [1]);
}

#[test]
fn bad_final_batches_are_typed_errors_naming_the_row() {
    let ok = succeeded("ok");
    let mut running = cancelled();
    running.state = TaskState::Running;
    let mut far_future = cancelled();
    far_future.finished_ms = u64::MAX;
    let good = blob(&[(1, &ok), (2, &cancelled())]);
    let mut trailing_in_frame = blob(&[(1, &ok)]);
    let len = u32::from_be_bytes(trailing_in_frame[..4].try_into().expect("4 bytes")) + 1;
    trailing_in_frame[..4].copy_from_slice(&len.to_be_bytes());
    trailing_in_frame.push(0);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("no batch holds this task id", vec![blob(&[(4, &ok)])]),
        (
            "no batch holds this task id",
            vec![good.clone(), blob(&[(1, &ok), (9, &ok)])],
        ),
        ("task ids start at 1", vec![blob(&[(0, &ok)])]),
        ("not a final state", vec![blob(&[(1, &running)])]),
        ("finished_ms", vec![blob(&[(1, &far_future)])]),
        (
            "undecodable",
            vec![good.clone(), vec![0, 0, 0, 3, 0xff, 0xff, 0xff]],
        ),
        ("exceeds the maximum", vec![vec![0xff; 8]]),
        ("trailing bytes", vec![trailing_in_frame]),
        ("truncated", vec![good[..good.len() - 1].to_vec()]),
        ("truncated", vec![[&good[..], &[0, 0]].concat()]),
        ("no records", vec![good.clone(), vec![]]),
    ];
    for (want, blobs) in cases {
        let dir = TempDir::new("bad-final");
        let (mut j, _) = open(&dir);
        j.record_submit(TaskId(1), 3, &sleep_spec(1), 1)
            .expect("submit");
        j.commit().expect("commit");
        drop(j);
        let conn = raw(&dir);
        // Sparse seqs, so the error must name the row's own seq, not its position.
        let mut last_seq = 0;
        for (i, b) in blobs.iter().enumerate() {
            last_seq = 10 * (i as i64 + 1);
            conn.execute(
                "INSERT INTO final_batches (seq, records, min_id, max_id) VALUES (?1, ?2, 1, 1)",
                params![last_seq, b],
            )
            .expect("tamper");
        }
        drop(conn);
        let err = Journal::open(&dir.0).expect_err(want);
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                JournalError::BadRow { table: "final_batches", id, .. } if id == last_seq
            ),
            "{want}: {msg}"
        );
        assert!(msg.contains(want), "{want}: {msg}");
        assert!(msg.contains(&dir.db().display().to_string()));
    }
}

#[test]
fn damaged_final_blobs_never_panic() {
    let dir = TempDir::new("damaged");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 3, &sleep_spec(1), 1)
        .expect("submit");
    j.record_final(TaskId(1), &succeeded("out")).expect("final");
    j.record_final(TaskId(3), &cancelled()).expect("final");
    j.commit().expect("commit");
    drop(j);
    let good = blob(&[(1, &succeeded("out")), (3, &cancelled())]);
    let mut damaged: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    for i in 0..good.len() {
        for byte in [0x00, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] ^= byte;
            damaged.push(b);
        }
    }
    for b in damaged {
        raw(&dir)
            .execute("UPDATE final_batches SET records = ?1", [&b])
            .expect("tamper");
        // Either a consistent journal (a flip inside a string or a number) or a typed error.
        match Journal::open(&dir.0) {
            Ok((_, rec)) => assert_eq!(rec.tasks.len(), 3),
            Err(e) => assert!(
                matches!(
                    e,
                    JournalError::BadRow {
                        table: "final_batches",
                        id: 1,
                        ..
                    }
                ),
                "{e}"
            ),
        }
    }
}

#[test]
fn data_dir_that_is_a_file_is_a_typed_error() {
    let dir = TempDir::new("file-dir");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let file = dir.0.join("plain");
    std::fs::write(&file, b"x").expect("write");
    let err = Journal::open(&file.join("data")).expect_err("not a dir");
    assert!(matches!(err, JournalError::CreateDir { .. }), "{err}");
}

/// Not a test: commit rates on this machine. Run with
/// `cargo test -p master --release journal::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, prints figures"]
fn measure() {
    // Each phase runs for this long or until it has recorded this many finals, whichever is
    // first: the cap keeps the recovery at the end within a few hundred MB.
    const PHASE: Duration = Duration::from_secs(2);
    const PHASE_FINALS: u64 = 1_000_000;
    let dir = TempDir::new("measure");
    let (mut j, _) = open(&dir);
    let mut next = 1u64;
    for per_commit in [1usize, 100] {
        let started = Instant::now();
        let mut commits = 0u32;
        while started.elapsed() < PHASE {
            for _ in 0..per_commit {
                j.record_submit(TaskId(next), 1, &sleep_spec(next), next)
                    .expect("submit");
                next += 1;
            }
            j.commit().expect("commit");
            commits += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{per_commit:>4} submits/commit: {:.0} commits/s, {:.0} records/s",
            commits as f64 / secs,
            commits as f64 * per_commit as f64 / secs
        );
    }
    // What a zero-length task leaves behind: no output, a worker name, exit code 0.
    let outcome = Outcome {
        state: TaskState::Succeeded,
        attempts: 1,
        copies: 1,
        worker: Some("a".into()),
        exit_code: Some(0),
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        started_ms: Some(1_000),
        finished_ms: 1_001,
    };
    // With `synchronous = OFF` the commit skips its fsync, which shows the journal's own CPU
    // cost per final (on this machine's disk an fsync alone is a few ms).
    for (sync, per_commit) in [
        ("FULL", 1u64),
        ("FULL", 100),
        ("FULL", 1_000),
        ("OFF", 100),
        ("OFF", 1_000),
    ] {
        j.conn
            .execute_batch(&format!("PRAGMA synchronous = {sync}"))
            .expect("pragma");
        // The ids to finish, submitted (one row) outside the timed part.
        let first = next;
        j.record_submit(TaskId(first), PHASE_FINALS, &sleep_spec(0), 1)
            .expect("submit");
        j.commit().expect("commit");
        next += PHASE_FINALS;
        let mut id = first;
        let started = Instant::now();
        while started.elapsed() < PHASE && id + per_commit <= next {
            for _ in 0..per_commit {
                j.record_final(TaskId(id), &outcome).expect("final");
                id += 1;
            }
            j.commit().expect("commit");
        }
        let secs = started.elapsed().as_secs_f64();
        let done = id - first;
        println!(
            "{per_commit:>4} finals/commit, synchronous={sync:<4}: {:.0} commits/s, {:.0} records/s",
            (done / per_commit) as f64 / secs,
            done as f64 / secs
        );
    }
    j.conn
        .execute_batch("PRAGMA synchronous = FULL")
        .expect("pragma");
    let started = Instant::now();
    for i in 0..10_000u64 {
        let mut spec = command_spec();
        spec.priority = i as i32;
        j.record_submit(TaskId(next), 1, &spec, i).expect("submit");
        next += 1;
    }
    let recorded = started.elapsed();
    j.commit().expect("commit");
    println!(
        "10000 distinct specs: record {recorded:?}, record+commit {:?}",
        started.elapsed()
    );
    drop(j);
    let db_bytes = std::fs::metadata(dir.db()).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let (_, rec) = open(&dir);
    let took = started.elapsed();
    println!(
        "recovery of {} tasks ({} finished, {} MB file + WAL): {took:?}",
        rec.tasks.len(),
        rec.tasks.iter().filter(|t| t.outcome.is_some()).count(),
        (db_bytes + dir.wal_len()) >> 20,
    );
}

#[test]
fn every_open_starts_an_incarnation_even_without_commits() {
    // A master that dies before committing anything still used its incarnation: what it handed
    // out must not be mistaken for the next one's.
    let dir = TempDir::new("incarnations");
    let ids: Vec<u32> = (0..3)
        .map(|_| {
            let (_, rec) = Journal::open(&dir.0).expect("opens");
            let last = rec.history.last().expect("current incarnation");
            assert_eq!(last.first_id, TaskId(1));
            last.incarnation.0
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let a = Journal::open(&TempDir::new("other-a").0).expect("opens").1;
    let b = Journal::open(&TempDir::new("other-b").0).expect("opens").1;
    assert_ne!(a.master_id, b.master_id, "two data dirs, two masters");
}

#[test]
fn a_version_2_journal_gains_the_identity_tables() {
    let dir = TempDir::new("from-v2");
    {
        let (mut j, _) = Journal::open(&dir.0).expect("opens");
        j.record_submit(TaskId(1), 3, &sleep_spec(1), 100)
            .expect("submit");
        j.commit().expect("commit");
    }
    let conn = raw(&dir);
    conn.execute_batch(
        "DROP TABLE master; DROP TABLE incarnations; DROP INDEX final_batches_by_max_id; DROP TABLE jobs; DROP TABLE forgotten;
         ALTER TABLE final_batches DROP COLUMN min_id;
         ALTER TABLE final_batches DROP COLUMN max_id;
         UPDATE schema_version SET version = 2;",
    )
    .expect("downgrade to version 2");
    drop(conn);
    // Version 2 kept no marks.
    std::fs::remove_file(dir.0.join(MARKS_FILE)).expect("marks removed");
    let (mut j, mut rec) = Journal::open(&dir.0).expect("migrates");
    fill(&mut j, &mut rec);
    drop(j);
    assert_eq!(version(&raw(&dir)), SCHEMA_VERSION);
    assert_eq!(rec.tasks.len(), 3);
    assert_eq!(
        rec.history,
        [EpochStart {
            incarnation: Incarnation(1),
            first_id: TaskId(4)
        }],
        "history starts at the migration: no version 2 worker can report a run"
    );
}

#[test]
fn a_version_3_journal_gets_a_job_per_batch_and_jobs_come_back() {
    let dir = TempDir::new("from-v3");
    {
        let (mut j, _) = Journal::open(&dir.0).expect("opens");
        j.record_submit(TaskId(1), 3, &sleep_spec(1), 100)
            .expect("submit");
        j.record_submit(TaskId(4), 1, &command_spec(), 101)
            .expect("submit");
        j.commit().expect("commit");
    }
    let conn = raw(&dir);
    conn.execute_batch(
        "DROP INDEX final_batches_by_max_id; DROP TABLE jobs; DROP TABLE forgotten; ALTER TABLE final_batches DROP COLUMN min_id;
         ALTER TABLE final_batches DROP COLUMN max_id; UPDATE schema_version SET version = 3;",
    )
    .expect("downgrade to version 3");
    drop(conn);
    let (mut j, mut rec) = Journal::open(&dir.0).expect("migrates");
    fill(&mut j, &mut rec);
    assert_eq!(version(&j.conn), SCHEMA_VERSION);
    let jobs: Vec<(u64, &str, u64, u64, u64)> = rec
        .jobs
        .iter()
        .map(|j| (j.id.0, j.name.as_str(), j.first.0, j.count, j.submitted_ms))
        .collect();
    let command = protocol::names::job_name(&command_spec());
    assert_eq!(
        jobs,
        vec![
            (1, "sleep 1ms", 1, 3, 100),
            (2, command.as_str(), 4, 1, 101)
        ]
    );
    // New jobs follow, and come back.
    let job = JobRecord {
        id: protocol::JobId(3),
        name: "build".into(),
        first: TaskId(5),
        count: 2,
        submitted_ms: 200,
    };
    let wrong = JobRecord {
        id: protocol::JobId(4),
        ..job.clone()
    };
    j.record_job(&job).expect("job");
    j.record_submit(TaskId(5), 2, &sleep_spec(2), 200)
        .expect("submit");
    j.commit().expect("commit");
    drop(j);
    let (mut j, mut rec) = Journal::open(&dir.0).expect("reopens");
    fill(&mut j, &mut rec);
    assert_eq!(rec.jobs.len(), 3);
    assert_eq!(rec.jobs[2], job);
    let e = j.record_job(&wrong).unwrap_err();
    assert!(matches!(e, JournalError::JobOutOfOrder { .. }), "{e}");
}

// ---- marks: a journal that lost committed work is refused, or its loss accepted aloud ----------

/// A crash image of a live journal: its files as they are on disk now (every commit fsynced),
/// copied while the journal stays open, so closing does not checkpoint the WAL away.
fn snapshot(dir: &TempDir, name: &str) -> TempDir {
    let copy = TempDir::new(name);
    std::fs::create_dir_all(&copy.0).expect("copy dir");
    for file in [DB_FILE, &format!("{DB_FILE}-wal"), MARKS_FILE] {
        let from = dir.0.join(file);
        if from.exists() {
            std::fs::copy(&from, copy.0.join(file)).expect("copy");
        }
    }
    copy
}

/// A journal with `batches` submissions of one task each, one commit each, and finals for the
/// first few: every commit in the WAL (far below the auto-checkpoint's 1000 pages).
fn journal_of_commits(name: &str, batches: u64) -> (TempDir, Journal) {
    let dir = TempDir::new(name);
    let (mut j, _) = open(&dir);
    for id in 1..=batches {
        j.record_submit(TaskId(id), 1, &sleep_spec(id), id)
            .expect("submit");
        if id % 10 == 0 {
            j.record_final(TaskId(id - 5), &succeeded("ok"))
                .expect("final");
        }
        j.commit().expect("commit");
    }
    (dir, j)
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    file.write_all_at(bytes, offset).expect("damage");
}

fn accept_loss() -> OpenOptions {
    OpenOptions { accept_loss: true }
}

#[test]
fn a_wal_damaged_in_the_middle_is_refused_with_the_lost_ids() {
    let (dir, j) = journal_of_commits("wal-damage", 90);
    let wal = dir.0.join(format!("{DB_FILE}-wal"));
    let len = std::fs::metadata(&wal).expect("wal").len();
    assert!(len > 100 << 10, "the commits are in the WAL ({len} bytes)");
    // Several places in the second half, and one right after the header.
    for (n, offset) in [len / 2, len * 2 / 3, len - 5_000, 40]
        .into_iter()
        .enumerate()
    {
        let copy = snapshot(&dir, &format!("wal-damage-{n}"));
        overwrite(&copy.0.join(format!("{DB_FILE}-wal")), offset, &[0xa5; 64]);
        let err = Journal::open(&copy.0).expect_err("a journal that lost work is refused");
        let JournalError::Lost { loss, .. } = &err else {
            panic!("offset {offset}: expected Lost, got {err}");
        };
        let (first, last) = loss.ids.expect("lost ids");
        assert_eq!(last, TaskId(90), "offset {offset}: {err}");
        assert!(first.0 > 1 || offset == 40, "offset {offset}: {err}");
        let text = err.to_string();
        for word in [
            "journal",
            "--accept-journal-loss",
            &format!("tasks {first} to 90"),
        ] {
            assert!(text.contains(word), "{word:?} missing from: {text}");
        }
        // The refusal changed nothing: it says the same again.
        let again = Journal::open(&copy.0).expect_err("still refused");
        assert_eq!(again.to_string(), text);
    }
    drop(j);
}

#[test]
fn an_accepted_loss_records_the_lost_ids_as_failed_and_goes_on() {
    let (dir, j) = journal_of_commits("accept", 60);
    let copy = snapshot(&dir, "accept-copy");
    drop(j);
    let wal = copy.0.join(format!("{DB_FILE}-wal"));
    let len = std::fs::metadata(&wal).expect("wal").len();
    overwrite(&wal, len / 2, &[0x5a; 64]);
    let Err(JournalError::Lost { loss, .. }) = Journal::open(&copy.0) else {
        panic!("expected Lost");
    };
    let (first, last) = loss.ids.expect("lost ids");
    let (mut j, rec) = Journal::open_with(&copy.0, accept_loss()).expect("accepted");
    assert_eq!(rec.next_id, TaskId(61), "no id is handed out twice");
    assert_eq!(rec.tasks.len(), 60);
    for t in &rec.tasks[first.0 as usize - 1..] {
        let outcome = t.outcome.as_ref().expect("a lost task is final");
        assert_eq!(outcome.state, TaskState::Failed, "task {}", t.id);
        assert!(
            outcome.error.as_deref().is_some_and(|e| e.contains("lost")),
            "{outcome:?}"
        );
    }
    assert!(rec.tasks[..first.0 as usize - 1]
        .iter()
        .all(|t| t.spec.kind != TaskKind::Sleep { ms: 0 }));
    assert_eq!(last, TaskId(60));
    // The new incarnation is above every one the marks knew (the one that wrote the tasks).
    let current = rec.history.last().expect("current").incarnation;
    assert!(current.0 >= 2, "{:?}", rec.history);
    j.record_submit(TaskId(61), 1, &sleep_spec(1), 1)
        .expect("ids go on");
    j.commit().expect("commit");
    drop(j);
    let (_, rec) = Journal::open(&copy.0).expect("whole again: no flag needed");
    assert_eq!(rec.next_id, TaskId(62));
    let failed = rec.tasks.iter().filter(|t| {
        t.outcome
            .as_ref()
            .is_some_and(|o| o.state == TaskState::Failed)
    });
    assert_eq!(failed.count() as u64, last.0 - first.0 + 1);
}

#[test]
fn lost_finals_and_an_older_copy_of_the_database_are_refused() {
    let (dir, mut j) = journal_of_commits("older", 20);
    let old = snapshot(&dir, "older-copy");
    for id in 1..=5 {
        j.record_final(TaskId(id), &succeeded("later"))
            .expect("final");
        j.commit().expect("commit");
    }
    // The older database under the newer marks: five commits of finals are missing.
    std::fs::copy(dir.0.join(MARKS_FILE), old.0.join(MARKS_FILE)).expect("newer marks");
    let err = Journal::open(&old.0).expect_err("older copy refused");
    let JournalError::Lost { loss, .. } = &err else {
        panic!("expected Lost, got {err}");
    };
    assert_eq!(
        *loss,
        Loss {
            ids: None,
            final_commits: 5,
            incarnations: 0
        }
    );
    assert!(err.to_string().contains("results of 5 commits"), "{err}");
    drop(j);
}

#[test]
fn a_deleted_database_with_its_marks_left_is_refused_and_keeps_its_identity_if_accepted() {
    let (dir, j) = journal_of_commits("deleted", 7);
    let copy = snapshot(&dir, "deleted-copy");
    drop(j);
    let (_, before) = Journal::open(&dir.0).expect("reopen");
    std::fs::remove_file(copy.0.join(DB_FILE)).expect("rm db");
    std::fs::remove_file(copy.0.join(format!("{DB_FILE}-wal"))).expect("rm wal");
    let err = Journal::open(&copy.0).expect_err("empty journal under marks");
    assert!(err.to_string().contains("tasks 1 to 7"), "{err}");
    let (_, rec) = Journal::open_with(&copy.0, accept_loss()).expect("accepted");
    assert_eq!(rec.next_id, TaskId(8));
    assert_eq!(rec.master_id, before.master_id, "the data dir keeps its id");
    assert!(rec.tasks.iter().all(|t| t.outcome.is_some()));
}

#[test]
fn damaged_or_foreign_marks_are_refused_unless_accepted() {
    let (dir, j) = journal_of_commits("bad-marks", 3);
    drop(j);
    let marks = dir.0.join(MARKS_FILE);
    let good = std::fs::read(&marks).expect("marks");
    std::fs::write(&marks, vec![0x11; good.len()]).expect("damage");
    let err = Journal::open(&dir.0).expect_err("damaged marks");
    assert!(matches!(err, JournalError::MarksDamaged { .. }), "{err}");
    let (_, rec) = Journal::open_with(&dir.0, accept_loss()).expect("accepted");
    assert_eq!(rec.next_id, TaskId(4));
    Journal::open(&dir.0).expect("new marks written");

    let other = TempDir::new("other-marks");
    Journal::open(&other.0).expect("another journal");
    std::fs::copy(other.0.join(MARKS_FILE), &marks).expect("foreign marks");
    let err = Journal::open(&dir.0).expect_err("foreign marks");
    assert!(matches!(err, JournalError::ForeignMarks { .. }), "{err}");
    Journal::open_with(&dir.0, accept_loss()).expect("accepted");
    Journal::open(&dir.0).expect("new marks written");
}

#[test]
fn a_journal_from_before_the_marks_opens_and_gains_them() {
    let (dir, j) = journal_of_commits("no-marks", 3);
    drop(j);
    std::fs::remove_file(dir.0.join(MARKS_FILE)).expect("rm marks");
    let (_, rec) = open(&dir);
    assert_eq!(rec.next_id, TaskId(4));
    assert!(dir.0.join(MARKS_FILE).exists());
}

#[test]
fn a_damaged_database_page_is_a_clear_error() {
    let (dir, j) = journal_of_commits("db-damage", 300);
    drop(j); // checkpoints: everything is in the main file now
    let db = dir.db();
    let len = std::fs::metadata(&db).expect("db").len();
    assert!(len >= 4 * 4096, "{len}");
    // Page 2 onwards holds the tables' b-trees: spoil their page headers.
    for page in 1..len / 4096 {
        overwrite(&db, page * 4096, &[0xee; 64]);
    }
    let err = Journal::open(&dir.0).expect_err("damaged database");
    let text = err.to_string();
    assert!(matches!(err, JournalError::NotADatabase { .. }), "{text}");
    for word in ["ballast.db", "damaged", "backup"] {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
}

#[test]
fn io_errors_are_named_by_what_the_system_said() {
    let path = Path::new("/data/ballast.db");
    let io = |extended: i32| {
        classify(
            path,
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(extended), None),
        )
    };
    let full = refine_io(io(rusqlite::ffi::SQLITE_IOERR_WRITE), libc::ENOSPC);
    assert!(matches!(full, JournalError::NoSpace { .. }), "{full}");
    assert!(full.to_string().contains("no space left"), "{full}");
    let fsync = refine_io(io(rusqlite::ffi::SQLITE_IOERR_FSYNC), libc::EDQUOT);
    assert!(matches!(fsync, JournalError::NoSpace { .. }), "{fsync}");
    let ro = refine_io(io(rusqlite::ffi::SQLITE_IOERR_LOCK), libc::EROFS);
    assert!(matches!(ro, JournalError::ReadOnly { .. }), "{ro}");
    assert!(ro.to_string().contains("read-only"), "{ro}");
    let other = refine_io(io(rusqlite::ffi::SQLITE_IOERR_READ), libc::EIO);
    assert!(matches!(other, JournalError::Sqlite { .. }), "{other}");
    let readonly = io(rusqlite::ffi::SQLITE_READONLY_DBMOVED);
    assert!(
        matches!(readonly, JournalError::ReadOnly { .. }),
        "{readonly}"
    );
    let disk_full = io(rusqlite::ffi::SQLITE_FULL);
    assert!(
        matches!(disk_full, JournalError::NoSpace { .. }),
        "{disk_full}"
    );
    // Not an I/O error: the errno is not looked at.
    let busy = refine_io(io(rusqlite::ffi::SQLITE_BUSY), libc::ENOSPC);
    assert!(matches!(busy, JournalError::Locked { .. }), "{busy}");
}

#[test]
fn forgotten_tasks_leave_the_journal_and_their_ids_stay_used() {
    let dir = TempDir::new("forget");
    let (mut j, _) = open(&dir);
    // Three batches of two, one commit of finals each: 1-2, 3-4, 5-6. Outputs of some pages
    // each, so deleting a row frees pages.
    let big = "x".repeat(20_000);
    for first in [1, 3, 5] {
        j.record_submit(TaskId(first), 2, &sleep_spec(1), 1)
            .expect("submit");
        j.record_final(TaskId(first), &succeeded(&big))
            .expect("final");
        j.record_final(TaskId(first + 1), &succeeded(&big))
            .expect("final");
        j.commit().expect("commit");
    }
    // 1-2 wholly, 4 alone, 5-6 (the newest batch and the newest finals row).
    j.record_forgotten(&[(TaskId(1), TaskId(2)), (TaskId(4), TaskId(4))])
        .expect("forget");
    j.record_forgotten(&[(TaskId(5), TaskId(6))])
        .expect("forget");
    j.commit().expect("commit");
    assert!(j.vacuum_due());
    let pages = |j: &Journal| -> i64 {
        j.conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .expect("freelist")
    };
    let free = pages(&j);
    assert!(free > 0, "the deleted rows left free pages");
    let steps = (free as u32).div_ceil(VACUUM_PAGES_PER_STEP);
    for _ in 0..steps {
        j.compact_step().expect("vacuum");
    }
    assert_eq!(pages(&j), 0);
    assert!(
        !j.vacuum_due(),
        "every free page given back in {steps} steps"
    );
    {
        let conn = &j.conn;
        assert_eq!(rows(conn, "batches"), 1, "only 3-4 keeps its row");
        // 1-2's row deleted; 3-4's kept (3 lives); 5-6's is the newest: emptied, kept.
        assert_eq!(rows(conn, "final_batches"), 2);
        let ranges: Vec<(i64, i64)> = conn
            .prepare("SELECT first_id, last_id FROM forgotten ORDER BY first_id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .expect("ranges");
        assert_eq!(ranges, vec![(1, 2), (4, 6)], "adjacent ranges merged");
    }
    drop(j);
    let (j, rec) = open(&dir);
    let ids: Vec<TaskId> = rec.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![TaskId(3)]);
    assert!(rec.tasks[0].outcome.is_some());
    assert_eq!(
        rec.next_id,
        TaskId(7),
        "the newest ids are never handed out again"
    );
    assert_eq!(
        rec.forgotten,
        vec![(TaskId(1), TaskId(2)), (TaskId(4), TaskId(6))]
    );
    assert_eq!(
        rec.history.last().map(|s| s.first_id),
        Some(TaskId(7)),
        "the new incarnation starts past them"
    );
    drop(j);
}

#[test]
fn a_version_4_journal_gains_retention_and_incremental_vacuum() {
    let dir = TempDir::new("from-v4");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 2, &sleep_spec(1), 1)
        .expect("submit");
    j.record_final(TaskId(2), &succeeded("x")).expect("final");
    j.commit().expect("commit");
    drop(j);
    raw(&dir)
        .execute_batch(
            "DROP INDEX final_batches_by_max_id; DROP INDEX jobs_by_first_id; DROP TABLE forgotten; ALTER TABLE final_batches DROP COLUMN min_id;
             ALTER TABLE final_batches DROP COLUMN max_id; UPDATE schema_version SET version = 4;
             PRAGMA auto_vacuum = NONE; VACUUM;",
        )
        .expect("make a version 4 journal");
    let mode = |c: &Connection| -> i64 {
        c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .expect("auto_vacuum")
    };
    assert_eq!(mode(&raw(&dir)), 0);
    let (mut j, rec) = Journal::open(&dir.0).expect("migrates");
    assert_eq!(version(&j.conn), SCHEMA_VERSION);
    assert_eq!(mode(&j.conn), 2, "incremental");
    assert_eq!(rec.tasks.len(), 2);
    let span: (i64, i64) = j
        .conn
        .query_row("SELECT min_id, max_id FROM final_batches", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("span");
    assert_eq!(span, (2, 2), "the old row got its id span");
    j.record_forgotten(&[(TaskId(2), TaskId(2))])
        .expect("forget");
    j.commit().expect("commit");
    drop(j);
    let (_j, rec) = open(&dir);
    assert_eq!(rec.tasks.len(), 1);
    assert_eq!(rec.next_id, TaskId(3));
}

#[test]
fn committed_finals_say_where_they_are_and_read_back() {
    let dir = TempDir::new("read-back");
    let (mut j, _) = open(&dir);
    j.record_submit(TaskId(1), 3, &sleep_spec(1), 5)
        .expect("submit");
    j.commit().expect("commit");
    j.record_final(TaskId(1), &succeeded("one")).expect("final");
    j.record_final(TaskId(3), &cancelled()).expect("final");
    // Not durable yet: nothing to say where it is.
    assert!(j.committed_finals().is_empty());
    j.commit().expect("commit");
    let at: Vec<_> = j.committed_finals().to_vec();
    assert_eq!(
        at.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [TaskId(1), TaskId(3)]
    );
    assert_eq!(at[0].1.seq(), at[1].1.seq(), "one commit, one row");
    let one = j
        .read_final(TaskId(1), at[0].1)
        .expect("reads")
        .expect("there");
    assert_eq!((one.exit_code, one.stdout.as_str()), (Some(0), "one"));
    let three = j
        .read_final(TaskId(3), at[1].1)
        .expect("reads")
        .expect("there");
    assert_eq!(three.error, cancelled().error);
    // The wrong task at a place is nobody's outcome.
    assert!(j.read_final(TaskId(2), at[0].1).expect("reads").is_none());
    // A commit with no finals says nothing; the locations survive a restart.
    j.record_submit(TaskId(4), 1, &sleep_spec(1), 5)
        .expect("submit");
    j.commit().expect("commit");
    assert!(j.committed_finals().is_empty());
    drop(j);
    let (_, rec) = Journal::open(&dir.0).expect("reopen");
    assert_eq!(rec.tasks[0].stored, Some(at[0].1));
    assert_eq!(
        rec.tasks[0].outcome.as_ref().map(|o| o.stdout.as_str()),
        Some("")
    );
}
