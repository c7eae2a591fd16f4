//! Retention: `Forget` and `--keep-finished` drop finished tasks from the table, their jobs, the
//! journal (`Record::Forgotten`) and the log store (`LogOp::Forget`); ids are never reused.

use super::*;

fn forgotten(out: &[Output]) -> (u64, Vec<JobForgottenView>, u64, u64) {
    out.iter()
        .find_map(|o| match o {
            Output::Send {
                msg:
                    FromMaster::Forgotten {
                        tasks,
                        jobs,
                        unfinished_count,
                        unknown_count,
                        ..
                    },
                ..
            } => Some((
                *tasks,
                jobs.iter().map(|j| (j.job, j.tasks, j.whole)).collect(),
                *unfinished_count,
                *unknown_count,
            )),
            _ => None,
        })
        .expect("a Forgotten reply")
}

type JobForgottenView = (JobId, u64, bool);

fn records(out: &[Output]) -> Vec<Vec<(TaskId, TaskId)>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Forgotten { ranges }) => Some(ranges.clone()),
            _ => None,
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

/// A master with one worker of `slots` slots, the job of `count` sleeps run to the end.
fn finished_job(h: &mut Harness, w: ConnId, c: ConnId, count: u32) -> Vec<TaskId> {
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], count);
    let mut runs = assignments(&out);
    while let Some((_, task, attempt)) = runs.pop() {
        runs.extend(assignments(&h.finish(w, task, attempt, exited(0))));
    }
    assert!(ids.iter().all(|&id| h.state(id).is_final()));
    ids
}

#[test]
fn forgetting_a_finished_job_drops_it_everywhere_and_keeps_its_ids() {
    let mut h = Harness::with(CoreConfig {
        persist: true,
        ..CoreConfig::default()
    });
    let (w, _, _) = h.worker("a", 2);
    let c = h.client();
    let first = finished_job(&mut h, w, c, 3);
    let (second, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let out = h.msg(
        c,
        ToMaster::Forget {
            ids: vec![],
            jobs: vec![JobId(1)],
            finished_before_ms: None,
        },
    );
    assert_eq!(forgotten(&out), (3, vec![(JobId(1), 3, true)], 0, 0));
    assert_eq!(records(&out), vec![vec![(first[0], first[2])]]);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Log(LogOp::Forget { ranges }) if ranges == &vec![(first[0], first[2])]
    )));
    assert!(h.core.task(first[0]).is_none());
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![JobId(1)],
        },
    );
    let err = error_of(&out).expect("an error");
    assert!(
        err.contains("unknown job 1") && err.contains("forgotten"),
        "{err}"
    );
    // `jobs` omits it; `results` of everything skips its ids.
    let out = h.msg(c, ToMaster::Jobs { ids: vec![] });
    let listed: Vec<JobId> = out
        .iter()
        .flat_map(|o| match o {
            Output::Send {
                msg: FromMaster::Jobs { jobs, .. },
                ..
            } => jobs.iter().map(|j| j.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(listed, vec![JobId(2)]);
    let out = h.msg(
        c,
        ToMaster::Results {
            ids: vec![],
            jobs: vec![],
        },
    );
    let ids: Vec<TaskId> = out
        .iter()
        .flat_map(|o| match o {
            Output::Send {
                msg: FromMaster::Results { tasks, .. },
                ..
            } => tasks.iter().map(|t| t.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(ids, second);
    // New ids follow the forgotten ones.
    let (third, _) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(third, vec![TaskId(5)]);
}

#[test]
fn unfinished_and_unknown_ids_are_reported_not_forgotten() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let done = finished_job(&mut h, w, c, 1);
    let (queued, _) = h.submit(c, vec![sleep_spec(0)], 2);
    let out = h.msg(
        c,
        ToMaster::Forget {
            ids: vec![done[0], queued[0], TaskId(99)],
            jobs: vec![],
            finished_before_ms: None,
        },
    );
    assert_eq!(forgotten(&out), (1, vec![(JobId(1), 1, true)], 1, 1));
    assert!(h.core.task(queued[0]).is_some());
    // A job with unfinished tasks keeps them; its finished ones go.
    let out = h.msg(
        c,
        ToMaster::Forget {
            ids: vec![],
            jobs: vec![JobId(2)],
            finished_before_ms: None,
        },
    );
    assert_eq!(forgotten(&out).0, 0);
    assert_eq!(forgotten(&out).2, 2);
    let out = h.msg(
        c,
        ToMaster::Forget {
            ids: vec![],
            jobs: vec![JobId(7)],
            finished_before_ms: None,
        },
    );
    assert_eq!(error_of(&out).as_deref(), Some("unknown job 7"));
}

#[test]
fn finished_before_keeps_the_recent_ones() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let old = finished_job(&mut h, w, c, 2);
    h.advance(5_000);
    let (w, _, _) = h.worker("b", 1);
    let recent = finished_job(&mut h, w, c, 2);
    let out = h.msg(
        c,
        ToMaster::Forget {
            ids: vec![],
            jobs: vec![],
            finished_before_ms: Some(1_000),
        },
    );
    assert_eq!(forgotten(&out).0, 2);
    assert!(old.iter().all(|&id| h.core.task(id).is_none()));
    assert!(recent.iter().all(|&id| h.core.task(id).is_some()));
}

#[test]
fn keep_finished_forgets_jobs_once_they_are_old_enough() {
    let mut h = Harness::with(CoreConfig {
        persist: true,
        keep_finished_ms: Some(1_000),
        ..CoreConfig::default()
    });
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let ids = finished_job(&mut h, w, c, 3);
    let (running, _) = h.submit(c, vec![sleep_spec(0)], 1);
    let out = h.advance(500);
    assert!(records(&out).is_empty(), "not old enough yet");
    let mut forgot = Vec::new();
    for _ in 0..20 {
        forgot.extend(records(&h.advance(100)));
    }
    assert_eq!(forgot, vec![vec![(ids[0], ids[2])]]);
    assert!(h.core.task(running[0]).is_some(), "an unfinished job stays");
    assert!(h.core.poll_timeout().is_some(), "retention keeps its timer");
}

#[test]
fn a_restore_skips_forgotten_ids_and_never_reuses_them() {
    let spec = Arc::new(sleep_spec(0));
    let done = Outcome {
        state: TaskState::Succeeded,
        attempts: 1,
        copies: 1,
        worker: None,
        exit_code: Some(0),
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        started_ms: Some(1),
        finished_ms: 2,
    };
    // Tasks 1-2 (job 1) and 4-5 (job 3) forgotten; 3 (job 2) kept.
    let job = |id, first, count| JobRecord {
        id: JobId(id),
        name: "j".into(),
        first: TaskId(first),
        count,
        submitted_ms: 1,
    };
    let mut h = Harness::restarted();
    h.core.expect_forgotten(TaskId(6));
    let now = h.now;
    let restored = vec![RestoredTask {
        id: TaskId(3),
        spec,
        submitted_ms: 1,
        outcome: Some(Box::new(done)),
        stored: None,
    }];
    let got = h.core.restore(
        now,
        restored,
        history(&[(1, 1), (2, 6)]),
        vec![job(1, 1, 2), job(2, 3, 1), job(3, 4, 2)],
    );
    assert_eq!(got, Ok((1, 0)));
    assert!(h.core.task(TaskId(1)).is_none() && h.core.task(TaskId(5)).is_none());
    assert_eq!(
        h.core.tasks.first_kept(),
        TaskId(3),
        "the forgotten front is not held"
    );
    assert_eq!(h.core.tasks.jobs().first_kept(), JobId(2));
    assert!(h.core.task(TaskId(3)).is_some());
    let c = h.client();
    let out = h.msg(c, ToMaster::Jobs { ids: vec![] });
    let listed: Vec<JobId> = out
        .iter()
        .flat_map(|o| match o {
            Output::Send {
                msg: FromMaster::Jobs { jobs, .. },
                ..
            } => jobs.iter().map(|j| j.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(listed, vec![JobId(2)]);
    let (ids, _) = h.submit(c, vec![sleep_spec(0)], 1);
    assert_eq!(ids, vec![TaskId(6)]);
}

#[test]
fn the_table_gives_its_front_back() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 4);
    let c = h.client();
    finished_job(&mut h, w, c, 200);
    let kept = finished_job(&mut h, w, c, 1);
    h.msg(
        c,
        ToMaster::Forget {
            ids: vec![],
            jobs: vec![JobId(1)],
            finished_before_ms: None,
        },
    );
    assert_eq!(h.core.tasks.first_kept(), kept[0]);
    assert_eq!(h.core.tasks.kept(), 1);
    assert_eq!(
        h.core.tasks.jobs().first_kept(),
        JobId(2),
        "the job's entry is freed too"
    );
    // Its id is still known as forgotten, and never reused.
    let c2 = h.client();
    let out = h.msg(
        c2,
        ToMaster::Jobs {
            ids: vec![JobId(1)],
        },
    );
    assert!(error_of(&out).is_some_and(|e| e.contains("forgotten")));
    let (ids, _) = h.submit(c2, vec![sleep_spec(0)], 1);
    assert_eq!(h.core.tasks.job_of(ids[0]), Some(JobId(3)));
}

#[test]
fn a_wait_on_a_partly_forgotten_job_counts_only_what_is_left() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let (w, _, _) = h.worker("a", 1);
    let c = h.client();
    let ids = finished_job(&mut h, w, c, 2);
    h.msg(
        c,
        ToMaster::Forget {
            ids: vec![ids[0]],
            jobs: vec![],
            finished_before_ms: None,
        },
    );
    let out = h.msg(
        c,
        ToMaster::Wait {
            ids: vec![],
            progress: false,
            jobs: vec![JobId(1)],
        },
    );
    let done = out.iter().find_map(|o| match o {
        Output::Send {
            msg:
                FromMaster::WaitDone {
                    total,
                    succeeded,
                    failed,
                },
            ..
        } => Some((*total, *succeeded, *failed)),
        _ => None,
    });
    assert_eq!(done, Some((1, 1, 0)), "a forgotten task is not a failure");
}
