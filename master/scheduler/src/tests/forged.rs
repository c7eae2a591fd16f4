//! Reports of runs a worker was never handed are dropped (issue 14, item 7: forged `Finished`).

use super::*;

fn grouped(group: Option<&str>) -> TaskSpec {
    TaskSpec {
        group: group.map(str::to_string),
        ..sleep_spec(0)
    }
}

/// Joins worker `name` of process `pid` in `group`, ready for work; returns its connection.
fn join(h: &mut Harness, name: &str, pid: u32, group: Option<&str>) -> ConnId {
    let conn = hello(h, name, pid, group);
    h.msg(conn, ToMaster::Running(vec![]));
    conn
}

/// Says `Hello` as worker `name`; the worker is welcomed and gets no work before `Running`.
fn hello(h: &mut Harness, name: &str, pid: u32, group: Option<&str>) -> ConnId {
    let conn = h.connect();
    let out = h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker(WorkerInfo {
                allocation: None,
                name: name.into(),
                host: "h".into(),
                cpus: 1,
                slots: 1,
                pid,
                group: group.map(str::to_string),
                prefetch: 0,
                prefetch_adaptive: false,
                heartbeat_interval_ms: 0,
            }),
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: FromMaster::Welcome { .. },
                ..
            }
        )),
        "{out:?}"
    );
    conn
}

fn run(task: TaskId, attempt: u32, incarnation: u32) -> TaskRef {
    TaskRef {
        task,
        attempt: Attempt(attempt),
        incarnation: Incarnation(incarnation),
    }
}

fn cancels_to(out: &[Output], to: ConnId) -> Vec<TaskRef> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Cancel(refs),
            } if *conn == to => Some(refs.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A task waiting for a worker of its group: another worker's `Finished` for it (an attempt it
/// was never handed, of a group it is not in) does not end it.
#[test]
fn a_finished_for_a_task_never_handed_out_is_dropped() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let rogue = join(&mut h, "rogue", 2, None);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![grouped(Some("x"))], 1);
    assert!(assignments(&out).is_empty(), "no worker of group x");
    let out = h.finish(rogue, ids[0], 1, exited(0));
    assert!(
        out.iter().all(|o| !matches!(o, Output::Close { .. })),
        "{out:?}"
    );
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    // Nor does a `Running` report get it adopted: the rogue is told to stop it.
    let out = h.msg(rogue, ToMaster::Running(vec![run(ids[0], 1, 1)]));
    assert_eq!(cancels_to(&out, rogue), vec![run(ids[0], 1, 1)]);
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    // The task still runs where it belongs, and ends with its own result.
    let x = hello(&mut h, "x1", 3, Some("x"));
    let out = h.msg(x, ToMaster::Running(vec![]));
    assert_eq!(assignments(&out), vec![(x, ids[0], 1)]);
    h.finish(x, ids[0], 1, exited(0));
    let t = h.core.task(ids[0]).expect("task");
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Succeeded, Some("x1"))
    );
}

/// A run given up when its worker was lost is credited when that worker comes back and says it
/// finished, and only then: another worker's report of the same run is dropped.
#[test]
fn only_the_worker_a_run_was_handed_to_may_report_it_late() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let a = join(&mut h, "a", 1, Some("x"));
    let rogue = join(&mut h, "rogue", 2, None);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![grouped(Some("x"))], 1);
    assert_eq!(assignments(&out), vec![(a, ids[0], 1)]);
    h.core.handle_disconnect(h.now, a, "cut");
    h.drain();
    assert_eq!(h.state(ids[0]), TaskState::Queued, "waiting to run again");
    h.finish(rogue, ids[0], 1, exited(0));
    assert_eq!(
        h.state(ids[0]),
        TaskState::Queued,
        "the rogue's result is dropped"
    );
    let out = h.msg(rogue, ToMaster::Running(vec![run(ids[0], 1, 1)]));
    assert_eq!(cancels_to(&out, rogue), vec![run(ids[0], 1, 1)]);
    // The worker it ran on comes back and reports it in its first turn: kept, not re-run.
    let a = hello(&mut h, "a", 1, Some("x"));
    h.core.handle_message(h.now, a, ToMaster::Running(vec![]));
    let out = h.finish(a, ids[0], 1, exited(0));
    assert!(assignments(&out).is_empty(), "{out:?}");
    let t = h.core.task(ids[0]).expect("task");
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.worker.as_deref(), Some("a"));
    assert_eq!(t.stdout, "out-0");
    // Found by an adversarial run: a credited result had no start, so `results` showed no time.
    assert_eq!(
        (t.started_ms, t.finished_ms),
        (Some(h.now - 3), Some(h.now)),
        "started its run time (3 ms) before it finished"
    );
}

/// After a restart nobody knows who ran an earlier incarnation's attempts; a report of one is
/// still refused from a worker that could never have been given the task (another group).
#[test]
fn an_earlier_incarnations_run_is_refused_from_a_worker_outside_its_group() {
    let mut h = Harness::restarted();
    let now = h.now;
    let restored = vec![RestoredTask {
        id: TaskId(1),
        spec: Arc::new(grouped(Some("x"))),
        submitted_ms: 0,
        stored: None,
        outcome: None,
    }];
    assert_eq!(
        h.core
            .restore(now, restored, history(&[(1, 1), (2, 2)]), Vec::new()),
        Ok((0, 1))
    );
    let rogue = join(&mut h, "rogue", 2, Some("y"));
    h.msg(
        rogue,
        ToMaster::Finished(vec![run(TaskId(1), 1, 1).completion(exited(0), 3)]),
    );
    assert_eq!(h.state(TaskId(1)), TaskState::Queued);
    let x = join(&mut h, "x1", 3, Some("x"));
    h.msg(
        x,
        ToMaster::Finished(vec![run(TaskId(1), 1, 1).completion(exited(0), 3)]),
    );
    assert_eq!(h.state(TaskId(1)), TaskState::Succeeded);
}
