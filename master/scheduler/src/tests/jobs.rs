//! Jobs: one per `Submit`, counted as tasks move, and the `jobs` of `Results`, `Wait`, `Cancel`.

use super::*;
use protocol::JobStatus;

/// Submits as job `name`; returns the job and its ids.
fn submit_job(
    h: &mut Harness,
    c: ConnId,
    specs: Vec<TaskSpec>,
    count: u32,
    name: Option<&str>,
) -> (JobId, Vec<TaskId>) {
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs,
            count,
            name: name.map(str::to_string),
        },
    );
    let reply = out.iter().find_map(|o| match o {
        Output::Send {
            conn,
            msg: FromMaster::Submitted {
                first, count, job, ..
            },
        } if *conn == c => Some((*job, (first.0..first.0 + count).map(TaskId).collect())),
        _ => None,
    });
    reply.expect("Submitted reply")
}

/// Every chunk of the reply to `msg` from `c`, until `more` is false.
fn ask_jobs(h: &mut Harness, c: ConnId, ids: Vec<JobId>) -> Result<Vec<JobStatus>, String> {
    let out = h.msg(c, ToMaster::Jobs { ids });
    let mut jobs = Vec::new();
    for o in out {
        match o {
            Output::Send {
                msg: FromMaster::Jobs { jobs: chunk, .. },
                ..
            } => jobs.extend(chunk),
            Output::Send {
                msg: FromMaster::Error { message },
                ..
            } => return Err(message),
            _ => {}
        }
    }
    Ok(jobs)
}

fn results(h: &mut Harness, c: ConnId, ids: Vec<TaskId>, jobs: Vec<JobId>) -> Vec<TaskId> {
    let out = h.msg(c, ToMaster::Results { ids, jobs });
    out.iter()
        .flat_map(|o| match o {
            Output::Send {
                msg: FromMaster::Results { tasks, .. },
                ..
            } => tasks.iter().map(|t| t.id).collect(),
            Output::Send {
                msg: FromMaster::Error { message },
                ..
            } => panic!("{message}"),
            _ => Vec::new(),
        })
        .collect()
}

fn error_of(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::Send {
            msg: FromMaster::Error { message },
            ..
        } => Some(message.clone()),
        _ => None,
    })
}

#[test]
fn every_submit_is_one_job_counted_as_its_tasks_move() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let (a, a_ids) = submit_job(
        &mut h,
        c,
        vec![sleep_spec(0), sleep_spec(0)],
        2,
        Some("build"),
    );
    let (b, b_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 1, None);
    assert_eq!((a, b), (JobId(1), JobId(2)));
    assert_eq!(a_ids.len(), 4);
    assert_eq!(b_ids, vec![TaskId(5)]);
    assert_eq!(h.core.task(a_ids[3]).map(|t| t.job), Some(a));
    assert_eq!(h.core.task(b_ids[0]).map(|t| t.job), Some(b));
    h.now += 10;
    h.finish(w, a_ids[0], 1, exited(0));
    h.finish(w, a_ids[1], 1, exited(2));
    let jobs = ask_jobs(&mut h, c, vec![]).expect("jobs");
    assert_eq!(jobs.len(), 2);
    let ja = &jobs[0];
    assert_eq!((ja.id, ja.name.as_str(), ja.tasks), (a, "build", 4));
    assert_eq!(ja.first, TaskId(1));
    assert_eq!(ja.count(TaskState::Succeeded), 1);
    assert_eq!(ja.count(TaskState::Failed), 1);
    assert_eq!(ja.count(TaskState::Running), 1, "the worker has one slot");
    assert_eq!(ja.count(TaskState::Queued), 1);
    assert_eq!(ja.finished_ms, None);
    assert_eq!(ja.duration_ms, 10, "so far");
    assert_eq!(jobs[1].name, "sleep 10ms", "named after its spec");
    let only_b = ask_jobs(&mut h, c, vec![b]).expect("job b");
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].id, b);
    let e = ask_jobs(&mut h, c, vec![JobId(3)]).unwrap_err();
    assert!(e.contains("unknown job 3"), "{e}");
    h.core.sanity_check();
}

#[test]
fn a_finished_job_keeps_its_duration() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    let start = h.now;
    let (j, ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 2, None);
    h.now += 5;
    h.finish(w, ids[0], 1, exited(0));
    h.now += 20;
    h.finish(w, ids[1], 1, exited(0));
    h.now += 1_000;
    let s = &ask_jobs(&mut h, c, vec![j]).expect("job")[0];
    assert_eq!(s.finished_ms, Some(start + 25));
    assert_eq!(
        s.duration_ms, 25,
        "until its last task ended, not until now"
    );
}

#[test]
fn results_wait_and_cancel_take_whole_jobs() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 8);
    let c = h.client();
    let (a, a_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 3, None);
    let (b, b_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 2, None);
    let (_, c_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 2, None);
    // Results: exactly the job's tasks, in id order, an id listed too counted once.
    assert_eq!(results(&mut h, c, vec![], vec![a]), a_ids);
    let mixed = results(&mut h, c, vec![c_ids[1], a_ids[0]], vec![b]);
    assert_eq!(mixed, vec![a_ids[0], b_ids[0], b_ids[1], c_ids[1]]);
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![JobId(9)],
        },
    );
    assert_eq!(error_of(&out).as_deref(), Some("unknown job 9"));

    // Wait: done once every task of the job is, whatever else runs.
    h.finish(w, a_ids[0], 1, exited(1));
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![c_ids[0]],
            progress: false,
            jobs: vec![a],
        },
    );
    assert!(out.is_empty(), "{out:?}");
    h.finish(w, a_ids[1], 1, exited(0));
    h.finish(w, b_ids[0], 1, exited(0));
    assert!(
        h.finish(w, a_ids[2], 1, exited(0)).is_empty(),
        "c's task runs"
    );
    let out = h.finish(w, c_ids[0], 1, exited(0));
    assert_eq!(
        out,
        vec![Output::Send {
            conn: c,
            msg: FromMaster::WaitDone {
                total: 4,
                succeeded: 3,
                failed: 1
            }
        }]
    );
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![],
            progress: false,
            jobs: vec![JobId(0)],
        },
    );
    assert_eq!(error_of(&out).as_deref(), Some("unknown job 0"));

    // Cancel: the job's unfinished tasks; the finished one is listed as such.
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: vec![],
            jobs: vec![b],
        },
    );
    let done = out.iter().find_map(|o| match o {
        Output::Send {
            msg:
                FromMaster::CancelDone {
                    cancelled,
                    already_final,
                    unknown,
                },
            ..
        } => Some((cancelled.clone(), already_final.clone(), unknown.clone())),
        _ => None,
    });
    assert_eq!(done, Some((vec![b_ids[1]], vec![b_ids[0]], vec![])));
    let out = h.msg(
        c,
        ToMaster::Cancel {
            ids: vec![],
            jobs: vec![JobId(4)],
        },
    );
    assert_eq!(error_of(&out).as_deref(), Some("unknown job 4"));
    h.core.sanity_check();
}

#[test]
fn a_job_name_over_the_limit_is_refused() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let out = h.msg(
        c,
        ToMaster::Submit {
            specs: vec![sleep_spec(0)],
            count: 1,
            name: Some("n".repeat(MAX_JOB_NAME_BYTES + 1)),
        },
    );
    let e = error_of(&out).expect("refused");
    assert!(e.contains("job name"), "{e}");
    assert_eq!(h.core.tasks.len(), 0, "nothing accepted");
}

#[test]
fn restore_brings_jobs_back_and_names_tasks_without_one() {
    let mut h = Harness::restarted();
    let now = h.now;
    let built = Arc::new(sleep_spec(0));
    let old = Arc::new(sleep_spec(1));
    let task = |id: u64, spec: &Arc<TaskSpec>, ms: u64| RestoredTask {
        id: TaskId(id),
        spec: Arc::clone(spec),
        submitted_ms: ms,
        stored: None,
        outcome: None,
    };
    // Job 1 is two tasks of two specs (a task file); 3-4 and 5 are batches of an older journal.
    let tasks = vec![
        task(1, &built, 7),
        task(2, &old, 7),
        task(3, &old, 8),
        task(4, &old, 8),
        task(5, &built, 9),
    ];
    let jobs = vec![JobRecord {
        id: JobId(1),
        name: "file.jsonl".into(),
        first: TaskId(1),
        count: 2,
        submitted_ms: 7,
    }];
    h.core.config.persist = true;
    let restored = h
        .core
        .restore(now, tasks, history(&[(1, 1), (2, 6)]), jobs)
        .expect("restores");
    assert_eq!(restored, (0, 5));
    let named: Vec<JobRecord> = h
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Job(j)) => Some(j),
            _ => None,
        })
        .collect();
    let ranges: Vec<(u64, u64, u64)> = named.iter().map(|j| (j.id.0, j.first.0, j.count)).collect();
    assert_eq!(
        ranges,
        vec![(2, 3, 2), (3, 5, 1)],
        "one job per old batch, recorded"
    );
    assert_eq!(named[0].name, "sleep 10ms");
    let c = h.client();
    let jobs = ask_jobs(&mut h, c, vec![]).expect("jobs");
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, vec!["file.jsonl", "sleep 10ms", "sleep 10ms"]);
    assert_eq!(jobs[0].count(TaskState::Queued), 2);
    h.core.sanity_check();

    // Jobs past the journal's tasks are refused.
    let mut h = Harness::restarted();
    let jobs = vec![JobRecord {
        id: JobId(1),
        name: "j".into(),
        first: TaskId(1),
        count: 3,
        submitted_ms: 7,
    }];
    let e = h
        .core
        .restore(
            now,
            vec![task(1, &built, 7)],
            history(&[(1, 1), (2, 2)]),
            jobs,
        )
        .unwrap_err();
    assert!(matches!(e, RestoreError::JobPastTasks { .. }), "{e}");
}

#[test]
fn results_of_jobs_come_in_chunks_each_task_once() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 200);
    let c = h.client();
    let (a, a_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 40, None);
    let (_, b_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 40, None);
    let (j3, c_ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 40, None);
    for &id in a_ids.iter().chain(&b_ids).chain(&c_ids) {
        let out = TaskOutcome::Exited {
            code: 0,
            stdout_tail: "y".repeat(60_000),
            stderr_tail: String::new(),
        };
        h.finish(w, id, 1, out);
    }
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![b_ids[7], a_ids[3]],
            jobs: vec![j3, a],
        },
    );
    let chunks: Vec<(Vec<TaskId>, bool)> = out
        .iter()
        .map(|o| match o {
            Output::Send {
                msg: FromMaster::Results { tasks, more },
                ..
            } => (tasks.iter().map(|t| t.id).collect(), *more),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(chunks.len() > 1, "chunked");
    let last = chunks.len() - 1;
    assert!(chunks.iter().enumerate().all(|(i, c)| c.1 == (i < last)));
    let got: Vec<TaskId> = chunks.into_iter().flat_map(|c| c.0).collect();
    let mut want = a_ids.clone();
    want.push(b_ids[7]);
    want.extend(&c_ids);
    assert_eq!(got, want);
}

#[test]
fn a_bare_wait_counts_the_unfinished_jobs_and_the_latest_one_whole() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 8);
    let c = h.client();
    let wait = |h: &mut Harness| {
        h.msg(
            c,
            ToMaster::Wait {
                ids: vec![],
                progress: false,
                jobs: vec![],
            },
        )
    };
    let done = |total, succeeded, failed| {
        vec![Output::Send {
            conn: c,
            msg: FromMaster::WaitDone {
                total,
                succeeded,
                failed,
            },
        }]
    };
    // An old failure is not counted again...
    let (_, old) = submit_job(&mut h, c, vec![sleep_spec(0)], 1, None);
    h.finish(w, old[0], 1, exited(1));
    // ...and the latest job is counted whole even when it ended before the wait began (the
    // `submit` then `wait` of a person at a shell, racing fast tasks).
    let (_, ids) = submit_job(&mut h, c, vec![sleep_spec(0)], 5, None);
    h.finish(w, ids[0], 1, exited(0));
    h.finish(w, ids[1], 1, exited(0));
    h.finish(w, ids[2], 1, exited(0));
    h.finish(w, ids[3], 1, exited(0));
    h.finish(w, ids[4], 1, exited(0));
    assert_eq!(wait(&mut h), done(5, 5, 0));
    // A job still running is waited for, with the latest.
    let (_, slow) = submit_job(&mut h, c, vec![sleep_spec(0)], 2, None);
    let (_, last) = submit_job(&mut h, c, vec![sleep_spec(0)], 1, None);
    h.finish(w, slow[0], 1, exited(0));
    h.finish(w, last[0], 1, exited(0));
    assert!(wait(&mut h).is_empty(), "task {} still runs", slow[1]);
    assert_eq!(h.finish(w, slow[1], 1, exited(0)), done(3, 3, 0));
    h.core.sanity_check();
}
