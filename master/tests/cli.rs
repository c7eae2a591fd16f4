//! The CLI as a person sees it (issue 11): error messages that say their cause once, worker
//! address mistakes that exit at once, and the results table.

mod common;

use common::{eventually, Cluster, MASTER};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a process to its end, killing it (and failing) past `limit`.
fn run_within(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listen_on_a_taken_port_prints_the_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_within(
        Command::new(MASTER).args(["--listen", &addr, "--no-journal", "--http", "off"]),
        Duration::from_secs(20),
        "a master on a taken port",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}: address already in use")),
        "{err}"
    );
    assert_eq!(err.matches("already in use").count(), 1, "{err}");
    assert!(!err.contains("os error"), "{err}");
}

/// `master` runs client commands itself and hands the rest to `ballast-master` beside it (see
/// `src/main.rs`); installed without it, `master serve` says what is missing, and the client
/// commands still work.
#[test]
fn a_master_without_its_server_says_what_is_missing() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lone-master-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let lone = dir.join("master");
    if std::fs::hard_link(MASTER, &lone).is_err() {
        std::fs::copy(MASTER, &lone).expect("copy of master");
    }
    let out = run_within(
        Command::new(&lone).args(["serve", "--no-journal"]),
        Duration::from_secs(20),
        "a master without ballast-master",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ballast-master") && stderr.contains("No such file"),
        "{stderr}"
    );
    let out = run_within(
        Command::new(&lone).args(["status", "--master", "127.0.0.1:1"]),
        Duration::from_secs(20),
        "a client command of the lone master",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the master"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_dir_that_is_a_file_says_so_once() {
    let dir = std::env::temp_dir().join(format!("ballast-cli-file-{}", std::process::id()));
    std::fs::write(&dir, "not a folder").expect("file");
    let out = run_within(
        Command::new(MASTER)
            .args(["--listen", "127.0.0.1:0", "--http", "off", "--data-dir"])
            .arg(&dir),
        Duration::from_secs(20),
        "a master on a file as data dir",
    );
    let _ = std::fs::remove_file(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}

/// An address that cannot be parsed or resolved is a command-line mistake: exit 1 at once, one
/// line, no retrying. A refused connection is retried (the master may not be up yet).
#[test]
fn worker_address_mistakes_exit_at_once() {
    let worker = common::worker_bin();
    for (addr, says) in [
        ("no-port-here", "is not HOST:PORT"),
        ("host:notaport", "is not HOST:PORT"),
        ("nohost.invalid:7700", "cannot resolve"),
    ] {
        let out = run_within(
            Command::new(&worker).args(["--master", addr, "--slots", "1"]),
            Duration::from_secs(20),
            "a worker with a bad --master",
        );
        assert_eq!(out.status.code(), Some(1), "{addr}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{addr}: {err}");
        assert!(err.contains(says) && err.contains(addr), "{addr}: {err}");
    }
    // A refused connection is retried: the worker is still up after saying so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::env::temp_dir().join(format!("ballast-cli-retry-{}.log", std::process::id()));
    let mut child = Command::new(&worker)
        .args(["--master", &format!("127.0.0.1:{port}"), "--slots", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("worker runs");
    eventually(
        Duration::from_secs(20),
        "the worker to say it retries",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("retrying").then_some(())
        },
    );
    let still_up = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    assert!(still_up, "a refused connection is retried");
}

/// Terminal-less (piped), the results table shows why a missing program failed in its row, and
/// `--state` filters the rows.
#[test]
fn results_table_of_a_missing_program_shows_its_reason() {
    let mut c = Cluster::start(&["--no-journal"]);
    c.add_worker("w", 1);
    c.wait_for_workers(1);
    let ok = c.cli(&["submit", "--wait", "--", "true"]);
    assert!(ok.status.success(), "{ok:?}");
    let failed = c.cli(&["submit", "--wait", "--", "nonexistent-program-xyz"]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let out = c.cli(&["results"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and both tasks, piped: {text}");
    assert!(lines[0].contains("reason"), "{text}");
    let row = lines
        .iter()
        .find(|l| l.contains("nonexistent-program-xyz  failed"))
        .unwrap_or_else(|| panic!("the failed row: {text}"));
    assert!(
        row.contains("no such program `nonexistent-program-xyz`"),
        "{row}"
    );
    assert!(!text.contains('\x1b'), "no colour when piped: {text:?}");
    let only_failed = c.cli(&["results", "--state", "failed"]);
    let text = String::from_utf8_lossy(&only_failed.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("no such program"), "{text}");
    let bad = c.cli(&["results", "--state", "broken"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// A group with no live worker: accepted with a warning on stderr (stdout keeps the ids), and
/// `status` says what the queue waits for.
#[test]
fn a_group_without_workers_is_accepted_with_a_warning() {
    let c = Cluster::start(&["--no-journal"]);
    let out = c.cli(&[
        "submit", "--group", "gpu", "--count", "2", "--sleep", "10ms",
    ]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: no live worker is in group gpu"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let status = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("group gpu: 2 queued, waiting for a worker of group gpu"),
        "{text}"
    );
}

/// A worker stopped with SIGTERM is logged as having left, not as lost; the master stopped with
/// SIGTERM says so in one line (what is unfinished, the journal closed) and exits 0.
#[test]
fn clean_stops_are_logged_as_such() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w", 1);
    c.wait_for_workers(1);
    let pid = c.worker_pid("w") as libc::pid_t;
    // SAFETY: a signal to a child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    eventually(Duration::from_secs(20), "the worker to exit", || {
        c.worker_exit("w")
    });
    let line = eventually(Duration::from_secs(20), "the master to log it", || {
        c.master_log()
            .lines()
            .find(|l| l.contains("worker w (") && (l.contains(" left") || l.contains(" lost")))
            .map(str::to_string)
    });
    assert!(line.contains(" left") && line.contains("INFO"), "{line}");
    c.submit(&["--count", "2", "--sleep", "10ms"]);
    c.signal_master(libc::SIGTERM);
    eventually(Duration::from_secs(20), "the master to exit", || {
        (!c.master_alive()).then_some(())
    });
    let log = c.master_log();
    let stop = log
        .lines()
        .find(|l| l.contains("stopping on SIGTERM"))
        .unwrap_or_else(|| panic!("no stop line: {log}"));
    assert!(
        stop.contains("2 tasks unfinished") && stop.contains("journal closed"),
        "{stop}"
    );
}
