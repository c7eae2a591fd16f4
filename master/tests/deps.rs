//! Task dependencies end to end: `submit --after`, task files with `name`/`after`, failures that
//! propagate, refusals that queue nothing, and a restart in between.

mod common;

use common::{eventually, Cluster};
use serde_json::Value;
use std::time::Duration;

fn result(c: &Cluster, id: u64) -> Value {
    let v = c.json(&["results", &id.to_string()]);
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .expect("one result")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn after_a_task_sees_what_it_wrote_and_starts_once_it_finished() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    let file = c.dir.join("a.txt");
    let file = file.to_str().expect("utf-8 path");
    let write = format!("sleep 0.3; echo written-by-a > {file}");
    let a = c.submit(&["--", "sh", "-c", &write])[0];
    let b = c.submit(&["--after", &a.to_string(), "--", "cat", file])[0];
    let out = c.cli(&["wait", &b.to_string()]);
    assert!(out.status.success(), "wait: {}", stderr(&out));
    let (ra, rb) = (result(&c, a), result(&c, b));
    assert_eq!(rb["state"], "succeeded", "{rb}");
    assert!(
        rb["stdout"].as_str().unwrap_or("").contains("written-by-a"),
        "{rb}"
    );
    let finished_a = ra["finished_ms"].as_u64().expect("a finished");
    let started_b = rb["started_ms"].as_u64().expect("b started");
    assert!(
        started_b >= finished_a,
        "b started before a ended: {ra} {rb}"
    );
    assert_eq!(rb["after"], serde_json::json!([a]), "{rb}");
}

#[test]
fn a_failed_dependency_fails_its_dependents_without_running_them() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    let a = c.submit(&["--", "sh", "-c", "sleep 0.3; exit 3"])[0];
    let b = c.submit(&["--after", &a.to_string(), "--", "true"])[0];
    let d = c.submit(&["--after", &b.to_string(), "--count", "2", "--", "true"]);
    // Before a ends, b waits, and status says so.
    let status = c.status();
    assert!(status["waiting"].as_u64().unwrap_or(0) >= 1, "{status}");
    let mut ids = vec![b.to_string()];
    ids.extend(d.iter().map(u64::to_string));
    let mut wait = vec!["wait"];
    wait.extend(ids.iter().map(String::as_str));
    let out = c.cli(&wait);
    assert_eq!(
        out.status.code(),
        Some(1),
        "dependents failed: {}",
        stderr(&out)
    );
    let rb = result(&c, b);
    assert_eq!(rb["state"], "dependency_failed", "{rb}");
    assert_eq!(rb["copies"], 0, "never ran: {rb}");
    assert!(rb["started_ms"].is_null() && rb["worker"].is_null(), "{rb}");
    assert_eq!(rb["error"], format!("dependency {a} failed"), "{rb}");
    for id in &d {
        let r = result(&c, *id);
        assert_eq!(r["state"], "dependency_failed", "{r}");
        assert_eq!(r["copies"], 0, "{r}");
        assert_eq!(
            r["error"],
            format!("dependency {b} failed (dependency_failed)"),
            "{r}"
        );
    }
    assert_eq!(c.status()["waiting"], 0);
}

#[test]
fn a_task_file_runs_in_dependency_order() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 4);
    c.wait_for_workers(1);
    let log = c.dir.join("order.txt");
    let log = log.to_str().expect("utf-8 path");
    let step = |name: &str, after: &str| {
        format!(
            r#"{{"cmd": ["sh", "-c", "sleep 0.1; echo {name} >> {log}"], "name": "{name}", "after": [{after}]}}"#
        )
    };
    // Written out of order: the file's order is not the run order.
    let text = [
        step("test", r#""build""#),
        step("build", r#""fetch""#),
        step("fetch", ""),
        step("report", r#""test", "build""#),
    ]
    .join("\n");
    let path = c.dir.join("dag.jsonl");
    std::fs::write(&path, text).expect("task file");
    let ids = c.submit(&["--file", path.to_str().expect("utf-8")]);
    assert_eq!(ids.len(), 4);
    let out = c.cli(&["wait"]);
    assert!(out.status.success(), "wait: {}", stderr(&out));
    let order = std::fs::read_to_string(log).expect("the tasks wrote");
    assert_eq!(order, "fetch\nbuild\ntest\nreport\n");
    let test = result(&c, ids[0]);
    assert_eq!(test["name"], "test", "{test}");
    assert_eq!(test["after"], serde_json::json!([ids[1]]), "{test}");
}

#[test]
fn a_cycle_or_an_unknown_dependency_is_refused_and_nothing_is_queued() {
    let c = Cluster::start(&[]);
    let write = |name: &str, text: &str| {
        let path = c.dir.join(name);
        std::fs::write(&path, text).expect("task file");
        path.to_str().expect("utf-8").to_string()
    };
    let cycle = write(
        "cycle.jsonl",
        concat!(
            r#"{"sleep": "10ms", "name": "a"}"#,
            "\n",
            r#"{"sleep": "10ms", "name": "b", "after": ["a", "c"]}"#,
            "\n",
            r#"{"sleep": "10ms", "name": "c", "after": ["b"]}"#,
            "\n"
        ),
    );
    let out = c.cli(&["submit", "--file", &cycle]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("cycle") && e.contains("line 2"), "{e}");
    let unknown = write("unknown.jsonl", r#"{"sleep": "10ms", "after": ["nope"]}"#);
    let out = c.cli(&["submit", "--file", &unknown]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    let missing = write(
        "missing.jsonl",
        "{\"sleep\": \"10ms\"}\n{\"sleep\": \"10ms\", \"after\": [99]}\n",
    );
    let out = c.cli(&["submit", "--file", &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("line 2") && e.contains("no task 99"), "{e}");
    let out = c.cli(&["submit", "--after", "5", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no task 5"), "{}", stderr(&out));
    assert_eq!(c.results().len(), 0, "nothing of any of them was accepted");
    let status = c.status();
    assert_eq!(
        (status["queued"].as_u64(), status["waiting"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn dependencies_survive_a_master_restart() {
    let mut c = Cluster::start(&[]);
    // No worker yet: a stays queued and b waits for it across the restart.
    let a = c.submit(&["--", "true"])[0];
    let b = c.submit(&["--after", &a.to_string(), "--", "true"])[0];
    let out = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("1 waiting"), "{text}");
    c.restart_master(&[]);
    let rb = result(&c, b);
    assert_eq!(rb["state"], "waiting", "{rb}");
    assert_eq!(rb["after"], serde_json::json!([a]), "{rb}");
    c.add_worker("w", 1);
    let out = c.cli(&["wait", &b.to_string()]);
    assert!(out.status.success(), "wait: {}", stderr(&out));
    let (ra, rb) = (result(&c, a), result(&c, b));
    assert_eq!(rb["state"], "succeeded", "{rb}");
    assert!(
        rb["started_ms"].as_u64() >= ra["finished_ms"].as_u64(),
        "{ra} {rb}"
    );
    eventually(Duration::from_secs(10), "waiting back to 0", || {
        (c.status()["waiting"] == 0).then_some(())
    });
}

#[test]
fn after_job_waits_for_every_task_of_the_job() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 3);
    c.wait_for_workers(1);
    let lines = c.dir.join("lines.txt");
    let lines = lines.to_str().expect("utf-8 path");
    let write = format!("sleep 0.2; echo x >> {lines}");
    let v = c.json(&["submit", "--count", "2", "--", "sh", "-c", &write]);
    let job = v["job"].as_u64().expect("a job");
    let count = format!("wc -l < {lines}");
    let d = c.submit(&["--after-job", &job.to_string(), "--", "sh", "-c", &count])[0];
    let out = c.cli(&["wait", &d.to_string()]);
    assert!(out.status.success(), "wait: {}", stderr(&out));
    let rd = result(&c, d);
    assert_eq!(rd["stdout"].as_str().map(str::trim), Some("2"), "{rd}");
    let ids = v["ids"].as_array().expect("ids");
    let range = format!("{}-{}", ids[0], ids[1]);
    assert_eq!(rd["after"], serde_json::json!([range]), "{rd}");
    let before = c.results().len();
    let out = c.cli(&["submit", "--after-job", "999", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("job 999"), "{}", stderr(&out));
    assert_eq!(c.results().len(), before, "nothing queued");
}

#[test]
fn a_dependency_running_across_a_restart_still_releases_its_dependent() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w", 2);
    c.wait_for_workers(1);
    let marker = c.dir.join("a-done");
    let marker = marker.to_str().expect("utf-8 path");
    let script = format!("sleep 1; touch {marker}");
    let a = c.submit(&["--", "sh", "-c", &script])[0];
    let check = format!("test -e {marker}");
    let b = c.submit(&["--after", &a.to_string(), "--", "sh", "-c", &check])[0];
    eventually(Duration::from_secs(10), "a to run", || {
        (result(&c, a)["state"] == "running").then_some(())
    });
    // The worker keeps running a while the master is gone, and reports it to the new one.
    c.restart_master(&[]);
    assert_eq!(result(&c, b)["state"], "waiting");
    let out = c.cli(&["wait", &b.to_string()]);
    assert!(out.status.success(), "wait: {}", stderr(&out));
    assert_eq!(result(&c, a)["state"], "succeeded");
    assert_eq!(result(&c, b)["state"], "succeeded", "b saw a's file");
}
