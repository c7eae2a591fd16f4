//! Issue 14: a task's descendants that left its process group (`setsid`) still die with its
//! timeout and its cancel. The real binaries on loopback, driven through the CLI.

#![cfg(target_os = "linux")]

mod common;

use common::{eventually, Cluster};
use std::time::Duration;

/// Generous for a loaded 2-core machine: the stray would live 30 s.
const PATIENCE: Duration = Duration::from_secs(10);

const ESCAPING: &str = "setsid sleep 30 & wait";

/// Live `sleep 30` processes started by worker `name` (its mark, `BALLAST_WORKER_LIFE=
/// pid:ticks:name`, is in their environment), whatever their process group.
fn strays_of(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let suffix = format!(":{name}");
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline != b"sleep\x0030\x00" {
                return false;
            }
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                .unwrap_or(true);
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            !zombie
                && environ.split(|&b| b == 0).any(|entry| {
                    entry.starts_with(b"BALLAST_WORKER_LIFE=") && entry.ends_with(suffix.as_bytes())
                })
        })
        .collect()
}

fn state_of(cluster: &Cluster, id: u64) -> String {
    let results = cluster.results();
    let r = results
        .iter()
        .find(|r| r["id"] == id)
        .expect("the task is listed");
    r["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_setsid_child_dies_with_the_timeout() {
    let mut cluster = Cluster::start(&[]);
    let name = format!("tree-timeout-{}", std::process::id());
    cluster.add_worker(&name, 2);
    cluster.wait_for_workers(1);
    let ids = cluster.submit(&["--timeout", "1s", "--", "sh", "-c", ESCAPING]);
    eventually(PATIENCE, "the setsid child to run", || {
        (!strays_of(&name).is_empty()).then_some(())
    });
    eventually(PATIENCE, "the setsid child to die with the timeout", || {
        strays_of(&name).is_empty().then_some(())
    });
    eventually(PATIENCE, "the task to time out", || {
        (state_of(&cluster, ids[0]) == "timed_out").then_some(())
    });
}

#[test]
fn a_setsid_child_dies_with_the_cancel() {
    let mut cluster = Cluster::start(&[]);
    let name = format!("tree-cancel-{}", std::process::id());
    cluster.add_worker(&name, 2);
    cluster.wait_for_workers(1);
    let ids = cluster.submit(&["--", "sh", "-c", ESCAPING]);
    eventually(PATIENCE, "the setsid child to run", || {
        (!strays_of(&name).is_empty()).then_some(())
    });
    let out = cluster.cli(&["cancel", &ids[0].to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(PATIENCE, "the setsid child to die with the cancel", || {
        strays_of(&name).is_empty().then_some(())
    });
    eventually(PATIENCE, "the task to be cancelled", || {
        (state_of(&cluster, ids[0]) == "cancelled").then_some(())
    });
}
