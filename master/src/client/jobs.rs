//! `master jobs [ID...]`: one row per job (one per `submit`) with its tasks counted by state, or
//! the `--json` shape (`json::JobView`). The reply comes in chunks, written out as they come.

use super::error::Result;
use super::session::{unexpected, Session};
use super::view::{self, Align, Table};
use super::{ids, ConnArgs, Outcome};
use master::json::JobView;
use protocol::duration::human_ms;
use protocol::{FromMaster, JobId, JobStatus, TaskState, ToMaster};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print a JSON array of job objects.
    #[arg(long)]
    pub json: bool,
    /// Show only the last N jobs (0: all) [default: 50 on a terminal, all when piped].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Jobs (`3`, `2-4`, `1,5`) to show; none means all.
    #[arg(value_name = "JOB", value_parser = ids::parse_id_arg)]
    pub ids: Vec<ids::IdArg>,
}

/// The job ids that `--job` or `jobs` arguments name (they take what task ids take).
pub fn job_ids(args: &[ids::IdArg]) -> Vec<JobId> {
    ids::from_args(args).map(|t| JobId(t.0)).collect()
}

/// The name column is cut to this many characters (`…` last): a default name is a command line.
const NAME_CELL_CHARS: usize = 40;

pub fn run(args: JobsArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let mut jobs = fetch(&mut session, job_ids(&args.ids))?;
    let left_out =
        view::row_limit(args.limit, args.json).map_or(0, |n| jobs.len().saturating_sub(n));
    jobs.drain(..left_out);
    let mut out = view::stdout();
    if args.json {
        let views: Vec<JobView<'_>> = jobs.iter().map(JobView).collect();
        view::write_json(&mut out, &views)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &jobs, now_ms())?;
    }
    out.flush()?;
    if !args.json {
        view::note_left_out(left_out as u64, "job", "jobs");
    }
    Ok(Outcome::Success)
}

/// One `Jobs` request and all of its chunks (an unknown job is the master's error).
pub fn fetch(session: &mut Session, ids: Vec<JobId>) -> Result<Vec<JobStatus>> {
    session.send(&ToMaster::Jobs { ids })?;
    let mut all = Vec::new();
    // Bounded by the master: every chunk carries the next jobs, and the last has `more: false`.
    loop {
        match session.recv("the reply to Jobs")? {
            FromMaster::Jobs { jobs, more } => {
                all.extend(jobs);
                if !more {
                    return Ok(all);
                }
            }
            other => return Err(unexpected(&other, "Jobs")),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// id, name, tasks, queued, (waiting, when some job has tasks waiting for dependencies,)
/// running, succeeded, failed (every unsuccessful end), submitted (how long ago), duration (so
/// far, or until its last task ended).
fn write_table(out: &mut impl Write, jobs: &[JobStatus], now_ms: u64) -> std::io::Result<()> {
    if jobs.is_empty() {
        return writeln!(out, "no jobs");
    }
    let mut table = Table::new(&[
        ("id", Align::Right),
        ("name", Align::Left),
        ("tasks", Align::Right),
        ("queued", Align::Right),
        ("waiting", Align::Right),
        ("running", Align::Right),
        ("succeeded", Align::Right),
        ("failed", Align::Right),
        ("submitted", Align::Right),
        ("duration", Align::Right),
    ]);
    for j in jobs {
        table.push(vec![
            j.id.to_string(),
            name_cell(&j.name),
            j.tasks.to_string(),
            j.count(TaskState::Queued).to_string(),
            j.count(TaskState::Waiting).to_string(),
            j.count(TaskState::Running).to_string(),
            j.count(TaskState::Succeeded).to_string(),
            j.unsuccessful().to_string(),
            format!("{} ago", human_ms(now_ms.saturating_sub(j.submitted_ms))),
            human_ms(j.duration_ms),
        ]);
    }
    if jobs.iter().all(|j| j.count(TaskState::Waiting) == 0) {
        let keep: Vec<bool> = (0..JOB_COLUMNS).map(|i| i != WAITING_COLUMN).collect();
        table.retain_columns(&keep);
    }
    table.write_to(out)
}

/// The `waiting` column's index, dropped when no job waits for dependencies.
const WAITING_COLUMN: usize = 4;
/// Columns of the `jobs` table.
const JOB_COLUMNS: usize = 10;

/// One line, at most [`NAME_CELL_CHARS`] characters.
fn name_cell(name: &str) -> String {
    let one_line: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= NAME_CELL_CHARS {
        return one_line;
    }
    let mut cell: String = one_line.chars().take(NAME_CELL_CHARS - 1).collect();
    cell.push('…');
    cell
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskId;

    fn job(id: u64, name: &str, counts: &[(TaskState, u64)], finished: bool) -> JobStatus {
        JobStatus {
            id: JobId(id),
            name: name.into(),
            first: TaskId(1),
            tasks: counts.iter().map(|c| c.1).sum(),
            counts: TaskState::ALL
                .iter()
                .map(|&s| (s, counts.iter().find(|c| c.0 == s).map_or(0, |c| c.1)))
                .collect(),
            submitted_ms: 1_000,
            finished_ms: finished.then_some(4_500),
            duration_ms: 3_500,
        }
    }

    #[test]
    fn the_table_counts_every_failure_as_failed() {
        let jobs = [
            job(
                1,
                "build",
                &[
                    (TaskState::Succeeded, 2),
                    (TaskState::Failed, 1),
                    (TaskState::TimedOut, 1),
                ],
                true,
            ),
            job(
                12,
                &format!("sh -c {}", "x".repeat(80)),
                &[(TaskState::Queued, 3)],
                false,
            ),
        ];
        let mut buf = Vec::new();
        write_table(&mut buf, &jobs, 61_000).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "id  name                                      tasks  queued  running  succeeded  \
             failed  submitted  duration"
        );
        assert_eq!(
            lines[1],
            " 1  build                                         4       0        0          2       \
             2  1m00s ago      3.5s"
        );
        assert!(lines[2].starts_with("12  sh -c xxx") && lines[2].contains("x…"));
        assert!(!lines[0].contains("waiting"), "no job waits");
        let waits = [job(
            2,
            "dag",
            &[(TaskState::Waiting, 2), (TaskState::Running, 1)],
            false,
        )];
        let mut buf = Vec::new();
        write_table(&mut buf, &waits, 61_000).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.starts_with("id  name  tasks  queued  waiting  running"),
            "{text}"
        );
        assert!(
            text.contains(" 2  dag       3       0        2        1"),
            "{text}"
        );
    }

    #[test]
    fn json_names_every_state_and_keeps_order() {
        let j = job(3, "build", &[(TaskState::Succeeded, 3)], true);
        let text = serde_json::to_string(&JobView(&j)).unwrap();
        assert!(
            text.starts_with(r#"{"id":3,"name":"build","tasks":3,"queued":0,"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for state in TaskState::ALL {
            assert!(v[state.as_str()].is_u64(), "{}", state.as_str());
        }
        assert_eq!(v["succeeded"], 3);
        assert_eq!(v["duration_ms"], 3_500);
        assert_eq!(v["finished_ms"], 4_500);
        assert_eq!(
            (v["first_id"].as_u64(), v["last_id"].as_u64()),
            (Some(1), Some(3))
        );
    }

    #[test]
    fn waiting_tasks_get_a_column_only_when_there_are_some() {
        let jobs = [job(
            2,
            "dag",
            &[(TaskState::Waiting, 4), (TaskState::DependencyFailed, 1)],
            false,
        )];
        let mut buf = Vec::new();
        write_table(&mut buf, &jobs, 61_000).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(&header[3..6], ["queued", "waiting", "running"], "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!((row[4], row[7]), ("4", "1"), "waiting 4, failed 1: {text}");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_345), "12.3s");
        assert_eq!(human_ms(245_000), "4m05s");
        assert_eq!(human_ms(3 * 3_600_000 + 12 * 60_000), "3h12m");
        assert_eq!(human_ms(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }
}
