use super::*;
use protocol::{Attempt, Incarnation, TaskId, TaskSpec};
use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};

/// Generous: a loaded 2-core CI machine can be slow to fork, but nothing here should take long.
const PATIENCE: Duration = Duration::from_secs(10);

struct Harness {
    exec: Executor<Completion>,
    rx: Receiver<Completion>,
    done: Vec<Completion>,
}

impl Harness {
    fn new(kill_grace: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        Harness {
            exec: Executor::new(tx, kill_grace),
            rx,
            done: Vec::new(),
        }
    }

    fn start(&mut self, id: u64, kind: TaskKind, timeout_ms: Option<u64>) -> TaskRef {
        let assignment = assignment(id, kind, timeout_ms);
        assert!(self.exec.start(Instant::now(), &assignment, &mut self.done));
        assignment.task_ref()
    }

    /// Puts a command on standby (see `Executor::stand_by`).
    fn stand_by(&mut self, id: u64, kind: TaskKind, timeout_ms: Option<u64>) -> TaskRef {
        let assignment = assignment(id, kind, timeout_ms);
        assert!(self
            .exec
            .stand_by(Instant::now(), &assignment, &mut self.done));
        assignment.task_ref()
    }

    fn take_started(&mut self) -> Vec<TaskRef> {
        let mut started = Vec::new();
        self.exec.take_started(&mut started);
        started
    }

    /// Drives the executor the way the session does until `task` completes.
    fn wait_for(&mut self, task: TaskRef) -> Completion {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(i) = self.done.iter().position(|c| c.task == task.task) {
                return self.done.remove(i);
            }
            let now = Instant::now();
            assert!(now < deadline, "task {} did not finish", task.task);
            let wake = self
                .exec
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(c) => {
                    assert!(self.exec.handle_finished(&c));
                    self.done.push(c);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("executor channel closed"),
            }
            self.exec.handle_timeout(Instant::now(), &mut self.done);
        }
    }

    /// Waits until the command `task` has a process group, and returns it.
    fn pgid(&self, task: TaskRef) -> libc::pid_t {
        poll_until("the child to be spawned", || self.exec.pgid(task))
    }
}

/// Attempt 1 of task `id`.
fn assignment(id: u64, kind: TaskKind, timeout_ms: Option<u64>) -> Assignment {
    let mut spec = TaskSpec::new(kind);
    spec.timeout_ms = timeout_ms;
    Assignment {
        task: TaskId(id),
        attempt: Attempt(1),
        incarnation: Incarnation(1),
        spec: Arc::new(spec),
    }
}

fn poll_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sh(script: &str) -> TaskKind {
    TaskKind::Command {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        cwd: None,
    }
}

/// Whether no process of group `pgid` is alive. Members that died after their parent are reaped
/// by init; some sandboxes run an init that never reaps, so a zombie member counts as gone.
fn group_is_gone(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(-pgid, 0) } == -1 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    live_members(pgid) == 0
}

#[cfg(target_os = "linux")]
fn live_members(pgid: libc::pid_t) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return usize::MAX;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // After the command name's closing parenthesis: state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
        })
        .count()
}

#[cfg(not(target_os = "linux"))]
fn live_members(_pgid: libc::pid_t) -> usize {
    usize::MAX
}

#[test]
fn command_exit_code_and_tails() {
    let mut h = Harness::new(KILL_GRACE);
    let t = h.start(1, sh("echo hi; echo err >&2; exit 3"), None);
    let c = h.wait_for(t);
    assert_eq!(
        c.outcome,
        TaskOutcome::Exited {
            code: 3,
            stdout_tail: "hi\n".into(),
            stderr_tail: "err\n".into(),
        }
    );
    assert_eq!(h.exec.running(), 0);
}

#[test]
fn many_commands_at_once_all_complete_with_their_own_output() {
    let mut h = Harness::new(KILL_GRACE);
    let tasks: Vec<TaskRef> = (1..=40)
        .map(|id| h.start(id, sh(&format!("echo out{id}; echo err{id} >&2")), None))
        .collect();
    assert_eq!(h.exec.running(), 40);
    for (id, t) in (1..=40).zip(tasks) {
        assert_eq!(
            h.wait_for(t).outcome,
            TaskOutcome::Exited {
                code: 0,
                stdout_tail: format!("out{id}\n"),
                stderr_tail: format!("err{id}\n"),
            }
        );
    }
    assert_eq!(h.exec.running(), 0);
}

/// The IO thread stops reading a pipe whose output buffer is full and reads on once the loop
/// took some: every byte arrives, in order, and the command completes.
#[test]
fn streamed_output_is_paced_by_the_loop_and_arrives_whole() {
    let (tx, rx) = mpsc::channel();
    let mut exec = Executor::new(tx, KILL_GRACE).with_output(Arc::new(|| {}));
    let total = 3 * OUTPUT_BUFFER_BYTES + 12_345;
    let assignment = Assignment {
        task: TaskId(1),
        attempt: Attempt(1),
        incarnation: Incarnation(1),
        spec: Arc::new(TaskSpec::new(sh(&format!("head -c {total} /dev/zero")))),
    };
    let mut done = Vec::new();
    assert!(exec.start(Instant::now(), &assignment, &mut done));
    let task = assignment.task_ref();
    let buffered =
        |exec: &Executor<Completion>| exec.outputs.get(&task).map_or(0, |b| b[0].buffered());
    // Nothing is taken until the buffer is full: the command waits on its pipe meanwhile.
    poll_until("the output buffer to fill", || {
        (buffered(&exec) >= OUTPUT_BUFFER_BYTES).then_some(())
    });
    let mut chunks = Vec::new();
    let completion = poll_until("the command to finish", || {
        exec.take_output(usize::MAX, &mut chunks);
        rx.try_recv().ok()
    });
    assert!(exec.handle_finished(&completion));
    exec.finish_output(task, &mut chunks);
    let mut offset = 0;
    for chunk in chunks.iter().filter(|c| c.stream == OutputStream::Stdout) {
        assert_eq!(chunk.offset, offset);
        assert!(chunk.bytes.iter().all(|&b| b == 0));
        offset += chunk.bytes.len() as u64;
    }
    assert_eq!(offset, total as u64);
    match completion.outcome {
        TaskOutcome::Exited {
            code, stdout_tail, ..
        } => {
            assert_eq!(code, 0);
            assert_eq!(stdout_tail.len(), TAIL_BYTES);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Kernels before 5.3 have no pidfds: exits are then found by polling `waitid(WNOWAIT)`.
#[test]
fn without_pidfds_commands_exit_and_are_cancelled() {
    let mut h = Harness::new(KILL_GRACE);
    h.exec = Executor::new(h.exec.events.clone(), KILL_GRACE).without_pidfds();
    let t = h.start(1, sh("echo hi; exit 3"), None);
    assert_eq!(
        h.wait_for(t).outcome,
        TaskOutcome::Exited {
            code: 3,
            stdout_tail: "hi\n".into(),
            stderr_tail: String::new(),
        }
    );
    let t = h.start(2, sh("sleep 30 & sleep 30"), None);
    let pgid = h.pgid(t);
    h.exec.cancel(Instant::now(), t, &mut h.done);
    assert_eq!(h.wait_for(t).outcome, TaskOutcome::Cancelled);
    poll_until("the group to die", || group_is_gone(pgid).then_some(()));
}

#[test]
fn command_env_and_cwd() {
    let mut h = Harness::new(KILL_GRACE);
    let kind = TaskKind::Command {
        argv: vec!["sh".into(), "-c".into(), "echo $BALLAST_X; pwd".into()],
        env: vec![("BALLAST_X".into(), "forty two".into())],
        cwd: Some("/".into()),
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited {
            code, stdout_tail, ..
        } => {
            assert_eq!(code, 0);
            assert_eq!(stdout_tail, "forty two\n/\n");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_task_variable_overrides_the_workers_and_the_last_of_a_repeated_one_wins() {
    let mut h = Harness::new(KILL_GRACE);
    // `env` by path: the clone spawn runs it (see `command::spawn`), and it prints the
    // environment as it came, where a shell would fold repeated names.
    let kind = TaskKind::Command {
        argv: vec!["/usr/bin/env".into()],
        env: vec![
            ("BALLAST_DUP".into(), "first".into()),
            ("HOME".into(), "/task-home".into()),
            ("BALLAST_DUP".into(), "last".into()),
        ],
        cwd: None,
    };
    let t = h.start(1, kind, None);
    let TaskOutcome::Exited {
        code: 0,
        stdout_tail,
        ..
    } = h.wait_for(t).outcome
    else {
        panic!("env did not exit 0");
    };
    let named = |name: &str| -> Vec<&str> {
        stdout_tail
            .lines()
            .filter(|l| l.starts_with(&format!("{name}=")))
            .collect()
    };
    assert_eq!(named("HOME"), ["HOME=/task-home"]);
    assert_eq!(named("BALLAST_DUP"), ["BALLAST_DUP=last"]);
}

#[test]
fn death_by_signal_is_128_plus_n() {
    let mut h = Harness::new(KILL_GRACE);
    let t = h.start(1, sh("kill -KILL $$"), None);
    assert!(matches!(
        h.wait_for(t).outcome,
        TaskOutcome::Exited { code: 137, .. }
    ));
}

#[test]
fn long_output_keeps_the_tail() {
    let mut h = Harness::new(KILL_GRACE);
    // 200,000 lines of 7 bytes: well over the 64 KiB tail.
    let t = h.start(1, sh("seq 1000001 1200000"), None);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited { stdout_tail, .. } => {
            assert_eq!(stdout_tail.len(), TAIL_BYTES);
            assert!(stdout_tail.ends_with("1199999\n1200000\n"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn missing_program_fails() {
    let mut h = Harness::new(KILL_GRACE);
    let kind = TaskKind::Command {
        argv: vec!["/nonexistent/ballast-no-such-program".into()],
        env: Vec::new(),
        cwd: None,
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Failed { error } => assert!(error.contains("no such program"), "{error}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_cwd_fails_with_a_clear_message() {
    let mut h = Harness::new(KILL_GRACE);
    let kind = TaskKind::Command {
        argv: vec!["true".into()],
        env: Vec::new(),
        cwd: Some("/nonexistent/ballast-dir".into()),
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Failed { error } => assert!(error.contains("working directory"), "{error}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn timeout_kills_the_whole_group() {
    let mut h = Harness::new(KILL_GRACE);
    let t = h.start(1, sh("echo started; sleep 30"), Some(300));
    let pgid = h.pgid(t);
    let c = h.wait_for(t);
    match c.outcome {
        TaskOutcome::TimedOut { stdout_tail, .. } => assert_eq!(stdout_tail, "started\n"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(c.run_ms >= 300, "{}", c.run_ms);
    poll_until("the process group to die", || {
        group_is_gone(pgid).then_some(())
    });
}

#[test]
fn sigterm_ignored_gets_sigkill_after_grace() {
    let mut h = Harness::new(Duration::from_millis(200));
    // The ignored SIGTERM is inherited by sleep too; only SIGKILL ends them.
    let t = h.start(1, sh("trap '' TERM; sleep 30; echo survived"), Some(100));
    let pgid = h.pgid(t);
    let c = h.wait_for(t);
    assert!(matches!(c.outcome, TaskOutcome::TimedOut { .. }), "{c:?}");
    assert!(c.run_ms >= 300, "{}", c.run_ms);
    poll_until("the process group to die", || {
        group_is_gone(pgid).then_some(())
    });
}

#[test]
fn cancel_kills_the_whole_group() {
    let mut h = Harness::new(KILL_GRACE);
    let t = h.start(1, sh("sleep 30 & sleep 30; wait"), None);
    let pgid = h.pgid(t);
    h.exec.cancel(Instant::now(), t, &mut h.done);
    assert_eq!(h.wait_for(t).outcome, TaskOutcome::Cancelled);
    poll_until("the process group to die", || {
        group_is_gone(pgid).then_some(())
    });
}

#[test]
fn leftover_background_job_does_not_hold_the_task() {
    let mut h = Harness::new(KILL_GRACE);
    // The background sleep keeps stdout open; the task still ends when sh does.
    let t = h.start(1, sh("sleep 30 & echo done"), None);
    let pgid = h.pgid(t);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited {
            code, stdout_tail, ..
        } => assert_eq!((code, stdout_tail.as_str()), (0, "done\n")),
        other => panic!("unexpected {other:?}"),
    }
    poll_until("the process group to die", || {
        group_is_gone(pgid).then_some(())
    });
}

#[test]
fn zero_sleep_completes_in_the_same_call() {
    let mut h = Harness::new(KILL_GRACE);
    h.start(1, TaskKind::Sleep { ms: 0 }, None);
    h.start(2, TaskKind::Spin { ms: 0 }, None);
    assert_eq!(h.done.len(), 2);
    assert!(h
        .done
        .iter()
        .all(|c| matches!(c.outcome, TaskOutcome::Exited { code: 0, .. }) && c.run_ms == 0));
    assert_eq!(h.exec.running(), 0);
    assert_eq!(h.exec.poll_timeout(), None);
}

#[test]
fn many_zero_sleeps_need_no_timers() {
    let mut h = Harness::new(KILL_GRACE);
    for id in 1..=10_000 {
        h.start(id, TaskKind::Sleep { ms: 0 }, None);
    }
    assert_eq!(h.done.len(), 10_000);
    assert!(h.exec.timers.is_empty() && h.exec.running.is_empty());
}

#[test]
fn sleep_ends_on_its_timer() {
    let mut h = Harness::new(KILL_GRACE);
    let start = Instant::now();
    let t = h.start(1, TaskKind::Sleep { ms: 50 }, None);
    assert!(h.done.is_empty());
    let deadline = h.exec.poll_timeout().expect("a timer");
    assert!(deadline >= start + Duration::from_millis(50));
    // Early or spurious calls do nothing.
    h.exec.handle_timeout(start, &mut h.done);
    assert!(h.done.is_empty());
    h.exec.handle_timeout(deadline, &mut h.done);
    let c = h.wait_for(t);
    assert!(matches!(c.outcome, TaskOutcome::Exited { code: 0, .. }));
    assert!(c.run_ms >= 50);
}

#[test]
fn sleep_timeout_and_cancel() {
    let mut h = Harness::new(KILL_GRACE);
    let timed = h.start(1, TaskKind::Sleep { ms: 60_000 }, Some(20));
    let cancelled = h.start(2, TaskKind::Sleep { ms: 60_000 }, None);
    h.exec.cancel(Instant::now(), cancelled, &mut h.done);
    assert_eq!(h.wait_for(cancelled).outcome, TaskOutcome::Cancelled);
    assert!(matches!(
        h.wait_for(timed).outcome,
        TaskOutcome::TimedOut { .. }
    ));
    // The cancelled sleep's timer is stale and must not produce anything.
    h.exec
        .handle_timeout(Instant::now() + Duration::from_secs(120), &mut h.done);
    assert!(h.done.is_empty());
    assert_eq!(h.exec.running(), 0);
}

#[test]
fn spin_runs_times_out_and_cancels() {
    let mut h = Harness::new(KILL_GRACE);
    let ran = h.start(1, TaskKind::Spin { ms: 30 }, None);
    let timed = h.start(2, TaskKind::Spin { ms: 60_000 }, Some(30));
    let c = h.wait_for(ran);
    assert!(matches!(c.outcome, TaskOutcome::Exited { code: 0, .. }));
    assert!(c.run_ms >= 30);
    assert!(matches!(
        h.wait_for(timed).outcome,
        TaskOutcome::TimedOut { .. }
    ));
    let cancelled = h.start(3, TaskKind::Spin { ms: 60_000 }, None);
    h.exec.cancel(Instant::now(), cancelled, &mut h.done);
    assert_eq!(h.wait_for(cancelled).outcome, TaskOutcome::Cancelled);
    // Two spins ran at once, so two threads; the third reused one.
    assert_eq!(h.exec.spins.threads, 2);
}

#[test]
fn duplicate_assignment_is_ignored() {
    let mut h = Harness::new(KILL_GRACE);
    h.start(1, TaskKind::Sleep { ms: 60_000 }, None);
    let again = Assignment {
        task: TaskId(1),
        attempt: Attempt(1),
        incarnation: Incarnation(1),
        spec: Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 1 })),
    };
    assert!(!h.exec.start(Instant::now(), &again, &mut h.done));
    assert_eq!(h.exec.running(), 1);
}

#[test]
fn cancel_all_then_kill_all_stops_everything() {
    let mut h = Harness::new(Duration::from_secs(60));
    let cmd = h.start(1, sh("trap '' TERM; sleep 30"), None);
    let spin = h.start(2, TaskKind::Spin { ms: 60_000 }, None);
    let sleep = h.start(3, TaskKind::Sleep { ms: 60_000 }, None);
    let pgid = h.pgid(cmd);
    h.exec.cancel_all(Instant::now(), &mut h.done);
    h.exec.kill_all();
    for t in [cmd, spin, sleep] {
        assert_eq!(h.wait_for(t).outcome, TaskOutcome::Cancelled);
    }
    poll_until("the process group to die", || {
        group_is_gone(pgid).then_some(())
    });
}

#[test]
fn stale_timers_do_not_pile_up() {
    let mut h = Harness::new(KILL_GRACE);
    for id in 1..=5_000 {
        let t = h.start(id, TaskKind::Sleep { ms: 3_600_000 }, None);
        h.exec.cancel(Instant::now(), t, &mut h.done);
    }
    assert_eq!(h.done.len(), 5_000);
    assert_eq!(h.exec.running(), 0);
    assert!(
        h.exec.timers.len() <= 1025,
        "{} timers",
        h.exec.timers.len()
    );
}

/// A pipe standing in for the sentinel: the executor writes to `link`, the test reads `records`.
struct FakeSentinel {
    link: Arc<Link>,
    pipe: std::fs::File,
    buf: Vec<u8>,
}

impl FakeSentinel {
    fn new() -> Self {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors; both are fresh and become owned here.
        let (read, write) = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            // Only the read end: the test polls it, the executor writes as it would for real.
            let flags = libc::fcntl(fds[0], libc::F_GETFL);
            assert_eq!(
                libc::fcntl(fds[0], libc::F_SETFL, flags | libc::O_NONBLOCK),
                0
            );
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        FakeSentinel {
            link: Arc::new(Link::new(write, None)),
            pipe: read,
            buf: Vec::new(),
        }
    }

    /// Everything written so far, as raw bytes.
    fn drain(&mut self) -> &[u8] {
        use std::io::Read;
        let mut chunk = [0u8; 256];
        loop {
            match self.pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading the fake sentinel: {e}"),
            }
        }
        &self.buf
    }
}

fn records(pgids: &[(u8, libc::pid_t)]) -> Vec<u8> {
    pgids
        .iter()
        .flat_map(|&(tag, pgid)| {
            let mut r = vec![tag];
            r.extend(pgid.to_le_bytes());
            r
        })
        .collect()
}

#[test]
fn the_sentinel_learns_of_a_group_at_spawn_and_forgets_it_at_reap() {
    let mut sentinel = FakeSentinel::new();
    let mut h = Harness::new(KILL_GRACE);
    h.exec = Executor::new(h.exec.events.clone(), KILL_GRACE).with_sentinel(sentinel.link.clone());
    let t = h.start(1, sh("sleep 30"), None);
    let pgid = h.pgid(t);
    poll_until("the spawn to be recorded", || {
        (sentinel.drain() == records(&[(b'+', pgid)]).as_slice()).then_some(())
    });
    h.exec.cancel(Instant::now(), t, &mut h.done);
    assert_eq!(h.wait_for(t).outcome, TaskOutcome::Cancelled);
    // The record precedes the completion, which is sent after the reap.
    assert_eq!(sentinel.drain(), records(&[(b'+', pgid), (b'-', pgid)]));
}

#[test]
fn a_command_that_cannot_start_is_never_recorded() {
    let mut sentinel = FakeSentinel::new();
    let mut h = Harness::new(KILL_GRACE);
    h.exec = Executor::new(h.exec.events.clone(), KILL_GRACE).with_sentinel(sentinel.link.clone());
    let kind = TaskKind::Command {
        argv: vec!["/nonexistent/ballast-test-program".into()],
        env: Vec::new(),
        cwd: None,
    };
    let t = h.start(1, kind, None);
    assert!(matches!(h.wait_for(t).outcome, TaskOutcome::Failed { .. }));
    assert!(sentinel.drain().is_empty());
}

#[test]
fn commands_still_run_when_the_sentinel_is_gone() {
    let sentinel = FakeSentinel::new();
    let link = sentinel.link.clone();
    drop(sentinel);
    let mut h = Harness::new(KILL_GRACE);
    h.exec = Executor::new(h.exec.events.clone(), KILL_GRACE).with_sentinel(link);
    for id in 1..=2 {
        let t = h.start(id, sh("echo ok"), None);
        match h.wait_for(t).outcome {
            TaskOutcome::Exited {
                code, stdout_tail, ..
            } => assert_eq!((code, stdout_tail.as_str()), (0, "ok\n")),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_task_cannot_set_the_sentinel_mark() {
    let mut h = Harness::new(KILL_GRACE);
    let script = format!("echo \"[${}]\"", crate::sentinel::MARK_VAR);
    let kind = TaskKind::Command {
        argv: vec!["sh".into(), "-c".into(), script],
        env: vec![(crate::sentinel::MARK_VAR.into(), "1:2:other-worker".into())],
        cwd: None,
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited { stdout_tail, .. } => {
            assert!(!stdout_tail.contains("other-worker"), "{stdout_tail:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---- descendants that left the process group (setsid) ------------------------------------------

/// Live (not zombie) processes whose environment carries this command mark.
fn marked_alive(mark: &str) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                .unwrap_or(true);
            !zombie
                && crate::sentinel::env_value(&environ, tree::TASK_MARK_VAR)
                    == Some(mark.as_bytes())
        })
        .collect()
}

/// Starts `script`, waits until a process that left the group (`setsid sleep 30`) runs with the
/// command's mark, and returns the task and its mark.
fn start_escaping(h: &mut Harness, script: &str, timeout_ms: Option<u64>) -> (TaskRef, String) {
    let t = h.start(1, sh(script), timeout_ms);
    let pgid = h.pgid(t);
    let mark = h.exec.task_mark(t).expect("a command has a mark");
    poll_until("the setsid child", || {
        marked_alive(&mark)
            .into_iter()
            .any(|pid| crate::procfs::process_group(pid).is_some_and(|g| g != pgid))
            .then_some(())
    });
    (t, mark)
}

#[cfg(target_os = "linux")]
#[test]
fn timeout_kills_what_left_the_group() {
    let mut h = Harness::new(KILL_GRACE);
    let (t, mark) = start_escaping(&mut h, "setsid sleep 30 & wait", Some(300));
    assert!(matches!(
        h.wait_for(t).outcome,
        TaskOutcome::TimedOut { .. }
    ));
    poll_until("the setsid child to die", || {
        marked_alive(&mark).is_empty().then_some(())
    });
}

#[cfg(target_os = "linux")]
#[test]
fn cancel_kills_what_left_the_group() {
    let mut h = Harness::new(KILL_GRACE);
    let (t, mark) = start_escaping(&mut h, "setsid sleep 30 & wait", None);
    h.exec.cancel(Instant::now(), t, &mut h.done);
    assert_eq!(h.wait_for(t).outcome, TaskOutcome::Cancelled);
    poll_until("the setsid child to die", || {
        marked_alive(&mark).is_empty().then_some(())
    });
}

#[cfg(target_os = "linux")]
#[test]
fn a_setsid_child_holding_the_output_goes_with_the_task() {
    let mut h = Harness::new(KILL_GRACE);
    let (t, mark) = start_escaping(&mut h, "setsid sleep 30 & sleep 0.2; echo done", None);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited {
            code, stdout_tail, ..
        } => assert_eq!((code, stdout_tail.as_str()), (0, "done\n")),
        other => panic!("unexpected {other:?}"),
    }
    poll_until("the setsid child to die", || {
        marked_alive(&mark).is_empty().then_some(())
    });
}

#[test]
fn a_task_cannot_set_its_own_mark() {
    let mut h = Harness::new(KILL_GRACE);
    let script = format!("echo \"[${}]\"", tree::TASK_MARK_VAR);
    let kind = TaskKind::Command {
        argv: vec!["sh".into(), "-c".into(), script],
        env: vec![(tree::TASK_MARK_VAR.into(), "forged".into())],
        cwd: None,
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Exited { stdout_tail, .. } => {
            assert!(!stdout_tail.contains("forged"), "{stdout_tail:?}");
            assert!(
                stdout_tail.len() > 4,
                "the real mark is set: {stdout_tail:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A command that runs until `gate` exists.
fn gated(gate: &std::path::Path) -> TaskKind {
    sh(&format!(
        "while [ ! -e '{}' ]; do sleep 0.01; done",
        gate.display()
    ))
}

#[test]
fn a_command_on_standby_starts_when_the_running_one_completes() {
    let dir = tempfile_dir("standby-start");
    let gate = dir.join("gate");
    let mut h = Harness::new(KILL_GRACE);
    let a = h.start(1, gated(&gate), None);
    // Its timeout counts from its start: it waits on standby far longer than 300 ms.
    let b = h.stand_by(2, sh("echo b"), Some(300));
    assert_eq!((h.exec.running(), h.exec.standing_by()), (1, 1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        h.take_started().is_empty(),
        "started before a slot was free"
    );
    std::fs::write(&gate, "").expect("gate");
    let _ = h.wait_for(a);
    // The IO thread started it before it reported the first one's end.
    assert_eq!(h.take_started(), [b]);
    assert_eq!((h.exec.running(), h.exec.standing_by()), (1, 0));
    let c = h.wait_for(b);
    assert_eq!(
        c.outcome,
        TaskOutcome::Exited {
            code: 0,
            stdout_tail: "b\n".into(),
            stderr_tail: String::new(),
        }
    );
    assert!(
        c.run_ms < 300,
        "its run counts from its start: {} ms",
        c.run_ms
    );
    assert_eq!(h.exec.running(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_command_on_standby_is_withdrawn_or_cancelled_and_never_runs() {
    let dir = tempfile_dir("standby-withdraw");
    let gate = dir.join("gate");
    let ran = dir.join("ran");
    let mut h = Harness::new(KILL_GRACE);
    let a = h.start(1, gated(&gate), None);
    let touch = sh(&format!("touch '{}'", ran.display()));
    let b = h.stand_by(2, touch.clone(), None);
    let c = h.stand_by(3, touch, None);
    let back = h.exec.withdraw(&[b]);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].task_ref(), b);
    h.exec.cancel(Instant::now(), c, &mut h.done);
    let cancelled = h.done.pop().expect("cancelled at once");
    assert_eq!(
        (cancelled.task_ref(), cancelled.outcome),
        (c, TaskOutcome::Cancelled)
    );
    assert_eq!((h.exec.running(), h.exec.standing_by()), (1, 0));
    assert!(!h.exec.is_running(b) && !h.exec.is_running(c));
    std::fs::write(&gate, "").expect("gate");
    let _ = h.wait_for(a);
    assert!(h.take_started().is_empty());
    assert!(h.rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(!ran.exists(), "a withdrawn or cancelled command ran");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_free_slot_promotes_a_command_on_standby_and_its_timeout_starts_then() {
    let mut h = Harness::new(Duration::from_millis(100));
    let b = h.stand_by(1, sh("sleep 5"), Some(200));
    assert!(h.take_started().is_empty());
    assert!(h.exec.promote(Instant::now()));
    assert!(!h.exec.promote(Instant::now()), "nothing left on standby");
    assert_eq!(h.take_started(), [b]);
    assert!(matches!(
        h.wait_for(b).outcome,
        TaskOutcome::TimedOut { .. }
    ));
}

#[test]
fn only_commands_go_on_standby() {
    let mut h = Harness::new(KILL_GRACE);
    let t = h.stand_by(1, TaskKind::Sleep { ms: 0 }, None);
    assert_eq!(h.exec.standing_by(), 0);
    assert_eq!(h.wait_for(t).task_ref(), t, "a synthetic task runs at once");
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The clone spawn (see `clone_spawn`): the child unblocks every signal and gets SIGPIPE's
/// default back, though the test process, like the worker, ignores SIGPIPE (Rust's runtime).
/// grep reads its own status: a shell's would show dash blocking every signal while it waits
/// for a child it forked, which failed this test in CI.
#[test]
fn a_command_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    let mut h = Harness::new(KILL_GRACE);
    let grep = TaskKind::Command {
        argv: ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
            .map(String::from)
            .to_vec(),
        env: Vec::new(),
        cwd: None,
    };
    let t = h.start(1, grep, None);
    let TaskOutcome::Exited {
        code: 0,
        stdout_tail,
        ..
    } = h.wait_for(t).outcome
    else {
        panic!("the command failed");
    };
    let mask = |name: &str| {
        let line = stdout_tail
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout_tail}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or(""), 16).expect("hex mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "{stdout_tail}");
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "{stdout_tail}");
}

#[test]
fn a_program_given_by_a_path_that_cannot_run_fails_with_the_reason() {
    let dir = tempfile_dir("not-executable");
    let program = dir.join("script");
    std::fs::write(&program, "#!/bin/sh\ntrue\n").expect("write");
    let mut h = Harness::new(KILL_GRACE);
    let kind = TaskKind::Command {
        argv: vec![program.display().to_string()],
        env: Vec::new(),
        cwd: None,
    };
    let t = h.start(1, kind, None);
    match h.wait_for(t).outcome {
        TaskOutcome::Failed { error } => assert!(error.contains("permission denied"), "{error}"),
        other => panic!("unexpected {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
