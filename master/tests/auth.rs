//! Authentication on the real binaries: both sides prove the token, bound to the role and the
//! direction (issue 14, item 4).

mod common;

use common::{eventually, worker_bin, Cluster};
use protocol::{encode_frame, FrameDecoder, FromMaster, RejectKind, Role, ToMaster};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "s3cret";

fn send<T: serde::Serialize>(stream: &mut TcpStream, msg: &T) {
    let mut out = Vec::new();
    encode_frame(msg, &mut out).expect("encodes");
    stream.write_all(&out).expect("write");
}

fn recv<T: serde::de::DeserializeOwned>(stream: &mut TcpStream, dec: &mut FrameDecoder) -> T {
    loop {
        if let Some(msg) = dec.next_frame().expect("a valid frame") {
            return msg;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the peer closed the connection");
        dec.extend(&buf[..n]);
    }
}

/// The acceptance line: "A master without a token and a worker started with --token T: the
/// worker refuses to take tasks from it (it exits with status 2 and a line saying the master did
/// not prove the token)".
#[test]
fn a_worker_with_a_token_refuses_a_master_without_one() {
    let mut c = Cluster::start(&[]);
    let ids = c.submit(&["--sleep", "10ms"]);
    c.add_worker_with("w", 1, &["--token", TOKEN]);
    let status = eventually(Duration::from_secs(20), "the worker to exit", || {
        c.worker_exit("w")
    });
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(c.dir.join("w.log")).expect("worker log");
    assert!(log.contains("did not prove the token"), "{log}");
    assert!(!log.contains("task 1"), "the worker touched a task: {log}");
    let results = c.results();
    assert_eq!(results.len(), ids.len());
    assert_eq!(results[0]["state"], "queued", "{results:?}");
}

/// A worker whose token differs from the master's is refused by the master (it cannot prove
/// its own) and exits 2 too.
#[test]
fn a_worker_with_another_token_is_refused() {
    let mut c = Cluster::start(&["--token", TOKEN]);
    c.add_worker_with("w", 1, &["--token", "other"]);
    let status = eventually(Duration::from_secs(20), "the worker to exit", || {
        c.worker_exit("w")
    });
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(c.dir.join("w.log")).expect("worker log");
    assert!(log.contains("authentication failed"), "{log}");
}

/// Client commands with a token refuse a master that cannot prove it: exit 2, one line.
#[test]
fn a_client_with_a_token_refuses_an_unproven_master() {
    let c = Cluster::start(&[]);
    let out = c.cli_within(Duration::from_secs(30), &["status", "--token", TOKEN], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not prove the token"), "{err}");
    assert!(err.contains(&c.addr), "{err}");
    // With the same token on both sides everything works.
    let c = Cluster::start(&["--token", TOKEN]);
    let out = c.cli_within(Duration::from_secs(30), &["status", "--token", TOKEN], &[]);
    assert!(out.status.success(), "{out:?}");
}

/// The attack: a listener posing as the master at a worker's `--master` address relays
/// the real master's nonce to the worker and replays the worker's answer as a client `Hello`.
/// The real master refuses it: the MAC is bound to the worker's role.
#[test]
fn a_workers_answer_relayed_as_a_client_hello_is_refused() {
    let c = Cluster::start(&["--token", TOKEN]);
    let rogue = TcpListener::bind("127.0.0.1:0").expect("bind");
    let rogue_addr = rogue.local_addr().expect("addr").to_string();
    let mut worker = Command::new(worker_bin())
        .args([
            "--master",
            &rogue_addr,
            "--name",
            "victim",
            "--token",
            TOKEN,
        ])
        .env_remove("BALLAST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker starts");
    let (mut victim, _) = rogue.accept().expect("the worker connects to the rogue");
    victim
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut real = TcpStream::connect(&c.addr).expect("connect to the real master");
    real.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let (mut real_dec, mut victim_dec) = (FrameDecoder::new(), FrameDecoder::new());
    // Relay the real master's greeting to the worker, and take its answer.
    let greeting: FromMaster = recv(&mut real, &mut real_dec);
    send(&mut victim, &greeting);
    let ToMaster::Hello {
        version,
        auth,
        nonce,
        ..
    } = recv(&mut victim, &mut victim_dec)
    else {
        panic!("expected the worker's Hello");
    };
    assert!(!auth.is_empty(), "the worker answers with its token");
    send(
        &mut real,
        &ToMaster::Hello {
            version,
            role: Role::Client,
            auth,
            nonce,
        },
    );
    match recv::<FromMaster>(&mut real, &mut real_dec) {
        FromMaster::Rejected { kind, reason } => {
            assert_eq!(kind, RejectKind::Authentication, "{reason}");
        }
        other => panic!("the relayed answer opened a session: {other:?}"),
    }
    let _ = worker.kill();
    let _ = worker.wait();
}

/// The acceptance line: "Two workers started with the same `--name`: the second is refused
/// (exits non-zero with a line that says the name is in use) or waits; 20 tasks of 1 s on them
/// end with `attempts` 1 each."
#[test]
fn a_second_worker_with_a_live_name_is_refused() {
    let mut c = Cluster::start(&[]);
    c.add_worker("twin", 4);
    c.wait_for_workers(1);
    let second = Command::new(worker_bin())
        .args(["--master", &c.addr, "--name", "twin", "--slots", "4"])
        .env_remove("BALLAST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let ids = c.submit(&["--count", "20", "--sleep", "1s"]);
    assert!(c.cli(&["wait"]).status.success());
    let out = second.wait_with_output().expect("the second worker exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is in use"), "{err}");
    let results = c.results();
    assert_eq!(results.len(), ids.len());
    for r in &results {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
    }
    let log = c.master_log();
    assert!(log.contains("is in use by a live worker"), "{log}");
    assert_eq!(c.alive_workers(), 1);
}

/// The acceptance line: "500 client attempts with a wrong token add fewer than 50 lines to the
/// master's log" (at the default level), and a client with the right token still gets in at once.
#[test]
fn wrong_tokens_cost_the_log_a_few_lines() {
    let c = Cluster::start_with_env(&["--token", TOKEN], &[("RUST_LOG", "info")]);
    // The log's first lines (listening ...) are written before the port file.
    let before = c.master_log().lines().count();
    // 10 guessers of 50 attempts each: past the first few, each answer waits a little.
    let guessers: Vec<_> = (0..10)
        .map(|_| {
            let addr = c.addr.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut s = TcpStream::connect(&addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(20)))
                        .expect("timeout");
                    let got = protocol::connection::handshake(
                        &mut s,
                        &mut FrameDecoder::new(),
                        &addr,
                        Role::Client,
                        Some(b"wrong"),
                    );
                    assert!(
                        matches!(
                            got,
                            Err(protocol::ConnectionError::Rejected {
                                kind: RejectKind::Authentication,
                                ..
                            })
                        ),
                        "{got:?}"
                    );
                }
            })
        })
        .collect();
    for g in guessers {
        g.join().expect("a guesser");
    }
    let out = c.cli_within(Duration::from_secs(30), &["status", "--token", TOKEN], &[]);
    assert!(out.status.success(), "the right token still works: {out:?}");
    // The summary of the suppressed lines comes within a sweep or two.
    let log = eventually(Duration::from_secs(10), "the summary line", || {
        let log = c.master_log();
        log.contains("more refused or failed handshakes")
            .then_some(log)
    });
    let added = log.lines().count() - before;
    eprintln!("lines added: {added}");
    assert!(added < 50, "{added} lines:\n{log}");
    assert!(log.contains("authentication failed"), "{log}");
}

/// One frame of 100,000 results for unknown ids (the campaign's 200,002 log lines) writes one
/// line, and so do a hundred such frames a few more.
#[test]
fn a_frame_of_unknown_ids_costs_one_line() {
    let c = Cluster::start_with_env(&[], &[("RUST_LOG", "info")]);
    let mut s = TcpStream::connect(&c.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut dec = FrameDecoder::new();
    let info = protocol::WorkerInfo {
        allocation: None,
        name: "junk".into(),
        host: "h".into(),
        cpus: 1,
        slots: 1,
        pid: 1,
        group: None,
        prefetch: 0,
        prefetch_adaptive: false,
        heartbeat_interval_ms: 0,
    };
    protocol::connection::handshake(&mut s, &mut dec, &c.addr, Role::Worker(info), None)
        .expect("welcomed");
    send(&mut s, &ToMaster::Running(vec![]));
    let before = c.master_log().lines().count();
    let junk: Vec<protocol::Completion> = (0..100_000u64)
        .map(|i| {
            protocol::TaskRef {
                task: protocol::TaskId(1_000_000 + i),
                attempt: protocol::Attempt(1),
                incarnation: protocol::Incarnation(1),
            }
            .completion(protocol::TaskOutcome::Failed { error: "x".into() }, 1)
        })
        .collect();
    for _ in 0..20 {
        send(&mut s, &ToMaster::Finished(junk.clone()));
    }
    // A request on another connection, answered after the junk was read: the log is complete.
    eventually(
        Duration::from_secs(60),
        "the master to read the junk",
        || {
            c.master_log()
                .contains("dropped 100000 stale results")
                .then_some(())
        },
    );
    let log = c.master_log();
    assert!(!log.contains("protocol error"), "{log}");
    let added = log.lines().count() - before;
    eprintln!("lines added: {added}");
    assert!(added < 20, "{added} lines:\n{log}");
}

/// `--client-idle-timeout`: an idle client connection is closed; a `wait` that lasts longer is
/// not.
#[test]
fn idle_clients_are_closed_but_waits_are_not() {
    let mut c = Cluster::start(&["--client-idle-timeout", "1s"]);
    let mut s = TcpStream::connect(&c.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut dec = FrameDecoder::new();
    protocol::connection::handshake(&mut s, &mut dec, &c.addr, Role::Client, None)
        .expect("welcomed");
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .expect("the master closes, it does not stall");
    assert_eq!(n, 0, "closed without a word");
    assert!(c.master_log().contains("idle for"), "logged at debug");
    c.add_worker("w", 1);
    c.wait_for_workers(1);
    let out = c.cli_within(
        Duration::from_secs(60),
        &["submit", "--wait", "--sleep", "3s"],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
}

/// The acceptance line: "`worker --heartbeat 5s` against the default 3 s timeout: refused at
/// connect with a message about the heartbeat, or adjusted with a log line; in 12 s it is not
/// declared dead more than once." Here: adjusted, and never declared dead over a window in
/// which the old behaviour lost it twice.
#[test]
fn a_heartbeat_too_slow_for_the_timeout_is_adjusted() {
    let mut c = Cluster::start(&[]);
    c.add_worker_with("slow", 1, &["--heartbeat", "5s"]);
    c.wait_for_workers(1);
    eventually(Duration::from_secs(10), "the master's line", || {
        c.master_log()
            .contains("worker slow asked for heartbeat 5s; told to use 1s, the timeout is 3s")
            .then_some(())
    });
    let worker_log = || std::fs::read_to_string(c.dir.join("slow.log")).unwrap_or_default();
    eventually(Duration::from_secs(10), "the worker's line", || {
        worker_log().contains("adjusted").then_some(())
    });
    // An observation window, not a synchronisation: the old behaviour lost it every 3 s.
    std::thread::sleep(Duration::from_secs(7));
    let log = c.master_log();
    assert!(!log.contains("worker slow (#1) lost"), "{log}");
    assert_eq!(c.alive_workers(), 1);
}

/// A worker of `c` with `token` in its `BALLAST_TOKEN`, logging to `<name>.log`.
fn worker_with_env_token(c: &Cluster, name: &str, token: &str, extra: &[&str]) -> common::Reaped {
    let log = std::fs::File::create(c.dir.join(format!("{name}.log"))).expect("log");
    common::Reaped(
        Command::new(worker_bin())
            .args(["--master", &c.addr, "--name", name, "--slots", "1"])
            .args(extra)
            .env("BALLAST_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts"),
    )
}

/// A worker given its token in `BALLAST_TOKEN` (as the deployment files do) does not hand it to
/// its tasks: a task printing its environment would store the secret in its output.
#[test]
fn tasks_do_not_inherit_the_workers_token() {
    let c = Cluster::start(&["--token", TOKEN]);
    let mut worker = worker_with_env_token(&c, "env-worker", TOKEN, &[]);
    let out = c.cli_within(
        Duration::from_secs(30),
        &[
            "submit",
            "--token",
            TOKEN,
            "--wait",
            "--",
            "sh",
            "-c",
            "echo token=${BALLAST_TOKEN:-none}",
        ],
        &[],
    );
    worker.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = c.cli_within(
        Duration::from_secs(30),
        &["results", "--token", TOKEN, "--json"],
        &[],
    );
    let text = String::from_utf8_lossy(&results.stdout);
    assert!(text.contains("token=none"), "{text}");
    assert!(!text.contains(TOKEN), "the token reached the task: {text}");
}

/// `--token-file` wins over a `BALLAST_TOKEN` the worker inherits (a Slurm job inherits its
/// submitter's environment): found by the Slurm test, where every worker exited 2 with "cannot be
/// used with --token".
#[test]
fn a_token_file_wins_over_the_environment() {
    let c = Cluster::start(&["--token", TOKEN]);
    let file = c.dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
    let file = file.to_str().expect("utf-8 path");
    let _worker = worker_with_env_token(&c, "file-worker", "stale", &["--token-file", file]);
    let out = c.cli_within(
        Duration::from_secs(30),
        &["submit", "--token", TOKEN, "--wait", "--", "true"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(c.dir.join("file-worker.log")).unwrap_or_default()
    );
}
