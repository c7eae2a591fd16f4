//! What the user sees: the `--json` shapes (field names are the command-line contract, so they are
//! spelled out in view structs rather than derived from wire types that may grow), and aligned tables.

use super::ids::{IdList, IdRange};
use super::term::Layout;
use super::wait::WaitSummary;
pub use master::json::{ResultView, StatusView};
use protocol::duration::human_ms;
use protocol::{StatusReport, TaskResult, WorkerStatus};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, BufWriter, IsTerminal, StdoutLock, Write};

pub type Out = BufWriter<StdoutLock<'static>>;

/// Locked and buffered: `results` may print hundreds of thousands of rows, and `println!` would
/// both lock per line and panic on a closed pipe.
pub fn stdout() -> Out {
    BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// Rows a table shows on a terminal without `--limit`: the newest screenful.
const TERMINAL_ROWS: usize = 50;

/// The rows to keep for `--limit` (`None`: all): `0` is all, and without it a person at a
/// terminal gets the newest [`TERMINAL_ROWS`], a script (piped, or `--json`) everything.
pub fn row_limit(limit: Option<usize>, json: bool) -> Option<usize> {
    match limit {
        Some(0) => None,
        Some(n) => Some(n),
        None if !json && io::stdout().is_terminal() => Some(TERMINAL_ROWS),
        None => None,
    }
}

/// On stderr, so stdout stays the table alone: how many rows `--limit` left out.
pub fn note_left_out(left_out: u64, one: &str, many: &str) {
    if left_out > 0 {
        eprintln!(
            "({} earlier not shown: --limit N shows the last N, --limit 0 all)",
            protocol::plural::count(left_out, one, many)
        );
    }
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
    )?;
    for (group, queued) in &report.unserved {
        writeln!(
            out,
            "group {group}: {} queued, waiting for a worker of group {group}",
            queued
        )?;
    }
    Ok(())
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

/// One column of the results table. IMPORTANT: the table is [`RESULT_COLUMNS`]; a new column is
/// one line there (and its cell function), nothing else.
struct ResultColumn {
    header: &'static str,
    align: Align,
    /// May be cut to fit a terminal, down to this many characters; `None`: always whole.
    flex_min: Option<usize>,
    /// The most characters of its cell when piped (no terminal to fit): a row stays short.
    piped_max: usize,
    /// Shown only when some row needs it (`copies` would repeat 1 on every line otherwise).
    shown_if: Option<fn(&TaskResult) -> bool>,
    /// Coloured on a terminal, by the cell's text.
    style: Option<Style>,
    cell: fn(&TaskResult) -> String,
}

const fn column(
    header: &'static str,
    align: Align,
    cell: fn(&TaskResult) -> String,
) -> ResultColumn {
    ResultColumn {
        header,
        align,
        flex_min: None,
        piped_max: usize::MAX,
        shown_if: None,
        style: None,
        cell,
    }
}

const RESULT_COLUMNS: &[ResultColumn] = &[
    column("id", Align::Right, |t| t.id.0.to_string()),
    column("job", Align::Right, |t| t.job.0.to_string()),
    ResultColumn {
        flex_min: Some(10),
        piped_max: COMMAND_CELL_CHARS,
        ..column("name/command", Align::Left, label_cell)
    },
    ResultColumn {
        style: Some(state_style),
        ..column("state", Align::Left, |t| t.state.as_str().to_string())
    },
    column("worker", Align::Left, |t| {
        t.worker.clone().unwrap_or_default()
    }),
    column("attempts", Align::Right, |t| t.attempts.to_string()),
    ResultColumn {
        shown_if: Some(|t| t.copies > 1),
        ..column("copies", Align::Right, |t| t.copies.to_string())
    },
    column("exit", Align::Right, |t| {
        t.exit_code.map(|c| c.to_string()).unwrap_or_default()
    }),
    column("time", Align::Right, run_time_cell),
    ResultColumn {
        flex_min: Some(10),
        piped_max: REASON_CELL_CHARS,
        ..column("reason", Align::Left, reason_cell)
    },
    ResultColumn {
        flex_min: Some(12),
        piped_max: AFTER_CELL_CHARS,
        shown_if: Some(|t| !t.after.is_empty()),
        ..column("after", Align::Left, after_cell)
    },
];

/// Where `results` rows go as chunks arrive. JSON is streamed (one object per line inside the
/// array) so task output is never held for more than one chunk, unless only the last `--limit`
/// rows are wanted; the table needs every row for its widths, so it keeps only the short cells.
pub struct ResultsOutput {
    sink: Sink,
    /// Keep only the last this many rows (`--limit`).
    limit: Option<usize>,
    /// Rows pushed, kept or not.
    seen: u64,
}

enum Sink {
    Json {
        rows: u64,
        /// With a limit: the last rows, each one encoded object.
        kept: Option<VecDeque<Vec<u8>>>,
    },
    Table {
        table: Table,
        /// Per column of [`RESULT_COLUMNS`]: some row needs it.
        needed: Vec<bool>,
        layout: Layout,
    },
}

impl ResultsOutput {
    pub fn json(limit: Option<usize>) -> Self {
        ResultsOutput {
            sink: Sink::Json {
                rows: 0,
                kept: limit.map(|_| VecDeque::new()),
            },
            limit,
            seen: 0,
        }
    }

    pub fn table(layout: Layout, limit: Option<usize>) -> Self {
        let mut table = Table::new(
            &RESULT_COLUMNS
                .iter()
                .map(|c| (c.header, c.align))
                .collect::<Vec<_>>(),
        );
        for (i, c) in RESULT_COLUMNS.iter().enumerate() {
            if let Some(min) = c.flex_min {
                table.flex(i, min);
            }
            if let Some(style) = c.style {
                table.style(i, style);
            }
        }
        ResultsOutput {
            sink: Sink::Table {
                table,
                needed: RESULT_COLUMNS
                    .iter()
                    .map(|c| c.shown_if.is_none())
                    .collect(),
                layout,
            },
            limit,
            seen: 0,
        }
    }

    pub fn push(&mut self, out: &mut impl Write, t: &TaskResult) -> io::Result<()> {
        self.seen += 1;
        match &mut self.sink {
            Sink::Json {
                kept: Some(kept), ..
            } => {
                let mut row = Vec::new();
                write_json(&mut row, &ResultView::from(t))?;
                kept.push_back(row);
                if kept.len() > self.limit.unwrap_or(usize::MAX) {
                    kept.pop_front();
                }
                Ok(())
            }
            Sink::Json { rows, kept: None } => {
                out.write_all(if *rows == 0 { b"[\n" } else { b",\n" })?;
                *rows += 1;
                write_json(out, &ResultView::from(t))
            }
            Sink::Table {
                table,
                needed,
                layout,
            } => {
                let piped = layout.width.is_none();
                let row = RESULT_COLUMNS
                    .iter()
                    .zip(needed.iter_mut())
                    .map(|(c, needed)| {
                        *needed |= c.shown_if.is_some_and(|f| f(t));
                        let cell = (c.cell)(t);
                        if piped {
                            cut(cell, c.piped_max)
                        } else {
                            cell
                        }
                    })
                    .collect();
                table.push(row);
                if let Some(limit) = self.limit {
                    table.keep_last(limit);
                }
                Ok(())
            }
        }
    }

    /// Writes what is kept; returns how many rows `--limit` left out.
    pub fn finish(self, out: &mut impl Write) -> io::Result<u64> {
        let kept = match self.sink {
            Sink::Json {
                kept: Some(kept), ..
            } => {
                if kept.is_empty() {
                    out.write_all(b"[]\n")?;
                } else {
                    for (i, row) in kept.iter().enumerate() {
                        out.write_all(if i == 0 { b"[\n" } else { b",\n" })?;
                        out.write_all(row)?;
                    }
                    out.write_all(b"\n]\n")?;
                }
                kept.len()
            }
            Sink::Json { rows: 0, .. } => {
                out.write_all(b"[]\n")?;
                0
            }
            Sink::Json { rows, .. } => {
                out.write_all(b"\n]\n")?;
                rows as usize
            }
            Sink::Table {
                mut table,
                needed,
                layout,
            } => {
                table.retain_columns(&needed);
                table.write_with(out, layout)?;
                table.rows.len()
            }
        };
        Ok(self.seen.saturating_sub(kept as u64))
    }
}

/// The colour of a state on a terminal (SGR codes): green for success, red for the failures,
/// yellow for cancelled, cyan while running; queued (and what is not a state) plain.
fn state_style(state: &str) -> Option<&'static str> {
    match state {
        "succeeded" => Some("32"),
        "failed" | "timed_out" | "worker_lost" | "dependency_failed" => Some("31"),
        "cancelled" => Some("33"),
        "running" => Some("36"),
        "waiting" => Some("35"),
        _ => None,
    }
}

/// The results table's `command` cell is cut to this many characters (`…` last) when piped.
const COMMAND_CELL_CHARS: usize = 40;
/// The `reason` cell, piped: room for `no such program ...` and `timed out after 5s` whole.
const REASON_CELL_CHARS: usize = 100;
/// The `after` cell, piped.
const AFTER_CELL_CHARS: usize = 60;
/// No cell is built longer than this (a terminal is narrower): an argv or an error may be a MiB.
const CELL_MAX_CHARS: usize = 400;

/// `text` cut to `max` characters, `…` last when cut.
fn cut(text: String, max: usize) -> String {
    if width(&text) <= max {
        return text;
    }
    let mut cell: String = text.chars().take(max.saturating_sub(1)).collect();
    cell.push('…');
    cell
}

/// What a task waits for, `waiting for 1-3, 12` while it does, else just the ids; at most
/// [`CELL_MAX_CHARS`] (a task may wait for many ranges).
fn after_cell(t: &TaskResult) -> String {
    let mut cell = String::new();
    if t.state == protocol::TaskState::Waiting && !t.after.is_empty() {
        cell.push_str("waiting for ");
    }
    for (i, after) in t.after.iter().enumerate() {
        if i > 0 {
            cell.push_str(", ");
        }
        cell.push_str(&after.to_string());
        if width(&cell) > CELL_MAX_CHARS {
            break;
        }
    }
    cut(cell, CELL_MAX_CHARS)
}

/// The task's name if it has one (`"name"` in a task file), else its command.
fn label_cell(t: &TaskResult) -> String {
    match &t.name {
        Some(name) => cut(
            name.chars()
                .take(CELL_MAX_CHARS + 1)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
            CELL_MAX_CHARS,
        ),
        None => command_cell(t),
    }
}

/// A command's argv as a shell would take it back (`results --json` has it exactly), cut to
/// [`CELL_MAX_CHARS`]; `(sleep)` or `(spin)` for a synthetic task.
fn command_cell(t: &TaskResult) -> String {
    let Some(argv) = &t.cmd else {
        return format!("({})", t.kind.as_str());
    };
    let mut cell = String::new();
    for arg in argv {
        if !cell.is_empty() {
            cell.push(' ');
        }
        protocol::names::push_quoted(&mut cell, arg, CELL_MAX_CHARS);
        if width(&cell) > CELL_MAX_CHARS {
            break; // an argv may be a MiB: quote no more than is shown
        }
    }
    cut(cell, CELL_MAX_CHARS)
}

/// Why a task did not succeed, on one line: the master's or worker's error (`no such program
/// ...`, `timed out after 5s`); blank for a task that succeeded or has not ended.
fn reason_cell(t: &TaskResult) -> String {
    use protocol::TaskState;
    if matches!(
        t.state,
        TaskState::Queued | TaskState::Running | TaskState::Succeeded
    ) {
        return String::new();
    }
    let Some(error) = &t.error else {
        return String::new();
    };
    let mut cell = String::new();
    let mut space = false;
    // Control characters (a multi-line error) become one space: a row is one line.
    for c in error.trim().chars().take(CELL_MAX_CHARS) {
        if c.is_control() || c == ' ' {
            space = !cell.is_empty();
            continue;
        }
        if std::mem::take(&mut space) {
            cell.push(' ');
        }
        cell.push(c);
    }
    cell
}

/// How long the run that counts took: `250ms`, `12.3s`, `5m02s`, `2h03m`; blank before it ended.
fn run_time_cell(t: &TaskResult) -> String {
    // A clock step backwards on the master could make finished < started: show nothing.
    match (t.started_ms, t.finished_ms) {
        (Some(s), Some(f)) => f.checked_sub(s).map(human_ms).unwrap_or_default(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// tables

/// The SGR colour code for a cell, by its text (`None`: plain).
pub type Style = fn(&str) -> Option<&'static str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A tiny aligned-column printer: two spaces between columns, numbers right-aligned, no padding
/// after the last column. On a terminal ([`Layout`]) the flexible columns are cut so a line fits
/// its width, and styled columns are coloured.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    /// Per column: may be cut down to this many characters to fit a width.
    flex_min: Vec<Option<usize>>,
    /// Per column: the SGR colour of a cell, by its text.
    styles: Vec<Option<Style>>,
    rows: VecDeque<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            aligns: columns.iter().map(|c| c.1).collect(),
            flex_min: vec![None; columns.len()],
            styles: vec![None; columns.len()],
            rows: VecDeque::new(),
        }
    }

    /// Lets column `index` be cut down to `min` characters when the width asks for it.
    pub fn flex(&mut self, index: usize, min: usize) {
        self.flex_min[index] = Some(min.max(1));
    }

    /// Colours column `index`'s cells (not its header) with `style` on a terminal.
    pub fn style(&mut self, index: usize, style: Style) {
        self.styles[index] = Some(style);
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(
            row.len(),
            self.headers.len(),
            "row width differs from the header"
        );
        self.rows.push_back(row);
    }

    /// Drops the oldest rows beyond `n`.
    pub fn keep_last(&mut self, n: usize) {
        while self.rows.len() > n {
            self.rows.pop_front();
        }
    }

    /// Keeps the columns whose flag is set, in the header and every row, for columns decided
    /// only after all rows are in.
    pub fn retain_columns(&mut self, keep: &[bool]) {
        debug_assert_eq!(keep.len(), self.headers.len());
        retain_by(&mut self.headers, keep);
        retain_by(&mut self.aligns, keep);
        retain_by(&mut self.flex_min, keep);
        retain_by(&mut self.styles, keep);
        for row in &mut self.rows {
            retain_by(row, keep);
        }
    }

    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_with(out, Layout::default())
    }

    pub fn write_with(&self, out: &mut impl Write, layout: Layout) -> io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        if let Some(max) = layout.width {
            self.fit(&mut widths, max);
        }
        let mut line = String::new();
        self.write_row(out, &mut line, &widths, self.headers.iter().copied(), None)?;
        let color = layout.color.then_some(self.styles.as_slice());
        for row in &self.rows {
            self.write_row(
                out,
                &mut line,
                &widths,
                row.iter().map(String::as_str),
                color,
            )?;
        }
        Ok(())
    }

    /// Narrows the flexible columns, the widest first, until a line fits in `max` characters or
    /// every one is at its minimum (the terminal then wraps; nothing is lost).
    fn fit(&self, widths: &mut [usize], max: usize) {
        let gaps = 2 * widths.len().saturating_sub(1);
        let mut total: usize = widths.iter().sum::<usize>() + gaps;
        while total > max {
            let widest = (0..widths.len())
                .filter(|&i| self.flex_min[i].is_some_and(|min| widths[i] > min))
                .max_by_key(|&i| (widths[i], i));
            let Some(i) = widest else { break };
            widths[i] -= 1;
            total -= 1;
        }
    }

    /// Builds the line in a reused buffer so trailing padding (an empty last cell) can be trimmed.
    fn write_row<'c>(
        &self,
        out: &mut impl Write,
        line: &mut String,
        widths: &[usize],
        cells: impl Iterator<Item = &'c str>,
        styles: Option<&[Option<Style>]>,
    ) -> io::Result<()> {
        line.clear();
        for (i, ((cell, &w), &align)) in cells.zip(widths).zip(&self.aligns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let cut_cell;
            let cell = if width(cell) > w {
                cut_cell = cut(cell.to_string(), w);
                cut_cell.as_str()
            } else {
                cell
            };
            let pad = w.saturating_sub(width(cell));
            if align == Align::Right {
                push_spaces(line, pad);
            }
            match styles.and_then(|s| s[i]).and_then(|style| style(cell)) {
                Some(sgr) => {
                    line.push_str("\x1b[");
                    line.push_str(sgr);
                    line.push('m');
                    line.push_str(cell);
                    line.push_str("\x1b[0m");
                }
                None => line.push_str(cell),
            }
            if align == Align::Left {
                push_spaces(line, pad);
            }
        }
        out.write_all(line.trim_end().as_bytes())?;
        out.write_all(b"\n")
    }
}

/// Keeps the items whose flag in `keep` is set (items past its end are kept).
fn retain_by<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    items.retain(|_| *flags.next().unwrap_or(&true));
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
                    allocation: None,
                    allocation_ends_ms: None,
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
                    allocation: None,
                    allocation_ends_ms: None,
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
            unserved: vec![("gpu".into(), 4)],
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
                "unserved_groups",
                "waiting",
                "workers"
            ]
        );
        assert_eq!(v["policy"], "least-loaded");
        assert_eq!(
            v["unserved_groups"],
            serde_json::json!([{"group": "gpu", "queued": 4}])
        );
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
                "allocation",
                "allocation_ends_ms",
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
        let mut sink = ResultsOutput::json(None);
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
        ResultsOutput::json(None).finish(&mut buf).unwrap();
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

    fn table_text(tasks: &[TaskResult], layout: Layout, limit: Option<usize>) -> (String, u64) {
        let mut buf = Vec::new();
        let mut sink = ResultsOutput::table(layout, limit);
        for t in tasks {
            sink.push(&mut buf, t).unwrap();
        }
        assert!(buf.is_empty(), "the table is written only at the end");
        let left_out = sink.finish(&mut buf).unwrap();
        (String::from_utf8(buf).unwrap(), left_out)
    }

    #[test]
    fn results_table_shows_reason_and_blank_time_and_lines_up() {
        let mut missing = task(2, true);
        missing.state = TaskState::Failed;
        missing.cmd = Some(vec!["nonexistent-xyz".into()]);
        missing.exit_code = None;
        missing.started_ms = missing.finished_ms;
        missing.error = Some("no such program `nonexistent-xyz` in PATH".into());
        let (text, left_out) = table_text(
            &[task(1, true), missing, task(1000, false)],
            Layout::default(),
            None,
        );
        assert_eq!(left_out, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "  id  job  name/command     state      worker  attempts  exit   time  reason",
                "   1    1  sh -c 'echo hi'  timed_out  w\"1            2    -1  250ms  timed out after 250ms",
                "   2    1  nonexistent-xyz  failed     w\"1            2          0ms  no such program `nonexistent-xyz` in PATH",
                "1000    1  (sleep)          queued                    2",
            ]
        );
    }

    #[test]
    fn results_table_shows_copies_only_when_a_task_ran_several() {
        let mut replicated = task(2, true);
        replicated.copies = 3;
        let (text, _) = table_text(
            &[task(1, true), replicated, task(3, false)],
            Layout::default(),
            None,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "id  job  name/command     state      worker  attempts  copies  exit   time  reason",
                " 1    1  sh -c 'echo hi'  timed_out  w\"1            2       1    -1  250ms  timed out after 250ms",
                " 2    1  sh -c 'echo hi'  timed_out  w\"1            2       3    -1  250ms  timed out after 250ms",
                " 3    1  (sleep)          queued                    2       0",
            ]
        );
    }

    /// On a terminal the command and the reason are cut (the widest first) so every line fits
    /// its width; the other columns stay whole.
    #[test]
    fn results_table_fits_the_terminal_width() {
        let mut long = task(1, true);
        long.cmd = Some(vec!["sh".into(), "-c".into(), "x".repeat(300)]);
        long.error = Some(format!("timed out after 5s\n{}", "detail ".repeat(40)));
        for width in [90, 100, 120, 200] {
            let layout = Layout {
                width: Some(width),
                color: false,
            };
            let (text, _) = table_text(&[long.clone(), task(2, false)], layout, None);
            for line in text.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
            let row = text.lines().nth(1).unwrap();
            assert!(row.contains("sh -c xxx") && row.contains('…'), "{row}");
            assert!(
                row.contains("timed_out") && row.contains("timed out after"),
                "{row}"
            );
            assert!(!row.contains('\n'));
        }
        // An 80-column terminal fits a row of eight-character worker names.
        let layout = Layout {
            width: Some(80),
            color: false,
        };
        let mut named = long.clone();
        named.worker = Some("worker-1".into());
        let (text, _) = table_text(&[named], layout, None);
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        // Too narrow for the minimums: the fixed columns stay whole and the line overflows.
        let layout = Layout {
            width: Some(20),
            color: false,
        };
        let (text, _) = table_text(&[long], layout, None);
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("timed_out  w\"1"), "{row}");
        // Piped: the command is cut to 40 characters, whatever its length.
        let (text, _) = table_text(&[task(3, true)], Layout::default(), None);
        assert!(text.contains("sh -c 'echo hi'"));
    }

    #[test]
    fn results_table_colours_states_only_when_asked() {
        let mut ok = task(1, true);
        ok.state = TaskState::Succeeded;
        ok.error = None;
        let color = Layout {
            width: Some(200),
            color: true,
        };
        let (text, _) = table_text(&[ok.clone(), task(2, true)], color, None);
        assert!(text.contains("\x1b[32msucceeded\x1b[0m"), "{text:?}");
        assert!(text.contains("\x1b[31mtimed_out\x1b[0m"), "{text:?}");
        assert!(
            !text.lines().next().unwrap().contains('\x1b'),
            "no colour in the header"
        );
        // Colour codes take no width: the columns after the state line up.
        let lines: Vec<&str> = text.lines().collect();
        let plain = |l: &str| {
            l.replace("\x1b[32m", "")
                .replace("\x1b[31m", "")
                .replace("\x1b[0m", "")
        };
        let at = |l: &str| plain(l).find("w\"1").unwrap();
        assert_eq!(at(lines[1]), at(lines[2]));
        let (text, _) = table_text(
            &[ok],
            Layout {
                width: Some(200),
                color: false,
            },
            None,
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn results_limit_keeps_the_last_rows() {
        let tasks: Vec<TaskResult> = (1..=5).map(|i| task(i, false)).collect();
        let (text, left_out) = table_text(&tasks, Layout::default(), Some(2));
        assert_eq!(left_out, 3);
        let ids: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids, ["4", "5"]);
        let mut buf = Vec::new();
        let mut sink = ResultsOutput::json(Some(2));
        for t in &tasks {
            sink.push(&mut buf, t).unwrap();
        }
        assert_eq!(sink.finish(&mut buf).unwrap(), 3);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        let ids: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [4, 5]);
        let mut buf = Vec::new();
        assert_eq!(ResultsOutput::json(Some(2)).finish(&mut buf).unwrap(), 0);
        assert_eq!(buf, b"[]\n");
    }

    #[test]
    fn a_named_task_shows_its_name_instead_of_its_command() {
        let mut named = task(1, true);
        named.name = Some("fetch\nsources".into());
        let (text, _) = table_text(&[named, task(2, true)], Layout::default(), None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("  fetch sources "), "{text}");
        assert!(lines[2].contains("sh -c 'echo hi'"), "{text}");
    }

    #[test]
    fn run_times_read_as_durations() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(999), "999ms");
        assert_eq!(human_ms(1_000), "1.0s");
        assert_eq!(human_ms(12_345), "12.3s");
        assert_eq!(human_ms(302_000), "5m02s");
        assert_eq!(human_ms(7_380_000), "2h03m");
    }

    #[test]
    fn the_command_cell_is_shell_quoted_one_line_and_cut() {
        let cell = |argv: &[&str]| {
            let mut t = task(1, true);
            t.cmd = Some(argv.iter().map(|a| a.to_string()).collect());
            cut(command_cell(&t), COMMAND_CELL_CHARS)
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
        let table = |tasks: &[TaskResult]| table_text(tasks, Layout::default(), None).0;
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
        assert_eq!(
            lines[4],
            "group gpu: 4 queued, waiting for a worker of group gpu"
        );
    }
}
