//! Issue 10 on the real binaries: `GET /metrics` (against `status`, through `promtool` and a real
//! Prometheus server), the SSE stream of `GET /api/v1/events`, and `GET /api/v1/report`.

mod common;

use common::{eventually, Cluster};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `GET` on a fresh connection (`Connection: close`): status, head, body.
fn get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("the HTTP port accepts");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request written");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head, raw[split + 4..].to_vec())
}

/// The value of one series line (`name{labels} value`) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn batch(c: &mut Cluster, n: u32) {
    c.add_worker("m-w1", 2);
    c.add_worker("m-w2", 2);
    c.wait_for_workers(2);
    let out = c.cli(&["submit", "--count", &n.to_string(), "--wait", "--", "true"]);
    assert!(out.status.success(), "the batch ran: {out:?}");
}

#[test]
fn metrics_agree_with_status_and_pass_promtool() {
    let mut c = Cluster::start(&[]);
    batch(&mut c, 30);
    let (status, head, body) = get(&c.http_addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let text = String::from_utf8(body).expect("UTF-8");
    let st = c.status();
    let succeeded = st["succeeded"].as_u64().expect("succeeded");
    assert_eq!(succeeded, 30);
    assert_eq!(
        sample(&text, "ballast_tasks{state=\"succeeded\"}"),
        Some(succeeded as f64),
        "{text}"
    );
    assert_eq!(sample(&text, "ballast_workers{state=\"alive\"}"), Some(2.0));
    assert_eq!(sample(&text, "ballast_tasks_submitted_total"), Some(30.0));
    assert_eq!(
        sample(&text, "ballast_worker_slots{worker=\"m-w1\",group=\"\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "ballast_dispatch_latency_seconds_count"),
        Some(30.0)
    );
    // The journal is on: its commits were measured.
    assert!(sample(&text, "ballast_journal_commit_duration_seconds_count").unwrap_or(0.0) >= 1.0);

    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: skipping `promtool check metrics` (CI installs it)");
        return;
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("promtool reads");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[test]
fn an_event_stream_reader_hears_of_a_submit() {
    let mut c = Cluster::start(&[]);
    c.add_worker("e-w1", 1);
    c.wait_for_workers(1);
    let mut s = TcpStream::connect(&c.http_addr).expect("connects");
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    // The test's deadline: the acceptance says within 2 s; the read timeout only bounds a hang.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut head = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("head");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let ids = c.submit(&["--", "true"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let data = loop {
        assert!(
            Instant::now() < deadline,
            "no submitted event; saw {seen:?}"
        );
        line.clear();
        assert!(r.read_line(&mut line).expect("stream") > 0, "stream ended");
        seen.push(line.clone());
        if line == "event: submitted\n" {
            line.clear();
            r.read_line(&mut line).expect("data");
            break line.clone();
        }
    };
    let v: Value =
        serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("JSON data");
    assert_eq!(v["first"], ids[0]);
    assert!(
        seen.iter().any(|l| l.starts_with("retry: ")),
        "the stream opens with a retry hint: {seen:?}"
    );
}

#[test]
fn the_report_describes_the_batch() {
    let mut c = Cluster::start(&[]);
    batch(&mut c, 20);
    let (status, _, body) = get(&c.http_addr, "/api/v1/report");
    assert_eq!(status, 200);
    let r: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(r["tasks"], 20);
    assert_eq!(r["completed"], 20);
    assert_eq!(r["policy"], "least-loaded");
    assert!(r["makespan_s"].as_f64().expect("makespan") > 0.0);
    let mut names: Vec<&str> = r["per_worker"]
        .as_array()
        .expect("per_worker")
        .iter()
        .filter_map(|w| w["worker"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, vec!["m-w1", "m-w2"]);
    for field in [
        "utilisation",
        "p50_completion_s",
        "p99_completion_s",
        "lower_bound_s",
    ] {
        assert!(r[field].is_number(), "{field}: {r}");
    }
}

/// Stops the Prometheus server the test started, by its handle.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port the OS chose, free a moment ago (Prometheus cannot report a port 0 it was given).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_prometheus_server_scraping_the_master_sees_its_workers() {
    if Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!(
            "prometheus is not installed: skipping the scrape by a real server (CI installs it)"
        );
        return;
    }
    let mut c = Cluster::start(&[]);
    c.add_worker("p-w1", 1);
    c.add_worker("p-w2", 1);
    c.wait_for_workers(2);
    let dir = c.dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ballast\n    \
             static_configs:\n      - targets: ['{}']\n",
            c.http_addr
        ),
    )
    .expect("config");
    let port = free_port();
    let web = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let _server = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let query = "/api/v1/query?query=ballast_workers%7Bstate%3D%22alive%22%7D";
    eventually(
        Duration::from_secs(60),
        "Prometheus to see 2 alive workers",
        || {
            let mut s = TcpStream::connect(&web).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {query} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut raw = String::new();
            s.read_to_string(&mut raw).ok()?;
            let body = raw.split_once("\r\n\r\n")?.1;
            let v: Value = serde_json::from_str(body).ok()?;
            let value = v["data"]["result"][0]["value"][1].as_str()?.to_string();
            (value == "2").then_some(())
        },
    );
}

/// The raw answer to `METHOD PATH` with extra header lines, on a fresh connection.
fn call(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the HTTP port accepts");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("request written");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, text)
}

#[test]
fn metrics_events_and_report_refuse_what_they_must() {
    let c = Cluster::start(&["--token", "s3cret"]);
    for path in ["/metrics", "/api/v1/report", "/api/v1/events"] {
        let (status, text) = call(&c.http_addr, "GET", path, "");
        assert_eq!(status, 401, "{path} without the token: {text}");
        assert!(text.contains("\"error\""), "{text}");
        let (status, text) = call(
            &c.http_addr,
            "POST",
            path,
            "Authorization: Bearer s3cret\r\n",
        );
        assert_eq!(status, 405, "{path} is GET only: {text}");
        assert!(text.contains("Allow: GET"), "{text}");
    }
    let (status, text) = call(
        &c.http_addr,
        "GET",
        "/metrics",
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("ballast_workers{state=\"alive\"} 0"),
        "{text}"
    );

    // Subscribers are bounded: past the limit, 503; the ones in keep their stream.
    let auth = "Authorization: Bearer s3cret\r\n";
    let mut streams = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(&c.http_addr).expect("connects");
        write!(s, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n").expect("request");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        streams.push(r);
    }
    let (status, text) = call(&c.http_addr, "GET", "/api/v1/events", auth);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("subscribers"), "{text}");
    // One leaves: its place is free again (the master notices the close).
    drop(streams.pop());
    eventually(Duration::from_secs(10), "a free subscriber place", || {
        let mut s = TcpStream::connect(&c.http_addr).ok()?;
        write!(s, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        line.starts_with("HTTP/1.1 200").then_some(())
    });
    // The master still serves the API.
    let (status, text) = call(&c.http_addr, "GET", "/api/v1/status", auth);
    assert_eq!(status, 200, "{text}");
}

/// `submit --wait` sends its wait behind the `Submit` (`WaitSubmitted`), and the master lets a
/// waiting client's `Submitted` share the commit of the results: one commit per short task where
/// it took two (one forced by `Submitted`, one by `WaitDone`). A task outlasting the group
/// commit's 10 ms window takes two still, so the bound is on the sum, which was exactly 2 per run.
#[test]
fn a_short_submit_that_waits_costs_one_commit() {
    let mut c = Cluster::start(&[]);
    c.add_worker("m-w1", 1);
    c.wait_for_workers(1);
    let commits = |c: &Cluster| {
        let (_, _, body) = get(&c.http_addr, "/metrics");
        let text = String::from_utf8(body).expect("UTF-8");
        sample(&text, "ballast_journal_commit_duration_seconds_count").unwrap_or(0.0)
    };
    let before = commits(&c);
    let runs = 5;
    for _ in 0..runs {
        let out = c.cli(&["submit", "--wait", "--sleep", "0ms"]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 task: 1 succeeded, 0 failed"), "{stdout}");
    }
    let spent = commits(&c) - before;
    assert!(spent >= runs as f64, "each run committed: {spent}");
    assert!(spent < 2.0 * runs as f64, "{spent} commits for {runs} runs");
}
