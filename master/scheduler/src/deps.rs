//! Task dependencies: which waiting tasks wait for which, and what a task's end releases.
//! No IO, and no task table: the core asks, and applies what comes back.
//!
//! A *gate* is one spec's copies of one submission (a contiguous id range, all `Waiting`) with
//! what they wait for: disjoint id ranges and how many of those tasks have not yet succeeded.
//! The reverse index is an implicit binary trie over task ids: a node at level `L` covers the
//! aligned block of `2^L` ids `i << L ..= ((i + 1) << L) - 1`, and each watched range is stored
//! at the O(log) blocks that tile it exactly. A task's end looks at the one block of each level
//! that holds its id and finds exactly the gates whose ranges contain it, so the cost per
//! finished task is O(levels in use + its dependents' gates), whatever the ranges' widths and
//! overlaps, and a task waiting for a million others costs one range and a few dozen entries.
//! Released gates leave their entries behind; a visit drops the ones it meets, and a sweep the
//! rest once they outnumber the live ones (amortised O(1) per entry).

use protocol::TaskId;
use std::collections::HashMap;

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
    /// What it watches: sorted, disjoint, inclusive id ranges (checked by `sanity_check`).
    #[cfg(test)]
    ranges: Vec<(u64, u64)>,
    /// Its entries in `Deps::nodes`.
    entries: usize,
}

/// A block of the trie: (level, index).
type Node = (u8, u64);

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

/// Entries of released gates tolerated before a sweep, beyond as many as there are live ones.
const DEAD_ENTRIES_SLACK: usize = 4_096;

#[derive(Debug, Default)]
pub struct Deps {
    gates: HashMap<GateId, Gate>,
    /// The gates watching every id of each block (lookups only: order never matters).
    nodes: HashMap<Node, Vec<GateId>>,
    /// Bit `L` set: some block of level `L` may hold entries.
    levels: u64,
    next_gate: u64,
    /// Entries in `nodes` of live gates, and of released ones not yet dropped.
    live_entries: usize,
    dead_entries: usize,
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

/// Calls `f` with the aligned blocks that tile `a ..= b` exactly, largest first where they
/// fit: at most two per level.
fn tile(mut a: u64, b: u64, mut f: impl FnMut(Node)) {
    debug_assert!(a <= b);
    loop {
        let mut level = a.trailing_zeros().min(63);
        while level > 0 && a.checked_add((1u64 << level) - 1).is_none_or(|end| end > b) {
            level -= 1;
        }
        f((level as u8, a >> level));
        let end = a + ((1u64 << level) - 1);
        if end >= b {
            return;
        }
        a = end + 1;
    }
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
        let mut entries = 0;
        for &(a, b) in &ranges {
            tile(a, b, |node| {
                self.nodes.entry(node).or_default().push(id);
                self.levels |= 1 << node.0;
                entries += 1;
            });
        }
        self.live_entries += entries;
        self.gates.insert(
            id,
            Gate {
                first,
                count,
                remaining,
                #[cfg(test)]
                ranges,
                entries,
            },
        );
    }

    /// Task `task` became final (`succeeded` or not): appends what that releases to `out`.
    pub fn on_final(&mut self, task: TaskId, succeeded: bool, out: &mut Vec<Release>) {
        if self.gates.is_empty() {
            return;
        }
        self.scratch.clear();
        let mut levels = self.levels;
        while levels != 0 {
            let level = levels.trailing_zeros() as u8;
            levels &= levels - 1;
            let node = (level, task.0 >> level);
            let Some(list) = self.nodes.get_mut(&node) else {
                continue;
            };
            // Every gate here watches `task`; released ones are dropped on the way.
            let before = list.len();
            let gates = &self.gates;
            list.retain(|g| gates.contains_key(g));
            self.dead_entries -= before - list.len();
            self.scratch.extend_from_slice(list);
            if list.is_empty() {
                self.nodes.remove(&node);
            }
        }
        // A gate's ranges are disjoint, so its blocks are too: each gate is here at most once.
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
            self.release(id);
        }
    }

    /// Forgets a gate; its entries go when a visit meets them, or at the next sweep.
    fn release(&mut self, id: GateId) {
        let Some(gate) = self.gates.remove(&id) else {
            return;
        };
        self.live_entries -= gate.entries;
        self.dead_entries += gate.entries;
        if self.dead_entries > self.live_entries + DEAD_ENTRIES_SLACK {
            self.sweep();
        }
    }

    /// Drops every entry of a released gate: O(entries), after at least as many releases.
    fn sweep(&mut self) {
        let gates = &self.gates;
        self.nodes.retain(|_, list| {
            list.retain(|g| gates.contains_key(g));
            !list.is_empty()
        });
        self.levels = self.nodes.keys().fold(0, |l, &(level, _)| l | 1 << level);
        self.dead_entries = 0;
    }

    /// The index's own invariants: each live gate is in exactly the blocks tiling its ranges,
    /// the entry counts are right, `remaining` is positive.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        let mut live = 0;
        for (id, gate) in &self.gates {
            assert!(gate.remaining > 0);
            let mut entries = 0;
            for &(a, b) in &gate.ranges {
                tile(a, b, |node| {
                    assert!(self.levels & (1 << node.0) != 0, "level of {node:?} unset");
                    let list = self.nodes.get(&node).map(Vec::as_slice).unwrap_or(&[]);
                    assert_eq!(list.iter().filter(|&g| g == id).count(), 1, "{node:?}");
                    entries += 1;
                });
            }
            assert_eq!(entries, gate.entries);
            live += entries;
        }
        assert_eq!(live, self.live_entries);
        let all: usize = self.nodes.values().map(Vec::len).sum();
        assert_eq!(all, self.live_entries + self.dead_entries);
        assert!(self.nodes.values().all(|l| !l.is_empty()));
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
    fn overlapping_ranges_count_each_id_once() {
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
    }

    #[test]
    fn normalise_merges_touching_and_repeated_ranges() {
        assert_eq!(
            normalise(vec![(5, 9), (1, 3), (4, 4), (7, 12), (20, 20)]),
            [(1, 12), (20, 20)]
        );
    }

    #[test]
    fn blocks_tile_a_range_exactly() {
        for (a, b) in [
            (1, 1),
            (1, 10),
            (3, 17),
            (8, 15),
            (1, 1 << 20),
            (5, u64::MAX - 1),
        ] {
            let mut blocks = Vec::new();
            tile(a, b, |(l, i)| {
                blocks.push((i << l, (i << l) + ((1u64 << l) - 1)))
            });
            assert_eq!(blocks[0].0, a);
            assert_eq!(blocks.last().map(|x| x.1), Some(b));
            assert!(blocks.windows(2).all(|w| w[0].1 + 1 == w[1].0), "{a}-{b}");
            assert!(blocks.len() <= 128, "{a}-{b}: {}", blocks.len());
        }
    }

    #[test]
    fn wide_overlapping_ranges_cost_little_and_released_entries_are_swept() {
        let mut d = Deps::default();
        // 2,000 gates over the same million ids, and 2,000 over single ids inside it.
        for g in 0..2_000u64 {
            d.add(TaskId(2_000_000 + g), 1, vec![(1, 1_000_000)], 1_000_000);
            d.add(TaskId(3_000_000 + g), 1, vec![(g + 1, g + 1)], 1);
        }
        assert!(d.live_entries < 2_000 * 40 + 2_000, "{}", d.live_entries);
        let mut out = Vec::new();
        d.on_final(TaskId(7), true, &mut out);
        assert_eq!(
            out,
            [Release::Run {
                first: TaskId(3_000_006),
                count: 1
            }]
        );
        out.clear();
        d.on_final(TaskId(9), false, &mut out);
        assert_eq!(out.len(), 2_001, "every wide gate and the one on 9");
        d.sanity_check();
        assert!(
            d.dead_entries <= d.live_entries + DEAD_ENTRIES_SLACK,
            "released entries are swept: {} dead, {} live",
            d.dead_entries,
            d.live_entries
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
