//! Adaptive prefetch: a worker started without `--prefetch` holds one task beyond its slots only
//! while its runs are short next to its round trip.

use super::*;

fn finish_after(h: &mut Harness, worker: ConnId, task: TaskId, run_ms: u64) -> Vec<Output> {
    h.msg(
        worker,
        ToMaster::Finished(vec![Completion {
            task,
            attempt: Attempt(1),
            incarnation: Incarnation(1),
            outcome: exited(0),
            run_ms,
        }]),
    )
}

fn start(h: &mut Harness, worker: ConnId, task: TaskId) -> Vec<Output> {
    h.msg(
        worker,
        ToMaster::Started(vec![TaskRef {
            task,
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        }]),
    )
}

fn prefetch_shown(h: &Harness, name: &str) -> u32 {
    let status = h.core.status();
    let w = status
        .workers
        .iter()
        .find(|w| w.name == name)
        .expect("worker");
    w.prefetch
}

#[test]
fn holds_one_more_task_once_a_run_was_short() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.adaptive_worker("a", 1);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 4);
    assert_eq!(
        assignments(&out),
        vec![(a, ids[0], 1)],
        "nothing beyond the slot before a run says the tasks are short"
    );
    assert_eq!(prefetch_shown(&h, "a"), 0);
    start(&mut h, a, ids[0]);
    let out = finish_after(&mut h, a, ids[0], 0);
    assert_eq!(assignments(&out), vec![(a, ids[1], 1), (a, ids[2], 1)]);
    assert_eq!(prefetch_shown(&h, "a"), 1);
    // Task 1 ends; task 2 starts from the worker's own queue and task 3 takes the place.
    start(&mut h, a, ids[1]);
    let out = finish_after(&mut h, a, ids[1], 1);
    assert_eq!(assignments(&out), vec![(a, ids[3], 1)]);
}

#[test]
fn holds_none_while_runs_are_long() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.adaptive_worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 5);
    start(&mut h, a, ids[0]);
    let out = finish_after(&mut h, a, ids[0], 0);
    assert_eq!(assignments(&out).len(), 2, "one in the slot, one held");
    // A long run turns it off: the held task starts there, nothing more is sent.
    start(&mut h, a, ids[1]);
    let out = finish_after(&mut h, a, ids[1], 10_000);
    assert!(assignments(&out).is_empty(), "{out:?}");
    assert_eq!(prefetch_shown(&h, "a"), 0);
    start(&mut h, a, ids[2]);
    let out = finish_after(&mut h, a, ids[2], 10_000);
    assert_eq!(
        assignments(&out),
        vec![(a, ids[3], 1)],
        "only the freed slot"
    );
}

#[test]
fn a_slow_round_trip_makes_longer_runs_worth_a_held_task() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.adaptive_worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    // 200 ms from the Assign to its Started; a run of 1 s is then 5 round trips.
    h.advance(200);
    start(&mut h, a, ids[0]);
    let out = finish_after(&mut h, a, ids[0], 1_000);
    assert_eq!(assignments(&out).len(), 2, "{out:?}");
}

/// An adaptive worker `a` with one slot whose first task ran short: of the three tasks
/// submitted, the second is in its slot and the third is held beyond it.
fn one_short_run_then_two_queued() -> (Harness, ConnId, Vec<TaskId>) {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.adaptive_worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    start(&mut h, a, ids[0]);
    finish_after(&mut h, a, ids[0], 0);
    (h, a, ids)
}

#[test]
fn held_tasks_are_queued_again_when_the_worker_is_lost() {
    let (mut h, a, ids) = one_short_run_then_two_queued();
    assert_eq!(h.state(ids[2]), TaskState::Running, "held by a");
    h.core.handle_disconnect(h.now, a, "gone");
    h.drain();
    assert_eq!(h.state(ids[1]), TaskState::Queued);
    assert_eq!(h.state(ids[2]), TaskState::Queued);
    // A new worker has no history: it takes one for its slot (a new attempt: the master cannot
    // know whether a lost worker had started it).
    let (b, _, out) = h.adaptive_worker("b", 1);
    assert_eq!(assignments(&out), vec![(b, ids[1], 2)]);
    h.core.sanity_check();
}

#[test]
fn an_idle_worker_gets_the_held_task_back_from_a_busy_one() {
    let (mut h, a, ids) = one_short_run_then_two_queued();
    start(&mut h, a, ids[1]);
    // Task 1 runs long on a and task 2 waits behind it; b joins idle with nothing queued.
    let (_, _, out) = h.adaptive_worker("b", 1);
    let asked: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Retract(refs),
            } => Some((*conn, refs[0].task)),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![(a, ids[2])]);
}
