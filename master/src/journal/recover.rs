//! Reading the journal back at `open`: batches expanded to tasks in id order, then every commit's
//! finals replayed onto them in commit order.
//! Nothing read from the file is trusted: every impossible value is a typed error naming its row.

use super::{classify, FinalEntry, JobRecord, JournalError, Outcome, Recovered, RestoredTask};
use crate::core::StoredAt;
use protocol::limits::MAX_JOB_NAME_BYTES;
use protocol::{FrameDecoder, JobId, TaskId, TaskSpec};
use rusqlite::{Connection, Row};
use std::path::Path;
use std::sync::Arc;

pub(super) fn read_all(conn: &Connection, path: &Path) -> Result<Recovered, JournalError> {
    let sql = |e| classify(path, e);
    let forgotten = read_forgotten(conn, path)?;
    let mut tasks: Vec<RestoredTask> = Vec::new();
    let mut next_id: u64 = 1;
    let mut stmt = conn
        .prepare("SELECT first_id, count, spec, submitted_ms FROM batches ORDER BY first_id")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    // Forgotten ranges in order: `gone` is the next one not wholly behind the batches read.
    let mut gone = forgotten.iter().peekable();
    while let Some(row) = rows.next().map_err(sql)? {
        // Batches wholly forgotten were deleted: their ids are skipped over.
        let first_id: i64 = row.get(0).map_err(sql)?;
        let first_id = u64::try_from(first_id).unwrap_or(0);
        while next_id < first_id {
            match gone.peek() {
                Some(&&(_, b)) if b.0 < next_id => {
                    gone.next();
                }
                Some(&&(a, b)) if a.0 <= next_id => next_id = (b.0 + 1).min(first_id),
                // Not forgotten: `read_batch` says what is missing.
                _ => break,
            }
        }
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
            if is_forgotten(&forgotten, id) {
                continue;
            }
            tasks.push(RestoredTask {
                id: TaskId(id),
                spec: Arc::clone(&batch.spec),
                submitted_ms: batch.submitted_ms,
                stored: None,
                outcome: None,
            });
        }
        next_id = batch.end;
    }
    drop(rows);
    drop(stmt);
    // The newest tasks may be forgotten, and their batches gone: their ids stay used.
    if let Some(&(_, last)) = forgotten.last() {
        next_id = next_id.max(last.0 + 1);
    }
    read_finals(conn, path, &mut tasks, &forgotten)?;
    let jobs = read_jobs(conn, path, next_id)?;
    Ok(Recovered {
        tasks,
        next_id: TaskId(next_id),
        // Filled in by `open`, which starts the next incarnation.
        master_id: 0,
        history: Vec::new(),
        jobs,
        forgotten,
    })
}

/// The `forgotten` ranges in order, checked: each a real range, none overlapping the next.
fn read_forgotten(conn: &Connection, path: &Path) -> Result<Vec<(TaskId, TaskId)>, JournalError> {
    let sql = |e| classify(path, e);
    let mut stmt = conn
        .prepare("SELECT first_id, last_id FROM forgotten ORDER BY first_id")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut ranges: Vec<(TaskId, TaskId)> = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let first: i64 = row.get(0).map_err(sql)?;
        let bad = |detail: String| JournalError::BadRow {
            path: path.to_path_buf(),
            table: "forgotten",
            id: first,
            detail,
        };
        let last: i64 = row.get(1).map_err(|e| bad(e.to_string()))?;
        if first < 1 || last < first {
            return Err(bad(format!("{first} to {last} is not a range of task ids")));
        }
        if ranges.last().is_some_and(|&(_, b)| b.0 >= first as u64) {
            return Err(bad("overlaps the range before".into()));
        }
        ranges.push((TaskId(first as u64), TaskId(last as u64)));
    }
    Ok(ranges)
}

/// Whether `id` lies in one of `ranges` (sorted, disjoint).
fn is_forgotten(ranges: &[(TaskId, TaskId)], id: u64) -> bool {
    let i = ranges.partition_point(|&(a, _)| a.0 <= id);
    i > 0 && ranges[i - 1].1 .0 >= id
}

/// The `jobs` rows in id order, checked: dense from 1, each range right after the last, none
/// past the tasks (`next_id` is one past the last task recorded).
fn read_jobs(conn: &Connection, path: &Path, next_id: u64) -> Result<Vec<JobRecord>, JournalError> {
    let sql = |e| classify(path, e);
    let mut stmt = conn
        .prepare("SELECT id, name, first_id, count, submitted_ms FROM jobs ORDER BY id")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut jobs: Vec<JobRecord> = Vec::new();
    let mut end: u64 = 1;
    while let Some(row) = rows.next().map_err(sql)? {
        let id: i64 = row.get(0).map_err(sql)?;
        let bad = |detail: String| JournalError::BadRow {
            path: path.to_path_buf(),
            table: "jobs",
            id,
            detail,
        };
        let name: String = row.get(1).map_err(|e| bad(e.to_string()))?;
        let first: i64 = row.get(2).map_err(|e| bad(e.to_string()))?;
        let count: i64 = row.get(3).map_err(|e| bad(e.to_string()))?;
        let submitted_ms: i64 = row.get(4).map_err(|e| bad(e.to_string()))?;
        if id != jobs.len() as i64 + 1 {
            return Err(bad(format!("expected job {}", jobs.len() + 1)));
        }
        if first != end as i64 {
            return Err(bad(format!("expected its tasks to start at id {end}")));
        }
        if count < 1 || submitted_ms < 0 {
            return Err(bad(format!(
                "count {count} and submitted_ms {submitted_ms} must be positive"
            )));
        }
        if name.len() > MAX_JOB_NAME_BYTES {
            return Err(bad(format!(
                "name of {} bytes, more than {MAX_JOB_NAME_BYTES}",
                name.len()
            )));
        }
        let last_end = first.checked_add(count).map(|e| e as u64);
        match last_end {
            Some(e) if e <= next_id => end = e,
            _ => {
                return Err(bad(format!(
                    "tasks past the last recorded ({})",
                    next_id - 1
                )))
            }
        }
        jobs.push(JobRecord {
            id: JobId(id as u64),
            name,
            first: TaskId(first as u64),
            count: count as u64,
            submitted_ms: submitted_ms as u64,
        });
    }
    Ok(jobs)
}

/// Replays `final_batches` in commit order onto `tasks` (dense from id 1, as `read_batch`
/// checked), so a later outcome for an id replaces an earlier one, as the live journal promises.
/// Outcomes of forgotten tasks are skipped; rows without their id span (written before version
/// 5) get it.
fn read_finals(
    conn: &Connection,
    path: &Path,
    tasks: &mut [RestoredTask],
    forgotten: &[(TaskId, TaskId)],
) -> Result<(), JournalError> {
    let sql = |e| classify(path, e);
    // Dense (nothing forgotten): task `id` sits at `id - 1`; else a binary search.
    let dense = forgotten.is_empty();
    let known = tasks.len();
    let mut unspanned: Vec<(i64, u64, u64)> = Vec::new();
    let mut stmt = conn
        .prepare("SELECT seq, records, min_id FROM final_batches ORDER BY seq")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    // One decoder for all rows: its buffer is reused, and it is empty again after a whole blob.
    let mut decoder = FrameDecoder::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let seq: i64 = row.get(0).map_err(sql)?;
        let bad = |detail: String| JournalError::BadRow {
            path: path.to_path_buf(),
            table: "final_batches",
            id: seq,
            detail,
        };
        // Borrowed from SQLite's row buffer; the decoder takes its own copy.
        let blob = row
            .get_ref(1)
            .map_err(|e| bad(e.to_string()))?
            .as_blob()
            .map_err(|e| bad(e.to_string()))?;
        let spanned = row
            .get_ref(2)
            .map_err(|e| bad(e.to_string()))?
            .as_i64_or_null()
            .map_err(|e| bad(e.to_string()))?
            .is_some();
        if blob.is_empty() {
            // The newest row, emptied when all its tasks were forgotten (its seq stays).
            if spanned {
                return Err(bad("no records, yet an id span".into()));
            }
            continue;
        }
        decoder.extend(blob);
        let mut index = 0usize;
        let mut span: Option<(u64, u64)> = None;
        loop {
            // The blob's frames are whole, so the decoder is empty at the blob's start.
            let offset = blob.len() - decoder.buffered();
            let entry = match decoder.next_frame::<FinalEntry<'static>>() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => return Err(bad(format!("record {index}: {e}"))),
            };
            let (id, mut rec) = entry.into_record();
            span = Some(span.map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))));
            index += 1;
            if !dense && is_forgotten(forgotten, id) {
                continue;
            }
            let slot = if dense {
                check_final(id, &rec, known)
            } else {
                check_final(id, &rec, usize::MAX).and_then(|_| {
                    tasks
                        .binary_search_by_key(&TaskId(id), |t| t.id)
                        .map_err(|_| "no batch holds this task id".to_string())
                })
            };
            let slot =
                slot.map_err(|detail| bad(format!("record {} (task {id}): {detail}", index - 1)))?;
            debug_assert_eq!(tasks[slot].id, TaskId(id));
            // The tails stay on disk: the core reads them back when asked (`read_final`), so
            // a restart costs no more RAM per finished task than the run before it did.
            let stored = StoredAt::new(seq as u64, offset as u64);
            if stored.is_some() {
                rec.stdout = String::new();
                rec.stderr = String::new();
                rec.error = None;
            }
            tasks[slot].stored = stored;
            tasks[slot].outcome = Some(Box::new(rec));
        }
        if let (false, Some((lo, hi))) = (spanned, span) {
            unspanned.push((seq, lo, hi));
        }
        if decoder.buffered() != 0 {
            return Err(bad(format!(
                "truncated: {} bytes after record {index} are not a whole record",
                decoder.buffered()
            )));
        }
    }
    drop(rows);
    drop(stmt);
    // Rows from before version 5 (migrated in this transaction): their span, so forgetting can
    // delete them.
    for (seq, lo, hi) in unspanned {
        conn.prepare_cached("UPDATE final_batches SET min_id = ?2, max_id = ?3 WHERE seq = ?1")
            .and_then(|mut stmt| stmt.execute(rusqlite::params![seq, lo as i64, hi as i64]))
            .map_err(sql)?;
    }
    Ok(())
}

/// Checks one decoded final against what the journal can have written; returns the index of
/// its task in `tasks` (of length `known`: ids 1 ..= known were submitted).
fn check_final(id: u64, rec: &Outcome, known: usize) -> Result<usize, String> {
    if id < 1 {
        return Err("task ids start at 1".into());
    }
    if !rec.state.is_final() {
        return Err(format!(
            "state {:?} is not a final state",
            rec.state.as_str()
        ));
    }
    for (name, ms) in [
        ("started_ms", rec.started_ms),
        ("finished_ms", Some(rec.finished_ms)),
    ] {
        if let Some(ms) = ms.filter(|&ms| ms > i64::MAX as u64) {
            return Err(format!("{name} {ms} is past {}", i64::MAX));
        }
    }
    match usize::try_from(id - 1) {
        Ok(slot) if slot < known => Ok(slot),
        _ => Err("no batch holds this task id".into()),
    }
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
