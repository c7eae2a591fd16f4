//! `master logs ID [--stderr] [--follow]`: a task's stored output, byte for byte.
//!
//! The master answers each `Log` request with at most `limits::MAX_LOG_READ_BYTES` from the
//! offset asked; the client asks again from where the answer ended, so a log of any size costs
//! both sides one piece at a time. `--follow` keeps asking while the task runs (pausing
//! `FOLLOW_POLL` whenever nothing new came) and returns once the master says the task is final
//! and its log is all read.

use super::error::Result;
use super::session::unexpected;
use super::{ConnArgs, Outcome};
use protocol::{FromMaster, OutputStream, TaskId, ToMaster};
use std::io::Write;
use std::time::Duration;

/// How long `--follow` waits before asking again when nothing new came.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The task whose output to print.
    #[arg(value_name = "ID")]
    pub id: u64,
    /// Print its stderr instead of its stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing what the task prints until it is finished.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

pub fn run(args: LogsArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let stream = if args.stderr {
        OutputStream::Stderr
    } else {
        OutputStream::Stdout
    };
    let task = TaskId(args.id);
    let mut offset = 0u64;
    // The run whose log we print: a task's log is its counting run's, which can change while
    // we read (a retry; the copy of a replicated task that wins).
    let mut run = None;
    let mut was_removed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Bounded by the log: every pass either advances `offset`, or (following a running task)
    // waits, or ends, or starts afresh on another run (once per run the task has).
    loop {
        let reply = session.request(&ToMaster::Log {
            task,
            stream,
            offset,
        })?;
        let FromMaster::Log {
            bytes,
            done,
            removed,
            attempt,
            ..
        } = reply
        else {
            return Err(unexpected(&reply, "Log"));
        };
        // `None` is the result's tail: the same run's bytes, unless the budget removed the log
        // (the tail then is not what the stored log held at `offset`).
        let switched = (attempt.is_some() && attempt != run) || (removed && !was_removed);
        was_removed = removed;
        if switched && offset > 0 {
            // Reading the new run from the old one's offset would splice two logs together.
            out.flush()?;
            if !removed {
                eprintln!(
                    "note: task {task} ran again (a retry, or another copy won); its log \
                     starts afresh"
                );
            }
            run = attempt;
            offset = 0;
            continue;
        }
        if attempt.is_some() {
            run = attempt;
        }
        if removed && offset == 0 {
            eprintln!(
                "note: the full log of task {task} was removed to stay within the master's \
                 --log-budget; this is the end of it kept with its result"
            );
        }
        out.write_all(&bytes)?;
        offset += bytes.len() as u64;
        if done {
            break;
        }
        if bytes.is_empty() {
            if !args.follow {
                break;
            }
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}
