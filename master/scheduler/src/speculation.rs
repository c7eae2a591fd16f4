//! Speculative copies of stragglers (`master --speculate F`): when a slot is idle and nothing is
//! queued, a task that has run longer than F times its size-scaled estimate gets one more copy on
//! another worker; the first success wins and the other copy is cancelled.
//!
//! The estimate is `size × r`, where `r` is the milliseconds per unit of `size` over every success
//! so far (total run time over total size, so long tasks weigh in proportion). A task of size 0
//! has no estimate and is never speculated.

use super::Core;
use log::info;
use protocol::{TaskId, TaskState};

/// Successes needed before estimates are trusted.
const MIN_SAMPLES: u32 = 3;

#[derive(Debug, Default)]
pub struct RunEstimate {
    total_ms: f64,
    total_size: f64,
    samples: u32,
}

impl RunEstimate {
    /// One successful run of a task of `size` that took `run_ms`.
    pub fn record(&mut self, size: f64, run_ms: u64) {
        if size > 0.0 {
            self.total_ms += run_ms as f64;
            self.total_size += size;
            self.samples += 1;
        }
    }

    /// The expected run time of a task of `size`, once there is enough to go on.
    pub fn estimate_ms(&self, size: f64) -> Option<f64> {
        if self.samples < MIN_SAMPLES || self.total_size <= 0.0 || size <= 0.0 {
            return None;
        }
        Some(size * self.total_ms / self.total_size)
    }
}

impl Core {
    /// Asks for a copy of the worst stragglers, at most one per idle slot. Called from the sweep,
    /// so its cost (a pass over the running tasks) is paid ten times a second, not per event.
    pub(super) fn speculate(&mut self, now_ms: u64, factor: f64) {
        if self.pools.len() > 0 {
            return;
        }
        let idle: u32 = self
            .workers
            .idle()
            .map(|w| (w.info.slots as usize).saturating_sub(w.busy()) as u32)
            .sum();
        if idle == 0 {
            return;
        }
        let mut stragglers: Vec<(f64, TaskId, u64, f64)> = Vec::new();
        for w in self.workers.iter().filter(|w| w.is_alive()) {
            for &id in &w.assigned {
                let Some(t) = self.tasks.get(id) else {
                    continue;
                };
                // Each task is looked at once: from its primary run's worker.
                if t.state != TaskState::Running || t.worker != Some(w.id) || t.cancel_requested {
                    continue;
                }
                if t.copies.as_ref().is_some_and(|c| c.speculated) || t.wants_copy() {
                    continue;
                }
                let (Some(started), Some(estimate)) =
                    (t.started_ms, self.estimate.estimate_ms(t.spec.size))
                else {
                    continue;
                };
                let ran = now_ms.saturating_sub(started);
                let overrun = ran as f64 / estimate;
                if overrun > factor {
                    stragglers.push((overrun, id, ran, estimate));
                }
            }
        }
        // Worst first; ids break ties so the choice does not depend on hash order.
        stragglers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (overrun, id, ran, estimate) in stragglers.into_iter().take(idle as usize) {
            if self.tasks.speculate(id) {
                info!(
                    "task {id} has run {ran} ms, {overrun:.1}x its estimate of {estimate:.0} ms: \
                     starting a speculative copy"
                );
                self.enqueue(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_scales_with_size_after_enough_samples() {
        let mut e = RunEstimate::default();
        e.record(1.0, 100);
        e.record(2.0, 200);
        assert_eq!(e.estimate_ms(1.0), None, "two samples are not enough");
        e.record(0.0, 5_000); // no size: says nothing about the rate
        assert_eq!(e.estimate_ms(1.0), None);
        e.record(1.0, 100);
        assert_eq!(e.estimate_ms(3.0), Some(300.0));
        assert_eq!(e.estimate_ms(0.0), None);
    }
}
