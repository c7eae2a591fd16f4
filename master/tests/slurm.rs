//! Workers from Slurm on demand (issue 12), against a real one-node Slurm cluster: the one
//! `scripts/slurm-local.sh up` starts (or any cluster `SLURM_CONF` names). Without one these
//! tests say why and pass, unless `BALLAST_REQUIRE_SLURM=1` (CI sets it: there they must run).
//!
//! Both tests need the whole node and an empty batch queue at the end, so they take turns.

mod common;

use common::{eventually, worker_bin, Cluster};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

static NODE: Mutex<()> = Mutex::new(());

const TOKEN: &str = "slurm-test-token";

/// The `SLURM_CONF` of a cluster that answers, or `None` (said on stderr) when there is none.
/// Asked once per test binary.
fn slurm_conf() -> Option<String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    match FOUND.get_or_init(find_slurm) {
        Ok(conf) => Some(conf.clone()),
        Err(why) => {
            let required = std::env::var("BALLAST_REQUIRE_SLURM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "BALLAST_REQUIRE_SLURM=1 but no Slurm cluster answers: {why} \
                 (start one with `scripts/slurm-local.sh up`)"
            );
            eprintln!("skipped: {why}; start a cluster with `scripts/slurm-local.sh up`");
            None
        }
    }
}

fn find_slurm() -> Result<String, String> {
    let conf = std::env::var("SLURM_CONF").ok().or_else(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-local.sh");
        let out = Command::new(script).arg("env").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .map(str::to_string)
    });
    let conf = conf.ok_or("no SLURM_CONF and no scripts/slurm-local.sh state")?;
    sinfo(&conf).map(|()| conf)
}

/// The controller answers and the node takes jobs.
fn sinfo(conf: &str) -> Result<(), String> {
    let out = Command::new("timeout")
        .args(["10", "sinfo", "-h", "-o", "%T"])
        .env("SLURM_CONF", conf)
        .output()
        .map_err(|e| format!("cannot run sinfo: {e}"))?;
    let states = String::from_utf8_lossy(&out.stdout);
    let usable = ["idle", "mixed", "allocated"];
    if out.status.success() && states.lines().any(|s| usable.contains(&s.trim())) {
        Ok(())
    } else {
        Err(format!(
            "sinfo says {:?} {}",
            states.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `squeue -h`: one line per job in the batch queue.
fn squeue(conf: &str) -> String {
    let out = Command::new("timeout")
        .args(["10", "squeue", "-h"])
        .env("SLURM_CONF", conf)
        .output()
        .expect("squeue runs");
    assert!(
        out.status.success(),
        "squeue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster's `SLURM_CONF` and the node to ourselves, its batch queue empty; `None` without
/// a cluster.
fn take_node() -> Option<(String, MutexGuard<'static, ()>)> {
    let conf = slurm_conf()?;
    let node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    wait_for_empty_queue(&conf, "an empty batch queue before the test");
    Some((conf, node))
}

/// An empty directory of this test process for files the test writes.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn wait_for_empty_queue(conf: &str, what: &str) {
    eventually(Duration::from_secs(60), what, || {
        squeue(conf).trim().is_empty().then_some(())
    });
}

struct SlurmCluster {
    cluster: Cluster,
    env: Vec<(String, String)>,
    /// Flags every client command takes (TLS files).
    client_flags: Vec<String>,
}

impl SlurmCluster {
    /// A master with a token whose environment reaches Slurm (`SLURM_CONF`), with `path` first on
    /// its `PATH` when given.
    fn start(conf: &str, path: Option<&Path>) -> SlurmCluster {
        Self::start_with(conf, path, &[], Vec::new())
    }

    /// Like `start`, with `master_args` for the master and `client_flags` for every client.
    fn start_with(
        conf: &str,
        path: Option<&Path>,
        master_args: &[&str],
        client_flags: Vec<String>,
    ) -> SlurmCluster {
        // The master submits the `worker` beside its own binary: build it now.
        worker_bin();
        let mut env = vec![
            ("SLURM_CONF".to_string(), conf.to_string()),
            ("BALLAST_TOKEN".to_string(), TOKEN.to_string()),
        ];
        if let Some(dir) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            env.push(("PATH".into(), format!("{}:{old}", dir.display())));
        }
        let borrowed: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cluster = Cluster::start_with_env(master_args, &borrowed);
        SlurmCluster {
            cluster,
            env,
            client_flags,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `master ARGS` with `--master ADDR`, the client flags (and `--json` when asked) before
    /// any `--`; killed after 2 minutes.
    fn cli(&self, args: &[&str], json: bool) -> std::process::Output {
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut flags = vec!["--master", self.cluster.addr.as_str()];
        flags.extend(self.client_flags.iter().map(String::as_str));
        if json {
            flags.push("--json");
        }
        Command::new("timeout")
            .args(["120", common::MASTER])
            .args(&args[..split])
            .args(flags)
            .args(&args[split..])
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("the client runs")
    }

    /// [`SlurmCluster::cli`] that must succeed; its stdout.
    fn cli_ok(&self, args: &[&str], json: bool) -> String {
        let out = self.cli(args, json);
        assert!(
            out.status.success(),
            "master {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.cli_ok(args, true);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {text}"))
    }

    /// `alloc add slurm --max-workers N --idle-timeout D EXTRA...`.
    fn add_queue(&self, max_workers: &str, idle_timeout: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "alloc",
            "add",
            "slurm",
            "--max-workers",
            max_workers,
            "--idle-timeout",
            idle_timeout,
        ];
        args.extend_from_slice(extra);
        self.cli_ok(&args, false)
    }

    fn queues(&self) -> Vec<Value> {
        self.json(&["alloc", "list"])["queues"]
            .as_array()
            .cloned()
            .expect("queues")
    }

    fn allocations(&self) -> Vec<Value> {
        self.queues()
            .iter()
            .flat_map(|q| q["allocations"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn restart_master(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.cluster.restart_master_with_env(&[], &env);
    }
}

#[test]
fn workers_arrive_through_slurm_run_the_batch_and_leave() {
    let Some((conf, _node)) = take_node() else {
        return;
    };
    let c = SlurmCluster::start(&conf, None);

    let added = c.add_queue("2", "10s", &[]);
    assert!(added.contains("allocation queue 1"), "{added}");
    let ids = c.json(&["submit", "--count", "20", "--", "sh", "-c", "sleep 0.2"]);
    assert_eq!(ids["ids"].as_array().map(Vec::len), Some(20), "{ids}");

    let waited = c.cli_ok(&["wait"], false);
    assert!(waited.contains("20 tasks: 20 succeeded"), "{waited}");

    // Every task ran on a worker that joined through one of the queue's Slurm jobs.
    let allocations = c.allocations();
    assert!(
        !allocations.is_empty() && allocations.len() <= 2,
        "{allocations:?}"
    );
    let mut joined = Vec::new();
    for a in &allocations {
        let job = a["job_id"].as_str().unwrap_or_default();
        assert!(
            !job.is_empty() && job.bytes().all(|b| b.is_ascii_digit()),
            "a Slurm job id: {a}"
        );
        joined.extend(
            a["joined"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string),
        );
    }
    let results = c.json(&["results"]);
    let results = results.as_array().expect("results");
    assert_eq!(results.len(), 20);
    for r in results {
        assert_eq!(r["state"], "succeeded", "{r}");
        let worker = r["worker"].as_str().unwrap_or_default();
        assert!(
            joined.iter().any(|j| j == worker),
            "task ran on {worker}, not on a worker from Slurm ({joined:?})"
        );
    }
    let status = c.json(&["status"]);
    let from_slurm = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["allocation"].is_string())
        .count();
    assert!(from_slurm >= 1, "workers carry their Slurm job: {status}");

    // Idle for 10 s, the workers leave, which ends their jobs.
    wait_for_empty_queue(&conf, "squeue -h to print nothing after the batch");
    let ended = eventually(
        Duration::from_secs(30),
        "the allocations to be seen finished",
        || {
            let all = c.allocations();
            all.iter().all(|a| a["state"] == "finished").then_some(all)
        },
    );
    assert!(ended.iter().all(|a| a["finished_ms"].is_u64()), "{ended:?}");
    let log = c.cluster.master_log();
    assert!(log.contains("alloc slurm-1: submitted job"), "{log}");
    assert!(log.contains("joined from job"), "{log}");
}

/// A `sbatch` that submits the job and then takes its time to answer: the window in which the
/// master has written its intent, the job exists, and its id is not yet known.
fn slow_sbatch(dir: &Path) -> PathBuf {
    let bin = dir.join("slow-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sbatch"])
            .output()
            .expect("sh")
            .stdout,
    )
    .expect("utf-8 path");
    let script = format!(
        "#!/bin/sh\necho $$ > {pid}\nout=$({real} \"$@\") || exit $?\necho \"$out\" >> {calls}\n\
         sleep 20\necho \"$out\"\n",
        pid = dir.join("sbatch-pid").display(),
        real = real.trim(),
        calls = dir.join("sbatch-calls").display()
    );
    let path = bin.join("sbatch");
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[test]
fn a_master_killed_while_sbatch_answers_finds_its_job_and_submits_no_other() {
    let Some((conf, _node)) = take_node() else {
        return;
    };
    let scratch = scratch("slurm");
    let bin = slow_sbatch(&scratch);
    let mut c = SlurmCluster::start(&conf, Some(&bin));

    c.add_queue("1", "5s", &[]);
    c.cli_ok(&["submit", "--count", "5", "--", "true"], false);
    let calls = scratch.join("sbatch-calls");
    let job = eventually(Duration::from_secs(30), "sbatch to submit the job", || {
        std::fs::read_to_string(&calls)
            .ok()
            .filter(|s| !s.is_empty())
    });
    // `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
    let job = job.trim().split(';').next().unwrap_or_default().to_string();
    // The job is in the batch queue; the master has not heard its id. Kill it there, and the
    // sleeping wrapper with it (the master runs each command in a process group of its own).
    c.cluster.kill_master();
    let wrapper: i32 = std::fs::read_to_string(scratch.join("sbatch-pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the wrapper's pid");
    unsafe {
        libc::kill(-wrapper, libc::SIGKILL);
    }
    c.restart_master();

    let waited = c.cli_ok(&["wait"], false);
    assert!(waited.contains("5 tasks: 5 succeeded"), "{waited}");
    let allocations = c.allocations();
    assert_eq!(
        allocations.len(),
        1,
        "one allocation, not two: {allocations:?}"
    );
    assert_eq!(allocations[0]["job_id"], job.as_str(), "{allocations:?}");
    let sbatch_runs = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        sbatch_runs.lines().count(),
        1,
        "sbatch ran again: {sbatch_runs}"
    );
    let log = c.cluster.master_log();
    assert!(
        log.contains(&format!("job {job} found by name after a restart")),
        "{log}"
    );
    wait_for_empty_queue(&conf, "squeue -h to print nothing after the batch");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A CA for client certificates and a certificate it issued, written into `dir`:
/// (CA, certificate, key) paths.
fn client_certificate(dir: &Path) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["ballast-worker".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write");
        path.display().to_string()
    };
    (
        write("client-ca.pem", ca.pem()),
        write("client.pem", cert.pem()),
        write("client.key", key.serialize_pem()),
    )
}

/// Mutual TLS: the queue's workers present the certificate `alloc add` names, which is refused
/// without one.
#[test]
fn workers_from_slurm_present_their_client_certificate_to_a_mutual_tls_master() {
    let Some((conf, _node)) = take_node() else {
        return;
    };
    let scratch = scratch("slurm-tls");
    let (server_cert, server_key) = common::self_signed_localhost(&scratch);
    let (server_cert, server_key) = (
        server_cert.display().to_string(),
        server_key.display().to_string(),
    );
    let (client_ca, client_cert, client_key) = client_certificate(&scratch);
    let client_flags = vec![
        "--tls-ca".to_string(),
        server_cert.clone(),
        "--tls-cert".into(),
        client_cert.clone(),
        "--tls-key".into(),
        client_key.clone(),
    ];
    let c = SlurmCluster::start_with(
        &conf,
        None,
        &[
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &client_ca,
        ],
        client_flags,
    );

    let out = c.cli(&["alloc", "add", "slurm", "--max-workers", "1"], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--worker-tls-cert"),
        "a queue whose workers have no certificate is refused: {stderr}"
    );

    c.add_queue(
        "1",
        "5s",
        &[
            "--worker-tls-cert",
            &client_cert,
            "--worker-tls-key",
            &client_key,
        ],
    );
    c.cli_ok(&["submit", "--count", "3", "--", "true"], false);
    let waited = c.cli_ok(&["wait"], false);
    assert!(waited.contains("3 tasks: 3 succeeded"), "{waited}");
    let allocations = c.allocations();
    assert_eq!(allocations.len(), 1, "{allocations:?}");
    assert!(
        allocations[0]["joined"]
            .as_array()
            .is_some_and(|j| j.len() == 1),
        "{allocations:?}"
    );
    wait_for_empty_queue(&conf, "squeue -h to print nothing after the batch");
    let _ = std::fs::remove_dir_all(&scratch);
}
