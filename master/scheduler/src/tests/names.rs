//! Worker names: one live worker per name (issue 14, item 5).

use super::*;

fn info(name: &str, pid: u32) -> WorkerInfo {
    WorkerInfo {
        allocation: None,
        name: name.into(),
        host: "h".into(),
        cpus: 2,
        slots: 2,
        pid,
        group: None,
        prefetch: 0,
        prefetch_adaptive: false,
        heartbeat_interval_ms: 0,
    }
}

/// Says `Hello` as worker `name` of process `pid` on a new connection.
fn hello(h: &mut Harness, name: &str, pid: u32) -> (ConnId, Vec<Output>) {
    let conn = h.connect();
    let out = h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker(info(name, pid)),
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    (conn, out)
}

fn welcomed(out: &[Output]) -> Option<WorkerId> {
    out.iter().find_map(|o| match o {
        Output::Send {
            msg: FromMaster::Welcome { worker_id, .. },
            ..
        } => *worker_id,
        _ => None,
    })
}

fn refused_kind(out: &[Output]) -> Option<RejectKind> {
    out.iter().find_map(|o| match o {
        Output::Send {
            msg: FromMaster::Rejected { kind, .. },
            ..
        } => Some(*kind),
        _ => None,
    })
}

#[test]
fn a_second_live_worker_with_the_same_name_is_refused() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (first, out) = hello(&mut h, "w", 100);
    let id = welcomed(&out).expect("the first is welcomed");
    h.msg(first, ToMaster::Running(vec![]));
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 2);
    assert_eq!(assignments(&out).len(), 2);
    h.advance(500);
    let (second, out) = hello(&mut h, "w", 200);
    assert_eq!(refused_kind(&out), Some(RejectKind::NameInUse), "{out:?}");
    let Some(Output::Send {
        msg: FromMaster::Rejected { reason, .. },
        ..
    }) = out.first()
    else {
        panic!("{out:?}");
    };
    assert!(reason.contains("in use"), "{reason}");
    assert!(
        matches!(out.last(), Some(Output::Close { conn, .. }) if *conn == second),
        "only the newcomer is closed: {out:?}"
    );
    assert_eq!(out.len(), 2, "nothing else happens: {out:?}");
    // The first keeps its tasks and its connection.
    for &t in &ids {
        assert_eq!(h.state(t), TaskState::Running);
    }
    let out = h.finish(first, ids[0], 1, exited(0));
    assert!(out.iter().all(|o| !matches!(o, Output::Close { .. })));
    assert_eq!(h.state(ids[0]), TaskState::Succeeded);
    assert_eq!(h.core.task(ids[0]).map(|t| t.attempts), Some(1));
    // Gone (the socket closed): the newcomer takes the name and the id back.
    h.core.handle_disconnect(h.now, first, "closed");
    h.drain();
    let (_, out) = hello(&mut h, "w", 200);
    assert_eq!(welcomed(&out), Some(id));
}

#[test]
fn a_silent_holder_past_the_timeout_gives_its_name_up() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (first, out) = hello(&mut h, "w", 100);
    let id = welcomed(&out).expect("welcomed");
    h.msg(first, ToMaster::Running(vec![]));
    // Silent for the whole heartbeat timeout: declared dead by the sweep, so its name is free.
    let timeout = CoreConfig::default().heartbeat_timeout_ms;
    let out = h.advance(timeout + 200);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Close { conn, .. } if *conn == first)),
        "{out:?}"
    );
    let (_, out) = hello(&mut h, "w", 200);
    assert_eq!(welcomed(&out), Some(id), "{out:?}");
}

/// The same process (host and pid) coming back before its old connection was seen to die
/// replaces it, as before: that is a reconnect, not a second worker.
#[test]
fn the_same_process_reconnecting_replaces_its_old_connection() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (first, out) = hello(&mut h, "w", 100);
    let id = welcomed(&out).expect("welcomed");
    h.msg(first, ToMaster::Running(vec![]));
    let (_, out) = hello(&mut h, "w", 100);
    assert_eq!(welcomed(&out), Some(id));
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Close { conn, reason: CloseReason::Replaced } if *conn == first
        )),
        "{out:?}"
    );
}

/// The heartbeat a worker asks for is what its `Welcome` says, unless it cannot meet the
/// timeout (more than half of it): then the master's own interval.
#[test]
fn a_heartbeat_too_slow_for_the_timeout_is_replaced_by_ours() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    // The defaults: heartbeat 1 s, timeout 3 s.
    for (i, (asked, told)) in [
        (0, 1_000),
        (250, 250),
        (1_500, 1_500),
        (1_501, 1_000),
        (5_000, 1_000),
    ]
    .into_iter()
    .enumerate()
    {
        let conn = h.connect();
        let out = h.msg(
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(WorkerInfo {
                    heartbeat_interval_ms: asked,
                    ..info(&format!("w{i}"), 1)
                }),
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        let got = out.iter().find_map(|o| match o {
            Output::Send {
                msg:
                    FromMaster::Welcome {
                        heartbeat_interval_ms,
                        ..
                    },
                ..
            } => Some(*heartbeat_interval_ms),
            _ => None,
        });
        assert_eq!(got, Some(told), "asked {asked}");
    }
}
