//! Issue 11 attacked from outside: forged frames against jobs, dependencies and task logs, and
//! `master logs --follow` of a task whose counting run changes. Each test failed before its fix
//! (or guards a refusal that held up when tried by hand).

mod common;

use common::{eventually, Cluster};
use protocol::{
    After, FromMaster, LoadReport, OutputChunk, OutputStream, Role, TaskId, TaskKind, TaskSpec,
    ToMaster, WorkerInfo,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn client(c: &Cluster) -> protocol::Connection {
    protocol::Connection::connect(&c.addr, Role::Client, None, None, Duration::from_secs(5))
        .expect("connects")
        .0
}

fn command(argv: &[&str]) -> TaskSpec {
    TaskSpec::new(TaskKind::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        cwd: None,
    })
}

/// A worker that reports a run's output at an offset near `u64::MAX`: the master's log store
/// added offset and length unchecked (a panic in a debug build, a wrapped offset in release that
/// made it skip every later byte). The chunk is dropped; the log and the master carry on.
#[test]
fn an_output_offset_near_the_end_of_u64_does_not_break_the_master() {
    let c = Cluster::start(&[]);
    let (mut worker, _) = protocol::Connection::connect(
        &c.addr,
        Role::Worker(WorkerInfo {
            allocation: None,
            name: "forger".into(),
            host: "h".into(),
            cpus: 1,
            slots: 1,
            pid: std::process::id(),
            group: None,
            prefetch: 0,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        }),
        None,
        None,
        Duration::from_secs(5),
    )
    .expect("welcomed");
    worker
        .send(&ToMaster::Load(LoadReport::default()))
        .expect("load");
    worker.send(&ToMaster::Running(vec![])).expect("running");
    let ids = c.submit(&["--", "true"]);
    let run = loop {
        match worker.recv().expect("a frame") {
            FromMaster::Assign(a) => break a[0].task_ref(),
            _ => continue,
        }
    };
    assert_eq!(run.task, TaskId(ids[0]));
    let chunk = |offset, bytes: &[u8]| OutputChunk {
        task: run,
        stream: OutputStream::Stdout,
        offset,
        bytes: bytes.to_vec(),
    };
    worker
        .send(&ToMaster::Output(vec![
            chunk(u64::MAX - 2, b"0123456789"),
            chunk(0, b"hello\n"),
        ]))
        .expect("output");
    // Answered after the Output frame was handled (frames of one turn, in order).
    let mut cli = client(&c);
    let reply = eventually(Duration::from_secs(20), "the log", || {
        match cli.request(&ToMaster::Log {
            task: run.task,
            stream: OutputStream::Stdout,
            offset: 0,
        }) {
            Ok(FromMaster::Log { bytes, .. }) if !bytes.is_empty() => Some(bytes),
            Ok(FromMaster::Log { .. }) => None,
            other => panic!("the master answers a Log: {other:?}"),
        }
    });
    assert_eq!(reply, b"hello\n");
    assert_eq!(c.alive_workers(), 1, "the master serves on");
}

/// Forged `Submit`s the CLI would never send: a task waiting for its own id, or for an id past
/// its submission, or a `Spec` reference past the specs. Each is refused whole and the master
/// serves on; a `Log` of an unknown task or from past the end is answered, not a crash.
#[test]
fn forged_dependencies_and_log_reads_are_refused_or_answered() {
    let c = Cluster::start(&[]);
    let ids = c.submit(&["--sleep", "1ms"]);
    let next = ids[0] + 1;
    let mut conn = client(&c);
    let forged = [
        vec![After::Ids {
            first: TaskId(next),
            last: TaskId(next),
        }],
        vec![After::Ids {
            first: TaskId(1),
            last: TaskId(next + 1_000),
        }],
        vec![After::Spec(3)],
    ];
    for after in forged {
        let mut spec = command(&["true"]);
        spec.after = after.clone();
        match conn.request(&ToMaster::Submit {
            specs: vec![spec],
            count: 1,
            name: None,
        }) {
            Ok(FromMaster::Error { .. }) => {}
            other => panic!("{after:?} must be refused: {other:?}"),
        }
    }
    // A blank job name (it made a `jobs` row with no name at all).
    match conn.request(&ToMaster::Submit {
        specs: vec![command(&["true"])],
        count: 1,
        name: Some(String::new()),
    }) {
        Ok(FromMaster::Error { message }) => assert!(message.contains("empty"), "{message}"),
        other => panic!("an empty job name must be refused: {other:?}"),
    }
    let out = c.cli(&["submit", "--name", "", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    match conn.request(&ToMaster::Log {
        task: TaskId(999_999),
        stream: OutputStream::Stderr,
        offset: 0,
    }) {
        Ok(FromMaster::Error { message }) => assert!(message.contains("999999"), "{message}"),
        other => panic!("unknown task: {other:?}"),
    }
    match conn.request(&ToMaster::Log {
        task: TaskId(ids[0]),
        stream: OutputStream::Stdout,
        offset: u64::MAX,
    }) {
        Ok(FromMaster::Log { bytes, .. }) => assert!(bytes.is_empty()),
        other => panic!("a read past the end is answered: {other:?}"),
    }
    let status = c.status();
    assert_eq!(status["waiting"], 0, "nothing forged was queued");
    assert_eq!(c.results().len(), 1, "{status}");
}

/// `master logs --follow` of a task whose first run printed and failed, then ran again: the
/// follower used to go on reading the new run's log at the old run's offset (seen: `first` and
/// a stray newline, never `second`). Now it starts the new run's log afresh, says so on stderr,
/// and ends with exactly the log `master logs` keeps.
#[test]
fn follow_starts_afresh_when_the_run_that_counts_changes() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.wait_for_workers(1);
    let marker = c.dir.join("first-run");
    let go = c.dir.join("go");
    let script = format!(
        "if mkdir {m} 2>/dev/null; then echo first; while [ ! -e {g} ]; do sleep 0.05; done; \
         exit 1; fi; echo second",
        m = marker.display(),
        g = go.display()
    );
    let ids = c.submit(&["--retry-failed", "1", "--", "sh", "-c", &script]);
    let mut follow = Command::new(common::MASTER)
        .args(["logs", &ids[0].to_string(), "--follow", "--master", &c.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs --follow starts");
    let mut out = BufReader::new(follow.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a line");
    assert_eq!(line, "first\n", "the first run's output, while it runs");
    std::fs::write(&go, "").expect("go");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("the rest");
    let status = follow.wait().expect("follow ends");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(status.success(), "{err}");
    assert_eq!(
        rest, "second\n",
        "then the log of the run that counts; stderr: {err}"
    );
    assert!(err.contains("afresh"), "{err}");
    let stored = c.cli(&["logs", &ids[0].to_string()]);
    assert_eq!(String::from_utf8_lossy(&stored.stdout), "second\n");
    // An HTTP poller learns the run the same way.
    let head = http_head(&c.http_addr, &format!("/api/v1/tasks/{}/log", ids[0]));
    assert!(head.contains("X-Log-Attempt: 2"), "{head}");
}

/// The head of a `GET` (`Connection: close`).
fn http_head(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("the answer");
    let text = String::from_utf8_lossy(&all).into_owned();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A small output (under the 64 KiB a stream is held in memory before it spills) whose start
/// the master held when it was SIGKILLed: the worker's result still has it all in its tail, but
/// `master logs` printed a "bytes lost" line and the second half. Now the tail is the log.
#[test]
fn a_small_log_survives_a_master_sigkill_whole() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.wait_for_workers(1);
    let go = c.dir.join("go");
    let script = format!(
        "echo abc; while [ ! -e {g} ]; do sleep 0.05; done; echo def",
        g = go.display()
    );
    let ids = c.submit(&["--", "sh", "-c", &script]);
    let id = ids[0].to_string();
    eventually(Duration::from_secs(20), "the first line in the log", || {
        (c.cli(&["logs", &id]).stdout == b"abc\n").then_some(())
    });
    c.restart_master(&[]);
    std::fs::write(&go, "").expect("go");
    eventually(Duration::from_secs(30), "the task to succeed", || {
        let r = c.json(&["results", &id]);
        (r[0]["state"] == "succeeded").then_some(())
    });
    let out = c.cli(&["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\ndef\n");
}

/// A failure at the head of a chain: every dependent ends `dependency_failed` (one gate each),
/// and the master's log says so at the per-task rate, not in one `info` line per task (a chain
/// of 100,000 wrote 100,000 of them, `1 tasks (9..=9) dependency_failed: ...`).
#[test]
fn a_failed_chain_head_does_not_flood_the_master_log() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w1", 1);
    c.wait_for_workers(1);
    let file = c.dir.join("chain.jsonl");
    let mut text = String::from("{\"name\":\"t0\",\"cmd\":[\"false\"]}\n");
    for i in 1..1_000 {
        text.push_str(&format!(
            "{{\"name\":\"t{i}\",\"cmd\":[\"true\"],\"after\":[\"t{}\"]}}\n",
            i - 1
        ));
    }
    std::fs::write(&file, text).expect("write");
    let out = c.cli(&["submit", "--file", file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(30), "the chain to end", || {
        let s = c.status();
        (s["failed"] == 1_000).then_some(())
    });
    let log = c.master_log();
    let info = log
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("dependency_failed"))
        .count();
    assert!(info <= 100, "{info} info lines of dependency_failed");
    assert!(!log.contains("1 tasks"), "plural");
}
