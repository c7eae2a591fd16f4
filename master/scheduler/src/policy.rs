//! Where the next task goes, and which queued task goes next. Every policy keeps only workers with a
//! free slot in its candidate structure, so a pick is O(1) (least-loaded and weighted: the root of
//! a [`LoadHeap`]) or O(log W), and an update (assign, finish, load report) is O(log W): no scan
//! over all workers per task.
//!
//! Placement policies (`--policy`):
//!
//! - **least-loaded** (default): `score = max(cpu_percent / 100, busy / slots)`, where `busy` counts
//!   tasks the master has assigned to the worker and not yet seen finish (so an assignment counts
//!   before the next load report and a burst is not herded onto one worker). The lowest score
//!   wins; ties go to the worker with more free slots, then to the lower id. Scores are compared in
//!   millionths (floats do not order totally).
//! - **round-robin**: the next worker with a free slot after the last one picked, in join (id)
//!   order.
//! - **power-of-two** (two random choices): two distinct workers are drawn uniformly at random from
//!   those with a free slot and the one the least-loaded order prefers wins (with one candidate, it
//!   wins). Almost as well balanced as least-loaded, but with no global order that every pick
//!   agrees on, so a fleet of masters or a stale load view does not herd tasks onto one worker.
//!   The draws come from a splitmix64 stream seeded by `CoreConfig::seed`, so a run is replayable.
//!   Candidates live in a `Vec` with an index map: a pick is O(1), an update O(1).
//! - **weighted** (weighted least-connections): ignores `cpu_percent` and balances by declared
//!   capacity alone. `share = busy / slots`; the lowest share (the largest free fraction
//!   `(slots - busy) / slots`) wins; ties go to the worker with more slots, then to the lower id.
//!   Useful when load reports are noisy or shared with other tenants, and the slot counts are the
//!   truth about capacity.
//!
//! Queue order (`--order`), within one priority level (higher priorities always go first):
//!
//! - **fifo** (default): submit order.
//! - **largest-first**: the largest `size` first, then submit order (the LPT rule: starting the
//!   long tasks early keeps them from forming the tail of a batch).

use crate::id_hash::IdHashMap;
use crate::load_heap::{LoadHeap, LoadKey};
use protocol::WorkerId;
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    LeastLoaded,
    RoundRobin,
    PowerOfTwo,
    Weighted,
}

impl PolicyKind {
    /// Every policy, in the order `master simulate --compare` shows them.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::LeastLoaded,
        PolicyKind::RoundRobin,
        PolicyKind::PowerOfTwo,
        PolicyKind::Weighted,
    ];

    /// Every policy's command-line name (for clap's value parser).
    pub const NAMES: [&'static str; 4] =
        ["least-loaded", "round-robin", "power-of-two", "weighted"];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::PowerOfTwo => "power-of-two",
            PolicyKind::Weighted => "weighted",
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
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy {s:?} (choose {})",
                    PolicyKind::NAMES.join(", ")
                )
            })
    }
}

/// Which queued task leaves first within one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueOrder {
    /// Submit order.
    #[default]
    Fifo,
    /// Largest `size` first, then submit order.
    LargestFirst,
}

impl QueueOrder {
    pub const NAMES: [&'static str; 2] = ["fifo", "largest-first"];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueOrder::Fifo => "fifo",
            QueueOrder::LargestFirst => "largest-first",
        }
    }

    /// The queue's tie-breaker within a priority level (lower leaves first), for a task with
    /// submit sequence `seq` and estimated `size` (finite and >= 0: `TaskSpec::validate`).
    ///
    /// Largest-first packs two keys into the u64: the size's f32 bits inverted in the high half
    /// (non-negative f32 bits order like the numbers, so inverted they order largest first; sizes
    /// within f32 precision, about 7 digits, tie), and the low 32 bits of the sequence below. Ties
    /// therefore keep submit order until ids pass 2^32, after which they are only deterministic.
    pub fn tie_breaker(self, seq: u64, size: f64) -> u64 {
        match self {
            QueueOrder::Fifo => seq,
            QueueOrder::LargestFirst => {
                let bits = (size.max(0.0) as f32).to_bits();
                (u64::from(!bits) << 32) | (seq & 0xFFFF_FFFF)
            }
        }
    }
}

impl fmt::Display for QueueOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fifo" => Ok(QueueOrder::Fifo),
            "largest-first" => Ok(QueueOrder::LargestFirst),
            other => Err(format!(
                "unknown queue order {other:?} (choose fifo or largest-first)"
            )),
        }
    }
}

/// What placement needs to know about a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu_percent: f32,
    /// Tasks assigned and not finished, prefetched ones included.
    pub busy: u32,
    pub slots: u32,
    /// Tasks it may hold beyond its slots, not yet started (`worker --prefetch`).
    pub prefetch: u32,
}

impl Capacity {
    /// Tasks it can take now: free slots and free prefetch places. The scores use `busy / slots`,
    /// so a worker with a free slot (score below 1) is preferred to one that would only prefetch.
    pub fn free(&self) -> u32 {
        (self.slots + self.prefetch).saturating_sub(self.busy)
    }

    /// The least-loaded score, in [0, ∞).
    pub fn score(&self) -> f64 {
        let cpu = (self.cpu_percent.clamp(0.0, 100.0) / 100.0) as f64;
        cpu.max(self.share())
    }

    /// Busy slots as a fraction of all slots (the weighted policy's score).
    pub fn share(&self) -> f64 {
        self.busy as f64 / self.slots.max(1) as f64
    }
}

fn millionths(x: f64) -> u64 {
    (x * 1e6).round() as u64
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick among workers. It
/// lives here rather than in a crate so the core's only randomness is this seeded, replayable one.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 for any n we see).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[derive(Debug)]
pub struct Placement {
    kind: PolicyKind,
    /// Workers with a free slot, best at the root (least-loaded, weighted). Keys: a score in
    /// millionths (floats do not order totally), a tie-breaker where larger is better (free
    /// slots for least-loaded, slots for weighted), then the id.
    ordered: LoadHeap,
    /// Each candidate's key, for power-of-two to compare its two draws. Only looked up.
    keys: IdHashMap<WorkerId, LoadKey>,
    /// Workers with a free slot in join order (round-robin).
    by_id: BTreeSet<WorkerId>,
    last_pick: Option<WorkerId>,
    /// Workers with a free slot, in no particular order, and where each sits (power-of-two).
    pool: Vec<WorkerId>,
    /// Where each worker sits in `pool`; only looked up.
    pool_index: IdHashMap<WorkerId, usize>,
    rng: SplitMix64,
}

/// A placement decision, with the score that made it (for the log).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub worker: WorkerId,
    pub score: f64,
}

impl Placement {
    /// `seed` drives the random policies (power-of-two); the others ignore it.
    pub fn new(kind: PolicyKind, seed: u64) -> Self {
        Placement {
            kind,
            ordered: LoadHeap::default(),
            keys: IdHashMap::default(),
            by_id: BTreeSet::new(),
            last_pick: None,
            pool: Vec::new(),
            pool_index: IdHashMap::default(),
            rng: SplitMix64::new(seed),
        }
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Records a worker's new capacity; a worker without a free slot leaves the candidate set.
    pub fn update(&mut self, worker: WorkerId, cap: Capacity) {
        let free = cap.free() > 0;
        match self.kind {
            // Moves from where it sits; a heartbeat with the same load, as most are, moves nothing.
            PolicyKind::LeastLoaded | PolicyKind::Weighted if free => {
                self.ordered.set(self.key(worker, cap));
            }
            PolicyKind::LeastLoaded | PolicyKind::Weighted => {
                self.ordered.remove(worker);
            }
            PolicyKind::RoundRobin if free => {
                self.by_id.insert(worker);
            }
            PolicyKind::RoundRobin => {
                self.by_id.remove(&worker);
            }
            // Always out and in again: re-insertion reorders its pool and so its draws.
            PolicyKind::PowerOfTwo => {
                self.remove(worker);
                if free {
                    self.keys.insert(worker, self.key(worker, cap));
                    self.pool_index.insert(worker, self.pool.len());
                    self.pool.push(worker);
                }
            }
        }
    }

    fn key(&self, worker: WorkerId, cap: Capacity) -> LoadKey {
        match self.kind {
            PolicyKind::Weighted => (millionths(cap.share()), Reverse(cap.slots), worker),
            _ => (millionths(cap.score()), Reverse(cap.free()), worker),
        }
    }

    /// Whether placement holds `worker` exactly as `update(worker, cap)` would leave it (`None`:
    /// not at all), for the core's cross-checks.
    #[cfg(test)]
    pub fn agrees(&self, worker: WorkerId, cap: Option<Capacity>) -> bool {
        let cap = cap.filter(|c| c.free() > 0);
        match self.kind {
            PolicyKind::RoundRobin => self.by_id.contains(&worker) == cap.is_some(),
            PolicyKind::LeastLoaded | PolicyKind::Weighted => {
                self.ordered.get(worker).copied() == cap.map(|c| self.key(worker, c))
            }
            PolicyKind::PowerOfTwo => {
                self.keys.get(&worker).copied() == cap.map(|c| self.key(worker, c))
            }
        }
    }

    /// Forgets a worker (dead, or full).
    pub fn remove(&mut self, worker: WorkerId) {
        self.ordered.remove(worker);
        self.keys.remove(&worker);
        self.by_id.remove(&worker);
        if let Some(i) = self.pool_index.remove(&worker) {
            self.pool.swap_remove(i);
            if let Some(&moved) = self.pool.get(i) {
                self.pool_index.insert(moved, i);
            }
        }
    }

    /// The worker the next task should go to, if any has a free slot. The caller assigns the task
    /// and then calls `update` with the worker's new capacity.
    #[cfg(test)]
    pub fn pick(&mut self) -> Option<Pick> {
        self.pick_excluding(|_| false)
    }

    /// Like `pick`, among the workers for which `excluded` is false: a copy of a task must not
    /// land where another copy runs. `excluded` is true for at most a few workers, so the ordered
    /// policies skip them in passing; power-of-two draws among the rest.
    pub fn pick_excluding(&mut self, excluded: impl Fn(WorkerId) -> bool) -> Option<Pick> {
        let worker = match self.kind {
            PolicyKind::LeastLoaded | PolicyKind::Weighted => {
                self.ordered.first_excluding(&excluded)?.2
            }
            PolicyKind::RoundRobin => {
                use std::ops::Bound::{Excluded, Included, Unbounded};
                let (after, upto) = match self.last_pick {
                    Some(last) => ((Excluded(last), Unbounded), (Unbounded, Included(last))),
                    None => ((Unbounded, Unbounded), (Unbounded, Unbounded)),
                };
                let next = self
                    .by_id
                    .range(after)
                    .chain(self.by_id.range(upto))
                    .copied()
                    .find(|&w| !excluded(w))?;
                self.last_pick = Some(next);
                next
            }
            PolicyKind::PowerOfTwo => self.pick_two(&excluded)?,
        };
        let score = match self.kind {
            PolicyKind::RoundRobin => 0,
            PolicyKind::LeastLoaded | PolicyKind::Weighted => {
                self.ordered.get(worker).map_or(0, |k| k.0)
            }
            PolicyKind::PowerOfTwo => self.keys.get(&worker).map_or(0, |k| k.0),
        };
        Some(Pick {
            worker,
            score: score as f64 / 1e6,
        })
    }

    /// Two distinct random candidates, the one the least-loaded order prefers wins.
    fn pick_two(&mut self, excluded: &impl Fn(WorkerId) -> bool) -> Option<WorkerId> {
        let n = self.pool.len();
        let (a, b) = match n {
            0 => return None,
            1 => (self.pool[0], None),
            _ => {
                // Two distinct draws: the second skips over the first.
                let i = self.rng.below(n);
                let mut j = self.rng.below(n - 1);
                if j >= i {
                    j += 1;
                }
                (self.pool[i], Some(self.pool[j]))
            }
        };
        let drawn = [Some(a), b].into_iter().flatten().filter(|&w| !excluded(w));
        let better = |x: WorkerId, y: WorkerId| match (self.keys.get(&x), self.keys.get(&y)) {
            (Some(kx), Some(ky)) if ky < kx => y,
            _ => x,
        };
        if let Some(w) = drawn.reduce(better) {
            return Some(w);
        }
        // Both draws excluded (rare: only copies exclude): draw again among the others.
        let rest: Vec<WorkerId> = self
            .pool
            .iter()
            .copied()
            .filter(|&w| !excluded(w))
            .collect();
        match rest.len() {
            0 => None,
            1 => Some(rest[0]),
            m => {
                let i = self.rng.below(m);
                let mut j = self.rng.below(m - 1);
                if j >= i {
                    j += 1;
                }
                Some(better(rest[i], rest[j]))
            }
        }
    }

    pub fn has_candidates(&self) -> bool {
        match self.kind {
            PolicyKind::LeastLoaded | PolicyKind::Weighted => !self.ordered.is_empty(),
            PolicyKind::RoundRobin => !self.by_id.is_empty(),
            PolicyKind::PowerOfTwo => !self.pool.is_empty(),
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
            prefetch: 0,
        }
    }

    fn pick(p: &mut Placement) -> Option<u32> {
        p.pick().map(|k| k.worker.0)
    }

    #[test]
    fn score_is_max_of_cpu_and_share() {
        assert_eq!(cap(35.0, 0, 4).score(), 0.35f32 as f64);
        assert_eq!(cap(10.0, 3, 4).score(), 0.75);
        assert_eq!(cap(250.0, 0, 4).score(), 1.0, "cpu is clamped");
    }

    #[test]
    fn policy_names_round_trip() {
        for (p, name) in PolicyKind::ALL.into_iter().zip(PolicyKind::NAMES) {
            assert_eq!(p.as_str(), name);
            assert_eq!(name.parse::<PolicyKind>(), Ok(p));
        }
        let e = "fastest".parse::<PolicyKind>().unwrap_err();
        assert!(e.contains("power-of-two, weighted"), "{e}");
        for name in QueueOrder::NAMES {
            assert_eq!(name.parse::<QueueOrder>().map(|o| o.as_str()), Ok(name));
        }
        assert!("lifo".parse::<QueueOrder>().is_err());
    }

    #[test]
    fn least_loaded_picks_lowest_score() {
        let mut p = Placement::new(PolicyKind::LeastLoaded, 0);
        p.update(WorkerId(1), cap(90.0, 0, 2));
        p.update(WorkerId(2), cap(35.0, 0, 4));
        assert_eq!(pick(&mut p), Some(2));
        // Two tasks on 2 of 4 slots: share 0.5 > cpu 0.35, still below 0.9.
        p.update(WorkerId(2), cap(35.0, 2, 4));
        assert_eq!(pick(&mut p), Some(2));
        p.update(WorkerId(2), cap(35.0, 4, 4));
        assert_eq!(pick(&mut p), Some(1), "full worker leaves");
        p.update(WorkerId(1), cap(90.0, 2, 2));
        assert_eq!(p.pick(), None);
        assert!(!p.has_candidates());
    }

    #[test]
    fn least_loaded_ties_prefer_free_slots_then_lower_id() {
        let mut p = Placement::new(PolicyKind::LeastLoaded, 0);
        p.update(WorkerId(3), cap(0.0, 0, 2));
        p.update(WorkerId(2), cap(0.0, 0, 8));
        p.update(WorkerId(1), cap(0.0, 0, 2));
        assert_eq!(pick(&mut p), Some(2));
        p.remove(WorkerId(2));
        assert_eq!(pick(&mut p), Some(1));
    }

    #[test]
    fn round_robin_cycles_in_join_order_skipping_full() {
        let mut p = Placement::new(PolicyKind::RoundRobin, 0);
        for id in 1..=3 {
            p.update(WorkerId(id), cap(0.0, 0, 1));
        }
        let got: Vec<_> = (0..4).map(|_| pick(&mut p)).collect();
        assert_eq!(got, vec![Some(1), Some(2), Some(3), Some(1)]);
        p.update(WorkerId(2), cap(0.0, 1, 1));
        assert_eq!(pick(&mut p), Some(3));
        assert_eq!(pick(&mut p), Some(1));
    }

    #[test]
    fn weighted_prefers_largest_free_fraction_ignoring_cpu() {
        let mut p = Placement::new(PolicyKind::Weighted, 0);
        // 1 of 2 busy (free 50%) but idle cpu, against 1 of 4 busy (free 75%) at 99% cpu.
        p.update(WorkerId(1), cap(0.0, 1, 2));
        p.update(WorkerId(2), cap(99.0, 1, 4));
        assert_eq!(p.pick().map(|k| (k.worker.0, k.score)), Some((2, 0.25)));
        // Equal fractions (2 of 8 and 1 of 4 busy): more slots wins, then the lower id.
        p.update(WorkerId(1), cap(0.0, 2, 8));
        assert_eq!(pick(&mut p), Some(1));
        p.update(WorkerId(3), cap(0.0, 2, 8));
        assert_eq!(pick(&mut p), Some(1));
        p.update(WorkerId(1), cap(0.0, 8, 8));
        assert_eq!(pick(&mut p), Some(3), "full worker leaves");
        p.remove(WorkerId(3));
        assert_eq!(pick(&mut p), Some(2));
        p.remove(WorkerId(2));
        assert_eq!(p.pick(), None);
        assert!(!p.has_candidates());
    }

    #[test]
    fn power_of_two_picks_the_better_of_two_distinct_draws() {
        let mut p = Placement::new(PolicyKind::PowerOfTwo, 7);
        assert_eq!(p.pick(), None);
        p.update(WorkerId(1), cap(0.0, 0, 4));
        assert_eq!(pick(&mut p), Some(1), "a lone candidate always wins");
        // Two candidates: both are always drawn, so the better one always wins.
        p.update(WorkerId(2), cap(80.0, 0, 4));
        for _ in 0..20 {
            assert_eq!(pick(&mut p), Some(1));
        }
        // Worker 1 full: it leaves the pool and 2 is the only choice.
        p.update(WorkerId(1), cap(0.0, 4, 4));
        assert_eq!(pick(&mut p), Some(2));
        assert!(p.has_candidates());
    }

    #[test]
    fn power_of_two_never_picks_the_worst_and_spreads() {
        let mut p = Placement::new(PolicyKind::PowerOfTwo, 42);
        // Worker k has score k/10: the worst (9) loses every duel it is drawn into.
        for k in 0..10u32 {
            p.update(WorkerId(k + 1), cap(k as f32 * 10.0, 0, 4));
        }
        let mut wins = [0u32; 10];
        for _ in 0..2_000 {
            let w = pick(&mut p).expect("candidates");
            wins[w as usize - 1] += 1;
        }
        assert_eq!(wins[9], 0, "the most loaded never wins: {wins:?}");
        // The best wins every duel it is in: P = 1 - (9/10 · 8/9) = 0.2.
        assert!((300..=500).contains(&wins[0]), "{wins:?}");
        // Unlike least-loaded, the second best also gets work.
        assert!(wins[1] > 200, "{wins:?}");
    }

    #[test]
    fn power_of_two_is_deterministic_per_seed_and_survives_removals() {
        let run = |seed: u64| {
            let mut p = Placement::new(PolicyKind::PowerOfTwo, seed);
            for k in 1..=50u32 {
                p.update(WorkerId(k), cap(0.0, k % 4, 4));
            }
            let mut got = Vec::new();
            for k in 1..=50u32 {
                if k.is_multiple_of(3) {
                    p.remove(WorkerId(k));
                }
                let w = p.pick().expect("candidates").worker;
                assert!(
                    !w.0.is_multiple_of(3) || w.0 > k,
                    "a removed worker was picked"
                );
                got.push(w.0);
            }
            got
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn largest_first_orders_by_size_then_sequence() {
        let key = |seq, size| QueueOrder::LargestFirst.tie_breaker(seq, size);
        assert!(key(9, 10.0) < key(1, 1.0), "larger size first");
        assert!(key(1, 1.0) < key(2, 1.0), "then submit order");
        assert!(key(3, 0.5) < key(1, 0.0));
        assert!(key(1, 1e300) < key(1, 1e30), "huge sizes stay largest");
        assert_eq!(QueueOrder::Fifo.tie_breaker(7, 99.0), 7);
    }
}
