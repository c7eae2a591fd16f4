//! Reading the journal back at `open`: batches expanded to tasks in id order, finals merged in.
//! Nothing read from the file is trusted: every impossible value is a typed error naming its row.

use super::{classify, FinalRecord, JournalError, Recovered, RecoveredTask};
use protocol::{TaskId, TaskSpec, TaskState};
use rusqlite::{Connection, Row};
use std::path::Path;
use std::sync::Arc;

pub(super) fn read_all(conn: &Connection, path: &Path) -> Result<Recovered, JournalError> {
    let sql = |e| classify(path, e);
    // Both sides are in id order, so one pass merges them.
    let mut finals = read_finals(conn, path)?.into_iter().peekable();
    let orphan = |id: u64| JournalError::BadRow {
        path: path.to_path_buf(),
        table: "finals",
        id: id as i64,
        detail: "no batch holds this task id".into(),
    };
    let mut tasks: Vec<RecoveredTask> = Vec::new();
    let mut next_id: u64 = 1;
    let mut stmt = conn
        .prepare("SELECT first_id, count, spec, submitted_ms FROM batches ORDER BY first_id")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let batch = read_batch(row, path, next_id)?;
        let count = usize::try_from(batch.end - batch.first).ok();
        if count.and_then(|n| tasks.try_reserve(n).ok()).is_none() {
            return Err(JournalError::BadRow {
                path: path.to_path_buf(),
                table: "batches",
                id: batch.first as i64,
                detail: format!("{} tasks do not fit in memory", batch.end - batch.first),
            });
        }
        for id in batch.first..batch.end {
            let outcome = match finals.peek() {
                // Unreachable with dense batches; a guard so no file can misplace an outcome.
                Some(&(fid, _)) if fid < id => return Err(orphan(fid)),
                Some(&(fid, _)) if fid == id => finals.next().map(|(_, rec)| rec),
                _ => None,
            };
            tasks.push(RecoveredTask {
                id: TaskId(id),
                spec: Arc::clone(&batch.spec),
                submitted_ms: batch.submitted_ms,
                outcome,
            });
        }
        next_id = batch.end;
    }
    if let Some((fid, _)) = finals.next() {
        return Err(orphan(fid));
    }
    Ok(Recovered {
        tasks,
        next_id: TaskId(next_id),
    })
}

struct Batch {
    first: u64,
    /// One past the last id.
    end: u64,
    spec: Arc<TaskSpec>,
    submitted_ms: u64,
}

/// One `batches` row, checked; `next_id` is where the previous batch ended.
fn read_batch(row: &Row<'_>, path: &Path, next_id: u64) -> Result<Batch, JournalError> {
    let first_id: i64 = row.get(0).map_err(|e| classify(path, e))?;
    let bad = |detail: String| JournalError::BadRow {
        path: path.to_path_buf(),
        table: "batches",
        id: first_id,
        detail,
    };
    let count: i64 = row.get(1).map_err(|e| bad(e.to_string()))?;
    let submitted_ms: i64 = row.get(3).map_err(|e| bad(e.to_string()))?;
    if first_id < 1 {
        return Err(bad("task ids start at 1".into()));
    }
    if count < 1 {
        return Err(bad(format!("count {count} is not positive")));
    }
    if submitted_ms < 0 {
        return Err(bad(format!("submitted_ms {submitted_ms} is negative")));
    }
    let first = first_id as u64;
    // Ids are dense from 1: an overlap gives two specs to one id, a gap lost a submission.
    if first != next_id {
        return Err(bad(format!("expected a batch starting at id {next_id}")));
    }
    let end = first_id
        .checked_add(count)
        .ok_or_else(|| bad(format!("count {count} runs past the largest id")))?
        as u64;
    let bad_spec = |detail: String| JournalError::BadSpec {
        path: path.to_path_buf(),
        first_id,
        detail,
    };
    // Borrowed from SQLite's row buffer: no copy of the JSON text.
    let text = row
        .get_ref(2)
        .map_err(|e| bad_spec(e.to_string()))?
        .as_str()
        .map_err(|e| bad_spec(e.to_string()))?;
    let spec: TaskSpec = serde_json::from_str(text).map_err(|e| bad_spec(e.to_string()))?;
    spec.validate().map_err(bad_spec)?;
    Ok(Batch {
        first,
        end,
        spec: Arc::new(spec),
        submitted_ms: submitted_ms as u64,
    })
}

fn read_finals(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(u64, Box<FinalRecord>)>, JournalError> {
    let sql = |e| classify(path, e);
    let mut stmt = conn
        .prepare(
            "SELECT id, state, attempts, worker, exit_code, stdout, stderr, error, started_ms, \
             finished_ms FROM finals ORDER BY id",
        )
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut finals = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        finals.push(read_final(row, path)?);
    }
    Ok(finals)
}

fn read_final(row: &Row<'_>, path: &Path) -> Result<(u64, Box<FinalRecord>), JournalError> {
    let id: i64 = row.get(0).map_err(|e| classify(path, e))?;
    let bad = |detail: String| JournalError::BadRow {
        path: path.to_path_buf(),
        table: "finals",
        id,
        detail,
    };
    let get_err = |e: rusqlite::Error| bad(e.to_string());
    if id < 1 {
        return Err(bad("task ids start at 1".into()));
    }
    let state_text = row
        .get_ref(1)
        .and_then(|v| Ok(v.as_str()?))
        .map_err(get_err)?;
    let state = parse_state(state_text)
        .filter(|s| s.is_final())
        .ok_or_else(|| bad(format!("state {state_text:?} is not a final state")))?;
    let attempts: i64 = row.get(2).map_err(get_err)?;
    let attempts =
        u32::try_from(attempts).map_err(|_| bad(format!("attempts {attempts} out of range")))?;
    let exit_code: Option<i64> = row.get(4).map_err(get_err)?;
    let exit_code = exit_code
        .map(i32::try_from)
        .transpose()
        .map_err(|_| bad(format!("exit_code {exit_code:?} out of range")))?;
    let ms = |col: usize, name: &str| -> Result<Option<u64>, JournalError> {
        let v: Option<i64> = row.get(col).map_err(get_err)?;
        v.map(|v| u64::try_from(v).map_err(|_| bad(format!("{name} {v} is negative"))))
            .transpose()
    };
    let started_ms = ms(8, "started_ms")?;
    let finished_ms = ms(9, "finished_ms")?.ok_or_else(|| bad("finished_ms is null".into()))?;
    let rec = FinalRecord {
        state,
        attempts,
        worker: row.get(3).map_err(get_err)?,
        exit_code,
        stdout: row.get(5).map_err(get_err)?,
        stderr: row.get(6).map_err(get_err)?,
        error: row.get(7).map_err(get_err)?,
        started_ms,
        finished_ms,
    };
    Ok((id as u64, Box::new(rec)))
}

/// The inverse of `TaskState::as_str`.
fn parse_state(s: &str) -> Option<TaskState> {
    const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::WorkerLost,
    ];
    ALL.into_iter().find(|state| state.as_str() == s)
}
