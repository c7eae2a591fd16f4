//! Full task logs (issue 11), from outside: the real binaries on loopback, `master logs`.

mod common;

use common::{eventually, Cluster, MASTER};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// `master logs ARGS...`, which must succeed; its stdout.
fn logs(c: &Cluster, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = c.cli(&all);
    assert!(
        out.status.success(),
        "master logs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn state(c: &Cluster, id: u64) -> String {
    let v = c.json(&["results", &id.to_string()]);
    v[0]["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_long_output_is_kept_whole_after_its_worker_is_killed_and_the_master_restarted() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    let ids = c.submit(&["--wait", "--", "seq", "1", "300000"]);
    let want = seq(300_000);
    assert!(want.len() > 1_900_000);
    let id = ids[0].to_string();
    assert!(logs(&c, &[&id]) == want, "the whole output, byte for byte");
    // The tail in the result is still the tail.
    let r = c.json(&["results", &id]);
    assert_eq!(r[0]["stdout"].as_str().map(str::len), Some(64 << 10));
    c.kill_worker("w1");
    c.restart_master(&[]);
    assert!(
        logs(&c, &[&id]) == want,
        "the same after the worker's death and a restart"
    );
}

#[test]
fn follow_shows_lines_while_the_task_runs_and_returns_when_it_ends() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    let ids = c.submit(&[
        "--",
        "sh",
        "-c",
        "for i in $(seq 20); do echo line $i; sleep 0.1; done",
    ]);
    let id = ids[0].to_string();
    let mut follow = Command::new(MASTER)
        .args(["logs", "--master", &c.addr, &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("logs --follow starts");
    let mut out = BufReader::new(follow.stdout.take().expect("piped"));
    let mut first = String::new();
    out.read_line(&mut first).expect("a first line");
    assert_eq!(first, "line 1\n");
    assert_eq!(state(&c, ids[0]), "running", "a line came before the end");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest");
    let status = follow.wait().expect("logs --follow ends");
    assert!(status.success());
    let lines: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
    assert_eq!(format!("{first}{rest}"), lines.join("\n") + "\n");
    assert_eq!(
        state(&c, ids[0]),
        "succeeded",
        "it returned when the task ended"
    );
}

#[test]
fn stderr_is_read_with_the_flag_and_an_unknown_task_is_an_error() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    let ids = c.submit(&["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let id = ids[0].to_string();
    assert_eq!(c.cli(&["wait", &id]).status.code(), Some(1), "it failed");
    assert_eq!(logs(&c, &[&id]), b"out\n");
    assert_eq!(logs(&c, &[&id, "--stderr"]), b"err\n");
    let out = c.cli(&["logs", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown task id 999"));
}

#[test]
fn past_the_log_limit_the_log_ends_with_one_line_of_what_was_dropped() {
    let mut c = Cluster::start(&["--log-limit", "1000"]);
    c.add_worker("w1", 1);
    let ids = c.submit(&["--wait", "--", "seq", "1", "10000"]);
    let got = logs(&c, &[&ids[0].to_string()]);
    let want = seq(10_000);
    assert_eq!(&got[..1000], &want[..1000]);
    let rest = String::from_utf8_lossy(&got[1000..]).into_owned();
    assert_eq!(rest.trim_start_matches('\n').lines().count(), 1, "{rest:?}");
    assert!(
        rest.contains(&format!("{} more bytes were dropped", want.len() - 1000)),
        "{rest:?}"
    );
}

#[test]
fn the_budget_removes_the_oldest_finished_logs_and_says_so() {
    let mut c = Cluster::start(&["--log-budget", "300K"]);
    c.add_worker("w1", 1);
    let first = c.submit(&["--wait", "--", "seq", "1", "30000"])[0];
    let second = c.submit(&["--wait", "--", "seq", "1", "30000"])[0];
    eventually(Duration::from_secs(10), "the removal's log line", || {
        c.master_log()
            .contains(&format!("removed the log of task {first}"))
            .then_some(())
    });
    // The first is down to its tail, and a read says so; the second is whole.
    let out = c.cli(&["logs", &first.to_string()]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 64 << 10);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-budget"));
    assert!(logs(&c, &[&second.to_string()]) == seq(30_000));
}

#[test]
fn without_a_journal_logs_are_kept_in_memory() {
    let mut c = Cluster::start(&["--no-journal"]);
    c.add_worker("w1", 2);
    let ids = c.submit(&["--wait", "--", "seq", "1", "300000"]);
    assert!(logs(&c, &[&ids[0].to_string()]) == seq(300_000));
    assert!(!c.dir.join("data").join("logs").exists());
}

/// One `GET` with `Connection: close`; the status line and headers, and the body.
fn http_get(addr: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("the answer");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    (head, all[split + 4..].to_vec())
}

#[test]
fn the_http_api_serves_a_log_in_pieces() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    let ids = c.submit(&["--wait", "--", "sh", "-c", "seq 1 300000; echo bad >&2"]);
    let want = seq(300_000);
    let mut got = Vec::new();
    loop {
        let path = format!("/api/v1/tasks/{}/log?offset={}", ids[0], got.len());
        let (head, body) = http_get(&c.http_addr, &path);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        got.extend_from_slice(&body);
        if head.contains("X-Log-Done: true") {
            break;
        }
        assert!(
            !body.is_empty(),
            "a final task's log ends with done: {head}"
        );
    }
    assert!(got == want, "the whole stdout, in pieces of at most 1 MiB");
    let path = format!("/api/v1/tasks/{}/log?stream=stderr", ids[0]);
    assert_eq!(http_get(&c.http_addr, &path).1, b"bad\n");
    let (head, _) = http_get(&c.http_addr, "/api/v1/tasks/999/log");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http_get(&c.http_addr, "/api/v1/tasks/1/log?stream=both");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}
