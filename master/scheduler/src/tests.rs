//! Core tests: no sockets, a fake clock, and every output checked (nothing unexpected is sent).

use super::*;
use protocol::auth::RoleTag;
use protocol::{
    auth, AllocationInfo, Attempt, Incarnation, LoadReport, Manager, RejectKind, Role, TaskKind,
    WorkerInfo, PROTOCOL_VERSION,
};

mod copies;
mod deps;
mod forged;
mod forget;
mod idle;
mod jobs;
mod lifetimes;
mod limits;
mod logs;
mod names;
mod observe;
mod pages;
mod prefetch;
mod warnings;

struct Harness {
    core: Core,
    now: u64,
    next_conn: usize,
}

fn sleep_spec(priority: i32) -> TaskSpec {
    TaskSpec {
        priority,
        ..TaskSpec::new(TaskKind::Sleep { ms: 10 })
    }
}

fn exited(code: i32) -> TaskOutcome {
    TaskOutcome::Exited {
        code,
        stdout_tail: format!("out-{code}"),
        stderr_tail: String::new(),
    }
}

/// `(incarnation, first_id)` pairs, oldest first.
fn history(starts: &[(u32, u64)]) -> Vec<EpochStart> {
    starts
        .iter()
        .map(|&(i, first)| EpochStart {
            incarnation: Incarnation(i),
            first_id: TaskId(first),
        })
        .collect()
}

impl Harness {
    fn new(policy: PolicyKind) -> Self {
        Self::with(CoreConfig {
            policy,
            ..CoreConfig::default()
        })
    }

    /// The second incarnation of a master (call `core.restore` with a matching history).
    fn restarted() -> Self {
        Self::with(CoreConfig {
            incarnation: Incarnation(2),
            ..CoreConfig::default()
        })
    }

    fn with(config: CoreConfig) -> Self {
        Harness {
            core: Core::new(config),
            now: 1_000_000,
            next_conn: 1,
        }
    }

    /// One shell turn with clients that read at once: chunked replies come out whole.
    fn drain(&mut self) -> Vec<Output> {
        self.core.dispatch(self.now);
        let mut out: Vec<Output> = std::iter::from_fn(|| self.core.poll_output()).collect();
        loop {
            let pending = self.core.replies_pending();
            if pending.is_empty() {
                break;
            }
            for conn in pending {
                self.core.handle_drain(self.now, conn, Backlog::default());
            }
            out.extend(std::iter::from_fn(|| self.core.poll_output()));
        }
        self.core.sanity_check();
        out
    }

    fn connect(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.core
            .handle_connect(self.now, conn, format!("127.0.0.1:{}", conn.0), vec![9; 32]);
        let out = self.drain();
        assert!(matches!(
            &out[..],
            [Output::Send {
                msg: FromMaster::Greeting { .. },
                ..
            }]
        ));
        conn
    }

    /// A worker that has joined; returns its connection and id, and what it was sent on joining.
    fn worker(&mut self, name: &str, slots: u32) -> (ConnId, WorkerId, Vec<Output>) {
        self.worker_with(name, slots, 0)
    }

    /// A worker that holds up to `prefetch` unstarted tasks beyond its slots.
    fn worker_with(
        &mut self,
        name: &str,
        slots: u32,
        prefetch: u32,
    ) -> (ConnId, WorkerId, Vec<Output>) {
        self.join_worker(name, slots, prefetch, false, None, None)
    }

    /// A worker started without `--prefetch`: one task beyond its slots, while its runs are short.
    fn adaptive_worker(&mut self, name: &str, slots: u32) -> (ConnId, WorkerId, Vec<Output>) {
        self.join_worker(name, slots, 1, true, None, None)
    }

    /// A worker that runs in a batch-system allocation (`None`: none).
    fn worker_in(
        &mut self,
        name: &str,
        slots: u32,
        prefetch: u32,
        allocation: Option<Box<AllocationInfo>>,
    ) -> (ConnId, WorkerId, Vec<Output>) {
        self.join_worker(name, slots, prefetch, false, allocation, None)
    }

    /// A worker of `group` (`worker --group`) that prefetches up to `prefetch`.
    fn grouped_worker(
        &mut self,
        name: &str,
        slots: u32,
        prefetch: u32,
        group: &str,
    ) -> (ConnId, WorkerId, Vec<Output>) {
        self.join_worker(name, slots, prefetch, false, None, Some(group))
    }

    fn join_worker(
        &mut self,
        name: &str,
        slots: u32,
        prefetch: u32,
        prefetch_adaptive: bool,
        allocation: Option<Box<AllocationInfo>>,
        group: Option<&str>,
    ) -> (ConnId, WorkerId, Vec<Output>) {
        let conn = self.connect();
        self.core.handle_message(
            self.now,
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(WorkerInfo {
                    allocation,
                    name: name.into(),
                    host: "h".into(),
                    cpus: 2,
                    slots,
                    pid: 1,
                    group: group.map(String::from),
                    prefetch,
                    prefetch_adaptive,
                    heartbeat_interval_ms: 0,
                }),
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        let mut out = self.drain();
        let id = match out.remove(0) {
            Output::Send {
                msg:
                    FromMaster::Welcome {
                        worker_id: Some(id),
                        ..
                    },
                ..
            } => id,
            other => panic!("expected Welcome, got {other:?}"),
        };
        assert!(
            assignments(&out).is_empty(),
            "no work before the worker says what it runs"
        );
        self.core
            .handle_message(self.now, conn, ToMaster::Running(vec![]));
        out.extend(self.drain());
        (conn, id, out)
    }

    fn client(&mut self) -> ConnId {
        let conn = self.connect();
        self.core.handle_message(
            self.now,
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Client,
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        let out = self.drain();
        assert!(matches!(
            &out[..],
            [Output::Send {
                msg: FromMaster::Welcome {
                    worker_id: None,
                    ..
                },
                ..
            }]
        ));
        conn
    }

    fn msg(&mut self, conn: ConnId, msg: ToMaster) -> Vec<Output> {
        self.core.handle_message(self.now, conn, msg);
        self.drain()
    }

    /// Submits and returns the new ids, plus any other output (assignments).
    fn submit(
        &mut self,
        client: ConnId,
        specs: Vec<TaskSpec>,
        count: u32,
    ) -> (Vec<TaskId>, Vec<Output>) {
        let mut out = self.msg(
            client,
            ToMaster::Submit {
                specs,
                count,
                name: None,
            },
        );
        let pos = out
            .iter()
            .position(|o| matches!(o, Output::Send { conn, msg: FromMaster::Submitted { .. } } if *conn == client))
            .expect("Submitted reply");
        let Output::Send {
            msg: FromMaster::Submitted { first, count, .. },
            ..
        } = out.remove(pos)
        else {
            unreachable!()
        };
        ((first.0..first.0 + count).map(TaskId).collect(), out)
    }

    fn finish(
        &mut self,
        worker: ConnId,
        task: TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) -> Vec<Output> {
        self.msg(
            worker,
            ToMaster::Finished(vec![Completion {
                task,
                attempt: Attempt(attempt),
                incarnation: Incarnation(1),
                outcome,
                run_ms: 3,
            }]),
        )
    }

    fn advance(&mut self, ms: u64) -> Vec<Output> {
        self.now += ms;
        self.core.handle_timeout(self.now);
        self.drain()
    }

    fn state(&self, id: TaskId) -> TaskState {
        self.core.task(id).expect("task exists").state
    }
}

/// (conn, task, attempt) of every assignment in `out`.
fn assignments(out: &[Output]) -> Vec<(ConnId, TaskId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Assign(a),
            } => Some(a.iter().map(move |a| (*conn, a.task, a.attempt.0))),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn tasks_wait_for_a_worker_and_respect_slots() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 5);
    assert_eq!(ids.len(), 5);
    assert!(
        out.is_empty(),
        "no worker yet: nothing else sent, got {out:?}"
    );
    let (w, _, out) = h.worker("a", 2);
    assert_eq!(
        assignments(&out),
        vec![(w, TaskId(1), 1), (w, TaskId(2), 1)],
        "two slots, two tasks, one frame"
    );
    assert_eq!(out.len(), 1, "one batched Assign frame");
    let out = h.finish(w, TaskId(1), 1, exited(0));
    assert_eq!(assignments(&out), vec![(w, TaskId(3), 1)]);
    assert_eq!(h.state(TaskId(1)), TaskState::Succeeded);
    assert_eq!(
        h.core.task(TaskId(1)).and_then(|t| t.worker),
        Some("a".into())
    );
}

#[test]
fn tasks_in_flight_counts_queued_and_running_until_they_end() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    assert_eq!(h.core.tasks_in_flight(), 0);
    h.submit(c, vec![sleep_spec(0)], 3);
    let (w, _, _) = h.worker("a", 2);
    assert_eq!(h.core.tasks_in_flight(), 3, "two running, one queued");
    for id in 1..=3 {
        h.finish(w, TaskId(id), 1, exited(0));
    }
    assert_eq!(h.core.tasks_in_flight(), 0, "all three final");
}

#[test]
fn least_loaded_prefers_idle_cpu_and_counts_assignments_immediately() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (busy, _, _) = h.worker("busy", 4);
    let (idle, _, _) = h.worker("idle", 4);
    h.msg(
        busy,
        ToMaster::Load(LoadReport {
            cpu_percent: 90.0,
            ..LoadReport::default()
        }),
    );
    h.msg(
        idle,
        ToMaster::Load(LoadReport {
            cpu_percent: 10.0,
            ..LoadReport::default()
        }),
    );
    let c = h.client();
    let (_, out) = h.submit(c, vec![sleep_spec(0)], 5);
    let a = assignments(&out);
    // idle: scores 0.1, 0.25, 0.5, 0.75 (<0.9) take four; the fifth goes to busy (0.9 < 1.0).
    assert_eq!(a.iter().filter(|x| x.0 == idle).count(), 4);
    assert_eq!(a.iter().filter(|x| x.0 == busy).count(), 1);
}

#[test]
fn round_robin_alternates() {
    let mut h = Harness::new(PolicyKind::RoundRobin);
    let (a, _, _) = h.worker("a", 4);
    let (b, _, _) = h.worker("b", 4);
    let c = h.client();
    let (_, out) = h.submit(c, vec![sleep_spec(0)], 4);
    let mut got = assignments(&out);
    got.sort_by_key(|x| x.1);
    let conns: Vec<ConnId> = got.iter().map(|x| x.0).collect();
    assert_eq!(conns, vec![a, b, a, b]);
}

#[test]
fn higher_priority_runs_first_fifo_among_equals() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (first, _) = h.submit(c, vec![sleep_spec(0)], 1); // takes the only slot
    let (low, _) = h.submit(c, vec![sleep_spec(0)], 3);
    let (high, _) = h.submit(c, vec![sleep_spec(9)], 2);
    let mut order = Vec::new();
    let mut running = first[0];
    for _ in 0..5 {
        let out = h.finish(w, running, 1, exited(0));
        let a = assignments(&out);
        assert_eq!(a.len(), 1);
        running = a[0].1;
        order.push(running);
    }
    assert_eq!(order, vec![high[0], high[1], low[0], low[1], low[2]]);
}

#[test]
fn lost_worker_requeues_with_next_attempt_and_stale_result_is_dropped() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 2);
    assert_eq!(assignments(&out).len(), 2);
    h.core.handle_disconnect(h.now, a, "connection reset");
    assert!(h.drain().is_empty(), "nowhere to run yet");
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    let (b, _, out) = h.worker("b", 2);
    assert_eq!(assignments(&out), vec![(b, ids[0], 2), (b, ids[1], 2)]);
    // The old attempt's result arrives late through a reconnected "a": dropped.
    let (a2, _, _) = h.worker("a", 2);
    assert!(h.finish(a2, ids[0], 1, exited(0)).is_empty());
    assert_eq!(h.state(ids[0]), TaskState::Running);
    h.finish(b, ids[0], 2, exited(0));
    assert_eq!(h.state(ids[0]), TaskState::Succeeded);
    assert_eq!(h.core.task(ids[0]).map(|t| t.attempts), Some(2));
}

#[test]
fn heartbeat_timeout_kills_silent_worker_only() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (quiet, _, _) = h.worker("quiet", 1);
    let (chatty, _, _) = h.worker("chatty", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let mut closed = Vec::new();
    for _ in 0..40 {
        h.msg(chatty, ToMaster::Load(LoadReport::default()));
        for o in h.advance(100) {
            if let Output::Close { conn, .. } = o {
                closed.push(conn);
            }
        }
    }
    assert_eq!(closed, vec![quiet]);
    let st = h.core.status();
    let q = st
        .workers
        .iter()
        .find(|w| w.name == "quiet")
        .expect("listed");
    assert_eq!(q.state, WorkerState::Dead);
    // quiet's task went back to the queue; chatty is still busy with its own.
    assert_eq!(st.queued, 1);
    let lost = ids
        .iter()
        .find(|&&id| h.state(id) == TaskState::Queued)
        .copied();
    let lost = lost.expect("one re-queued");
    let other = ids.iter().copied().find(|&id| id != lost).expect("two ids");
    let out = h.finish(chatty, other, 1, exited(0));
    assert_eq!(assignments(&out), vec![(chatty, lost, 2)]);
}

#[test]
fn spurious_timeout_is_a_no_op() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (_w, _, _) = h.worker("a", 1);
    h.core.handle_timeout(h.now); // before the deadline
    assert!(h.drain().is_empty());
}

#[test]
fn retries_exhausted_fails_as_worker_lost() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let spec = TaskSpec {
        max_retries: 1,
        ..sleep_spec(0)
    };
    let (ids, _) = h.submit(c, vec![spec], 1);
    for round in 1..=2 {
        let (w, _, out) = h.worker(&format!("w{round}"), 1);
        assert_eq!(assignments(&out), vec![(w, ids[0], round)]);
        h.core.handle_disconnect(h.now, w, "killed");
        h.drain();
    }
    assert_eq!(h.state(ids[0]), TaskState::WorkerLost);
    assert_eq!(h.core.status().failed, 1);
}

#[test]
fn nonzero_exit_fails_without_retry() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let out = h.finish(w, ids[0], 1, exited(7));
    assert!(assignments(&out).is_empty());
    let r = h.core.task(ids[0]).expect("exists");
    assert_eq!(
        (r.state, r.exit_code, r.attempts),
        (TaskState::Failed, Some(7), 1)
    );
    assert_eq!(r.stdout, "out-7");
}

/// A reader that serves one stored outcome and counts its reads.
#[derive(Debug)]
struct OneOutcome {
    at: StoredAt,
    result: FinalResult,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl OutcomeReader for OneOutcome {
    fn read(&self, _id: TaskId, at: StoredAt) -> Option<FinalResult> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (at == self.at).then(|| self.result.clone())
    }
}

#[test]
fn a_stored_outcome_leaves_ram_and_is_read_back() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.finish(w, ids[0], 1, exited(7));
    let at = StoredAt::new(3, 40).expect("fits");
    let reads = std::sync::Arc::default();
    h.core.set_outcome_reader(Box::new(OneOutcome {
        at,
        result: FinalResult {
            exit_code: Some(7),
            stdout: "from the journal".into(),
            stderr: String::new(),
            error: None,
        },
        reads: std::sync::Arc::clone(&reads),
    }));
    // Held in RAM until the journal says it committed it: the reader is not asked.
    assert_eq!(h.core.task(ids[0]).map(|r| r.stdout), Some("out-7".into()));
    assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 0);
    h.core.handle_stored(&[(ids[0], at)]);
    assert!(h.core.tasks.held(ids[0]).is_none());
    let r = h.core.task(ids[0]).expect("exists");
    assert_eq!(
        (r.state, r.exit_code, r.stdout.as_str()),
        (TaskState::Failed, Some(7), "from the journal")
    );
    assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A location for a task that is not final is ignored.
    let (queued, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.core.handle_stored(&[(queued[0], at)]);
    assert_eq!(h.core.tasks.get(queued[0]).and_then(|t| t.stored), None);
}

#[test]
fn wait_reports_progress_then_done() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![],
            progress: true,
            jobs: vec![],
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::Progress {
                total: 2,
                finished: 0,
                failed: 0
            }
        }]
    );
    let out = h.finish(w, ids[0], 1, exited(0));
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::Progress {
                total: 2,
                finished: 1,
                failed: 0
            }
        }]
    );
    let out = h.finish(w, ids[1], 1, exited(3));
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::WaitDone {
                total: 2,
                succeeded: 1,
                failed: 1
            }
        }]
    );
    // Waiting again on finished work answers at once, failures included.
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![ids[1]],
            progress: false,
            jobs: vec![],
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::WaitDone {
                total: 1,
                succeeded: 0,
                failed: 1
            }
        }]
    );
}

/// `WaitSubmitted` waits for the job of the connection's last accepted `Submit` only; while it
/// waits, `waits_on` says so (the shell then lets the commit wait for the group window).
#[test]
fn wait_submitted_waits_for_the_last_submit_of_its_connection() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 4);
    let c = h.client();
    let other = h.client();
    let nothing = FromMaster::Error {
        message: "nothing submitted on this connection to wait for".into(),
    };
    let out = h.msg(c, ToMaster::WaitSubmitted { progress: false });
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: nothing.clone()
        }]
    );
    let (first, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let (theirs, _) = h.submit(other, vec![sleep_spec(0)], 1);
    assert!(!h.core.waits_on(c));
    let out = h.msg(c, ToMaster::WaitSubmitted { progress: false });
    assert!(out.is_empty(), "{out:?}");
    assert!(h.core.waits_on(c) && !h.core.waits_on(other));
    // Neither the connection's earlier job nor another client's counts.
    assert!(h.finish(w, first[0], 1, exited(0)).is_empty());
    assert!(h.finish(w, theirs[0], 1, exited(0)).is_empty());
    assert!(h.finish(w, ids[0], 1, exited(0)).is_empty());
    let out = h.finish(w, ids[1], 1, exited(2));
    let done = FromMaster::WaitDone {
        total: 2,
        succeeded: 1,
        failed: 1,
    };
    assert_eq!(out, vec![Output::Send { conn: c, msg: done }]);
    assert!(!h.core.waits_on(c), "answered: nothing left to wait for");
    // A refused Submit leaves nothing to wait for, not the job before it.
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![],
            count: 1,
            name: None,
        },
    );
    assert!(matches!(
        &out[..],
        [Output::Send {
            msg: FromMaster::Error { .. },
            ..
        }]
    ));
    let out = h.msg(c, ToMaster::WaitSubmitted { progress: false });
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: nothing
        }]
    );
}

#[test]
fn unknown_ids_and_bad_specs_get_errors_not_panics() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    for msg in [
        ToMaster::Wait {
            ids: vec![TaskId(42)],
            progress: false,
            jobs: vec![],
        },
        ToMaster::Results {
            ids: vec![TaskId(0)],
            jobs: vec![],
        },
        ToMaster::Submit {
            specs: vec![TaskSpec::new(TaskKind::Command {
                argv: vec![],
                env: vec![],
                cwd: None,
            })],
            count: 1,
            name: None,
        },
        ToMaster::Submit {
            specs: vec![],
            count: 1,
            name: None,
        },
    ] {
        let out = h.msg(c, msg);
        assert!(
            matches!(
                &out[..],
                [Output::Send {
                    msg: FromMaster::Error { .. },
                    ..
                }]
            ),
            "got {out:?}"
        );
    }
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: vec![TaskId(5)],
            jobs: vec![],
        },
    );
    assert!(matches!(
        &out[..],
        [Output::Send { msg: FromMaster::CancelDone { unknown, .. }, .. }] if unknown == &vec![TaskId(5)]
    ));
}

#[test]
fn protocol_violations_close_only_that_connection() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    // Before the handshake.
    let conn = h.connect();
    let out = h.msg(conn, ToMaster::Status);
    assert!(matches!(out.last(), Some(Output::Close { conn: x, .. }) if *x == conn));
    // Wrong version.
    let conn = h.connect();
    let out = h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Client,
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    match &out[..] {
        [Output::Send {
            msg: FromMaster::Rejected { reason, .. },
            ..
        }, Output::Close { .. }] => {
            assert!(reason.contains(&PROTOCOL_VERSION.to_string()), "{reason}");
            assert!(
                reason.contains(&(PROTOCOL_VERSION + 1).to_string()),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A worker sending a client request loses its tasks to the queue.
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let out = h.msg(w, ToMaster::Status);
    assert!(matches!(out.last(), Some(Output::Close { conn: x, .. }) if *x == w));
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    // Late bytes from the closed connection are ignored.
    assert!(h.msg(w, ToMaster::Load(LoadReport::default())).is_empty());
}

#[test]
fn token_is_checked() {
    let mut h = Harness::with(CoreConfig {
        token: Some(b"s3cret".to_vec()),
        ..CoreConfig::default()
    });
    let conn = h.connect();
    let out = h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    assert!(matches!(
        &out[..],
        [Output::Send { msg: FromMaster::Rejected { reason, .. }, .. }, Output::Close { .. }] if reason == "authentication failed"
    ));
    let conn = h.connect();
    let answer = auth::peer_answer(Some(b"s3cret"), RoleTag::Client, &[9; 32], &[5; 32]);
    let out = h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            auth: answer,
            nonce: vec![5; 32],
        },
    );
    assert!(matches!(
        &out[..],
        [Output::Send {
            msg: FromMaster::Welcome { .. },
            ..
        }]
    ));
}

#[test]
fn silent_connection_is_closed_after_handshake_timeout() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let conn = h.connect();
    let mut closed = false;
    for _ in 0..60 {
        if h.advance(100)
            .iter()
            .any(|o| matches!(o, Output::Close { conn: x, .. } if *x == conn))
        {
            closed = true;
            break;
        }
    }
    assert!(closed);
    assert_eq!(h.core.poll_timeout(), None, "no connections, no timer");
}

#[test]
fn cancel_removes_queued_and_kills_running() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: ids.clone(),
            jobs: vec![],
        },
    );
    assert!(out.contains(&Output::Send {
        conn: w,
        msg: FromMaster::Cancel(vec![TaskRef {
            task: ids[0],
            attempt: Attempt(1),
            incarnation: Incarnation(1)
        }])
    }));
    assert_eq!(h.state(ids[1]), TaskState::Cancelled);
    // The worker confirms; nothing is queued to take the freed slot.
    let out = h.finish(w, ids[0], 1, TaskOutcome::Cancelled);
    assert!(assignments(&out).is_empty());
    assert_eq!(h.state(ids[0]), TaskState::Cancelled);
    // A cancelled task whose worker dies is not re-queued.
    let (ids2, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.msg(
        c,
        ToMaster::Cancel {
            ids: ids2.clone(),
            jobs: vec![],
        },
    );
    h.core.handle_disconnect(h.now, w, "gone");
    h.drain();
    assert_eq!(h.state(ids2[0]), TaskState::Cancelled);
}

#[test]
fn count_shares_one_spec_and_results_are_chunked() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let big = "x".repeat(60_000);
    let spec = TaskSpec::new(TaskKind::Command {
        argv: vec!["echo".into(), big],
        env: vec![],
        cwd: None,
    });
    let (ids, _) = h.submit(c, vec![spec], 100);
    let first = h.core.tasks.get(ids[0]).map(|t| Arc::as_ptr(&t.spec));
    let last = h.core.tasks.get(ids[99]).map(|t| Arc::as_ptr(&t.spec));
    assert_eq!(first, last, "copies share the spec");
    let (w, _, _) = h.worker("a", 100);
    // 100 × 60 KB of stdout is more than one reply frame's budget.
    for id in &ids {
        h.finish(
            w,
            *id,
            1,
            TaskOutcome::Exited {
                code: 0,
                stdout_tail: "y".repeat(60_000),
                stderr_tail: String::new(),
            },
        );
    }
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    );
    assert!(out.len() > 1, "chunked");
    let mut seen = 0;
    for (i, o) in out.iter().enumerate() {
        match o {
            Output::Send {
                msg: FromMaster::Results { tasks, more },
                ..
            } => {
                seen += tasks.len();
                assert_eq!(*more, i + 1 < out.len());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, 100);
}

#[test]
fn reconnecting_worker_keeps_its_running_tasks() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    h.core.handle_disconnect(h.now, a, "link cut");
    h.drain();
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    // Back under the same name, still running attempt 1 of both; nothing else may be sent to it
    // for them (no re-assignment of what it runs), only the third task.
    let a2 = h.connect();
    h.msg(
        a2,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker(WorkerInfo {
                allocation: None,
                name: "a".into(),
                host: "h".into(),
                cpus: 2,
                slots: 2,
                pid: 1,
                group: None,
                prefetch: 0,
                prefetch_adaptive: false,
                heartbeat_interval_ms: 0,
            }),
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    let running = vec![
        TaskRef {
            task: ids[0],
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        },
        TaskRef {
            task: ids[1],
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        },
    ];
    let out = h.msg(a2, ToMaster::Running(running));
    assert!(
        assignments(&out).is_empty(),
        "both slots are taken by the adopted tasks"
    );
    assert_eq!(h.state(ids[1]), TaskState::Running);
    assert_eq!(h.core.status().queued, 1);
    // Its attempt-1 result counts.
    h.finish(a2, ids[0], 1, exited(0));
    let r = h.core.task(ids[0]).expect("exists");
    assert_eq!((r.state, r.attempts), (TaskState::Succeeded, 1));
}

#[test]
fn running_report_for_a_task_final_elsewhere_is_cancelled() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.finish(w, ids[0], 1, exited(0));
    let stale = TaskRef {
        task: ids[0],
        attempt: Attempt(1),
        incarnation: Incarnation(1),
    };
    let out = h.msg(w, ToMaster::Running(vec![stale]));
    assert_eq!(
        out,
        vec![Output::Send {
            conn: w,
            msg: FromMaster::Cancel(vec![stale])
        }]
    );
}

#[test]
fn result_of_a_given_up_attempt_is_kept_if_nobody_reran_it() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.core.handle_disconnect(h.now, a, "link cut");
    h.drain();
    let (a2, _, _) = h.worker("a", 1);
    // (The re-registered worker got the task again as attempt 2; a result for attempt 1 is stale.)
    let out = h.finish(a2, ids[0], 1, exited(0));
    assert!(out.is_empty());
    assert_eq!(h.state(ids[0]), TaskState::Running);
    // With no worker to take it, the task stays queued and a late attempt-1 result is kept.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 1);
    let (b, _, _) = h.worker("b", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 3);
    h.core.handle_disconnect(h.now, a, "link cut");
    h.drain();
    let lost = ids
        .iter()
        .copied()
        .find(|&id| h.state(id) == TaskState::Queued)
        .expect("one queued");
    let (a2, _, _) = h.worker("a2", 1); // another worker takes something else meanwhile
    let _ = (b, a2);
    if h.state(lost) == TaskState::Queued {
        let out = h.finish(b, lost, 1, exited(0));
        assert!(!out.iter().any(|o| matches!(o, Output::Close { .. })));
        assert_eq!(h.state(lost), TaskState::Succeeded);
    }
}

#[test]
fn retry_failed_reruns_after_backoff() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let spec = TaskSpec {
        retry_failed: 2,
        ..sleep_spec(0)
    };
    let (ids, _) = h.submit(c, vec![spec], 1);
    let out = h.finish(w, ids[0], 1, exited(3));
    assert!(
        assignments(&out).is_empty(),
        "held for the backoff, not re-run at once"
    );
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now + 100),
        "sweep comes first"
    );
    let mut again = Vec::new();
    for _ in 0..5 {
        again.extend(assignments(&h.advance(100)));
    }
    assert_eq!(again, vec![(w, ids[0], 2)]);
    h.finish(w, ids[0], 2, exited(3));
    let mut third = Vec::new();
    for _ in 0..10 {
        third.extend(assignments(&h.advance(100)));
    }
    assert_eq!(
        third,
        vec![(w, ids[0], 3)],
        "second backoff is longer but still comes"
    );
    h.finish(w, ids[0], 3, exited(3));
    let r = h.core.task(ids[0]).expect("exists");
    assert_eq!(
        (r.state, r.attempts, r.exit_code),
        (TaskState::Failed, 3, Some(3)),
        "out of retries"
    );
}

#[test]
fn persist_records_precede_replies_and_restore_rebuilds() {
    let mut h = Harness::with(CoreConfig {
        persist: true,
        ..CoreConfig::default()
    });
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0), sleep_spec(5)],
            count: 2,
            name: None,
        },
    );
    let kinds: Vec<&str> = out
        .iter()
        .map(|o| match o {
            Output::Persist(Record::Submitted { .. }) => "persist",
            Output::Persist(Record::Job(_)) => "job",
            Output::Send {
                msg: FromMaster::Submitted { .. },
                ..
            } => "reply",
            Output::Send {
                msg: FromMaster::Assign(_),
                ..
            } => "assign",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["job", "persist", "persist", "reply", "assign"]);
    let job = out.iter().find_map(|o| match o {
        Output::Persist(Record::Job(j)) => Some(j.clone()),
        _ => None,
    });
    assert_eq!(
        job,
        Some(JobRecord {
            id: JobId(1),
            name: "sleep 10ms".into(),
            first: TaskId(1),
            count: 4,
            submitted_ms: h.now,
        }),
        "one job for the whole submission, named after its first spec"
    );
    let a = assignments(&out);
    let out = h.finish(w, a[0].1, 1, exited(0));
    let finals: Vec<(TaskId, Outcome)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Finished { id, outcome }) => Some((*id, outcome.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].1.state, TaskState::Succeeded);
    assert_eq!(finals[0].1.worker.as_deref(), Some("a"));

    // A new core from those records: the finished task keeps its result, the rest wait for the
    // grace period, then run as attempt 2.
    let spec = Arc::new(sleep_spec(0));
    let restored: Vec<RestoredTask> = (1..=4)
        .map(|i| RestoredTask {
            id: TaskId(i),
            spec: spec.clone(),
            submitted_ms: 5,
            stored: None,
            outcome: (TaskId(i) == finals[0].0).then(|| Box::new(finals[0].1.clone())),
        })
        .collect();
    let mut h2 = Harness::restarted();
    let now = h2.now;
    assert_eq!(
        h2.core
            .restore(now, restored, history(&[(1, 1), (2, 5)]), Vec::new()),
        Ok((1, 3))
    );
    assert_eq!(h2.state(finals[0].0), TaskState::Succeeded);
    let (w2, _, out) = h2.worker("b", 4);
    assert!(assignments(&out).is_empty(), "held during the grace period");
    let mut got = Vec::new();
    for _ in 0..60 {
        h2.msg(w2, ToMaster::Load(LoadReport::default()));
        got.extend(assignments(&h2.advance(100)));
    }
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|&(conn, _, attempt)| conn == w2 && attempt == 2));
    // "a" is only named by a restored result: nothing was heard from it in this life.
    let st = h2.core.status();
    let seen = |name: &str| {
        st.workers
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.last_seen_ms)
    };
    assert_eq!(seen("a"), Some(None));
    assert_eq!(seen("b"), Some(Some(h2.now - 100)), "its last load report");
    let gaps = Harness::restarted().core.restore(
        0,
        vec![RestoredTask {
            id: TaskId(2),
            spec,
            submitted_ms: 0,
            stored: None,
            outcome: None,
        }],
        history(&[(1, 1), (2, 3)]),
        Vec::new(),
    );
    assert!(
        gaps.is_err(),
        "a gap in the ids is an error, not a silent renumbering"
    );
}

#[test]
fn cancel_reaches_held_tasks() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(
        c,
        vec![TaskSpec {
            retry_failed: 1,
            ..sleep_spec(0)
        }],
        1,
    );
    h.finish(w, ids[0], 1, exited(1));
    h.msg(
        c,
        ToMaster::Cancel {
            ids: ids.clone(),
            jobs: vec![],
        },
    );
    assert_eq!(h.state(ids[0]), TaskState::Cancelled);
    for _ in 0..10 {
        assert!(assignments(&h.advance(100)).is_empty());
    }
}

#[test]
fn group_tasks_run_only_in_their_group() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let conn_of = |h: &mut Harness, name: &str, group: Option<&str>| {
        let conn = h.connect();
        h.msg(
            conn,
            ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker(WorkerInfo {
                    allocation: None,
                    name: name.into(),
                    host: "h".into(),
                    cpus: 2,
                    slots: 2,
                    pid: 1,
                    group: group.map(str::to_string),
                    prefetch: 0,
                    prefetch_adaptive: false,
                    heartbeat_interval_ms: 0,
                }),
                auth: vec![],
                nonce: vec![5; 32],
            },
        );
        h.msg(conn, ToMaster::Running(vec![]));
        conn
    };
    let a1 = conn_of(&mut h, "a1", Some("a"));
    let a2 = conn_of(&mut h, "a2", Some("a"));
    let b1 = conn_of(&mut h, "b1", Some("b"));
    let c = h.client();
    let in_b = TaskSpec {
        group: Some("b".into()),
        ..sleep_spec(0)
    };
    let (ids, out) = h.submit(c, vec![in_b], 6);
    let first: Vec<ConnId> = assignments(&out).iter().map(|x| x.0).collect();
    assert_eq!(first, vec![b1, b1], "only b's worker, two slots");
    // The shared pool may use every worker, b's included.
    let (_, out) = h.submit(c, vec![sleep_spec(0)], 4);
    let shared: Vec<ConnId> = assignments(&out).iter().map(|x| x.0).collect();
    assert_eq!(shared.len(), 4);
    assert!(shared.iter().all(|&w| w == a1 || w == a2));
    // Freeing a slot on b runs the next b task there.
    let out = h.finish(b1, ids[0], 1, exited(0));
    assert_eq!(assignments(&out), vec![(b1, ids[2], 1)]);
    assert_eq!(
        h.core
            .status()
            .workers
            .iter()
            .filter(|w| w.group.as_deref() == Some("a"))
            .count(),
        2
    );
}

#[test]
fn repeated_ids_cost_once_and_huge_submissions_are_refused() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    h.finish(w, ids[0], 1, exited(0));
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![ids[0]; 10_000],
            jobs: vec![],
        },
    );
    match &out[..] {
        [Output::Send {
            msg: FromMaster::Results { tasks, more: false },
            ..
        }] => {
            assert_eq!(tasks.len(), 1)
        }
        other => panic!("{other:?}"),
    }
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![ids[0]; 3],
            progress: false,
            jobs: vec![],
        },
    );
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::WaitDone {
                total: 1,
                succeeded: 1,
                failed: 0
            }
        }]
    );
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0), sleep_spec(0)],
            count: 6_000_000,
            name: None,
        },
    );
    assert!(
        matches!(&out[..], [Output::Send { msg: FromMaster::Error { message }, .. }] if message.contains("at most")),
        "{out:?}"
    );
    assert_eq!(h.core.status().queued, 0, "nothing was created");
}

/// Hello for a worker, and the outputs up to its `Welcome` drained; nothing else is sent yet.
fn hello(h: &mut Harness, name: &str, slots: u32, group: Option<&str>) -> ConnId {
    let conn = h.connect();
    h.msg(
        conn,
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Worker(WorkerInfo {
                allocation: None,
                name: name.into(),
                host: "h".into(),
                cpus: 2,
                slots,
                pid: 1,
                group: group.map(String::from),
                prefetch: 0,
                prefetch_adaptive: false,
                heartbeat_interval_ms: 0,
            }),
            auth: vec![],
            nonce: vec![5; 32],
        },
    );
    conn
}

fn run_ref(task: TaskId, attempt: u32, incarnation: u32) -> TaskRef {
    TaskRef {
        task,
        attempt: Attempt(attempt),
        incarnation: Incarnation(incarnation),
    }
}

fn finished(r: TaskRef, stdout: &str) -> ToMaster {
    ToMaster::Finished(vec![r.completion(
        TaskOutcome::Exited {
            code: 0,
            stdout_tail: stdout.into(),
            stderr_tail: String::new(),
        },
        3,
    )])
}

/// Issue 9: incarnation 1 handed out task 1 and died before committing its submission; in
/// incarnation 2 the next submission is task 1 again. The old run must be stopped, and neither
/// its `Running` claim nor its result may be taken for the new task.
#[test]
fn a_run_of_a_lost_submission_is_never_credited_to_the_reused_id() {
    let mut h = Harness::restarted();
    let now = h.now;
    assert_eq!(
        h.core
            .restore(now, vec![], history(&[(1, 1), (2, 1)]), Vec::new()),
        Ok((0, 0))
    );
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(ids, [TaskId(1)]);
    let old = run_ref(TaskId(1), 1, 1);
    let w = hello(&mut h, "a", 1, None);
    h.msg(w, ToMaster::Load(LoadReport::default()));
    let out = h.msg(w, ToMaster::Running(vec![old]));
    assert!(
        out.contains(&Output::Send {
            conn: w,
            msg: FromMaster::Cancel(vec![old])
        }),
        "the orphan is stopped: {out:?}"
    );
    let assigned: Vec<TaskRef> = out
        .iter()
        .flat_map(|o| match o {
            Output::Send {
                msg: FromMaster::Assign(list),
                ..
            } => list.iter().map(Assignment::task_ref).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        assigned,
        [run_ref(TaskId(1), 1, 2)],
        "the new task runs for real"
    );
    // The orphan finished before the kill landed: its output is not the new task's.
    assert!(h.msg(w, finished(old, "OLD")).is_empty());
    assert_eq!(h.state(TaskId(1)), TaskState::Running);
    h.msg(w, finished(run_ref(TaskId(1), 1, 2), "NEW"));
    let r = h.core.task(TaskId(1)).expect("exists");
    assert_eq!((r.state, r.stdout.as_str()), (TaskState::Succeeded, "NEW"));
}

/// The path the reproduction took: a late result for a task that waits to run (here: for a
/// group no worker serves) is kept only if it is that task's.
#[test]
fn a_late_result_of_a_lost_submission_is_not_kept_for_a_waiting_task() {
    let mut h = Harness::restarted();
    let now = h.now;
    h.core
        .restore(now, vec![], history(&[(1, 1), (2, 1)]), Vec::new())
        .expect("restores");
    let c = h.client();
    let spec = TaskSpec {
        group: Some("gpu".into()),
        ..sleep_spec(0)
    };
    let (ids, _) = h.submit(c, vec![spec], 1);
    let w = hello(&mut h, "a", 1, None);
    h.msg(w, ToMaster::Load(LoadReport::default()));
    h.msg(w, ToMaster::Running(Vec::new()));
    assert!(h.msg(w, finished(run_ref(ids[0], 1, 1), "OLD")).is_empty());
    assert_eq!(h.state(ids[0]), TaskState::Queued);
}

/// The other side of the rule: a task the journal had before the crash is the same task, and
/// its run of the earlier incarnation is adopted and credited.
#[test]
fn a_run_of_a_committed_task_is_adopted_across_a_restart() {
    let mut h = Harness::restarted();
    let now = h.now;
    let restored = vec![RestoredTask {
        id: TaskId(1),
        spec: Arc::new(sleep_spec(0)),
        submitted_ms: 5,
        stored: None,
        outcome: None,
    }];
    assert_eq!(
        h.core
            .restore(now, restored, history(&[(1, 1), (2, 2)]), Vec::new()),
        Ok((0, 1))
    );
    let old = run_ref(TaskId(1), 1, 1);
    let w = hello(&mut h, "a", 1, None);
    h.msg(w, ToMaster::Load(LoadReport::default()));
    let out = h.msg(w, ToMaster::Running(vec![old]));
    assert!(
        out.is_empty(),
        "adopted: nothing to cancel or assign: {out:?}"
    );
    assert_eq!(h.state(TaskId(1)), TaskState::Running);
    h.msg(w, finished(old, "DONE"));
    let r = h.core.task(TaskId(1)).expect("exists");
    assert_eq!((r.state, r.stdout.as_str()), (TaskState::Succeeded, "DONE"));
    // A run "from the future" (another master's numbering) is never adopted.
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let (ids, _) = h.submit(
        c,
        vec![TaskSpec {
            group: Some("gpu".into()),
            ..sleep_spec(0)
        }],
        1,
    );
    let w = hello(&mut h, "a", 1, None);
    h.msg(w, ToMaster::Load(LoadReport::default()));
    let future = run_ref(ids[0], 1, 7);
    let out = h.msg(w, ToMaster::Running(vec![future]));
    assert!(out.contains(&Output::Send {
        conn: w,
        msg: FromMaster::Cancel(vec![future])
    }));
    assert_eq!(h.state(ids[0]), TaskState::Queued);
}

#[test]
fn a_client_closed_for_a_protocol_error_hears_nothing_more() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    assert!(h
        .msg(
            c,
            ToMaster::Wait {
                ids: vec![],
                progress: true,
                jobs: vec![]
            }
        )
        .iter()
        .all(|o| !matches!(
            o,
            Output::Send {
                msg: FromMaster::WaitDone { .. },
                ..
            }
        )));
    let out = h.msg(c, ToMaster::Load(LoadReport::default()));
    let v = Violation::ClientMayNotSend("Load");
    assert_eq!(
        out,
        vec![
            Output::Send {
                conn: c,
                msg: FromMaster::Error {
                    message: v.to_string()
                }
            },
            Output::Close {
                conn: c,
                reason: CloseReason::Protocol(v)
            }
        ]
    );
    // Its wait is gone with it: the task's end reaches nobody.
    let (w, _, out) = h.worker("a", 1);
    assert_eq!(assignments(&out), vec![(w, ids[0], 1)]);
    let out = h.finish(w, ids[0], 1, exited(0));
    assert!(
        out.iter()
            .all(|o| !matches!(o, Output::Send { conn, .. } if *conn == c)),
        "{out:?}"
    );
    assert_eq!(h.state(ids[0]), TaskState::Succeeded);
}

#[test]
fn nothing_after_a_protocol_error_in_a_frame_is_credited() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let done = |task, outcome| Completion {
        task,
        attempt: Attempt(1),
        incarnation: Incarnation(1),
        outcome,
        run_ms: 1,
    };
    let out = h.msg(
        w,
        ToMaster::Finished(vec![
            done(ids[0], TaskOutcome::WorkerLost),
            done(ids[1], exited(0)),
        ]),
    );
    assert!(matches!(
        out.last(),
        Some(Output::Close { conn, reason: CloseReason::Protocol(Violation::WorkerLostReported) }) if *conn == w
    ));
    // The worker is forgotten with the rest of its frame: both tasks wait to run again.
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    assert_eq!(h.state(ids[1]), TaskState::Queued);
}

/// Found by the simulator's property test: after adopting an older attempt, the next one must not
/// be a number already handed out. Here attempt 2 went to b, which is told to cancel it once a's
/// attempt 1 is adopted; if a is then lost and attempt 2 were handed out again (to b), b's answer
/// to the cancel would end the task as `cancelled`.
#[test]
fn an_adopted_older_attempt_does_not_reuse_a_later_number() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (a, _, _) = h.worker("a", 1);
    let c = h.client();
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let id = ids[0];
    h.core.handle_disconnect(h.now, a, "link cut");
    h.drain();
    let (b, _, out) = h.worker("b", 1);
    assert_eq!(assignments(&out), [(b, id, 2)]);
    h.core.handle_disconnect(h.now, b, "link cut");
    h.drain();
    // a comes back, still running attempt 1: adopted.
    let a2 = hello(&mut h, "a", 1, None);
    h.msg(a2, ToMaster::Load(LoadReport::default()));
    h.msg(a2, ToMaster::Running(vec![run_ref(id, 1, 1)]));
    assert_eq!(h.state(id), TaskState::Running);
    // b comes back, still running attempt 2: cancelled, it runs on a.
    let b2 = hello(&mut h, "b", 1, None);
    h.msg(b2, ToMaster::Load(LoadReport::default()));
    let out = h.msg(b2, ToMaster::Running(vec![run_ref(id, 2, 1)]));
    assert!(out.contains(&Output::Send {
        conn: b2,
        msg: FromMaster::Cancel(vec![run_ref(id, 2, 1)])
    }));
    // a is lost: the task runs again, as an attempt nobody had.
    h.core.handle_disconnect(h.now, a2, "link cut");
    let out = h.drain();
    assert_eq!(assignments(&out), [(b2, id, 3)]);
    // b's answer to the cancel of attempt 2 is stale, not the task's end.
    let stale = ToMaster::Finished(vec![run_ref(id, 2, 1).completion(TaskOutcome::Cancelled, 5)]);
    h.msg(b2, stale);
    assert_eq!(h.state(id), TaskState::Running);
    h.finish(b2, id, 3, exited(0));
    let r = h.core.task(id).expect("exists");
    assert_eq!((r.state, r.attempts), (TaskState::Succeeded, 3));
}
