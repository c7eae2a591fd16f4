//! Issue 14: sizes from outside are bounded where they enter, and nothing the core keeps or
//! sends can outgrow a frame.

use super::*;
use protocol::codec::encoded_len;
use protocol::limits::{MAX_ERROR_BYTES, MAX_NAME_BYTES, MAX_TAIL_BYTES};
use protocol::MAX_FRAME;

fn command(argv: Vec<String>, env: Vec<(String, String)>) -> TaskSpec {
    TaskSpec::new(TaskKind::Command {
        argv,
        env,
        cwd: None,
    })
}

/// The one `Error` sent to `conn` in `out`.
fn error_to(out: &[Output], conn: ConnId) -> String {
    let errors: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                msg: FromMaster::Error { message },
            } if *c == conn => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    errors[0].to_string()
}

#[test]
fn a_raw_submit_with_a_bad_env_key_is_refused_naming_the_key() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let bad = command(vec!["true".into()], vec![("A=B".into(), "x".into())]);
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0), bad],
            count: 1,
            name: None,
        },
    );
    let message = error_to(&out, c);
    assert!(message.contains("\"A=B\""), "{message}");
    assert!(message.starts_with("task 2 of the submission"), "{message}");
    assert_eq!(out.len(), 1, "nothing accepted, nothing journaled: {out:?}");
    assert!(h.core.task(TaskId(1)).is_none());
}

#[test]
fn a_huge_group_name_is_refused_at_submit() {
    // Issue 14: 200 tasks for a 100 KB group name stayed running forever (Assign never sent).
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let spec = TaskSpec {
        group: Some("g".repeat(100 << 10)),
        ..sleep_spec(0)
    };
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![spec],
            count: 200,
            name: None,
        },
    );
    let message = error_to(&out, c);
    assert!(
        message.contains(&format!("1 to {MAX_NAME_BYTES} bytes")),
        "{message}"
    );
    assert!(h.core.task(TaskId(1)).is_none());
}

#[test]
fn a_workers_oversized_report_is_cut_before_it_is_kept_or_journaled() {
    let mut h = Harness::with(CoreConfig {
        persist: true,
        ..CoreConfig::default()
    });
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let program = "p".repeat(120_000);
    let out = h.finish(
        w,
        ids[0],
        1,
        TaskOutcome::Failed {
            error: format!("cannot run `{program}`: No such file"),
        },
    );
    let journaled: Vec<&Outcome> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Finished { outcome, .. }) => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(journaled.len(), 1);
    let error = journaled[0].error.as_deref().unwrap_or_default();
    assert!(error.len() <= MAX_ERROR_BYTES, "{} bytes", error.len());
    assert!(error.starts_with("cannot run `ppp") && error.ends_with("bytes cut]"));
    let out = h.finish(
        w,
        ids[1],
        1,
        TaskOutcome::Exited {
            code: 0,
            stdout_tail: format!("start{}", "o".repeat(4 * MAX_TAIL_BYTES)),
            stderr_tail: "e".repeat(3 * MAX_TAIL_BYTES),
        },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Persist(_))));
    let r = h.core.task(ids[1]).expect("exists");
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!(r.stdout.len(), MAX_TAIL_BYTES);
    assert_eq!(r.stderr.len(), MAX_TAIL_BYTES);
    assert!(encoded_len(&r) < MAX_FRAME / 64);
}

#[test]
fn an_over_limit_spec_from_an_old_journal_fails_at_recovery() {
    let mut h = Harness::with(CoreConfig {
        incarnation: Incarnation(2),
        persist: true,
        ..CoreConfig::default()
    });
    let now = h.now;
    let huge = Arc::new(TaskSpec {
        group: Some("g".repeat(100 << 10)),
        ..sleep_spec(0)
    });
    let fine = Arc::new(sleep_spec(0));
    let restored = vec![
        RestoredTask {
            id: TaskId(1),
            spec: huge.clone(),
            submitted_ms: 5,
            stored: None,
            outcome: None,
        },
        RestoredTask {
            id: TaskId(2),
            spec: huge,
            submitted_ms: 5,
            stored: None,
            outcome: None,
        },
        RestoredTask {
            id: TaskId(3),
            spec: fine,
            submitted_ms: 5,
            stored: None,
            outcome: Some(Box::new(Outcome {
                state: TaskState::Failed,
                attempts: 1,
                copies: 1,
                worker: Some("w".repeat(1 << 20).into()),
                exit_code: None,
                stdout: "o".repeat(1 << 20),
                stderr: String::new(),
                error: Some("x".repeat(1 << 20)),
                started_ms: Some(6),
                finished_ms: 7,
            })),
        },
    ];
    assert_eq!(
        h.core
            .restore(now, restored, history(&[(1, 1), (2, 4)]), Vec::new()),
        Ok((3, 0)),
        "the over-limit tasks are final, the master serves on"
    );
    for id in [TaskId(1), TaskId(2)] {
        let r = h.core.task(id).expect("kept");
        assert_eq!(r.state, TaskState::Failed);
        let error = r.error.unwrap_or_default();
        assert!(
            error.starts_with("refused at recovery: group name must be"),
            "{error}"
        );
    }
    let old = h.core.task(TaskId(3)).expect("kept");
    assert!(old.stdout.len() <= MAX_TAIL_BYTES);
    assert!(old.error.map_or(0, |e| e.len()) <= MAX_ERROR_BYTES);
    assert!(old.worker.map_or(0, |w| w.len()) <= MAX_NAME_BYTES);
    let out = h.drain();
    let failed: Vec<TaskId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Finished { id, .. }) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![TaskId(1), TaskId(2)], "made durable: {out:?}");
    // Nothing is assigned from them.
    let (_, _, out) = h.worker("a", 4);
    assert!(assignments(&out).is_empty(), "{out:?}");
}

#[test]
fn a_submission_past_max_tasks_is_refused_whole_and_the_master_serves_on() {
    let mut h = Harness::with(CoreConfig {
        max_tasks: 1_000,
        ..CoreConfig::default()
    });
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 600);
    assert_eq!(ids.len(), 600);
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0)],
            count: 600,
            name: None,
        },
    );
    let message = error_to(&out, c);
    assert!(
        message.contains("holds 600") && message.contains("--max-tasks) is 1000"),
        "{message}"
    );
    assert!(h.core.task(TaskId(601)).is_none(), "nothing of it accepted");
    let (more, _) = h.submit(c, vec![sleep_spec(0)], 400);
    assert_eq!(more.len(), 400, "up to the limit exactly");
    assert_eq!(h.core.status().queued, 1_000);
}

/// The chunks sent to `conn` in `out`: (tasks, more) of each `Results`.
fn result_chunks(out: &[Output], conn: ConnId) -> Vec<(usize, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                msg: FromMaster::Results { tasks, more },
            } if *c == conn => Some((tasks.len(), *more)),
            _ => None,
        })
        .collect()
}

/// Finished tasks whose results are about 100 KB each: 40 make a reply of about 1 chunk per 40.
pub(super) fn big_results(h: &mut Harness, n: u32) -> ConnId {
    let (w, _, _) = h.worker("a", n);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], n);
    for id in ids {
        h.finish(
            w,
            id,
            1,
            TaskOutcome::Exited {
                code: 0,
                stdout_tail: "o".repeat(MAX_TAIL_BYTES),
                stderr_tail: "e".repeat(MAX_TAIL_BYTES / 2),
            },
        );
    }
    c
}

#[test]
fn a_chunked_reply_is_made_one_chunk_per_drain_and_the_client_waits_meanwhile() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = big_results(&mut h, 200);
    let idle = Backlog::default();
    h.core.handle_message(
        h.now,
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    );
    h.core.dispatch(h.now);
    let out: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
    let first = result_chunks(&out, c);
    assert_eq!(first.len(), 1, "one chunk until the shell says it drained");
    assert!(first[0].1, "more follow");
    assert!(
        !h.core.wants_input(c, idle),
        "not read while the reply is unfinished"
    );
    // A full buffer makes nothing.
    let full = Backlog {
        conn_bytes: DRAIN_LOW_WATER_BYTES,
        total_bytes: DRAIN_LOW_WATER_BYTES,
    };
    h.core.handle_drain(h.now, c, full);
    assert!(h.core.poll_output().is_none());
    // Nor does the global budget being spent.
    let spent = Backlog {
        conn_bytes: 0,
        total_bytes: REPLY_BYTES_IN_FLIGHT_MAX,
    };
    h.core.handle_drain(h.now, c, spent);
    assert!(h.core.poll_output().is_none());
    let mut tasks = first[0].0;
    let mut chunks = 1;
    loop {
        h.core.handle_drain(h.now, c, idle);
        let out: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
        let got = result_chunks(&out, c);
        if got.is_empty() {
            break;
        }
        assert_eq!(got.len(), 1, "one chunk per drain");
        assert!(out.iter().all(|o| match o {
            Output::Send { msg, .. } => encoded_len(msg) <= REPLY_FRAME_BUDGET + 64,
            _ => true,
        }));
        tasks += got[0].0;
        chunks += 1;
        assert!(
            !h.core.wants_input(c, idle),
            "still not read: the last chunk has not drained"
        );
        if !got[0].1 {
            break;
        }
        assert!(chunks < 100, "bounded");
    }
    assert_eq!(tasks, 200);
    assert!(chunks >= 5, "{chunks} chunks");
    h.core.handle_drain(h.now, c, idle);
    assert!(
        h.core.wants_input(c, idle),
        "read again once the last chunk drained"
    );
    assert!(h.core.replies_pending().is_empty());
    h.core.sanity_check();
}

#[test]
fn clients_are_paused_by_their_backlog_and_the_global_budget_but_workers_never() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let own = Backlog {
        conn_bytes: CLIENT_BACKLOG_MAX_BYTES,
        total_bytes: CLIENT_BACKLOG_MAX_BYTES,
    };
    let everyone = Backlog {
        conn_bytes: 0,
        total_bytes: REPLY_BYTES_IN_FLIGHT_MAX,
    };
    for b in [own, everyone] {
        assert!(!h.core.wants_input(c, b), "{b:?}");
        assert!(
            h.core.wants_input(w, b),
            "a worker's heartbeats must not stall: {b:?}"
        );
    }
    assert!(h.core.wants_input(c, Backlog::default()));
}

#[test]
fn a_shell_that_reads_anyway_gets_replies_in_order_not_interleaved() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = big_results(&mut h, 100);
    // Two requests back to back with no drain between them.
    h.core.handle_message(
        h.now,
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    );
    h.core.handle_message(
        h.now,
        c,
        ToMaster::Results {
            ids: vec![TaskId(3)],
            jobs: vec![],
        },
    );
    let out = h.drain();
    let chunks = result_chunks(&out, c);
    let ends: Vec<usize> = chunks
        .iter()
        .enumerate()
        .filter(|(_, (_, more))| !more)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ends.len(), 2, "{chunks:?}");
    assert_eq!(ends[1], chunks.len() - 1);
    assert_eq!(chunks[..=ends[0]].iter().map(|c| c.0).sum::<usize>(), 100);
    assert_eq!(chunks[ends[0] + 1..], [(1, false)]);
}

#[test]
fn status_comes_in_chunks_cut_by_their_encoded_size() {
    // Issue 14: a status of workers with long host names did not fit a frame. Names are now
    // limited at Hello; enough workers at the limits still make a status above one chunk.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let workers = 8_000;
    for i in 0..workers {
        let conn = ConnId(1_000 + i);
        h.core
            .handle_connect(h.now, conn, format!("10.0.0.1:{i}"), vec![9; 32]);
        let name = format!("{i:0>width$}", width = MAX_NAME_BYTES);
        h.core.handle_message(
            h.now,
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(WorkerInfo {
                    allocation: None,
                    name,
                    host: "h".repeat(MAX_NAME_BYTES),
                    cpus: 1,
                    slots: 1,
                    pid: 1,
                    group: Some("g".repeat(MAX_NAME_BYTES)),
                    prefetch: 0,
                    prefetch_adaptive: false,
                    heartbeat_interval_ms: 0,
                }),
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        while h.core.poll_output().is_some() {}
    }
    let c = h.client();
    let out = h.msg(c, ToMaster::Status);
    let chunks: Vec<(usize, bool)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                msg: msg @ FromMaster::Status { report, more },
                ..
            } => {
                assert!(encoded_len(msg) <= REPLY_FRAME_BUDGET + 64);
                Some((report.workers.len(), *more))
            }
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert_eq!(chunks.iter().map(|c| c.0).sum::<usize>(), workers);
    assert_eq!(chunks.iter().filter(|c| !c.1).count(), 1);
    assert!(!chunks[chunks.len() - 1].1, "the last says so");
}

#[test]
fn an_assignment_that_cannot_fit_a_frame_fails_its_task_saying_why() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    // The largest spec the limits accept still travels.
    let largest = command(
        vec!["a".repeat(protocol::limits::MAX_COMMAND_BYTES - 2)],
        Vec::new(),
    );
    let (ids, out) = h.submit(c, vec![largest], 1);
    assert_eq!(assignments(&out), vec![(w, ids[0], 1)]);
    // One that no submit accepts (as an old journal's could have been, before the limits and
    // recovery's check) goes around them, straight into the table: it fails, saying why,
    // instead of staying `running` with an `Assign` that is never sent.
    let huge = Arc::new(command(vec!["b".repeat(MAX_FRAME)], Vec::new()));
    let first = h.core.tasks.next_id();
    h.core.tasks.open_job("huge".into(), first, 1, h.now);
    let id = h.core.tasks.add(huge, h.now);
    h.core.enqueue(id);
    let out = h.drain();
    assert!(assignments(&out).is_empty(), "{out:?}");
    let r = h.core.task(id).expect("exists");
    assert_eq!(r.state, TaskState::Failed);
    let error = r.error.unwrap_or_default();
    assert!(error.contains("more than the frame limit"), "{error}");
    assert!(
        h.core.wants_input(w, Backlog::default()),
        "the worker serves on"
    );
}
