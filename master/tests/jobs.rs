//! Issue 11's jobs, from outside: the real `master` and `worker` binaries on loopback, driven
//! through the CLI and the HTTP API exactly as the acceptance lines are written.

mod common;

use common::{eventually, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `master submit ... --json`: the job and the ids.
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

fn job_of(jobs: &Value, id: u64) -> &Value {
    jobs.as_array()
        .expect("jobs is an array")
        .iter()
        .find(|j| j["id"] == id)
        .unwrap_or_else(|| panic!("job {id} in {jobs}"))
}

fn ids_of(results: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = results
        .as_array()
        .expect("results is an array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// One HTTP/1.1 GET, the connection closed after it: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("http connects");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_named_submission_is_one_job_to_list_wait_for_and_read_back() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    // Another job first, so the ids and the job id are not both 1 by chance.
    let (other, other_ids) = submit(&c, &["--count", "2", "--sleep", "10ms"]);
    let (job, ids) = submit(
        &c,
        &[
            "--name", "build", "--count", "3", "--", "sh", "-c", "echo x",
        ],
    );
    assert_eq!(ids.len(), 3);
    assert_ne!(job, other);

    let jobs = c.json(&["jobs"]);
    let j = job_of(&jobs, job);
    assert_eq!(j["name"], "build", "{j}");
    assert_eq!(j["tasks"], 3, "{j}");
    assert_eq!(
        job_of(&jobs, other)["name"],
        "sleep 10ms",
        "the default name"
    );

    let out = c.cli(&["wait", "--job", &job.to_string()]);
    ok(&out, "wait --job");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 tasks: 3 succeeded, 0 failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let results = c.json(&["results", "--job", &job.to_string()]);
    assert_eq!(ids_of(&results), ids, "exactly the job's tasks");
    for r in results.as_array().expect("array") {
        assert_eq!(r["job"], job, "{r}");
        assert_eq!(r["stdout"], "x\n", "{r}");
    }
    // Both jobs at once, and a job with an id.
    let both = c.json(&[
        "results",
        "--job",
        &job.to_string(),
        "--job",
        &other.to_string(),
    ]);
    let mut all = other_ids.clone();
    all.extend(&ids);
    assert_eq!(ids_of(&both), all);

    // Finished: the counts and a duration that no longer grows.
    let j = job_of(&c.json(&["jobs"]), job).clone();
    assert_eq!(
        (&j["succeeded"], &j["queued"], &j["running"]),
        (&3.into(), &0.into(), &0.into())
    );
    for state in ["failed", "timed_out", "cancelled", "worker_lost"] {
        assert_eq!(j[state], 0, "{state} in {j}");
    }
    assert!(
        j["finished_ms"].is_u64() && j["duration_ms"].is_u64(),
        "{j}"
    );
    let again = job_of(&c.json(&["jobs"]), job).clone();
    assert_eq!(
        j["duration_ms"], again["duration_ms"],
        "until its last task ended"
    );

    // The table: one row per job.
    let out = c.cli(&["jobs"]);
    ok(&out, "jobs");
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "id",
        "name",
        "tasks",
        "queued",
        "running",
        "succeeded",
        "failed",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
    assert!(table.lines().any(|l| l.contains("build")), "{table}");

    // The HTTP API shows the same.
    let (status, list) = http_get(&c.http_addr, "/api/v1/jobs");
    assert_eq!(status, 200);
    assert_eq!(job_of(&list, job)["name"], "build");
    let (status, one) = http_get(&c.http_addr, &format!("/api/v1/jobs/{job}"));
    assert_eq!(status, 200, "{one}");
    assert_eq!((&one["id"], &one["tasks"]), (&job.into(), &3.into()));
    let (status, _) = http_get(&c.http_addr, "/api/v1/jobs/999");
    assert_eq!(status, 404);
}

#[test]
fn an_unknown_job_is_a_clear_error() {
    let c = Cluster::start(&[]);
    for sub in ["wait", "results", "cancel"] {
        let out = c.cli(&[sub, "--job", "42"]);
        assert_eq!(out.status.code(), Some(1), "{sub} --job 42");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown job 42"), "{sub}: {err}");
    }
}

#[test]
fn cancel_job_stops_its_tasks_only() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 1);
    c.wait_for_workers(1);
    let (keep, keep_ids) = submit(&c, &["--count", "2", "--sleep", "10ms"]);
    let (drop, drop_ids) = submit(&c, &["--name", "long", "--count", "3", "--sleep", "1h"]);
    let out = c.cli(&["cancel", "--job", &drop.to_string()]);
    ok(&out, "cancel --job");
    let out = c.cli(&["wait", "--job", &keep.to_string()]);
    ok(&out, "the other job runs on");
    let results = c.json(&["results", "--job", &drop.to_string()]);
    assert_eq!(ids_of(&results), drop_ids);
    assert!(
        results
            .as_array()
            .expect("array")
            .iter()
            .all(|r| r["state"] == "cancelled"),
        "{results}"
    );
    let j = job_of(&c.json(&["jobs"]), drop).clone();
    assert_eq!(j["cancelled"], 3, "{j}");
    assert_eq!(
        ids_of(&c.json(&["results", "--job", &keep.to_string()])),
        keep_ids
    );
}

#[test]
fn jobs_survive_a_master_restart() {
    let mut c = Cluster::start(&["--http", "off"]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    let (first, first_ids) = submit(&c, &["--name", "first", "--count", "2", "--sleep", "10ms"]);
    ok(&c.cli(&["wait", "--job", &first.to_string()]), "wait");
    let (second, second_ids) = submit(&c, &["--name", "second", "--count", "2", "--sleep", "1h"]);
    c.restart_master(&["--http", "off"]);
    let jobs = c.json(&["jobs"]);
    let j = job_of(&jobs, first);
    assert_eq!(
        (&j["name"], &j["tasks"], &j["succeeded"]),
        (&"first".into(), &2.into(), &2.into())
    );
    let j = job_of(&jobs, second);
    assert_eq!((&j["name"], &j["tasks"]), (&"second".into(), &2.into()));
    assert_eq!(
        ids_of(&c.json(&["results", "--job", &first.to_string()])),
        first_ids
    );
    // The next job follows the recovered ones.
    let (third, _) = submit(&c, &["--count", "1", "--sleep", "1ms"]);
    assert_eq!(third, second + 1);
    ok(&c.cli(&["cancel", "--job", &second.to_string()]), "cancel");
    let results = c.json(&["results", "--job", &second.to_string()]);
    assert_eq!(ids_of(&results), second_ids);
    eventually(Duration::from_secs(20), "the third job to finish", || {
        let j = job_of(&c.json(&["jobs"]), third).clone();
        (j["succeeded"] == 1).then_some(())
    });
}

#[test]
fn submit_wait_waits_for_its_job() {
    let mut c = Cluster::start(&["--http", "off"]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    // An older failure must not count.
    ok(&c.cli(&["submit", "--", "false"]), "submit false");
    let v = c.json(&["submit", "--count", "5", "--wait", "--", "true"]);
    assert_eq!(v["ids"].as_array().map(Vec::len), Some(5), "{v}");
    assert_eq!(
        (&v["total"], &v["succeeded"], &v["failed"]),
        (&5.into(), &5.into(), &0.into())
    );
    assert_eq!(v["job"], 2, "{v}");
}

#[test]
fn jobs_limit_keeps_the_newest_and_says_what_it_left_out() {
    let c = Cluster::start(&["--no-journal"]);
    for name in ["a", "b", "c"] {
        submit(&c, &["--name", name, "--sleep", "0ms"]);
    }
    let out = c.cli(&["jobs", "--limit", "2"]);
    ok(&out, "jobs --limit 2");
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].contains(" b ") && rows[1].contains(" c "),
        "{table}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 job earlier not shown"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = c.json(&["jobs", "--limit", "1"]);
    assert_eq!(newest.as_array().map(Vec::len), Some(1), "{newest}");
    assert_eq!(newest[0]["name"], "c");
    let all = c.json(&["jobs"]);
    assert_eq!(all.as_array().map(Vec::len), Some(3), "piped: all of them");
}
