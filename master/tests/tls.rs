//! TLS on the worker and client port (issue 12): a batch through a TLS master with a recording
//! proxy between a worker and the master that must see none of the batch's bytes, and the clear
//! line each side gets when only one of them speaks TLS.

mod common;

use common::{eventually, worker_bin, Cluster, Reaped};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A TCP proxy to `target` for one connection that records every byte, both ways.
fn recording_proxy(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let Ok(server) = TcpStream::connect(&target) else {
            return;
        };
        let pump = |mut from: TcpStream, mut to: TcpStream, seen: Arc<Mutex<Vec<u8>>>| {
            thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    seen.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        let up = pump(
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
            recorded.clone(),
        );
        let down = pump(server, client, recorded);
        let _ = up.join();
        let _ = down.join();
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_batch_over_tls_crosses_the_wire_encrypted() {
    let scratch = std::env::temp_dir().join(format!("ballast-tls-it-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("dir");
    let (cert, key) = common::self_signed_localhost(&scratch);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let c = Cluster::start(&["--tls-cert", cert, "--tls-key", key]);
    let (proxy, seen) = recording_proxy(c.addr.clone());
    let log = std::fs::File::create(c.dir.join("proxied.log")).expect("log");
    let mut worker = Reaped(
        Command::new(worker_bin())
            .args([
                "--master", &proxy, "--name", "proxied", "--slots", "2", "--tls-ca", cert,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts"),
    );
    eventually(
        Duration::from_secs(20),
        "the worker through the proxy",
        || {
            let out = c.cli(&["status", "--tls-ca", cert]);
            String::from_utf8_lossy(&out.stdout)
                .contains("proxied")
                .then_some(())
        },
    );

    const MARKER: &str = "MARKER-tls-7f3a91";
    let out = c.cli(&[
        "submit", "--tls-ca", cert, "--count", "3", "--wait", "--", "echo", MARKER,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = c.cli(&["results", "--tls-ca", cert, "--json"]);
    assert!(
        results.status.success(),
        "{}",
        String::from_utf8_lossy(&results.stderr)
    );
    let text = String::from_utf8_lossy(&results.stdout);
    assert_eq!(text.matches("\"succeeded\"").count(), 3, "{text}");
    assert!(text.contains(MARKER), "the outputs read back: {text}");

    worker.stop();
    let bytes = seen.lock().expect("lock").clone();
    assert!(
        bytes.len() > 1000,
        "the proxy saw the worker's traffic ({} bytes)",
        bytes.len()
    );
    assert_eq!(
        bytes[0], 0x16,
        "the worker opens with a TLS handshake record"
    );
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "the marker crossed the proxy in the clear"
    );
    assert!(
        !contains(&bytes, b"echo"),
        "the command line crossed the proxy in the clear"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn one_side_without_tls_gets_one_clear_line() {
    let scratch = std::env::temp_dir().join(format!("ballast-tls-half-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("dir");
    let (cert, key) = common::self_signed_localhost(&scratch);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    // A TLS master: a worker and a client without --tls-ca.
    let mut c = Cluster::start(&["--tls-cert", cert, "--tls-key", key]);
    c.add_worker("plain", 1);
    let status = eventually(Duration::from_secs(20), "the plain worker to exit", || {
        c.worker_exit("plain")
    });
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(c.dir.join("plain.log")).expect("worker log");
    assert!(log.contains("speaks TLS: pass --tls-ca"), "{log}");
    let out = c.cli_within(Duration::from_secs(20), &["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("speaks TLS: pass --tls-ca"), "{err}");
    let master = c.master_log();
    assert!(
        master.contains("refused plaintext connection from"),
        "{master}"
    );

    // A plaintext master: a worker and a client with --tls-ca.
    let mut p = Cluster::start(&[]);
    p.add_worker_with("tls", 1, &["--tls-ca", cert]);
    let status = eventually(Duration::from_secs(20), "the TLS worker to exit", || {
        p.worker_exit("tls")
    });
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.dir.join("tls.log")).expect("worker log");
    assert!(log.contains("does not speak TLS"), "{log}");
    let out = p.cli_within(Duration::from_secs(20), &["status", "--tls-ca", cert], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not speak TLS"), "{err}");
    let master = p.master_log();
    assert!(
        master.contains("the peer speaks TLS and this master does not"),
        "{master}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// One HTTP/1.1 request over TLS to `addr`, answered in full (the master closes after it).
fn https_get(addr: &str, ca: &str, path: &str) -> String {
    use protocol::tls::{ClientTls, ClientTlsFiles};
    use protocol::transport::Transport;
    let tls = ClientTls::load(&ClientTlsFiles {
        ca: ca.into(),
        ..ClientTlsFiles::default()
    })
    .expect("client TLS");
    let socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut stream = Transport::tls(socket, &tls, addr).expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_http_side_is_https_on_a_tls_master() {
    let scratch = std::env::temp_dir().join(format!("ballast-https-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("dir");
    let (cert, key) = common::self_signed_localhost(&scratch);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let c = Cluster::start(&["--tls-cert", cert, "--tls-key", key]);
    let answer = https_get(&c.http_addr, cert, "/api/v1/status");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"queued\":0"), "{answer}");

    // Plain http:// on that port: one readable answer, not a hang or garbage.
    let mut plain = TcpStream::connect(&c.http_addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    plain
        .write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("speaks HTTPS"), "{answer}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A TLS session with the master at `addr`, the handshake done, for a test that then speaks
/// raw TLS (what a hostile peer can send).
fn tls_peer(addr: &str, ca: &str) -> (TcpStream, protocol::tls::ClientConnection) {
    use protocol::tls::{ClientTls, ClientTlsFiles};
    let tls = ClientTls::load(&ClientTlsFiles {
        ca: ca.into(),
        ..ClientTlsFiles::default()
    })
    .expect("client TLS");
    let mut session = tls.session(addr).expect("session");
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    while session.is_handshaking() {
        session.complete_io(&mut socket).expect("handshake");
    }
    (socket, session)
}

/// Reads until the master closes `socket`; false if it stays open past its read timeout.
fn closed_by_master(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_tls_peers_are_closed_and_the_master_serves_on() {
    let scratch = std::env::temp_dir().join(format!("ballast-tls-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("dir");
    let (cert, key) = common::self_signed_localhost(&scratch);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let c = Cluster::start(&["--tls-cert", cert, "--tls-key", key]);
    let status_answers = |when: &str| {
        let out = c.cli_within(Duration::from_secs(10), &["status", "--tls-ca", cert], &[]);
        assert!(
            out.status.success(),
            "status {when}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Half a ClientHello, then silence, from many peers at once: each is held only until the
    // handshake timeout, and the master answers others meanwhile.
    let hello = {
        use protocol::tls::{ClientTls, ClientTlsFiles};
        let tls = ClientTls::load(&ClientTlsFiles {
            ca: cert.into(),
            ..ClientTlsFiles::default()
        })
        .expect("client TLS");
        let mut session = tls.session(&c.addr).expect("session");
        let mut hello = Vec::new();
        session.write_tls(&mut hello).expect("hello");
        hello
    };
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&c.addr).expect("connect");
            s.write_all(&hello[..hello.len() / 2])
                .expect("half a hello");
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            s
        })
        .collect();
    status_answers("while 200 handshakes stall");

    // After the handshake: a close_notify with more bytes behind it in the same segment (the
    // master once spun on those for ever), a garbled record, an oversized one.
    let (mut after_close, mut session) = tls_peer(&c.addr, cert);
    session.send_close_notify();
    let mut wire = Vec::new();
    session.write_tls(&mut wire).expect("alert");
    wire.extend(std::iter::repeat_n(0x17u8, 20 << 10));
    after_close.write_all(&wire).expect("send");
    assert!(closed_by_master(&mut after_close), "after close_notify");
    for record in [
        &[0x17u8, 0x03, 0x03, 0x00, 0x04, 9, 9, 9, 9][..],
        &[0x17, 0x03, 0x03, 0xff, 0xff, 0][..],
    ] {
        let (mut socket, _session) = tls_peer(&c.addr, cert);
        socket.write_all(record).expect("send");
        assert!(closed_by_master(&mut socket), "after {record:?}");
    }
    status_answers("after the bad records");

    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(closed_by_master(s), "stalled handshake {i} still open");
    }
    status_answers("at the end");
    let log = c.master_log();
    assert!(log.contains("no handshake within"), "{log}");
    assert!(log.contains(": TLS: "), "{log}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A master serving an expired certificate says so once at start (rustls serves it; every peer
/// refuses it with its own line).
#[test]
fn a_master_with_an_expired_certificate_warns_at_start() {
    let scratch = std::env::temp_dir().join(format!("ballast-tls-expired-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("dir");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (scratch.join("old.pem"), scratch.join("old.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let c = Cluster::start(&[
        "--tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--tls-key",
        key_path.to_str().expect("utf-8"),
    ]);
    let log = c.master_log();
    assert!(
        log.contains("old.pem: the certificate expired")
            && log.contains("every peer will refuse it"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
