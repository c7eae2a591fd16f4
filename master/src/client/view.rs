//! What the user sees: the `--json` shapes (field names are the command-line contract, so they are
//! spelled out in view structs rather than derived from wire types that may grow), and aligned tables.

use super::ids::{IdList, IdRange};
use super::wait::WaitSummary;
pub use master::json::{ResultView, StatusView};
use protocol::{StatusReport, TaskResult, WorkerStatus};
use serde::Serialize;
use std::io::{self, BufWriter, StdoutLock, Write};

pub type Out = BufWriter<StdoutLock<'static>>;

/// Locked and buffered: `results` may print hundreds of thousands of rows, and `println!` would
/// both lock per line and panic on a closed pipe.
pub fn stdout() -> Out {
    BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

pub fn write_json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> io::Result<()> {
    // serde_json keeps the io::ErrorKind, so a closed pipe is still recognised upstream.
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)
}

// ---------------------------------------------------------------------------------------------
// submit

/// `{"ids": [...]}`, with `--wait` also `"total"`, `"succeeded"`, `"failed"`; then `"job"` (and
/// `"jobs"` if the submission needed several frames, each a job).
#[derive(Serialize)]
struct SubmitView<'a> {
    ids: IdList<'a>,
    #[serde(flatten)]
    wait: Option<WaitSummary>,
    job: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<Vec<u64>>,
}

pub fn write_submit_json(
    out: &mut impl Write,
    ids: &[IdRange],
    wait: Option<WaitSummary>,
    jobs: &[protocol::JobId],
) -> io::Result<()> {
    write_json(
        out,
        &SubmitView {
            ids: IdList(ids),
            wait,
            job: jobs.first().map(|j| j.0),
            jobs: (jobs.len() > 1).then(|| jobs.iter().map(|j| j.0).collect()),
        },
    )?;
    writeln!(out)
}

// ---------------------------------------------------------------------------------------------
// status

pub fn write_status_json(out: &mut impl Write, report: &StatusReport) -> io::Result<()> {
    write_json(out, &StatusView::from(report))?;
    writeln!(out)
}

pub fn write_status_table(out: &mut impl Write, report: &StatusReport) -> io::Result<()> {
    if report.workers.is_empty() {
        writeln!(out, "no workers connected")?;
    } else {
        let mut table = Table::new(&[
            ("name", Align::Left),
            ("group", Align::Left),
            ("addr", Align::Left),
            ("state", Align::Left),
            ("slots", Align::Right),
            ("running", Align::Right),
            ("cpu %", Align::Right),
            ("done", Align::Right),
        ]);
        for w in &report.workers {
            table.push(vec![
                w.name.clone(),
                w.group.clone().unwrap_or_default(),
                w.addr.clone(),
                w.state.as_str().to_string(),
                slots_cell(w),
                w.running.to_string(),
                format!("{:.1}", w.cpu_percent),
                w.done.to_string(),
            ]);
        }
        table.write_to(out)?;
    }
    let waiting = match report.waiting {
        0 => String::new(),
        n => format!(", {n} waiting"),
    };
    writeln!(
        out,
        "policy {}: {} queued{waiting}, {} running, {} succeeded, {} failed",
        report.policy, report.queued, report.running, report.succeeded, report.failed
    )
}

/// `4`, or `4+2` for a worker that also holds up to 2 prefetched tasks: one narrow column.
fn slots_cell(w: &WorkerStatus) -> String {
    if w.prefetch == 0 {
        w.slots.to_string()
    } else {
        format!("{}+{}", w.slots, w.prefetch)
    }
}

// ---------------------------------------------------------------------------------------------
// results

/// Where `results` rows go as chunks arrive. JSON is streamed (one object per line inside the
/// array) so task output is never held for more than one chunk; the table needs every row for its
/// widths, so it keeps only the short cells.
pub enum ResultsOutput {
    Json {
        rows: u64,
    },
    Table {
        table: Table,
        /// Some task ran more than one copy. Without one, the `copies` column is dropped at the
        /// end: it would only repeat 1 (or 0 for tasks that never ran) on every line.
        replicated: bool,
        /// Some task has dependencies; without one the `after` column (the last) is dropped.
        waits: bool,
    },
}

/// Where `copies` sits in the results table, right after `attempts`.
const COPIES_COLUMN: usize = 5;

impl ResultsOutput {
    pub fn json() -> Self {
        ResultsOutput::Json { rows: 0 }
    }

    pub fn table() -> Self {
        let table = Table::new(&[
            ("id", Align::Right),
            ("state", Align::Left),
            ("priority", Align::Right),
            ("worker", Align::Left),
            ("attempts", Align::Right),
            ("copies", Align::Right),
            ("exit", Align::Right),
            ("ms", Align::Right),
            ("command", Align::Left),
            ("after", Align::Left),
        ]);
        debug_assert_eq!(table.headers[COPIES_COLUMN], "copies");
        ResultsOutput::Table {
            table,
            replicated: false,
            waits: false,
        }
    }

    pub fn push(&mut self, out: &mut impl Write, t: &TaskResult) -> io::Result<()> {
        match self {
            ResultsOutput::Json { rows } => {
                out.write_all(if *rows == 0 { b"[\n" } else { b",\n" })?;
                *rows += 1;
                write_json(out, &ResultView::from(t))
            }
            ResultsOutput::Table {
                table,
                replicated,
                waits,
            } => {
                *replicated |= t.copies > 1;
                *waits |= !t.after.is_empty();
                table.push(result_row(t));
                Ok(())
            }
        }
    }

    pub fn finish(self, out: &mut impl Write) -> io::Result<()> {
        match self {
            ResultsOutput::Json { rows: 0 } => out.write_all(b"[]\n"),
            ResultsOutput::Json { .. } => out.write_all(b"\n]\n"),
            ResultsOutput::Table {
                mut table,
                replicated,
                waits,
            } => {
                if !waits {
                    table.remove_column(table.headers.len() - 1);
                }
                if !replicated {
                    table.remove_column(COPIES_COLUMN);
                }
                table.write_to(out)
            }
        }
    }
}

fn result_row(t: &TaskResult) -> Vec<String> {
    let blank_or = |v: Option<String>| v.unwrap_or_default();
    // A clock step backwards on the master could make finished < started: show nothing, not garbage.
    let ms = match (t.started_ms, t.finished_ms) {
        (Some(s), Some(f)) => f.checked_sub(s).map(|d| d.to_string()),
        _ => None,
    };
    vec![
        t.id.0.to_string(),
        t.state.as_str().to_string(),
        t.priority.to_string(),
        blank_or(t.worker.clone()),
        t.attempts.to_string(),
        t.copies.to_string(),
        blank_or(t.exit_code.map(|c| c.to_string())),
        blank_or(ms),
        command_cell(t),
        after_cell(t),
    ]
}

/// What a task waits for, `waiting for 1-3, 12` while it does, else just the ids.
fn after_cell(t: &TaskResult) -> String {
    let ids: Vec<String> = t.after.iter().map(ToString::to_string).collect();
    match (t.state, ids.is_empty()) {
        (_, true) => String::new(),
        (protocol::TaskState::Waiting, false) => format!("waiting for {}", ids.join(", ")),
        (_, false) => ids.join(", "),
    }
}

/// The results table's `command` cell is cut to this many characters (`…` last).
const COMMAND_CELL_CHARS: usize = 40;

/// A command's argv as a shell would take it back (`results --json` has it exactly), cut to
/// [`COMMAND_CELL_CHARS`]; `(sleep)` or `(spin)` for a synthetic task.
fn command_cell(t: &TaskResult) -> String {
    let Some(argv) = &t.cmd else {
        return format!("({})", t.kind.as_str());
    };
    let mut cell = String::new();
    for arg in argv {
        if !cell.is_empty() {
            cell.push(' ');
        }
        push_quoted(&mut cell, arg);
        if width(&cell) > COMMAND_CELL_CHARS {
            break; // an argv may be a MiB: quote no more than is shown
        }
    }
    if width(&cell) > COMMAND_CELL_CHARS {
        cell = cell.chars().take(COMMAND_CELL_CHARS - 1).collect();
        cell.push('…');
    }
    cell
}

/// Appends `arg` quoted for a POSIX shell: bare if it is made of safe characters, `'...'` if it
/// has no control characters (so a table row stays one line), `$'...'` with escapes otherwise.
/// Only its first [`COMMAND_CELL_CHARS`] characters are written: the cell shows no more.
fn push_quoted(out: &mut String, arg: &str) {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    let shown = arg.chars().take(COMMAND_CELL_CHARS);
    if !arg.is_empty() && arg.chars().all(safe) {
        out.extend(shown);
    } else if !arg.chars().any(char::is_control) {
        out.push('\'');
        for c in shown {
            match c {
                '\'' => out.push_str(r"'\''"),
                c => out.push(c),
            }
        }
        out.push('\'');
    } else {
        out.push_str("$'");
        for c in shown {
            match c {
                '\\' => out.push_str(r"\\"),
                '\'' => out.push_str(r"\'"),
                '\n' => out.push_str(r"\n"),
                '\t' => out.push_str(r"\t"),
                '\r' => out.push_str(r"\r"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('\'');
    }
}

// ---------------------------------------------------------------------------------------------
// tables

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A tiny aligned-column printer: two spaces between columns, numbers right-aligned, no padding
/// after the last column.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            aligns: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(
            row.len(),
            self.headers.len(),
            "row width differs from the header"
        );
        self.rows.push(row);
    }

    /// Drops a column from the header and every row, for one decided only after all rows are in.
    pub fn remove_column(&mut self, index: usize) {
        self.headers.remove(index);
        self.aligns.remove(index);
        for row in &mut self.rows {
            row.remove(index);
        }
    }

    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut line = String::new();
        self.write_row(out, &mut line, &widths, self.headers.iter().copied())?;
        for row in &self.rows {
            self.write_row(out, &mut line, &widths, row.iter().map(String::as_str))?;
        }
        Ok(())
    }

    /// Builds the line in a reused buffer so trailing padding (an empty last cell) can be trimmed.
    fn write_row<'c>(
        &self,
        out: &mut impl Write,
        line: &mut String,
        widths: &[usize],
        cells: impl Iterator<Item = &'c str>,
    ) -> io::Result<()> {
        line.clear();
        for (i, ((cell, &w), &align)) in cells.zip(widths).zip(&self.aligns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(width(cell));
            if align == Align::Right {
                push_spaces(line, pad);
            }
            line.push_str(cell);
            if align == Align::Left {
                push_spaces(line, pad);
            }
        }
        out.write_all(line.trim_end().as_bytes())?;
        out.write_all(b"\n")
    }
}

fn push_spaces(line: &mut String, n: usize) {
    for _ in 0..n {
        line.push(' ');
    }
}

/// Display width, counted in chars so a worker named "höst" does not break the columns.
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{KindName, TaskId, TaskState, WorkerId, WorkerState};
    use serde_json::Value;

    fn report() -> StatusReport {
        StatusReport {
            policy: "least-loaded".into(),
            workers: vec![
                WorkerStatus {
                    id: WorkerId(1),
                    name: "a".into(),
                    group: Some("gpu".into()),
                    host: "h1".into(),
                    addr: "127.0.0.1:5000".into(),
                    state: WorkerState::Alive,
                    slots: 4,
                    running: 2,
                    cpu_percent: 35.2,
                    load_avg_1m: 1.5,
                    mem_used: 1,
                    mem_total: 2,
                    done: 17,
                    prefetch: 2,
                    last_seen_ms: Some(1_700_000_000_500),
                },
                WorkerStatus {
                    id: WorkerId(2),
                    name: "long-worker-name".into(),
                    group: None,
                    host: "h2".into(),
                    addr: "10.0.0.2:6000".into(),
                    state: WorkerState::Dead,
                    slots: 16,
                    running: 0,
                    cpu_percent: 0.0,
                    load_avg_1m: 0.0,
                    mem_used: 0,
                    mem_total: 0,
                    done: 123456,
                    prefetch: 0,
                    last_seen_ms: None,
                },
            ],
            queued: 10,
            running: 2,
            succeeded: 100,
            failed: 3,
            waiting: 0,
        }
    }

    fn task(id: u64, done: bool) -> TaskResult {
        TaskResult {
            id: TaskId(id),
            state: if done {
                TaskState::TimedOut
            } else {
                TaskState::Queued
            },
            kind: if done {
                KindName::Command
            } else {
                KindName::Sleep
            },
            cmd: done.then(|| vec!["sh".into(), "-c".into(), "echo hi".into()]),
            group: done.then(|| "gpu".into()),
            exit_code: done.then_some(-1),
            worker: done.then(|| "w\"1".to_string()),
            attempts: 2,
            priority: -5,
            submitted_ms: 1_700_000_000_000,
            started_ms: done.then_some(1_700_000_000_100),
            finished_ms: done.then_some(1_700_000_000_350),
            stdout: "out\nline".into(),
            stderr: String::new(),
            error: done.then(|| "timed out after 250ms".into()),
            copies: u32::from(done),
            job: protocol::JobId(1),
            name: None,
            after: vec![],
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn submit_json_shapes() {
        let ids = [IdRange { first: 7, count: 3 }];
        let mut buf = Vec::new();
        write_submit_json(&mut buf, &ids, None, &[protocol::JobId(2)]).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v, serde_json::json!({"ids": [7, 8, 9], "job": 2}));
        let waited = WaitSummary {
            total: 3,
            succeeded: 2,
            failed: 1,
        };
        buf.clear();
        write_submit_json(&mut buf, &ids, Some(waited), &[protocol::JobId(2)]).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ids": [7, 8, 9], "total": 3, "succeeded": 2, "failed": 1, "job": 2})
        );
    }

    #[test]
    fn status_json_has_exactly_the_contract_fields() {
        let mut buf = Vec::new();
        write_status_json(&mut buf, &report()).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            keys(&v),
            [
                "failed",
                "policy",
                "queued",
                "running",
                "succeeded",
                "waiting",
                "workers"
            ]
        );
        assert_eq!(v["policy"], "least-loaded");
        for (field, want) in [
            ("queued", 10),
            ("running", 2),
            ("succeeded", 100),
            ("failed", 3),
        ] {
            assert_eq!(v[field].as_u64(), Some(want), "{field}");
        }
        let workers = v["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        let w = &workers[0];
        assert_eq!(
            keys(w),
            [
                "addr",
                "cpu_percent",
                "done",
                "group",
                "host",
                "id",
                "last_seen_ms",
                "load_avg_1m",
                "name",
                "prefetch",
                "running",
                "slots",
                "state"
            ]
        );
        assert_eq!(w["id"].as_u64(), Some(1));
        assert!(w["name"].is_string() && w["addr"].is_string() && w["host"].is_string());
        assert_eq!(w["state"], "alive");
        assert_eq!(workers[1]["state"], "dead");
        assert_eq!(w["slots"].as_u64(), Some(4));
        assert_eq!(w["prefetch"].as_u64(), Some(2));
        assert_eq!(workers[1]["prefetch"].as_u64(), Some(0));
        assert_eq!(w["running"].as_u64(), Some(2));
        assert_eq!(w["done"].as_u64(), Some(17));
        assert_eq!(
            w["cpu_percent"].as_f64(),
            Some(35.2),
            "printed with f32 precision"
        );
        assert_eq!(w["load_avg_1m"].as_f64(), Some(1.5));
        assert_eq!(w["last_seen_ms"].as_u64(), Some(1_700_000_000_500));
        assert!(workers[1]["last_seen_ms"].is_null(), "never heard from");
    }

    #[test]
    fn results_json_has_exactly_the_contract_fields() {
        let mut buf = Vec::new();
        let mut sink = ResultsOutput::json();
        sink.push(&mut buf, &task(1, true)).unwrap();
        sink.push(&mut buf, &task(2, false)).unwrap();
        sink.finish(&mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(
                keys(row),
                [
                    "after",
                    "attempts",
                    "cmd",
                    "copies",
                    "error",
                    "exit_code",
                    "finished_ms",
                    "group",
                    "id",
                    "job",
                    "kind",
                    "name",
                    "priority",
                    "started_ms",
                    "state",
                    "stderr",
                    "stdout",
                    "submitted_ms",
                    "worker"
                ]
            );
            assert!(row["id"].is_u64() && row["attempts"].is_u64() && row["submitted_ms"].is_u64());
            assert!(row["stdout"].is_string() && row["stderr"].is_string());
        }
        let done = &rows[0];
        assert_eq!(done["state"], "timed_out");
        assert_eq!(done["exit_code"].as_i64(), Some(-1));
        assert_eq!(done["worker"], "w\"1");
        assert_eq!(done["copies"].as_u64(), Some(1));
        assert_eq!(done["priority"].as_i64(), Some(-5));
        assert_eq!(done["started_ms"].as_u64(), Some(1_700_000_000_100));
        assert_eq!(done["finished_ms"].as_u64(), Some(1_700_000_000_350));
        assert_eq!(done["stdout"], "out\nline");
        assert_eq!(done["error"], "timed out after 250ms");
        assert_eq!(done["kind"], "command");
        assert_eq!(done["cmd"], serde_json::json!(["sh", "-c", "echo hi"]));
        assert_eq!(done["group"], "gpu");
        assert_eq!(done["job"].as_u64(), Some(1));
        let queued = &rows[1];
        assert_eq!(queued["state"], "queued");
        assert_eq!(queued["kind"], "sleep");
        assert_eq!(queued["copies"].as_u64(), Some(0), "never ran");
        for nullable in [
            "exit_code",
            "worker",
            "started_ms",
            "finished_ms",
            "error",
            "cmd",
            "group",
        ] {
            assert!(queued[nullable].is_null(), "{nullable}");
        }
    }

    #[test]
    fn empty_results_json_is_an_empty_array() {
        let mut buf = Vec::new();
        ResultsOutput::json().finish(&mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v, serde_json::json!([]));
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[
            ("name", Align::Left),
            ("n", Align::Right),
            ("note", Align::Left),
        ]);
        t.push(vec!["höst".into(), "7".into(), "x".into()]);
        t.push(vec!["a".into(), "12345".into(), "".into()]);
        let mut buf = Vec::new();
        t.write_to(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text, "name      n  note\nhöst      7  x\na     12345\n");
    }

    #[test]
    fn results_table_shows_blank_ms_and_lines_up() {
        let mut buf = Vec::new();
        let mut sink = ResultsOutput::table();
        sink.push(&mut buf, &task(1, true)).unwrap();
        sink.push(&mut buf, &task(1000, false)).unwrap();
        assert!(buf.is_empty(), "the table is written only at the end");
        sink.finish(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "  id  state      priority  worker  attempts  exit   ms  command"
        );
        assert_eq!(
            lines[1],
            "   1  timed_out        -5  w\"1            2    -1  250  sh -c 'echo hi'"
        );
        assert!(lines[2].starts_with("1000  queued"));
        // Right-aligned columns end at the same place on every line.
        let end_of_priority = lines[0].find("priority").unwrap() + "priority".len();
        for l in &lines[1..] {
            assert_eq!(&l[end_of_priority - 2..end_of_priority], "-5");
        }
    }

    #[test]
    fn results_table_shows_copies_only_when_a_task_ran_several() {
        let mut replicated = task(2, true);
        replicated.copies = 3;
        let mut buf = Vec::new();
        let mut sink = ResultsOutput::table();
        for t in [task(1, true), replicated, task(3, false)] {
            sink.push(&mut buf, &t).unwrap();
        }
        sink.finish(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "id  state      priority  worker  attempts  copies  exit   ms  command",
                " 1  timed_out        -5  w\"1            2       1    -1  250  sh -c 'echo hi'",
                " 2  timed_out        -5  w\"1            2       3    -1  250  sh -c 'echo hi'",
                " 3  queued           -5                 2       0             (sleep)",
            ]
        );
    }

    #[test]
    fn the_command_cell_is_shell_quoted_one_line_and_cut() {
        let cell = |argv: &[&str]| {
            let mut t = task(1, true);
            t.cmd = Some(argv.iter().map(|a| a.to_string()).collect());
            command_cell(&t)
        };
        assert_eq!(cell(&["ls", "-l", "/tmp/a_b.c"]), "ls -l /tmp/a_b.c");
        assert_eq!(cell(&["echo", "", "it's"]), r"echo '' 'it'\''s'");
        assert_eq!(cell(&["printf", "a\tb\n\u{1}"]), r"printf $'a\tb\n\u0001'");
        let long = cell(&["sh", "-c", &"x".repeat(1 << 20)]);
        assert_eq!(long.chars().count(), COMMAND_CELL_CHARS);
        assert!(
            long.starts_with("sh -c xxx") && long.ends_with("x…"),
            "{long}"
        );
        let many = cell(&[""; 32_768]);
        assert_eq!(many.chars().count(), COMMAND_CELL_CHARS);
        assert!(many.ends_with('…'));
        let exact = "y".repeat(COMMAND_CELL_CHARS);
        assert_eq!(cell(&[&exact]), exact, "40 characters fit whole");
        let mut spin = task(1, false);
        spin.kind = KindName::Spin;
        assert_eq!(command_cell(&spin), "(spin)");
    }

    #[test]
    fn results_table_shows_what_a_task_waits_for_only_when_one_does() {
        let table = |tasks: &[TaskResult]| {
            let mut buf = Vec::new();
            let mut sink = ResultsOutput::table();
            for t in tasks {
                sink.push(&mut buf, t).unwrap();
            }
            sink.finish(&mut buf).unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(!table(&[task(1, false)]).contains("after"));
        let mut waiting = task(2, false);
        waiting.state = TaskState::Waiting;
        waiting.after = vec![
            protocol::After::Ids {
                first: TaskId(1),
                last: TaskId(3),
            },
            protocol::After::id(TaskId(7)),
        ];
        let text = table(&[task(1, false), waiting]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("after"), "{text}");
        assert!(lines[2].contains("waiting"), "{text}");
        assert!(lines[2].ends_with("waiting for 1-3, 7"), "{text}");
    }

    #[test]
    fn status_table_and_summary() {
        let mut buf = Vec::new();
        write_status_table(&mut buf, &report()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "name              group  addr            state  slots  running  cpu %    done"
        );
        assert_eq!(
            lines[1],
            "a                 gpu    127.0.0.1:5000  alive    4+2        2   35.2      17"
        );
        assert_eq!(
            lines[2],
            "long-worker-name         10.0.0.2:6000   dead      16        0    0.0  123456",
            "no prefetch: just the slots"
        );
        assert_eq!(
            lines[3],
            "policy least-loaded: 10 queued, 2 running, 100 succeeded, 3 failed"
        );
    }
}
