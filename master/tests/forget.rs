//! Issue 13's retention, from outside: `master forget` and `master --keep-finished` on the real
//! binaries over loopback, across a restart, and `DELETE /api/v1/jobs/ID`.

mod common;

use common::{eventually, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `master submit ... --wait --json`: the job and the ids.
fn submit(c: &Cluster, args: &[&str]) -> (u64, Vec<u64>) {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    let v = c.json(&all);
    let job = v["job"].as_u64().unwrap_or_else(|| panic!("a job: {v}"));
    let ids = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("numeric id"))
        .collect();
    (job, ids)
}

fn job_ids(c: &Cluster) -> Vec<u64> {
    c.json(&["jobs"])
        .as_array()
        .expect("jobs is an array")
        .iter()
        .map(|j| j["id"].as_u64().expect("id"))
        .collect()
}

/// `results --job J` of a forgotten job: exit 1, and it says so.
fn says_unknown(c: &Cluster, job: u64) {
    let out = c.cli(&["results", "--job", &job.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("unknown job {job}")) && err.contains("forgotten"),
        "{err}"
    );
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

#[test]
fn forget_job_drops_it_and_a_restart_does_not_bring_it_back() {
    let mut c = Cluster::start(&["--http", "off"]);
    c.add_worker("w1", 2);
    c.wait_for_workers(1);
    // Sleeps of 0 ms: no process per task, so the test stays light.
    let (job, ids) = submit(
        &c,
        &[
            "--count", "20000", "--name", "big", "--sleep", "0ms", "--wait",
        ],
    );
    let (kept, kept_ids) = submit(&c, &["--sleep", "0ms", "--wait"]);
    assert_eq!(ids.len(), 20_000);
    let before = rss_kib(c.master_pid());
    let out = ok(&c.cli(&["forget", "--job", &job.to_string()]), "forget");
    assert_eq!(out.trim(), format!("forgot 20000 tasks (job {job})"));
    let after = rss_kib(c.master_pid());
    // The figure for the report; the test only checks that forgetting does not add memory.
    eprintln!("master RSS: {before} KiB before forgetting 20,000 tasks, {after} KiB after");
    assert!(after <= before + 256, "RSS {before} -> {after} KiB");
    says_unknown(&c, job);
    assert_eq!(job_ids(&c), vec![kept]);
    // The other job is whole, and a named unfinished or unknown id is reported, not forgotten.
    let all = c.json(&["results"]);
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    let out = c.cli(&["forget", "--json", "999999"]);
    assert_eq!(out.status.code(), Some(1), "an unknown id");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["forgotten"].as_u64(), v["unknown_count"].as_u64()),
        (Some(0), Some(1))
    );

    c.restart_master(&["--http", "off"]);
    c.wait_for_workers(1);
    says_unknown(&c, job);
    assert_eq!(job_ids(&c), vec![kept]);
    let (_, fresh) = submit(&c, &["--sleep", "0ms"]);
    assert_eq!(fresh, vec![kept_ids[0] + 1], "ids are never reused");
}

#[test]
fn keep_finished_forgets_a_finished_batch_on_its_own() {
    let mut c = Cluster::start(&["--keep-finished", "1s"]);
    c.add_worker("w1", 2);
    c.wait_for_workers(1);
    let (job, ids) = submit(&c, &["--count", "20", "--sleep", "0ms", "--wait"]);
    assert_eq!(ids.len(), 20);
    let line = format!("forgot 20 finished tasks of job {job} (older than 1s)");
    eventually(Duration::from_secs(15), "the retention line", || {
        c.master_log().contains(&line).then_some(())
    });
    says_unknown(&c, job);
    // Forgetting the newest tasks keeps their ids used, also across a restart.
    c.restart_master(&["--keep-finished", "1s"]);
    c.wait_for_workers(1);
    says_unknown(&c, job);
    let (_, fresh) = submit(&c, &["--sleep", "0ms"]);
    assert_eq!(fresh, vec![ids[19] + 1]);
}

#[test]
fn delete_on_a_job_forgets_it_over_http() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.wait_for_workers(1);
    let (job, _) = submit(&c, &["--count", "3", "--sleep", "0ms", "--wait"]);
    let mut s = TcpStream::connect(&c.http_addr).expect("http connects");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "DELETE /api/v1/jobs/{job} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body).expect("json");
    assert_eq!(v["forgotten"], 3, "{v}");
    assert_eq!(v["job_forgotten"], true, "{v}");
    says_unknown(&c, job);
}
