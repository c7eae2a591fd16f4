//! Property tests of the simulated world under faults: small random scenarios (fleet, workload,
//! worker failures, message delay, cut connections, master crashes) must keep every invariant
//! of `invariants` and finish every task.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    workers: u32,
    slots: u32,
    tasks: u64,
    workload: &'static str,
    fail_rate: f64,
    delay_ms: u64,
    drop_rate: f64,
    crashes: u32,
    seed: u64,
}

fn case(max_crashes: u32) -> impl Strategy<Value = Case> {
    (
        (1u32..=6, 1u32..=3, 1u64..=60),
        prop::sample::select(vec!["uniform", "heterogeneous", "w3"]),
        (
            prop::sample::select(vec![0.0, 0.02, 0.1]),
            0u64..=800,
            prop::sample::select(vec![0.0, 0.005, 0.02, 0.05]),
        ),
        0u32..=max_crashes,
        any::<u64>(),
    )
        .prop_map(
            |(
                (workers, slots, tasks),
                workload,
                (fail_rate, delay_ms, drop_rate),
                crashes,
                seed,
            )| {
                Case {
                    workers,
                    slots,
                    tasks,
                    workload,
                    fail_rate,
                    delay_ms,
                    drop_rate,
                    crashes,
                    seed,
                }
            },
        )
}

/// Runs `c`; returns the report and the result.
fn simulate(c: &Case) -> (Report, world::RunResult) {
    let a = SimulateArgs {
        workers: c.workers,
        groups: 1,
        slots: c.slots,
        speed_spread: 1.5,
        // Without background load: with it (heterogeneous defaults to 0.8) a 10 s task on a slow,
        // loaded host lasts up to 75 s, which a worker failing 0.1 times a second survives with
        // odds of e^-7.5, so even 1,000 retries could end it `worker_lost` with no defect at all
        // (seed 17705572700623052308: 1 worker, 994 requeues, no invariant violated).
        background: Some(0.0),
        tasks: Some(c.tasks),
        workload: Some(c.workload.into()),
        fail_rate: c.fail_rate,
        recover: Duration::from_secs(1),
        seed: c.seed,
        policy: "least-loaded".into(),
        order: "fifo".into(),
        heartbeat: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(3),
        retries: 1_000,
        json: false,
        compare: false,
        plots: None,
        delay: Duration::from_millis(c.delay_ms),
        drop_rate: c.drop_rate,
        master_crashes: c.crashes,
        master_downtime: Duration::from_millis(700),
    };
    let scenario = Scenario::from_args(&a).expect("scenario");
    scenario.run(PolicyKind::LeastLoaded).expect("run")
}

/// Every task final (with retries this high none is lost), the run not stalled, and no
/// violation but those of `allowed` kinds.
fn check(c: &Case, allowed: &[&str]) -> Result<(), TestCaseError> {
    let (r, res) = simulate(c);
    for (kind, n) in &res.violation_kinds {
        prop_assert!(
            allowed.contains(kind),
            "{c:?}: {n} {kind}: {:?}",
            res.violations
        );
    }
    prop_assert!(!r.stalled, "{c:?}: {r:?}");
    prop_assert_eq!(res.unfinished + res.worker_lost, 0, "{:?}: {:?}", c, r);
    if allowed.is_empty() {
        prop_assert_eq!(r.completed, r.tasks, "{:?}: {:?}", c, r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    })]

    /// Delay, cut connections and worker failures. One known core defect is allowed here (its
    /// own strict property below is ignored until it is fixed): a worker answers the master's
    /// `Cancel` of a duplicate run with `Cancelled`, the other run's connection is cut meanwhile,
    /// and the core takes that `Cancelled` as the final outcome of a task nobody cancelled.
    #[test]
    fn delay_and_cuts_keep_the_invariants(c in case(0)) {
        check(&c, &["uncancelled"])?;
    }

    #[test]
    fn delay_and_cuts_keep_every_invariant(c in case(0)) {
        check(&c, &[])?;
    }

    #[test]
    fn crashes_keep_every_invariant(c in case(4)) {
        check(&c, &[])?;
    }
}

/// The case that ended a task `worker_lost` after 994 requeues while background load made its
/// run outlast every up-time of its one worker: without that load it finishes.
#[test]
fn a_lone_failing_worker_still_finishes_every_task() {
    let c = Case {
        workers: 1,
        slots: 1,
        tasks: 6,
        workload: "heterogeneous",
        fail_rate: 0.1,
        delay_ms: 466,
        drop_rate: 0.05,
        crashes: 0,
        seed: 17705572700623052308,
    };
    check(&c, &["uncancelled"]).expect("every task finishes");
}
