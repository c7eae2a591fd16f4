//! Workers whose allocation ends: a task with a time request runs only where it fits (issue 12).

use super::*;

fn slurm_job(id: &str, time_left_ms: Option<u64>) -> Option<Box<AllocationInfo>> {
    Some(Box::new(AllocationInfo {
        manager: Manager::Slurm,
        job_id: id.into(),
        time_left_ms,
    }))
}

fn needing(ms: Option<u64>) -> TaskSpec {
    TaskSpec {
        time_request_ms: ms,
        ..sleep_spec(0)
    }
}

#[test]
fn a_time_request_skips_workers_whose_allocation_ends_too_soon() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (short, _, _) = h.worker_in("short", 4, 0, slurm_job("7", Some(60_000)));
    let (unlimited, _, _) = h.worker_in("unlimited", 1, 0, slurm_job("8", None));
    let c = h.client();
    // Two minutes needed: only the worker with no known end fits, one slot, so one waits.
    let (ids, out) = h.submit(c, vec![needing(Some(120_000))], 2);
    let placed = assignments(&out);
    assert_eq!(placed, vec![(unlimited, ids[0], 1)]);
    assert_eq!(h.state(ids[1]), TaskState::Queued);
    // A task that fits the short allocation still goes there.
    let (fits, out) = h.submit(c, vec![needing(Some(30_000))], 1);
    assert_eq!(assignments(&out), vec![(short, fits[0], 1)]);
    // Once the short allocation has less than 30 s left, nothing needing 30 s goes there.
    for _ in 0..40 {
        h.advance(1_000);
        for w in [short, unlimited] {
            h.msg(w, ToMaster::Load(LoadReport::default()));
        }
    }
    let (late, out) = h.submit(c, vec![needing(Some(30_000)), needing(None)], 1);
    assert_eq!(assignments(&out), vec![(short, late[1], 1)]);
    assert_eq!(h.state(late[0]), TaskState::Queued);
}

#[test]
fn status_names_the_allocation_and_its_end() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    h.worker_in("w", 1, 0, slurm_job("123", Some(5_000)));
    let status = h.core.status();
    let w = &status.workers[0];
    assert_eq!(w.allocation.as_deref(), Some("123"));
    assert_eq!(w.allocation_ends_ms, Some(h.now + 5_000));
}

#[test]
fn an_empty_or_oversized_job_id_is_refused() {
    for id in [
        String::new(),
        "9".repeat(protocol::limits::MAX_NAME_BYTES + 1),
    ] {
        let mut h = Harness::new(PolicyKind::LeastLoaded);
        let conn = h.connect();
        let info = WorkerInfo {
            allocation: slurm_job(&id, None),
            name: "w".into(),
            host: "h".into(),
            cpus: 1,
            slots: 1,
            pid: 1,
            group: None,
            prefetch: 0,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        };
        let out = h.msg(
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(info),
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        assert!(
            out.iter().any(|o| matches!(o, Output::Send {
                msg: FromMaster::Rejected { kind: RejectKind::InvalidInfo, reason }, ..
            } if reason.contains("job id"))),
            "{out:?}"
        );
    }
}
