//! The HTTP side on the real binaries (issue 10): every endpoint of the JSON API v1 and every
//! bad-input answer, through a tiny HTTP/1.1 client written here on `std::net::TcpStream`.

mod common;

use common::{eventually, Cluster, MASTER};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// One answer: status, lowercased header lines, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the HTTP port");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s
}

/// Reads one answer off `s` (a `Content-Length` body; the master sends no other kind).
fn read_reply(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read the answer's head");
        assert!(
            n == 1,
            "connection closed inside a head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read the body");
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends one request on a fresh connection and reads its answer.
fn call(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Reply {
    let mut s = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    read_reply(&mut s)
}

fn get(addr: &str, path: &str) -> Reply {
    call(addr, "GET", path, &[], b"")
}

fn post(addr: &str, body: &Value) -> Reply {
    let body = serde_json::to_vec(body).expect("JSON");
    call(addr, "POST", "/api/v1/tasks", &[], &body)
}

fn ids(reply: &Reply) -> Vec<u64> {
    assert_eq!(
        reply.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("an id"))
        .collect()
}

/// Polls `GET /api/v1/tasks/ID` until the task is final; returns it.
fn final_task(addr: &str, id: u64) -> Value {
    eventually(LIMIT, &format!("task {id} to finish"), || {
        let t = get(addr, &format!("/api/v1/tasks/{id}")).json();
        let state = t["state"].as_str().unwrap_or_default().to_string();
        (!["queued", "running", "waiting"].contains(&state.as_str())).then_some(t)
    })
}

fn epoch_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("a clock after 1970").as_millis() as u64
}

fn cluster_of_two() -> Cluster {
    let mut c = Cluster::start(&[]);
    assert!(!c.http_addr.is_empty(), "the harness gives HTTP a port");
    c.add_worker("w1", 4);
    c.add_worker("w2", 4);
    c.wait_for_workers(2);
    c
}

#[test]
fn the_api_submits_lists_shows_cancels_and_reports_status() {
    let started_ms = epoch_ms();
    let c = cluster_of_two();
    let http = c.http_addr.clone();

    // One task object as a task-file line.
    let one = ids(&post(&http, &json!({"cmd": ["sh", "-c", "echo hi"]})));
    assert_eq!(one.len(), 1);
    let t = final_task(&http, one[0]);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["stdout"], "hi\n", "{t}");
    assert_eq!(t["id"], one[0]);
    assert_eq!(t["kind"], "command", "{t}");
    assert_eq!(t["cmd"], json!(["sh", "-c", "echo hi"]), "{t}");
    assert!(t["group"].is_null(), "{t}");
    // The same shape as `results --json`.
    let cli = c.json(&["results", &one[0].to_string()]);
    let mut from_cli = cli[0].clone();
    let mut from_http = t.clone();
    for v in [&mut from_cli, &mut from_http] {
        v.as_object_mut().expect("object").remove("worker");
    }
    assert_eq!(from_cli, from_http);

    // A batch: every task object `count` times.
    let batch = ids(&post(
        &http,
        &json!({"tasks": [{"cmd": ["true"]}, {"sleep": "1ms"}], "count": 50}),
    ));
    assert_eq!(batch.len(), 100, "50 ids per task object");
    let mut kinds = Vec::new();
    for id in &batch {
        let t = final_task(&http, *id);
        assert_eq!(t["state"], "succeeded");
        match t["kind"].as_str() {
            Some("command") => assert_eq!(t["cmd"], json!(["true"]), "{t}"),
            Some("sleep") => assert!(t["cmd"].is_null(), "a synthetic task has no argv: {t}"),
            _ => panic!("no such kind in the batch: {t}"),
        }
        kinds.push(t["kind"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(kinds.iter().filter(|k| *k == "sleep").count(), 50);

    // Pages: oldest first, filtered, with a next.
    let page = get(&http, "/api/v1/tasks?state=succeeded&limit=10").json();
    let tasks = page["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 10, "{page}");
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"));
    let got: Vec<u64> = tasks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "oldest id first");
    let next = page["next"].as_u64().expect("a non-null next");
    let rest = get(
        &http,
        &format!("/api/v1/tasks?state=succeeded&after={next}&limit=1000"),
    )
    .json();
    let rest = rest["tasks"].as_array().expect("tasks").len();
    assert_eq!(10 + rest, 101, "the pages cover every succeeded task once");
    let all = get(&http, "/api/v1/tasks").json();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 100, "default limit");

    // A queued task (its group has no worker) is cancelled.
    let queued = ids(&post(&http, &json!({"sleep": "1s", "group": "nobody"})))[0];
    let t = get(&http, &format!("/api/v1/tasks/{queued}")).json();
    assert_eq!(
        (&t["kind"], &t["group"]),
        (&json!("sleep"), &json!("nobody"))
    );
    let r = call(
        &http,
        "DELETE",
        &format!("/api/v1/tasks/{queued}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"cancelled": [queued], "already_final": [], "unknown": []})
    );
    assert_eq!(final_task(&http, queued)["state"], "cancelled");
    let again = call(
        &http,
        "DELETE",
        &format!("/api/v1/tasks/{queued}"),
        &[],
        b"",
    )
    .json();
    assert_eq!(again["already_final"], json!([queued]));
    let unknown = call(&http, "DELETE", "/api/v1/tasks/999999", &[], b"").json();
    assert_eq!(unknown["unknown"], json!([999999]));
    assert_eq!(get(&http, "/api/v1/tasks/999999").status, 404);

    // Status: the CLI's object, with both workers by name.
    let status = get(&http, "/api/v1/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let status = status.json();
    let mut names: Vec<&str> = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(status["succeeded"], 101);
    let cli = c.status();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&status), keys(&cli));
    assert_eq!(status["succeeded"], cli["succeeded"]);
    let asked_ms = epoch_ms();
    for w in status["workers"].as_array().expect("workers") {
        let seen = w["last_seen_ms"].as_u64().expect("heard from");
        assert!(
            (started_ms..=asked_ms).contains(&seen),
            "{seen} not within {started_ms}..={asked_ms}: {w}"
        );
        assert_eq!(keys(w), keys(&cli["workers"][0]));
    }

    // The page and its files.
    let page = get(&http, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("Ballast"));
    assert_eq!(get(&http, "/static/app.js").status, 200);
    assert_eq!(get(&http, "/static/style.css").status, 200);
}

/// A long argv is whole in its task's own answer and in `results --json`, cut to its first KiB
/// (with a marker element) in a page of tasks.
#[test]
fn a_page_cuts_a_long_command_and_the_task_shows_it_whole() {
    let c = cluster_of_two();
    let http = c.http_addr.clone();
    let script = format!("# {}", "x".repeat(100 << 10));
    let argv = json!(["sh", "-c", script]);
    let id = ids(&post(&http, &json!({"cmd": argv})))[0];
    let t = final_task(&http, id);
    assert_eq!(t["state"], "succeeded", "{}", t["error"]);
    assert_eq!(t["cmd"], argv);
    assert_eq!(c.json(&["results", &id.to_string()])[0]["cmd"], argv);
    let page = get(&http, &format!("/api/v1/tasks?after={}&limit=1", id - 1)).json();
    let cut = page["tasks"][0]["cmd"].as_array().expect("an argv");
    assert_eq!(page["tasks"][0]["id"], id);
    assert_eq!(cut.len(), 4, "{cut:?}");
    assert_eq!((&cut[0], &cut[1]), (&json!("sh"), &json!("-c")));
    let kept = cut[2].as_str().expect("a string");
    assert!(kept.len() < 1024 && script.starts_with(kept), "{kept}");
    let marker = format!("[... {} bytes cut]", script.len() - kept.len());
    assert_eq!(cut[3], json!(marker));
}

#[test]
fn a_token_guards_the_api_but_not_the_page() {
    let c = Cluster::start(&["--token", "s3cret"]);
    let http = c.http_addr.clone();
    let r = get(&http, "/api/v1/status");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("token"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let wrong = call(
        &http,
        "GET",
        "/api/v1/status",
        &["Authorization: Bearer s3cre"],
        b"",
    );
    assert_eq!(wrong.status, 401);
    let ok = call(
        &http,
        "GET",
        "/api/v1/status",
        &["Authorization: Bearer s3cret"],
        b"",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["queued"], 0);
    let submit = call(&http, "POST", "/api/v1/tasks", &[], br#"{"sleep": "1ms"}"#);
    assert_eq!(submit.status, 401, "no submission without the token");
    assert_eq!(
        get(&http, "/").status,
        200,
        "the page asks for the token itself"
    );
    assert_eq!(get(&http, "/static/app.js").status, 200);
}

/// Runs a master that must refuse to start; returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(MASTER)
        .args(["--listen", "127.0.0.1:0", "--no-journal"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("master runs");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the master started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_non_loopback_http_address_needs_a_token() {
    let err = refused_start(&["--http", "0.0.0.0:0"]);
    assert!(
        err.contains("--http") && err.contains("without a token"),
        "{err}"
    );
    let err = refused_start(&["--http", "off", "--http-port-file", "/nonexistent/x"]);
    assert!(err.contains("--http is off"), "{err}");
}

#[test]
fn a_taken_http_port_names_the_flag_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let err = refused_start(&["--http", &addr]);
    assert!(
        err.contains(&format!(
            "cannot listen on {addr}: address already in use (--http)"
        )),
        "{err}"
    );
    // The cause once, not repeated by every layer that passed it on.
    assert_eq!(err.matches("already in use").count(), 1, "{err}");
}

#[test]
fn bad_requests_get_the_right_answers() {
    let c = Cluster::start(&[]);
    let http = c.http_addr.clone();
    let err = |r: &Reply| r.json()["error"].as_str().expect("an error").to_string();

    let r = call(&http, "POST", "/api/v1/tasks", &[], b"{\"cmd\": [");
    assert_eq!(r.status, 400);
    assert!(err(&r).contains("invalid JSON"), "{}", err(&r));
    let r = post(&http, &json!({"cmd": ["true"], "priorty": 1}));
    assert_eq!(r.status, 400);
    assert!(err(&r).contains("priorty"), "names the field: {}", err(&r));
    let r = post(
        &http,
        &json!({"tasks": [{"sleep": "1ms"}, {"sleep": "soon"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(err(&r).starts_with("tasks[1]: sleep"), "{}", err(&r));
    let r = post(&http, &json!({"cmd": []}));
    assert_eq!(r.status, 400);
    assert!(err(&r).contains("argv"), "{}", err(&r));
    let r = get(&http, "/api/v1/tasks?state=done");
    assert_eq!(r.status, 400);
    assert!(err(&r).contains("state"), "{}", err(&r));
    assert_eq!(get(&http, "/api/v1/tasks/abc").status, 400);

    let r = get(&http, "/nope");
    assert_eq!(r.status, 404);
    assert!(err(&r).contains("/nope"));
    let r = call(&http, "PUT", "/api/v1/tasks", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(call(&http, "POST", "/api/v1/status", &[], b"").status, 405);

    // 20 MiB: refused from the head alone, before any of the body is sent.
    let mut s = connect(&http);
    s.write_all(b"POST /api/v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 20971520\r\n\r\n")
        .expect("head");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 413);
    assert!(err(&r).contains("20971520"), "{}", err(&r));
    // And a client that sends it all the same gets the same answer.
    let body = vec![b'x'; 20 << 20];
    let mut s = connect(&http);
    s.write_all(b"POST /api/v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 20971520\r\n\r\n")
        .expect("head");
    let _ = s.write_all(&body); // the master may stop reading
    assert_eq!(read_reply(&mut s).status, 413);

    let mut big_head = b"GET /api/v1/status HTTP/1.1\r\nX-Big: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', 70 << 10));
    big_head.extend_from_slice(b"\r\n\r\n");
    let mut s = connect(&http);
    let _ = s.write_all(&big_head);
    assert_eq!(read_reply(&mut s).status, 431);

    let mut s = connect(&http);
    s.write_all(b"POST /api/v1/tasks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    assert_eq!(read_reply(&mut s).status, 411);

    // Malformed HTTP: 400, then the connection closes.
    let mut s = connect(&http);
    s.write_all(b"HELLO THERE\r\n\r\n").expect("garbage");
    let r = read_reply(&mut s);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // The master serves on.
    assert_eq!(get(&http, "/api/v1/status").status, 200);
}

#[test]
fn keep_alive_answers_pipelined_requests_in_order() {
    let c = Cluster::start(&[]);
    let mut s = connect(&c.http_addr);
    let body = br#"{"sleep": "1ms"}"#;
    let mut pipelined = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    pipelined.extend_from_slice(body);
    pipelined.extend_from_slice(b"GET /nope HTTP/1.1\r\n\r\nGET /api/v1/status HTTP/1.1\r\n\r\nGET /api/v1/tasks/1 HTTP/1.1\r\n\r\n");
    s.write_all(&pipelined).expect("send");
    let first = read_reply(&mut s);
    assert_eq!(first.status, 201);
    assert_eq!(first.json(), json!({"ids": [1], "job": 1}));
    assert_eq!(read_reply(&mut s).status, 404);
    let status = read_reply(&mut s);
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["queued"], 1, "answered after the submit");
    let task = read_reply(&mut s);
    assert_eq!(task.json()["id"], 1);
    // Still open.
    s.write_all(b"GET /api/v1/status HTTP/1.1\r\n\r\n")
        .expect("send");
    assert_eq!(read_reply(&mut s).status, 200);
}

#[test]
fn a_201_means_the_submission_survives_a_crash() {
    let mut c = Cluster::start(&[]);
    let id = ids(&post(
        &c.http_addr,
        &json!({"sleep": "1h", "group": "nobody"}),
    ))[0];
    // SIGKILL right after the answer: it was sent only after the journal commit.
    c.kill_master();
    c.restart_master(&[]);
    let t = get(&c.http_addr, &format!("/api/v1/tasks/{id}"));
    assert_eq!(t.status, 200);
    assert_eq!(t.json()["state"], "queued");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let c = Cluster::start(&[]);
    let mut s = connect(&c.http_addr);
    let body = br#"{"sleep": "1ms"}"#;
    let head = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    assert_eq!(read_reply(&mut s).status, 100);
    s.write_all(body).expect("body");
    assert_eq!(read_reply(&mut s).status, 201);
}

#[test]
fn a_client_that_pipelines_without_reading_gets_every_answer_in_order_later() {
    let c = Cluster::start(&[]);
    let http = c.http_addr.clone();
    ids(&post(
        &http,
        &json!({"tasks": [{"sleep": "1h", "group": "nobody"}], "count": 1000}),
    ));
    // 300 pages of 1,000 tasks (some 200 KB each, 60 MB in all) asked at once, nothing read
    // until all are sent: the master stops reading this client while 4 MiB wait for it, and
    // serves on.
    let mut s = connect(&http);
    let writer = {
        let mut s = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..300 {
                s.write_all(b"GET /api/v1/tasks?limit=1000 HTTP/1.1\r\n\r\n")
                    .expect("send");
            }
            s.write_all(b"GET /nope HTTP/1.1\r\n\r\n").expect("send");
        })
    };
    assert_eq!(
        get(&http, "/api/v1/status").status,
        200,
        "others are served meanwhile"
    );
    for i in 0..300 {
        let r = read_reply(&mut s);
        assert_eq!(r.status, 200, "answer {i}");
        assert_eq!(r.json()["tasks"].as_array().map(Vec::len), Some(1000));
    }
    assert_eq!(read_reply(&mut s).status, 404, "the last one last");
    writer.join().expect("writer");
}

#[test]
fn idle_connections_and_garbage_do_not_stop_the_api() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 4);
    c.wait_for_workers(1);
    let http = c.http_addr.clone();
    // 300 connections that say nothing, and some that stop halfway through a head.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| connect(&http)).collect();
    for s in idle.iter_mut().take(50) {
        s.write_all(b"GET /api/v1/sta").expect("half a head");
    }
    // A few hundred garbage requests.
    let garbage: [&[u8]; 6] = [
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"POST /api/v1/tasks HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /api/v1/tasks HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
        b"GET /api/v1/tasks?limit=-1 HTTP/1.1\r\n\r\n",
        b"\xff\xfe GET / HTTP/9.9\r\n\r\n",
    ];
    for i in 0..300 {
        let mut s = connect(&http);
        let _ = s.write_all(garbage[i % garbage.len()]);
        let r = read_reply(&mut s);
        assert!((400..500).contains(&r.status), "garbage {i}: {}", r.status);
    }
    // The API still serves, and a batch still completes.
    assert_eq!(get(&http, "/api/v1/status").status, 200);
    let batch = ids(&post(
        &http,
        &json!({"tasks": [{"cmd": ["true"]}], "count": 20}),
    ));
    assert_eq!(batch.len(), 20);
    eventually(LIMIT, "the batch to finish", || {
        let page = get(&http, "/api/v1/tasks?state=succeeded&limit=1000").json();
        (page["tasks"].as_array()?.len() == 20).then_some(())
    });
    // A head that never completes is answered 408 and closed (slowloris), however long the
    // connection stays open; one that never sent a byte is closed too, in time.
    let r = read_reply(&mut idle[0]);
    assert_eq!(r.status, 408);
    let mut rest = Vec::new();
    let _ = idle[0].read_to_end(&mut rest);
    assert!(rest.is_empty());
    drop(idle);
}

#[test]
fn a_batch_may_be_a_dag_and_waiting_tasks_are_counted_everywhere() {
    let mut c = Cluster::start(&[]);
    let addr = c.http_addr.clone();
    let batch = json!({"tasks": [
        {"sleep": "10ms", "after": ["first"], "name": "second"},
        {"sleep": "10ms", "name": "first"}
    ]});
    let got = ids(&post(&addr, &batch));
    assert_eq!(got.len(), 2);
    let page = get(&addr, "/api/v1/tasks?state=waiting").json();
    let waiting: Vec<u64> = page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(waiting, [got[0]], "{page}");
    assert_eq!(get(&addr, "/api/v1/status").json()["waiting"], 1);
    let metrics = String::from_utf8_lossy(&get(&addr, "/metrics").body).into_owned();
    assert!(
        metrics.contains("ballast_tasks{state=\"waiting\"} 1"),
        "{metrics}"
    );
    let cycle = json!({"tasks": [
        {"sleep": "10ms", "name": "a", "after": ["b"]},
        {"sleep": "10ms", "name": "b", "after": ["a"]}
    ]});
    let r = post(&addr, &cycle);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("cycle"));
    c.add_worker("w", 2);
    let second = final_task(&addr, got[0]);
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(second["name"], "second", "{second}");
    let first = final_task(&addr, got[1]);
    assert!(second["started_ms"].as_u64() >= first["finished_ms"].as_u64());
}
