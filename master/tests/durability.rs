//! Issue 3's acceptance, from outside: the real `master` and `worker` binaries on loopback, driven
//! through the CLI, with crashes (SIGKILL of the master and of workers), timeouts, cancels, a token,
//! and peers that misbehave on the socket.

mod common;

use common::{eventually, Cluster};
use protocol::connection::{handshake, Welcome};
use protocol::{ConnectionError, FrameDecoder, Role, ToMaster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

// ---- helpers -----------------------------------------------------------------------------------

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every id of `ids` appears exactly once in `results`, in state `state`.
fn assert_each_once(results: &[Value], ids: &[u64], state: &str) {
    let mut seen: BTreeMap<u64, &Value> = BTreeMap::new();
    for r in results {
        let id = r["id"].as_u64().expect("numeric id");
        assert!(seen.insert(id, r).is_none(), "task {id} listed twice");
    }
    for id in ids {
        let r = seen
            .get(id)
            .unwrap_or_else(|| panic!("task {id} missing from results"));
        assert_eq!(r["state"], state, "task {id}: {r}");
    }
    assert_eq!(seen.len(), ids.len(), "results hold tasks nobody submitted");
}

/// Whether no live process has this pid: gone, or a zombie (dead, only waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the `)` that ends the command name (which may itself hold spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A shell script that records its own pid and its child's in a fresh `*.pids` file in `dir`
/// (written whole, via rename, so a reader never sees half of it), then sleeps `secs`, then prints
/// "never".
fn pid_recording_script(dir: &Path, secs: u32) -> String {
    format!(
        "t=$(mktemp {dir}/run.XXXXXX); echo $$ > $t; sleep {secs} & echo $! >> $t; \
         mv $t $t.pids; wait; echo never",
        dir = dir.display()
    )
}

/// Pids written by [`pid_recording_script`], one list per task.
fn recorded_pids(dir: &Path) -> Vec<Vec<u32>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("pid dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pids") {
            let text = std::fs::read_to_string(&path).expect("pid file");
            let pids: Vec<u32> = text
                .split_whitespace()
                .map(|p| p.parse().expect("a pid"))
                .collect();
            assert_eq!(pids.len(), 2, "{}: {text:?}", path.display());
            all.push(pids);
        }
    }
    all
}

fn wait_processes_gone(pids: &[u32]) {
    eventually(
        Duration::from_secs(10),
        "every task process to be gone",
        || pids.iter().all(|&p| process_gone(p)).then_some(()),
    );
}

/// The state of each of `ids`, from `results --json`.
fn states(c: &Cluster, ids: &[u64]) -> Vec<String> {
    let args: Vec<String> = ids.iter().map(u64::to_string).collect();
    let mut all = vec!["results"];
    all.extend(args.iter().map(String::as_str));
    c.json(&all)
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A tiny seeded generator (splitmix64), so a chaos run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Reads until the peer closes (`Ok(0)` or a reset) or `limit` passes. Returns the bytes received
/// before the close, or `None` if the connection was still open at the deadline.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<usize> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let deadline = Instant::now() + limit;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(got), // reset: closed just the same
        }
    }
    None
}

/// Does the handshake on a socket of the test's own (so it knows its address) and returns how the
/// master answered.
fn raw_hello(addr: &str, token: Option<&[u8]>) -> (TcpStream, Result<Welcome, ConnectionError>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let reply = handshake(&mut s, &mut FrameDecoder::new(), addr, Role::Client, token);
    (s, reply)
}

// ---- 1. restart --------------------------------------------------------------------------------

#[test]
fn master_killed_mid_batch_recovers_every_task_exactly_once() {
    let mut c = Cluster::start(&[]);
    c.add_worker("a", 4);
    c.add_worker("b", 4);
    c.wait_for_workers(2);
    let (pid_a, pid_b) = (c.worker_pid("a"), c.worker_pid("b"));
    let ids = c.submit(&["--count", "300", "--sleep", "100ms"]);
    assert_eq!(ids.len(), 300);

    let done_before = eventually(Duration::from_secs(30), "some tasks to finish", || {
        let n = c.status()["succeeded"].as_u64().unwrap_or(0);
        (n >= 40).then_some(n)
    });
    c.kill_master();
    assert!(
        done_before < 300,
        "all tasks finished before the kill ({done_before}): nothing was tested"
    );
    c.restart_master(&[]);

    // The same worker processes find the new master by themselves.
    eventually(Duration::from_secs(20), "a and b to reconnect", || {
        let s = c.status();
        let alive: Vec<&str> = s["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["state"] == "alive")
            .filter_map(|w| w["name"].as_str())
            .collect();
        (alive.contains(&"a") && alive.contains(&"b")).then_some(())
    });
    assert_eq!((c.worker_pid("a"), c.worker_pid("b")), (pid_a, pid_b));
    assert!(c.worker_exit("a").is_none() && c.worker_exit("b").is_none());

    let out = c.cli_within(Duration::from_secs(60), &["wait"], &[]);
    ok(&out, "wait after the restart");
    assert_each_once(&c.results(), &ids, "succeeded");
    assert!(
        c.master_log().contains("recovered 300 tasks"),
        "the restarted master logs its recovery"
    );
}

#[test]
fn tasks_running_across_a_master_restart_are_adopted_not_rerun() {
    let mut c = Cluster::start(&[]);
    let runs = c.dir.join("runs");
    c.add_worker("a", 2);
    c.wait_for_workers(1);
    let script = format!("echo started >> {}; sleep 2", runs.display());
    let ids = c.submit(&["--count", "2", "--", "sh", "-c", &script]);
    let started = |runs: &Path| {
        std::fs::read_to_string(runs)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(10), "both tasks started", || {
        (started(&runs) == 2).then_some(())
    });
    c.kill_master();
    c.restart_master(&[]);
    let out = c.cli_within(Duration::from_secs(60), &["wait"], &[]);
    ok(&out, "wait after the restart");
    assert_each_once(&c.results(), &ids, "succeeded");
    assert_eq!(
        started(&runs),
        2,
        "a task still running on its worker was started again"
    );
    assert!(
        c.master_log().contains("adopted"),
        "the master logs the adoption"
    );
}

// ---- 2. timeout --------------------------------------------------------------------------------

#[test]
fn timed_out_task_is_killed_with_its_children() {
    let mut c = Cluster::start(&[]);
    let pids = c.dir.join("pids");
    std::fs::create_dir_all(&pids).expect("pid dir");
    c.add_worker("a", 1);
    c.wait_for_workers(1);
    let script = pid_recording_script(&pids, 30);
    let ids = c.submit(&["--timeout", "500ms", "--", "sh", "-c", &script]);
    let id = ids[0].to_string();

    let r = eventually(Duration::from_secs(10), "the task to time out", || {
        let r = c.json(&["results", &id])[0].clone();
        let state = r["state"].as_str().unwrap_or("").to_string();
        match state.as_str() {
            "queued" | "running" => None,
            _ => Some(r),
        }
    });
    assert_eq!(r["state"], "timed_out", "{r}");
    assert!(!r["stdout"].as_str().unwrap_or("").contains("never"), "{r}");

    let recorded = recorded_pids(&pids);
    assert_eq!(recorded.len(), 1, "the task ran once and recorded its pids");
    wait_processes_gone(&recorded[0]);
    assert!(c.master_alive());
}

// ---- 3. cancel ---------------------------------------------------------------------------------

#[test]
fn cancel_kills_running_and_drops_queued() {
    let mut c = Cluster::start(&[]);
    let pids = c.dir.join("pids");
    std::fs::create_dir_all(&pids).expect("pid dir");
    c.add_worker("a", 4);
    c.add_worker("b", 4);
    c.wait_for_workers(2);
    let script = pid_recording_script(&pids, 60);
    let ids = c.submit(&["--count", "11", "--", "sh", "-c", &script]);
    assert_eq!(ids.len(), 11);

    eventually(Duration::from_secs(20), "8 tasks started, 3 queued", || {
        let s = c.status();
        (recorded_pids(&pids).len() == 8 && s["running"] == 8 && s["queued"] == 3).then_some(())
    });
    let args: Vec<String> = ids.iter().map(u64::to_string).collect();
    let mut cancel = vec!["cancel"];
    cancel.extend(args.iter().map(String::as_str));
    ok(&c.cli(&cancel), "cancel");

    eventually(Duration::from_secs(10), "all 11 cancelled", || {
        states(&c, &ids)
            .iter()
            .all(|s| s == "cancelled")
            .then_some(())
    });
    let recorded = recorded_pids(&pids);
    let all: Vec<u32> = recorded.iter().flatten().copied().collect();
    wait_processes_gone(&all);
    assert_eq!(
        recorded_pids(&pids).len(),
        8,
        "a queued task started after its cancel"
    );
    let s = c.status();
    assert_eq!(
        (s["running"].as_u64(), s["queued"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(c.master_alive());
}

// ---- 4. token ----------------------------------------------------------------------------------

#[test]
fn token_from_the_environment_admits_only_holders() {
    const TOKEN: &str = "s3cret-from-env";
    let with_token = [("BALLAST_TOKEN", TOKEN)];
    let mut c = Cluster::start_with_env(&[], &with_token);

    c.add_worker("stranger", 1);
    let code = eventually(
        Duration::from_secs(10),
        "the stranger to be refused",
        || c.worker_exit("stranger"),
    );
    assert_eq!(code.code(), Some(2), "a rejected worker exits 2");

    let out = c.cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a client without the token is refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("requires a token: set --token or BALLAST_TOKEN"),
        "{err}"
    );

    c.add_worker_with("friend", 2, &["--token", TOKEN]);
    let status = |c: &Cluster| -> Value {
        let out = c.cli_within(Duration::from_secs(20), &["status", "--json"], &with_token);
        ok(&out, "status with the token");
        serde_json::from_slice(&out.stdout).expect("json")
    };
    eventually(Duration::from_secs(20), "friend to join", || {
        let s = status(&c);
        let ws = s["workers"].as_array()?.clone();
        (ws.iter()
            .any(|w| w["name"] == "friend" && w["state"] == "alive"))
        .then_some(())
    });
    let out = c.cli_within(
        Duration::from_secs(30),
        &["submit", "--wait", "--", "sh", "-c", "echo token-ok"],
        &with_token,
    );
    ok(&out, "submit --wait with the token");
    let s = status(&c);
    let names: Vec<&str> = s["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["friend"], "the stranger never joined: {s}");
    assert_eq!(s["succeeded"], 1, "{s}");

    // A refusal the test can name: its own socket, with a wrong answer to the challenge.
    let (stream, reply) = raw_hello(&c.addr, Some(b"wrong"));
    assert!(
        matches!(reply, Err(ConnectionError::Rejected { .. })),
        "{reply:?}"
    );
    let local = stream.local_addr().expect("local addr").to_string();
    eventually(
        Duration::from_secs(10),
        "the refused address in the log",
        || {
            c.master_log()
                .lines()
                .any(|l| l.contains(&local) && l.contains("authentication failed"))
                .then_some(())
        },
    );
}

/// DESIGN.md: "A client that the master rejects says so in one line with the address and exits
/// 1", and says whether its token is missing or wrong.
#[test]
fn rejected_client_says_so_in_one_line_with_the_address() {
    let c = Cluster::start(&["--token", "s3cret"]);
    let out = c.cli(&["status", "--token", "not-it"]);
    assert_eq!(out.status.code(), Some(1), "a wrong token is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused our token"), "{err}");
    let out = c.cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a client without the token is refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&c.addr),
        "the refusal names the master's address {}: {err}",
        c.addr
    );
}

// ---- 5. chaos ----------------------------------------------------------------------------------

#[test]
fn chaos_workers_and_master_killed_every_task_succeeds_once() {
    let seed = std::env::var("BALLAST_CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("BALLAST_CHAOS_SEED is a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("chaos seed {seed} (replay the schedule with BALLAST_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let mut c = Cluster::start(&[]);
    let workers: Vec<(String, u32)> = (0..4)
        .map(|i| (format!("w{i}"), 2 + rng.below(3) as u32))
        .collect();
    for (name, slots) in &workers {
        c.add_worker(name, *slots);
    }
    c.wait_for_workers(4);
    // Short tasks, some processes; a few a little longer so the work outlasts several kills on
    // each side of the master's restart.
    let mut ids = c.submit(&["--count", "1000", "--retries", "50", "--sleep", "20ms"]);
    ids.extend(c.submit(&["--count", "500", "--retries", "50", "--sleep", "60ms"]));
    ids.extend(c.submit(&["--count", "500", "--retries", "50", "--", "true"]));
    assert_eq!(ids.len(), 2000);

    // Bounded: at most this many kills (each 200-500 ms apart), fewer if the work ends first.
    const MAX_KILLS: u32 = 80;
    let master_kill_at = 4 + rng.below(5) as u32;
    let mut kills = 0;
    let mut master_restarted = false;
    while kills < MAX_KILLS {
        // Pacing of the chaos itself, not synchronisation: nothing waits on this sleep.
        std::thread::sleep(Duration::from_millis(200 + rng.below(301)));
        let (name, slots) = &workers[rng.below(workers.len() as u64) as usize];
        c.restart_worker(name, *slots, &[]);
        kills += 1;
        if kills == master_kill_at {
            c.restart_master(&[]);
            master_restarted = true;
        }
        if master_restarted && kills % 5 == 0 {
            // The master may be between lives; only a clean answer ends the chaos early.
            let out = c.cli(&["status", "--json"]);
            if out.status.success() {
                let s: Value = serde_json::from_slice(&out.stdout).expect("json");
                if s["queued"] == 0 && s["running"] == 0 {
                    break;
                }
            }
        }
    }
    println!("chaos: {kills} worker kills, master restarted after kill {master_kill_at}");
    assert!(master_restarted);

    let out = c.cli_within(Duration::from_secs(90), &["wait"], &[]);
    ok(&out, "wait after the chaos");
    assert_each_once(&c.results(), &ids, "succeeded");
}

// ---- 6. hostile peers --------------------------------------------------------------------------

#[test]
fn silent_connection_is_closed_by_the_handshake_timeout() {
    let mut c = Cluster::start(&[]);
    let mut s = TcpStream::connect(&c.addr).expect("connect");
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .expect("a connection that never says Hello is closed within the handshake timeout");
    assert!(got > 0, "the master speaks first (Greeting) before closing");
    eventually(Duration::from_secs(5), "the timeout in the log", || {
        c.master_log().contains("no handshake within").then_some(())
    });
    assert!(c.master_alive());
    assert!(c.status()["workers"].is_array());
}

#[test]
fn client_that_never_reads_huge_results_does_not_stall_others() {
    let mut c = Cluster::start(&[]);
    // No workers: the tasks stay queued, so `results` of all of them is a reply of megabytes.
    let ids = c.submit(&["--count", "100000", "--sleep", "1s"]);
    assert_eq!(ids.len(), 100_000);
    let (mut hog, welcome) =
        protocol::Connection::connect(&c.addr, Role::Client, None, None, Duration::from_secs(5))
            .expect("the hog connects");
    assert!(welcome.worker_id.is_none());
    for _ in 0..8 {
        hog.writer
            .send(&ToMaster::Results {
                ids: Vec::new(),
                jobs: Vec::new(),
            })
            .expect("request sent");
    }
    // The hog never reads. Everyone else must still be served.
    let out = c.cli_within(Duration::from_secs(20), &["status", "--json"], &[]);
    ok(&out, "status beside a client that does not read");
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s["queued"], 100_000, "{s}");
    let last = ids[ids.len() - 1].to_string();
    let out = c.cli_within(Duration::from_secs(20), &["results", "--json", &last], &[]);
    ok(&out, "results beside a client that does not read");
    assert!(c.master_alive());
    drop(hog);
    ok(
        &c.cli_within(Duration::from_secs(20), &["status"], &[]),
        "status after the hog left",
    );
}

#[test]
fn connections_beyond_the_limit_are_closed_on_accept() {
    let mut c = Cluster::start(&["--max-connections", "5"]);
    let held: Vec<protocol::Connection> = (0..5)
        .map(|_| {
            protocol::Connection::connect(&c.addr, Role::Client, None, None, Duration::from_secs(5))
                .expect("one of the first five connects")
                .0
        })
        .collect();
    let mut sixth = TcpStream::connect(&c.addr).expect("the kernel accepts the sixth");
    let got = read_until_closed(&mut sixth, Duration::from_secs(10))
        .expect("the sixth connection is closed");
    assert_eq!(got, 0, "the sixth is closed without a Greeting");
    let out = c.cli_within(Duration::from_secs(20), &["status"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a client over the limit is refused"
    );
    assert!(c.master_log().contains("connections is the limit"));

    drop(held);
    eventually(
        Duration::from_secs(10),
        "status once the others closed",
        || c.cli(&["status"]).status.success().then_some(()),
    );
    assert!(c.master_alive());
}
