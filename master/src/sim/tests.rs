//! Simulator tests: small scenarios (the whole file runs in well under a second in debug builds).

use super::workload::{self, base_seconds, WorkloadKind};
use super::*;
use clap::Parser;

/// Parses `master simulate`-style flags.
fn args(flags: &str) -> SimulateArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimulateArgs,
    }
    let argv = std::iter::once("simulate").chain(flags.split_whitespace());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.sim,
        Err(e) => panic!("bad test flags {flags:?}: {e}"),
    }
}

fn run(flags: &str) -> (Report, RunResult) {
    let a = args(flags);
    let scenario = Scenario::from_args(&a).expect("scenario");
    scenario.run(scenario.world.policy).expect("run")
}

fn output(flags: &str) -> String {
    let mut out = Vec::new();
    super::run(&args(flags), &mut out).expect("run");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn same_seed_same_bytes_other_seed_other_run() {
    let flags = "--workers 20 --tasks 300 --workload heterogeneous --fail-rate 0.05 --recover 2s \
                 --compare --json";
    let a = output(&format!("{flags} --seed 9"));
    assert_eq!(a, output(&format!("{flags} --seed 9")));
    assert_ne!(a, output(&format!("{flags} --seed 10")));
}

#[test]
fn without_failures_everything_completes_above_the_bound() {
    for workload in ["uniform", "heterogeneous", "w3"] {
        for policy in PolicyKind::NAMES {
            for order in QueueOrder::NAMES {
                let (r, res) = run(&format!(
                    "--workers 7 --slots 3 --tasks 150 --speed-spread 2 --workload {workload} \
                     --policy {policy} --order {order}"
                ));
                let what = format!("{workload} {policy} {order}: {r:?}");
                assert_eq!(r.completed, r.tasks, "{what}");
                assert_eq!((r.lost, r.requeued, r.failures), (0, 0, 0), "{what}");
                assert!(r.lower_bound_s > 0.0, "{what}");
                assert!(r.lower_bound_s <= r.makespan_s, "{what}");
                assert!(r.utilisation > 0.0 && r.utilisation <= 1.0, "{what}");
                assert_eq!(res.completion_s.len() as u64, r.tasks);
                assert!(!r.stalled);
            }
        }
    }
}

#[test]
fn w3_is_200_tasks_of_36_2_seconds_in_index_order() {
    let a = args("--workload w3");
    let scenario = Scenario::from_args(&a).expect("scenario");
    let w = &scenario.workload;
    assert_eq!(w.tasks(), 200);
    assert_eq!(w.submissions.len(), 1, "one request");
    let durations: Vec<f64> = w.each_task().map(base_seconds).collect();
    let total: f64 = durations.iter().sum();
    assert!((total - 36.2).abs() < 1e-9, "{total}");
    assert_eq!(
        &durations[..10],
        &[0.02, 0.05, 0.2, 0.02, 0.05, 0.2, 0.02, 0.05, 0.2, 1.0]
    );
    assert!(w.each_task().all(|s| s.size == base_seconds(s)));
}

#[test]
fn failures_with_recovery_lose_nothing() {
    // About 2 failures per virtual second across the fleet, each losing what that worker ran.
    let (r, res) =
        run("--workers 40 --tasks 400 --workload heterogeneous --fail-rate 0.05 --recover 1s");
    assert!(r.failures > 10, "{r:?}");
    assert!(r.requeued > 0, "{r:?}");
    assert_eq!((r.completed, r.lost), (400, 0), "{r:?}");
    let work: f64 = res.workers.iter().map(|w| w.work_s).sum();
    assert!(work > 0.0);
}

#[test]
fn no_retries_means_losses_are_final() {
    let (r, _) = run("--workers 10 --tasks 200 --fail-rate 0.2 --recover 1s --retries 0");
    assert!(r.lost > 0, "{r:?}");
    assert_eq!(r.requeued, 0, "{r:?}");
    assert_eq!(r.completed + r.lost, 200, "{r:?}");
}

#[test]
fn a_saturated_batch_on_equal_workers_ties_every_policy() {
    // The module doc's claim: with more tasks than slots and identical slots, any policy that
    // fills free slots yields the same schedule.
    let a = args("--workers 9 --slots 2 --tasks 200 --workload w3 --compare");
    let scenario = Scenario::from_args(&a).expect("scenario");
    let runs: Vec<_> = PolicyKind::ALL
        .into_iter()
        .map(|p| scenario.run(p).expect("run").1)
        .collect();
    for r in &runs[1..] {
        assert_eq!(r.makespan_us, runs[0].makespan_us);
        assert_eq!(r.completion_s, runs[0].completion_s);
    }
}

#[test]
fn least_loaded_beats_round_robin_on_the_heterogeneous_stream() {
    let a = args("--workers 20 --tasks 1500 --workload heterogeneous --seed 3 --compare");
    let scenario = Scenario::from_args(&a).expect("scenario");
    let (ll, _) = scenario.run(PolicyKind::LeastLoaded).expect("run");
    let (rr, _) = scenario.run(PolicyKind::RoundRobin).expect("run");
    assert!(ll.makespan_s < rr.makespan_s, "{ll:?}\n{rr:?}");
    assert!(
        ll.mean_completion_s < rr.mean_completion_s,
        "{ll:?}\n{rr:?}"
    );
}

#[test]
fn largest_first_shortens_a_batch_with_a_long_tail() {
    // w3 puts its 1 s tasks at every tenth place; FIFO leaves the last ones for the end.
    let (fifo, _) = run("--workers 4 --slots 1 --workload w3");
    let (lpt, _) = run("--workers 4 --slots 1 --workload w3 --order largest-first");
    assert!(lpt.makespan_s < fifo.makespan_s, "{lpt:?}\n{fifo:?}");
    assert!(lpt.makespan_s <= lpt.lower_bound_s * 1.05, "{lpt:?}");
}

#[test]
fn groups_name_and_partition_the_fleet() {
    let a = args("--workers 7 --groups 3");
    let scenario = Scenario::from_args(&a).expect("scenario");
    let names: Vec<&str> = scenario.fleet.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["g0-w0", "g0-w1", "g1-w0", "g1-w1", "g2-w0", "g2-w1", "g2-w2"]
    );
    let (r, _) = scenario.run(PolicyKind::LeastLoaded).expect("run");
    assert_eq!(r.per_group.len(), 3);
    assert_eq!(r.per_group.iter().map(|g| g.done).sum::<u64>(), r.completed);
    let text = report::render(&[r]);
    assert!(text.contains("per group:"), "{text}");
}

#[test]
fn json_starts_with_the_contract_fields() {
    let text = output("--workers 3 --tasks 10 --json");
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  \"")?.split('"').next())
        .take(9)
        .collect();
    assert_eq!(
        keys,
        [
            "policy",
            "seed",
            "tasks",
            "completed",
            "lost",
            "requeued",
            "makespan_s",
            "lower_bound_s",
            "utilisation"
        ]
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["completed"], 10);
    assert_eq!(
        v["makespan_s"], 1.0,
        "10 tasks of 1 s on 12 slots: one round {v}"
    );
}

#[test]
fn human_table_is_aligned() {
    let text = output("--workers 3 --tasks 10 --compare");
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines[1].starts_with("policy "), "{text}");
    assert_eq!(lines.len(), 2 + PolicyKind::ALL.len(), "{text}");
    let end = lines[1].len();
    assert!(lines[2..].iter().all(|l| l.len() == end), "{text}");
}

#[test]
fn task_files_parse_like_submit_files() {
    let text = "# comment\n\n{\"sleep\": \"20ms\", \"size\": 0.02, \"priority\": 2}\n\
                {\"cmd\": [\"make\"], \"size\": 3, \"group\": \"g1\", \"timeout\": \"1s\"}\n\
                {\"spin\": 1.5, \"retries\": 0}\n";
    let specs = workload::parse(text, "t.jsonl", 10).expect("parse");
    assert_eq!(specs.len(), 3);
    assert_eq!(
        (specs[0].priority, specs[0].size, specs[0].max_retries),
        (2, 0.02, 10)
    );
    assert_eq!(base_seconds(&specs[0]), 0.02);
    assert_eq!(base_seconds(&specs[1]), 3.0, "a command lasts its size");
    assert_eq!(specs[1].group.as_deref(), Some("g1"));
    assert_eq!(specs[2].max_retries, 0);
    let err = |t: &str| workload::parse(t, "t.jsonl", 1).unwrap_err().to_string();
    assert!(err("{\"sleep\": \"1s\"}\n{\"slep\": 1}").starts_with("t.jsonl line 2: unknown field"));
    assert_eq!(err("# nothing\n"), "t.jsonl: no tasks");
    assert!(err("{\"sleep\": \"1s\", \"spin\": \"1s\"}").contains("only one of"));
    assert!(err("{\"sleep\": \"1s\", \"size\": -1}").contains("size must be"));
}

#[test]
fn a_task_file_runs_with_timeouts_counted_as_failed() {
    let dir = std::env::temp_dir().join(format!("ballast-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("tasks.jsonl");
    std::fs::write(
        &path,
        "{\"sleep\": \"200ms\", \"size\": 0.2}\n{\"sleep\": \"5s\", \"timeout\": \"1s\"}\n",
    )
    .expect("write");
    let (r, _) = run(&format!(
        "--workers 2 --tasks 6 --workload {}",
        path.display()
    ));
    assert_eq!(
        (r.tasks, r.completed, r.failed, r.lost),
        (6, 3, 3, 0),
        "{r:?}"
    );
    assert!(r.lower_bound_s <= r.makespan_s, "{r:?}");
    let missing = Scenario::from_args(&args("--workload /nonexistent/tasks.jsonl"));
    assert!(matches!(missing, Err(SimError::Io { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dag_task_file_runs_in_dependency_order() {
    let dir = std::env::temp_dir().join(format!("ballast-sim-dag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("dag.jsonl");
    // A chain of three 1 s tasks, one on its own, and a chain whose head times out.
    std::fs::write(
        &path,
        concat!(
            "{\"sleep\": \"1s\", \"size\": 1, \"name\": \"c\", \"after\": [\"b\"]}\n",
            "{\"sleep\": \"1s\", \"size\": 1, \"name\": \"b\", \"after\": [\"a\"]}\n",
            "{\"sleep\": \"1s\", \"size\": 1, \"name\": \"a\"}\n",
            "{\"sleep\": \"1s\", \"size\": 1}\n",
            "{\"sleep\": \"5s\", \"timeout\": \"1s\", \"name\": \"slow\"}\n",
            "{\"sleep\": \"1s\", \"after\": [\"slow\"]}\n",
        ),
    )
    .expect("write");
    let (r, _) = run(&format!("--workers 4 --workload {}", path.display()));
    // The timed-out head and its dependent (dependency_failed) are the two failures.
    assert_eq!(
        (r.tasks, r.completed, r.failed, r.lost),
        (6, 4, 2, 0),
        "{r:?}"
    );
    assert!(
        r.makespan_s >= 3.0,
        "the chain of three runs one after another: {r:?}"
    );
    let repeated = Scenario::from_args(&args(&format!(
        "--workers 4 --tasks 12 --workload {}",
        path.display()
    )));
    assert!(matches!(
        repeated,
        Err(SimError::Usage { flag: "tasks", .. })
    ));
    // Layers of a DAG through master crashes, lost workers and cut links: every invariant holds
    // at every step and every task ends.
    let layers: Vec<String> = (0..6)
        .flat_map(|layer| {
            (0..8).map(move |i| match layer {
                0 => format!("{{\"sleep\": \"200ms\", \"name\": \"t0_{i}\"}}"),
                _ => format!(
                    "{{\"sleep\": \"200ms\", \"name\": \"t{layer}_{i}\", \"after\": [\"t{}_{i}\", \"t{}_{}\"]}}",
                    layer - 1,
                    layer - 1,
                    (i + 3) % 8
                ),
            })
        })
        .collect();
    let path = dir.join("layers.jsonl");
    std::fs::write(&path, layers.join("\n")).expect("write");
    for faults in [
        "",
        "--master-crashes 2 --fail-rate 0.05 --drop-rate 0.01 --seed 5",
    ] {
        let flags = format!("--workers 4 --workload {} {faults}", path.display());
        let (r, res) = run(&flags);
        assert_eq!(res.invariant_violations, 0, "{flags}: {:?}", res.violations);
        assert_eq!((r.tasks, r.completed), (48, 48), "{flags}: {r:?}");
        assert!(r.makespan_s >= 1.2, "six layers of 200 ms: {r:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_refused() {
    for (flags, flag) in [
        ("--workers 0", "workers"),
        ("--workers 3 --groups 4", "groups"),
        ("--slots 0", "slots"),
        ("--speed-spread 0.5", "speed-spread"),
        ("--tasks 0", "tasks"),
        ("--fail-rate 1000", "fail-rate"),
        ("--background 1", "background"),
        ("--heartbeat 3s --heartbeat-timeout 2s", "heartbeat-timeout"),
    ] {
        match Scenario::from_args(&args(flags)) {
            Err(SimError::Usage { flag: f, .. }) => assert_eq!(f, flag, "{flags}"),
            Err(e) => panic!("{flags}: {e}"),
            Ok(_) => panic!("{flags}: accepted"),
        }
    }
    assert_eq!(WorkloadKind::parse("w3"), WorkloadKind::W3);
}

#[test]
fn plots_are_svg_with_text() {
    let dir = std::env::temp_dir().join(format!("ballast-plots-{}", std::process::id()));
    let text = output(&format!(
        "--workers 6 --tasks 60 --workload heterogeneous --compare --plots {}",
        dir.display()
    ));
    assert!(text.contains("plots: "), "{text}");
    for name in ["makespan.svg", "utilisation.svg", "completion.svg"] {
        let svg = std::fs::read_to_string(dir.join(name)).expect(name);
        assert!(svg.starts_with("<svg"), "{name}");
        assert!(svg.contains("<text"), "{name} has no text");
        assert!(svg.contains("round-robin"), "{name} has no legend");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- faults --------------------------------------------------------------------------------

/// Violation counts of a run by kind, as the report has them.
fn kinds(res: &RunResult) -> Vec<(&'static str, u64)> {
    res.violation_kinds.clone()
}

#[test]
fn delays_and_cut_connections_lose_nothing_and_break_no_invariant() {
    for flags in [
        "--workers 20 --tasks 2000 --fail-rate 0.01 --drop-rate 0.01",
        "--workers 20 --tasks 2000 --fail-rate 0.01 --drop-rate 0.01 --delay 300ms --seed 2",
        "--workers 12 --tasks 400 --workload heterogeneous --drop-rate 0.01 --delay 100ms",
        "--workers 6 --slots 2 --workload w3 --delay 1s --seed 3",
    ] {
        let (r, res) = run(flags);
        assert_eq!(res.invariant_violations, 0, "{flags}: {:?}", res.violations);
        assert_eq!(
            (r.completed, r.lost, r.failed),
            (r.tasks, 0, 0),
            "{flags}: {r:?}"
        );
        assert!(!r.stalled, "{flags}");
        if flags.contains("--drop-rate") {
            assert!(res.drops > 10, "{flags}: {} cuts", res.drops);
            assert!(res.requeued > 0, "{flags}: cut workers' tasks went back");
        }
        assert_eq!(
            r.invariant_violations,
            Some(0),
            "faults: the report says so"
        );
    }
}

#[test]
fn delays_reorder_messages_yet_keep_the_schedule_sane() {
    // The same scenario with and without delay: delay only costs time, and a long one makes
    // messages overtake each other across connections (more events in flight at once).
    let (plain, _) = run("--workers 8 --tasks 300 --workload heterogeneous");
    let (late, res) = run("--workers 8 --tasks 300 --workload heterogeneous --delay 2s");
    assert_eq!(res.invariant_violations, 0, "{:?}", res.violations);
    assert_eq!(late.completed, 300);
    assert!(
        late.events > plain.events,
        "messages went through the event queue"
    );
    assert!(
        late.mean_completion_s > plain.mean_completion_s,
        "{late:?}\n{plain:?}"
    );
}

#[test]
fn the_checker_catches_an_outcome_credited_to_another_task() {
    // A worker that mixes up its slots once: its first result is also reported under the id of
    // another task it runs, which the core then takes as that task's.
    let a = args("--workers 3 --slots 2 --tasks 30");
    let mut scenario = Scenario::from_args(&a).expect("scenario");
    let (_, clean) = scenario.run(PolicyKind::LeastLoaded).expect("run");
    assert_eq!(clean.invariant_violations, 0);
    scenario.world.faults.misreport_once = true;
    let (r, res) = scenario.run(PolicyKind::LeastLoaded).expect("run");
    assert_eq!(kinds(&res), [("credited", 1)], "{:?}", res.violations);
    assert!(
        res.violations[0].contains("took the outcome of a run of submission #0"),
        "{:?}",
        res.violations
    );
    assert_eq!(
        r.invariant_violations,
        Some(1),
        "shown although no fault was injected"
    );
    let text = report::render(&[r]);
    assert!(text.contains("invariant violations: 1"), "{text}");
}

#[test]
fn a_crash_in_the_send_commit_window_forgets_the_batch_and_the_client_sends_it_again() {
    // One window crash: at the end of the turn that accepted the only batch and sent workers
    // its first tasks, before the commit. The batch was never acknowledged, so the client
    // submits it again; the restarted master runs all of it.
    let (r, res) = run("--workers 4 --tasks 40 --master-crashes 1");
    assert_eq!((res.crashes, res.resubmitted), (1, 40), "{r:?}");
    assert_eq!((r.completed, r.lost, r.failed), (40, 0, 0), "{r:?}");
    assert!(!r.stalled);
    // What the current core does with the old runs is the lead's fix (issue 9 item 1); the
    // bookkeeping itself must hold: nothing lost, ended twice or sent astray.
    for (kind, n) in kinds(&res) {
        assert!(
            matches!(kind, "credited" | "uncancelled"),
            "{kind}: {n}: {:?}",
            res.violations
        );
    }
}

#[test]
fn crashes_after_commits_lose_only_uncommitted_finals() {
    // Five crashes over a stream of submissions: every acknowledged task still ends once.
    let (r, res) = run(
        "--workers 10 --tasks 300 --workload heterogeneous --master-crashes 5 \
                        --master-downtime 500ms --seed 4",
    );
    assert_eq!(res.crashes, 5, "{r:?}");
    assert_eq!((r.completed, r.lost, r.failed), (300, 0, 0), "{r:?}");
    for (kind, n) in kinds(&res) {
        assert!(
            matches!(kind, "credited" | "uncancelled"),
            "{kind}: {n}: {:?}",
            res.violations
        );
    }
}

#[test]
fn same_seed_same_bytes_with_faults() {
    let flags = "--workers 10 --tasks 300 --workload heterogeneous --fail-rate 0.02 \
                 --master-crashes 3 --drop-rate 0.02 --delay 200ms --json";
    let a = output(&format!("{flags} --seed 5"));
    assert_eq!(a, output(&format!("{flags} --seed 5")));
    assert_ne!(a, output(&format!("{flags} --seed 6")));
    let v: serde_json::Value = serde_json::from_str(&a).expect("json");
    assert!(v["invariant_violations"].is_u64(), "{a}");
    assert_eq!(v["faults"]["master_crashes"], 3, "{a}");
}

#[test]
fn without_faults_the_output_has_no_fault_fields() {
    let text = output("--workers 3 --tasks 10 --json");
    assert!(!text.contains("invariant_violations"), "{text}");
    assert!(!text.contains("faults"), "{text}");
    let table = output("--workers 3 --tasks 10 --drop-rate 0.01");
    assert!(
        table.contains("least-loaded: invariant violations: 0"),
        "{table}"
    );
}

#[test]
fn bad_fault_flags_are_refused() {
    for (flags, flag) in [
        ("--delay 2m", "delay"),
        ("--drop-rate 0.9", "drop-rate"),
        ("--drop-rate=-0.1", "drop-rate"),
        ("--master-crashes 5000", "master-crashes"),
        ("--master-downtime 0s", "master-downtime"),
    ] {
        match Scenario::from_args(&args(flags)) {
            Err(SimError::Usage { flag: f, .. }) => assert_eq!(f, flag, "{flags}"),
            Err(e) => panic!("{flags}: {e}"),
            Ok(_) => panic!("{flags}: accepted"),
        }
    }
}

/// Found by `proptests`: worker A's connection is cut, its task runs again on B; A reconnects,
/// reports its old run, and the core cancels that as a duplicate; B's connection is cut, the task
/// is queued again, and A's `Cancelled` reply arrives, which the core keeps as the final outcome
/// ("finished while waiting to run again: result kept") of a task nobody cancelled.
#[test]
fn a_duplicate_cancelled_by_the_master_is_never_the_outcome() {
    let (r, res) = run("--workers 10 --tasks 200 --workload w3 --drop-rate 0.05 --delay 50ms");
    assert_eq!(res.invariant_violations, 0, "{:?}", res.violations);
    assert_eq!(r.completed, 200, "{r:?}");
}

/// The acceptance scenario, for the seed it is run with and a few more. Today a crash
/// between a turn's sends and its commit lets the restarted master hand the forgotten ids out
/// again, and an old run's result is credited to the new task (seeds 2-5 each show some).
#[test]
fn acceptance_crashes_and_drops_break_no_invariant() {
    let flags = "--workers 20 --tasks 2000 --fail-rate 0.01 --master-crashes 3 --drop-rate 0.01";
    for seed in 1..=5 {
        let (r, res) = run(&format!("{flags} --seed {seed}"));
        assert_eq!(res.crashes, 3, "seed {seed}");
        assert_eq!(
            res.invariant_violations, 0,
            "seed {seed}: {:?}",
            res.violations
        );
        assert_eq!((r.completed, r.lost, r.failed), (2000, 0, 0), "seed {seed}");
    }
    let text = output(&format!("{flags} --json"));
    assert_eq!(text, output(&format!("{flags} --json")));
    assert!(text.contains("\"invariant_violations\": 0"), "{text}");
}

/// `--compare` alone picks a scenario where the policies differ (on `uniform` every policy gives
/// the same schedule, so four identical rows would say nothing).
#[test]
fn compare_defaults_to_a_scenario_where_policies_differ() {
    let text = output("--workers 12 --tasks 300 --compare --json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let runs = v.as_array().expect("one object per policy");
    assert_eq!(runs[0]["workload"], "heterogeneous", "{text}");
    let makespans: Vec<String> = runs.iter().map(|r| r["makespan_s"].to_string()).collect();
    assert!(
        makespans.iter().any(|m| m != &makespans[0]),
        "all policies gave {makespans:?}"
    );
    // Without --compare the default stays the simple batch.
    let one: serde_json::Value =
        serde_json::from_str(&output("--workers 3 --tasks 10 --json")).expect("json");
    assert_eq!(one["workload"], "uniform", "{one}");
}
