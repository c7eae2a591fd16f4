//! Whether prefetching pays at a worker that left the choice to the master
//! (`WorkerInfo::prefetch_adaptive`, a worker started without `--prefetch`).
//!
//! A task held beyond the slots saves the slot that frees next one round trip (its `Finished` up,
//! the next `Assign` down). It costs placement: the task is bound to this worker before a slot is
//! free for it, and when another worker idles, rebalancing takes it back at the price of another
//! round trip. So the master holds one only while the worker's recent runs are short next to its
//! round trip, when the trip is a large share of each slot's time; while they are long it holds
//! none, and long tasks are placed where a slot is free, least loaded first.
//!
//! No IO: times are the core's milliseconds, samples arrive through the worker table.

use protocol::TaskId;

/// A run is short below this many round trips: without prefetch its slot would then wait for the
/// next task more than 1/21 (about 5%) of the time.
pub const SHORT_RUN_ROUND_TRIPS: u64 = 20;
/// The core's clock ticks in milliseconds, so a loopback round trip often reads 0: it counts as 1.
const MIN_ROUND_TRIP_MS: u64 = 1;
/// Samples are cut here before averaging (they come from the network): a day.
const MAX_SAMPLE_MS: u64 = 86_400_000;
/// The averages keep 1/16 ms, so runs well under a millisecond do not all read as 0.
const FIXED_POINT: u64 = 16;
/// The newest sample weighs 1/8: a few tasks of a new kind turn the decision, one odd task
/// does not.
const NEW_SAMPLE_WEIGHT_SHIFT: u32 = 3;

#[derive(Debug, Default, Clone)]
pub struct PrefetchGauge {
    /// Moving average of the run times the worker reports (`Completion::run_ms`), in 1/16 ms;
    /// `None` before its first run.
    run: Option<u64>,
    /// Moving average of the time from an `Assign` to a free slot to that run's `Started`: what
    /// a freed slot waits without prefetch (the round trip and the spawn), in 1/16 ms.
    round_trip: Option<u64>,
    /// The one run being timed for `round_trip`: its task and when it was assigned.
    probe: Option<(TaskId, u64)>,
}

fn average(old: Option<u64>, sample_ms: u64) -> u64 {
    let sample = sample_ms.min(MAX_SAMPLE_MS) * FIXED_POINT;
    match old {
        None => sample,
        Some(avg) => avg - (avg >> NEW_SAMPLE_WEIGHT_SHIFT) + (sample >> NEW_SAMPLE_WEIGHT_SHIFT),
    }
}

impl PrefetchGauge {
    /// Whether to hold tasks beyond the slots now. Not before a first run: until a run says the
    /// tasks are short, they are placed as if long.
    pub fn pays(&self) -> bool {
        let Some(run) = self.run else {
            return false;
        };
        let round_trip = self
            .round_trip
            .unwrap_or(0)
            .max(MIN_ROUND_TRIP_MS * FIXED_POINT);
        run < SHORT_RUN_ROUND_TRIPS * round_trip
    }

    /// `task` was handed to a free slot at `now_ms`: its start times the round trip, unless
    /// another run is being timed.
    pub fn assigned_to_free_slot(&mut self, task: TaskId, now_ms: u64) {
        if self.probe.is_none() {
            self.probe = Some((task, now_ms));
        }
    }

    /// The worker reported `task` started at `now_ms`.
    pub fn started(&mut self, task: TaskId, now_ms: u64) {
        if let Some((probed, at_ms)) = self.probe {
            if probed == task {
                self.probe = None;
                self.round_trip = Some(average(self.round_trip, now_ms.saturating_sub(at_ms)));
            }
        }
    }

    /// `task` left the worker (finished, returned, taken back): a probe of it ends unmeasured.
    pub fn left(&mut self, task: TaskId) {
        if self.probe.is_some_and(|(probed, _)| probed == task) {
            self.probe = None;
        }
    }

    /// The worker lost its connection: nothing in flight is measured.
    pub fn disconnected(&mut self) {
        self.probe = None;
    }

    /// A run ended after `run_ms` on the worker.
    pub fn ran(&mut self, run_ms: u64) {
        self.run = Some(average(self.run, run_ms));
    }

    #[cfg(test)]
    pub fn round_trip_ms(&self) -> Option<u64> {
        self.round_trip.map(|r| r / FIXED_POINT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nothing_before_a_first_run() {
        assert!(!PrefetchGauge::default().pays());
    }

    #[test]
    fn short_runs_on_loopback_pay_and_long_ones_do_not() {
        let mut g = PrefetchGauge::default();
        g.ran(0);
        assert!(
            g.pays(),
            "a run of 0 ms against the 1 ms floor of the round trip"
        );
        let mut g = PrefetchGauge::default();
        g.ran(SHORT_RUN_ROUND_TRIPS * MIN_ROUND_TRIP_MS);
        assert!(!g.pays(), "20 ms against a round trip read as 0 ms");
    }

    #[test]
    fn a_slow_link_makes_longer_runs_short() {
        let mut g = PrefetchGauge::default();
        g.assigned_to_free_slot(TaskId(1), 1_000);
        // Another task handed out meanwhile is not timed: one probe at a time.
        g.assigned_to_free_slot(TaskId(2), 1_010);
        g.started(TaskId(2), 1_030);
        assert_eq!(g.round_trip_ms(), None);
        g.started(TaskId(1), 1_050);
        assert_eq!(g.round_trip_ms(), Some(50));
        g.ran(500);
        assert!(g.pays(), "500 ms is 10 round trips of 50 ms");
        g.ran(2_000);
        assert!(g.pays(), "one longer run moves the average by an eighth");
        for _ in 0..20 {
            g.ran(5_000);
        }
        assert!(!g.pays(), "runs of 100 round trips");
    }

    #[test]
    fn turns_off_when_runs_grow_and_back_on_when_they_shrink() {
        let mut g = PrefetchGauge::default();
        g.ran(1);
        assert!(g.pays());
        let mut turns_after = None;
        for i in 1..=20 {
            g.ran(1_000);
            if !g.pays() {
                turns_after = Some(i);
                break;
            }
        }
        assert_eq!(
            turns_after,
            Some(1),
            "one run of 1,000 round trips outweighs a short one"
        );
        let mut back_after = None;
        for i in 1..=100 {
            g.ran(0);
            if g.pays() {
                back_after = Some(i);
                break;
            }
        }
        assert!(back_after.is_some_and(|n| n > 1), "{back_after:?}");
    }

    #[test]
    fn a_probe_of_a_task_that_left_ends_unmeasured() {
        let mut g = PrefetchGauge::default();
        g.assigned_to_free_slot(TaskId(1), 0);
        g.left(TaskId(1));
        g.assigned_to_free_slot(TaskId(2), 100);
        g.started(TaskId(2), 103);
        assert_eq!(g.round_trip_ms(), Some(3));
        g.assigned_to_free_slot(TaskId(3), 200);
        g.disconnected();
        g.started(TaskId(3), 10_000);
        assert_eq!(g.round_trip_ms(), Some(3));
    }

    #[test]
    fn samples_from_the_network_are_cut() {
        let mut g = PrefetchGauge::default();
        g.ran(u64::MAX);
        g.ran(u64::MAX);
        assert!(!g.pays());
        g.assigned_to_free_slot(TaskId(1), 0);
        g.started(TaskId(1), u64::MAX);
        assert_eq!(g.round_trip_ms(), Some(MAX_SAMPLE_MS));
    }
}
