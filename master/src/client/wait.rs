//! `master wait [ID...]`, also used by `submit --wait`: one `Wait` per frame-sized batch of ids,
//! `Progress` frames feeding the bar, and `WaitDone` totals summed over the batches.

use super::error::{ClientError, Result};
use super::progress::{Counts, ProgressBar};
use super::session::{unexpected, Session};
use super::{ids, jobs, view, ConnArgs, Outcome};
use protocol::{FromMaster, JobId, TaskId, ToMaster};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print `{"total":..,"succeeded":..,"failed":..}`.
    #[arg(long)]
    pub json: bool,
    /// Tasks (`7`, `5-9`, `1-3,7`) to wait for; none (and no --job) means every job unfinished now and the latest job.
    #[arg(value_name = "ID", value_parser = ids::parse_id_arg)]
    pub ids: Vec<ids::IdArg>,
    /// Wait for every task of this job (may be given more than once).
    #[arg(long, value_name = "J", value_parser = ids::parse_id_arg)]
    pub job: Vec<ids::IdArg>,
}

/// What `WaitDone` reports. Field names are the `--json` contract.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitSummary {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl WaitSummary {
    pub fn outcome(&self) -> Outcome {
        if self.failed == 0 {
            Outcome::Success
        } else {
            Outcome::TasksFailed
        }
    }

    pub fn write_human(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{}: {} succeeded, {} failed",
            super::count(self.total, "task", "tasks"),
            self.succeeded,
            self.failed
        )
    }
}

pub fn run(args: WaitArgs) -> Result<Outcome> {
    let mut session = args.conn.session()?;
    let ids: Vec<TaskId> = ids::from_args(&args.ids).collect();
    let jobs = jobs::job_ids(&args.job);
    let summary = if ids.is_empty() {
        // Empty ids (and no jobs) asks the master for "the jobs unfinished now and the latest one".
        wait_batches(&mut session, [Vec::new()], 0, jobs)?
    } else {
        let known = ids.len() as u64;
        wait_batches(&mut session, ids::batched(ids), known, jobs)?
    };
    let mut out = view::stdout();
    if args.json {
        view::write_json(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        summary.write_human(&mut out)?;
    }
    out.flush()?;
    Ok(summary.outcome())
}

/// Waits for every batch in turn, `jobs` with the first. `known_total` (0 if unknown) keeps the
/// bar's total steady while later batches have not been asked about yet.
pub fn wait_batches(
    session: &mut Session,
    batches: impl IntoIterator<Item = Vec<TaskId>>,
    known_total: u64,
    mut jobs: Vec<JobId>,
) -> Result<WaitSummary> {
    let show = shows_progress();
    let mut waiting = Waiting::new(show, known_total);
    for batch in batches {
        session.send(&ToMaster::Wait {
            ids: batch,
            progress: show,
            jobs: std::mem::take(&mut jobs),
        })?;
        waiting.one(session)?;
    }
    Ok(waiting.finish())
}

/// Whether to ask for `Progress` frames: a bar is drawn only on a terminal.
pub fn shows_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// The client's side of waits already asked for: their replies read, the bar drawn, the
/// counts summed over them.
pub struct Waiting {
    bar: ProgressBar,
    known_total: u64,
    done: WaitSummary,
}

impl Waiting {
    pub fn new(show: bool, known_total: u64) -> Waiting {
        interrupt::say_tasks_keep_running(show);
        Waiting {
            bar: ProgressBar::new(show, Instant::now()),
            known_total,
            done: WaitSummary::default(),
        }
    }

    /// Reads the replies of the one wait asked for, up to its `WaitDone`, and ends.
    pub fn until_done(mut self, session: &mut Session) -> Result<WaitSummary> {
        self.one(session)?;
        Ok(self.finish())
    }

    /// Reads one wait's replies up to its `WaitDone`. Bounded by the master: it sends at most
    /// one `Progress` per loop turn and ends with `WaitDone`, an `Error`, or by closing the
    /// connection.
    fn one(&mut self, session: &mut Session) -> Result<()> {
        let done = &mut self.done;
        let mut probing = false;
        loop {
            let reply = match session.recv("the reply to Wait") {
                // Quiet for a whole reply timeout: tasks may just be long. Ask for a status
                // (answered at once, between our wait's frames); only if that too goes
                // unanswered is the master gone.
                Err(ClientError::NoReply { .. }) if !probing => {
                    session.send(&ToMaster::Status)?;
                    probing = true;
                    continue;
                }
                Err(ClientError::NoReply { after, .. }) => {
                    return Err(ClientError::NoReply {
                        waiting_for: "the answer to a status probe, sent while waiting for tasks",
                        after,
                    })
                }
                other => other?,
            };
            probing = false;
            match reply {
                // The answer to a probe: the master is alive.
                FromMaster::Status { .. } => {}
                FromMaster::Progress {
                    total,
                    finished,
                    failed,
                } => {
                    let counts = Counts {
                        total: self.known_total.max(done.total.saturating_add(total)),
                        finished: done.total.saturating_add(finished),
                        failed: done.failed.saturating_add(failed),
                    };
                    self.bar.update(Instant::now(), counts);
                }
                FromMaster::WaitDone {
                    total,
                    succeeded,
                    failed,
                } => {
                    done.total = done.total.saturating_add(total);
                    done.succeeded = done.succeeded.saturating_add(succeeded);
                    done.failed = done.failed.saturating_add(failed);
                    return Ok(());
                }
                other => return Err(unexpected(&other, "Progress or WaitDone")),
            }
        }
    }

    fn finish(mut self) -> WaitSummary {
        self.bar.clear();
        self.done
    }
}

/// Ctrl-C while waiting: the person may think it stops the tasks. It does not, and they are told
/// so (and how to wait again or cancel) before the client exits 130 as for any SIGINT.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// With the bar erased first (`\r`, erase line) for a terminal.
    const NOTE_TTY: &[u8] = b"\r\x1b[Kinterrupted: the tasks keep running on the cluster \
        (`master wait` waits again, `master cancel ID...` stops them)\n";
    const NOTE: &[u8] = b"interrupted: the tasks keep running on the cluster \
        (`master wait` waits again, `master cancel ID...` stops them)\n";

    static TTY: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: libc::c_int) {
        let note = if TTY.load(Ordering::Relaxed) {
            NOTE_TTY
        } else {
            NOTE
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(libc::STDERR_FILENO, note.as_ptr().cast(), note.len());
            libc::_exit(130);
        }
    }

    /// Installs the SIGINT handler for the rest of the process (a client waits once).
    pub fn say_tasks_keep_running(tty: bool) {
        TTY.store(tty, Ordering::Relaxed);
        // SAFETY: installing a handler that only does async-signal-safe work.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_and_text() {
        let s = WaitSummary {
            total: 5,
            succeeded: 4,
            failed: 1,
        };
        let v: serde_json::Value = serde_json::to_value(s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"total": 5, "succeeded": 4, "failed": 1})
        );
        let mut buf = Vec::new();
        s.write_human(&mut buf).unwrap();
        assert_eq!(buf, b"5 tasks: 4 succeeded, 1 failed\n");
        let one = WaitSummary {
            total: 1,
            succeeded: 1,
            failed: 0,
        };
        buf.clear();
        one.write_human(&mut buf).unwrap();
        assert_eq!(buf, b"1 task: 1 succeeded, 0 failed\n");
        assert_eq!(s.outcome(), Outcome::TasksFailed);
        assert_eq!(WaitSummary::default().outcome(), Outcome::Success);
    }
}
