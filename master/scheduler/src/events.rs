//! Events for `GET /api/v1/events` (Server-Sent Events): a bounded ring the shell drains with
//! `Core::poll_event`. No IO here; the shell formats and fans them out to its subscribers.
//!
//! The ring is off until the shell turns it on (`Core::set_events`, while someone subscribes),
//! so a master nobody watches pays one branch per event. Task events (submissions, state
//! changes) are rate-limited like the log: at most [`TASK_EVENTS_PER_SECOND`] a second, the rest
//! counted and said in the next once-a-second [`Event::Summary`], which also carries the queue
//! counts and the throughput. Worker joins and losses always go out.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Task events per one-second window; beyond, they are only counted (the summary says how many).
pub const TASK_EVENTS_PER_SECOND: u32 = 20;
/// Events the shell has not drained yet. It drains every turn, so this only bounds a turn that
/// makes very many (a worker joining and leaving in a loop); the oldest are dropped and counted.
pub const EVENT_RING_MAX: usize = 4_096;
/// The summary's period.
pub const SUMMARY_INTERVAL_MS: u64 = 1_000;

/// One event. The SSE `event:` line is [`Event::name`]; the `data:` line is the JSON of the
/// variant's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    WorkerJoined {
        worker: String,
        group: Option<String>,
        addr: String,
        slots: u32,
        at_ms: u64,
    },
    WorkerLost {
        worker: String,
        reason: String,
        requeued: u64,
        failed: u64,
        at_ms: u64,
    },
    /// Ids `first ..= last` were accepted.
    Submitted {
        first: u64,
        last: u64,
        at_ms: u64,
    },
    /// A task changed state (`queued` again after its worker was lost or a run failed and will be
    /// retried; `running` when handed out; a final state).
    Task {
        id: u64,
        state: &'static str,
        worker: Option<String>,
        at_ms: u64,
    },
    Summary(Summary),
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::WorkerJoined { .. } => "worker_joined",
            Event::WorkerLost { .. } => "worker_lost",
            Event::Submitted { .. } => "submitted",
            Event::Task { .. } => "task",
            Event::Summary(_) => "summary",
        }
    }
}

/// Once a second while events are on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub at_ms: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    /// Final but not succeeded (failed, timed out, cancelled, worker lost), as `status` counts.
    pub failed: u64,
    /// Waiting per group (`""`: the default pool); a JSON object of at most
    /// `metrics::QUEUE_GROUPS_LISTED` groups and the default pool.
    pub queue: BTreeMap<String, u64>,
    /// Tasks waiting in groups not listed in `queue`.
    pub queue_unlisted: u64,
    pub workers_alive: u64,
    /// Tasks that became final per second since the previous summary.
    pub finished_per_s: f64,
    /// Tasks accepted per second since the previous summary.
    pub submitted_per_s: f64,
    /// Task events not sent one by one since the previous summary (the rate limit).
    pub suppressed: u64,
    /// Events lost because the ring was full since the previous summary.
    pub dropped: u64,
}

/// The ring and its rate limit (a field of `Core`).
#[derive(Debug, Default)]
pub struct Events {
    on: bool,
    ring: VecDeque<Event>,
    window_start_ms: u64,
    in_window: u32,
    suppressed: u64,
    dropped: u64,
    next_summary_ms: Option<u64>,
    /// (time, finished, submitted) at the previous summary, for the rates.
    last: (u64, u64, u64),
}

impl Events {
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Turns the stream on or off. Off forgets what was not drained.
    pub fn set(&mut self, now_ms: u64, on: bool, finished: u64, submitted: u64) {
        if on == self.on {
            return;
        }
        self.on = on;
        self.ring.clear();
        self.suppressed = 0;
        self.dropped = 0;
        self.in_window = 0;
        self.window_start_ms = now_ms;
        self.last = (now_ms, finished, submitted);
        self.next_summary_ms = on.then_some(now_ms + SUMMARY_INTERVAL_MS);
    }

    fn push(&mut self, event: Event) {
        if self.ring.len() >= EVENT_RING_MAX {
            self.ring.pop_front();
            self.dropped += 1;
        }
        self.ring.push_back(event);
    }

    /// A worker event: never rate-limited (joins and losses are few and each matters).
    pub fn worker(&mut self, event: impl FnOnce() -> Event) {
        if self.on {
            self.push(event());
        }
    }

    /// A task event, within the rate limit. `event` is only built when it will be sent.
    pub fn task(&mut self, now_ms: u64, event: impl FnOnce() -> Event) {
        if !self.on {
            return;
        }
        if now_ms >= self.window_start_ms + 1_000 {
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        if self.in_window < TASK_EVENTS_PER_SECOND {
            self.in_window += 1;
            self.push(event());
        } else {
            self.suppressed += 1;
        }
    }

    /// Task `id` is queued (again): released by its dependencies, re-queued after a lost worker
    /// or held for a retry.
    pub fn queued(&mut self, now_ms: u64, id: u64) {
        self.task(now_ms, || Event::Task {
            id,
            state: protocol::TaskState::Queued.as_str(),
            worker: None,
            at_ms: now_ms,
        });
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.next_summary_ms
    }

    /// Whether the summary is due; if so the caller builds it with `summary`.
    pub fn summary_due(&self, now_ms: u64) -> bool {
        self.next_summary_ms.is_some_and(|at| now_ms >= at)
    }

    /// Pushes the summary; `counts` fills in what the core knows. Rates over the time since the
    /// previous one.
    pub fn summary(&mut self, now_ms: u64, finished: u64, submitted: u64, mut s: Summary) {
        let (then, f0, s0) = self.last;
        let secs = (now_ms.saturating_sub(then) as f64 / 1e3).max(1e-3);
        s.at_ms = now_ms;
        s.finished_per_s = finished.saturating_sub(f0) as f64 / secs;
        s.submitted_per_s = submitted.saturating_sub(s0) as f64 / secs;
        // Room first, so the count it carries includes what its own arrival pushed out.
        if self.ring.len() >= EVENT_RING_MAX {
            self.ring.pop_front();
            self.dropped += 1;
        }
        s.suppressed = std::mem::take(&mut self.suppressed);
        s.dropped = std::mem::take(&mut self.dropped);
        self.last = (now_ms, finished, submitted);
        self.next_summary_ms = Some(now_ms + SUMMARY_INTERVAL_MS);
        self.push(Event::Summary(s));
    }

    pub fn poll(&mut self) -> Option<Event> {
        self.ring.pop_front()
    }
}

impl crate::Core {
    /// Turns the event stream on (the shell has a subscriber) or off (none left). Off, task and
    /// worker changes cost one branch each.
    pub fn set_events(&mut self, now_ms: u64, on: bool) {
        let (finished, submitted) = self.event_totals();
        self.events.set(now_ms, on, finished, submitted);
    }

    /// The next event for the subscribers, oldest first. Drain after each turn, like
    /// `poll_output`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.poll()
    }

    fn event_totals(&self) -> (u64, u64) {
        let submitted = self.tasks.len() as u64;
        (submitted - self.tasks.unfinished(), submitted)
    }

    /// The once-a-second summary, when due (from `handle_timeout`).
    pub(crate) fn summarise_events(&mut self, now_ms: u64) {
        if !self.events.summary_due(now_ms) {
            return;
        }
        let counts = self.status_counts();
        let queue = self.pools.queue_lens(crate::metrics::QUEUE_GROUPS_LISTED);
        let summary = Summary {
            at_ms: now_ms,
            queued: counts.queued,
            running: counts.running,
            succeeded: counts.succeeded,
            failed: counts.failed,
            queue: queue.listed.into_iter().collect(),
            queue_unlisted: queue.unlisted_tasks,
            workers_alive: self.workers.iter().filter(|w| w.is_alive()).count() as u64,
            finished_per_s: 0.0,
            submitted_per_s: 0.0,
            suppressed: 0,
            dropped: 0,
        };
        let (finished, submitted) = self.event_totals();
        self.events.summary(now_ms, finished, submitted, summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64) -> Event {
        Event::Task {
            id,
            state: "running",
            worker: None,
            at_ms: 0,
        }
    }

    fn empty_summary() -> Summary {
        Summary {
            at_ms: 0,
            queued: 0,
            running: 0,
            succeeded: 0,
            failed: 0,
            queue: BTreeMap::new(),
            queue_unlisted: 0,
            workers_alive: 0,
            finished_per_s: 0.0,
            submitted_per_s: 0.0,
            suppressed: 0,
            dropped: 0,
        }
    }

    #[test]
    fn off_costs_nothing_and_keeps_nothing() {
        let mut e = Events::default();
        e.task(0, || panic!("not built while off"));
        e.worker(|| panic!("not built while off"));
        assert_eq!(e.poll(), None);
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn task_events_are_limited_per_second_and_counted_in_the_summary() {
        let mut e = Events::default();
        e.set(0, true, 0, 0);
        for id in 0..100 {
            e.task(10, || task(id));
        }
        assert!(e.summary_due(1_000));
        assert!(!e.summary_due(999));
        e.summary(1_000, 50, 100, empty_summary());
        let got: Vec<Event> = std::iter::from_fn(|| e.poll()).collect();
        assert_eq!(got.len(), TASK_EVENTS_PER_SECOND as usize + 1);
        let Some(Event::Summary(s)) = got.last() else {
            panic!("summary last")
        };
        assert_eq!(s.suppressed, 100 - u64::from(TASK_EVENTS_PER_SECOND));
        assert_eq!((s.finished_per_s, s.submitted_per_s), (50.0, 100.0));
        assert_eq!(e.next_deadline(), Some(2_000));
        // A new window lets more through.
        e.task(1_010, || task(7));
        assert_eq!(e.poll(), Some(task(7)));
    }

    #[test]
    fn the_ring_is_bounded_and_says_what_it_dropped() {
        let mut e = Events::default();
        e.set(0, true, 0, 0);
        for i in 0..EVENT_RING_MAX + 5 {
            e.worker(|| Event::WorkerLost {
                worker: i.to_string(),
                reason: String::new(),
                requeued: 0,
                failed: 0,
                at_ms: 0,
            });
        }
        e.summary(1_000, 0, 0, empty_summary());
        let got: Vec<Event> = std::iter::from_fn(|| e.poll()).collect();
        assert_eq!(got.len(), EVENT_RING_MAX);
        let Some(Event::Summary(s)) = got.last() else {
            panic!("summary last")
        };
        assert_eq!(s.dropped, 6);
    }
}
