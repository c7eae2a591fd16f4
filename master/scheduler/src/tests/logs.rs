//! Task logs: the core accepts output only from the worker a run was handed to, and only for a
//! run that can still count; it ends a log once, naming the run whose outcome counts.

use super::*;
use protocol::{OutputChunk, OutputStream};

fn join(h: &mut Harness, name: &str) -> ConnId {
    let (conn, _, _) = h.worker(name, 1);
    h.msg(conn, ToMaster::Running(vec![]));
    conn
}

fn run(task: TaskId, attempt: u32) -> TaskRef {
    TaskRef {
        task,
        attempt: Attempt(attempt),
        incarnation: Incarnation(1),
    }
}

fn chunk(r: TaskRef, offset: u64, bytes: &[u8]) -> OutputChunk {
    OutputChunk {
        task: r,
        stream: OutputStream::Stdout,
        offset,
        bytes: bytes.to_vec(),
    }
}

fn log_ops(out: &[Output]) -> Vec<LogOp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Log(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn output_of_the_current_run_is_stored_and_ended_with_the_run_that_counts() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let w = join(&mut h, "w");
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(w, ids[0], 1)]);
    let out = h.msg(w, ToMaster::Output(vec![chunk(run(ids[0], 1), 0, b"hi\n")]));
    assert_eq!(
        log_ops(&out),
        vec![LogOp::Append(chunk(run(ids[0], 1), 0, b"hi\n"))]
    );
    assert_eq!(out.len(), 1, "nothing else: {out:?}");
    let out = h.finish(w, ids[0], 1, exited(0));
    assert_eq!(
        log_ops(&out),
        vec![LogOp::End {
            task: ids[0],
            attempt: Some(Attempt(1)),
            stdout_tail: "out-0".into(),
            stderr_tail: String::new(),
        }]
    );
    // Final: late output is dropped, and nothing is ended twice.
    let out = h.msg(w, ToMaster::Output(vec![chunk(run(ids[0], 1), 3, b"late")]));
    assert!(log_ops(&out).is_empty(), "{out:?}");
}

#[test]
fn a_task_that_printed_nothing_costs_the_store_nothing() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let w = join(&mut h, "w");
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let out = h.finish(w, ids[0], 1, exited(0));
    assert!(log_ops(&out).is_empty(), "{out:?}");
}

#[test]
fn output_from_another_worker_or_another_run_is_dropped() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let w = join(&mut h, "w");
    let rogue = join(&mut h, "rogue");
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(assignments(&out), vec![(w, ids[0], 1)]);
    // Another worker, the right run: forged.
    let out = h.msg(
        rogue,
        ToMaster::Output(vec![chunk(run(ids[0], 1), 0, b"x")]),
    );
    assert!(log_ops(&out).is_empty(), "{out:?}");
    // The right worker, a run it was never handed.
    let out = h.msg(w, ToMaster::Output(vec![chunk(run(ids[0], 2), 0, b"x")]));
    assert!(log_ops(&out).is_empty(), "{out:?}");
    // An unknown task.
    let out = h.msg(
        w,
        ToMaster::Output(vec![chunk(run(TaskId(99), 1), 0, b"x")]),
    );
    assert!(log_ops(&out).is_empty(), "{out:?}");
    // Too big a chunk, even of the right run.
    let big = vec![0u8; protocol::limits::MAX_OUTPUT_CHUNK_BYTES + 1];
    let out = h.msg(w, ToMaster::Output(vec![chunk(run(ids[0], 1), 0, &big)]));
    assert!(log_ops(&out).is_empty());
    // None of it closed anything: a worker that prints for a lost run is not at fault.
    assert!(out.iter().all(|o| !matches!(o, Output::Close { .. })));
}

#[test]
fn a_run_given_up_with_its_worker_may_still_write_its_log_from_that_worker_only() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let w = join(&mut h, "w");
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.core.handle_disconnect(h.now, w, "cut");
    h.drain();
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    let rogue = join(&mut h, "rogue");
    // The rogue took the task as attempt 2; attempt 1 from it is forged.
    let out = h.msg(
        rogue,
        ToMaster::Output(vec![chunk(run(ids[0], 1), 0, b"x")]),
    );
    assert!(log_ops(&out).is_empty(), "{out:?}");
    let out = h.msg(
        rogue,
        ToMaster::Output(vec![chunk(run(ids[0], 2), 0, b"y")]),
    );
    assert_eq!(log_ops(&out).len(), 1, "its own run: {out:?}");
}

#[test]
fn a_read_is_answered_by_the_store_with_the_tail_of_a_final_task() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let w = join(&mut h, "w");
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let read = |task| ToMaster::Log {
        task,
        stream: OutputStream::Stdout,
        offset: 0,
    };
    let out = h.msg(c, read(ids[0]));
    assert_eq!(
        log_ops(&out),
        vec![LogOp::Read {
            conn: c,
            task: ids[0],
            stream: OutputStream::Stdout,
            offset: 0,
            done: false,
            tail: None,
        }]
    );
    h.finish(w, ids[0], 1, exited(0));
    let out = h.msg(c, read(ids[0]));
    assert!(matches!(
        &log_ops(&out)[..],
        [LogOp::Read { done: true, tail: Some(t), .. }] if t == "out-0"
    ));
    let out = h.msg(c, read(TaskId(99)));
    assert!(matches!(
        &out[..],
        [Output::Send { msg: FromMaster::Error { message }, .. }] if message.contains("unknown task id 99")
    ));
    // A worker may not read logs, nor a client write them.
    let out = h.msg(c, ToMaster::Output(vec![chunk(run(ids[0], 1), 0, b"x")]));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Close { conn, .. } if *conn == c)));
}

#[test]
fn a_worker_is_told_a_log_limit_other_than_the_default_after_its_welcome() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (_, _, out) = h.worker("w", 1);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: FromMaster::LogLimit { .. },
                ..
            }
        )),
        "the default needs no word: {out:?}"
    );
    let mut h = Harness::with(CoreConfig {
        log_limit_bytes: 1000,
        ..CoreConfig::default()
    });
    let (conn, _, out) = h.worker("w", 1);
    let sent: Vec<&FromMaster> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => Some(msg),
            _ => None,
        })
        .collect();
    // The harness took the `Welcome` out; what follows it on joining is the limit.
    assert_eq!(
        sent,
        [&FromMaster::LogLimit {
            per_stream_bytes: 1000
        }]
    );
}
