//! Identities that cross the master's boundaries, checked from outside: a connection id is never
//! handed to a new connection while output for the old one can still reach it, and the log never
//! prints an internal worker id where a worker name could be read.

mod common;

use common::{eventually, Cluster, MASTER};
use protocol::{encode_frame, FrameDecoder, FromMaster, ToMaster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

/// A child process killed (and reaped) on drop unless it was waited for: a failing test leaves
/// nothing running.
struct Guarded(Option<Child>);

impl Guarded {
    /// Waits for the child to exit, killing it and panicking past `limit`.
    fn wait(mut self, limit: Duration, what: &str) -> Output {
        let mut child = self.0.take().expect("not yet waited for");
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{what} did not finish within {limit:?}");
                }
            }
        }
        // Exited: its few lines of output sit in the pipes.
        child.wait_with_output().expect("output of an exited child")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads one whole frame from a blocking stream.
fn read_frame(stream: &mut TcpStream) -> FromMaster {
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(msg) = decoder.next_frame::<FromMaster>().expect("a valid frame") {
            return msg;
        }
        let n = stream.read(&mut buf).expect("read from the master");
        assert!(n > 0, "the master closed before a whole frame");
        decoder.extend(&buf[..n]);
    }
}

/// Established TCP connections from this host to `port` on 127.0.0.1, as the kernel sees them
/// (accepted or still in the listener's backlog).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// One connection breaks the protocol and a `master status` is accepted in the same loop turn
/// (the master is stopped between the two connects, so both wait for it at once). Before ids had
/// generations, the status client inherited the broken connection's slot and got its `Error` and
/// close.
#[test]
fn a_connection_accepted_as_another_fails_gets_none_of_its_output() {
    let c = Cluster::start(&[]);
    let port = c.addr.parse::<SocketAddr>().expect("master address").port();
    let mut broken = Vec::new();
    // A request before `Hello` (the core answers it with `Error` and a close), then a header
    // promising 4 GiB (the shell drops the connection at once): both in the same read.
    encode_frame(&ToMaster::Status, &mut broken).expect("encode");
    broken.extend_from_slice(&[0xff; 4]);
    for round in 1..=10 {
        let mut bad = TcpStream::connect(&c.addr).expect("connect");
        bad.set_read_timeout(Some(LIMIT)).expect("timeout");
        // Accepted and greeted: the master holds this connection's id from here on.
        assert!(matches!(read_frame(&mut bad), FromMaster::Greeting { .. }));
        let before = established_to(port);
        c.signal_master(libc::SIGSTOP);
        bad.write_all(&broken).expect("write");
        let status = Guarded(Some(
            Command::new(MASTER)
                .args(["status", "--master", &c.addr])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("status runs"),
        ));
        // The kernel completes the connect without the master; wait until it has.
        eventually(LIMIT, "status to connect to the stopped master", || {
            (established_to(port) > before).then_some(())
        });
        c.signal_master(libc::SIGCONT);
        let out = status.wait(LIMIT, "master status");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("no workers connected") && stdout.contains("0 queued"),
            "round {round}: unexpected status output: {stdout}"
        );
    }
}

/// Workers started as `w2`, then `w1`: the line saying `w2` joined must not also say `w1` (the
/// first worker's internal id used to print as `w1`), and the other way round.
#[test]
fn log_lines_never_show_an_internal_id_that_reads_as_a_worker_name() {
    let mut c = Cluster::start(&[]);
    c.add_worker("w2", 1);
    c.wait_for_workers(1);
    c.add_worker("w1", 1);
    c.wait_for_workers(2);
    let log = eventually(LIMIT, "both join lines in the master log", || {
        let log = c.master_log();
        let joins = log.lines().filter(|l| l.contains(" joined")).count();
        (joins >= 2).then_some(log)
    });
    for (name, other) in [("w2", "w1"), ("w1", "w2")] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("worker {name} ")) && l.contains("joined"))
            .collect();
        assert_eq!(lines.len(), 1, "one join line for {name}:\n{log}");
        assert!(
            !lines[0].contains(other),
            "the line for {name} joining also says {other}: {}",
            lines[0]
        );
    }
}

/// A client pipelines its first request after its `Hello`, and times the `Welcome` (5 s). The
/// master answers the `Hello` before it decodes what follows, so a request that takes seconds (10
/// million tasks) cannot hold it. Seen here without a clock: a broken frame right behind the
/// `Hello` closes the connection, and the `Welcome` must be out first (it was lost before).
#[test]
fn a_hello_is_answered_before_the_frames_pipelined_behind_it() {
    let c = Cluster::start(&[]);
    let mut pipelined = Vec::new();
    let hello = ToMaster::Hello {
        version: protocol::PROTOCOL_VERSION,
        role: protocol::Role::Client,
        auth: Vec::new(),
        nonce: vec![7; protocol::auth::NONCE_LEN],
    };
    encode_frame(&hello, &mut pipelined).expect("encode");
    pipelined.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]); // a whole frame, not a message
    let mut s = TcpStream::connect(&c.addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(&pipelined).expect("write");
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(msg) = decoder.next_frame::<FromMaster>().expect("a valid frame") {
            frames.push(msg.name());
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break, // closed (or reset, with our bytes unread)
            Ok(n) => decoder.extend(&buf[..n]),
        }
    }
    assert_eq!(frames, ["Greeting", "Welcome"]);
    assert!(
        c.master_log().contains("closing"),
        "the broken frame was seen"
    );
}
