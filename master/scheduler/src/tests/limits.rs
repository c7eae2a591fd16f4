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
            outcome: None,
        },
        RestoredTask {
            id: TaskId(2),
            spec: huge,
            submitted_ms: 5,
            outcome: None,
        },
        RestoredTask {
            id: TaskId(3),
            spec: fine,
            submitted_ms: 5,
            outcome: Some(Box::new(Outcome {
                state: TaskState::Failed,
                attempts: 1,
                copies: 1,
                worker: Some("w".repeat(1 << 20)),
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
        h.core.restore(now, restored, history(&[(1, 1), (2, 4)])),
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
