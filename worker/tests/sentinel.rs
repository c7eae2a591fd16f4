//! No command outlives its worker: the real `master` and `worker` binaries on loopback, a worker
//! SIGKILLed while it runs commands, and what is left of them afterwards.
//!
//! Each test's commands sleep for a duration no other process uses (`sleep 30.<digits>`), so they
//! can be found in `/proc` by their argv. The first run of a task sleeps 30 s; once a flag file
//! exists, a run sleeps 0.1 s, so the copies the master re-queues finish quickly and cannot be
//! mistaken for the first ones.

#![cfg(target_os = "linux")]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_worker");
/// Generous for a loaded 2-core machine; the commands themselves would live 30 s.
const PATIENCE: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The master binary sits next to the worker's; build it once per test run so it is never stale.
fn master_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(WORKER).parent().expect("binary has a directory");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "master", "--bin", "master"]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building the master failed");
            dir.join("master")
        })
        .clone()
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` after `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fields of `/proc/<pid>/stat` from the third on (state, ppid, pgrp, ...), and the name.
fn stat(pid: u32) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    Some((name, rest.split_whitespace().map(str::to_owned).collect()))
}

/// Whether `pid` runs. A zombie does not: an orphan waits for init to reap it, and some sandboxes
/// run an init that never reaps.
fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, fields)| fields.first().is_some_and(|s| s != "Z"))
}

/// The running processes whose argv is exactly `argv`.
fn processes_with_argv(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|&pid| is_running(pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn sigkill(pid: u32) {
    // SAFETY: plain syscall; the pids come from this test's own processes.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The commands of one test: a unique sleep, and the flag that shortens later runs. Whatever of
/// them still runs is killed on drop, also when the test fails.
struct Sleepers {
    duration: String,
    flag: PathBuf,
}

impl Sleepers {
    fn new(dir: &Path) -> Self {
        let unique = std::process::id() as usize * 100 + NEXT.fetch_add(1, Ordering::Relaxed);
        Sleepers {
            duration: format!("30.{unique:09}"),
            flag: dir.join("rerun"),
        }
    }

    /// `before` runs ahead of the long sleep (e.g. to start a detached one).
    fn script(&self, before: &str) -> String {
        format!(
            "if [ -e {} ]; then exec sleep 0.1; fi; {before} exec sleep {}",
            self.flag.display(),
            self.duration
        )
    }

    fn running(&self) -> Vec<u32> {
        processes_with_argv(&["sleep", &self.duration])
    }

    fn shorten_reruns(&self) {
        File::create(&self.flag).expect("flag file");
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for pid in self.running() {
            sigkill(pid);
        }
    }
}

struct Cluster {
    dir: PathBuf,
    addr: String,
    master: Child,
    workers: Vec<(String, Child)>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "ballast-sentinel-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port_file = dir.join("addr");
        let master = Command::new(master_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--no-journal",
                "--port-file",
            ])
            .arg(&port_file)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("master.log")).expect("log file"))
            .spawn()
            .expect("master starts");
        let mut cluster = Cluster {
            dir,
            addr: String::new(),
            master,
            workers: Vec::new(),
        };
        cluster.addr = eventually(PATIENCE, "the master's port file", || {
            std::fs::read_to_string(&port_file).ok()
        });
        cluster
    }

    /// Starts worker `name` (no flags beyond these) and waits until the master lists it alive.
    fn add_worker(&mut self, name: &str, slots: u32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(WORKER)
            .args(["--master", &self.addr, "--name", name, "--slots"])
            .arg(slots.to_string())
            .env("RUST_LOG", "debug")
            .env_remove("BALLAST_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts");
        self.workers.push((name.to_string(), child));
        eventually(PATIENCE, "the worker to join", || {
            self.worker_is_alive(name).then_some(())
        });
    }

    fn worker_pid(&self, name: &str) -> u32 {
        self.workers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
            .expect("known worker")
    }

    /// SIGKILLs worker `name` and reaps it.
    fn kill_worker(&mut self, name: &str) {
        let i = self
            .workers
            .iter()
            .position(|(n, _)| n == name)
            .expect("known worker");
        let (_, mut child) = self.workers.remove(i);
        child.kill().expect("SIGKILL the worker");
        let _ = child.wait();
    }

    fn cli(&self, args: &[&str]) -> Output {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let out = Command::new(master_bin())
            .arg(sub)
            .args(["--master", &self.addr])
            .args(rest)
            .env_remove("BALLAST_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("cli runs");
        assert!(
            out.status.success(),
            "master {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Whether `master status` lists worker `name` as alive.
    fn worker_is_alive(&self, name: &str) -> bool {
        let out = self.cli(&["status"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(name) && fields.any(|f| f == "alive")
        })
    }

    /// Submits `sh -c script` `count` times and returns the ids.
    fn submit(&self, count: u32, script: &str) -> Vec<String> {
        let count = count.to_string();
        let out = self.cli(&["submit", "--count", &count, "--", "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until every task of `ids` has succeeded, each on worker `on`.
    fn wait_succeeded_on(&self, ids: &[String], on: &str) {
        let mut args = vec!["results", "--json"];
        args.extend(ids.iter().map(String::as_str));
        // The JSON, not the table: its columns are for people and change (issue 11 added some).
        let worker = format!("\"worker\":\"{on}\"");
        eventually(PATIENCE, "the tasks to succeed", || {
            let out = self.cli(&args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // One compact object per task, each starting with its id.
            let done = text
                .split("{\"id\":")
                .skip(1)
                .filter(|task| task.contains("\"state\":\"succeeded\"") && task.contains(&worker))
                .count();
            (done == ids.len()).then_some(())
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The children of `parent` named `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|(n, fields)| {
                n == name
                    && fields
                        .get(1)
                        .is_some_and(|ppid| *ppid == parent.to_string())
            })
        })
        .collect()
}

#[test]
fn a_sigkilled_worker_leaves_no_command_and_its_tasks_succeed_elsewhere() {
    let mut c = Cluster::start();
    let sleepers = Sleepers::new(&c.dir);
    c.add_worker("a", 2);
    let ids = c.submit(2, &sleepers.script(""));
    assert_eq!(ids.len(), 2);
    eventually(PATIENCE, "both commands to run on a", || {
        (sleepers.running().len() == 2).then_some(())
    });
    c.add_worker("b", 2);
    sleepers.shorten_reruns();

    c.kill_worker("a");
    let killed = Instant::now();
    eventually(PATIENCE, "a's commands to die with it", || {
        sleepers.running().is_empty().then_some(())
    });
    eprintln!(
        "a's commands were gone {:?} after its SIGKILL",
        killed.elapsed()
    );
    c.wait_succeeded_on(&ids, "b");
}

#[test]
fn a_descendant_that_left_its_process_group_dies_with_the_worker_too() {
    let mut c = Cluster::start();
    let sleepers = Sleepers::new(&c.dir);
    c.add_worker("a", 1);
    // The detached sleep is in a session and group of its own: only its mark betrays it.
    let script = sleepers.script(&format!("setsid sleep {} & ", sleepers.duration));
    c.submit(1, &script);
    eventually(
        PATIENCE,
        "the command and its detached child to run",
        || (sleepers.running().len() == 2).then_some(()),
    );
    sleepers.shorten_reruns();
    c.kill_worker("a");
    eventually(PATIENCE, "both to die with the worker", || {
        sleepers.running().is_empty().then_some(())
    });
}

#[test]
fn a_worker_restarted_under_its_name_kills_what_its_predecessor_left() {
    let mut c = Cluster::start();
    let sleepers = Sleepers::new(&c.dir);
    c.add_worker("a", 1);
    let ids = c.submit(1, &sleepers.script(""));
    let left = eventually(PATIENCE, "the command to run on a", || {
        let running = sleepers.running();
        (running.len() == 1).then(|| running[0])
    });
    // Take the sentinel down first, as `kill -9` of both would: nothing is left to clean up.
    let sentinel = eventually(PATIENCE, "a's sentinel", || {
        children_named(c.worker_pid("a"), "task-sentinel").pop()
    });
    sigkill(sentinel);
    eventually(PATIENCE, "the sentinel to die", || {
        (!is_running(sentinel)).then_some(())
    });
    sleepers.shorten_reruns();
    c.kill_worker("a");
    assert!(
        is_running(left),
        "with worker and sentinel gone, nothing should have killed the command yet"
    );

    c.add_worker("a", 1);
    eventually(PATIENCE, "the new incarnation to kill the command", || {
        (!is_running(left)).then_some(())
    });
    c.wait_succeeded_on(&ids, "a");
}
