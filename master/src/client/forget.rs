//! `master forget [--job J]... [ID...] [--finished-before D] [--json]`: drops finished tasks (and
//! their logs) from the master's memory and journal. Unfinished tasks are never forgotten: named
//! ones are reported (`not finished: 5-9`), and so are unknown ids (exit 1, as `cancel`). An
//! unknown job is refused by the master (exit 1).

use super::error::{ClientError, Result};
use super::session::unexpected;
use super::{ids, jobs, view, ConnArgs, Outcome};
use protocol::duration::parse_duration;
use protocol::{FromMaster, JobForgotten, TaskId, ToMaster};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Finished tasks (`7`, `5-9`, `1-3,7`) to forget.
    #[arg(value_name = "ID", value_parser = ids::parse_id_arg)]
    pub ids: Vec<ids::IdArg>,
    /// Forget every finished task of this job (may be given more than once); once none is left
    /// the job itself is gone (`jobs` omits it, `results --job` says it is unknown).
    #[arg(long, value_name = "J", value_parser = ids::parse_id_arg)]
    pub job: Vec<ids::IdArg>,
    /// Only tasks that finished at least this long ago (`1h`, `30m`); alone: every such task.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub finished_before: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `Forgotten` summed over the requests (ids go in frame-sized batches).
#[derive(Debug, Default, PartialEq, Serialize)]
struct Forgot {
    forgotten: u64,
    jobs: Vec<JobView>,
    jobs_left_out: u64,
    unfinished: Vec<u64>,
    unfinished_count: u64,
    unknown: Vec<u64>,
    unknown_count: u64,
}

#[derive(Debug, PartialEq, Serialize)]
struct JobView {
    job: u64,
    tasks: u64,
    /// No task of it is left.
    whole: bool,
}

impl Forgot {
    fn add(&mut self, reply: FromMaster) -> Result<()> {
        let FromMaster::Forgotten {
            tasks,
            jobs,
            jobs_left_out,
            unfinished,
            unfinished_count,
            unknown,
            unknown_count,
        } = reply
        else {
            return Err(unexpected(&reply, "Forgotten"));
        };
        self.forgotten += tasks;
        for JobForgotten { job, tasks, whole } in jobs {
            match self.jobs.iter_mut().find(|j| j.job == job.0) {
                Some(j) => {
                    j.tasks += tasks;
                    j.whole |= whole;
                }
                None => self.jobs.push(JobView {
                    job: job.0,
                    tasks,
                    whole,
                }),
            }
        }
        self.jobs_left_out += jobs_left_out;
        self.unfinished.extend(unfinished.iter().map(|t| t.0));
        self.unfinished_count += unfinished_count;
        self.unknown.extend(unknown.iter().map(|t| t.0));
        self.unknown_count += unknown_count;
        Ok(())
    }
}

pub fn run(args: ForgetArgs) -> Result<Outcome> {
    if args.ids.is_empty() && args.job.is_empty() && args.finished_before.is_none() {
        return Err(ClientError::Usage(
            "say what to forget: task ids, --job J, or --finished-before D".into(),
        ));
    }
    let finished_before_ms = args
        .finished_before
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut session = args.conn.session()?;
    let mut all = Forgot::default();
    let job_ids = jobs::job_ids(&args.job);
    // Jobs (and an age alone) in one request: the reply is bounded whatever they hold.
    if !job_ids.is_empty() || args.ids.is_empty() {
        let reply = session.request(&ToMaster::Forget {
            ids: Vec::new(),
            jobs: job_ids,
            finished_before_ms,
        })?;
        all.add(reply)?;
    }
    for batch in ids::batched(ids::from_args(&args.ids)) {
        let reply = session.request(&ToMaster::Forget {
            ids: batch,
            jobs: Vec::new(),
            finished_before_ms,
        })?;
        all.add(reply)?;
    }
    let mut out = view::stdout();
    if args.json {
        view::write_json(&mut out, &all)?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &all)?;
    }
    out.flush()?;
    Ok(if all.unknown_count == 0 {
        Outcome::Success
    } else {
        Outcome::TasksFailed
    })
}

/// `forgot 20 tasks (job 3)`, then the ids that were not forgotten, as ranges.
fn write_report(out: &mut impl Write, f: &Forgot) -> std::io::Result<()> {
    let jobs = match f.jobs.as_slice() {
        [] => String::new(),
        [j] if f.jobs_left_out == 0 => format!(" (job {})", j.job),
        js if js.len() <= 8 && f.jobs_left_out == 0 => {
            let list: Vec<String> = js.iter().map(|j| j.job.to_string()).collect();
            format!(" (jobs {})", list.join(", "))
        }
        js => format!(" ({} jobs)", js.len() as u64 + f.jobs_left_out),
    };
    writeln!(
        out,
        "forgot {}{jobs}",
        super::count(f.forgotten, "task", "tasks")
    )?;
    for (label, listed, count) in [
        ("not finished (kept):", &f.unfinished, f.unfinished_count),
        ("unknown:", &f.unknown, f.unknown_count),
    ] {
        if count == 0 {
            continue;
        }
        let ids: Vec<TaskId> = listed.iter().map(|&id| TaskId(id)).collect();
        let more = count - ids.len() as u64;
        let shown = ids::format_ranges(&ids::compress(&ids));
        match (ids.is_empty(), more) {
            (true, _) => writeln!(out, "{label} {}", super::count(count, "task", "tasks"))?,
            (false, 0) => writeln!(out, "{label} {shown}")?,
            (false, more) => writeln!(out, "{label} {shown} and {more} more")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_says_what_was_forgotten_and_what_was_kept() {
        let f = Forgot {
            forgotten: 20,
            jobs: vec![JobView {
                job: 3,
                tasks: 20,
                whole: true,
            }],
            unfinished: vec![7, 5, 6],
            unfinished_count: 3,
            unknown_count: 2,
            ..Forgot::default()
        };
        let mut buf = Vec::new();
        write_report(&mut buf, &f).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "forgot 20 tasks (job 3)\nnot finished (kept): 5-7\nunknown: 2 tasks\n"
        );
    }
}
