//! `master status`: one `Status` request, shown as a worker table or the `--json` shape.

use super::error::Result;
use super::session::{unexpected, Session};
use super::{view, ConnArgs, Outcome};
use protocol::{FromMaster, StatusReport, ToMaster};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let report = fetch(&mut session)?;
    let mut out = view::stdout();
    if args.json {
        view::write_status_json(&mut out, &report)?;
    } else {
        view::write_status_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// One `Status` request and all of its chunks: the counts of the first, the workers of all.
pub fn fetch(session: &mut Session) -> Result<StatusReport> {
    session.send(&ToMaster::Status)?;
    let mut report: Option<StatusReport> = None;
    // Bounded by the master: every chunk carries the next workers, and the last has `more: false`.
    loop {
        let (chunk, more) = match session.recv("the reply to Status")? {
            FromMaster::Status { report, more } => (report, more),
            other => return Err(unexpected(&other, "Status")),
        };
        let whole = match report.take() {
            None => chunk,
            Some(mut r) => {
                r.workers.extend(chunk.workers);
                r
            }
        };
        if !more {
            return Ok(whole);
        }
        report = Some(whole);
    }
}
