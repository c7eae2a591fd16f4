//! `master results [ID...] [--job J]`: the reply arrives in chunks (`more` says another follows), which are
//! written out as they come so memory stays at one chunk for `--json`.

use super::error::Result;
use super::session::{unexpected, Session};
use super::view::{self, ResultsOutput};
use super::{ids, jobs, ConnArgs, Outcome};
use protocol::{FromMaster, JobId, TaskId, ToMaster};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print a JSON array of task objects.
    #[arg(long)]
    pub json: bool,
    /// Tasks (`7`, `5-9`, `1-3,7`) to show; none means all.
    #[arg(value_name = "ID", value_parser = ids::parse_id_arg)]
    pub ids: Vec<ids::IdArg>,
    /// Also show every task of this job (may be given more than once).
    #[arg(long, value_name = "J", value_parser = ids::parse_id_arg)]
    pub job: Vec<ids::IdArg>,
}

pub fn run(args: ResultsArgs) -> Result<Outcome> {
    let mut session = args.conn.connect()?;
    let mut out = view::stdout();
    let mut sink = if args.json {
        ResultsOutput::json()
    } else {
        ResultsOutput::table()
    };
    let mut job_list = jobs::job_ids(&args.job);
    if args.ids.is_empty() {
        fetch(&mut session, Vec::new(), job_list, &mut sink, &mut out)?;
    } else {
        for batch in ids::batched(ids::from_args(&args.ids)) {
            // The jobs go with the first frame.
            let jobs = std::mem::take(&mut job_list);
            fetch(&mut session, batch, jobs, &mut sink, &mut out)?;
        }
    }
    sink.finish(&mut out)?;
    out.flush()?;
    Ok(Outcome::Success)
}

/// One `Results` request and all of its chunks.
fn fetch(
    session: &mut Session,
    ids: Vec<TaskId>,
    jobs: Vec<JobId>,
    sink: &mut ResultsOutput,
    out: &mut impl Write,
) -> Result<()> {
    session.send(&ToMaster::Results { ids, jobs })?;
    // Bounded by the master: every chunk carries tasks we asked for, and the last has `more: false`.
    loop {
        match session.recv("the reply to Results")? {
            FromMaster::Results { tasks, more } => {
                for task in &tasks {
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
