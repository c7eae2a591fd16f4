//! Several copies of a task (replicas, speculation) and prefetch rebalancing (retract, displace).

use super::*;

fn replicated(n: u32) -> TaskSpec {
    TaskSpec {
        replicas: n,
        ..sleep_spec(0)
    }
}

/// (conn, task, attempt) of every `Cancel` in `out`.
fn cancels(out: &[Output]) -> Vec<(ConnId, TaskId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Cancel(refs),
            } => Some(refs.iter().map(move |r| (*conn, r.task, r.attempt.0))),
            _ => None,
        })
        .flatten()
        .collect()
}

/// (conn, task, attempt) of every `Retract` in `out`.
fn retracts(out: &[Output]) -> Vec<(ConnId, TaskId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Retract(refs),
            } => Some(refs.iter().map(move |r| (*conn, r.task, r.attempt.0))),
            _ => None,
        })
        .flatten()
        .collect()
}

fn started(h: &mut Harness, worker: ConnId, task: TaskId, attempt: u32) {
    let out = h.msg(
        worker,
        ToMaster::Started(vec![TaskRef {
            task,
            attempt: Attempt(attempt),
            incarnation: Incarnation(1),
        }]),
    );
    assert!(out.is_empty(), "Started is not answered: {out:?}");
}

fn retracted(h: &mut Harness, worker: ConnId, refs: &[(TaskId, u32)]) -> Vec<Output> {
    let refs = refs
        .iter()
        .map(|&(task, a)| TaskRef {
            task,
            attempt: Attempt(a),
            incarnation: Incarnation(1),
        })
        .collect();
    h.msg(worker, ToMaster::Retracted(refs))
}

#[test]
fn replicas_run_on_distinct_workers_and_the_first_success_wins() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 2);
    let (b, _, _) = h.worker("b", 2);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![replicated(2)], 1);
    let mut got = assignments(&out);
    got.sort();
    assert_eq!(got, vec![(a, ids[0], 1), (b, ids[0], 2)], "one copy each");
    let (more, _) = h.submit(c, vec![sleep_spec(0)], 1);
    // b's copy wins: a's is cancelled and its slot is free at once.
    let out = h.finish(b, ids[0], 2, exited(0));
    assert_eq!(cancels(&out), vec![(a, ids[0], 1)]);
    let r = h.core.task(ids[0]).expect("task");
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!((r.copies, r.attempts), (2, 2));
    assert_eq!(r.worker.as_deref(), Some("b"));
    // The loser's report is expected and changes nothing.
    let out = h.finish(a, ids[0], 1, TaskOutcome::Cancelled);
    assert!(cancels(&out).is_empty() && assignments(&out).is_empty());
    assert_eq!(h.state(ids[0]), TaskState::Succeeded);
    assert_eq!(h.state(more[0]), TaskState::Running);
}

#[test]
fn a_failed_copy_leaves_the_others_running_and_all_failing_fails() {
    let mut h = Harness::new(PolicyKind::RoundRobin);
    let (a, _, _) = h.worker("a", 1);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![replicated(2), replicated(2)], 1);
    // Both slots go to the first task's two copies; the second task waits.
    h.finish(a, ids[0], 1, exited(3));
    assert_eq!(h.state(ids[0]), TaskState::Running, "b's copy runs on");
    h.finish(b, ids[0], 2, exited(0));
    let r = h.core.task(ids[0]).expect("task");
    assert_eq!((r.state, r.copies), (TaskState::Succeeded, 2));
    // The second task's copies both fail: the task fails, with the last outcome.
    let out = h.advance(0);
    assert!(assignments(&out).is_empty());
    let r = h.core.task(ids[1]).expect("task");
    assert_eq!(r.state, TaskState::Running);
    h.finish(a, ids[1], 1, exited(4));
    h.finish(b, ids[1], 2, exited(5));
    let r = h.core.task(ids[1]).expect("task");
    assert_eq!(
        (r.state, r.exit_code, r.copies),
        (TaskState::Failed, Some(5), 2)
    );
}

#[test]
fn a_copy_still_owed_runs_when_the_only_running_one_fails() {
    // Found by an adversarial run: with fewer free workers than replicas, the first copy's
    // failure failed the task (copies 1) while its second copy waited to be placed.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![replicated(2)], 1);
    assert_eq!(assignments(&out), vec![(a, ids[0], 1)]);
    let out = h.finish(a, ids[0], 1, exited(3));
    assert_eq!(
        assignments(&out),
        vec![(a, ids[0], 2)],
        "the owed copy, on the only worker there is"
    );
    assert_eq!(h.state(ids[0]), TaskState::Running);
    h.finish(a, ids[0], 2, exited(4));
    let r = h.core.task(ids[0]).expect("task");
    assert_eq!(
        (r.state, r.exit_code, r.copies),
        (TaskState::Failed, Some(4), 2),
        "both failed: the last outcome, two copies and no third"
    );
    // And when the owed copy succeeds, the task does.
    let (ids, _) = h.submit(c, vec![replicated(2)], 1);
    h.finish(a, ids[0], 1, exited(3));
    let out = h.finish(a, ids[0], 2, exited(0));
    assert!(assignments(&out).is_empty(), "no third copy: {out:?}");
    let r = h.core.task(ids[0]).expect("task");
    assert_eq!((r.state, r.copies), (TaskState::Succeeded, 2));
}

#[test]
fn a_copy_waits_for_a_distinct_worker_without_holding_up_others() {
    let mut h = Harness::new(PolicyKind::PowerOfTwo);
    let (a, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![replicated(2), sleep_spec(0)], 1);
    assert_eq!(
        assignments(&out),
        vec![(a, ids[0], 1), (a, ids[1], 1)],
        "the second copy cannot go to a; the next task takes a's other slot"
    );
    let (b, _, out) = h.worker("b", 1);
    assert_eq!(assignments(&out), vec![(b, ids[0], 2)]);
    // a's copy is lost with a: the task is not, b's copy runs on.
    h.core.handle_disconnect(h.now, a, "gone");
    h.drain();
    assert_eq!(h.state(ids[0]), TaskState::Running);
    h.finish(b, ids[0], 2, exited(0));
    let r = h.core.task(ids[0]).expect("task");
    assert_eq!((r.state, r.copies), (TaskState::Succeeded, 2));
}

#[test]
fn cancel_kills_every_copy() {
    let mut h = Harness::new(PolicyKind::Weighted);
    let (a, _, _) = h.worker("a", 1);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![replicated(3)], 1);
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: ids.clone(),
            jobs: vec![],
        },
    );
    let mut got = cancels(&out);
    got.sort();
    assert_eq!(got, vec![(a, ids[0], 1), (b, ids[0], 2)]);
    h.finish(a, ids[0], 1, TaskOutcome::Cancelled);
    assert_eq!(h.state(ids[0]), TaskState::Running, "b still has to report");
    h.finish(b, ids[0], 2, TaskOutcome::Cancelled);
    assert_eq!(h.state(ids[0]), TaskState::Cancelled);
    // A third worker must not get the copy that was still owed.
    let (_, _, out) = h.worker("c", 1);
    assert!(assignments(&out).is_empty());
}

#[test]
fn an_idle_worker_gets_tasks_retracted_from_a_prefetching_one() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker_with("a", 1, 3);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 4);
    assert_eq!(assignments(&out).len(), 4, "one slot plus three prefetched");
    started(&mut h, a, ids[0], 1);
    // b joins with a free slot and nothing queued: a is asked for the task it would start last.
    let (b, _, out) = h.worker("b", 2);
    assert!(assignments(&out).is_empty());
    assert_eq!(retracts(&out), vec![(a, ids[3], 1), (a, ids[2], 1)]);
    // No second request while the first is unanswered.
    assert!(retracts(&h.msg(a, ToMaster::Load(LoadReport::default()))).is_empty());
    // Task 3 had started meanwhile; task 4 comes back and goes to b, same attempt (never ran).
    started(&mut h, a, ids[2], 1);
    let out = retracted(&mut h, a, &[(ids[3], 1)]);
    assert_eq!(assignments(&out), vec![(b, ids[3], 1)]);
    h.finish(b, ids[3], 1, exited(0));
    let r = h.core.task(ids[3]).expect("task");
    assert_eq!((r.attempts, r.worker.as_deref()), (1, Some("b")));
}

#[test]
fn a_task_no_worker_may_take_does_not_stop_rebalancing() {
    // Found by an adversarial run: rebalancing waited for an empty queue, so one task for a
    // group no live worker serves kept an idle worker idle beside a loaded one.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker_with("a", 1, 2);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 3);
    assert_eq!(assignments(&out).len(), 3);
    started(&mut h, a, ids[0], 1);
    let nowhere = TaskSpec {
        group: Some("nobody".into()),
        ..sleep_spec(0)
    };
    let (stuck, out) = h.submit(c, vec![nowhere], 1);
    assert!(assignments(&out).is_empty());
    let (_, _, out) = h.worker("b", 1);
    assert_eq!(retracts(&out), vec![(a, ids[2], 1)]);
    assert_eq!(h.state(stuck[0]), TaskState::Queued);
}

#[test]
fn rebalancing_asks_the_next_donor_when_the_idle_ones_may_not_run_the_first_ones_tasks() {
    // Found by an adversarial run: only the most loaded worker was ever asked, and g's tasks
    // are for its group alone.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (g, _, _) = h.grouped_worker("g", 1, 3, "G");
    let c = h.client();
    let grouped = TaskSpec {
        group: Some("G".into()),
        ..sleep_spec(0)
    };
    let (gs, out) = h.submit(c, vec![grouped], 4);
    assert_eq!(assignments(&out).len(), 4, "g: one slot and three held");
    started(&mut h, g, gs[0], 1);
    let (a, _, _) = h.worker_with("a", 1, 2);
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 3);
    assert_eq!(assignments(&out).len(), 3, "a: one slot and two held");
    started(&mut h, a, ids[0], 1);
    let (_, _, out) = h.worker("b", 1);
    assert_eq!(retracts(&out), vec![(a, ids[2], 1)]);
}

#[test]
fn a_retracted_task_does_not_go_back_where_it_came_from() {
    let mut h = Harness::new(PolicyKind::RoundRobin);
    let (a, _, _) = h.worker_with("a", 1, 2);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    started(&mut h, a, ids[0], 1);
    let (b, _, out) = h.worker("b", 1);
    let asked = retracts(&out);
    assert_eq!(asked, vec![(a, ids[2], 1)], "b has one free slot");
    // Round-robin's next pick would be a; the returned task goes to b regardless.
    let out = retracted(&mut h, a, &[(ids[2], 1)]);
    assert_eq!(assignments(&out), vec![(b, ids[2], 1)]);
}

#[test]
fn a_waiting_higher_priority_task_displaces_a_prefetched_one() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker_with("a", 1, 2);
    let c = h.client();
    let (low, _) = h.submit(c, vec![sleep_spec(0)], 3);
    started(&mut h, a, low[0], 1);
    let (high, out) = h.submit(c, vec![sleep_spec(5)], 1);
    // The high task goes to a (whose local queue starts it first) and a's last low one is
    // retracted, so no low task can start before it.
    assert_eq!(assignments(&out), vec![(a, high[0], 1)]);
    assert_eq!(retracts(&out), vec![(a, low[2], 1)]);
    let out = retracted(&mut h, a, &[(low[2], 1)]);
    assert!(assignments(&out).is_empty(), "a is full again");
    assert_eq!(h.state(low[2]), TaskState::Queued);
    // When a frees its slot, the queued low task refills the prefetch place.
    let out = h.finish(a, low[0], 1, exited(0));
    assert_eq!(assignments(&out), vec![(a, low[2], 1)]);
}

#[test]
fn held_runs_found_when_priorities_first_differ_are_the_latest_handed_out() {
    // Nothing is indexed while every task has one priority; the first task of another priority
    // indexes what is held then. No `Started` came back, so which run took the slot is
    // unknown: the one handed out first did, and only the later two may be displaced.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker_with("a", 1, 2);
    let c = h.client();
    let (low, out) = h.submit(c, vec![sleep_spec(0)], 3);
    assert_eq!(assignments(&out).len(), 3);
    let (high, out) = h.submit(c, vec![sleep_spec(5)], 2);
    assert_eq!(
        assignments(&out),
        vec![(a, high[0], 1), (a, high[1], 1)],
        "both wait for a place on a"
    );
    let mut asked = retracts(&out);
    asked.sort();
    assert_eq!(asked, vec![(a, low[1], 1), (a, low[2], 1)]);
}

#[test]
fn held_runs_found_when_priorities_first_differ_are_the_ones_handed_out_beyond_the_slots() {
    // Found by review: taking a worker's latest runs in queue order as its held ones picks a
    // re-queued task's run wrongly. `first` runs on b; `second` takes a's free slot; b is lost,
    // so `first` (earlier in queue order) comes to a beyond its slot.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    let (first, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(b, first[0], 1)]);
    let (a, _, _) = h.worker_with("a", 1, 1);
    let (second, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(a, second[0], 1)], "a's free slot");
    h.core.handle_disconnect(h.now, b, "gone");
    assert_eq!(
        assignments(&h.drain()),
        vec![(a, first[0], 2)],
        "held beyond the slot"
    );
    let (high, out) = h.submit(c, vec![sleep_spec(5)], 1);
    assert_eq!(assignments(&out), vec![(a, high[0], 1)]);
    assert_eq!(
        retracts(&out),
        vec![(a, first[0], 2)],
        "not the run in the slot"
    );
}

#[test]
fn held_runs_found_when_priorities_first_differ_follow_largest_first_handouts() {
    // Under largest-first a later, larger task sorts first: the one held is still the one
    // handed out beyond the slot.
    let mut h = Harness::with(CoreConfig {
        policy: PolicyKind::LeastLoaded,
        order: QueueOrder::LargestFirst,
        ..CoreConfig::default()
    });
    let (a, _, _) = h.worker_with("a", 1, 1);
    let c = h.client();
    let (small, _) = h.submit(
        c,
        vec![TaskSpec {
            size: 1.0,
            ..sleep_spec(0)
        }],
        1,
    );
    let (large, out) = h.submit(
        c,
        vec![TaskSpec {
            size: 100.0,
            ..sleep_spec(0)
        }],
        1,
    );
    assert_eq!(assignments(&out), vec![(a, large[0], 1)]);
    let (high, out) = h.submit(c, vec![sleep_spec(5)], 1);
    assert_eq!(assignments(&out), vec![(a, high[0], 1)]);
    assert_eq!(
        retracts(&out),
        vec![(a, large[0], 1)],
        "{:?} is in the slot",
        small[0]
    );
}

#[test]
fn displacement_takes_a_held_task_never_the_one_handed_to_a_free_slot() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker_with("a", 1, 1);
    let c = h.client();
    // `low` goes to a's free slot and starts there at once, whether or not its Started has come
    // back; `mid` is held beyond the slot.
    let (low, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(a, low[0], 1)]);
    let (mid, out) = h.submit(c, vec![sleep_spec(3)], 1);
    assert_eq!(assignments(&out), vec![(a, mid[0], 1)]);
    // The lowest unstarted task is `low`, but only the held one can still wait for `high`.
    let (high, out) = h.submit(c, vec![sleep_spec(5)], 1);
    assert_eq!(assignments(&out), vec![(a, high[0], 1)]);
    assert_eq!(retracts(&out), vec![(a, mid[0], 1)]);
}

#[test]
fn a_straggler_gets_a_speculative_copy_when_a_slot_is_idle() {
    let mut h = Harness::with(CoreConfig {
        speculate: Some(2.0),
        ..CoreConfig::default()
    });
    let (a, _, _) = h.worker("a", 1);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    // Three successes at 100 ms per unit of size teach the estimate.
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    for (i, &id) in ids.iter().enumerate() {
        let (w, attempt) = match h.core.task(id).and_then(|t| t.worker).as_deref() {
            Some("a") => (a, 1),
            _ => (b, 1),
        };
        if i == 2 {
            started(&mut h, w, id, attempt);
        }
        let done = Completion {
            task: id,
            attempt: Attempt(attempt),
            incarnation: Incarnation(1),
            outcome: exited(0),
            run_ms: 100,
        };
        h.msg(w, ToMaster::Finished(vec![done]));
    }
    let (slow, out) = h.submit(c, vec![sleep_spec(0)], 1);
    let (w, _, _) = assignments(&out)[0];
    let other = if w == a { b } else { a };
    started(&mut h, w, slow[0], 1);
    let mut copy = Vec::new();
    for _ in 0..5 {
        let out = h.advance(100);
        copy.extend(assignments(&out));
    }
    assert_eq!(copy, vec![(other, slow[0], 2)], "one copy after 2 x 100 ms");
    let out = h.finish(other, slow[0], 2, exited(0));
    assert_eq!(cancels(&out), vec![(w, slow[0], 1)]);
    let r = h.core.task(slow[0]).expect("task");
    assert_eq!((r.state, r.copies), (TaskState::Succeeded, 2));
}

#[test]
fn a_losing_copy_keeps_its_slot_until_its_worker_reports_it_gone() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 1);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![replicated(2), sleep_spec(0), sleep_spec(0)], 1);
    let out = h.finish(b, ids[0], 2, exited(0));
    assert_eq!(cancels(&out), vec![(a, ids[0], 1)]);
    // b's slot is free; a's is not until its copy is dead (a command may take the kill grace).
    assert_eq!(assignments(&out), vec![(b, ids[1], 1)]);
    let out = h.finish(a, ids[0], 1, TaskOutcome::Cancelled);
    assert_eq!(assignments(&out), vec![(a, ids[2], 1)]);
}
