//! `master simulate`: the real scheduling [`Core`](crate::core::Core) driven with virtual time over
//! a simulated fleet: no sockets, no threads, no wall clock. The same seed gives byte-identical
//! output.
//!
//! - `world`: the event queue and the simulated workers and client (see its doc for the model);
//! - `workload`: what is submitted and when (`uniform`, `heterogeneous`, `w3`, a task file);
//! - `faults`: message delay, cut connections and master crashes (`--delay`, `--drop-rate`,
//!   `--master-crashes`);
//! - `net`: the connections as both ends see them (delays keep order within one);
//! - `journal`: the core's records with the real shell's commit rule, and the restart from them;
//! - `invariants`: the ground truth and the invariants checked against it after every step;
//! - `report`: the figures of a run (makespan, lower bound, utilisation, ...) as JSON or a table;
//! - `plots`: SVG charts.
//!
//! # When does the placement policy matter?
//!
//! The core keeps one central queue and places a task only on a free slot. While more tasks wait
//! than slots are free, as in a big batch submitted at once, every slot that frees up is refilled
//! at once with the next task, whatever the policy: with identical workers all policies produce
//! the *same* schedule (the `uniform` and `w3` workloads show identical rows, and a test checks
//! it), and with unequal ones nearly the same. A policy matters only when there is a choice --
//! more free slots than waiting tasks, which happens when work arrives over time -- and when the
//! choice makes a difference -- workers that are not alike -- and the master can see how.
//!
//! The `heterogeneous` workload has all three, as a shared cluster does: tasks of 0.1 s, 1 s and
//! 10 s (size = duration) arrive as a Poisson stream at half the fleet's capacity, on hosts that
//! also run other work: each carries a background load drawn uniformly in [0, 0.8] that slows
//! its tasks by that share, like CPU steal on a crowded VM host, and shows in its load reports
//! (`--background`: 0.8 for this workload, 0 for the others). Least-loaded beats round-robin
//! there for the reason it exists: when several workers have a free slot, it sends the task to
//! the one whose load report is lowest, where it runs fastest; round-robin sends it to the next
//! worker in join order with a free slot, crowded or not, so more tasks (10 s ones among them)
//! run up to five times slower, and the last of them finish later. Over seeds 1-20 with the
//! acceptance scenario (50 workers, 5000 tasks) least-loaded's makespan is 2.6-18% shorter every
//! time and its mean completion time 14-31% shorter. Power-of-two gets part of that from two
//! random looks; weighted ignores load reports, so only busy shares steer it.
//!
//! Speeds alone (`--speed-spread`) are invisible to every policy: least-loaded then only gains
//! through busy shares (a slow worker keeps its slots busy longer, so it looks more loaded), a
//! steady gain in completion times but a small and noisy one in makespan, which the last few long
//! tasks decide.
//!
//! Groups: workers are named `g{group}-w{index}` and join with their group set, and the report
//! has a line per group, so tasks that target a group (a task file's `"group"`) are routed by the
//! core once it knows groups, with nothing to change here.

pub mod faults;
pub mod invariants;
pub mod journal;
pub mod net;
pub mod plots;
pub mod report;
pub mod workload;
pub mod world;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use crate::core::policy::{PolicyKind, QueueOrder};
use faults::Faults;
use protocol::duration::parse_duration;
use report::{Report, Setting};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use workload::{Workload, WorkloadKind, WorkloadParams};
use world::{RunResult, WorkerSpec, WorldConfig};

/// Limits on the scenario: far above any useful run, low enough that a typo cannot eat the
/// machine's memory (a million tasks cost about 200 bytes each in the core).
const MAX_WORKERS: u32 = 100_000;
const MAX_SLOTS: u32 = 4_096;
const MAX_TASKS: u64 = 20_000_000;
const MAX_SPEED_SPREAD: f64 = 1_000.0;
/// A host fully taken by other work would never finish a task.
const MAX_BACKGROUND: f64 = 0.99;
/// Background load bound when `--workload heterogeneous` is given without `--background`.
const HETEROGENEOUS_BACKGROUND: f64 = 0.8;
/// Fault limits: beyond them a run says nothing about the core (every connection always cut, a
/// master never up).
const MAX_DELAY_US: u64 = 60_000_000;
const MAX_DROP_RATE: f64 = 0.5;
const MAX_MASTER_CRASHES: u32 = 1_000;
const MAX_DOWNTIME_US: u64 = 3_600_000_000;

#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Simulate a cluster with virtual time: the real scheduler, simulated workers",
    long_about = "Runs the real scheduling core over simulated workers with virtual time (no \
                  sockets, no wall clock) and reports makespan, its lower bound, utilisation, \
                  lost and re-queued tasks. The same seed gives identical output."
)]
pub struct SimulateArgs {
    /// Simulated workers.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub workers: u32,
    /// Split the workers into G groups (names g0-w0, g1-w0, ...); the report has a line per group.
    #[arg(long, value_name = "G", default_value_t = 1)]
    pub groups: u32,
    /// Slots per worker.
    #[arg(long, value_name = "S", default_value_t = 4)]
    pub slots: u32,
    /// Worker speeds are drawn uniformly in [1/X, X]; a task lasts its duration / speed. The
    /// master cannot see speeds. 1: all equal.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub speed_spread: f64,
    /// Hosts shared with other work: each carries a background load drawn uniformly in [0, B]
    /// (B < 1) that slows its tasks by (1 - load), like CPU steal on a busy VM host, and shows in
    /// its load reports. Default 0 (dedicated hosts), or 0.8 with --workload heterogeneous.
    #[arg(long, value_name = "B")]
    pub background: Option<f64>,
    /// How many tasks (default 1000; w3: 200; a file: its lines, cycled to reach N).
    #[arg(long, value_name = "T")]
    pub tasks: Option<u64>,
    /// uniform (1 s each, one batch), heterogeneous (0.1/1/10 s arriving over time), w3, or a
    /// .jsonl task file as `master submit --file` reads [default: uniform; with --compare
    /// heterogeneous, where the policies differ: on uniform they all give the same schedule].
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,
    /// Failures per worker per virtual second (exponential up-times).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// A failed worker comes back (new connection, same name) after this long.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    pub recover: Duration,
    /// Seeds everything random: speeds, workload, failures, power-of-two.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// How tasks are placed on workers.
    #[arg(long, value_name = "P", default_value = "least-loaded", value_parser = PolicyKind::NAMES)]
    pub policy: String,
    /// Which queued task goes first within a priority level.
    #[arg(long, value_name = "O", default_value = "fifo", value_parser = QueueOrder::NAMES)]
    pub order: String,
    /// How often simulated workers report their load.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The core declares a silent worker dead after this long.
    #[arg(long, value_name = "D", default_value = "3s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// Re-runs after a worker loss before a task fails as worker_lost (task files: the default).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// Deliver every message after a random delay in [0, D]: messages on different connections
    /// overtake each other, those on one connection never do.
    #[arg(long, value_name = "D", default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Each message on a worker's connection cuts it with this probability; the worker keeps
    /// its tasks running and reconnects with backoff.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Crash the master N times, at the end of a loop turn before its journal commit; it restarts
    /// from what was committed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub master_crashes: u32,
    /// How long a crashed master stays down.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_duration)]
    pub master_downtime: Duration,
    /// One JSON object (with --compare: an array, one per policy).
    #[arg(long)]
    pub json: bool,
    /// Run every policy on the same scenario and seed.
    #[arg(long)]
    pub compare: bool,
    /// Write SVG charts (makespan, utilisation per worker, completion times) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A flag's value cannot be simulated.
    #[error("--{flag}: {why}")]
    Usage { flag: &'static str, why: String },
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io { path: String, error: String },
    /// A task file's line is not a task (`origin` names the file and line).
    #[error("{origin}: {why}")]
    Workload { origin: String, why: String },
    /// The core answered something no worker or client could go on from.
    #[error("simulation aborted: {0}")]
    Core(String),
}

impl SimError {
    pub fn usage(flag: &'static str, why: impl Into<String>) -> Self {
        SimError::Usage {
            flag,
            why: why.into(),
        }
    }
}

/// Everything a run needs except the policy: built once, so a comparison runs every policy on
/// exactly the same fleet, workload and failures.
pub struct Scenario {
    pub fleet: Vec<WorkerSpec>,
    pub workload: Workload,
    pub world: WorldConfig,
    pub workload_name: String,
    pub groups: u32,
    pub slots: u32,
    pub speed_spread: f64,
    pub background: f64,
}

impl Scenario {
    pub fn from_args(a: &SimulateArgs) -> Result<Scenario, SimError> {
        if !(1..=MAX_WORKERS).contains(&a.workers) {
            return Err(SimError::usage(
                "workers",
                format!("must be 1..={MAX_WORKERS}"),
            ));
        }
        if a.groups == 0 || a.groups > a.workers {
            return Err(SimError::usage("groups", "must be 1..=--workers"));
        }
        if !(1..=MAX_SLOTS).contains(&a.slots) {
            return Err(SimError::usage("slots", format!("must be 1..={MAX_SLOTS}")));
        }
        let kind = WorkloadKind::parse(a.workload.as_deref().unwrap_or(if a.compare {
            "heterogeneous"
        } else {
            "uniform"
        }));
        let speed_spread = a.speed_spread;
        if !(1.0..=MAX_SPEED_SPREAD).contains(&speed_spread) {
            return Err(SimError::usage(
                "speed-spread",
                format!("must be a number in 1..={MAX_SPEED_SPREAD}"),
            ));
        }
        let background = a.background.unwrap_or(match kind {
            WorkloadKind::Heterogeneous => HETEROGENEOUS_BACKGROUND,
            _ => 0.0,
        });
        if !(0.0..MAX_BACKGROUND).contains(&background) {
            return Err(SimError::usage(
                "background",
                format!("must be a number in 0..{MAX_BACKGROUND}"),
            ));
        }
        if let Some(t) = a.tasks {
            if !(1..=MAX_TASKS).contains(&t) {
                return Err(SimError::usage("tasks", format!("must be 1..={MAX_TASKS}")));
            }
        }
        if !(a.fail_rate.is_finite() && (0.0..=100.0).contains(&a.fail_rate)) {
            return Err(SimError::usage("fail-rate", "must be a number in 0..=100"));
        }
        let heartbeat_ms = a.heartbeat.as_millis().max(1) as u64;
        let heartbeat_timeout_ms = a.heartbeat_timeout.as_millis() as u64;
        if heartbeat_timeout_ms <= heartbeat_ms {
            return Err(SimError::usage(
                "heartbeat-timeout",
                format!("({heartbeat_timeout_ms} ms) must exceed --heartbeat ({heartbeat_ms} ms)"),
            ));
        }
        let faults = faults_from_args(a)?;
        let policy: PolicyKind = a.policy.parse().map_err(|e| SimError::usage("policy", e))?;
        let order: QueueOrder = a.order.parse().map_err(|e| SimError::usage("order", e))?;
        let fleet = world::fleet(
            a.workers,
            a.groups,
            a.slots,
            speed_spread,
            background,
            a.seed,
        );
        let capacity = fleet.iter().map(WorkerSpec::capacity).sum();
        let workload = workload::build(
            &kind,
            WorkloadParams {
                tasks: a.tasks,
                retries: a.retries,
                capacity,
                rng: world::stream(a.seed, world::STREAM_WORKLOAD),
            },
        )?;
        if workload.tasks() > MAX_TASKS {
            return Err(SimError::usage("tasks", format!("at most {MAX_TASKS}")));
        }
        Ok(Scenario {
            fleet,
            workload,
            world: WorldConfig {
                policy,
                order,
                seed: a.seed,
                fail_rate: a.fail_rate,
                recover_us: a.recover.as_micros().min(u128::from(u64::MAX / 4)) as u64,
                heartbeat_ms,
                heartbeat_timeout_ms,
                faults,
            },
            workload_name: kind.to_string(),
            groups: a.groups,
            slots: a.slots,
            speed_spread,
            background,
        })
    }

    /// Runs the scenario under `policy`.
    pub fn run(&self, policy: PolicyKind) -> Result<(Report, RunResult), SimError> {
        let cfg = WorldConfig {
            policy,
            ..self.world.clone()
        };
        let result = world::run(&cfg, &self.fleet, &self.workload)?;
        let setting = Setting {
            policy: policy.as_str(),
            order: cfg.order.as_str(),
            workload: &self.workload_name,
            seed: cfg.seed,
            groups: self.groups,
            slots: self.slots,
            speed_spread: self.speed_spread,
            background: self.background,
            fail_rate: cfg.fail_rate,
            faults: &cfg.faults,
        };
        let report = report::build(&setting, &self.fleet, &self.workload, &result);
        Ok((report, result))
    }
}

fn faults_from_args(a: &SimulateArgs) -> Result<Faults, SimError> {
    let delay_us = a.delay.as_micros().min(u128::from(u64::MAX)) as u64;
    if delay_us > MAX_DELAY_US {
        return Err(SimError::usage("delay", "must be at most 60s"));
    }
    if !(a.drop_rate.is_finite() && (0.0..=MAX_DROP_RATE).contains(&a.drop_rate)) {
        return Err(SimError::usage(
            "drop-rate",
            format!("must be a number in 0..={MAX_DROP_RATE}"),
        ));
    }
    if a.master_crashes > MAX_MASTER_CRASHES {
        return Err(SimError::usage(
            "master-crashes",
            format!("must be at most {MAX_MASTER_CRASHES}"),
        ));
    }
    let downtime_us = a.master_downtime.as_micros().min(u128::from(u64::MAX)) as u64;
    if !(1..=MAX_DOWNTIME_US).contains(&downtime_us) {
        return Err(SimError::usage(
            "master-downtime",
            "must be more than 0 and at most 1h",
        ));
    }
    Ok(Faults {
        delay_us,
        drop_rate: a.drop_rate,
        master_crashes: a.master_crashes,
        downtime_us,
        #[cfg(test)]
        misreport_once: false,
    })
}

/// The `master simulate` entry point: runs, prints, and maps errors to an exit code (2 for bad
/// flags, 1 otherwise).
pub fn main(args: SimulateArgs) -> ExitCode {
    // Per-task lines from the core would drown the output and slow the run: no logger unless
    // asked for with RUST_LOG.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = env_logger::Builder::from_default_env()
            .format_timestamp(None)
            .try_init();
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("master simulate: {e}");
            match e {
                SimError::Usage { .. } | SimError::Workload { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Runs what `args` asks for and writes the result to `out`.
pub fn run(args: &SimulateArgs, out: &mut dyn Write) -> Result<(), SimError> {
    let scenario = Scenario::from_args(args)?;
    let policies: Vec<PolicyKind> = if args.compare {
        PolicyKind::ALL.to_vec()
    } else {
        vec![scenario.world.policy]
    };
    let mut runs = Vec::with_capacity(policies.len());
    for p in policies {
        runs.push(scenario.run(p)?);
    }
    let reports: Vec<Report> = runs.iter().map(|(r, _)| r.clone()).collect();
    let text = if args.json {
        let json = if args.compare {
            serde_json::to_string_pretty(&reports)
        } else {
            serde_json::to_string_pretty(&reports[0])
        };
        json.map_err(|e| SimError::Core(e.to_string()))? + "\n"
    } else {
        report::render(&reports)
    };
    let write_err = |e: std::io::Error| SimError::Io {
        path: "stdout".into(),
        error: e.to_string(),
    };
    out.write_all(text.as_bytes()).map_err(write_err)?;
    if let Some(dir) = &args.plots {
        let charts: Vec<plots::Run> = runs
            .iter()
            .map(|(report, result)| plots::Run { report, result })
            .collect();
        let written = plots::write_all(dir, &scenario.fleet, &charts)?;
        if !args.json {
            let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            writeln!(out, "\nplots: {}", names.join(", ")).map_err(write_err)?;
        }
    }
    out.flush().map_err(write_err)
}
