//! Idle clients are closed; waiting ones are not (issue 14, item 7).

use super::*;

fn closes(out: &[Output]) -> Vec<(ConnId, CloseReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_client_is_closed_and_a_waiting_one_is_not() {
    let mut h = Harness::with(CoreConfig {
        client_idle_timeout_ms: Some(10_000),
        ..CoreConfig::default()
    });
    let idle = h.client();
    let busy = h.client();
    let waiting = h.client();
    let (ids, _) = h.submit(waiting, vec![sleep_spec(0)], 1);
    h.msg(
        waiting,
        ToMaster::Wait {
            ids: ids.clone(),
            progress: false,
            jobs: vec![],
        },
    );
    let mut closed = Vec::new();
    for _ in 0..120 {
        // `busy` asks something every 5 s.
        if h.now % 5_000 == 0 {
            h.msg(busy, ToMaster::Status);
        }
        closed.extend(closes(&h.advance(100)));
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    let (conn, reason) = &closed[0];
    assert_eq!(*conn, idle);
    assert!(
        matches!(reason, CloseReason::ClientIdle { idle_ms } if *idle_ms >= 10_000),
        "{reason:?}"
    );
    // The waiting client still hears its answer when the task ends.
    let (w, _, out) = h.worker("a", 1);
    assert_eq!(assignments(&out), vec![(w, ids[0], 1)]);
    let out = h.finish(w, ids[0], 1, exited(0));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send { conn, msg: FromMaster::WaitDone { .. } } if *conn == waiting
    )));
    // Done waiting, it is idle like any other from now on.
    let mut closed = Vec::new();
    for _ in 0..120 {
        closed.extend(closes(&h.advance(100)));
    }
    assert!(closed.iter().any(|(c, _)| *c == waiting), "{closed:?}");
}

#[test]
fn no_timeout_closes_nobody() {
    let mut h = Harness::with(CoreConfig {
        client_idle_timeout_ms: None,
        ..CoreConfig::default()
    });
    h.client();
    for _ in 0..100 {
        assert!(closes(&h.advance(10_000)).is_empty());
    }
}

/// A client reading a long reply slowly sends nothing meanwhile: it is not idle.
#[test]
fn a_client_with_a_reply_in_progress_is_not_closed() {
    let mut h = Harness::with(CoreConfig {
        client_idle_timeout_ms: Some(10_000),
        ..CoreConfig::default()
    });
    let c = super::limits::big_results(&mut h, 200);
    // Results of large outputs: several chunks, made one per drain, and no drain is reported
    // (the harness's `drain` would report them all, so the core is driven by hand).
    h.core.handle_message(
        h.now,
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    );
    h.core.dispatch(h.now);
    while h.core.poll_output().is_some() {}
    assert!(!h.core.replies_pending().is_empty(), "a reply in progress");
    // (Its worker goes silent and is lost meanwhile: only the client's connection matters.)
    let of_client = |out: &[Output]| -> Vec<(ConnId, CloseReason)> {
        closes(out)
            .into_iter()
            .filter(|(conn, _)| *conn == c)
            .collect()
    };
    for _ in 0..300 {
        h.now += 100;
        h.core.handle_timeout(h.now);
        h.core.dispatch(h.now);
        let out: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
        assert!(of_client(&out).is_empty(), "{:?}", of_client(&out));
    }
    // Once it has drained it all, idleness counts again.
    h.drain();
    assert!(h.core.replies_pending().is_empty());
    let mut closed = Vec::new();
    for _ in 0..120 {
        closed.extend(of_client(&h.advance(100)));
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
}

/// A client the core closes for idleness leaves nothing behind: the session forgets it without a
/// `Departed`, so the core forgets its last job itself (it was kept for ever before).
#[test]
fn an_idle_client_closed_by_the_core_leaves_no_last_job() {
    let mut h = Harness::with(CoreConfig {
        client_idle_timeout_ms: Some(1_000),
        ..CoreConfig::default()
    });
    let c = h.client();
    h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(h.core.last_job.len(), 1);
    let mut closed = Vec::new();
    for _ in 0..30 {
        closed.extend(closes(&h.advance(100)));
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(h.core.last_job.is_empty());
    h.core.handle_disconnect(h.now, c, "closed");
    h.core.sanity_check();
}
