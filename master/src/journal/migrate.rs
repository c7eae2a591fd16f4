//! Upgrading an older journal in place at `open`. One transaction holds the rewrite and the
//! read-back, so a file that fails either is rolled back and left as it was, still the old version.

use super::{
    classify, recover, FinalEntry, JournalError, Recovered, FORGET_TABLES, IDENTITY_TABLES,
    INSERT_JOB, JOBS_TABLE, SCHEMA_VERSION,
};
use protocol::{FrameDecoder, TaskSpec, TaskState};
use rusqlite::{params, Connection};
use serde::Deserialize;
use std::borrow::Cow;
use std::path::Path;

// `from_v1` writes version 2 entries, which versions 3 to 5 keep (they only added tables and
// columns); a version 6 needs its own step after `FORGET_TABLES`.
const _: () = assert!(SCHEMA_VERSION == 5);

/// `FinalEntry` exactly as version 1 wrote it: no `copies`.
/// IMPORTANT: frozen. It must decode version 1 blobs for as long as they can be migrated.
#[derive(Debug, Deserialize)]
struct FinalEntryV1 {
    id: u64,
    state: TaskState,
    attempts: u32,
    worker: Option<String>,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    error: Option<String>,
    started_ms: Option<u64>,
    finished_ms: u64,
}

impl FinalEntryV1 {
    fn into_v2(self) -> FinalEntry<'static> {
        FinalEntry {
            id: self.id,
            state: self.state,
            attempts: self.attempts,
            // Version 1 had no replicas: an outcome with a worker ran one copy, one without a
            // worker (cancelled while queued) never ran.
            copies: u32::from(self.worker.is_some()),
            worker: self.worker.map(Cow::Owned),
            exit_code: self.exit_code,
            stdout: Cow::Owned(self.stdout),
            stderr: Cow::Owned(self.stderr),
            error: self.error.map(Cow::Owned),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
        }
    }
}

/// Rewrites every `final_batches` blob from version 1 entries to version 2, sets the version and
/// reads the journal back, all in one transaction. Returns what was recovered and how many rows
/// were rewritten.
pub(super) fn from_v1(conn: &Connection, path: &Path) -> Result<(Recovered, usize), JournalError> {
    let sql = |e| classify(path, e);
    let tx = conn.unchecked_transaction().map_err(sql)?;
    // The seqs first: SQLite leaves a SELECT undefined while the same connection updates the
    // rows it is stepping over. One i64 per commit ever made, so small.
    let seqs = tx
        .prepare("SELECT seq FROM final_batches ORDER BY seq")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<i64>, _>>()
        })
        .map_err(sql)?;
    // Reused across rows: one blob (at most a few MiB, see FINAL_BLOB_FLUSH_BYTES) at a time.
    let mut decoder = FrameDecoder::new();
    let mut blob = Vec::new();
    for &seq in &seqs {
        let bad = |detail: String| JournalError::BadRow {
            path: path.to_path_buf(),
            table: "final_batches",
            id: seq,
            detail,
        };
        {
            let mut stmt = tx
                .prepare_cached("SELECT records FROM final_batches WHERE seq = ?1")
                .map_err(sql)?;
            let mut rows = stmt.query([seq]).map_err(sql)?;
            let row = rows
                .next()
                .map_err(sql)?
                .ok_or_else(|| bad("vanished during the migration".into()))?;
            let old = row
                .get_ref(0)
                .map_err(|e| bad(e.to_string()))?
                .as_blob()
                .map_err(|e| bad(e.to_string()))?;
            decoder.extend(old);
        }
        blob.clear();
        let mut index = 0usize;
        loop {
            let entry = match decoder.next_frame::<FinalEntryV1>() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => return Err(bad(format!("version 1 record {index}: {e}"))),
            };
            protocol::encode_frame(&entry.into_v2(), &mut blob)
                .map_err(|e| bad(format!("version 1 record {index}: {e}")))?;
            index += 1;
        }
        if decoder.buffered() != 0 {
            return Err(bad(format!(
                "truncated: {} bytes after version 1 record {index} are not a whole record",
                decoder.buffered()
            )));
        }
        tx.prepare_cached("UPDATE final_batches SET records = ?2 WHERE seq = ?1")
            .and_then(|mut stmt| stmt.execute(params![seq, &blob[..]]))
            .map_err(sql)?;
    }
    tx.execute_batch(IDENTITY_TABLES).map_err(sql)?;
    add_jobs(&tx, path)?;
    tx.execute_batch(FORGET_TABLES).map_err(sql)?;
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .map_err(sql)?;
    // Inside the transaction: a migrated journal that does not read back is never committed.
    let recovered = recover::read_all(&tx, path)?;
    tx.commit().map_err(sql)?;
    Ok((recovered, seqs.len()))
}

/// Version 2 to 3: the identity tables, empty (the master id and the first incarnation are made
/// by `open` right after, as for a new journal), in one transaction with the read-back.
pub(super) fn from_v2(conn: &Connection, path: &Path) -> Result<Recovered, JournalError> {
    let sql = |e| classify(path, e);
    let tx = conn.unchecked_transaction().map_err(sql)?;
    tx.execute_batch(IDENTITY_TABLES).map_err(sql)?;
    add_jobs(&tx, path)?;
    tx.execute_batch(FORGET_TABLES).map_err(sql)?;
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .map_err(sql)?;
    let recovered = recover::read_all(&tx, path)?;
    tx.commit().map_err(sql)?;
    Ok(recovered)
}

/// Version 3 to 4: the jobs table, one job per batch (a batch is one spec of one submission;
/// which batches were one submission is not recorded), named after its spec, in one
/// transaction with the read-back.
pub(super) fn from_v3(conn: &Connection, path: &Path) -> Result<Recovered, JournalError> {
    let sql = |e| classify(path, e);
    let tx = conn.unchecked_transaction().map_err(sql)?;
    add_jobs(&tx, path)?;
    tx.execute_batch(FORGET_TABLES).map_err(sql)?;
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .map_err(sql)?;
    let recovered = recover::read_all(&tx, path)?;
    tx.commit().map_err(sql)?;
    Ok(recovered)
}

/// Version 4 to 5: the retention tables (no task forgotten yet; the id span of every
/// `final_batches` row is filled in by the read-back), in one transaction with the read-back.
/// Incremental vacuum is turned on after (`enable_incremental_vacuum`: a VACUUM cannot run
/// inside a transaction).
pub(super) fn from_v4(conn: &Connection, path: &Path) -> Result<Recovered, JournalError> {
    let sql = |e| classify(path, e);
    let tx = conn.unchecked_transaction().map_err(sql)?;
    tx.execute_batch(FORGET_TABLES).map_err(sql)?;
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .map_err(sql)?;
    let recovered = recover::read_all(&tx, path)?;
    tx.commit().map_err(sql)?;
    Ok(recovered)
}

/// Creates the jobs table and fills it with one job per batch. A spec that does not parse is
/// left to the read-back, which names its row.
fn add_jobs(tx: &Connection, path: &Path) -> Result<(), JournalError> {
    let sql = |e| classify(path, e);
    tx.execute_batch(JOBS_TABLE).map_err(sql)?;
    // Read whole first: SQLite leaves a SELECT undefined while the same connection writes. One
    // row per batch, whose spec is at most a MiB; a journal of many batches costs their names.
    let batches = tx
        .prepare("SELECT first_id, count, spec, submitted_ms FROM batches ORDER BY first_id")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                let spec: String = r.get(2)?;
                let name = serde_json::from_str::<TaskSpec>(&spec)
                    .map_or_else(|_| "?".to_string(), |s| protocol::names::job_name(&s));
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    name,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(sql)?;
    let mut stmt = tx.prepare(INSERT_JOB).map_err(sql)?;
    for (i, (first, count, name, submitted_ms)) in batches.into_iter().enumerate() {
        stmt.execute(params![i as i64 + 1, name, first, count, submitted_ms])
            .map_err(sql)?;
    }
    Ok(())
}
