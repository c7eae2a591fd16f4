//! Metrics, events and the report (issue 10): what a scrape, a subscriber and `/api/v1/report`
//! see after a small batch, in simulated time.

use super::*;
use crate::events::{Event, TASK_EVENTS_PER_SECOND};

fn events(h: &mut Harness) -> Vec<Event> {
    std::iter::from_fn(|| h.core.poll_event()).collect()
}

#[test]
fn a_batch_shows_in_metrics_events_and_report() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    h.core.set_events(h.now, true);
    let (w, _, _) = h.worker("w1", 2);
    let c = h.client();
    let joined = events(&mut h);
    assert!(
        matches!(&joined[..], [Event::WorkerJoined { worker, slots: 2, .. }] if worker == "w1")
    );
    let submitted_at = h.now;
    let (ids, out) = h.submit(c, vec![sleep_spec(0)], 3);
    assert_eq!(assignments(&out).len(), 2, "two slots");
    h.now += 40;
    h.msg(
        w,
        ToMaster::Started(
            ids[..2]
                .iter()
                .map(|&id| TaskRef {
                    task: id,
                    attempt: Attempt(1),
                    incarnation: Incarnation(1),
                })
                .collect(),
        ),
    );
    h.now += 60;
    h.finish(w, ids[0], 1, exited(0));
    h.finish(w, ids[1], 1, exited(0));
    h.now += 100;
    h.finish(w, ids[2], 1, exited(1));

    let m = h.core.metrics();
    assert_eq!(m.count(TaskState::Succeeded), 2);
    assert_eq!(m.count(TaskState::Failed), 1);
    assert_eq!(m.submitted_total, 3);
    assert_eq!(m.dispatch_latency.count(), 3);
    assert_eq!(m.start_latency.count(), 2);
    // Started 40 ms after the submission: in the (0.01, 0.05] bucket.
    let le_05 = m
        .start_latency
        .cumulative()
        .find(|&(b, _)| b == 0.05)
        .map(|(_, n)| n);
    assert_eq!(le_05, Some(2));
    assert_eq!((m.worker_connections, m.client_connections), (1, 1));

    let got = events(&mut h);
    let names: Vec<&str> = got.iter().map(Event::name).collect();
    assert_eq!(names[0], "submitted");
    assert_eq!(
        got.iter()
            .filter(|e| matches!(e, Event::Task { state: "succeeded", worker: Some(w), .. } if w == "w1"))
            .count(),
        2
    );
    assert!(got.iter().any(|e| matches!(
        e,
        Event::Task {
            state: "failed",
            ..
        }
    )));

    // The summary once a second, with the counts.
    h.now = submitted_at + 1_000;
    h.core.handle_timeout(h.now);
    let s = events(&mut h)
        .into_iter()
        .find_map(|e| match e {
            Event::Summary(s) => Some(s),
            _ => None,
        })
        .expect("a summary after a second");
    assert_eq!((s.succeeded, s.failed, s.queued), (2, 1, 0));
    assert_eq!(s.workers_alive, 1);
    assert!(s.finished_per_s > 0.0);

    let r = h.core.report();
    assert_eq!((r.tasks, r.completed, r.failed), (3, 2, 1));
    assert_eq!(r.makespan_s, 0.2, "first submission to the last final");
    // Three runs of 3 ms each (the harness's run_ms) on 2 slots over 200 ms.
    assert_eq!(r.per_worker.len(), 1);
    assert_eq!(r.per_worker[0].busy_s, 0.009);
    assert_eq!(r.utilisation, 0.0225);
    assert_eq!(r.max_completion_s, 0.1);
    assert_eq!(
        r.p50_completion_s, 0.1,
        "both succeeded 100 ms after submission"
    );
}

#[test]
fn task_events_beyond_the_limit_are_counted_not_sent() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    h.core.set_events(h.now, true);
    let c = h.client();
    for _ in 0..50 {
        h.submit(c, vec![sleep_spec(0)], 1);
    }
    let got = events(&mut h);
    assert_eq!(got.len(), TASK_EVENTS_PER_SECOND as usize);
    h.advance(1_000);
    let s = events(&mut h)
        .into_iter()
        .find_map(|e| match e {
            Event::Summary(s) => Some(s),
            _ => None,
        })
        .expect("summary");
    assert_eq!(s.suppressed, 50 - u64::from(TASK_EVENTS_PER_SECOND));
    assert_eq!(s.queued, 50);
    assert_eq!(s.queue.get(""), Some(&50));
    // Off: nothing more, and no summary deadline.
    h.core.set_events(h.now, false);
    h.submit(c, vec![sleep_spec(0)], 1);
    assert!(events(&mut h).is_empty());
}
