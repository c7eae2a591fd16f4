//! Dependencies: waiting, release, failure cascades, refusals, restart, and a property test.

use super::*;
use proptest::prelude::*;
use protocol::After;

fn after(spec: TaskSpec, deps: &[After]) -> TaskSpec {
    TaskSpec {
        after: deps.to_vec(),
        ..spec
    }
}

fn ids(first: u64, last: u64) -> After {
    After::Ids {
        first: TaskId(first),
        last: TaskId(last),
    }
}

fn error_of(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::Send {
            msg: FromMaster::Error { message },
            ..
        } => Some(message.clone()),
        _ => None,
    })
}

#[test]
fn a_dependent_waits_for_its_dependency_to_succeed() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 4);
    let c = h.client();
    let (a, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(w, a[0], 1)]);
    let (b, out) = h.submit(c, vec![after(sleep_spec(0), &[After::id(a[0])])], 2);
    assert!(assignments(&out).is_empty(), "b waits: {out:?}");
    assert_eq!(h.state(b[0]), TaskState::Waiting);
    let st = h.core.status();
    assert_eq!((st.waiting, st.queued, st.running), (2, 0, 1));
    let view = h.core.task(b[1]).expect("exists");
    assert_eq!(view.after, vec![After::id(a[0])]);
    let out = h.finish(w, a[0], 1, exited(0));
    assert_eq!(assignments(&out), vec![(w, b[0], 1), (w, b[1], 1)]);
    assert_eq!(h.core.status().waiting, 0);
}

#[test]
fn a_failure_fails_its_dependents_transitively_without_running_them() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 4);
    let c = h.client();
    let (a, _) = h.submit(c, vec![sleep_spec(0)], 1);
    // b after a, c after b, within one submission; d after a and an unrelated task.
    let (rest, out) = h.submit(
        c,
        vec![
            after(sleep_spec(0), &[After::id(a[0])]),
            after(sleep_spec(0), &[After::Spec(0)]),
            sleep_spec(0),
            after(sleep_spec(0), &[After::id(a[0]), After::Spec(2)]),
        ],
        1,
    );
    let (b, cc, free, d) = (rest[0], rest[1], rest[2], rest[3]);
    assert_eq!(assignments(&out), vec![(w, free, 1)]);
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![b, cc, d],
            progress: false,
            jobs: vec![],
        },
    );
    assert!(out.is_empty());
    let out = h.finish(w, a[0], 1, exited(3));
    assert!(assignments(&out).is_empty(), "nothing runs: {out:?}");
    for id in [b, cc, d] {
        let t = h.core.task(id).expect("exists");
        assert_eq!(t.state, TaskState::DependencyFailed, "{id}");
        assert_eq!((t.copies, t.worker.as_deref()), (0, None), "{id} never ran");
    }
    let err = |id| h.core.task(id).and_then(|t| t.error);
    assert_eq!(err(b).as_deref(), Some("dependency 1 failed"));
    assert_eq!(
        err(cc).as_deref(),
        Some("dependency 2 failed (dependency_failed)")
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send {
            msg: FromMaster::WaitDone {
                total: 3,
                succeeded: 0,
                failed: 3
            },
            ..
        }
    )));
    assert_eq!(h.core.status().failed, 4);
}

#[test]
fn references_within_a_submission_wait_for_every_copy() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 8);
    let c = h.client();
    // Spec 0 waits for spec 1 (a forward reference); each is submitted twice.
    let (t, out) = h.submit(
        c,
        vec![after(sleep_spec(0), &[After::Spec(1)]), sleep_spec(0)],
        2,
    );
    assert_eq!(assignments(&out), vec![(w, t[2], 1), (w, t[3], 1)]);
    assert_eq!(h.core.task(t[0]).expect("t").after, vec![ids(3, 4)]);
    let out = h.finish(w, t[2], 1, exited(0));
    assert!(assignments(&out).is_empty(), "one copy left to wait for");
    let out = h.finish(w, t[3], 1, exited(0));
    assert_eq!(assignments(&out), vec![(w, t[0], 1), (w, t[1], 1)]);
}

#[test]
fn cycles_unknown_ids_and_bad_ranges_refuse_the_whole_submission() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let (_, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let cases: [(Vec<TaskSpec>, &str); 5] = [
        (
            vec![
                after(sleep_spec(0), &[After::Spec(1)]),
                after(sleep_spec(0), &[After::Spec(0)]),
            ],
            "cycle",
        ),
        (vec![after(sleep_spec(0), &[After::Spec(0)])], "cycle"),
        (
            vec![sleep_spec(0), after(sleep_spec(0), &[After::Spec(5)])],
            "does not have",
        ),
        (
            vec![after(sleep_spec(0), &[After::id(TaskId(2))])],
            "waits for task 2, which does not exist",
        ),
        (
            vec![after(sleep_spec(0), &[ids(1, 0)])],
            "not a range of task ids",
        ),
    ];
    for (specs, want) in cases {
        let out = h.msg(
            c,
            ToMaster::Submit {
                specs,
                count: 1,
                name: None,
            },
        );
        let e = error_of(&out).unwrap_or_default();
        assert!(e.contains(want), "{e:?} should say {want:?}");
        assert_eq!(h.core.tasks.len(), 1, "nothing of it accepted ({want})");
    }
}

#[test]
fn dependencies_already_final_decide_at_once() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 4);
    let c = h.client();
    let (a, _) = h.submit(c, vec![sleep_spec(0), sleep_spec(0)], 1);
    h.finish(w, a[0], 1, exited(0));
    h.finish(w, a[1], 1, exited(1));
    let (ok, out) = h.submit(c, vec![after(sleep_spec(0), &[After::id(a[0])])], 1);
    assert_eq!(assignments(&out), vec![(w, ok[0], 1)]);
    let (bad, out) = h.submit(c, vec![after(sleep_spec(0), &[ids(1, 2)])], 1);
    assert!(assignments(&out).is_empty());
    assert_eq!(h.state(bad[0]), TaskState::DependencyFailed);
    assert_eq!(
        h.core.task(bad[0]).and_then(|t| t.error).as_deref(),
        Some("dependency 2 failed")
    );
}

#[test]
fn cancelling_a_waiting_task_fails_its_dependents() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let (t, _) = h.submit(
        c,
        vec![
            sleep_spec(0),
            after(sleep_spec(0), &[After::Spec(0)]),
            after(sleep_spec(0), &[After::Spec(1)]),
        ],
        1,
    );
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: vec![t[1]],
            jobs: vec![],
        },
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send { msg: FromMaster::CancelDone { cancelled, .. }, .. } if cancelled == &[t[1]]
    )));
    assert_eq!(h.state(t[1]), TaskState::Cancelled);
    assert_eq!(h.state(t[2]), TaskState::DependencyFailed);
    assert_eq!(
        h.core.task(t[2]).and_then(|t| t.error).as_deref(),
        Some("dependency 2 failed (cancelled)")
    );
    assert_eq!(h.state(t[0]), TaskState::Queued);
}

#[test]
fn a_restart_keeps_waiting_and_resolves_what_the_journal_decided() {
    let mut h = Harness::restarted();
    h.core.config.persist = true;
    let plain = Arc::new(sleep_spec(0));
    let on_1 = Arc::new(after(sleep_spec(0), &[After::id(TaskId(1))]));
    let on_2 = Arc::new(after(sleep_spec(0), &[After::id(TaskId(2))]));
    let on_3 = Arc::new(after(sleep_spec(0), &[After::id(TaskId(3))]));
    // A later id in the same journal: task 4 waits for task 5, which is not final.
    let on_5 = Arc::new(after(sleep_spec(0), &[After::id(TaskId(5))]));
    let done = |state| {
        Some(Box::new(Outcome {
            state,
            attempts: 1,
            copies: 1,
            worker: Some("a".into()),
            exit_code: Some(i32::from(state != TaskState::Succeeded)),
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            started_ms: Some(1),
            finished_ms: 2,
        }))
    };
    let specs = [
        (plain.clone(), done(TaskState::Succeeded)),
        (plain.clone(), done(TaskState::Failed)),
        (on_1, None),
        (on_5, None),
        (plain, None),
        (on_2, None),
        (on_3, None),
    ];
    let restored = specs
        .into_iter()
        .enumerate()
        .map(|(i, (spec, outcome))| RestoredTask {
            id: TaskId(i as u64 + 1),
            spec,
            submitted_ms: 1,
            stored: None,
            outcome,
        })
        .collect();
    let now = h.now;
    assert_eq!(
        h.core
            .restore(now, restored, history(&[(1, 1), (2, 8)]), Vec::new()),
        Ok((2, 5))
    );
    let out = h.drain();
    let failed: Vec<TaskId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Finished { id, outcome })
                if outcome.state == TaskState::DependencyFailed =>
            {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![TaskId(6)], "made durable at once");
    assert_eq!(
        h.state(TaskId(3)),
        TaskState::Queued,
        "its dependency succeeded"
    );
    assert_eq!(h.state(TaskId(4)), TaskState::Waiting);
    assert_eq!(
        h.state(TaskId(7)),
        TaskState::Waiting,
        "task 3 is not final yet"
    );
    // Task 3 and 5 run after the grace period (3 at once, 5 held as an interrupted run).
    let (w, _, out) = h.worker("b", 4);
    let mut got = assignments(&out);
    for _ in 0..60 {
        h.msg(w, ToMaster::Load(LoadReport::default()));
        got.extend(assignments(&h.advance(100)));
    }
    let mut tasks: Vec<TaskId> = got.iter().map(|g| g.1).collect();
    tasks.sort();
    assert_eq!(tasks, vec![TaskId(3), TaskId(5)]);
    let attempt_of = |t| got.iter().find(|g| g.1 == t).map(|g| g.2).unwrap_or(0);
    let finish2 = |h: &mut Harness, task: TaskId, attempt: u32| {
        h.msg(
            w,
            ToMaster::Finished(vec![Completion {
                task,
                attempt: Attempt(attempt),
                incarnation: Incarnation(2),
                outcome: exited(0),
                run_ms: 1,
            }]),
        )
    };
    let out = finish2(&mut h, TaskId(5), attempt_of(TaskId(5)));
    assert_eq!(
        assignments(&out).iter().map(|g| g.1).collect::<Vec<_>>(),
        [TaskId(4)]
    );
    let out = finish2(&mut h, TaskId(3), attempt_of(TaskId(3)));
    assert_eq!(
        assignments(&out).iter().map(|g| g.1).collect::<Vec<_>>(),
        [TaskId(7)]
    );
}

#[test]
fn a_range_of_many_is_one_entry_and_counts_each_once() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (many, _) = h.submit(c, vec![sleep_spec(0)], 200);
    // Overlapping and repeated ranges count each task once.
    let (d, _) = h.submit(
        c,
        vec![after(
            sleep_spec(5),
            &[ids(1, 200), ids(50, 60), After::id(TaskId(7))],
        )],
        1,
    );
    assert_eq!(h.core.task(d[0]).expect("d").after, vec![ids(1, 200)]);
    let mut ran = Vec::new();
    let mut next = vec![many[0]];
    while let Some(t) = next.pop() {
        ran.push(t);
        if t != d[0] {
            assert_eq!(h.state(d[0]), TaskState::Waiting, "before {t}");
        }
        let out = h.finish(w, t, 1, exited(0));
        next.extend(assignments(&out).iter().map(|a| a.1));
    }
    assert_eq!(ran.len(), 201, "the 200, then the dependent");
    assert_eq!(*ran.last().expect("ran"), d[0]);
}

/// One task of the property test: which earlier tasks of the batch it waits for, how it ends.
#[derive(Debug, Clone)]
struct Node {
    deps: Vec<usize>,
    succeeds: bool,
}

fn dag() -> impl Strategy<Value = (Vec<Node>, u64)> {
    (1usize..12)
        .prop_flat_map(|n| {
            let nodes: Vec<_> = (0..n)
                .map(|i| {
                    (
                        proptest::collection::vec(0..i.max(1), 0..3.min(i + 1)),
                        proptest::bool::weighted(0.75),
                    )
                        .prop_map(move |(deps, succeeds)| Node {
                            deps: deps.into_iter().filter(|&d| d < i).collect(),
                            succeeds,
                        })
                })
                .collect();
            (nodes, any::<u64>())
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// No task starts before its dependencies succeeded (checked at every step by
    /// `sanity_check`, and here for every assignment); every dependent of a failure ends
    /// `dependency_failed`; everything else runs and ends as its run did. Specs are shuffled
    /// (by `seed`) so references point forwards and backwards, and some go to an earlier
    /// submission by id.
    #[test]
    fn dependencies_hold_in_any_order((nodes, seed) in dag()) {
        let mut h = Harness::new(PolicyKind::LeastLoaded);
        let (w, _, _) = h.worker("a", 3);
        let c = h.client();
        let n = nodes.len();
        // The first node of the batch goes in a submission of its own (referenced by id); the
        // others in one, in an order given by the seed.
        let mut order: Vec<usize> = (1..n).collect();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let (first, mut out) = h.submit(c, vec![sleep_spec(0)], 1);
        let mut id_of = vec![first[0]; n];
        let pos_of = |node: usize| order.iter().position(|&o| o == node);
        let specs: Vec<TaskSpec> = order
            .iter()
            .map(|&node| {
                let deps: Vec<After> = nodes[node]
                    .deps
                    .iter()
                    .map(|&d| match pos_of(d) {
                        Some(p) => After::Spec(p as u32),
                        None => After::id(first[0]),
                    })
                    .collect();
                after(sleep_spec(0), &deps)
            })
            .collect();
        if !specs.is_empty() {
            let (rest, more) = h.submit(c, specs, 1);
            out.extend(more);
            for (p, &node) in order.iter().enumerate() {
                id_of[node] = rest[p];
            }
        }
        let node_of = |id: TaskId| id_of.iter().position(|&i| i == id).expect("known id");
        let mut ended: Vec<Option<bool>> = vec![None; n];
        let mut pending: Vec<(TaskId, u32)> = assignments(&out).iter().map(|a| (a.1, a.2)).collect();
        while let Some((task, attempt)) = pending.pop() {
            let node = node_of(task);
            for &d in &nodes[node].deps {
                prop_assert_eq!(ended[d], Some(true), "{} ran before {}", node, d);
            }
            let ok = nodes[node].succeeds;
            ended[node] = Some(ok);
            let out = h.finish(w, task, attempt, exited(if ok { 0 } else { 1 }));
            pending.extend(assignments(&out).iter().map(|a| (a.1, a.2)));
        }
        // The model: a node runs iff every dependency ran and succeeded.
        let mut runs = vec![false; n];
        for i in 0..n {
            runs[i] = nodes[i].deps.iter().all(|&d| runs[d] && nodes[d].succeeds);
        }
        for i in 0..n {
            let state = h.state(id_of[i]);
            let want = match (runs[i], nodes[i].succeeds) {
                (false, _) => TaskState::DependencyFailed,
                (true, true) => TaskState::Succeeded,
                (true, false) => TaskState::Failed,
            };
            prop_assert_eq!(state, want, "node {} (task {})", i, id_of[i]);
            prop_assert_eq!(ended[i].is_some(), runs[i]);
        }
        prop_assert_eq!(h.core.status().waiting, 0);
        prop_assert_eq!(h.core.deps.len(), 0, "every gate was released");
    }
}

#[test]
fn after_a_job_waits_for_its_whole_range_as_one_entry() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 8);
    let c = h.client();
    let (batch, _) = h.submit(c, vec![sleep_spec(0)], 3);
    let job = h.core.task(batch[0]).expect("task").job;
    let (d, out) = h.submit(c, vec![after(sleep_spec(0), &[After::Job(job)])], 1);
    assert!(assignments(&out).is_empty());
    assert_eq!(
        h.core.task(d[0]).expect("d").after,
        vec![ids(batch[0].0, batch[2].0)]
    );
    h.finish(w, batch[0], 1, exited(0));
    h.finish(w, batch[1], 1, exited(0));
    assert_eq!(h.state(d[0]), TaskState::Waiting);
    let out = h.finish(w, batch[2], 1, exited(0));
    assert_eq!(assignments(&out), vec![(w, d[0], 1)]);
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![after(sleep_spec(0), &[After::Job(protocol::JobId(99))])],
            count: 1,
            name: None,
        },
    );
    let e = error_of(&out).unwrap_or_default();
    assert!(e.contains("job 99, which does not exist"), "{e}");
}
