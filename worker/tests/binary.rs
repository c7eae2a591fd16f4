//! The `worker` binary against a fake master on loopback: signals, exit statuses, and what
//! happens to tasks when the worker dies.

use protocol::{
    encode_frame, Assignment, Attempt, FrameDecoder, FromMaster, Incarnation, Role, TaskId,
    TaskKind, TaskSpec, ToMaster, WorkerId,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(10);

fn poll_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

struct FakeMaster {
    listener: TcpListener,
}

struct Conn {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl FakeMaster {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        FakeMaster { listener }
    }

    fn addr(&self) -> String {
        self.listener.local_addr().expect("addr").to_string()
    }

    fn accept(&self, answer: FromMaster) -> Conn {
        let stream = poll_until("the worker to connect", || match self.listener.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        });
        stream.set_nonblocking(false).expect("blocking");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut conn = Conn {
            stream,
            decoder: FrameDecoder::new(),
        };
        conn.send(&FromMaster::Greeting {
            version: protocol::PROTOCOL_VERSION,
            nonce: vec![3; 32],
        });
        assert!(matches!(
            conn.recv(),
            ToMaster::Hello {
                role: Role::Worker(_),
                ..
            }
        ));
        conn.send(&answer);
        conn
    }
}

impl Conn {
    fn send(&mut self, msg: &FromMaster) {
        let mut out = Vec::new();
        encode_frame(msg, &mut out).expect("encode");
        self.stream.write_all(&out).expect("write");
    }

    fn recv(&mut self) -> ToMaster {
        loop {
            if let Some(msg) = self.decoder.next_frame().expect("valid frames") {
                return msg;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "the worker closed the connection");
            self.decoder.extend(&buf[..n]);
        }
    }

    /// Assigns a command that records its pid (which is also its process group) and sleeps.
    fn assign_sleeper(&mut self, pid_file: &PathBuf) -> libc::pid_t {
        let script = format!(
            "echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 30",
            pid_file.display()
        );
        let spec = TaskSpec::new(TaskKind::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            env: Vec::new(),
            cwd: None,
        });
        self.send(&FromMaster::Assign(vec![Assignment {
            task: TaskId(1),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
            spec: Arc::new(spec),
        }]));
        poll_until("the task to start", || {
            std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
        })
    }
}

fn welcome() -> FromMaster {
    FromMaster::Welcome {
        worker_id: Some(WorkerId(1)),
        heartbeat_interval_ms: 60_000,
        master_id: 1,
        incarnation: Incarnation(1),
        proof: Vec::new(),
    }
}

fn worker(master: &str) -> Child {
    worker_with(master, &[])
}

fn worker_with(master: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--master", master, "--slots", "2", "--name", "itest"])
        .args(extra)
        .env_remove("BALLAST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker binary")
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    poll_until("the worker to exit", || child.try_wait().expect("try_wait"))
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

fn pid_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ballast-worker-{test}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Whether `pid` no longer runs. A zombie counts as gone: once orphaned it waits for init, and
/// some sandboxes run an init that never reaps.
fn is_gone(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--master",
        "--slots",
        "--name",
        "--heartbeat",
        "--token",
        "--on-master-lost",
        "--prefetch",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn zero_heartbeat_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--heartbeat", "0ms"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("greater than zero"));
}

#[test]
fn rejected_worker_exits_2() {
    let master = FakeMaster::new();
    let mut child = worker(&master.addr());
    let _conn = master.accept(FromMaster::Rejected {
        reason: "bad token".into(),
        kind: protocol::RejectKind::Authentication,
    });
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(2));
    assert!(stderr_of(&mut child).contains("bad token"));
}

#[cfg(target_os = "linux")]
#[test]
fn sigterm_stops_tasks_and_exits_0() {
    let master = FakeMaster::new();
    let mut child = worker(&master.addr());
    let mut conn = master.accept(welcome());
    let pid_file = pid_file("sigterm");
    let task = conn.assign_sleeper(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut child));
    assert!(is_gone(task), "the task survived the worker");
}

#[cfg(target_os = "linux")]
#[test]
fn sigkilled_worker_takes_its_tasks_down() {
    let master = FakeMaster::new();
    let mut child = worker_with(&master.addr(), &["--tasks-die-with-worker"]);
    let mut conn = master.accept(welcome());
    let pid_file = pid_file("sigkill");
    let task = conn.assign_sleeper(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    child.kill().expect("SIGKILL the worker");
    wait_exit(&mut child);
    poll_until("the task to die with its worker", || {
        is_gone(task).then_some(())
    });
}
