//! `master cancel ID... [--job J]`: says per group what happened; unknown ids make the exit code
//! 1 (an unknown job is refused by the master: exit 1 too).

use super::error::Result;
use super::session::unexpected;
use super::{ids, jobs, view, ConnArgs, Outcome};
use protocol::{FromMaster, TaskId, ToMaster};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Tasks (`7`, `5-9`, `1-3,7`) to cancel (queued ones are dropped, running ones are killed).
    #[arg(value_name = "ID", value_parser = ids::parse_id_arg, required_unless_present = "job")]
    pub ids: Vec<ids::IdArg>,
    /// Also cancel every unfinished task of this job (may be given more than once).
    #[arg(long, value_name = "J", value_parser = ids::parse_id_arg)]
    pub job: Vec<ids::IdArg>,
}

/// `CancelDone` summed over the batches.
#[derive(Debug, Default, PartialEq)]
struct Cancelled {
    cancelled: Vec<TaskId>,
    already_final: Vec<TaskId>,
    unknown: Vec<TaskId>,
}

pub fn run(args: CancelArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let mut all = Cancelled::default();
    // A job's tasks are cancelled by id, in frame-sized batches like any ids: a job of millions
    // would make a `CancelDone` larger than a frame (the master refuses that many by job).
    let ranges: Vec<(u64, u64)> = match jobs::job_ids(&args.job) {
        none if none.is_empty() => Vec::new(),
        asked => jobs::fetch(&mut session, asked)?
            .iter()
            .map(|j| (j.first.0, j.first.0 + j.tasks))
            .collect(),
    };
    let in_a_job = |id: &TaskId| {
        ranges
            .iter()
            .any(|&(first, end)| (first..end).contains(&id.0))
    };
    let listed = ids::from_args(&args.ids).filter(|id| !in_a_job(id));
    let of_jobs = ranges
        .iter()
        .flat_map(|&(first, end)| (first..end).map(TaskId));
    for batch in ids::batched(listed.chain(of_jobs)) {
        match session.request(&ToMaster::Cancel {
            ids: batch,
            jobs: Vec::new(),
        })? {
            FromMaster::CancelDone {
                cancelled,
                already_final,
                unknown,
            } => {
                all.cancelled.extend(cancelled);
                all.already_final.extend(already_final);
                all.unknown.extend(unknown);
            }
            other => return Err(unexpected(&other, "CancelDone")),
        }
    }
    let mut out = view::stdout();
    write_report(&mut out, &all)?;
    out.flush()?;
    Ok(if all.unknown.is_empty() {
        Outcome::Success
    } else {
        Outcome::TasksFailed
    })
}

/// One line per non-empty group, ids shown as ranges (`1-500, 702`).
fn write_report(out: &mut impl Write, c: &Cancelled) -> std::io::Result<()> {
    for (label, group) in [
        ("cancelled:       ", &c.cancelled),
        ("already finished:", &c.already_final),
        ("unknown:         ", &c.unknown),
    ] {
        if !group.is_empty() {
            let ranges = ids::compress(group);
            writeln!(out, "{label} {}", ids::format_ranges(&ranges))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_non_empty_groups() {
        let c = Cancelled {
            cancelled: vec![TaskId(3), TaskId(1), TaskId(2)],
            already_final: vec![],
            unknown: vec![TaskId(99)],
        };
        let mut buf = Vec::new();
        write_report(&mut buf, &c).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "cancelled:        1-3\nunknown:          99\n"
        );
    }
}
