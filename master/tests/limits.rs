//! Issue 14 on the real binaries: oversized input through the ordinary CLI and raw frames never
//! stops, starves or fools the master.

mod common;

use common::{eventually, Cluster};
use protocol::{Connection, FromMaster, Role, TaskKind, TaskSpec, ToMaster};
use std::time::Duration;

fn client(c: &Cluster) -> Connection {
    Connection::connect(&c.addr, Role::Client, None, None, Duration::from_secs(5))
        .expect("connects")
        .0
}

#[test]
fn a_bad_env_key_is_refused_by_the_cli_and_by_the_master() {
    let c = Cluster::start(&[]);
    let file = c.dir.join("tasks.jsonl");
    std::fs::write(&file, "{\"cmd\":[\"true\"],\"env\":{\"A=B\":\"x\"}}\n").expect("write");
    let out = c.cli(&["submit", "--file", file.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("\"A=B\""), "names the key: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A raw Submit that skips the CLI's check is refused by the master, which serves on.
    let mut conn = client(&c);
    let spec = TaskSpec::new(TaskKind::Command {
        argv: vec!["true".into()],
        env: vec![("A=B".into(), "x".into())],
        cwd: None,
    });
    match conn.request(&ToMaster::Submit {
        specs: vec![spec],
        count: 1,
        name: None,
    }) {
        Ok(FromMaster::Error { message }) => assert!(message.contains("\"A=B\""), "{message}"),
        other => panic!("expected an Error, got {other:?}"),
    }
    assert!(c.results().is_empty(), "nothing was accepted");
}

/// Issue 14's first acceptance line: 150 tasks whose program name is 120,000 characters fail
/// (the spawn error echoes the name), and `results --json` answers for all of them, before and
/// after a restart.
#[test]
fn results_answer_for_tasks_whose_error_echoes_a_huge_program_name() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w", 4);
    c.wait_for_workers(1);
    let program = format!("/nonexistent/{}", "p".repeat(120_000 - 13));
    let ids = c.submit(&["--count", "150", "--", &program]);
    assert_eq!(ids.len(), 150);
    let check = |c: &Cluster| {
        let out = c.cli_within(Duration::from_secs(30), &["results", "--json"], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array().cloned().expect("array")
    };
    eventually(Duration::from_secs(60), "150 failures", || {
        let r = check(&c);
        (r.len() == 150 && r.iter().all(|t| t["state"] == "failed")).then_some(())
    });
    for t in check(&c) {
        let error = t["error"].as_str().expect("an error");
        assert!(
            error.len() <= protocol::limits::MAX_ERROR_BYTES,
            "{}",
            error.len()
        );
        assert!(
            error.contains("/nonexistent/ppp"),
            "echoes the name, cut: {error:.100}"
        );
    }
    c.restart_master(&[]);
    let r = check(&c);
    assert_eq!(r.len(), 150);
    assert!(r.iter().all(|t| t["state"] == "failed"));
}

/// `master --max-tasks N`: a submission that would pass it is refused with exit 1 and a clear
/// message; the master keeps serving (the acceptance uses 1,000,000 and 600,000).
#[test]
fn a_submission_past_max_tasks_exits_1_and_the_master_serves_on() {
    let c = Cluster::start(&["--max-tasks", "1000"]);
    let ids = c.submit(&["--count", "600", "--sleep", "1s"]);
    assert_eq!(ids.len(), 600);
    let out = c.cli(&["submit", "--count", "600", "--sleep", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--max-tasks) is 1000"), "{err}");
    assert_eq!(c.status()["queued"], 600, "the master serves on");
    assert_eq!(c.submit(&["--count", "400", "--sleep", "1s"]).len(), 400);
    let out = c.cli(&["submit", "--count", "1", "--sleep", "1s"]);
    assert_eq!(out.status.code(), Some(1));
}

/// The master's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Issue 14: 400 pipelined `Results` (2.4 KB) from a client that never reads raised the master's
/// memory by 1.6 GB and stalled its loop. Now the client is not read while its reply waits, and a
/// reply is made one chunk at a time: the memory stays flat, other clients are served, and the
/// replies still come whole and in order once the client reads.
#[test]
fn pipelined_results_from_a_client_that_never_reads_cost_one_chunk() {
    let c = Cluster::start(&["--no-journal"]);
    let ids = c.submit(&["--count", "20000", "--sleep", "1s"]);
    assert_eq!(ids.len(), 20_000);
    let pid = c.master_pid();
    let before = rss_kib(pid);
    let mut greedy = client(&c);
    for _ in 0..400 {
        greedy
            .writer
            .queue(&ToMaster::Results {
                ids: vec![],
                jobs: vec![],
            })
            .expect("queues");
    }
    greedy.writer.flush().expect("sends");
    // Each reply is about 1.3 MB: all 400 built at once would be over 500 MB.
    let mut peak = before;
    for _ in 0..10 {
        let out = c.cli_within(Duration::from_secs(30), &["status", "--json"], &[]);
        assert!(out.status.success(), "others are served meanwhile");
        peak = peak.max(rss_kib(pid));
    }
    eprintln!("master RSS {before} KiB before, {peak} KiB at most with 400 unread Results");
    assert!(
        peak < before + 100 * 1024,
        "{before} KiB before, {peak} KiB with 400 unread Results"
    );
    // Read three replies back: whole, in order.
    for _ in 0..3 {
        let mut seen = 0;
        loop {
            match greedy.recv().expect("a chunk") {
                FromMaster::Results { tasks, more } => {
                    seen += tasks.len();
                    if !more {
                        break;
                    }
                }
                other => panic!("expected Results, got {}", other.name()),
            }
        }
        assert_eq!(seen, 20_000);
    }
}

/// `--reply-timeout`: a master that stops answering is an error naming what the client waited
/// for (exit 2), while `wait` outlives tasks longer than the timeout by probing.
#[test]
fn the_reply_timeout_says_what_it_waited_for_and_wait_outlives_it() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w", 1);
    c.wait_for_workers(1);
    c.submit(&["--sleep", "3s"]);
    let out = c.cli_within(
        Duration::from_secs(30),
        &["wait", "--reply-timeout", "1s"],
        &[],
    );
    assert!(
        out.status.success(),
        "a 3 s task outlives a 1 s reply timeout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Now a master that stops mid-wait.
    c.submit(&["--sleep", "30s"]);
    let child = std::process::Command::new(common::MASTER)
        .args(["wait", "--master", &c.addr, "--reply-timeout", "1s"])
        .env("BALLAST_REPLY_TIMEOUT", "1h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wait runs");
    // Once the master has seen the client, stop it.
    let clients = |c: &Cluster| c.master_log().matches("client connected").count();
    let seen = clients(&c);
    eventually(Duration::from_secs(10), "the waiting client", || {
        (clients(&c) > seen).then_some(())
    });
    c.signal_master(libc::SIGSTOP);
    let out = child.wait_with_output().expect("wait ends");
    c.signal_master(libc::SIGCONT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no reply from the master within 1s") && err.contains("status probe"),
        "{err}"
    );
}
