//! `WorkerTable`: every worker that ever joined, alive or dead, by id and by name. A worker that comes
//! back under the same name gets its old id (and its `done` count) back.
//!
//! The table keeps its own rules: only its methods change a worker (callers get `&Worker`, never
//! `&mut`), it counts the live prefetching workers as they join and leave, and every change to a
//! worker's capacity (its assigned and draining sets, its load, its readiness, its membership)
//! returns a [`PlacementChange`] that the caller must hand to placement: a refresh cannot be
//! forgotten at a call site. It also keeps the index rebalancing reads (the idle workers and the
//! donors, [`Standing`]), so rebalancing never scans every worker: with 10,000 workers that scan
//! ran on every dirty dispatch.

use super::policy::Capacity;
use super::prefetch::PrefetchGauge;
use protocol::{LoadReport, TaskId, TaskRef, WorkerId, WorkerInfo};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    pub info: WorkerInfo,
    /// `info.name`, shared with the outcomes it produces: one allocation per worker, not one per
    /// finished task. A worker that joins again has the same name (it is found by name).
    name: Arc<str>,
    pub addr: String,
    alive: bool,
    pub last_seen_ms: u64,
    /// Has connected in this master's life (`last_seen_ms` means something): false for a
    /// placeholder named only by restored results.
    pub heard: bool,
    pub load: LoadReport,
    /// Tasks assigned here and not yet finished. Ordered: it is iterated when the worker's tasks
    /// are taken back and by rebalancing, and those decisions must not depend on hash order.
    pub assigned: BTreeSet<TaskId>,
    pub done: u64,
    /// Run time its reports added up (every attempt and copy, as `simulate` counts busy time).
    pub busy_ms: u64,
    /// Has said what it is already running (`Running`). Until then it gets no work, or a task it
    /// still runs from before a reconnect could be handed to it again as a new attempt.
    pub ready: bool,
    /// Copies cancelled because another copy won: their slots stay busy until the worker reports
    /// them ended (a command may take the whole kill grace to die).
    pub draining: BTreeSet<TaskRef>,
    /// `Retract` requests without an answer yet, oldest first: the worker answers each in turn.
    pub retracting: VecDeque<Vec<TaskRef>>,
    /// Said `Leaving` on its current connection: its loss is logged as having left.
    pub left: bool,
    /// Where the table's rebalancing index holds it now.
    standing: Standing,
    /// Listed in `WorkerTable::unsettled`: `standing` may be out of date.
    unsettled: bool,
    /// When its batch-system allocation ends (the time left it reported on joining, from then);
    /// `None`: no known end.
    pub ends_at_ms: Option<u64>,
    /// Whether holding tasks beyond its slots pays now, for a worker that left it to us.
    gauge: PrefetchGauge,
}

/// What a worker is to rebalancing: a live, ready worker with a free slot is idle; one with more
/// tasks than slots (prefetched ones) and no retract outstanding may donate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Standing {
    #[default]
    Neither,
    Idle,
    Donor {
        /// Tasks beyond its slots.
        backlog: usize,
    },
}

impl Standing {
    fn of(w: &Worker) -> Standing {
        if !w.alive || !w.ready {
            return Standing::Neither;
        }
        let (busy, slots) = (w.busy(), w.info.slots as usize);
        if busy < slots {
            Standing::Idle
        } else if busy > slots && w.retracting.is_empty() {
            Standing::Donor {
                backlog: busy - slots,
            }
        } else {
            Standing::Neither
        }
    }
}

impl Worker {
    fn new(id: WorkerId, info: WorkerInfo, addr: String, alive: bool, now_ms: u64) -> Self {
        Worker {
            ends_at_ms: ends_at(&info, now_ms),
            id,
            name: Arc::from(info.name.as_str()),
            info,
            addr,
            alive,
            last_seen_ms: now_ms,
            heard: alive,
            load: LoadReport::default(),
            assigned: BTreeSet::new(),
            done: 0,
            busy_ms: 0,
            ready: false,
            draining: BTreeSet::new(),
            retracting: VecDeque::new(),
            left: false,
            standing: Standing::Neither,
            unsettled: false,
            gauge: PrefetchGauge::default(),
        }
    }

    /// Whether it will still be there `needed_ms` from `now_ms` as far as anyone knows: always,
    /// unless its allocation ends before.
    pub fn lives_for(&self, now_ms: u64, needed_ms: u64) -> bool {
        self.ends_at_ms
            .is_none_or(|end| end >= now_ms.saturating_add(needed_ms))
    }

    /// Connected (the session layer holds a connection for it).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Slots in use as the worker sees them: its tasks, and losing copies still being killed.
    pub fn busy(&self) -> usize {
        self.assigned.len() + self.draining.len()
    }

    pub fn capacity(&self) -> Capacity {
        Capacity {
            cpu_percent: self.load.cpu_percent,
            busy: self.busy() as u32,
            slots: if self.ready { self.info.slots } else { 0 },
            prefetch: if self.ready { self.prefetch_now() } else { 0 },
        }
    }

    /// Tasks it may hold beyond its slots now: its `prefetch`, or for a worker that left it to
    /// us (`prefetch_adaptive`), that only while its tasks are short.
    pub fn prefetch_now(&self) -> u32 {
        if !self.info.prefetch_adaptive || self.gauge.pays() {
            self.info.prefetch
        } else {
            0
        }
    }
}

fn ends_at(info: &WorkerInfo, now_ms: u64) -> Option<u64> {
    let left = info.allocation.as_ref()?.time_left_ms?;
    Some(now_ms.saturating_add(left))
}

/// What placement must learn after a worker changed. Hand each one to `Core::learn` right away:
/// it applies joins and departures at once, and a capacity before placement is next read.
#[must_use = "placement must learn of the change (Core::learn)"]
#[derive(Debug, PartialEq)]
pub enum PlacementChange {
    /// `worker`'s capacity is now `Worker::capacity()`; `freed`: it may have room, or rebalancing
    /// something to look at, that it did not have (so the next `dispatch` must look).
    Capacity { worker: WorkerId, freed: bool },
    /// `worker` joined: it leaves the placement of `previous_group` if it had joined before, and
    /// enters its own.
    Joined {
        worker: WorkerId,
        previous_group: Option<Option<String>>,
    },
    /// `worker` is dead: it leaves the placement of `group`.
    Left {
        worker: WorkerId,
        group: Option<String>,
    },
}

/// What `register` did.
#[derive(Debug)]
pub struct Joined {
    pub id: WorkerId,
    /// The worker was still alive on another connection, with the tasks in `assigned` (kept):
    /// the caller takes them back.
    pub replaced: bool,
}

#[derive(Debug, Default)]
pub struct WorkerTable {
    /// `workers[i]` has id `i + 1`.
    workers: Vec<Worker>,
    /// Only looked up by name, never iterated.
    by_name: HashMap<String, WorkerId>,
    /// Live workers that prefetch; rebalancing has nothing to do while there are none.
    prefetching: usize,
    /// Workers whose standing is `Idle`, in id order.
    idle: BTreeSet<WorkerId>,
    /// Workers whose standing is `Donor`: the largest backlog first, then the lowest id.
    donors: BTreeSet<(Reverse<usize>, WorkerId)>,
    /// Workers changed since the index was last settled, each once. The index is brought up to
    /// date when rebalancing reads it (only while some worker has room), not at every assign and
    /// finish: with 10,000 prefetching workers all of them are donors, and moving one in
    /// `donors` per task was an ordered-set remove and insert that W2's two workers never pay.
    unsettled: Vec<WorkerId>,
}

impl WorkerTable {
    /// Registers a worker that passed its handshake, reusing the id of a previous one with the
    /// same name.
    pub fn register(
        &mut self,
        info: WorkerInfo,
        addr: String,
        now_ms: u64,
    ) -> (Joined, PlacementChange) {
        if info.prefetch > 0 {
            self.prefetching += 1;
        }
        if let Some(&id) = self.by_name.get(&info.name) {
            let w = &mut self.workers[id.0 as usize - 1];
            let replaced = w.alive;
            if replaced && w.info.prefetch > 0 {
                self.prefetching -= 1;
            }
            w.ends_at_ms = ends_at(&info, now_ms);
            let previous_group = std::mem::replace(&mut w.info, info).group;
            w.alive = true;
            w.addr = addr;
            w.last_seen_ms = now_ms;
            w.heard = true;
            w.load = LoadReport::default();
            w.ready = false;
            w.retracting.clear();
            w.draining.clear();
            w.left = false;
            w.gauge.disconnected();
            self.restand(id);
            let change = PlacementChange::Joined {
                worker: id,
                previous_group: Some(previous_group),
            };
            return (Joined { id, replaced }, change);
        }
        let id = self.next_id();
        self.by_name.insert(info.name.clone(), id);
        self.workers.push(Worker::new(id, info, addr, true, now_ms));
        let change = PlacementChange::Joined {
            worker: id,
            previous_group: None,
        };
        (
            Joined {
                id,
                replaced: false,
            },
            change,
        )
    }

    fn next_id(&self) -> WorkerId {
        WorkerId(self.workers.len() as u32 + 1)
    }

    /// The id for `name`, creating a dead placeholder if the name is new (results restored from
    /// the journal name workers that have not reconnected yet).
    pub fn intern(&mut self, name: &str) -> WorkerId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.next_id();
        self.by_name.insert(name.to_string(), id);
        let info = WorkerInfo {
            allocation: None,
            name: name.to_string(),
            host: String::new(),
            cpus: 0,
            slots: 0,
            pid: 0,
            group: None,
            prefetch: 0,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        };
        self.workers
            .push(Worker::new(id, info, String::new(), false, 0));
        id
    }

    /// The worker's connection is gone. Its assigned tasks stay listed until the caller takes
    /// them back (`take_assigned`). `None` if it was not alive.
    pub fn lose(&mut self, id: WorkerId) -> Option<PlacementChange> {
        let w = self.get_mut(id).filter(|w| w.alive)?;
        w.alive = false;
        w.retracting.clear();
        w.draining.clear();
        w.gauge.disconnected();
        let (prefetches, group) = (w.info.prefetch > 0, w.info.group.clone());
        if prefetches {
            self.prefetching -= 1;
        }
        self.restand(id);
        Some(PlacementChange::Left { worker: id, group })
    }

    /// Something arrived from the worker: it is alive at `now_ms`.
    /// The worker said it stops on purpose; cleared when it joins again.
    pub fn leaving(&mut self, id: WorkerId) {
        if let Some(w) = self.get_mut(id) {
            w.left = true;
        }
    }

    pub fn seen(&mut self, id: WorkerId, now_ms: u64) {
        if let Some(w) = self.get_mut(id) {
            w.last_seen_ms = now_ms;
        }
    }

    /// A load report (its numbers come from the network: a non-finite CPU figure counts as 0).
    pub fn set_load(&mut self, id: WorkerId, mut load: LoadReport) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        if !load.cpu_percent.is_finite() {
            load.cpu_percent = 0.0;
        }
        w.load = load;
        Some(PlacementChange::Capacity {
            worker: id,
            freed: true,
        })
    }

    /// The worker said what it runs (`Running`): it may be given work.
    pub fn mark_ready(&mut self, id: WorkerId) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        w.ready = true;
        self.restand(id);
        Some(PlacementChange::Capacity {
            worker: id,
            freed: true,
        })
    }

    /// `task` runs (or is adopted) on the worker.
    pub fn assign(&mut self, id: WorkerId, task: TaskId) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        w.assigned.insert(task);
        self.restand(id);
        Some(PlacementChange::Capacity {
            worker: id,
            freed: false,
        })
    }

    /// `task` no longer runs on the worker (it finished, or was given back).
    pub fn unassign(&mut self, id: WorkerId, task: TaskId) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        w.assigned.remove(&task);
        w.gauge.left(task);
        self.restand(id);
        Some(PlacementChange::Capacity {
            worker: id,
            freed: true,
        })
    }

    /// The worker's run `r` lost the race and is being cancelled: its slot stays busy until the
    /// worker reports it ended (`drained`). A change only if `r` was not assigned there, since
    /// moving it from assigned to draining leaves the busy count as it was.
    pub fn drain(&mut self, id: WorkerId, r: TaskRef) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        let busy = w.busy();
        w.assigned.remove(&r.task);
        w.draining.insert(r);
        let changed = w.busy() != busy;
        self.restand(id);
        changed.then_some(PlacementChange::Capacity {
            worker: id,
            freed: false,
        })
    }

    /// The worker reported run `r` ended: if it was draining, its slot is free now.
    pub fn drained(&mut self, id: WorkerId, r: TaskRef) -> Option<PlacementChange> {
        let w = self.get_mut(id)?;
        // Checked first: a lookup per completion in an almost always empty set costs.
        if w.draining.is_empty() || !w.draining.remove(&r) {
            return None;
        }
        self.restand(id);
        Some(PlacementChange::Capacity {
            worker: id,
            freed: true,
        })
    }

    /// Takes every task off the worker (lost, or replaced by a new connection), in id order.
    pub fn take_assigned(&mut self, id: WorkerId) -> Option<(BTreeSet<TaskId>, PlacementChange)> {
        let w = self.get_mut(id)?;
        let tasks = std::mem::take(&mut w.assigned);
        w.gauge.disconnected();
        self.restand(id);
        let change = PlacementChange::Capacity {
            worker: id,
            freed: true,
        };
        Some((tasks, change))
    }

    /// `task` was just handed to the worker by placement (`assign` first). If it went to a free
    /// slot, its start times the round trip (adaptive prefetch only).
    pub fn note_handed(&mut self, id: WorkerId, task: TaskId, now_ms: u64) {
        if let Some(w) = self.get_mut(id) {
            if w.info.prefetch_adaptive && w.busy() <= w.info.slots as usize {
                w.gauge.assigned_to_free_slot(task, now_ms);
            }
        }
    }

    /// The worker reported `task` started. A change if that turned the prefetch decision.
    pub fn note_started(
        &mut self,
        id: WorkerId,
        task: TaskId,
        now_ms: u64,
    ) -> Option<PlacementChange> {
        self.update_gauge(id, |g| g.started(task, now_ms))
    }

    /// A run of the worker ended after `run_ms` (its report). A change if that turned the
    /// prefetch decision.
    pub fn note_run(&mut self, id: WorkerId, run_ms: u64) -> Option<PlacementChange> {
        self.update_gauge(id, |g| g.ran(run_ms))
    }

    fn update_gauge(
        &mut self,
        id: WorkerId,
        update: impl FnOnce(&mut PrefetchGauge),
    ) -> Option<PlacementChange> {
        let w = self.get_mut(id).filter(|w| w.info.prefetch_adaptive)?;
        let before = w.prefetch_now();
        update(&mut w.gauge);
        let after = w.prefetch_now();
        (before != after).then_some(PlacementChange::Capacity {
            worker: id,
            freed: after > before,
        })
    }

    /// A run on the worker ended after `run_ms`: counted where the worker is found anyway, not in
    /// a map by worker id that each of 10,000 workers' finishes would search.
    pub fn count_done(&mut self, id: WorkerId, run_ms: u64) {
        if let Some(w) = self.get_mut(id) {
            w.done += 1;
            w.busy_ms += run_ms;
        }
    }

    /// Records a `Retract` sent to the worker; its answer comes in order (`answer_retract`).
    pub fn ask_retract(&mut self, id: WorkerId, refs: Vec<TaskRef>) {
        if let Some(w) = self.get_mut(id) {
            w.retracting.push_back(refs);
            self.restand(id);
        }
    }

    /// The worker answered its oldest `Retract`: what was asked. With nothing outstanding any
    /// more it may be asked again, so rebalancing must look (the change is `freed`).
    pub fn answer_retract(&mut self, id: WorkerId) -> Option<(Vec<TaskRef>, PlacementChange)> {
        let w = self.get_mut(id)?;
        let asked = w.retracting.pop_front().unwrap_or_default();
        self.restand(id);
        let change = PlacementChange::Capacity {
            worker: id,
            freed: true,
        };
        Some((asked, change))
    }

    /// Live workers that prefetch.
    pub fn prefetching(&self) -> usize {
        self.prefetching
    }

    /// Notes that the worker's standing may have changed. IMPORTANT: every method that changes
    /// what `Standing::of` reads (alive, ready, assigned, draining, slots, retracting) calls it
    /// before returning; `settle` moves the worker in the index.
    fn restand(&mut self, id: WorkerId) {
        let Some(w) = self.get_mut(id) else {
            return;
        };
        if !w.unsettled {
            w.unsettled = true;
            self.unsettled.push(id);
        }
    }

    /// Brings the rebalancing index up to date: each worker changed since the last settle is
    /// moved once, however often it changed.
    fn settle(&mut self) {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        for &id in &unsettled {
            let Some(w) = self.get_mut(id) else {
                continue;
            };
            w.unsettled = false;
            let (old, new) = (w.standing, Standing::of(w));
            if old == new {
                continue;
            }
            w.standing = new;
            match old {
                Standing::Neither => {}
                Standing::Idle => {
                    self.idle.remove(&id);
                }
                Standing::Donor { backlog } => {
                    self.donors.remove(&(Reverse(backlog), id));
                }
            }
            match new {
                Standing::Neither => {}
                Standing::Idle => {
                    self.idle.insert(id);
                }
                Standing::Donor { backlog } => {
                    self.donors.insert((Reverse(backlog), id));
                }
            }
        }
        // At most one entry per worker ever: its room is kept.
        unsettled.clear();
        self.unsettled = unsettled;
    }

    /// The worker rebalancing asks to give tasks back, with its backlog: of the live, ready
    /// workers holding more tasks than slots and no retract outstanding, the one with the most
    /// beyond its slots, the lowest id among equals.
    #[cfg(test)]
    pub fn donor(&mut self) -> Option<(usize, WorkerId)> {
        self.donors(1).pop()
    }

    /// Up to `n` donors with their backlogs, in the order `donor` ranks them.
    pub fn donors(&mut self, n: usize) -> Vec<(usize, WorkerId)> {
        self.settle();
        self.donors
            .iter()
            .take(n)
            .map(|&(Reverse(backlog), id)| (backlog, id))
            .collect()
    }

    #[cfg(test)]
    fn indexed_donor(&self) -> Option<(usize, WorkerId)> {
        self.donors
            .first()
            .map(|&(Reverse(backlog), id)| (backlog, id))
    }

    /// How many workers `idle` yields.
    pub fn idle_count(&mut self) -> usize {
        self.settle();
        self.idle.len()
    }

    /// Live, ready workers with a free slot, in id order.
    pub fn idle(&mut self) -> impl Iterator<Item = &Worker> {
        self.settle();
        self.idle.iter().filter_map(|&id| self.get(id))
    }

    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get((id.0 as usize).checked_sub(1)?)
    }

    fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut((id.0 as usize).checked_sub(1)?)
    }

    pub fn is_alive(&self, id: WorkerId) -> bool {
        self.get(id).is_some_and(Worker::is_alive)
    }

    /// The worker that has (or last had) this name.
    pub fn by_name(&self, name: &str) -> Option<&Worker> {
        self.by_name.get(name).and_then(|&id| self.get(id))
    }

    pub fn name(&self, id: WorkerId) -> Option<&str> {
        self.get(id).map(|w| w.info.name.as_str())
    }

    /// [`WorkerTable::name`], to keep: a reference count, no copy.
    pub fn shared_name(&self, id: WorkerId) -> Option<Arc<str>> {
        self.get(id).map(|w| Arc::clone(&w.name))
    }

    /// In id (join) order.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    /// The prefetching count agrees with the table.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        let live_prefetching = self
            .workers
            .iter()
            .filter(|w| w.alive && w.info.prefetch > 0)
            .count();
        assert_eq!(live_prefetching, self.prefetching);
        for w in &self.workers {
            assert_eq!(self.by_name.get(&w.info.name), Some(&w.id));
            if !w.alive {
                assert!(w.draining.is_empty() && w.retracting.is_empty());
            }
            // A worker not listed as changed is indexed as it is; a listed one is listed once.
            let listed = self.unsettled.iter().filter(|&&id| id == w.id).count();
            assert_eq!(
                listed,
                usize::from(w.unsettled),
                "{} listed {listed}x",
                w.info.name
            );
            if !w.unsettled {
                assert_eq!(
                    w.standing,
                    Standing::of(w),
                    "{} is indexed stale",
                    w.info.name
                );
            }
        }
        // The index holds every worker as its `standing` says, so settling leaves it holding what
        // a scan of every worker finds.
        let idle: BTreeSet<WorkerId> = self
            .workers
            .iter()
            .filter(|w| w.standing == Standing::Idle)
            .map(|w| w.id)
            .collect();
        assert_eq!(self.idle, idle);
        let donors: BTreeSet<(Reverse<usize>, WorkerId)> = self
            .workers
            .iter()
            .filter_map(|w| match w.standing {
                Standing::Donor { backlog } => Some((Reverse(backlog), w.id)),
                _ => None,
            })
            .collect();
        assert_eq!(self.donors, donors);
        if self.unsettled.is_empty() {
            assert_eq!(self.indexed_donor(), self.scanned_donor());
        }
    }

    /// The donor as rebalancing found it before the index: a scan in id order keeping the first
    /// largest backlog.
    #[cfg(test)]
    fn scanned_donor(&self) -> Option<(usize, WorkerId)> {
        let mut donor: Option<(usize, WorkerId)> = None;
        for w in &self.workers {
            if !w.is_alive() || !w.ready {
                continue;
            }
            let (busy, slots) = (w.busy(), w.info.slots as usize);
            if busy > slots && w.retracting.is_empty() {
                let backlog = busy - slots;
                if donor.is_none_or(|(b, _)| backlog > b) {
                    donor = Some((backlog, w.id));
                }
            }
        }
        donor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Attempt, Incarnation};

    fn info(name: &str, prefetch: u32, group: Option<&str>) -> WorkerInfo {
        WorkerInfo {
            allocation: None,
            name: name.into(),
            host: "h".into(),
            cpus: 1,
            slots: 2,
            pid: 1,
            group: group.map(str::to_string),
            prefetch,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        }
    }

    fn r(task: u64) -> TaskRef {
        TaskRef {
            task: TaskId(task),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        }
    }

    #[test]
    fn a_returning_worker_keeps_its_id_and_leaves_its_old_group() {
        let mut t = WorkerTable::default();
        let (a, change) = t.register(info("a", 0, Some("g")), "x".into(), 1);
        assert_eq!(
            change,
            PlacementChange::Joined {
                worker: a.id,
                previous_group: None
            }
        );
        let _ = t.assign(a.id, TaskId(7));
        let (again, change) = t.register(info("a", 0, None), "y".into(), 2);
        assert_eq!(
            (again.id, again.replaced),
            (a.id, true),
            "still alive: replaced"
        );
        assert_eq!(
            change,
            PlacementChange::Joined {
                worker: a.id,
                previous_group: Some(Some("g".into()))
            }
        );
        let (tasks, _) = t.take_assigned(a.id).expect("known");
        assert_eq!(tasks.into_iter().collect::<Vec<_>>(), vec![TaskId(7)]);
        assert!(t.lose(a.id).is_some());
        assert!(
            t.lose(a.id).is_none(),
            "losing a dead worker changes nothing"
        );
        let (back, _) = t.register(info("a", 0, None), "z".into(), 3);
        assert!(!back.replaced, "it was dead");
        t.sanity_check();
    }

    #[test]
    fn prefetching_counts_live_prefetchers_across_rejoins() {
        let mut t = WorkerTable::default();
        let (a, _) = t.register(info("a", 4, None), "x".into(), 1);
        let (b, _) = t.register(info("b", 0, None), "x".into(), 1);
        assert_eq!(t.prefetching(), 1);
        // a rejoins without prefetch while its old connection still counts; b starts prefetching.
        let _ = t.register(info("a", 0, None), "x".into(), 2);
        let _ = t.register(info("b", 2, None), "x".into(), 2);
        assert_eq!(t.prefetching(), 1);
        let _ = t.lose(b.id);
        assert_eq!(t.prefetching(), 0);
        let _ = t.lose(a.id);
        assert_eq!(t.prefetching(), 0);
        t.sanity_check();
    }

    #[test]
    fn rebalancing_finds_the_same_donor_in_the_index_as_by_a_scan() {
        let mut t = WorkerTable::default();
        let mut ids = Vec::new();
        for (name, slots) in [("a", 2), ("b", 1), ("c", 2), ("d", 4)] {
            let mut i = info(name, 3, None);
            i.slots = slots;
            let (j, _) = t.register(i, "x".into(), 1);
            let _ = t.mark_ready(j.id);
            ids.push(j.id);
        }
        let [a, b, c, d] = ids[..] else {
            unreachable!()
        };
        assert_eq!(t.donor(), None);
        let idle: Vec<WorkerId> = t.idle().map(|w| w.id).collect();
        assert_eq!(idle, vec![a, b, c, d], "all free, in id order");
        // a and c both hold two beyond their slots: the lower id is asked, as the scan did.
        for task in 1..=4 {
            let _ = t.assign(a, TaskId(task));
            let _ = t.assign(c, TaskId(10 + task));
        }
        let _ = t.assign(b, TaskId(20));
        assert_eq!(t.donor(), Some((2, a)));
        assert_eq!(t.idle().map(|w| w.id).collect::<Vec<_>>(), vec![d]);
        // Asked, a leaves the donors until it answers.
        t.ask_retract(a, vec![r(1)]);
        assert_eq!(t.donor(), Some((2, c)));
        let _ = t.assign(b, TaskId(21));
        let _ = t.assign(b, TaskId(22));
        let _ = t.assign(b, TaskId(23));
        assert_eq!(t.donor(), Some((3, b)), "the largest backlog first");
        let _ = t.answer_retract(a);
        let _ = t.unassign(a, TaskId(1));
        assert_eq!(t.donor(), Some((3, b)));
        let _ = t.lose(b);
        assert_eq!(t.donor(), Some((2, c)), "a dead worker donates nothing");
        assert_eq!(t.donor(), t.scanned_donor());
        t.sanity_check();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register {
            name: u8,
            slots: u8,
        },
        Ready(u8),
        Lose(u8),
        Assign(u8, u8),
        Unassign(u8, u8),
        Drain(u8, u8),
        Drained(u8, u8),
        TakeAssigned(u8),
        AskRetract(u8),
        AnswerRetract(u8),
        /// Rebalancing reads the index, which settles it.
        Read,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..6, 0u8..4).prop_map(|(name, slots)| Op::Register { name, slots }),
            any::<u8>().prop_map(Op::Ready),
            any::<u8>().prop_map(Op::Lose),
            (any::<u8>(), 0u8..12).prop_map(|(w, t)| Op::Assign(w, t)),
            (any::<u8>(), 0u8..12).prop_map(|(w, t)| Op::Unassign(w, t)),
            (any::<u8>(), 0u8..12).prop_map(|(w, t)| Op::Drain(w, t)),
            (any::<u8>(), 0u8..12).prop_map(|(w, t)| Op::Drained(w, t)),
            any::<u8>().prop_map(Op::TakeAssigned),
            any::<u8>().prop_map(Op::AskRetract),
            any::<u8>().prop_map(Op::AnswerRetract),
            Just(Op::Read),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever happens to the workers, the index agrees with a scan of all of them
        /// (`sanity_check`), so rebalancing picks the donor and the idle workers it always did.
        #[test]
        fn the_rebalancing_index_follows_every_change(ops in proptest::collection::vec(op(), 1..120)) {
            let mut t = WorkerTable::default();
            for op in ops {
                let n = t.workers.len() as u32;
                let w = |k: u8| WorkerId(if n == 0 { 1 } else { u32::from(k) % n + 1 });
                match op {
                    Op::Register { name, slots } => {
                        let mut i = info(&format!("w{name}"), u32::from(slots % 2) * 2, None);
                        i.slots = u32::from(slots);
                        let _ = t.register(i, "x".into(), 1);
                    }
                    Op::Ready(k) => drop(t.mark_ready(w(k))),
                    Op::Lose(k) => drop(t.lose(w(k))),
                    Op::Assign(k, task) => drop(t.assign(w(k), TaskId(task.into()))),
                    Op::Unassign(k, task) => drop(t.unassign(w(k), TaskId(task.into()))),
                    // The core drains and retracts on live workers only.
                    Op::Drain(k, _) | Op::AskRetract(k) if !t.is_alive(w(k)) => {}
                    Op::Drain(k, task) => drop(t.drain(w(k), r(task.into()))),
                    Op::Drained(k, task) => drop(t.drained(w(k), r(task.into()))),
                    Op::TakeAssigned(k) => drop(t.take_assigned(w(k))),
                    Op::AskRetract(k) => t.ask_retract(w(k), vec![r(1)]),
                    Op::AnswerRetract(k) => drop(t.answer_retract(w(k))),
                    Op::Read => {
                        let scanned: Vec<WorkerId> = t
                            .workers
                            .iter()
                            .filter(|w| Standing::of(w) == Standing::Idle)
                            .map(|w| w.id)
                            .collect();
                        proptest::prop_assert_eq!(t.idle().map(|w| w.id).collect::<Vec<_>>(), scanned);
                        proptest::prop_assert_eq!(t.donor(), t.scanned_donor());
                        proptest::prop_assert!(t.unsettled.is_empty());
                    }
                }
                t.sanity_check();
            }
        }
    }

    #[test]
    fn draining_keeps_the_slot_busy_until_the_run_ends() {
        let mut t = WorkerTable::default();
        let (a, _) = t.register(info("a", 0, None), "x".into(), 1);
        let _ = t.assign(a.id, TaskId(1));
        assert_eq!(t.drain(a.id, r(1)), None, "busy is unchanged");
        assert_eq!(t.get(a.id).map(Worker::busy), Some(1));
        assert_eq!(t.drained(a.id, r(2)), None, "not draining");
        assert_eq!(
            t.drained(a.id, r(1)),
            Some(PlacementChange::Capacity {
                worker: a.id,
                freed: true
            })
        );
        assert_eq!(t.get(a.id).map(Worker::busy), Some(0));
    }
}
