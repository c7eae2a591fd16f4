//! End-to-end: the real `master` and `worker` binaries on loopback, driven through the CLI.

mod common;

use common::{eventually, Cluster};
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn epoch_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("a clock after 1970").as_millis() as u64
}

fn by_state<'a>(results: &'a [Value], state: &str) -> Vec<&'a Value> {
    results.iter().filter(|r| r["state"] == state).collect()
}

#[test]
fn batch_is_spread_over_two_workers() {
    let started_ms = epoch_ms();
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 2);
    c.add_worker("b", 2);
    c.wait_for_workers(2);
    let ids = c.submit(&["--count", "200", "--", "sh", "-c", "echo hello-$((6*7))"]);
    assert_eq!(ids.len(), 200);
    let out = c.cli(&["wait"]);
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = c.results();
    assert_eq!(results.len(), 200);
    for r in &results {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["copies"], 1, "an ordinary task runs one copy: {r}");
        assert_eq!(r["kind"], "command", "{r}");
        assert_eq!(
            r["cmd"],
            serde_json::json!(["sh", "-c", "echo hello-$((6*7))"]),
            "{r}"
        );
        assert!(r["group"].is_null(), "{r}");
        assert!(
            r["stdout"].as_str().unwrap_or("").contains("hello-42"),
            "{r}"
        );
    }
    for name in ["a", "b"] {
        let n = results.iter().filter(|r| r["worker"] == name).count();
        assert!(n >= 40, "worker {name} ran only {n} of 200");
    }
    let status = c.status();
    assert_eq!(status["succeeded"], 200);
    let workers = status["workers"].as_array().expect("workers");
    assert!(workers.iter().all(|w| w["prefetch"].is_u64()), "{status}");
    let asked_ms = epoch_ms();
    for w in workers {
        let seen = w["last_seen_ms"].as_u64().expect("heard from");
        assert!(
            (started_ms..=asked_ms).contains(&seen),
            "{seen} not within {started_ms}..={asked_ms}: {w}"
        );
    }
    assert_eq!(status["queued"], 0);
}

#[test]
fn failing_command_fails_the_wait() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 1);
    c.wait_for_workers(1);
    let ids = c.submit(&["--", "sh", "-c", "echo oops >&2; exit 7"]);
    // By id: the task may have failed before the wait starts, and a named task counts anyway.
    let out = c.cli(&["wait", &ids[0].to_string()]);
    assert!(!out.status.success(), "wait must fail when a task failed");
    let r = c.json(&["results", &ids[0].to_string()]);
    assert_eq!(r[0]["state"], "failed");
    assert_eq!(r[0]["exit_code"], 7);
    assert!(r[0]["stderr"].as_str().unwrap_or("").contains("oops"));
    assert_eq!(r[0]["attempts"], 1, "a non-zero exit is not retried");
}

#[test]
fn wait_without_ids_counts_only_what_was_unfinished_when_it_began() {
    // Issue 11: the summary counted the whole history, so one old failure made every later
    // `master wait` exit 1 ("304 tasks: 299 succeeded, 5 failed" for a batch of 40 successes).
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    let failing = c.submit(&["--count", "3", "--", "false"]);
    let named: Vec<String> = failing.iter().map(u64::to_string).collect();
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    let first = c.cli(&[&["wait"][..], &named].concat());
    assert!(!first.status.success(), "the first batch failed");
    // Long enough that none is final before the wait begins.
    c.submit(&["--count", "4", "--sleep", "1s"]);
    let out = c.cli(&["wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("4 tasks: 4 succeeded, 0 failed"), "{text}");
}

#[test]
fn garbage_on_the_port_leaves_the_master_serving() {
    let mut c = Cluster::start(&[]);
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&c.addr).expect("connect");
        let _ = s.write_all(bytes);
        // Dropping closes; the master must shrug it off.
    };
    send(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03]);
    send(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n");
    send(&[0, 0, 0, 50, 1, 2, 3]); // a frame promising 50 bytes, then hanging up
    send(&[0, 0, 0, 3, 0xff, 0xff, 0xff]); // a whole frame that is not a message
                                           // A truncated frame on a connection that stays open must not block anyone else.
    let mut open = TcpStream::connect(&c.addr).expect("connect");
    open.write_all(&[0, 0, 1, 0, 9]).expect("write");
    let status = c.status();
    assert!(status["workers"].as_array().is_some());
    c.add_worker("a", 1);
    c.wait_for_workers(1);
    c.submit(&["--sleep", "10ms"]);
    assert!(c.cli(&["wait"]).status.success());
    assert!(c.master_alive());
    drop(open);
}

#[test]
fn killed_worker_tasks_are_rerun_elsewhere() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 4);
    c.add_worker("b", 4);
    c.wait_for_workers(2);
    c.submit(&["--count", "8", "--sleep", "1500ms"]);
    // Kill only once both workers are running their share.
    eventually(Duration::from_secs(10), "eight tasks running", || {
        let s = c.status();
        (s["running"] == 8).then_some(())
    });
    c.kill_worker("a");
    let out = c.cli(&["wait"]);
    assert!(
        out.status.success(),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = c.results();
    assert_eq!(by_state(&results, "succeeded").len(), 8);
    assert!(results.iter().all(|r| r["worker"] == "b"));
    let retried = results
        .iter()
        .filter(|r| r["attempts"].as_u64() >= Some(2))
        .count();
    assert_eq!(retried, 4, "a's four tasks ran again");
    let status = c.status();
    let a = status["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "a"))
        .cloned()
        .expect("a is still listed");
    assert_eq!(a["state"], "dead");
    assert!(c.master_log().contains("re-queued"));
}

#[test]
fn higher_priority_starts_first() {
    let mut c = Cluster::start(&[]);
    c.add_worker("solo", 2);
    c.wait_for_workers(1);
    c.submit(&["--count", "2", "--sleep", "700ms"]);
    eventually(Duration::from_secs(10), "both slots busy", || {
        (c.status()["running"] == 2).then_some(())
    });
    let low = c.submit(&["--count", "10", "--priority", "0", "--sleep", "20ms"]);
    let high = c.submit(&["--count", "5", "--priority", "9", "--sleep", "20ms"]);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    let started = |ids: &[u64]| -> Vec<u64> {
        ids.iter()
            .map(|id| {
                results
                    .iter()
                    .find(|r| r["id"] == *id)
                    .and_then(|r| r["started_ms"].as_u64())
                    .expect("started")
            })
            .collect()
    };
    let last_high = started(&high).into_iter().max().expect("some");
    let first_low = started(&low).into_iter().min().expect("some");
    assert!(
        last_high <= first_low,
        "a priority-9 task started at {last_high}, after a priority-0 one at {first_low}"
    );
}

#[test]
fn unreachable_master_is_one_line_and_exit_2() {
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = std::process::Command::new(common::MASTER)
        .args(["status", "--master", &format!("127.0.0.1:{port}")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn token_keeps_strangers_out() {
    let mut c = Cluster::start(&["--token", "s3cret"]);
    c.add_worker("stranger", 1);
    let out = c.cli(&["status"]);
    assert!(
        !out.status.success(),
        "a client without the token is refused"
    );
    let ok = std::process::Command::new(common::MASTER)
        .args(["status", "--json", "--master", &c.addr])
        .env("BALLAST_TOKEN", "s3cret")
        .output()
        .expect("runs");
    assert!(ok.status.success());
    let v: Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["workers"].as_array().map(|w| w.len()), Some(0), "{v}");
    eventually(Duration::from_secs(10), "the refusal in the log", || {
        c.master_log()
            .contains("authentication failed")
            .then_some(())
    });
}

#[test]
fn group_tasks_run_only_on_that_groups_workers() {
    let mut c = Cluster::start(&[]);
    c.add_worker_with("a1", 2, &["--group", "a"]);
    c.add_worker_with("a2", 2, &["--group", "a"]);
    c.add_worker_with("b1", 2, &["--group", "b"]);
    c.wait_for_workers(3);
    c.submit(&["--count", "30", "--group", "b", "--sleep", "10ms"]);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    assert_eq!(by_state(&results, "succeeded").len(), 30);
    assert!(
        results.iter().all(|r| r["worker"] == "b1"),
        "a group-b task ran elsewhere"
    );
    let status = c.status();
    let groups: Vec<&str> = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["group"].as_str())
        .collect();
    assert_eq!(groups.iter().filter(|g| **g == "a").count(), 2);
}

#[test]
fn replicas_run_on_distinct_workers_and_one_outcome_counts_them() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.add_worker("w2", 1);
    c.wait_for_workers(2);
    c.submit(&["--replicas", "2", "--", "sh", "-c", "sleep 0.2"]);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    assert_eq!(results.len(), 1, "one task, one outcome");
    assert_eq!(results[0]["state"], "succeeded");
    assert_eq!(results[0]["copies"], 2);
    let log = c.master_log();
    assert!(
        log.contains("-> w1") && log.contains("-> w2"),
        "a copy on each worker"
    );
    // The losing copy is cancelled: both slots come free.
    eventually(Duration::from_secs(10), "both workers idle", || {
        let status = c.status();
        let workers = status["workers"].as_array()?.clone();
        workers.iter().all(|w| w["running"] == 0).then_some(())
    });
}

#[test]
fn a_straggler_gets_a_speculative_copy_and_one_outcome() {
    let mut c = Cluster::start(&["--speculate", "3"]);
    c.add_worker("w1", 1);
    c.add_worker("w2", 1);
    c.wait_for_workers(2);
    // Three quick tasks teach the estimate (about 50 ms per unit of size) ...
    c.submit(&["--count", "3", "--size", "1", "--sleep", "50ms"]);
    assert!(c.cli(&["wait"]).status.success());
    // ... then one of the same size runs 20 times longer.
    let ids = c.submit(&["--size", "1", "--sleep", "1s"]);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    let slow = results
        .iter()
        .find(|r| r["id"] == ids[0])
        .expect("the slow task");
    assert_eq!(slow["state"], "succeeded");
    assert_eq!(slow["copies"], 2);
    assert!(c.master_log().contains("starting a speculative copy"));
}

/// Waits until nothing is queued: every task is on a worker, running or prefetched.
fn wait_until_all_assigned(c: &Cluster) {
    eventually(Duration::from_secs(10), "every task assigned", || {
        (c.status()["queued"].as_u64() == Some(0)).then_some(())
    });
}

/// How the prefetch tests' tasks run: synthetic sleeps wait in the worker's pending queue;
/// commands also wait on standby in its IO thread, which starts one when a command completes.
fn naps(kind: &str, ms: u64) -> Vec<String> {
    match kind {
        "sleep" => vec!["--sleep".into(), format!("{ms}ms")],
        _ => vec![
            "--".into(),
            "sleep".into(),
            format!("{}.{:03}", ms / 1000, ms % 1000),
        ],
    }
}

fn submit_naps(c: &Cluster, args: &[&str], kind: &str, ms: u64) -> Vec<u64> {
    let naps = naps(kind, ms);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(naps.iter().map(String::as_str));
    c.submit(&all)
}

fn an_idle_worker_gets_unstarted_tasks_retracted(kind: &str) {
    let mut c = Cluster::start(&[]);
    c.add_worker_with("w1", 1, &["--prefetch", "4"]);
    c.wait_for_workers(1);
    let ids = submit_naps(&c, &["--count", "5"], kind, 800);
    // One slot and four prefetched: all five are on w1 before w2 exists.
    wait_until_all_assigned(&c);
    c.add_worker("w2", 2);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    assert_eq!(by_state(&results, "succeeded").len(), ids.len());
    let on_w2 = results.iter().filter(|r| r["worker"] == "w2").count();
    assert!(on_w2 >= 1, "no task moved to the idle worker");
    assert!(
        results.iter().all(|r| r["attempts"] == 1),
        "a returned task keeps its attempt: it never ran"
    );
    let log = c.master_log();
    assert!(log.contains("rebalancing: w2 idle"), "{log}");
    assert!(log.contains("rebalanced: w1 returned"), "{log}");
}

#[test]
fn an_idle_worker_gets_unstarted_tasks_retracted_from_a_prefetching_one() {
    an_idle_worker_gets_unstarted_tasks_retracted("sleep");
}

#[test]
fn an_idle_worker_gets_unstarted_commands_retracted_from_a_prefetching_one() {
    an_idle_worker_gets_unstarted_tasks_retracted("command");
}

fn a_prefetched_task_never_starts_before_a_higher_priority(kind: &str) {
    let mut c = Cluster::start(&[]);
    c.add_worker_with("w1", 1, &["--prefetch", "2"]);
    c.wait_for_workers(1);
    // The first low task holds the slot long enough for the rest to be submitted behind it.
    let mut low = submit_naps(&c, &[], kind, 1500);
    low.extend(submit_naps(&c, &["--count", "2"], kind, 100));
    wait_until_all_assigned(&c);
    let high = submit_naps(&c, &["--priority", "5"], kind, 10);
    assert!(c.cli(&["wait"]).status.success());
    let results = c.results();
    let started = |id: u64| -> u64 {
        results
            .iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["started_ms"].as_u64())
            .expect("started")
    };
    // low[0] was running when the high task came; the prefetched low ones start after it.
    assert!(started(high[0]) <= started(low[1]), "{results:?}");
    assert!(started(high[0]) <= started(low[2]), "{results:?}");
    assert!(c.master_log().contains("displaces prefetched task"));
}

#[test]
fn a_prefetched_task_never_starts_before_a_higher_priority_one() {
    a_prefetched_task_never_starts_before_a_higher_priority("sleep");
}

/// A command on standby in the worker's IO thread goes back behind the higher-priority one.
#[test]
fn a_prefetched_command_never_starts_before_a_higher_priority_one() {
    a_prefetched_task_never_starts_before_a_higher_priority("command");
}

/// Fan-in (issue 13): a crowd of worker connections, the load generator's simulated workers,
/// all pass the handshake and all get work. `scripts/bench.sh` W5 runs the full 10,000.
#[test]
fn two_hundred_worker_connections_handshake_and_all_get_work() {
    const WORKERS: usize = 200;
    const TASKS: usize = 4_000;
    let c = Cluster::start(&["--max-connections", "300"]);
    let mut load = std::process::Command::new(env!("CARGO_BIN_EXE_ballast-load"))
        .args([
            "workers",
            "--master",
            &c.addr,
            "--count",
            &WORKERS.to_string(),
        ])
        .args(["--threads", "2", "--slots", "2", "--duration", "2m"])
        .args(["--master-pid", &c.master_pid().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ballast-load starts");
    c.wait_for_workers(WORKERS);
    let out = c.cli(&[
        "submit",
        "--count",
        &TASKS.to_string(),
        "--sleep",
        "0ms",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "submit --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = c.results();
    assert_eq!(by_state(&results, "succeeded").len(), TASKS);
    let mut ran_some: Vec<&str> = results
        .iter()
        .filter_map(|r| r["worker"].as_str())
        .collect();
    ran_some.sort_unstable();
    ran_some.dedup();
    assert_eq!(ran_some.len(), WORKERS, "every connection got work");
    // SAFETY: kill only signals the child we started (not reaped yet, so its pid is its own).
    let rc = unsafe { libc::kill(load.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut report = String::new();
    use std::io::Read;
    load.stdout
        .take()
        .expect("piped")
        .read_to_string(&mut report)
        .expect("the report");
    let _ = load.wait();
    let report: Value = serde_json::from_str(report.trim()).expect("one JSON report");
    assert_eq!(report["connected"], WORKERS, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["tasks"], TASKS, "{report}");
    assert!(report["master"]["rss_kb_ready"].is_u64(), "{report}");
}
