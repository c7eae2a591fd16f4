//! A real cluster on loopback for integration tests: the `master` and `worker` binaries as child
//! processes, the master on a port the OS picks, driven through the CLI. Everything started is killed
//! when the `Cluster` is dropped, and every wait polls against a deadline.

#![allow(dead_code)] // each test file uses a different part of the harness

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MASTER: &str = env!("CARGO_BIN_EXE_master");

/// The worker binary sits next to the master's; build it once per test run so it is never stale.
pub fn worker_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(MASTER).parent().expect("binary has a directory");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "worker", "--bin", "worker"]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building the worker failed");
            dir.join("worker")
        })
        .clone()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What `openssl req -x509 -newkey ... -subj /CN=localhost` makes: a self-signed certificate
/// for `localhost`, marked as a CA (so peers can pin it with `--tls-ca`). Written into `dir` as
/// `c.pem` and `k.pem`; returns their paths.
pub fn self_signed_localhost(dir: &Path) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert_path, key_path)
}

/// The HTTP flags for a master: `--http ADDR --http-port-file FILE`, unless the test's own flags
/// choose (`--http off`, or an address of their own, whose port file is then still written).
fn http_args(extra: &[&str], addr: &str, file: &Path) -> Vec<String> {
    let file = file.display().to_string();
    match extra.iter().position(|a| *a == "--http") {
        Some(i) if extra.get(i + 1) == Some(&"off") => Vec::new(),
        Some(_) => vec!["--http-port-file".into(), file],
        None => vec![
            "--http".into(),
            addr.into(),
            "--http-port-file".into(),
            file,
        ],
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub addr: String,
    /// The HTTP listener's `host:port`; empty when the test turned it off (`--http off`).
    pub http_addr: String,
    master: Child,
    workers: Vec<(String, Child)>,
}

/// A child started by a test itself, killed and reaped when dropped: a failing assertion must
/// not leave it running.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    /// A master on 127.0.0.1:0 with `extra` arguments; logs go to the test's own folder.
    pub fn start(extra: &[&str]) -> Cluster {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Cluster::start`], with these environment variables set for the master only.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "ballast-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port_file = dir.join("addr");
        let http_file = dir.join("http-addr");
        let log = File::create(dir.join("master.log")).expect("log file");
        // IMPORTANT: a port of its own for HTTP too, so parallel tests never meet on 7701.
        let http = http_args(extra, "127.0.0.1:0", &http_file);
        let master = Command::new(MASTER)
            .args(["--listen", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(&http)
            .args(extra)
            // Debug unless the test asks for another level.
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("master starts");
        let mut cluster = Cluster {
            dir,
            addr: String::new(),
            http_addr: String::new(),
            master,
            workers: Vec::new(),
        };
        cluster.addr = eventually(Duration::from_secs(10), "the master's port file", || {
            std::fs::read_to_string(&port_file).ok()
        });
        // Written before the port file, so it is there now.
        cluster.http_addr = std::fs::read_to_string(&http_file).unwrap_or_default();
        cluster
    }

    pub fn add_worker(&mut self, name: &str, slots: u32) {
        self.add_worker_with(name, slots, &[]);
    }

    pub fn add_worker_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        self.spawn_worker(name, slots, extra, log);
    }

    /// Starts a worker process logging to `log` and remembers it under `name`.
    fn spawn_worker(&mut self, name: &str, slots: u32, extra: &[&str], log: File) {
        let child = Command::new(worker_bin())
            .args(["--master", &self.addr, "--name", name, "--slots"])
            .arg(slots.to_string())
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts");
        self.workers.push((name.to_string(), child));
    }

    /// SIGKILLs a worker (std's `kill` is SIGKILL on Unix).
    pub fn kill_worker(&mut self, name: &str) {
        let i = self
            .workers
            .iter()
            .position(|(n, _)| n == name)
            .expect("known worker");
        let (_, mut child) = self.workers.remove(i);
        child.kill().expect("kill");
        let _ = child.wait();
    }

    /// Runs `master SUBCOMMAND --master ADDR REST...` (flags go before any `--`).
    pub fn cli(&self, args: &[&str]) -> Output {
        let (sub, rest) = args.split_first().expect("a subcommand");
        Command::new(MASTER)
            .arg(sub)
            .args(["--master", &self.addr])
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .expect("cli runs")
    }

    /// Runs a `--json` client command that must succeed and returns its JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.insert(1, "--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "master {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "master {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    pub fn alive_workers(&self) -> usize {
        self.status()["workers"]
            .as_array()
            .map(|ws| ws.iter().filter(|w| w["state"] == "alive").count())
            .unwrap_or(0)
    }

    pub fn wait_for_workers(&self, n: usize) {
        eventually(Duration::from_secs(20), "workers to join", || {
            (self.alive_workers() >= n).then_some(())
        });
    }

    pub fn results(&self) -> Vec<Value> {
        self.json(&["results"])
            .as_array()
            .cloned()
            .expect("results is an array")
    }

    /// Submits and returns the new ids.
    pub fn submit(&self, args: &[&str]) -> Vec<u64> {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        let v = self.json(&all);
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("numeric id"))
            .collect()
    }

    pub fn master_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }

    /// The master's pid, e.g. to SIGSTOP it.
    pub fn master_pid(&self) -> u32 {
        self.master.id()
    }

    pub fn master_alive(&mut self) -> bool {
        matches!(self.master.try_wait(), Ok(None))
    }

    /// Sends `signal` to the master (e.g. SIGSTOP/SIGCONT to hold its loop between two events).
    pub fn signal_master(&self, signal: libc::c_int) {
        // The child is not reaped until `Drop`, so its pid cannot have been reused.
        let rc = unsafe { libc::kill(self.master.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) on the master failed");
    }
}

impl Cluster {
    /// SIGKILLs the master (no chance to flush or say goodbye) and reaps it.
    pub fn kill_master(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
    }

    /// Starts the master again on the same data dir and the same address (so workers and the CLI
    /// find it where they left it); `extra` as for [`Cluster::start`]. Kills a running one first.
    /// Returns once the new master has written its port file.
    pub fn restart_master(&mut self, extra: &[&str]) {
        self.restart_master_with_env(extra, &[]);
    }

    /// Like [`Cluster::restart_master`], with these environment variables set for the master.
    pub fn restart_master_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.kill_master();
        let port_file = self.dir.join("addr");
        let _ = std::fs::remove_file(&port_file);
        let http_file = self.dir.join("http-addr");
        let _ = std::fs::remove_file(&http_file);
        let same_http = if self.http_addr.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.http_addr.clone()
        };
        let http = http_args(extra, &same_http, &http_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("master.log"))
            .expect("log file");
        self.master = Command::new(MASTER)
            .args(["--listen", &self.addr, "--port-file"])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&http)
            .args(extra)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("master starts again");
        let addr = eventually(
            Duration::from_secs(10),
            "the restarted master's port file",
            || std::fs::read_to_string(&port_file).ok(),
        );
        assert_eq!(
            addr, self.addr,
            "the restarted master must reuse the address"
        );
        self.http_addr = std::fs::read_to_string(&http_file).unwrap_or_default();
    }

    /// SIGKILLs worker `name` if it runs, then starts it again under the same name; its log is
    /// appended to.
    pub fn restart_worker(&mut self, name: &str, slots: u32, extra: &[&str]) {
        if self.workers.iter().any(|(n, _)| n == name) {
            self.kill_worker(name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        self.spawn_worker(name, slots, extra, log);
    }

    /// The exit status of worker `name` if it has exited (without blocking).
    pub fn worker_exit(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self
            .workers
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("known worker");
        child.try_wait().expect("try_wait")
    }

    /// The pid of worker `name`.
    pub fn worker_pid(&self, name: &str) -> u32 {
        self.workers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
            .expect("known worker")
    }

    /// Runs a client command like [`Cluster::cli`], with these extra environment variables, and
    /// kills it (and panics) if it has not finished within `limit`: a master that stopped answering
    /// must fail the test, not hang it.
    pub fn cli_within(&self, limit: Duration, args: &[&str], env: &[(&str, &str)]) -> Output {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let child = Command::new(MASTER)
            .arg(sub)
            .args(["--master", &self.addr])
            .args(rest)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli runs");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => {
                let _ = reader.join();
                out.expect("cli output")
            }
            Err(_) => {
                // The child is still ours (not yet reaped), so its pid cannot have been reused.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                let _ = reader.join();
                panic!("master {args:?} did not finish within {limit:?}");
            }
        }
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
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}
