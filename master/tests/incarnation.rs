//! Issue 9, item 1, from outside: a master that dies between sending an `Assign` and committing
//! the submission it belongs to. The submission is rightly forgotten, but its worker still runs
//! it; after the restart the next submission gets the same id. The old run must never be taken
//! for the new task.
//!
//! The window is the journal's commit, a fraction of a millisecond here: strace, attached to the
//! running master, holds every `pwrite64` (SQLite's writes to its WAL; sockets use `sendto`) for
//! seconds at syscall entry, so the master can be SIGKILLed before the commit reaches the file. A
//! SIGKILL during the hold takes effect when it ends, and the kernel then skips the write. (A
//! delayed fsync would not do: a write that has reached the page cache survives the process.)
//! Without strace the test says so and passes only outside CI.

mod common;

use common::{eventually, Cluster};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pids of live `sh` processes whose command line contains `marker` (not the `master submit`
/// that carries the same words).
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.starts_with(b"sh\0") && String::from_utf8_lossy(&c).contains(marker)
            })
        })
        .filter(|pid| {
            // A zombie is dead, only not yet reaped.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

fn traced(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|t| t.trim() != "0")
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // Only pids of children this test started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_task_lost_with_a_crash_is_never_credited_to_the_next_task_with_its_id() {
    if !strace_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is needed for this test; .ci/run installs it"
        );
        eprintln!("skipped: no strace on this machine");
        return;
    }
    // Unique to this run: other test runs on the machine may be doing the same.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let old_marker = format!("OLD-TASK-OUTPUT-{}-{nanos}", std::process::id());
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.wait_for_workers(1);
    let master_pid = c.master_pid();
    // Every journal write of the master now waits 5 s first: the submission below is sent to the
    // worker at once and never committed.
    let mut strace = Reap(
        Command::new("strace")
            .args(["-qq", "-f", "-o", "/dev/null", "-e", "trace=pwrite64"])
            .args(["-e", "inject=pwrite64:delay_enter=5000000"])
            .args(["-p", &master_pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace starts"),
    );
    eventually(Duration::from_secs(10), "strace to attach", || {
        if let Ok(Some(status)) = strace.0.try_wait() {
            panic!(
                "strace could not attach to the master ({status}): ptrace is not permitted here \
                 (kernel.yama.ptrace_scope, or a container without CAP_SYS_PTRACE)"
            );
        }
        traced(master_pid).then_some(())
    });
    // Its reply waits for the commit that never comes; it dies with the master.
    let script = format!("sleep 20; echo {old_marker}");
    let submit = Reap(
        Command::new(common::MASTER)
            .args(["submit", "--master", &c.addr, "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("submit runs"),
    );
    eventually(
        Duration::from_secs(10),
        "the worker to start the task",
        || (!processes_with(&old_marker).is_empty()).then_some(()),
    );
    let worker_pid = c.worker_pid("w1");
    // The worker must not reconnect before the new task exists: then its claim on the old run
    // meets an id that names something else.
    signal(worker_pid, libc::SIGSTOP);
    c.kill_master();
    drop(strace);
    drop(submit);
    c.restart_master(&[]);
    let ids = c.submit(&["--", "sh", "-c", "echo NEW"]);
    assert_eq!(ids, [1], "the lost submission's id is handed out again");
    signal(worker_pid, libc::SIGCONT);
    let result = eventually(Duration::from_secs(30), "the new task to finish", || {
        let r = c.json(&["results", "1"]);
        let r = r.as_array()?.first()?.clone();
        (r["state"] != "queued" && r["state"] != "running").then_some(r)
    });
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["stdout"], "NEW\n", "{result}");
    // The orphan was stopped, not left to run for nobody.
    eventually(Duration::from_secs(10), "the old run to be killed", || {
        processes_with(&old_marker).is_empty().then_some(())
    });
    let log = c.master_log();
    assert!(
        log.contains("handed out by an earlier incarnation"),
        "the master says why it cancels the old run:\n{log}\n--- worker:\n{}",
        std::fs::read_to_string(c.dir.join("w1.log")).unwrap_or_default()
    );
}
