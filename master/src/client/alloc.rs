//! `master alloc add slurm ... [-- SBATCH ARGS]`, `master alloc list [--json]`,
//! `master alloc remove ID`: the master's allocation queues, which submit worker jobs to Slurm
//! while tasks wait that its live workers cannot start.

use super::error::{ClientError, Result};
use super::session::unexpected;
use super::{view, ConnArgs, Outcome};
use protocol::duration::{format_duration, parse_duration};
use protocol::{FromMaster, Manager, QueueParams, QueueStatus, ToMaster};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct AllocArgs {
    #[command(subcommand)]
    pub command: AllocCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AllocCommand {
    /// Make an allocation queue: the master submits worker jobs while tasks wait.
    Add(Box<AddArgs>),
    /// Every allocation queue with its allocations (Slurm job ids, states, workers).
    List(ListArgs),
    /// Cancel a queue's pending allocations; its running ones drain (their workers leave when
    /// idle), then the queue is gone.
    Remove(RemoveArgs),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ManagerArg {
    Slurm,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The batch system.
    #[arg(value_enum)]
    pub manager: ManagerArg,
    /// The most workers of all its allocations together.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_workers: u32,
    /// Workers (nodes) per allocation.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers_per_alloc: u32,
    /// Each allocation's wall-clock limit (sbatch --time): 30m, 2h [default: the partition's].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub time_limit: Option<Duration>,
    /// The most allocations submitted and not yet running.
    #[arg(long, value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub backlog: u32,
    /// Its workers exit after this long with nothing to do, which ends their allocation.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// The queue's name [default: slurm-<id>].
    #[arg(long)]
    pub name: Option<String>,
    /// The group its workers serve (worker --group) [default: the shared pool].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// The worker program the jobs run [default: the `worker` beside the master's executable].
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<String>,
    /// The address the workers dial [default: the master's listening address].
    #[arg(long, value_name = "HOST:PORT")]
    pub worker_master: Option<String>,
    /// The client certificate its workers present to a master with mutual TLS
    /// (--tls-client-ca); a path the compute nodes can read.
    #[arg(long, value_name = "FILE", requires = "worker_tls_key")]
    pub worker_tls_cert: Option<PathBuf>,
    /// The key of --worker-tls-cert (mode 0600, readable on the compute nodes).
    #[arg(long, value_name = "FILE", requires = "worker_tls_cert")]
    pub worker_tls_key: Option<PathBuf>,
    /// Print the new queue as JSON.
    #[arg(long)]
    pub json: bool,
    /// More sbatch arguments, passed as they are (after `--`).
    #[arg(last = true, value_name = "SBATCH ARGS")]
    pub sbatch_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The queue's id (`alloc list`).
    pub id: u32,
}

/// `path` made absolute against our working directory: the job scripts run elsewhere.
fn absolute(path: Option<&Path>) -> Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let full = std::path::absolute(path)
        .map_err(|e| ClientError::Usage(format!("{}: {}", path.display(), protocol::Cause(&e))))?;
    let text = full
        .to_str()
        .ok_or_else(|| ClientError::Usage(format!("{}: not a UTF-8 path", full.display())))?;
    Ok(Some(text.to_string()))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn run(args: AllocArgs) -> Result<Outcome> {
    match args.command {
        AllocCommand::Add(a) => add(*a),
        AllocCommand::List(a) => list(a),
        AllocCommand::Remove(a) => remove(a),
    }
}

fn add(a: AddArgs) -> Result<Outcome> {
    if a.idle_timeout.is_zero() {
        return Err(ClientError::Usage(
            "--idle-timeout must be greater than zero".into(),
        ));
    }
    let params = QueueParams {
        manager: match a.manager {
            ManagerArg::Slurm => Manager::Slurm,
        },
        max_workers: a.max_workers,
        workers_per_alloc: a.workers_per_alloc,
        time_limit_ms: a.time_limit.map(ms),
        backlog: a.backlog,
        idle_timeout_ms: ms(a.idle_timeout),
        name: a.name,
        group: a.group,
        sbatch_args: a.sbatch_args,
        worker_program: a.worker_bin,
        master_addr: a.worker_master,
        worker_tls_cert: absolute(a.worker_tls_cert.as_deref())?,
        worker_tls_key: absolute(a.worker_tls_key.as_deref())?,
    };
    let mut session = a.conn.session()?;
    let reply = session.request(&ToMaster::AllocAdd(Box::new(params)))?;
    let FromMaster::AllocAdded { id, name } = reply else {
        return Err(unexpected(&reply, "AllocAdded"));
    };
    let mut out = view::stdout();
    if a.json {
        writeln!(out, "{}", json!({ "id": id, "name": name }))?;
    } else {
        writeln!(out, "allocation queue {id} ({name}) added")?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

fn list(a: ListArgs) -> Result<Outcome> {
    let mut session = a.conn.session()?;
    let reply = session.request(&ToMaster::AllocList)?;
    let FromMaster::AllocQueues(queues) = reply else {
        return Err(unexpected(&reply, "AllocQueues"));
    };
    let mut out = view::stdout();
    if a.json {
        let queues: Vec<_> = queues.iter().map(queue_json).collect();
        writeln!(out, "{}", json!({ "queues": queues }))?;
    } else {
        write_table(&mut out, &queues)?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

fn remove(a: RemoveArgs) -> Result<Outcome> {
    let mut session = a.conn.session()?;
    let reply = session.request(&ToMaster::AllocRemove { id: a.id })?;
    let FromMaster::AllocRemoved {
        id,
        cancelled,
        draining,
    } = reply
    else {
        return Err(unexpected(&reply, "AllocRemoved"));
    };
    let mut out = view::stdout();
    write!(out, "allocation queue {id} removed")?;
    if !cancelled.is_empty() {
        write!(out, "; cancelled job {}", cancelled.join(", "))?;
    }
    if draining > 0 {
        write!(
            out,
            "; {} left to drain",
            super::count(
                u64::from(draining),
                "running allocation",
                "running allocations"
            )
        )?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(Outcome::Success)
}

fn queue_json(q: &QueueStatus) -> serde_json::Value {
    let p = &q.params;
    let allocations: Vec<_> = q
        .allocations
        .iter()
        .map(|a| {
            json!({
                "job_id": a.job_id,
                "job_name": a.job_name,
                "state": a.state.as_str(),
                "workers": a.workers,
                "joined": a.joined,
                "connected": a.connected,
                "submitted_ms": a.submitted_ms,
                "started_ms": a.started_ms,
                "finished_ms": a.finished_ms,
                "error": a.error,
            })
        })
        .collect();
    json!({
        "id": q.id,
        "name": q.name,
        "manager": p.manager.as_str(),
        "state": q.state,
        "paused_reason": q.paused_reason,
        "paused_until_ms": q.paused_until_ms,
        "max_workers": p.max_workers,
        "workers_per_alloc": p.workers_per_alloc,
        "time_limit_ms": p.time_limit_ms,
        "backlog": p.backlog,
        "idle_timeout_ms": p.idle_timeout_ms,
        "group": p.group,
        "sbatch_args": p.sbatch_args,
        "waiting_tasks": q.waiting_tasks,
        "allocations": allocations,
    })
}

fn write_table(out: &mut impl Write, queues: &[QueueStatus]) -> std::io::Result<()> {
    if queues.is_empty() {
        return writeln!(
            out,
            "no allocation queues (add one with `master alloc add slurm`)"
        );
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms);
    for q in queues {
        let p = &q.params;
        writeln!(
            out,
            "queue {} {} ({}): {}, {} waiting; at most {} workers, {} per allocation, backlog \
             {}, idle timeout {}{}",
            q.id,
            q.name,
            p.manager,
            q.state,
            super::count(q.waiting_tasks, "task", "tasks"),
            p.max_workers,
            p.workers_per_alloc,
            p.backlog,
            format_duration(Duration::from_millis(p.idle_timeout_ms)),
            q.paused_reason
                .as_ref()
                .map(|r| format!(" (paused: {r})"))
                .unwrap_or_default()
        )?;
        if q.allocations.is_empty() {
            continue;
        }
        writeln!(
            out,
            "  JOB        STATE       WORKERS CONNECTED  AGE        JOINED"
        )?;
        for a in &q.allocations {
            let age = format_duration(Duration::from_secs(
                now.saturating_sub(a.submitted_ms) / 1_000,
            ));
            writeln!(
                out,
                "  {:<10} {:<11} {:>7} {:>9}  {:<10} {}{}",
                a.job_id.as_deref().unwrap_or("-"),
                a.state.as_str(),
                a.workers,
                a.connected,
                age,
                if a.joined.is_empty() {
                    "-".to_string()
                } else {
                    a.joined.join(",")
                },
                a.error
                    .as_ref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}
