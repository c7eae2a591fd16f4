//! Where the next task goes. Both policies keep only workers with a free slot in an ordered set, so a
//! pick is O(log W) and an update (assign, finish, load report) is O(log W): no scan over all
//! workers per task.
//!
//! Least-loaded: `score = max(cpu_percent / 100, busy / slots)`, where `busy` counts tasks the master
//! has assigned to the worker and not yet seen finish (so an assignment counts before the next load
//! report and a burst is not herded onto one worker). The lowest score wins; ties go to the worker
//! with more free slots, then to the lower id.
//!
//! Round-robin: the next worker with a free slot after the last one picked, in join (id) order.

use protocol::WorkerId;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    LeastLoaded,
    RoundRobin,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::RoundRobin => "round-robin",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least-loaded" => Ok(PolicyKind::LeastLoaded),
            "round-robin" => Ok(PolicyKind::RoundRobin),
            other => Err(format!(
                "unknown policy {other:?} (choose least-loaded or round-robin)"
            )),
        }
    }
}

/// What placement needs to know about a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu_percent: f32,
    pub busy: u32,
    pub slots: u32,
}

impl Capacity {
    pub fn free(&self) -> u32 {
        self.slots.saturating_sub(self.busy)
    }

    /// The least-loaded score, in [0, ∞).
    pub fn score(&self) -> f64 {
        let cpu = (self.cpu_percent.clamp(0.0, 100.0) / 100.0) as f64;
        let share = self.busy as f64 / self.slots.max(1) as f64;
        cpu.max(share)
    }
}

/// Sort key for least-loaded: score in millionths (floats do not order totally), more free first, id.
type LoadKey = (u64, Reverse<u32>, WorkerId);

#[derive(Debug)]
pub struct Placement {
    kind: PolicyKind,
    /// Workers with a free slot, best first (least-loaded only).
    by_load: BTreeSet<LoadKey>,
    /// Each eligible worker's current key in `by_load`, to remove it on update.
    keys: HashMap<WorkerId, LoadKey>,
    /// Workers with a free slot in join order (round-robin only).
    by_id: BTreeSet<WorkerId>,
    last_pick: Option<WorkerId>,
}

/// A placement decision, with the score that made it (for the log).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub worker: WorkerId,
    pub score: f64,
}

impl Placement {
    pub fn new(kind: PolicyKind) -> Self {
        Placement {
            kind,
            by_load: BTreeSet::new(),
            keys: HashMap::new(),
            by_id: BTreeSet::new(),
            last_pick: None,
        }
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Records a worker's new capacity; a worker without a free slot leaves the candidate set.
    pub fn update(&mut self, worker: WorkerId, cap: Capacity) {
        self.remove(worker);
        if cap.free() == 0 {
            return;
        }
        match self.kind {
            PolicyKind::LeastLoaded => {
                let key = (
                    (cap.score() * 1e6).round() as u64,
                    Reverse(cap.free()),
                    worker,
                );
                self.by_load.insert(key);
                self.keys.insert(worker, key);
            }
            PolicyKind::RoundRobin => {
                self.by_id.insert(worker);
            }
        }
    }

    /// Forgets a worker (dead, or full).
    pub fn remove(&mut self, worker: WorkerId) {
        if let Some(key) = self.keys.remove(&worker) {
            self.by_load.remove(&key);
        }
        self.by_id.remove(&worker);
    }

    /// The worker the next task should go to, if any has a free slot. The caller assigns the task
    /// and then calls `update` with the worker's new capacity.
    pub fn pick(&mut self) -> Option<Pick> {
        match self.kind {
            PolicyKind::LeastLoaded => self.by_load.first().map(|&(score, _, worker)| Pick {
                worker,
                score: score as f64 / 1e6,
            }),
            PolicyKind::RoundRobin => {
                let next = match self.last_pick {
                    Some(last) => self
                        .by_id
                        .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                        .next()
                        .or_else(|| self.by_id.first()),
                    None => self.by_id.first(),
                }
                .copied()?;
                self.last_pick = Some(next);
                Some(Pick {
                    worker: next,
                    score: 0.0,
                })
            }
        }
    }

    pub fn has_candidates(&self) -> bool {
        match self.kind {
            PolicyKind::LeastLoaded => !self.by_load.is_empty(),
            PolicyKind::RoundRobin => !self.by_id.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(cpu: f32, busy: u32, slots: u32) -> Capacity {
        Capacity {
            cpu_percent: cpu,
            busy,
            slots,
        }
    }

    #[test]
    fn score_is_max_of_cpu_and_share() {
        assert_eq!(cap(35.0, 0, 4).score(), 0.35f32 as f64);
        assert_eq!(cap(10.0, 3, 4).score(), 0.75);
        assert_eq!(cap(250.0, 0, 4).score(), 1.0, "cpu is clamped");
    }

    #[test]
    fn least_loaded_picks_lowest_score() {
        let mut p = Placement::new(PolicyKind::LeastLoaded);
        p.update(WorkerId(1), cap(90.0, 0, 2));
        p.update(WorkerId(2), cap(35.0, 0, 4));
        assert_eq!(p.pick().map(|k| k.worker), Some(WorkerId(2)));
        // Two tasks on 2 of 4 slots: share 0.5 > cpu 0.35, still below 0.9.
        p.update(WorkerId(2), cap(35.0, 2, 4));
        assert_eq!(p.pick().map(|k| k.worker), Some(WorkerId(2)));
        p.update(WorkerId(2), cap(35.0, 4, 4));
        assert_eq!(
            p.pick().map(|k| k.worker),
            Some(WorkerId(1)),
            "full worker leaves"
        );
        p.update(WorkerId(1), cap(90.0, 2, 2));
        assert_eq!(p.pick(), None);
    }

    #[test]
    fn least_loaded_ties_prefer_free_slots_then_lower_id() {
        let mut p = Placement::new(PolicyKind::LeastLoaded);
        p.update(WorkerId(3), cap(0.0, 0, 2));
        p.update(WorkerId(2), cap(0.0, 0, 8));
        p.update(WorkerId(1), cap(0.0, 0, 2));
        assert_eq!(p.pick().map(|k| k.worker), Some(WorkerId(2)));
        p.remove(WorkerId(2));
        assert_eq!(p.pick().map(|k| k.worker), Some(WorkerId(1)));
    }

    #[test]
    fn round_robin_cycles_in_join_order_skipping_full() {
        let mut p = Placement::new(PolicyKind::RoundRobin);
        for id in 1..=3 {
            p.update(WorkerId(id), cap(0.0, 0, 1));
        }
        let mut got = vec![];
        for _ in 0..4 {
            got.push(p.pick().map(|k| k.worker.0));
        }
        assert_eq!(got, vec![Some(1), Some(2), Some(3), Some(1)]);
        p.update(WorkerId(2), cap(0.0, 1, 1));
        assert_eq!(p.pick().map(|k| k.worker.0), Some(3));
        assert_eq!(p.pick().map(|k| k.worker.0), Some(1));
    }
}
