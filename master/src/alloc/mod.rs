//! Allocation queues (`master alloc add/list/remove`): workers from Slurm on demand. The
//! decisions are `queues::AllocQueues` (no IO); this shell keeps them durable in
//! `<data dir>/alloc/queues.json` (written and fsynced before any `sbatch` runs), writes each
//! job's script beside it, and runs the batch system's commands on `runner::CommandRunner`'s
//! thread, never in the mio loop.

pub mod queues;
pub mod runner;
pub mod slurm;

use log::warn;
use mio::Waker;
use protocol::{FromMaster, QueueParams};
use queues::{Action, AllocQueues, AllocWorker};
use runner::{CommandRunner, Job};
use scheduler::{AllocRequest, Core};
use slurm::WorkerLaunch;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Each batch-system command gets this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Limits on what `alloc add` may carry.
const MAX_SBATCH_ARGS: usize = 64;
const MAX_SBATCH_ARG_BYTES: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{}: {}", path.display(), protocol::Cause(source))]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a state file of this version: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

/// What the master knows that its workers need.
#[derive(Debug, Clone, Default)]
pub struct AllocSettings {
    /// The token, written to a file only the user can read, if the master has one.
    pub token: Option<Vec<u8>>,
    /// The master's certificate file, if it serves TLS.
    pub tls_cert: Option<PathBuf>,
    /// It requires client certificates: allocation workers have none.
    pub mutual_tls: bool,
}

enum Tag {
    Submit(String),
    Poll(u64),
    Cancel,
}

pub struct Allocator {
    queues: AllocQueues,
    /// The token for the workers (mode 0600), written once at start, if the master has one.
    token_file: Option<PathBuf>,
    dir: PathBuf,
    settings: AllocSettings,
    listen: SocketAddr,
    runner: CommandRunner<Tag>,
    /// A command answered or a request changed something: tick at the end of the turn.
    due: bool,
}

impl Allocator {
    /// Opens (or starts) the queues kept in `dir`.
    pub fn open(
        dir: &Path,
        settings: AllocSettings,
        listen: SocketAddr,
        waker: Arc<Waker>,
    ) -> Result<Allocator, AllocError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AllocError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Job scripts and the token file: the user's alone.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let path = dir.join("queues.json");
        let queues = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AllocError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut tag = [0u8; 3];
                getrandom::fill(&mut tag).map_err(|e| AllocError::Io {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
                AllocQueues::new(tag.iter().map(|b| format!("{b:02x}")).collect())
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Absolute: sbatch runs in this dir, and job scripts name files here for other nodes.
        let dir = &fs::canonicalize(dir).map_err(io_err(dir))?;
        let token_file = match &settings.token {
            Some(token) => {
                let path = dir.join("token");
                write_private(&path, token).map_err(io_err(&path))?;
                Some(path)
            }
            None => None,
        };
        let runner = CommandRunner::start(waker).map_err(io_err(dir))?;
        Ok(Allocator {
            token_file,
            queues,
            dir: dir.to_path_buf(),
            settings,
            listen,
            runner,
            due: true,
        })
    }

    /// When `tick` must run next (ms since the epoch), if ever.
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.due {
            return Some(0);
        }
        self.queues.next_due_ms()
    }

    /// The runner's thread woke the loop: its answers are taken at the turn's `tick`.
    pub fn wake(&mut self) {
        self.due = true;
    }

    /// A client's request; the reply goes back on its connection.
    pub fn request(&mut self, now_ms: u64, request: AllocRequest, core: &Core) -> FromMaster {
        self.due = true;
        let error = |message| FromMaster::Error { message };
        let reply = match request {
            AllocRequest::Add(params) => match self.check(&params) {
                Err(e) => error(e),
                Ok(()) => match self.queues.add(*params) {
                    Ok((id, name)) => FromMaster::AllocAdded { id, name },
                    Err(e) => error(e),
                },
            },
            AllocRequest::List => {
                let workers = allocation_workers(core);
                FromMaster::AllocQueues(self.queues.status(
                    now_ms,
                    |g| core.waiting_for(g),
                    &workers,
                ))
            }
            AllocRequest::Remove { id } => match self.queues.remove(id) {
                Ok((cancelled, draining)) => FromMaster::AllocRemoved {
                    id,
                    cancelled,
                    draining,
                },
                Err(e) => error(e),
            },
        };
        if let Err(e) = self.save() {
            return error(format!("the allocation queues could not be saved: {e}"));
        }
        reply
    }

    fn check(&self, p: &QueueParams) -> Result<(), String> {
        if p.max_workers == 0 || p.workers_per_alloc == 0 || p.backlog == 0 {
            return Err(
                "--max-workers, --workers-per-alloc and --backlog must be at least 1".into(),
            );
        }
        if p.workers_per_alloc > p.max_workers {
            return Err(format!(
                "--workers-per-alloc {} is more than --max-workers {}",
                p.workers_per_alloc, p.max_workers
            ));
        }
        if p.idle_timeout_ms == 0 {
            return Err("--idle-timeout must be greater than zero".into());
        }
        let names = [
            &p.name,
            &p.group,
            &p.worker_program,
            &p.master_addr,
            &p.worker_tls_cert,
            &p.worker_tls_key,
        ];
        if names.iter().any(|n| {
            n.as_ref()
                .is_some_and(|n| n.is_empty() || n.len() > MAX_SBATCH_ARG_BYTES)
        }) {
            return Err(
                "a name, group, worker program, address or certificate path is empty or too long"
                    .into(),
            );
        }
        if p.name
            .as_ref()
            .is_some_and(|n| n.len() > protocol::limits::MAX_NAME_BYTES)
        {
            return Err(format!(
                "the queue name is longer than {} bytes",
                protocol::limits::MAX_NAME_BYTES
            ));
        }
        if p.sbatch_args.len() > MAX_SBATCH_ARGS
            || p.sbatch_args.iter().any(|a| a.len() > MAX_SBATCH_ARG_BYTES)
        {
            return Err(format!(
                "at most {MAX_SBATCH_ARGS} sbatch arguments of at most {MAX_SBATCH_ARG_BYTES} \
                 bytes each"
            ));
        }
        match (&p.worker_tls_cert, &p.worker_tls_key) {
            (Some(cert), Some(key)) => {
                // Read where the master runs; the nodes see the same file system, or the job
                // says why in its output.
                for file in [cert, key] {
                    fs::metadata(file)
                        .map_err(|e| format!("worker TLS file {file}: {}", protocol::Cause(&e)))?;
                }
            }
            (None, None) if self.settings.mutual_tls => {
                return Err(
                    "this master requires client certificates (--tls-client-ca): \
                     pass --worker-tls-cert FILE --worker-tls-key FILE, readable on the \
                     compute nodes"
                        .into(),
                )
            }
            (None, None) => {}
            _ => return Err("--worker-tls-cert and --worker-tls-key go together".into()),
        }
        self.program(p).map(drop)
    }

    /// The worker program of `p`'s jobs.
    fn program(&self, p: &QueueParams) -> Result<String, String> {
        if let Some(program) = &p.worker_program {
            return Ok(program.clone());
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("worker")))
            .filter(|w| w.is_file());
        match beside {
            Some(path) => Ok(path.display().to_string()),
            None => {
                Err("no `worker` program beside the master's executable: pass --worker-bin".into())
            }
        }
    }

    /// Takes the commands' answers, decides, persists, then runs what was decided.
    pub fn tick(&mut self, now_ms: u64, core: &Core) {
        let done: Vec<_> = self.runner.take_done().collect();
        for d in done {
            match d.tag {
                Tag::Submit(name) => {
                    let result = d.result.and_then(|out| slurm::parse_sbatch(&out));
                    self.queues.submitted(now_ms, &name, result);
                }
                Tag::Poll(issued) => {
                    let result = d.result.map(|out| slurm::parse_squeue(&out));
                    self.queues.polled(now_ms, issued, result);
                }
                Tag::Cancel => {
                    if let Err(e) = d.result {
                        warn!("alloc: scancel: {e}");
                    }
                }
            }
        }
        self.due = false;
        if self.queues.is_empty() {
            return self.save_logged();
        }
        let workers = allocation_workers(core);
        let actions = self.queues.tick(now_ms, |g| core.waiting_for(g), &workers);
        // IMPORTANT: the submission is on disk before sbatch runs, so a restart finds its job.
        if let Err(e) = self.save() {
            warn!("alloc: cannot save the queues, submitting nothing: {e}");
            for a in actions {
                if let Action::Submit { job_name, .. } = a {
                    self.queues
                        .submitted(now_ms, &job_name, Err(format!("not saved: {e}")));
                }
            }
            return;
        }
        for action in actions {
            self.act(now_ms, action);
        }
    }

    fn act(&mut self, now_ms: u64, action: Action) {
        let job = |tag, argv| Job {
            tag,
            argv,
            cwd: None,
            timeout: COMMAND_TIMEOUT,
        };
        match action {
            Action::Submit {
                queue,
                job_name,
                workers,
            } => match self.write_script(queue, &job_name, workers) {
                Ok(argv) => self.runner.submit(Job {
                    cwd: Some(self.dir.clone()),
                    ..job(Tag::Submit(job_name), argv)
                }),
                Err(e) => self.queues.submitted(now_ms, &job_name, Err(e)),
            },
            Action::Poll {
                job_names,
                issued_ms,
            } => self
                .runner
                .submit(job(Tag::Poll(issued_ms), slurm::squeue_argv(&job_names))),
            Action::Cancel { job_ids } => self
                .runner
                .submit(job(Tag::Cancel, slurm::scancel_argv(&job_ids))),
        }
    }

    /// Writes the job's script (and the token file) and returns its `sbatch` command line.
    fn write_script(
        &self,
        queue: u32,
        job_name: &str,
        workers: u32,
    ) -> Result<Vec<String>, String> {
        let (queue_name, params) = self
            .queues
            .params(queue)
            .ok_or_else(|| format!("queue {queue} is gone"))?;
        let launch = WorkerLaunch {
            program: self.program(params)?,
            master_addr: params
                .master_addr
                .clone()
                .unwrap_or_else(|| self.dial_addr()),
            token_file: self.token_file.clone(),
            tls_ca: self.settings.tls_cert.clone(),
        };
        let script = self.dir.join(format!("{job_name}.sh"));
        let text = slurm::job_script(job_name, queue_name, params, &launch);
        fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
        let output = self.dir.join(format!("{job_name}.out"));
        Ok(slurm::sbatch_argv(
            job_name, workers, params, &script, &output,
        ))
    }

    /// The listening address, with a wildcard IP replaced by this host's name.
    fn dial_addr(&self) -> String {
        if !self.listen.ip().is_unspecified() {
            return self.listen.to_string();
        }
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", self.listen.port())
    }

    fn save_logged(&mut self) {
        if let Err(e) = self.save() {
            warn!("alloc: cannot save the queues: {e}");
        }
    }

    /// Writes the queues if they changed: a temporary file, fsynced, renamed over the old one.
    fn save(&mut self) -> Result<(), String> {
        if !self.queues.take_dirty() {
            return Ok(());
        }
        let path = self.dir.join("queues.json");
        let tmp = self.dir.join("queues.json.tmp");
        let write = || -> io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&self.queues).map_err(io::Error::other)?;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| format!("{}: {}", path.display(), protocol::Cause(&e)))
    }
}

/// Every worker that joined from an allocation (borrowed from the core, not copied).
fn allocation_workers(core: &Core) -> Vec<AllocWorker<'_>> {
    core.allocation_workers().collect()
}

/// Writes `bytes` to `path`, readable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()
}
