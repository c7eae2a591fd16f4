//! Task dependencies: which waiting tasks wait for which, and what a task's end releases.
//! No IO, and no task table: the core asks, and applies what comes back.
//!
//! A *gate* is one spec's copies of one submission (a contiguous id range, all `Waiting`) with
//! what they wait for: disjoint id ranges and how many of those tasks have not yet succeeded.
//! The reverse index is a map of disjoint *segments* of watched ids, each with the gates that
//! watch every id in it. A task's end looks up its one segment (O(log segments)) and touches only
//! the gates watching it: the cost per finished task is O(its dependents' gates), and a task
//! waiting for a million others is one range, not a million entries.

use protocol::TaskId;
use std::collections::{BTreeMap, HashMap};

/// Names a gate; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GateId(u64);

#[derive(Debug)]
struct Gate {
    /// The waiting tasks: `first .. first + count`.
    first: TaskId,
    count: u64,
    /// Tasks waited for that have not succeeded yet.
    remaining: u64,
    /// What it watches: sorted, disjoint, inclusive id ranges.
    ranges: Vec<(u64, u64)>,
}

/// Ids `start ..= end`, watched by `gates`.
#[derive(Debug, Clone)]
struct Segment {
    end: u64,
    gates: Vec<GateId>,
}

/// What a task's end (or a gate's creation) decided for waiting tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Every dependency of `first .. first + count` succeeded: they may run.
    Run { first: TaskId, count: u64 },
    /// Dependency `because` ended otherwise: `first .. first + count` end `DependencyFailed`.
    Fail {
        first: TaskId,
        count: u64,
        because: TaskId,
    },
}

#[derive(Debug, Default)]
pub struct Deps {
    gates: HashMap<GateId, Gate>,
    /// Keyed by segment start; segments never overlap.
    watch: BTreeMap<u64, Segment>,
    next_gate: u64,
    /// Reused by `on_final` so a task's end allocates nothing.
    scratch: Vec<GateId>,
}

/// Sorts and merges inclusive ranges so no id is counted twice.
pub fn normalise(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl Deps {
    /// Gates not yet released.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.gates.len()
    }

    /// Tasks `first .. first + count` wait for the ids of `ranges` (normalised), of which
    /// `remaining` have not succeeded (and none ended otherwise: the caller checked). With
    /// `remaining == 0` nothing is kept: the caller runs them at once.
    pub fn add(&mut self, first: TaskId, count: u64, ranges: Vec<(u64, u64)>, remaining: u64) {
        debug_assert!(count > 0);
        if remaining == 0 {
            return;
        }
        let id = GateId(self.next_gate);
        self.next_gate += 1;
        for &(a, b) in &ranges {
            self.watch_range(a, b, id);
        }
        self.gates.insert(
            id,
            Gate {
                first,
                count,
                remaining,
                ranges,
            },
        );
    }

    /// Task `task` became final (`succeeded` or not): appends what that releases to `out`.
    pub fn on_final(&mut self, task: TaskId, succeeded: bool, out: &mut Vec<Release>) {
        if self.watch.is_empty() {
            return;
        }
        let Some((_, seg)) = self.watch.range(..=task.0).next_back() else {
            return;
        };
        if seg.end < task.0 {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&seg.gates);
        for i in 0..self.scratch.len() {
            let id = self.scratch[i];
            let Some(gate) = self.gates.get_mut(&id) else {
                continue;
            };
            let (first, count) = (gate.first, gate.count);
            if succeeded {
                gate.remaining -= 1;
                if gate.remaining > 0 {
                    continue;
                }
                out.push(Release::Run { first, count });
            } else {
                out.push(Release::Fail {
                    first,
                    count,
                    because: task,
                });
            }
            self.remove(id);
        }
    }

    /// Forgets a gate and its place in every segment.
    fn remove(&mut self, id: GateId) {
        let Some(gate) = self.gates.remove(&id) else {
            return;
        };
        for (a, b) in gate.ranges {
            let starts: Vec<u64> = self.watch.range(a..=b).map(|(&s, _)| s).collect();
            for s in starts {
                if let Some(seg) = self.watch.get_mut(&s) {
                    seg.gates.retain(|&g| g != id);
                    if seg.gates.is_empty() {
                        self.watch.remove(&s);
                    }
                }
            }
        }
    }

    /// Splits the segment holding `at` (if it starts before it) so a segment starts at `at`.
    fn split_at(&mut self, at: u64) {
        let Some((&start, seg)) = self.watch.range(..at).next_back() else {
            return;
        };
        if seg.end < at {
            return;
        }
        let right = Segment {
            end: seg.end,
            gates: seg.gates.clone(),
        };
        if let Some(left) = self.watch.get_mut(&start) {
            left.end = at - 1;
        }
        self.watch.insert(at, right);
    }

    fn watch_range(&mut self, a: u64, b: u64, id: GateId) {
        self.split_at(a);
        if let Some(after) = b.checked_add(1) {
            self.split_at(after);
        }
        let inside: Vec<(u64, u64)> = self
            .watch
            .range(a..=b)
            .map(|(&s, seg)| (s, seg.end))
            .collect();
        let mut pos = a;
        for (s, end) in inside {
            if s > pos {
                self.watch.insert(
                    pos,
                    Segment {
                        end: s - 1,
                        gates: vec![id],
                    },
                );
            }
            if let Some(seg) = self.watch.get_mut(&s) {
                seg.gates.push(id);
            }
            pos = end + 1;
        }
        if pos <= b {
            self.watch.insert(
                pos,
                Segment {
                    end: b,
                    gates: vec![id],
                },
            );
        }
    }

    /// The gates' own invariants: segments disjoint and non-empty, each gate in exactly the
    /// segments of its ranges, `remaining` positive.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        let mut last_end: Option<u64> = None;
        for (&s, seg) in &self.watch {
            assert!(s <= seg.end, "segment {s}-{} backwards", seg.end);
            assert!(last_end.is_none_or(|e| e < s), "segments overlap at {s}");
            assert!(!seg.gates.is_empty(), "empty segment at {s}");
            last_end = Some(seg.end);
            for g in &seg.gates {
                let gate = self.gates.get(g).expect("segment names a live gate");
                assert!(
                    gate.ranges.iter().any(|&(a, b)| a <= s && seg.end <= b),
                    "segment {s} is outside its gate's ranges"
                );
            }
        }
        for (id, gate) in &self.gates {
            assert!(gate.remaining > 0);
            for &(a, b) in &gate.ranges {
                let covered: u64 = self
                    .watch
                    .range(a..=b)
                    .filter(|(_, seg)| seg.gates.contains(id))
                    .map(|(&s, seg)| seg.end - s + 1)
                    .sum();
                assert_eq!(covered, b - a + 1, "gate {id:?} range {a}-{b} not watched");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finals(d: &mut Deps, task: u64, ok: bool) -> Vec<Release> {
        let mut out = Vec::new();
        d.on_final(TaskId(task), ok, &mut out);
        d.sanity_check();
        out
    }

    #[test]
    fn overlapping_ranges_share_segments() {
        let mut d = Deps::default();
        d.add(TaskId(100), 2, normalise(vec![(1, 10)]), 10);
        d.add(TaskId(102), 1, normalise(vec![(5, 5), (8, 12)]), 6);
        d.sanity_check();
        for t in 1..=10 {
            let out = finals(&mut d, t, true);
            if t < 10 {
                assert!(out.is_empty(), "{t}: {out:?}");
            } else {
                assert_eq!(
                    out,
                    [Release::Run {
                        first: TaskId(100),
                        count: 2
                    }]
                );
            }
        }
        assert!(finals(&mut d, 11, true).is_empty());
        assert_eq!(
            finals(&mut d, 12, false),
            [Release::Fail {
                first: TaskId(102),
                count: 1,
                because: TaskId(12)
            }]
        );
        assert_eq!(d.len(), 0);
        assert!(d.watch.is_empty());
    }

    #[test]
    fn normalise_merges_touching_and_repeated_ranges() {
        assert_eq!(
            normalise(vec![(5, 9), (1, 3), (4, 4), (7, 12), (20, 20)]),
            [(1, 12), (20, 20)]
        );
    }

    #[test]
    fn nothing_watched_costs_nothing() {
        let mut d = Deps::default();
        d.add(TaskId(3), 1, vec![(1, 2)], 0);
        assert_eq!(d.len(), 0);
        assert!(finals(&mut d, 1, false).is_empty());
    }
}
