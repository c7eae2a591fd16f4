//! `master status`: one `Status` request, shown as a worker table or the `--json` shape.

use super::error::Result;
use super::session::unexpected;
use super::{view, ConnArgs, Outcome};
use protocol::{FromMaster, ToMaster};
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
    let mut session = args.conn.connect()?;
    let report = match session.request(&ToMaster::Status)? {
        FromMaster::Status(report) => report,
        other => return Err(unexpected(&other, "Status")),
    };
    let mut out = view::stdout();
    if args.json {
        view::write_status_json(&mut out, &report)?;
    } else {
        view::write_status_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}
