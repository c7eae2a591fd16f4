//! `CommandRunner`: runs the batch system's commands on a thread of its own, one at a time,
//! each with a timeout, and hands the answers to the mio loop (a channel and a `Waker`), so a
//! slow or hanging `sbatch` never stalls dispatch.

use mio::Waker;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The most bytes of a command's stdout or stderr kept.
const OUTPUT_MAX: u64 = 1 << 20;

/// One command to run; `tag` comes back with its answer.
pub struct Job<T> {
    pub tag: T,
    pub argv: Vec<String>,
    pub cwd: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// How it went: stdout on exit status 0, else a one-line reason (stderr, the status, the
/// timeout).
pub struct Done<T> {
    pub tag: T,
    pub result: Result<String, String>,
}

pub struct CommandRunner<T> {
    jobs: Sender<Job<T>>,
    done: Receiver<Done<T>>,
}

impl<T: Send + 'static> CommandRunner<T> {
    pub fn start(waker: Arc<Waker>) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job<T>>();
        let (outbox, done) = mpsc::channel();
        thread::Builder::new()
            .name("alloc-commands".into())
            .spawn(move || {
                for job in inbox {
                    let result = run(&job);
                    if outbox
                        .send(Done {
                            tag: job.tag,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    // A failed wake only delays the answer to the next loop turn.
                    let _ = waker.wake();
                }
            })?;
        Ok(CommandRunner { jobs, done })
    }

    pub fn submit(&self, job: Job<T>) {
        // The thread lives as long as the runner.
        let _ = self.jobs.send(job);
    }

    pub fn take_done(&self) -> impl Iterator<Item = Done<T>> + '_ {
        self.done.try_iter()
    }
}

fn run<T>(job: &Job<T>) -> Result<String, String> {
    let (program, args) = job.argv.split_first().ok_or("empty command line")?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills whatever it started too.
        .process_group(0)
        // sbatch exports our environment into the job, where Slurm keeps it in its state files
        // and the worker would take it for its token: the token travels in the 0600 file only.
        .env_remove("BALLAST_TOKEN");
    if let Some(dir) = &job.cwd {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {}", protocol::Cause(&e)))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(OUTPUT_MAX).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + job.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the child's own process group; no memory is touched.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "{program} gave no answer within {} s (killed)",
                    job.timeout.as_secs()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {}", protocol::Cause(&e))),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        let why = super::slurm::cut(&err);
        Err(format!(
            "{program} failed ({status}){}{why}",
            if why.is_empty() { "" } else { ": " }
        ))
    }
}
