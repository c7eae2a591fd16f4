//! What the simulated clients submit, and when.
//!
//! - `uniform`: every task sleeps 1 s (size 1), all submitted at once.
//! - `heterogeneous`: a mix of short, medium and long tasks, 0.1 s / 1 s / 10 s (size = duration)
//!   with probabilities 0.6 / 0.3 / 0.1, so the 10 s tasks carry three quarters of the work. They
//!   arrive one by one as a Poisson stream at [`HETEROGENEOUS_LOAD`] of the fleet's capacity, the
//!   way work reaches a shared cluster, instead of in one batch. (Why the stream, and why this
//!   workload also implies hosts shared with other work: see the `sim` module doc.)
//! - `w3`: task i (0-based) sleeps 1.0 s if i % 10 == 9, else (0.02, 0.05, 0.2)[i % 3] s, with size
//!   equal to the duration; 200 tasks (36.2 s of work), submitted in index order in one request.
//! - a `.jsonl` file in the format `master submit --file` reads: one task per line,
//!   `{"sleep": "20ms", "size": 0.02, "priority": 0}`, with `sleep`, `spin` or `cmd`, and optional
//!   `priority`, `size` (default 1), `timeout`, `retries`, `retry_failed`, `group`, `env`, `cwd`.
//!   A simulated `sleep` or `spin` is that many seconds of speed-1 work; a `cmd` is `size`
//!   seconds of it. All lines are submitted at once, in file order; `--tasks N` takes N
//!   tasks cycling through the file.

use super::SimError;
use crate::core::policy::SplitMix64;
use crate::taskfile::{self, SpecDefaults};
use protocol::{TaskKind, TaskSpec};
use std::fmt;
use std::path::{Path, PathBuf};

/// The heterogeneous stream's offered load, as a fraction of the fleet's capacity (what its slots
/// can do per second, summed): a cluster busy enough to queue in bursts that still has free
/// slots most of the time, so where a task goes is a real choice.
pub const HETEROGENEOUS_LOAD: f64 = 0.5;

/// (duration in seconds, probability) of the heterogeneous mix.
const HETEROGENEOUS_MIX: [(f64, f64); 3] = [(0.1, 0.6), (1.0, 0.3), (10.0, 0.1)];

/// The largest task file read, so a wrong path (a disk image, a log) fails fast.
const MAX_FILE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadKind {
    Uniform,
    Heterogeneous,
    W3,
    File(PathBuf),
}

impl WorkloadKind {
    pub fn parse(text: &str) -> WorkloadKind {
        match text {
            "uniform" => WorkloadKind::Uniform,
            "heterogeneous" => WorkloadKind::Heterogeneous,
            "w3" => WorkloadKind::W3,
            path => WorkloadKind::File(PathBuf::from(path)),
        }
    }

    /// How many tasks when `--tasks` is not given (`None`: as many as the file has).
    pub fn default_tasks(&self) -> Option<u64> {
        match self {
            WorkloadKind::Uniform | WorkloadKind::Heterogeneous => Some(1_000),
            WorkloadKind::W3 => Some(200),
            WorkloadKind::File(_) => None,
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadKind::Uniform => f.write_str("uniform"),
            WorkloadKind::Heterogeneous => f.write_str("heterogeneous"),
            WorkloadKind::W3 => f.write_str("w3"),
            WorkloadKind::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One `Submit` request: `count` copies of each template in `specs`, at `at_us`.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub at_us: u64,
    /// Indices into `Workload::templates`, in submit order.
    pub specs: std::ops::Range<usize>,
    pub count: u32,
}

/// Everything the clients will submit. Specs are stored once per distinct task and referenced
/// by index, so a million-task stream costs a few bytes per task here.
#[derive(Debug, Clone)]
pub struct Workload {
    pub templates: Vec<TaskSpec>,
    /// Template index of each submitted spec, referenced by `Submission::specs`.
    pub order: Vec<u32>,
    /// In time order.
    pub submissions: Vec<Submission>,
}

impl Workload {
    pub fn tasks(&self) -> u64 {
        self.submissions
            .iter()
            .map(|s| s.specs.len() as u64 * u64::from(s.count))
            .sum()
    }

    /// The specs of one submission.
    pub fn specs(&self, s: &Submission) -> impl Iterator<Item = &TaskSpec> {
        self.order[s.specs.clone()]
            .iter()
            .map(|&t| &self.templates[t as usize])
    }

    /// Every task's spec, once per task (copies included), in submit order.
    pub fn each_task(&self) -> impl Iterator<Item = &TaskSpec> {
        self.submissions.iter().flat_map(move |s| {
            self.specs(s)
                .flat_map(move |spec| std::iter::repeat_n(spec, s.count as usize))
        })
    }
}

/// How long a task runs on a worker of speed 1, in seconds: its sleep or spin, or its size for
/// a command (the simulator runs nothing).
pub fn base_seconds(spec: &TaskSpec) -> f64 {
    match spec.kind {
        TaskKind::Sleep { ms } | TaskKind::Spin { ms } => ms as f64 / 1e3,
        TaskKind::Command { .. } => spec.size,
    }
}

/// What a workload is built from besides its kind.
pub struct WorkloadParams {
    pub tasks: Option<u64>,
    pub retries: u32,
    /// Nominal capacity of the fleet (slots × speed, summed), for arrival rates.
    pub capacity: f64,
    pub rng: SplitMix64,
}

pub fn build(kind: &WorkloadKind, p: WorkloadParams) -> Result<Workload, SimError> {
    let mut rng = p.rng;
    let sleep = |seconds: f64| TaskSpec {
        size: seconds,
        max_retries: p.retries,
        ..TaskSpec::new(TaskKind::Sleep {
            ms: (seconds * 1e3).round() as u64,
        })
    };
    let tasks = p.tasks.or(kind.default_tasks());
    match kind {
        WorkloadKind::Uniform => {
            let n = tasks.unwrap_or(0);
            let count = u32::try_from(n).map_err(|_| SimError::usage("tasks", "too many"))?;
            Ok(Workload {
                templates: vec![sleep(1.0)],
                order: vec![0],
                submissions: vec![Submission {
                    at_us: 0,
                    specs: 0..1,
                    count,
                }],
            })
        }
        WorkloadKind::W3 => {
            let n = tasks.unwrap_or(0) as usize;
            let templates = [0.02, 0.05, 0.2, 1.0].map(sleep).to_vec();
            let order = (0..n)
                .map(|i| if i % 10 == 9 { 3 } else { (i % 3) as u32 })
                .collect();
            Ok(Workload {
                templates,
                order,
                submissions: vec![Submission {
                    at_us: 0,
                    specs: 0..n,
                    count: 1,
                }],
            })
        }
        WorkloadKind::Heterogeneous => {
            let n = tasks.unwrap_or(0) as usize;
            let templates = HETEROGENEOUS_MIX.map(|(s, _)| sleep(s)).to_vec();
            let mean: f64 = HETEROGENEOUS_MIX.iter().map(|(s, p)| s * p).sum();
            // Tasks per second so that the offered work is the target share of capacity.
            let rate = HETEROGENEOUS_LOAD * p.capacity / mean;
            let mut order = Vec::with_capacity(n);
            let mut submissions = Vec::with_capacity(n);
            let mut at_s = 0.0f64;
            for i in 0..n {
                let u = unit(&mut rng);
                let mut class = HETEROGENEOUS_MIX.len() - 1;
                let mut acc = 0.0;
                for (c, (_, prob)) in HETEROGENEOUS_MIX.iter().enumerate() {
                    acc += prob;
                    if u < acc {
                        class = c;
                        break;
                    }
                }
                order.push(class as u32);
                submissions.push(Submission {
                    at_us: (at_s * 1e6).round() as u64,
                    specs: i..i + 1,
                    count: 1,
                });
                at_s += exponential(&mut rng, rate);
            }
            Ok(Workload {
                templates,
                order,
                submissions,
            })
        }
        WorkloadKind::File(path) => {
            let templates = read_file(path, p.retries)?;
            let dag = templates.iter().any(|t| {
                t.after
                    .iter()
                    .any(|a| matches!(a, protocol::After::Spec(_)))
            });
            if dag && tasks.is_some_and(|n| n != templates.len() as u64) {
                // Its `after` references are positions in one submission of the whole file.
                return Err(SimError::usage(
                    "tasks",
                    "a task file whose lines wait for each other runs whole, once: leave \
                     --tasks out",
                ));
            }
            let n = tasks.unwrap_or(templates.len() as u64) as usize;
            let order = (0..n).map(|i| (i % templates.len()) as u32).collect();
            Ok(Workload {
                templates,
                order,
                submissions: vec![Submission {
                    at_us: 0,
                    specs: 0..n,
                    count: 1,
                }],
            })
        }
    }
}

/// Uniform in [0, 1).
pub fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An exponential draw with the given rate (events per second), in seconds.
pub fn exponential(rng: &mut SplitMix64, rate: f64) -> f64 {
    -(1.0 - unit(rng)).ln() / rate
}

fn read_file(path: &Path, retries: u32) -> Result<Vec<TaskSpec>, SimError> {
    let origin = path.display().to_string();
    let io = |e: std::io::Error| SimError::Io {
        path: origin.clone(),
        error: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| SimError::Io {
        path: origin.clone(),
        error: format!("{e} (--workload is uniform, heterogeneous, w3, or a .jsonl task file)"),
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(SimError::Io {
            path: origin,
            error: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text, &origin, retries)
}

/// Parses a task file's text with the same rules as `master submit --file`; `origin` names it in
/// errors. Lines without `retries` get `retries`.
pub fn parse(text: &str, origin: &str, retries: u32) -> Result<Vec<TaskSpec>, SimError> {
    let defaults = SpecDefaults {
        max_retries: retries,
        ..SpecDefaults::default()
    };
    taskfile::parse(text, origin, &defaults).map_err(|e| SimError::Workload {
        origin: e.at,
        why: e.why,
    })
}
