//! A worker whose master does not read (here: SIGSTOPped) must stay in control of itself: its loop
//! keeps running tasks, and SIGTERM ends it and its commands at once.

mod common;

use common::{eventually, Cluster};
use std::path::Path;
use std::time::{Duration, Instant};

/// The master, SIGSTOPped until this is dropped (also when the test fails, so the cluster's
/// clean-up finds it running).
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The pids the tasks wrote to `file`, one a line.
fn pids(file: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn sigterm_ends_a_worker_whose_master_is_stopped() {
    // A 10 s heartbeat makes the worker give up on a master that reads nothing only after 30 s,
    // long after this test is done even on a loaded machine (the 200 noisy tasks take 5 s on 8
    // idle slots, 15 s were seen under a load of 8): with the default 1 s it would drop its
    // prefetched tasks after 3 s, and the long tasks below would never start.
    let mut c = Cluster::start(&["--heartbeat", "10s", "--heartbeat-timeout", "30s"]);
    c.add_worker_with("w1", 8, &["--prefetch", "200"]);
    c.wait_for_workers(1);

    // 200 tasks printing 64 KiB to stdout and 64 KiB to stderr: 25 MiB of results, far more than
    // loopback TCP buffers hold while the master does not read...
    let noisy_file = c.dir.join("noisy");
    let noisy = format!(
        "echo $$ >> {}; head -c 65536 /dev/zero | tr '\\0' x; \
         head -c 65536 /dev/zero | tr '\\0' y >&2; sleep 0.2",
        noisy_file.display()
    );
    c.submit(&[
        "--count",
        "200",
        "--priority",
        "1",
        "--",
        "sh",
        "-c",
        &noisy,
    ]);
    // ...then 8 that run until killed, at a lower priority so that they start last, once the
    // worker has run every noisy one.
    let long_file = c.dir.join("long");
    let long = format!("echo $$ >> {}; exec sleep 60", long_file.display());
    c.submit(&["--count", "8", "--", "sh", "-c", &long]);
    // All 208 are on the worker: 8 slots + 200 prefetched.
    eventually(Duration::from_secs(20), "nothing queued", || {
        (c.status()["queued"].as_u64() == Some(0)).then_some(())
    });

    let stopped = Stopped::new(c.master_pid());
    let before = pids(&noisy_file).len();
    assert!(
        before <= 100,
        "{before} noisy tasks started before the master stopped: too few left to fill the socket"
    );
    eventually(
        Duration::from_secs(60),
        "the long tasks to start with the master stopped (the worker's loop must not wait for it)",
        || (pids(&long_file).len() == 8).then_some(()),
    );

    let sigterm_at = Instant::now();
    let worker = libc::pid_t::try_from(c.worker_pid("w1")).expect("a pid fits pid_t");
    // SAFETY: plain kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGTERM) }, 0, "SIGTERM");
    let status = eventually(
        Duration::from_secs(10),
        "the worker to exit after SIGTERM",
        || c.worker_exit("w1"),
    );
    eprintln!("the worker exited {:?} after SIGTERM", sigterm_at.elapsed());
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    // Each task is its own process group, led by the shell whose pid it wrote.
    eventually(
        Duration::from_secs(5),
        "the long tasks' process groups to be gone",
        || {
            pids(&long_file)
                .iter()
                // SAFETY: signal 0 only checks for existence.
                .all(|&pgid| unsafe { libc::kill(-pgid, 0) } == -1)
                .then_some(())
        },
    );
    drop(stopped);
}
