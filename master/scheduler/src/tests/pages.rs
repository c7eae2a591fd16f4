//! The HTTP API's side of the core (issue 10): local clients without a handshake, and task pages
//! that look at no more of the table than the page needs.

use super::*;
use protocol::KindName;

/// Every `ResultsPage` chunk to `conn` in `out`, in order: (tasks' ids, more, next).
fn pages(out: &[Output], to: ConnId) -> Vec<(Vec<u64>, bool, Option<TaskId>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::ResultsPage { tasks, more, next },
            } if *conn == to => Some((tasks.iter().map(|t| t.id.0).collect(), *more, *next)),
            _ => None,
        })
        .collect()
}

fn local(h: &mut Harness) -> ConnId {
    let conn = ConnId(h.next_conn);
    h.next_conn += 1;
    h.core
        .handle_local_client(h.now, conn, "127.0.0.1:9".into());
    assert!(h.drain().is_empty(), "no greeting, no welcome");
    conn
}

fn page(
    h: &mut Harness,
    c: ConnId,
    state: Option<TaskState>,
    after: u64,
    limit: u32,
) -> (Vec<u64>, Option<TaskId>) {
    let out = h.msg(
        c,
        ToMaster::ResultsPage {
            state,
            after: TaskId(after),
            limit,
        },
    );
    let chunks = pages(&out, c);
    assert!(!chunks.is_empty(), "{out:?}");
    let (last, firsts) = chunks.split_last().expect("a chunk");
    assert!(firsts.iter().all(|(_, more, next)| *more && next.is_none()));
    assert!(!last.1, "the last chunk ends the page");
    let ids = chunks.iter().flat_map(|(ids, _, _)| ids.clone()).collect();
    (ids, last.2)
}

#[test]
fn a_local_client_submits_and_is_answered_like_any_client() {
    let mut h = Harness::with(CoreConfig {
        persist: true,
        ..CoreConfig::default()
    });
    let c = local(&mut h);
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0)],
            count: 3,
            name: None,
        },
    );
    // The record precedes the reply, so the shell's journal gate holds for HTTP too.
    assert!(
        matches!(
            &out[..],
            [
                Output::Persist(Record::Job(_)),
                Output::Persist(Record::Submitted { count: 3, .. }),
                Output::Send {
                    msg: FromMaster::Submitted {
                        first: TaskId(1),
                        count: 3,
                        ..
                    },
                    ..
                }
            ]
        ),
        "{out:?}"
    );
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: vec![TaskId(1)],
            jobs: vec![],
        },
    );
    let done = out.iter().find_map(|o| match o {
        Output::Send {
            conn,
            msg: FromMaster::CancelDone { cancelled, .. },
        } if *conn == c => Some(cancelled.clone()),
        _ => None,
    });
    assert_eq!(done, Some(vec![TaskId(1)]));
    h.core.handle_disconnect(h.now, c, "done");
    assert!(h.drain().is_empty());
}

#[test]
fn pages_go_oldest_first_by_state_and_say_where_to_go_on() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = local(&mut h);
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 25);
    let (w, _, _) = h.worker("a", 100);
    // Every third task succeeds.
    for id in ids.iter().filter(|id| id.0 % 3 == 0) {
        h.finish(w, *id, 1, exited(0));
    }
    let (got, next) = page(&mut h, c, Some(TaskState::Succeeded), 0, 3);
    assert_eq!(got, vec![3, 6, 9]);
    assert_eq!(next, Some(TaskId(9)));
    let (got, next) = page(&mut h, c, Some(TaskState::Succeeded), 9, 100);
    assert_eq!(got, vec![12, 15, 18, 21, 24]);
    assert_eq!(next, None, "the table ended");
    let (got, next) = page(&mut h, c, None, 20, 1000);
    assert_eq!(got, vec![21, 22, 23, 24, 25]);
    assert_eq!(next, None);
    let (got, next) = page(&mut h, c, Some(TaskState::Succeeded), 25, 10);
    assert!(got.is_empty());
    assert_eq!(next, None);
    // A limit of 0 is taken as 1, one past the cap as the cap.
    let (got, _) = page(&mut h, c, None, 0, 0);
    assert_eq!(got, vec![1]);
}

#[test]
fn a_page_over_a_rare_state_stops_after_its_scan_budget() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = local(&mut h);
    let n = PAGE_SCAN_MAX as u32 + 10;
    h.submit(c, vec![sleep_spec(0)], n);
    let (got, next) = page(&mut h, c, Some(TaskState::Succeeded), 0, 10);
    assert!(got.is_empty());
    assert_eq!(next, Some(TaskId(PAGE_SCAN_MAX as u64)), "go on from there");
    let (got, next) = page(
        &mut h,
        c,
        Some(TaskState::Succeeded),
        PAGE_SCAN_MAX as u64,
        10,
    );
    assert!(got.is_empty());
    assert_eq!(next, None);
}

#[test]
fn a_page_with_big_outputs_comes_in_chunks_with_cut_tails() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = local(&mut h);
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 10);
    let (w, _, _) = h.worker("a", 100);
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
        ToMaster::ResultsPage {
            state: None,
            after: TaskId(0),
            limit: 10,
        },
    );
    let mut seen = 0;
    for o in &out {
        if let Output::Send {
            msg: FromMaster::ResultsPage { tasks, .. },
            ..
        } = o
        {
            seen += tasks.len();
            assert!(tasks.iter().all(|t| t.stdout.len() == PAGE_TAIL_BYTES));
        }
    }
    assert_eq!(seen, 10);
}

#[test]
fn results_say_what_each_task_is_and_a_page_cuts_a_long_argv() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = local(&mut h);
    let command = |argv: Vec<String>| {
        TaskSpec::new(TaskKind::Command {
            argv,
            env: vec![],
            cwd: None,
        })
    };
    let short = vec!["sh".to_string(), "-c".into(), "echo hi".into()];
    let long = vec!["sh".to_string(), "-c".into(), "x".repeat(900 << 10)];
    let grouped = TaskSpec {
        group: Some("gpu".into()),
        ..sleep_spec(0)
    };
    let spin = TaskSpec::new(TaskKind::Spin { ms: 5 });
    let specs = vec![command(short.clone()), command(long.clone()), grouped, spin];
    h.submit(c, specs, 1);

    let one = |h: &Harness, id| h.core.task(TaskId(id)).expect("known");
    let t = one(&h, 1);
    assert_eq!(
        (t.kind, t.cmd, t.group),
        (KindName::Command, Some(short.clone()), None)
    );
    assert_eq!(
        one(&h, 2).cmd,
        Some(long.clone()),
        "whole in a task's own result"
    );
    let t = one(&h, 3);
    assert_eq!(
        (t.kind, t.cmd, t.group.as_deref()),
        (KindName::Sleep, None, Some("gpu"))
    );
    assert_eq!((one(&h, 4).kind, one(&h, 4).cmd), (KindName::Spin, None));

    let out = h.msg(
        c,
        ToMaster::ResultsPage {
            state: None,
            after: TaskId(0),
            limit: 10,
        },
    );
    let tasks: Vec<TaskResult> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Send {
                msg: FromMaster::ResultsPage { tasks, .. },
                ..
            } => Some(tasks),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[0].cmd, Some(short), "a short argv is whole in a page");
    let cut = tasks[1].cmd.as_ref().expect("a command");
    assert_eq!(cut.len(), 4, "{cut:?}");
    assert_eq!(&cut[..2], ["sh", "-c"]);
    assert_eq!(cut[2].len(), PAGE_ARGV_BYTES - 7);
    assert_eq!(
        cut[3],
        format!("[... {} bytes cut]", long[2].len() - cut[2].len())
    );
    assert_eq!(tasks[2].group.as_deref(), Some("gpu"));
}

#[test]
fn a_workers_status_says_when_it_was_last_heard() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let joined = h.now;
    let (w, _, _) = h.worker("a", 1);
    let seen = |h: &Harness| h.core.status().workers[0].last_seen_ms;
    assert_eq!(seen(&h), Some(joined));
    h.advance(250);
    assert_eq!(seen(&h), Some(joined), "time alone is not a frame");
    h.msg(w, ToMaster::Load(LoadReport::default()));
    assert_eq!(seen(&h), Some(joined + 250));
    h.core.handle_disconnect(h.now, w, "gone");
    h.drain();
    h.advance(100);
    let st = h.core.status();
    assert_eq!(st.workers[0].state, WorkerState::Dead);
    assert_eq!(
        st.workers[0].last_seen_ms,
        Some(joined + 250),
        "kept once dead"
    );
}

#[test]
fn argvs_of_a_mib_keep_results_within_the_chunk_budget_and_pages_small() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = local(&mut h);
    let argv = vec![
        "sh".to_string(),
        "-c".into(),
        "x".repeat(protocol::limits::MAX_COMMAND_BYTES - 100),
    ];
    let spec = TaskSpec::new(TaskKind::Command {
        argv: argv.clone(),
        env: vec![],
        cwd: None,
    });
    h.submit(c, vec![spec], 20);
    let chunks = |out: Vec<Output>| -> Vec<(usize, Vec<TaskResult>)> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send { msg, .. } => {
                    let len = protocol::codec::encoded_len(&msg);
                    match msg {
                        FromMaster::Results { tasks, .. }
                        | FromMaster::ResultsPage { tasks, .. } => Some((len, tasks)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    };
    let all = chunks(h.msg(
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    ));
    assert!(all.len() >= 5, "{} chunks of about a MiB a task", all.len());
    for (len, tasks) in &all {
        assert!(*len <= REPLY_FRAME_BUDGET + 64, "{len} bytes");
        assert!(tasks.iter().all(|t| t.cmd.as_ref() == Some(&argv)), "whole");
    }
    assert_eq!(all.iter().map(|(_, t)| t.len()).sum::<usize>(), 20);
    let page = chunks(h.msg(
        c,
        ToMaster::ResultsPage {
            state: None,
            after: TaskId(0),
            limit: 20,
        },
    ));
    assert_eq!(page.len(), 1, "cut argvs: one small chunk");
    assert!(page[0].0 < 20 * 2 * PAGE_ARGV_BYTES, "{} bytes", page[0].0);
    assert_eq!(page[0].1.len(), 20);
}
