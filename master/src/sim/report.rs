//! What a run means: the figures (`Report`), computed from the world's result, the fleet and the
//! workload, and how they are shown (JSON, or aligned tables).
//!
//! - `makespan_s`: from the first submission to the last completion (the last task to become
//!   final, whatever its outcome).
//! - `lower_bound_s`: `max(total work / total capacity, longest task / fastest speed)`, where work
//!   is seconds at speed 1 and capacity is `slots × speed` summed over the fleet (a host's speed
//!   here is its rate, `speed × (1 - background)`, see `world`). No schedule can beat it;
//!   `makespan_s / lower_bound_s` is how far a run is from ideal.
//! - `utilisation`: work done over `capacity × makespan`, i.e. busy slot-time weighted by speed:
//!   the share of the fleet's capacity spent running tasks (attempts later lost to failures
//!   included; downtime counts as capacity, since it was paid for). With equal speeds and no
//!   background it is plain busy slot-time over `slots × workers × makespan`.
//! - `requeued`: how many times a task went back to the queue because its worker was lost, read
//!   from the core's task states right after each loss.
//! - completion time: per successful task, completion minus submission.
//! - `invariant_violations` (with faults, or when nonzero): broken invariants (see
//!   `invariants`), the first few described in `violations`; `faults` says what was injected
//!   and what happened (crashes, cut connections, tasks the client had to resubmit).

use super::faults::Faults;
use super::workload::{base_seconds, Workload};
use super::world::{RunResult, WorkerSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One run's figures. The first nine fields are the stable contract of `--json`; more may follow.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub policy: String,
    pub seed: u64,
    pub tasks: u64,
    pub completed: u64,
    pub lost: u64,
    pub requeued: u64,
    pub makespan_s: f64,
    pub lower_bound_s: f64,
    pub utilisation: f64,
    pub order: String,
    pub workload: String,
    pub workers: u32,
    pub groups: u32,
    pub slots: u32,
    pub speed_spread: f64,
    pub background: f64,
    pub fail_rate: f64,
    pub failures: u64,
    /// Final as failed, timed out or cancelled (not lost).
    pub failed: u64,
    pub mean_completion_s: f64,
    pub p50_completion_s: f64,
    pub p99_completion_s: f64,
    pub max_completion_s: f64,
    pub stalled: bool,
    pub events: u64,
    pub per_group: Vec<GroupReport>,
    /// Shown with faults, or whenever nonzero; without faults the output is as it always was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invariant_violations: Option<u64>,
    /// Nonzero counts by kind (see `invariants::Kind`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub violation_kinds: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultReport>,
}

/// What was injected, and what it did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultReport {
    pub delay_s: f64,
    pub drop_rate: f64,
    pub master_crashes: u32,
    /// Crashes that happened (one not due before the work is done never does).
    pub crashes: u32,
    pub connections_cut: u64,
    /// Tasks sent again because a crash forgot their unacknowledged submission.
    pub resubmitted: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupReport {
    pub group: String,
    pub workers: u32,
    /// Attempts finished by this group's workers.
    pub done: u64,
    pub failures: u64,
    pub utilisation: f64,
}

/// What describes the run besides its result.
pub struct Setting<'a> {
    pub policy: &'a str,
    pub order: &'a str,
    pub workload: &'a str,
    pub seed: u64,
    pub groups: u32,
    pub slots: u32,
    pub speed_spread: f64,
    pub background: f64,
    pub fail_rate: f64,
    pub faults: &'a Faults,
}

/// Rounds for stable, readable output: seconds to the microsecond, fractions to 1e-4.
fn micro(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
fn ratio(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// `max(total work / capacity, longest task / fastest speed)`, in seconds. A timeout caps a task
/// at `timeout` on any worker, so it caps its work at `timeout × slowest rate`.
pub fn lower_bound_s(fleet: &[WorkerSpec], workload: &Workload) -> f64 {
    let capacity: f64 = fleet.iter().map(WorkerSpec::capacity).sum();
    let fastest = fleet.iter().map(WorkerSpec::rate).fold(0.0, f64::max);
    let slowest = fleet
        .iter()
        .map(WorkerSpec::rate)
        .fold(f64::INFINITY, f64::min);
    if capacity <= 0.0 || fastest <= 0.0 {
        return 0.0;
    }
    let (mut work, mut longest) = (0.0, 0.0f64);
    for s in &workload.submissions {
        for spec in workload.specs(s) {
            let base = base_seconds(spec);
            let cap = spec.timeout_ms.map_or(f64::INFINITY, |t| t as f64 / 1e3);
            work += base.min(cap * slowest) * f64::from(s.count);
            longest = longest.max((base / fastest).min(cap));
        }
    }
    (work / capacity).max(longest)
}

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn build(set: &Setting, fleet: &[WorkerSpec], workload: &Workload, r: &RunResult) -> Report {
    let makespan_s = r.makespan_us as f64 / 1e6;
    let util = |members: &mut dyn Iterator<Item = usize>| {
        let (mut work, mut cap) = (0.0, 0.0);
        for i in members {
            work += r.workers[i].work_s;
            cap += fleet[i].capacity();
        }
        if cap > 0.0 && makespan_s > 0.0 {
            ratio(work / (cap * makespan_s))
        } else {
            0.0
        }
    };
    let per_group = (0..set.groups)
        .map(|g| {
            let members: Vec<usize> = (0..fleet.len()).filter(|&i| fleet[i].group == g).collect();
            GroupReport {
                group: format!("g{g}"),
                workers: members.len() as u32,
                done: members.iter().map(|&i| r.workers[i].done).sum(),
                failures: members.iter().map(|&i| r.workers[i].failures).sum(),
                utilisation: util(&mut members.iter().copied()),
            }
        })
        .collect();
    let c = &r.completion_s;
    let mean = if c.is_empty() {
        0.0
    } else {
        c.iter().sum::<f64>() / c.len() as f64
    };
    Report {
        policy: set.policy.to_string(),
        seed: set.seed,
        tasks: r.tasks,
        completed: r.succeeded,
        lost: r.worker_lost + r.unfinished,
        requeued: r.requeued,
        makespan_s: micro(makespan_s),
        lower_bound_s: micro(lower_bound_s(fleet, workload)),
        utilisation: util(&mut (0..fleet.len())),
        order: set.order.to_string(),
        workload: set.workload.to_string(),
        workers: fleet.len() as u32,
        groups: set.groups,
        slots: set.slots,
        speed_spread: set.speed_spread,
        background: set.background,
        fail_rate: set.fail_rate,
        failures: r.failures,
        failed: r.other_failed,
        mean_completion_s: micro(mean),
        p50_completion_s: micro(percentile(c, 50.0)),
        p99_completion_s: micro(percentile(c, 99.0)),
        max_completion_s: micro(c.last().copied().unwrap_or(0.0)),
        stalled: r.stalled,
        events: r.events,
        per_group,
        invariant_violations: (set.faults.any() || r.invariant_violations > 0)
            .then_some(r.invariant_violations),
        violation_kinds: r.violation_kinds.iter().copied().collect(),
        violations: r.violations.clone(),
        faults: set.faults.any().then(|| FaultReport {
            delay_s: micro(set.faults.delay_us as f64 / 1e6),
            drop_rate: set.faults.drop_rate,
            master_crashes: set.faults.master_crashes,
            crashes: r.crashes,
            connections_cut: r.drops,
            resubmitted: r.resubmitted,
        }),
    }
}

/// Columns of the human table: header, and how to show one report's cell.
type Column = (&'static str, fn(&Report) -> String);

const COLUMNS: [Column; 11] = [
    ("policy", |r| r.policy.clone()),
    ("completed", |r| r.completed.to_string()),
    ("lost", |r| r.lost.to_string()),
    ("requeued", |r| r.requeued.to_string()),
    ("makespan_s", |r| format!("{:.3}", r.makespan_s)),
    ("lower_bound_s", |r| format!("{:.3}", r.lower_bound_s)),
    ("vs_bound", |r| {
        if r.lower_bound_s > 0.0 {
            format!("{:.2}x", r.makespan_s / r.lower_bound_s)
        } else {
            "-".into()
        }
    }),
    ("utilisation", |r| format!("{:.1}%", r.utilisation * 100.0)),
    ("p50_s", |r| format!("{:.3}", r.p50_completion_s)),
    ("p99_s", |r| format!("{:.3}", r.p99_completion_s)),
    ("failures", |r| r.failures.to_string()),
];

/// Right-aligned columns (left for text), two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>], left: &[bool]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut parts = Vec::new();
        for (i, cell) in cells.enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            if left.get(i).copied().unwrap_or(false) {
                parts.push(format!("{cell}{}", " ".repeat(pad)));
            } else {
                parts.push(format!("{}{cell}", " ".repeat(pad)));
            }
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut header.iter().copied(), &mut out);
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// The human summary of one or more runs of the same scenario.
pub fn render(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let mut out = format!(
        "workload {} ({} tasks, order {}) on {} workers x {} slots in {} group{}, speed spread {}, \
         background up to {}, fail rate {}/s, seed {}\n\n",
        first.workload,
        first.tasks,
        first.order,
        first.workers,
        first.slots,
        first.groups,
        if first.groups == 1 { "" } else { "s" },
        first.speed_spread,
        first.background,
        first.fail_rate,
        first.seed,
    );
    let header: Vec<&str> = COLUMNS.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| COLUMNS.iter().map(|(_, f)| f(r)).collect())
        .collect();
    out.push_str(&table(&header, &rows, &[true]));
    for r in reports.iter().filter(|r| r.stalled) {
        let _ = writeln!(
            out,
            "\n{}: stalled (nothing moved for a long time); unfinished tasks count as lost",
            r.policy
        );
    }
    for r in reports {
        let Some(n) = r.invariant_violations else {
            continue;
        };
        out.push('\n');
        if let Some(f) = &r.faults {
            let _ = writeln!(
                out,
                "{}: faults: delay up to {} s, drop rate {}, {} of {} master crashes, {} \
                 connections cut, {} tasks resubmitted",
                r.policy,
                f.delay_s,
                f.drop_rate,
                f.crashes,
                f.master_crashes,
                f.connections_cut,
                f.resubmitted
            );
        }
        let _ = writeln!(out, "{}: invariant violations: {n}", r.policy);
        for v in &r.violations {
            let _ = writeln!(out, "  {v}");
        }
    }
    if first.groups > 1 {
        out.push_str("\nper group:\n");
        let header = [
            "policy",
            "group",
            "workers",
            "done",
            "failures",
            "utilisation",
        ];
        let mut rows = Vec::new();
        for r in reports {
            for g in &r.per_group {
                rows.push(vec![
                    r.policy.clone(),
                    g.group.clone(),
                    g.workers.to_string(),
                    g.done.to_string(),
                    g.failures.to_string(),
                    format!("{:.1}%", g.utilisation * 100.0),
                ]);
            }
        }
        out.push_str(&table(&header, &rows, &[true, true]));
    }
    out
}
