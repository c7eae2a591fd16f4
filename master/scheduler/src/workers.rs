//! `WorkerTable`: every worker that ever joined, alive or dead, by id and by name. A worker that comes
//! back under the same name gets its old id (and its `done` count) back.

use super::policy::Capacity;
use super::ConnId;
use protocol::{LoadReport, TaskId, TaskRef, WorkerId, WorkerInfo};
use std::collections::{HashMap, HashSet, VecDeque};

#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    pub info: WorkerInfo,
    pub addr: String,
    /// `Some` while alive.
    pub conn: Option<ConnId>,
    pub last_seen_ms: u64,
    pub load: LoadReport,
    /// Tasks assigned here and not yet finished.
    pub assigned: HashSet<TaskId>,
    pub done: u64,
    /// Has said what it is already running (`Running`). Until then it gets no work, or a task it
    /// still runs from before a reconnect could be handed to it again as a new attempt.
    pub ready: bool,
    /// Copies cancelled because another copy won: their slots stay busy until the worker reports
    /// them ended (a command may take the whole kill grace to die).
    pub draining: HashSet<TaskRef>,
    /// `Retract` requests without an answer yet, oldest first: the worker answers each in turn.
    pub retracting: VecDeque<Vec<TaskRef>>,
}

impl Worker {
    pub fn is_alive(&self) -> bool {
        self.conn.is_some()
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
            prefetch: if self.ready { self.info.prefetch } else { 0 },
        }
    }
}

#[derive(Debug, Default)]
pub struct WorkerTable {
    /// `workers[i]` has id `i + 1`.
    workers: Vec<Worker>,
    by_name: HashMap<String, WorkerId>,
}

impl WorkerTable {
    /// Registers a worker, reusing the id of a previous one with the same name.
    /// Returns the id and, if that name was still alive on another connection, the old connection.
    pub fn register(
        &mut self,
        info: WorkerInfo,
        addr: String,
        conn: ConnId,
        now_ms: u64,
    ) -> (WorkerId, Option<ConnId>) {
        if let Some(&id) = self.by_name.get(&info.name) {
            let w = &mut self.workers[id.0 as usize - 1];
            let previous = w.conn.replace(conn);
            w.info = info;
            w.addr = addr;
            w.last_seen_ms = now_ms;
            w.load = LoadReport::default();
            w.ready = false;
            w.retracting.clear();
            w.draining.clear();
            return (id, previous);
        }
        let id = WorkerId(self.workers.len() as u32 + 1);
        self.by_name.insert(info.name.clone(), id);
        self.workers.push(Worker {
            id,
            info,
            addr,
            conn: Some(conn),
            last_seen_ms: now_ms,
            load: LoadReport::default(),
            assigned: HashSet::new(),
            done: 0,
            ready: false,
            draining: HashSet::new(),
            retracting: VecDeque::new(),
        });
        (id, None)
    }

    /// The id for `name`, creating a dead placeholder if the name is new (results restored from
    /// the journal name workers that have not reconnected yet).
    pub fn intern(&mut self, name: &str) -> WorkerId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = WorkerId(self.workers.len() as u32 + 1);
        self.by_name.insert(name.to_string(), id);
        self.workers.push(Worker {
            id,
            info: WorkerInfo {
                name: name.to_string(),
                host: String::new(),
                cpus: 0,
                slots: 0,
                pid: 0,
                group: None,
                prefetch: 0,
            },
            addr: String::new(),
            conn: None,
            last_seen_ms: 0,
            load: LoadReport::default(),
            assigned: HashSet::new(),
            done: 0,
            ready: false,
            draining: HashSet::new(),
            retracting: VecDeque::new(),
        });
        id
    }

    pub fn by_name(&self, name: &str) -> Option<&Worker> {
        self.by_name.get(name).and_then(|&id| self.get(id))
    }

    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get((id.0 as usize).checked_sub(1)?)
    }

    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut((id.0 as usize).checked_sub(1)?)
    }

    pub fn name(&self, id: WorkerId) -> Option<&str> {
        self.get(id).map(|w| w.info.name.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }
}
