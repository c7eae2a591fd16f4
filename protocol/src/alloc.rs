//! Allocation queues on the wire (`master alloc add/list/remove`): the master submits worker jobs
//! to a batch system (Slurm) while tasks wait that its live workers cannot start.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The batch systems an allocation queue can submit to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Slurm,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Slurm => "slurm",
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue's settings, as `alloc add` gives them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueueParams {
    pub manager: Manager,
    /// The most workers of all its allocations together (pending and running).
    pub max_workers: u32,
    /// Workers (nodes) per allocation: one `sbatch --nodes K` job runs K workers.
    pub workers_per_alloc: u32,
    /// Each allocation's wall-clock limit (`sbatch --time`); `None`: the partition's default.
    pub time_limit_ms: Option<u64>,
    /// The most allocations submitted and not yet running.
    pub backlog: u32,
    /// Its workers exit after this long with nothing to do (`worker --idle-timeout`).
    pub idle_timeout_ms: u64,
    /// A name for people; `None`: the master names it `slurm-<id>`.
    pub name: Option<String>,
    /// The group its workers serve (`worker --group`); `None`: the shared pool.
    pub group: Option<String>,
    /// More `sbatch` arguments (after `--` on the command line), passed as they are.
    pub sbatch_args: Vec<String>,
    /// The worker program its jobs run; `None`: the `worker` beside the master's executable.
    pub worker_program: Option<String>,
    /// The address its workers dial; `None`: the master's listening address (a wildcard one
    /// replaced by this host's name).
    pub master_addr: Option<String>,
    /// The client certificate and key its workers present (`worker --tls-cert/--tls-key`), for a
    /// master with mutual TLS; paths as the compute nodes see them. Both or neither.
    #[serde(default)]
    pub worker_tls_cert: Option<String>,
    #[serde(default)]
    pub worker_tls_key: Option<String>,
}

/// Where an allocation is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocState {
    /// Recorded, `sbatch` not answered yet.
    Submitting,
    /// Queued in the batch system.
    Pending,
    Running,
    /// Gone from the batch system's queue after a worker of it joined.
    Finished,
    /// Submission failed, or the job ended with no worker joining.
    Failed,
}

impl AllocState {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocState::Submitting => "submitting",
            AllocState::Pending => "pending",
            AllocState::Running => "running",
            AllocState::Finished => "finished",
            AllocState::Failed => "failed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(
            self,
            AllocState::Submitting | AllocState::Pending | AllocState::Running
        )
    }
}

/// One allocation (one batch job) of a queue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AllocationStatus {
    /// The batch system's job id; `None` until `sbatch` answers.
    pub job_id: Option<String>,
    /// The job's name in the batch system (unique to this master).
    pub job_name: String,
    pub state: AllocState,
    /// Workers asked for.
    pub workers: u32,
    /// Names of the workers of this job that joined this master (connected now or before).
    pub joined: Vec<String>,
    /// Of those, connected now.
    pub connected: u32,
    /// Milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why it failed (`sbatch`'s stderr, a timeout, no worker joined).
    pub error: Option<String>,
}

/// One allocation queue as `alloc list` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub id: u32,
    pub name: String,
    pub params: QueueParams,
    /// `active`, `paused` (after repeated failures, until `paused_until_ms`) or `removing`
    /// (its running allocations drain).
    pub state: String,
    pub paused_reason: Option<String>,
    pub paused_until_ms: Option<u64>,
    /// Tasks waiting now that its workers could run.
    pub waiting_tasks: u64,
    /// Newest last; finished allocations beyond the last few are dropped.
    pub allocations: Vec<AllocationStatus>,
}

/// What a worker started by a batch system knows of its allocation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AllocationInfo {
    pub manager: Manager,
    /// The job id (`SLURM_JOB_ID`).
    pub job_id: String,
    /// How long the allocation has left, measured when the worker connects; `None`: no limit
    /// (or unknown).
    pub time_left_ms: Option<u64>,
}
