//! `master results [ID...] [--job J] [--state S] [--limit N]`: the reply arrives in chunks (`more` says
//! another follows), which are written out as they come so memory stays at one chunk for `--json`
//! (or `--limit` rows). The filter and the limit apply here, as rows arrive.

use super::error::Result;
use super::session::{unexpected, Session};
use super::term::Layout;
use super::view::{self, ResultsOutput};
use super::{ids, jobs, ConnArgs, Outcome};
use protocol::{FromMaster, JobId, TaskId, TaskState, ToMaster};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print a JSON array of task objects.
    #[arg(long)]
    pub json: bool,
    /// Only tasks in this state (queued, running, succeeded, failed, timed_out, cancelled,
    /// worker_lost, waiting, dependency_failed); several allowed, or a comma list.
    #[arg(long, value_name = "S", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<TaskState>,
    /// Show only the last N tasks (0: all) [default: 50 on a terminal, all when piped].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Tasks (`7`, `5-9`, `1-3,7`) to show; none means all.
    #[arg(value_name = "ID", value_parser = ids::parse_id_arg)]
    pub ids: Vec<ids::IdArg>,
    /// Also show every task of this job (may be given more than once).
    #[arg(long, value_name = "J", value_parser = ids::parse_id_arg)]
    pub job: Vec<ids::IdArg>,
}

pub fn run(args: ResultsArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let mut out = view::stdout();
    let limit = view::row_limit(args.limit, args.json);
    let mut sink = if args.json {
        ResultsOutput::json(limit)
    } else {
        ResultsOutput::table(Layout::for_stdout(), limit)
    };
    let filter = Filter(&args.state);
    let mut job_list = jobs::job_ids(&args.job);
    if args.ids.is_empty() {
        fetch(
            &mut session,
            Vec::new(),
            job_list,
            filter,
            &mut sink,
            &mut out,
        )?;
    } else {
        for batch in ids::batched(ids::from_args(&args.ids)) {
            // The jobs go with the first frame.
            let jobs = std::mem::take(&mut job_list);
            fetch(&mut session, batch, jobs, filter, &mut sink, &mut out)?;
        }
    }
    let left_out = sink.finish(&mut out)?;
    out.flush()?;
    if !args.json {
        view::note_left_out(left_out, "task", "tasks");
    }
    Ok(Outcome::Success)
}

/// `--state` values, by the names `results --json` prints.
fn parse_state(text: &str) -> std::result::Result<TaskState, String> {
    TaskState::ALL
        .into_iter()
        .find(|s| s.as_str() == text.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state {text:?}: one of {}", names.join(", "))
        })
}

/// The `--state` filter: empty means every state.
#[derive(Clone, Copy)]
struct Filter<'a>(&'a [TaskState]);

impl Filter<'_> {
    fn admits(self, state: TaskState) -> bool {
        self.0.is_empty() || self.0.contains(&state)
    }
}

/// One `Results` request and all of its chunks.
fn fetch(
    session: &mut Session,
    ids: Vec<TaskId>,
    jobs: Vec<JobId>,
    filter: Filter,
    sink: &mut ResultsOutput,
    out: &mut impl Write,
) -> Result<()> {
    session.send(&ToMaster::Results { ids, jobs })?;
    // Bounded by the master: every chunk carries tasks we asked for, and the last has `more: false`.
    loop {
        match session.recv("the reply to Results")? {
            FromMaster::Results { tasks, more } => {
                for task in tasks.iter().filter(|t| filter.admits(t.state)) {
                    sink.push(out, task)?;
                }
                if !more {
                    return Ok(());
                }
            }
            other => return Err(unexpected(&other, "Results")),
        }
    }
}
