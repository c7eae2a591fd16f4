//! `master submit`: turns the command line (or a task file) into `TaskSpec`s, sends them in
//! `Submit` frames that each stay under the frame budget, prints the ids, and optionally waits.
//!
//! `--count N` travels as a number, never as N copies: a million tasks cost one spec on the wire.

use super::error::{ClientError, Result};
use super::ids::{self, IdRange};
use super::session::{unexpected, Requester};
use super::wait::{self, wait_batches};
use super::{view, ConnArgs, Outcome, FRAME_BUDGET};
use master::taskfile::TaskFile;
use protocol::budget::{chunks_within, Chunks};
use protocol::codec::encoded_len;
use protocol::duration::parse_duration;
use protocol::limits::MAX_JOB_NAME_BYTES;
use protocol::{
    After, FromMaster, JobId, TaskId, TaskKind, TaskSpec, ToMaster, DEFAULT_MAX_RETRIES, MAX_FRAME,
    MAX_REPLICAS,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Higher runs first; may be negative. With --file: the default for lines without one.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i32,
    /// Estimated cost (seconds by convention).
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub size: f64,
    /// Kill a task that runs longer than this (250ms, 3s, 1m).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Runs again after its worker is lost, before it fails as worker_lost.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RETRIES)]
    pub retries: u32,
    /// Runs again (with backoff) after a non-zero exit or a failure to start.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry_failed: u32,
    /// Run only on workers of this group (default: any worker).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// How long the task may run (30m, 2h): it is placed only on a worker whose batch
    /// allocation lives at least that long (default: any worker).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub time_request: Option<Duration>,
    /// Start only after these tasks succeeded (7, 5-9, 1-3,7; repeatable); if one ends
    /// otherwise, the new tasks end dependency_failed without running. With --file: for lines
    /// without their own "after".
    #[arg(long, value_name = "IDS", value_parser = ids::parse_id_arg)]
    pub after: Vec<ids::IdArg>,
    /// Start only after every task of job J succeeded (repeatable; as --after otherwise).
    #[arg(long, value_name = "J")]
    pub after_job: Vec<u64>,
    /// Run N copies of each task at once on distinct workers; the first success wins and the
    /// others are cancelled (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_replicas)]
    pub replicas: u32,
    /// Submit N copies (with --file: the whole file N times).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Synthetic task: idle this long inside the worker.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub sleep: Option<Duration>,
    /// Synthetic task: burn one CPU this long inside the worker.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub spin: Option<Duration>,
    /// Read tasks from JSON lines ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Then wait for the new tasks, as `master wait` does.
    #[arg(long)]
    pub wait: bool,
    /// Print {"ids": [...], "job": J} (with --wait also total, succeeded, failed).
    #[arg(long)]
    pub json: bool,
    /// The job's name (default: the command line, `sleep 200ms` for a synthetic task, the
    /// file's name for --file).
    #[arg(long, value_name = "NAME", value_parser = parse_job_name)]
    pub name: Option<String>,
    /// The program and its arguments, run directly (no shell).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub use master::taskfile::SpecDefaults;

/// `--replicas`: refused here, before the task file is read or the master is reached.
fn parse_replicas(text: &str) -> std::result::Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("must be a whole number from 1 to {MAX_REPLICAS}"))?;
    if !(1..=MAX_REPLICAS).contains(&n) {
        return Err(format!(
            "must be 1 to {MAX_REPLICAS} (copies run at once, each on its own worker)"
        ));
    }
    Ok(n)
}

/// `--name`: refused here if the master would refuse it.
fn parse_job_name(text: &str) -> std::result::Result<String, String> {
    if text.is_empty() {
        return Err("is empty: leave --name out for the default name".into());
    }
    if text.len() > MAX_JOB_NAME_BYTES {
        return Err(format!(
            "is {} bytes, more than the limit of {MAX_JOB_NAME_BYTES}",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// A task file's specs, each checked to fit a frame on its own, and a file whose lines wait for
/// each other to fit one (its references are indices into that one `Submit`).
fn parse_task_file(text: &str, origin: &str, defaults: &SpecDefaults) -> Result<TaskFile> {
    let file =
        master::taskfile::parse_file(text, origin, defaults).map_err(|e| match e.breaks_limit {
            true => ClientError::Refused(e.to_string()),
            false => ClientError::Usage(e.to_string()),
        })?;
    for (spec, line) in file.specs.iter().zip(&file.lines) {
        check_frame_size(spec)
            .map_err(|e| ClientError::Usage(format!("{origin} line {line}: {e}")))?;
    }
    if file.is_dag() {
        let len: usize = file.specs.iter().map(encoded_len).sum();
        if len + SUBMIT_OVERHEAD > FRAME_BUDGET {
            return Err(ClientError::Usage(format!(
                "{origin}: its lines wait for each other (after), so it goes in one request, \
                 but it is {len} bytes encoded, more than {FRAME_BUDGET}; split it into files \
                 that wait by task id"
            )));
        }
    }
    Ok(file)
}

/// Whole milliseconds, saturating (parse_duration already caps values far below u64::MAX ms).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Bytes a `Submit` frame adds around its specs: variant tag, vector length and count, each a
/// varint (at most 5 + 9 + 5), rounded up, and the job's name (an option tag, a length and at
/// most `MAX_JOB_NAME_BYTES`).
const SUBMIT_OVERHEAD: usize = 32 + 16 + MAX_JOB_NAME_BYTES;

/// A spec that cannot travel even alone in a frame (a giant argv or env in a task file).
pub fn check_frame_size(spec: &TaskSpec) -> std::result::Result<(), String> {
    let len = encoded_len(spec);
    if len + SUBMIT_OVERHEAD > MAX_FRAME {
        return Err(format!(
            "task is {len} bytes encoded, more than the protocol's frame limit of {MAX_FRAME}"
        ));
    }
    Ok(())
}

/// Where the work comes from: exactly one of these per submit.
#[derive(Debug, PartialEq)]
enum Source<'a> {
    Kind(TaskKind),
    File(&'a Path),
}

impl SubmitArgs {
    fn defaults(&self) -> SpecDefaults {
        SpecDefaults {
            priority: self.priority,
            size: self.size,
            timeout_ms: self.timeout.map(duration_ms),
            max_retries: self.retries,
            retry_failed: self.retry_failed,
            group: self.group.clone(),
            time_request_ms: self.time_request.map(duration_ms),
            replicas: self.replicas,
            after: self
                .after
                .iter()
                .flat_map(|a| a.0.iter())
                .map(|r| After::Ids {
                    first: TaskId(r.first),
                    last: TaskId(r.end() - 1),
                })
                .chain(self.after_job.iter().map(|&j| After::Job(JobId(j))))
                .collect(),
        }
    }

    fn source(&self) -> Result<Source<'_>> {
        let mut given = Vec::new();
        if !self.command.is_empty() {
            given.push("-- CMD");
        }
        if self.sleep.is_some() {
            given.push("--sleep");
        }
        if self.spin.is_some() {
            given.push("--spin");
        }
        if self.file.is_some() {
            given.push("--file");
        }
        if given.len() > 1 {
            return Err(ClientError::Usage(format!(
                "give only one of --sleep, --spin, --file or -- CMD ARGS... (got {})",
                given.join(" and ")
            )));
        }
        let source = if let Some(d) = self.sleep {
            Source::Kind(TaskKind::Sleep { ms: duration_ms(d) })
        } else if let Some(d) = self.spin {
            Source::Kind(TaskKind::Spin { ms: duration_ms(d) })
        } else if let Some(path) = &self.file {
            Source::File(path)
        } else if !self.command.is_empty() {
            Source::Kind(TaskKind::Command {
                argv: self.command.clone(),
                env: vec![],
                cwd: None,
            })
        } else {
            return Err(ClientError::Usage(
                "nothing to run: give --sleep D, --spin D, --file FILE or -- CMD ARGS...".into(),
            ));
        };
        Ok(source)
    }

    /// The job's name: `--name`, else what the submission is (its command line, or the task
    /// file's name).
    fn job_name(&self, specs: &[TaskSpec]) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let mut name = match (&self.file, specs.first()) {
            (Some(path), _) if path == Path::new("-") => "stdin".to_string(),
            (Some(path), _) => path.file_name().map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into(),
            ),
            (None, Some(spec)) => protocol::names::job_name(spec),
            (None, None) => String::new(),
        };
        protocol::names::cut_name(&mut name);
        name
    }

    /// The specs to send, validated: bad input is reported before anything touches the network.
    #[cfg(test)]
    fn specs(&self) -> Result<Vec<TaskSpec>> {
        self.task_file().map(|(f, _)| f.specs)
    }

    /// The specs with their line numbers (the command line's one spec is "line" 0), and where
    /// they come from ("the command line" or the file's name).
    fn task_file(&self) -> Result<(TaskFile, String)> {
        let defaults = self.defaults();
        match self.source()? {
            Source::Kind(kind) => {
                let spec = defaults.spec(kind);
                protocol::limits::check_spec(&spec)
                    .map_err(|e| ClientError::Refused(e.to_string()))?;
                spec.validate().map_err(ClientError::Usage)?;
                let file = TaskFile {
                    specs: vec![spec],
                    lines: vec![0],
                };
                Ok((file, "--after".into()))
            }
            Source::File(path) => {
                let (text, origin) = read_task_file(path)?;
                let file = parse_task_file(&text, &origin, &defaults)?;
                Ok((file, origin))
            }
        }
    }
}

/// Before anything is submitted: the largest task id the specs wait for must exist (ids only
/// grow, so then every smaller one does), or the whole submission is refused here, naming the
/// line. The master checks again (a forged `Submit`), without line numbers.
fn check_ids_exist(master: &mut impl Requester, file: &TaskFile, origin: &str) -> Result<()> {
    let Some((id, line)) = file.largest_id() else {
        return Ok(());
    };
    match master.request(&ToMaster::Results {
        ids: vec![id],
        jobs: vec![],
    }) {
        Ok(FromMaster::Results { .. }) => Ok(()),
        Ok(FromMaster::Error { .. }) | Err(ClientError::Master(_)) => {
            let at = match line {
                0 => origin.to_string(),
                n => format!("{origin} line {n}: after"),
            };
            Err(ClientError::Master(format!(
                "{at}: no task {id}; nothing was submitted"
            )))
        }
        Ok(other) => Err(unexpected(&other, "Results")),
        Err(e) => Err(e),
    }
}

fn read_task_file(path: &Path) -> Result<(String, String)> {
    let cannot =
        |origin: &str, e: std::io::Error| ClientError::Usage(format!("cannot read {origin}: {e}"));
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| cannot("stdin", e))?;
        return Ok((text, "stdin".into()));
    }
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| cannot(&origin, e))?;
    Ok((text, origin))
}

/// The specs of each `Submit` frame, in order: consecutive runs of `specs` whose frame is at most
/// `budget` bytes. A spec too big for the budget travels alone (`check_frame_size` has made sure
/// it still fits `MAX_FRAME`).
pub fn frame_chunks(specs: Vec<TaskSpec>, budget: usize) -> Chunks<TaskSpec> {
    chunks_within(specs, budget.saturating_sub(SUBMIT_OVERHEAD))
}

/// What the master accepted of one submission.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The id ranges, adjacent ones merged.
    pub ids: Vec<IdRange>,
    /// The job of each frame: one, unless the submission needed several frames.
    pub jobs: Vec<JobId>,
    /// The master's warnings about the accepted tasks, each once (every frame may repeat
    /// them), at most [`MAX_WARNINGS`].
    pub warnings: Vec<String>,
}

/// Sends every chunk, each `count` times, one request at a time, as job `name`, and appends the
/// accepted id ranges and jobs to `accepted` (merging adjacent ranges). On error, `accepted`
/// still says what the master took before it, so the caller can tell the user.
///
/// `then` rides behind the `Submit` when the submission is one frame (a `WaitSubmitted`, whose
/// replies the caller reads); returns whether it went.
pub fn submit_all(
    master: &mut impl Requester,
    specs: Vec<TaskSpec>,
    count: u32,
    budget: usize,
    name: &str,
    accepted: &mut Accepted,
    then: Option<&ToMaster>,
) -> Result<bool> {
    let mut chunks = frame_chunks(specs, budget).peekable();
    let mut then_sent = false;
    while let Some(chunk) = chunks.next() {
        let expected = chunk.len() as u64 * u64::from(count);
        let submit = ToMaster::Submit {
            specs: chunk,
            count,
            name: Some(name.to_string()),
        };
        let reply = match then {
            Some(then) if accepted.jobs.is_empty() && chunks.peek().is_none() => {
                then_sent = true;
                master.request_with(&submit, &[then])?
            }
            _ => master.request(&submit)?,
        };
        let range = match reply {
            FromMaster::Submitted {
                first,
                count,
                job,
                warnings,
            } if count == expected => {
                accepted.jobs.push(job);
                for w in warnings {
                    // Bounded: the core sends a few per frame, and repeats are dropped.
                    if !accepted.warnings.contains(&w) && accepted.warnings.len() < MAX_WARNINGS {
                        accepted.warnings.push(w);
                    }
                }
                IdRange {
                    first: first.0,
                    count,
                }
            }
            FromMaster::Submitted { count: got, .. } => {
                return Err(ClientError::Unexpected {
                    got: format!("Submitted with {got} ids"),
                    expected: "one id per task sent",
                })
            }
            other => return Err(unexpected(&other, "Submitted")),
        };
        match accepted.ids.last_mut() {
            Some(last) if last.end() == range.first => last.count += range.count,
            _ => accepted.ids.push(range),
        }
    }
    Ok(then_sent)
}

/// Warnings printed for one `submit`, however many chunks it took.
const MAX_WARNINGS: usize = 16;

pub fn run(args: SubmitArgs) -> Result<Outcome> {
    let (file, origin) = args.task_file()?;
    let mut session = args.conn.session()?;
    check_ids_exist(&mut session, &file, &origin)?;
    let specs = file.specs;
    let name = args.job_name(&specs);
    let mut accepted = Accepted::default();
    // A one-frame `submit --wait` asks for the wait in the same write: the master answers
    // both, and need not commit between them (`Core::commit_forced_by`).
    let show = wait::shows_progress();
    let then = ToMaster::WaitSubmitted { progress: show };
    let result = submit_all(
        &mut session,
        specs,
        args.count,
        FRAME_BUDGET,
        &name,
        &mut accepted,
        args.wait.then_some(&then),
    );
    let wait_sent = match result {
        Ok(sent) => sent,
        Err(e) => {
            if !accepted.ids.is_empty() {
                // Those tasks exist and will run; the user needs their ids to wait for or cancel them.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: the master had already accepted tasks {}",
                    ids::format_ranges(&accepted.ids)
                );
            }
            return Err(e);
        }
    };
    // On stderr, so `--json` and the ids on stdout stay as scripts read them.
    for w in &accepted.warnings {
        let _ = writeln!(std::io::stderr(), "warning: {w}");
    }
    let accepted_jobs = accepted.jobs;
    let accepted = accepted.ids;
    let mut out = view::stdout();
    if !args.json {
        for id in ids::all(&accepted) {
            writeln!(out, "{id}")?;
        }
        // Flushed before waiting so the ids are usable (e.g. for cancel) while we wait.
        out.flush()?;
    }
    let summary = if args.wait {
        let total = ids::total(&accepted);
        let summary = if wait_sent {
            wait::Waiting::new(show, total).until_done(&mut session)?
        } else if accepted_jobs.is_empty() {
            let batches = ids::batched(ids::all(&accepted));
            wait_batches(&mut session, batches, total, Vec::new())?
        } else {
            // The jobs are exactly the new tasks: one small frame, however many ids.
            wait_batches(&mut session, [Vec::new()], total, accepted_jobs.clone())?
        };
        Some(summary)
    } else {
        None
    };
    if args.json {
        view::write_submit_json(&mut out, &accepted, summary, &accepted_jobs)?;
    } else if let Some(s) = &summary {
        s.write_human(&mut out)?;
    }
    out.flush()?;
    Ok(summary.map_or(Outcome::Success, |s| s.outcome()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use protocol::TaskId;

    /// Just enough of the command line to parse `submit` arguments.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SubmitArgs,
    }

    fn parse(argv: &[&str]) -> SubmitArgs {
        let argv = std::iter::once("submit").chain(argv.iter().copied());
        Cli::try_parse_from(argv).expect("arguments parse").args
    }

    fn specs(argv: &[&str]) -> Result<Vec<TaskSpec>> {
        parse(argv).specs()
    }

    #[test]
    fn sleep_with_every_option() {
        let got = specs(&[
            "--priority",
            "-5",
            "--size",
            "2.5",
            "--timeout",
            "3s",
            "--retries",
            "0",
            "--replicas",
            "3",
            "--sleep",
            "250ms",
        ])
        .unwrap();
        assert_eq!(
            got,
            vec![TaskSpec {
                time_request_ms: None,
                kind: TaskKind::Sleep { ms: 250 },
                priority: -5,
                size: 2.5,
                timeout_ms: Some(3_000),
                max_retries: 0,
                retry_failed: 0,
                group: None,
                replicas: 3,
                name: None,
                after: vec![],
            }]
        );
    }

    #[test]
    fn defaults_and_spin() {
        let args = parse(&["--spin", "1m"]);
        assert_eq!(args.count, 1);
        assert!(!args.wait && !args.json);
        assert_eq!(
            args.specs().unwrap(),
            vec![TaskSpec::new(TaskKind::Spin { ms: 60_000 })]
        );
    }

    #[test]
    fn trailing_command_is_the_argv() {
        let got = specs(&["--count", "3", "--", "sh", "-c", "echo --sleep"]).unwrap();
        assert_eq!(
            got[0].kind,
            TaskKind::Command {
                argv: vec!["sh".into(), "-c".into(), "echo --sleep".into()],
                env: vec![],
                cwd: None,
            }
        );
        assert_eq!(got.len(), 1, "--count travels as a number, not as copies");
        assert_eq!(parse(&["--count", "3", "--", "true"]).count, 3);
    }

    #[test]
    fn exactly_one_source() {
        let e = specs(&[]).unwrap_err().to_string();
        assert!(e.starts_with("nothing to run"), "{e}");
        let e = specs(&["--sleep", "1s", "--", "ls"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("got -- CMD and --sleep"), "{e}");
        let e = specs(&["--spin", "1s", "--file", "x.jsonl"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn invalid_values_are_clear_errors() {
        let e = specs(&["--size", "-1", "--sleep", "1s"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("size must be"), "{e}");
        let e = specs(&["--timeout", "0s", "--sleep", "1s"])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "timeout must be greater than zero");
        let e = specs(&["--", ""]).unwrap_err().to_string();
        assert_eq!(e, "command has an empty argv");
        for bad in [
            &["--sleep", "-1s"][..],
            &["--sleep", "3 parsecs"],
            &["--count", "0", "--sleep", "1s"],
            &["--priority", "high", "--sleep", "1s"],
        ] {
            let argv = std::iter::once("submit").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let e = specs(&["--file", "/nonexistent/tasks.jsonl"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read /nonexistent/tasks.jsonl"), "{e}");
    }

    #[test]
    fn file_uses_cli_values_as_defaults() {
        let path =
            std::env::temp_dir().join(format!("ballast-submit-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            "{\"sleep\": \"1s\"}\n{\"spin\": \"2s\", \"priority\": 9}\n",
        )
        .unwrap();
        let got = specs(&["--priority", "-2", "--file", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let got = got.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].priority, got[1].priority), (-2, 9));
    }

    #[test]
    fn replicas_out_of_range_are_refused_by_the_parser() {
        assert_eq!(parse(&["--sleep", "1s"]).replicas, 1);
        assert_eq!(parse(&["--replicas", "64", "--sleep", "1s"]).replicas, 64);
        for (bad, why) in [
            ("0", "must be 1 to 64"),
            ("65", "must be 1 to 64"),
            ("-1", "whole number"),
            ("two", "whole number"),
        ] {
            let flag = format!("--replicas={bad}");
            let argv = ["submit", &flag, "--sleep", "1s"];
            let e = Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(e.contains("--replicas") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn file_replicas_key_overrides_the_flag() {
        let path = std::env::temp_dir().join(format!(
            "ballast-submit-replicas-{}.jsonl",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "{\"sleep\": \"1s\"}\n{\"spin\": \"2s\", \"replicas\": 5}\n",
        )
        .unwrap();
        let got = specs(&["--replicas", "2", "--file", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let got = got.unwrap();
        assert_eq!((got[0].replicas, got[1].replicas), (2, 5));
    }

    fn sample_specs(n: usize) -> Vec<TaskSpec> {
        (0..n)
            .map(|i| {
                let mut s = TaskSpec::new(TaskKind::Command {
                    argv: vec!["echo".into(), "x".repeat(i % 97)],
                    env: vec![],
                    cwd: None,
                });
                s.priority = i as i32 - 50;
                s
            })
            .collect()
    }

    #[test]
    fn chunks_cover_all_specs_and_respect_the_budget() {
        let specs = sample_specs(1_000);
        for budget in [200, 1_000, 10_000, 1 << 20] {
            let chunks: Vec<Vec<TaskSpec>> = frame_chunks(specs.clone(), budget).collect();
            for chunk in &chunks {
                assert!(!chunk.is_empty());
                let frame = ToMaster::Submit {
                    specs: chunk.clone(),
                    count: u32::MAX,
                    name: None,
                };
                assert!(
                    encoded_len(&frame) <= budget || chunk.len() == 1,
                    "budget {budget}"
                );
            }
            assert_eq!(chunks.concat(), specs, "every spec once, in order");
        }
        assert!(frame_chunks(Vec::new(), 100).next().is_none());
    }

    #[test]
    fn a_big_file_splits_under_the_real_budget() {
        // ~200 bytes per spec: about 20 MB of specs, more than one frame can hold.
        let spec = TaskSpec::new(TaskKind::Command {
            argv: vec!["/usr/bin/true".into(), "y".repeat(180)],
            env: vec![],
            cwd: None,
        });
        let specs = vec![spec; 100_000];
        let chunks: Vec<Vec<TaskSpec>> = frame_chunks(specs, FRAME_BUDGET).collect();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for chunk in chunks {
            let frame = ToMaster::Submit {
                specs: chunk,
                count: 1,
                name: Some("n".repeat(MAX_JOB_NAME_BYTES)),
            };
            let len = encoded_len(&frame);
            assert!(len <= FRAME_BUDGET, "{len}");
        }
    }

    /// Hands out ids like a master would, and records what it was sent.
    struct FakeMaster {
        next_id: u64,
        frames: Vec<(usize, u32)>,
        lie_about_count: bool,
        /// Frames sent behind a `Submit`.
        then_sent: usize,
    }

    impl FakeMaster {
        fn new(next_id: u64, lie_about_count: bool) -> Self {
            FakeMaster {
                next_id,
                frames: Vec::new(),
                lie_about_count,
                then_sent: 0,
            }
        }
    }

    impl Requester for FakeMaster {
        fn request_with(&mut self, msg: &ToMaster, then: &[&ToMaster]) -> Result<FromMaster> {
            self.then_sent += then.len();
            let ToMaster::Submit { specs, count, .. } = msg else {
                return Ok(FromMaster::Error {
                    message: "not a submit".into(),
                });
            };
            assert!(encoded_len(msg) <= 2_000);
            self.frames.push((specs.len(), *count));
            let n = specs.len() as u64 * u64::from(*count) + u64::from(self.lie_about_count);
            let first = TaskId(self.next_id);
            self.next_id += n;
            Ok(FromMaster::Submitted {
                first,
                count: n,
                job: JobId(first.0),
                warnings: Vec::new(),
            })
        }
    }

    #[test]
    fn ids_come_back_contiguous_across_frames() {
        let mut master = FakeMaster::new(41, false);
        let mut accepted = Accepted::default();
        let wait = ToMaster::WaitSubmitted { progress: false };
        let sent = submit_all(
            &mut master,
            sample_specs(300),
            4,
            2_000,
            "j",
            &mut accepted,
            Some(&wait),
        )
        .unwrap();
        assert!(
            !sent && master.then_sent == 0,
            "a wait behind the last frame would miss the others' jobs"
        );
        assert_eq!(accepted.jobs.len(), master.frames.len(), "a job per frame");
        let accepted = accepted.ids;
        assert!(
            master.frames.len() > 5,
            "split into {} frames",
            master.frames.len()
        );
        assert!(master.frames.iter().all(|&(_, count)| count == 4));
        assert_eq!(master.frames.iter().map(|f| f.0).sum::<usize>(), 300);
        assert_eq!(
            accepted,
            vec![IdRange {
                first: 41,
                count: 1_200
            }]
        );
        let all: Vec<u64> = ids::all(&accepted).map(|t| t.0).collect();
        assert_eq!(all, (41..1_241).collect::<Vec<_>>());
    }

    #[test]
    fn a_wrong_id_count_is_an_error() {
        let mut master = FakeMaster::new(1, true);
        let mut accepted = Accepted::default();
        let e = submit_all(
            &mut master,
            sample_specs(1),
            1,
            2_000,
            "j",
            &mut accepted,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Unexpected { .. }), "{e}");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_one_frame_submission_carries_its_wait() {
        let mut master = FakeMaster::new(1, false);
        let mut accepted = Accepted::default();
        let wait = ToMaster::WaitSubmitted { progress: false };
        let sent = submit_all(
            &mut master,
            sample_specs(3),
            2,
            2_000,
            "j",
            &mut accepted,
            Some(&wait),
        )
        .unwrap();
        assert!(sent);
        assert_eq!((master.frames.len(), master.then_sent), (1, 1));
        assert_eq!(ids::total(&accepted.ids), 6);
    }
}
