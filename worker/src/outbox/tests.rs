//! The backlog's accounting on its own, then the outbox with its writer thread on loopback.

use super::*;
use protocol::{Attempt, FrameDecoder, TaskId, TaskOutcome};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::sync::mpsc::{self, RecvTimeoutError};

const PATIENCE: Duration = Duration::from_secs(10);

fn completion(id: u64, output_bytes: usize) -> Completion {
    Completion {
        task: TaskId(id),
        attempt: Attempt(1),
        incarnation: protocol::Incarnation(1),
        outcome: TaskOutcome::Exited {
            code: 0,
            stdout_tail: "x".repeat(output_bytes),
            stderr_tail: String::new(),
        },
        run_ms: 1,
    }
}

#[test]
fn the_backlog_refuses_more_at_its_limit_and_says_when_half_is_written() {
    let t0 = Instant::now();
    let mut backlog = Backlog::new(100);
    assert!(backlog.accepting());
    let mut staged = vec![0u8; 60];
    assert!(!backlog.append(t0, &mut staged), "no writer waits yet");
    assert!(staged.is_empty(), "handed over");
    assert!(backlog.accepting(), "60 of 100");
    staged.resize(60, 1);
    backlog.append(t0, &mut staged);
    // 120 bytes: over the limit, which is checked before a turn's output, not within it.
    assert_eq!(backlog.unwritten(), 120);
    assert!(!backlog.accepting());
    assert!(!backlog.accepting(), "asking again changes nothing");

    let mut buf = Vec::new();
    backlog.take(&mut buf);
    assert_eq!((buf.len(), backlog.queued.len()), (120, 0));
    assert!(!backlog.wrote(t0, 60), "60 left: more than half the limit");
    assert!(backlog.wrote(t0, 10), "50 left: Drained, once");
    assert!(!backlog.wrote(t0, 10));
    assert!(backlog.accepting());
    assert!(!backlog.wrote(t0, 40), "nobody waits for Drained any more");
    assert_eq!((backlog.unwritten(), backlog.written), (0, 120));
}

#[test]
fn a_stall_is_measured_from_the_last_byte_written() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let timeout = 3 * second;
    let mut backlog = Backlog::new(1 << 20);
    assert_eq!(backlog.stall_deadline(timeout), None, "nothing waits");
    backlog.append(t0, &mut vec![7u8; 10]);
    assert_eq!(backlog.stall_deadline(timeout), Some(t0 + timeout));
    // More bytes behind the first do not move the start of the wait.
    backlog.append(t0 + second, &mut vec![7u8; 10]);
    assert_eq!(backlog.stall_deadline(timeout), Some(t0 + timeout));

    let mut buf = Vec::new();
    backlog.take(&mut buf);
    backlog.wrote(t0 + 2 * second, 5);
    assert_eq!(
        backlog.stall_deadline(timeout),
        Some(t0 + 2 * second + timeout),
        "progress restarts the clock"
    );
    backlog.wrote(t0 + 4 * second, 15);
    assert_eq!(backlog.stall_deadline(timeout), None, "all written");
}

#[test]
fn appending_swaps_buffers_while_the_writer_keeps_up() {
    let t0 = Instant::now();
    let mut backlog = Backlog::new(1 << 20);
    backlog.writer_idle = true;
    let mut staged = Vec::with_capacity(64);
    staged.extend_from_slice(b"frame");
    let ptr = staged.as_ptr();
    assert!(backlog.append(t0, &mut staged), "an idle writer is woken");
    assert_eq!(backlog.queued.as_ptr(), ptr, "moved, not copied");
    assert!(!backlog.append(t0, &mut b"more".to_vec()), "woken once");
    assert_eq!(backlog.queued, b"framemore");
}

#[test]
fn completions_come_back_unless_their_whole_frame_was_written() {
    let mut unconfirmed = Unconfirmed::default();
    // Frames ending at 100 (tasks 1, 2) and 250 (task 3).
    unconfirmed.push(100, [completion(1, 0), completion(2, 0)].into_iter());
    unconfirmed.push(250, [completion(3, 0)].into_iter());
    unconfirmed.confirm(99);
    assert_eq!(unconfirmed.entries.len(), 3, "the first frame lacks a byte");
    unconfirmed.confirm(100);
    assert_eq!(unconfirmed.entries.len(), 1);
    let back = unconfirmed.reclaim(249);
    assert_eq!(
        back.iter().map(|c| c.task).collect::<Vec<_>>(),
        vec![TaskId(3)],
        "half a frame is no frame"
    );
    assert!(unconfirmed.reclaim(1000).is_empty());
}

/// A connected pair on loopback: ours, and the peer's.
fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    (ours, peer)
}

/// Every completion in the frames the peer can read until end of stream (a torn last frame is
/// ignored, as the master ignores it).
fn read_completions(mut peer: TcpStream) -> Vec<TaskId> {
    peer.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut ids = Vec::new();
    loop {
        while let Some(msg) = decoder.next_frame::<ToMaster>().expect("valid frames") {
            let ToMaster::Finished(done) = msg else {
                panic!("expected Finished, got {msg:?}");
            };
            ids.extend(done.iter().map(|c| c.task));
        }
        match peer.read(&mut buf) {
            Ok(0) => return ids,
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return ids,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn closing_on_a_peer_that_does_not_read_loses_no_completion() {
    let (ours, peer) = socket_pair();
    let (notes, heard) = mpsc::channel();
    let mut out = Outbox::start(
        Transport::plain(ours),
        Vec::new(),
        usize::MAX,
        move |note| notes.send(note).is_ok(),
    )
    .expect("writer thread");
    // 24 MiB in frames of 16 completions: far more than loopback buffers hold.
    const TASKS: u64 = 384;
    let mut batch = Vec::new();
    for id in 1..=TASKS {
        batch.push(completion(id, 64 << 10));
        if batch.len() == 16 {
            out.queue_finished(&mut batch);
        }
    }
    out.send(Instant::now());
    poll_until("the writer to fill the socket", || {
        let backlog = out.shared.lock();
        backlog.written > 0 && backlog.in_flight > 0
    });
    assert!(
        out.stall_deadline(Duration::ZERO).is_some(),
        "bytes are waiting"
    );

    let unsent = out.close();
    assert!(!unsent.is_empty(), "the socket cannot have taken 24 MiB");
    // The writer was blocked in `write` or about to be: the shutdown must end it all the same,
    // silently (the session asked for it).
    match heard.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => panic!("the writer thread did not exit"),
        Ok(note) => panic!("unexpected {note:?}"),
    }
    let mut seen: BTreeSet<TaskId> = read_completions(peer).into_iter().collect();
    let read = seen.len();
    seen.extend(unsent.iter().map(|c| c.task));
    assert_eq!(
        seen.len() as u64,
        TASKS,
        "every completion reached the peer or came back"
    );
    assert!(read > 0, "some frames were written before the close");
    let order: Vec<TaskId> = unsent.iter().map(|c| c.task).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "oldest first");
}

#[test]
fn a_full_outbox_refuses_more_until_the_peer_reads_half() {
    let (ours, peer) = socket_pair();
    let (notes, heard) = mpsc::channel();
    let mut out = Outbox::start(Transport::plain(ours), Vec::new(), 1 << 20, move |note| {
        notes.send(note).is_ok()
    })
    .expect("writer thread");
    // 24 MiB against a 1 MiB limit (loopback buffers take a few): refused until the peer has read
    // nearly all of it.
    const TASKS: usize = 384;
    let mut batch = Vec::new();
    for id in 1..=TASKS as u64 {
        batch.push(completion(id, 64 << 10));
        if batch.len() == 16 {
            out.queue_finished(&mut batch);
        }
    }
    out.send(Instant::now());
    assert!(!out.accepting());
    let reader = thread::spawn(move || read_completions(peer));
    match heard.recv_timeout(PATIENCE) {
        Ok(WriterNote::Drained) => {}
        other => panic!("expected Drained, got {other:?}"),
    }
    assert!(out.accepting());
    let unsent = out.close();
    drop(out);
    let mut seen: BTreeSet<TaskId> = reader.join().expect("reader").into_iter().collect();
    seen.extend(unsent.iter().map(|c| c.task));
    assert_eq!(
        seen.len(),
        TASKS,
        "every completion reached the peer or came back"
    );
}

#[test]
fn a_failed_write_is_reported() {
    let (ours, peer) = socket_pair();
    drop(peer);
    let (notes, heard) = mpsc::channel();
    let mut out = Outbox::start(
        Transport::plain(ours),
        Vec::new(),
        usize::MAX,
        move |note| notes.send(note).is_ok(),
    )
    .expect("writer thread");
    // The first write may still be taken (and answered with a reset); one of the next fails.
    let deadline = Instant::now() + PATIENCE;
    loop {
        out.queue(&ToMaster::Finished(vec![completion(1, 1 << 10)]));
        out.send(Instant::now());
        match heard.recv_timeout(Duration::from_millis(20)) {
            Ok(WriterNote::Failed(_)) => break,
            Ok(WriterNote::Drained) => panic!("nobody asked"),
            Err(RecvTimeoutError::Timeout) => {
                assert!(Instant::now() < deadline, "the failure was not reported")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the writer exited silently"),
        }
    }
}

#[test]
fn a_turn_to_an_idle_writer_is_written_by_the_loop_itself() {
    let (ours, peer) = socket_pair();
    let mut out = Outbox::start(Transport::plain(ours), Vec::new(), usize::MAX, |_| true)
        .expect("writer thread");
    let mut batch = vec![completion(7, 100)];
    out.queue_finished(&mut batch);
    out.send(Instant::now());
    // Written before `send` returned: no thread hop, nothing left waiting, nothing to reclaim.
    assert_eq!(out.stall_deadline(PATIENCE), None, "nothing waits");
    assert!(out.close().is_empty(), "the frame left whole");
    assert_eq!(read_completions(peer), [TaskId(7)]);
}

/// A TLS pair on loopback, the handshake done: our end as a worker's transport, and the peer's
/// socket with its session (a master stand-in).
fn tls_pair() -> (Transport, TcpStream, rustls::ServerConnection) {
    let dir = std::env::temp_dir().join(format!("ballast-outbox-tls-{}", std::process::id()));
    let (server, client) = protocol::tls::test_pair(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, mut peer) = socket_pair();
    peer.set_read_timeout(Some(PATIENCE)).expect("timeout");
    ours.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let handshake = thread::spawn(move || {
        let mut session = server.session().expect("session");
        while session.is_handshaking() {
            session.complete_io(&mut peer).expect("peer handshake");
        }
        (peer, session)
    });
    let ours = Transport::tls(ours, &client, "localhost:1").expect("our handshake");
    let (peer, session) = handshake.join().expect("peer thread");
    (ours, peer, session)
}

/// [`read_completions`] through the peer's TLS session: a torn last record is ignored, as a
/// torn last frame is.
fn read_tls_completions(mut peer: TcpStream, mut session: rustls::ServerConnection) -> Vec<TaskId> {
    let mut decoder = FrameDecoder::new();
    let mut plain = vec![0u8; 64 << 10];
    let mut ids = Vec::new();
    loop {
        while let Some(msg) = decoder.next_frame::<ToMaster>().expect("valid frames") {
            let ToMaster::Finished(done) = msg else {
                panic!("expected Finished, got {msg:?}");
            };
            ids.extend(done.iter().map(|c| c.task));
        }
        match session.reader().read(&mut plain) {
            Ok(0) => return ids,
            Ok(n) => {
                decoder.extend(&plain[..n]);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return ids,
            Err(e) => panic!("plaintext: {e}"),
        }
        match session.read_tls(&mut peer) {
            Ok(0) => return ids,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return ids,
            Err(e) => panic!("read: {e}"),
        }
        session.process_new_packets().expect("valid records");
    }
}

#[test]
fn over_tls_closing_on_a_peer_that_does_not_read_loses_no_completion() {
    let (ours, peer, session) = tls_pair();
    let (notes, heard) = mpsc::channel();
    let mut out = Outbox::start(ours, Vec::new(), usize::MAX, move |note| {
        notes.send(note).is_ok()
    })
    .expect("writer thread");
    // Several turns, each sealed into records of its own: the completions of each come back
    // unless all of that turn's records were written.
    const TASKS: u64 = 384;
    let mut batch = Vec::new();
    for id in 1..=TASKS {
        batch.push(completion(id, 64 << 10));
        if batch.len() == 16 {
            out.queue_finished(&mut batch);
        }
        if id % 96 == 0 {
            out.send(Instant::now());
        }
    }
    poll_until("the writer to fill the socket", || {
        let backlog = out.shared.lock();
        backlog.written > 0 && backlog.in_flight > 0
    });
    let unsent = out.close();
    assert!(!unsent.is_empty(), "the socket cannot have taken 24 MiB");
    match heard.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => panic!("the writer thread did not exit"),
        Ok(note) => panic!("unexpected {note:?}"),
    }
    let read = read_tls_completions(peer, session);
    assert!(
        !read.is_empty(),
        "some records were written before the close"
    );
    let mut seen: BTreeSet<TaskId> = read.into_iter().collect();
    seen.extend(unsent.iter().map(|c| c.task));
    assert_eq!(
        seen.len() as u64,
        TASKS,
        "every completion reached the peer or came back"
    );
}
