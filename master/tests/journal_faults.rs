//! Issue 14's journal faults, from outside, on the real binaries: a WAL damaged after a SIGKILL
//! (the master refuses to start, or every acknowledged task is still there), and a journal
//! `--accept-journal-loss` starts on anyway.

mod common;

use common::{eventually, Cluster, MASTER};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const WAL: &str = "ballast.db-wal";
const JOURNAL_FILES: [&str; 3] = ["ballast.db", WAL, "ballast.db-marks"];

/// xorshift64*: the damage is reproducible from the seed the failure message prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn copy_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy dir");
    for file in JOURNAL_FILES {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).expect("copy");
        }
    }
}

/// A master on its own data dir, outside any `Cluster`; killed on drop.
struct Lone {
    child: Child,
    dir: PathBuf,
}

enum Start {
    /// It exited (status and log) before listening.
    Refused(Output),
    /// It listens here.
    Serving(Lone, String),
}

fn start_lone(dir: &Path, data: &Path, extra: &[&str]) -> Start {
    let port_file = dir.join("addr");
    let log_path = dir.join("master.log");
    let log = File::create(&log_path).expect("log");
    let mut child = Command::new(MASTER)
        .args(["--listen", "127.0.0.1:0", "--http", "off", "--port-file"])
        .arg(&port_file)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("master starts");
    let outcome = eventually(
        Duration::from_secs(20),
        "the master to listen or exit",
        || {
            if let Ok(addr) = std::fs::read_to_string(&port_file) {
                return Some(Ok(addr));
            }
            child.try_wait().expect("try_wait").map(Err)
        },
    );
    match outcome {
        Ok(addr) => Start::Serving(
            Lone {
                child,
                dir: dir.to_path_buf(),
            },
            addr,
        ),
        Err(status) => Start::Refused(Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&log_path).unwrap_or_default(),
        }),
    }
}

impl Lone {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }
}

impl Drop for Lone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn results(addr: &str) -> BTreeMap<u64, Value> {
    let out = Command::new(MASTER)
        .args(["results", "--json", "--master", addr])
        .stdin(Stdio::null())
        .output()
        .expect("results runs");
    assert!(
        out.status.success(),
        "results failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("results JSON");
    all.into_iter()
        .map(|r| (r["id"].as_u64().expect("id"), r))
        .collect()
}

/// 90 tasks acknowledged one submission (one commit) at a time, then a SIGKILL: the journal's
/// data is in the WAL (never checkpointed). Returns the cluster (master dead) and the ids.
fn acknowledged_then_killed() -> (Cluster, Vec<u64>) {
    let mut cluster = Cluster::start(&[]);
    let mut ids = Vec::new();
    for _ in 0..90 {
        ids.extend(cluster.submit(&["--sleep", "1s"]));
    }
    assert_eq!(ids, (1..=90).collect::<Vec<u64>>());
    cluster.kill_master();
    (cluster, ids)
}

#[test]
fn a_damaged_wal_is_refused_or_loses_nothing() {
    let (cluster, ids) = acknowledged_then_killed();
    let data = cluster.dir.join("data");
    let wal_len = std::fs::metadata(data.join(WAL)).expect("the WAL").len();
    // 90 commits of at least one 4 KiB page each; well below the 1000-page auto-checkpoint.
    assert!(
        wal_len > 90 * 4096,
        "the acknowledged tasks are in the WAL ({wal_len} bytes)"
    );
    let mut refused = 0;
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // The middle half of the file.
        let offset = wal_len / 4 + rng.next() % (wal_len / 2);
        let bytes: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
        let dir = cluster.dir.join(format!("seed-{seed}"));
        let copy = dir.join("data");
        copy_journal(&data, &copy);
        File::options()
            .write(true)
            .open(copy.join(WAL))
            .expect("wal")
            .write_all_at(&bytes, offset)
            .expect("damage");
        let what = format!("seed {seed}: 64 bytes at {offset} of {wal_len}");
        match start_lone(&dir, &copy, &[]) {
            Start::Refused(out) => {
                let log = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{what}: {log}");
                for word in ["journal", "lost", "--accept-journal-loss"] {
                    assert!(log.contains(word), "{what}: {word:?} missing: {log}");
                }
                refused += 1;
            }
            Start::Serving(master, addr) => {
                let found = results(&addr);
                for id in &ids {
                    assert!(
                        found.contains_key(id),
                        "{what}: task {id} acknowledged but gone; log: {}",
                        master.log()
                    );
                }
            }
        }
    }
    // The damage is in the middle of 90 commits: some of them must have been hit.
    assert!(refused > 0, "no seed damaged acknowledged data");
}

#[test]
fn accept_journal_loss_starts_and_the_lost_ids_are_failed() {
    let (cluster, ids) = acknowledged_then_killed();
    let data = cluster.dir.join("data");
    let wal_len = std::fs::metadata(data.join(WAL)).expect("the WAL").len();
    File::options()
        .write(true)
        .open(data.join(WAL))
        .expect("wal")
        .write_all_at(&[0x5a; 64], wal_len / 2)
        .expect("damage");
    let dir = cluster.dir.join("accept");
    std::fs::create_dir_all(&dir).expect("dir");
    let Start::Refused(out) = start_lone(&dir, &data, &[]) else {
        panic!("a journal damaged at its middle must be refused");
    };
    assert!(!out.status.success());
    let Start::Serving(master, addr) = start_lone(&dir, &data, &["--accept-journal-loss"]) else {
        panic!("--accept-journal-loss must start");
    };
    let found = results(&addr);
    assert_eq!(
        found.keys().copied().collect::<Vec<u64>>(),
        ids,
        "every acknowledged id is still known"
    );
    let lost: Vec<u64> = found
        .iter()
        .filter(|(_, r)| r["state"] == "failed")
        .map(|(&id, r)| {
            let error = r["error"].as_str().unwrap_or_default();
            assert!(error.contains("lost"), "task {id}: {r}");
            id
        })
        .collect();
    assert!(!lost.is_empty(), "the damage lost some tasks");
    assert_eq!(*lost.last().expect("some"), 90, "the tail was lost");
    let log = master.log();
    let first = lost[0];
    assert!(
        log.contains("LOST") && log.contains(&format!("tasks {first} to 90")),
        "the log names the lost ids: {log}"
    );
    // New submissions get new ids.
    let out = Command::new(MASTER)
        .args(["submit", "--json", "--master", &addr, "--sleep", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("submit");
    let v: Value = serde_json::from_slice(&out.stdout).expect("submit JSON");
    assert_eq!(v["ids"][0], 91);
    drop(master);
    // Whole again: a plain restart needs no flag.
    let Start::Serving(_, _) = start_lone(&dir, &data, &[]) else {
        panic!("after the accepted loss the journal is whole again");
    };
}

// ---- disk errors: a tmpfs of our own, in a mount namespace ------------------------------------

/// Runs the master with its data dir on a fresh tmpfs of `size` (mounted in a new mount
/// namespace by `unshare`, so nothing outside the test sees it), remounted read-only if `ro`.
/// `None` when this machine does not let us mount one (no user namespaces, no `unshare`).
fn master_on_tmpfs(dir: &Path, size: &str, ro: bool) -> Option<Start> {
    let probe = Command::new("unshare")
        .args([
            "-Urm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs \"$1\"",
            "sh",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return None;
    }
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("mount point");
    let port_file = dir.join("addr");
    let log_path = dir.join("master.log");
    let log = File::create(&log_path).expect("log");
    let remount = if ro {
        "mount -o remount,ro \"$1\" &&"
    } else {
        ""
    };
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs \"$1\" && {remount} exec \"$2\" --listen 127.0.0.1:0 \
         --http off --port-file \"$3\" --data-dir \"$1\""
    );
    // unshare and sh exec: the child's pid is the master's, so killing it kills the master.
    let mut child = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script, "sh"])
        .arg(&data)
        .arg(MASTER)
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare runs");
    let outcome = eventually(
        Duration::from_secs(20),
        "the master to listen or exit",
        || {
            if let Ok(addr) = std::fs::read_to_string(&port_file) {
                return Some(Ok(addr));
            }
            child.try_wait().expect("try_wait").map(Err)
        },
    );
    Some(match outcome {
        Ok(addr) => Start::Serving(
            Lone {
                child,
                dir: dir.to_path_buf(),
            },
            addr,
        ),
        Err(status) => Start::Refused(Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&log_path).unwrap_or_default(),
        }),
    })
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn a_read_only_data_dir_is_refused_as_read_only() {
    let dir = test_dir("ro");
    let Some(start) = master_on_tmpfs(&dir, "1m", true) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (unshare -Urm failed)");
        return;
    };
    let Start::Refused(out) = start else {
        panic!("a master on a read-only data dir must not start");
    };
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("read-only"), "{log}");
    assert!(!log.contains("Error code"), "SQLite's bare code: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_is_reported_to_the_client_and_stops_the_master() {
    let dir = test_dir("full");
    let Some(start) = master_on_tmpfs(&dir, "256k", false) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (unshare -Urm failed)");
        return;
    };
    let Start::Serving(mut master, addr) = start else {
        panic!("the master must start on an empty tmpfs");
    };
    // 60 KB of argument per task: a few of them fill 256 KiB.
    let big = "x".repeat(60_000);
    let mut refusal = None;
    for _ in 0..40 {
        let out = Command::new(MASTER)
            .args(["submit", "--master", &addr, "--", "echo", &big])
            .stdin(Stdio::null())
            .output()
            .expect("submit runs");
        if !out.status.success() {
            refusal = Some(out);
            break;
        }
    }
    let out = refusal.expect("the disk never filled");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no space left"), "client saw: {stderr}");
    assert!(
        !stderr.contains("closed the connection"),
        "client saw: {stderr}"
    );
    let status = eventually(Duration::from_secs(10), "the master to stop", || {
        master.child.try_wait().expect("try_wait")
    });
    assert!(!status.success());
    assert!(master.log().contains("no space left"), "{}", master.log());
    drop(master);
    let _ = std::fs::remove_dir_all(&dir);
}
