//! Metrics the core keeps as events happen, for `GET /metrics` and `GET /api/v1/report`. No IO,
//! like the rest of the crate: the shell asks for a [`MetricsSnapshot`] and renders it.
//!
//! IMPORTANT: a scrape never scans the task table. Task counts by state come from the
//! `TaskTable`'s own counters (moved by every transition); histograms and the report's
//! accumulators are updated here, at the event; only the worker table and the pools (bounded by
//! workers and groups, not tasks) are walked per snapshot.

use protocol::TaskState;
use serde::Serialize;
use std::collections::BTreeMap;

/// Groups listed one by one in the metrics and the events' summary: one label value each in
/// Prometheus, so a submission that names a million groups cannot make a million series.
pub const QUEUE_GROUPS_LISTED: usize = 100;

/// Upper bounds (seconds) of the queueing latencies: submit → assign and submit → start. A batch
/// of a million short tasks waits minutes; a lone task a millisecond.
pub const QUEUE_LATENCY_BOUNDS_S: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];
/// Upper bounds (seconds) of a journal commit (one fsync, sometimes two).
pub const COMMIT_LATENCY_BOUNDS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A Prometheus-style histogram over fixed bounds: a count per bucket, the sum and the count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations in `(bounds[i-1], bounds[i]]`; the last one above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bound, as the exposition wants; `+Inf` is `count`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .zip(self.counts.iter().scan(0, |acc, &c| {
                *acc += c;
                Some(*acc)
            }))
            .map(|(&b, c)| (b, c))
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Sub-buckets per doubling of [`Durations`]: a percentile read from it is within 2^(1/32) - 1,
/// about 2.2 %, of the true value.
const SUB_BUCKETS: f64 = 32.0;
/// Durations up to 2^40 ms (35 years) have their own bucket; longer ones share the last.
const DURATION_BUCKETS: usize = 40 * 32 + 2;

/// Completion times (ms) in log-spaced buckets: percentiles for the report without keeping (or
/// sorting) one value per task. 1,282 counters, whatever the number of tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    counts: Vec<u64>,
    count: u64,
    sum_ms: u128,
    max_ms: u64,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            counts: vec![0; DURATION_BUCKETS],
            count: 0,
            sum_ms: 0,
            max_ms: 0,
        }
    }
}

impl Durations {
    fn index(ms: u64) -> usize {
        if ms == 0 {
            return 0;
        }
        let i = 1 + ((ms as f64).log2() * SUB_BUCKETS).floor() as usize;
        i.min(DURATION_BUCKETS - 1)
    }

    /// The largest value bucket `i` holds (its upper edge), in ms.
    fn upper_ms(i: usize) -> f64 {
        if i == 0 {
            0.0
        } else {
            (i as f64 / SUB_BUCKETS).exp2()
        }
    }

    pub fn observe(&mut self, ms: u64) {
        self.counts[Self::index(ms)] += 1;
        self.count += 1;
        self.sum_ms += u128::from(ms);
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms as f64 / self.count as f64
        }
    }

    pub fn max_ms(&self) -> u64 {
        self.max_ms
    }

    /// Nearest-rank percentile (as `master simulate` computes it), as the upper edge of its
    /// bucket, never above the maximum seen.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_ms(i).min(self.max_ms as f64);
            }
        }
        self.max_ms as f64
    }
}

/// What the core counts as it goes (a field of `Core`).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Submit → the first assignment of a task (its first attempt's first copy).
    pub dispatch_latency: Histogram,
    /// Submit → its worker said it started (the first attempt's first copy).
    pub start_latency: Histogram,
    /// Journal commits as the shell measured them (`Core::observe_commit`).
    pub commit_latency: Histogram,
    /// Tasks that went back to the queue because their worker was lost.
    pub requeued: u64,
    /// Runs that ended in failure and were retried (`retry_failed`).
    pub retried: u64,
    /// The first submission and the last completion among tasks this master knows: the makespan.
    pub first_submit_ms: Option<u64>,
    pub last_finish_ms: Option<u64>,
    /// Completion (final − submitted) of each task that succeeded.
    pub completion: Durations,
    /// The longest run reported, for the report's lower bound.
    pub longest_run_ms: u64,
    /// Forgotten tasks that had succeeded, and that had been handed out: the histograms keep
    /// them (they are cumulative), the task table no longer does.
    pub forgotten_succeeded: u64,
    pub forgotten_dispatched: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            dispatch_latency: Histogram::new(QUEUE_LATENCY_BOUNDS_S),
            start_latency: Histogram::new(QUEUE_LATENCY_BOUNDS_S),
            commit_latency: Histogram::new(COMMIT_LATENCY_BOUNDS_S),
            requeued: 0,
            retried: 0,
            forgotten_succeeded: 0,
            forgotten_dispatched: 0,
            first_submit_ms: None,
            last_finish_ms: None,
            completion: Durations::default(),
            longest_run_ms: 0,
        }
    }
}

impl Metrics {
    pub fn submitted(&mut self, now_ms: u64) {
        self.first_submit_ms = Some(self.first_submit_ms.map_or(now_ms, |t| t.min(now_ms)));
    }

    pub fn assigned_first(&mut self, now_ms: u64, submitted_ms: u64) {
        self.dispatch_latency
            .observe(now_ms.saturating_sub(submitted_ms) as f64 / 1e3);
    }

    pub fn started_first(&mut self, now_ms: u64, submitted_ms: u64) {
        self.start_latency
            .observe(now_ms.saturating_sub(submitted_ms) as f64 / 1e3);
    }

    pub fn finished(&mut self, now_ms: u64, submitted_ms: u64, state: TaskState) {
        self.last_finish_ms = Some(self.last_finish_ms.map_or(now_ms, |t| t.max(now_ms)));
        if state == TaskState::Succeeded {
            self.completion.observe(now_ms.saturating_sub(submitted_ms));
        }
    }

    pub fn ran(&mut self, run_ms: u64) {
        self.longest_run_ms = self.longest_run_ms.max(run_ms);
    }

    /// `last_finish - first_submit`, or 0 before anything finished.
    pub fn makespan_ms(&self) -> u64 {
        match (self.first_submit_ms, self.last_finish_ms) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }
}

/// One worker's line in the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerMetrics {
    pub name: String,
    /// `""` for the default pool.
    pub group: String,
    pub alive: bool,
    pub slots: u32,
    pub running: u32,
    pub cpu_percent: f32,
    pub load_avg_1m: f32,
    /// Attempts it finished.
    pub done: u64,
}

/// Everything `/metrics` shows, taken at once (`Core::metrics`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Tasks by state, every state present (zeros too, so a series never vanishes).
    pub tasks: Vec<(TaskState, u64)>,
    /// Ids handed out: every task accepted, including those read back from the journal.
    pub submitted_total: u64,
    pub requeued_total: u64,
    pub retried_total: u64,
    pub workers: Vec<WorkerMetrics>,
    /// Tasks waiting in a queue (not held for a retry backoff), per group; `""` is the default
    /// pool. Every group ever seen while there are at most [`QUEUE_GROUPS_LISTED`]; beyond, the
    /// first of those with waiting tasks, the rest summed in `queue_unlisted_*`.
    pub queue: Vec<(String, u64)>,
    pub queue_unlisted_groups: u64,
    pub queue_unlisted_tasks: u64,
    pub dispatch_latency: Histogram,
    pub start_latency: Histogram,
    pub commit_latency: Histogram,
    /// Connections past their handshake, and those still in it.
    pub worker_connections: u64,
    pub client_connections: u64,
    pub handshake_connections: u64,
    pub policy: String,
}

impl MetricsSnapshot {
    pub fn count(&self, state: TaskState) -> u64 {
        self.tasks
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |&(_, n)| n)
    }
}

/// `GET /api/v1/report`: the figures of `master simulate --json` for the real cluster, from what
/// the core kept as it went (no walk over the tasks; the worker table only).
///
/// - `makespan_s`: first submission to the last task becoming final (tasks read back from the
///   journal included).
/// - `lower_bound_s`: `max(busy time / slots, longest run)`: the real cluster has no speeds, so
///   capacity is slots, and work is the run time workers reported.
/// - `utilisation`: reported run time over `slots × makespan`, summed over every worker ever
///   seen (a worker that joined late counts its slots over the whole makespan, as downtime counts
///   in the simulator).
/// - completion times (succeeded tasks, final − submitted) come from log-spaced buckets: the
///   percentiles are the bucket's upper edge, within 2.2 % of the exact value, never above the
///   maximum; mean and max are exact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterReport {
    pub policy: String,
    pub tasks: u64,
    pub completed: u64,
    pub lost: u64,
    pub requeued: u64,
    pub makespan_s: f64,
    pub lower_bound_s: f64,
    pub utilisation: f64,
    pub order: String,
    pub workers: u32,
    pub groups: u32,
    pub slots: u32,
    /// Failed runs retried.
    pub failures: u64,
    /// Final as failed, timed out or cancelled (not lost).
    pub failed: u64,
    /// Not final yet.
    pub unfinished: u64,
    pub mean_completion_s: f64,
    pub p50_completion_s: f64,
    pub p99_completion_s: f64,
    pub max_completion_s: f64,
    pub per_group: Vec<GroupFigures>,
    pub per_worker: Vec<WorkerFigures>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupFigures {
    /// `""`: the default pool.
    pub group: String,
    pub workers: u32,
    /// Attempts finished by its workers.
    pub done: u64,
    pub utilisation: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerFigures {
    pub worker: String,
    pub group: String,
    pub state: &'static str,
    pub slots: u32,
    pub done: u64,
    /// Run time it reported, seconds.
    pub busy_s: f64,
    pub utilisation: f64,
}

fn micro(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
fn ratio(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl crate::Core {
    /// The experiment figures of what ran (`ClusterReport`).
    pub fn report(&self) -> ClusterReport {
        let m = &self.metrics;
        let makespan_ms = m.makespan_ms();
        let share = |busy_ms: u64, slots: u64| {
            if makespan_ms == 0 || slots == 0 {
                0.0
            } else {
                ratio(busy_ms as f64 / (slots as f64 * makespan_ms as f64))
            }
        };
        let mut per_worker = Vec::new();
        let mut groups: BTreeMap<String, (u32, u64, u64, u64)> = BTreeMap::new();
        let (mut slots, mut busy) = (0u64, 0u64);
        for w in self.workers.iter() {
            let busy_ms = w.busy_ms;
            let group = w.info.group.clone().unwrap_or_default();
            let g = groups.entry(group.clone()).or_default();
            g.0 += 1;
            g.1 += w.done;
            g.2 += busy_ms;
            g.3 += u64::from(w.info.slots);
            slots += u64::from(w.info.slots);
            busy += busy_ms;
            per_worker.push(WorkerFigures {
                worker: w.info.name.clone(),
                group,
                state: if w.is_alive() { "alive" } else { "dead" },
                slots: w.info.slots,
                done: w.done,
                busy_s: micro(busy_ms as f64 / 1e3),
                utilisation: share(busy_ms, u64::from(w.info.slots)),
            });
        }
        let t = &self.tasks;
        let lower_ms = if slots == 0 {
            0.0
        } else {
            (busy as f64 / slots as f64).max(m.longest_run_ms as f64)
        };
        let c = &m.completion;
        ClusterReport {
            policy: self.pools.kind().to_string(),
            tasks: t.len() as u64,
            completed: t.count(TaskState::Succeeded),
            lost: t.count(TaskState::WorkerLost),
            requeued: m.requeued,
            makespan_s: micro(makespan_ms as f64 / 1e3),
            lower_bound_s: micro(lower_ms / 1e3),
            utilisation: share(busy, slots),
            order: self.config.order.to_string(),
            workers: per_worker.len() as u32,
            groups: groups.keys().filter(|g| !g.is_empty()).count() as u32,
            slots: slots as u32,
            failures: m.retried,
            failed: t.count(TaskState::Failed)
                + t.count(TaskState::TimedOut)
                + t.count(TaskState::Cancelled)
                + t.count(TaskState::DependencyFailed),
            unfinished: t.unfinished(),
            mean_completion_s: micro(c.mean_ms() / 1e3),
            p50_completion_s: micro(c.percentile_ms(50.0) / 1e3),
            p99_completion_s: micro(c.percentile_ms(99.0) / 1e3),
            max_completion_s: micro(c.max_ms() as f64 / 1e3),
            per_group: groups
                .into_iter()
                .map(|(group, (workers, done, busy_ms, slots))| GroupFigures {
                    group,
                    workers,
                    done,
                    utilisation: share(busy_ms, slots),
                })
                .collect(),
            per_worker,
        }
    }
}

impl crate::Core {
    /// The metrics as they stand (`metrics.rs`): counters kept as tasks move, the worker table
    /// and the queues per group; no walk over the tasks.
    pub fn metrics(&self) -> MetricsSnapshot {
        let (worker_connections, client_connections, handshake_connections) =
            self.session.connection_counts();
        let queue = self.pools.queue_lens(QUEUE_GROUPS_LISTED);
        MetricsSnapshot {
            tasks: TaskState::ALL
                .iter()
                .map(|&s| (s, self.tasks.count(s)))
                .collect(),
            submitted_total: self.tasks.len() as u64,
            requeued_total: self.metrics.requeued,
            retried_total: self.metrics.retried,
            workers: self
                .workers
                .iter()
                .map(|w| WorkerMetrics {
                    name: w.info.name.clone(),
                    group: w.info.group.clone().unwrap_or_default(),
                    alive: w.is_alive(),
                    slots: w.info.slots,
                    running: w.assigned.len() as u32,
                    cpu_percent: w.load.cpu_percent,
                    load_avg_1m: w.load.load_avg_1m,
                    done: w.done,
                })
                .collect(),
            queue: queue.listed,
            queue_unlisted_groups: queue.unlisted_groups,
            queue_unlisted_tasks: queue.unlisted_tasks,
            dispatch_latency: self.metrics.dispatch_latency.clone(),
            start_latency: self.metrics.start_latency.clone(),
            commit_latency: self.metrics.commit_latency.clone(),
            worker_connections,
            client_connections,
            handshake_connections,
            policy: self.pools.kind().to_string(),
        }
    }

    /// A journal commit took this long (the shell measures; the core only keeps the histogram).
    pub fn observe_commit(&mut self, seconds: f64) {
        self.metrics.commit_latency.observe(seconds);
    }

    /// Checks every gauge against a walk over the tables (tests: after every step of the
    /// property test, the incremental counts must equal what a scan finds).
    #[cfg(test)]
    pub(crate) fn check_metrics(&self) {
        let m = self.metrics();
        for s in TaskState::ALL {
            let scanned = self.tasks.iter().filter(|(_, t)| t.state == s).count() as u64;
            assert_eq!(m.count(s), scanned, "tasks in state {s:?}");
        }
        assert_eq!(m.submitted_total, self.tasks.len() as u64);
        assert_eq!(self.tasks.kept(), self.tasks.iter().count() as u64);
        let mut queued: BTreeMap<String, u64> = BTreeMap::new();
        for (id, t) in self.tasks.iter() {
            if self.is_queued(id) {
                *queued
                    .entry(t.spec.group.clone().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        for (group, n) in &m.queue {
            assert_eq!(
                *n,
                queued.get(group).copied().unwrap_or(0),
                "queue of {group:?}"
            );
        }
        let listed: u64 = m.queue.iter().map(|(_, n)| n).sum();
        assert_eq!(listed + m.queue_unlisted_tasks, self.pools.len() as u64);
        for group in queued.keys() {
            assert!(
                m.queue.iter().any(|(g, _)| g == group),
                "group {group:?} listed"
            );
        }
        let status = self.status();
        assert_eq!(m.workers.len(), status.workers.len());
        for (w, s) in m.workers.iter().zip(&status.workers) {
            assert_eq!(w.name, s.name);
            assert_eq!(w.alive, s.state == protocol::WorkerState::Alive);
            assert_eq!(w.running, s.running);
            assert_eq!(w.slots, s.slots);
        }
        let alive = m.workers.iter().filter(|w| w.alive).count() as u64;
        assert_eq!(
            m.worker_connections, alive,
            "a live worker has one connection"
        );
        let finals: u64 = TaskState::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|&s| m.count(s))
            .sum();
        assert_eq!(
            self.metrics.completion.count(),
            m.count(TaskState::Succeeded) + self.metrics.forgotten_succeeded
        );
        let dispatched = self.tasks.iter().filter(|(_, t)| t.dispatched).count() as u64;
        assert_eq!(
            m.dispatch_latency.count(),
            dispatched + self.metrics.forgotten_dispatched,
            "one observation per first handout"
        );
        assert!(finals <= m.submitted_total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c, vec![(1.0, 2), (2.0, 3)]);
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn duration_percentiles_are_within_the_bucket_width() {
        let mut d = Durations::default();
        for ms in 1..=10_000u64 {
            d.observe(ms);
        }
        for (p, want) in [(50.0, 5_000.0), (99.0, 9_900.0), (100.0, 10_000.0)] {
            let got = d.percentile_ms(p);
            assert!(got >= want && got <= want * 1.023, "p{p}: {got} vs {want}");
        }
        assert_eq!(d.max_ms(), 10_000);
        assert!((d.mean_ms() - 5_000.5).abs() < 1e-6);
        let mut zero = Durations::default();
        zero.observe(0);
        assert_eq!(zero.percentile_ms(50.0), 0.0);
        assert_eq!(Durations::default().percentile_ms(50.0), 0.0);
    }
}
