//! The client library: a blocking connection to the master for the CLI, the worker and tests, and
//! the client half of the handshake ([`handshake`]) for callers that bring their own socket (the
//! load generator, tests that need to know theirs). The master itself never uses this: it runs
//! the same codec inside its mio loop.

use crate::auth;
use crate::auth::{RoleTag, NONCE_LEN};
use crate::cause::Cause;
use crate::codec::{encode_frame, FrameDecoder, FrameError};
use crate::messages::{FromMaster, Incarnation, RejectKind, Role, ToMaster, WorkerId};
use crate::tls::ClientTls;
use crate::transport::Transport;
use crate::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use thiserror::Error;

/// Most bytes asked of the socket per read once connected: a `Results` chunk can be megabytes.
/// Reads start at [`HANDSHAKE_READ_CHUNK`] and double up to this while reads fill them, so a
/// client that reads a few small replies never zeroes (and faults in) 64 KiB of buffer.
const READ_CHUNK: usize = 64 << 10;
/// Per read during the handshake, whose frames are tiny: a caller that holds thousands of
/// connections (the load generator) keeps their decoders small.
const HANDSHAKE_READ_CHUNK: usize = 4 << 10;

#[derive(Debug, Error)]
pub enum ConnectionError {
    /// No address answered (or the name did not resolve).
    #[error("cannot reach the master at {addr}: {}", Cause(cause))]
    Connect { addr: String, cause: io::Error },
    /// The socket failed after connecting.
    #[error("connection to the master failed: {}", Cause(.0))]
    Io(#[from] io::Error),
    /// The master closed the connection.
    #[error("the master closed the connection")]
    Closed,
    /// The peer sent bytes that are not our protocol.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The master refused the handshake. For a refused token the text says which side lacks
    /// what, as far as the handshake can tell.
    #[error("{}", refusal(addr, reason, *kind, *token_sent))]
    Rejected {
        addr: String,
        reason: String,
        kind: RejectKind,
        /// We answered the challenge with a token (so it is the wrong one, not a missing one).
        token_sent: bool,
    },
    /// We hold a token and the master's `Welcome` did not prove it: a master without the token
    /// (or with another), or something posing as the master. Nothing it sends is acted on.
    #[error(
        "the master at {addr} did not prove the token (it has none, or another one): \
         refusing to work with it"
    )]
    MasterUnproven { addr: String },
    /// The master accepted the connection and then said nothing within the handshake's bound: it
    /// is stopped, overloaded, or not a Ballast master.
    #[error(
        "no answer from the master at {addr} within {waited:?} of connecting \
         (is it stopped or overloaded, or not a Ballast master?)"
    )]
    HandshakeTimeout { addr: String, waited: Duration },
    /// TLS with the master failed; the text says why (a certificate we do not trust, a master
    /// that does not speak TLS ...).
    #[error("{0}")]
    Tls(String),
    /// The system gave no randomness for our handshake nonce.
    #[error("no randomness for the handshake nonce: {0}")]
    Random(String),
    /// The master speaks another protocol version.
    #[error("protocol version mismatch: master speaks {master}, we speak {ours}")]
    Version { master: u32, ours: u32 },
    /// A message arrived that makes no sense at this point of the conversation.
    #[error("unexpected message from the master: {0}")]
    Unexpected(String),
}

/// The one line for a refused handshake. A refused authentication is either no token where the
/// master requires one, or a token the master does not hold (the MAC cannot tell a typo from
/// another cluster's token, so neither can we).
fn refusal(addr: &str, reason: &str, kind: RejectKind, token_sent: bool) -> String {
    match (kind, token_sent) {
        (RejectKind::Authentication, false) => {
            format!("the master at {addr} requires a token: set --token or BALLAST_TOKEN")
        }
        (RejectKind::Authentication, true) => format!(
            "the master at {addr} refused our token: it holds another one (check --token or \
             BALLAST_TOKEN)"
        ),
        (RejectKind::TlsRequired, _) => {
            format!("the master at {addr} speaks TLS: pass --tls-ca (or BALLAST_TLS_CA)")
        }
        _ => format!("the master at {addr} refused this connection: {reason}"),
    }
}

/// What the master said when it accepted us.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    pub worker_id: Option<WorkerId>,
    pub heartbeat_interval_ms: u64,
    pub master_id: u64,
    pub incarnation: Incarnation,
}

/// Receiving half: reads frames with a reused buffer.
pub struct FrameReader {
    stream: Transport,
    decoder: FrameDecoder,
    /// Bytes asked per read now, from [`HANDSHAKE_READ_CHUNK`] up to [`READ_CHUNK`].
    read_chunk: usize,
}

/// Sending half: frames are queued into one buffer and written with one syscall by `flush`.
pub struct FrameWriter {
    stream: Transport,
    buf: Vec<u8>,
}

pub struct Connection {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

impl FrameReader {
    /// Blocks for the next message. `Err(Closed)` on a clean end of stream.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ConnectionError> {
        recv_blocking(
            &mut self.stream,
            &mut self.decoder,
            &mut self.read_chunk,
            READ_CHUNK,
        )
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.socket().set_read_timeout(timeout)
    }
}

impl FrameWriter {
    /// Queues a message; nothing is written until `flush`.
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        encode_frame(msg, &mut self.buf)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        self.queue(msg)?;
        self.flush()
    }

    /// Bytes queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Closes both directions, which also wakes a reader blocked on the other half.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown();
    }

    /// The socket and the queue buffer (with what is queued and not flushed), for a caller that
    /// writes on its own terms: the worker must never block in `flush`, so its writer thread owns
    /// the socket.
    pub fn into_parts(self) -> (Transport, Vec<u8>) {
        (self.stream, self.buf)
    }
}

impl Connection {
    /// Connects to `addr` (over TLS with `tls`) and completes the handshake as `role`.
    pub fn connect(
        addr: &str,
        role: Role,
        token: Option<&[u8]>,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
    ) -> Result<(Connection, Welcome), ConnectionError> {
        let (mut conn, bound) = Connection::open(addr, tls, connect_timeout)?;
        // The writer's buffer is empty until the caller queues something: the handshake may write
        // through the reader's handle of the same socket.
        let reader = &mut conn.reader;
        let welcome = handshake(&mut reader.stream, &mut reader.decoder, addr, role, token);
        conn.finish_handshake(addr, bound, welcome)
    }

    /// [`Connection::connect`] as a client, with `first` (the client's first requests) sent as
    /// early as the handshake allows: without a token, in the same write as `Hello`, before the
    /// master's `Greeting` has even arrived (a `Hello` without a token does not depend on the
    /// master's nonce), which saves the client two waits on the master (W7); with a token, only
    /// once `Welcome` has proved the master (a request may name commands and their environment,
    /// which an impostor must not see).
    ///
    /// The master handles frames in order, so `first` is read only once `Hello` is accepted; a
    /// refused `Hello` (a version mismatch, or a token the master requires) drops it unread, and
    /// the refusal is the error here as with [`Connection::connect`]. A `first` larger than
    /// [`PIPELINE_MAX`] waits for `Welcome`, so that a refusal is read rather than a write
    /// failing into a closed connection.
    pub fn connect_client(
        addr: &str,
        token: Option<&[u8]>,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        first: &[&ToMaster],
    ) -> Result<(Connection, Welcome), ConnectionError> {
        let (mut conn, bound) = Connection::open(addr, tls, connect_timeout)?;
        for msg in first {
            conn.writer.queue(msg)?;
        }
        if token.is_some() || conn.writer.pending() > PIPELINE_MAX {
            let reader = &mut conn.reader;
            let welcome = handshake(
                &mut reader.stream,
                &mut reader.decoder,
                addr,
                Role::Client,
                token,
            );
            let (mut conn, welcome) = conn.finish_handshake(addr, bound, welcome)?;
            conn.writer.flush()?;
            return Ok((conn, welcome));
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| ConnectionError::Random(e.to_string()))?;
        // Hello first, then the request, in one write.
        let mut frames = Vec::with_capacity(64 + conn.writer.pending());
        encode_frame(&hello(Role::Client, None, &[], &nonce), &mut frames)?;
        frames.append(&mut conn.writer.buf);
        let reader = &mut conn.reader;
        let welcome = reader
            .stream
            .write_all(&frames)
            .map_err(ConnectionError::from)
            .and_then(|()| {
                let master_nonce = read_greeting(&mut reader.stream, &mut reader.decoder, addr)?;
                read_welcome(
                    &mut reader.stream,
                    &mut reader.decoder,
                    addr,
                    RoleTag::Client,
                    None,
                    &master_nonce,
                    &nonce,
                )
            });
        conn.finish_handshake(addr, bound, welcome)
    }

    /// A connected socket (with TLS established over it, with `tls`) with the handshake's read
    /// bound set (returned, for its error).
    fn open(
        addr: &str,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
    ) -> Result<(Connection, Duration), ConnectionError> {
        let socket = connect_any(addr, connect_timeout)?;
        socket.set_nodelay(true)?;
        // Bound the handshake so a wrong port does not hang us; callers set their own timeouts after.
        let bound = connect_timeout.max(Duration::from_secs(5));
        socket.set_read_timeout(Some(bound))?;
        let stream = match tls {
            None => Transport::plain(socket),
            Some(tls) => {
                Transport::tls(socket, tls, addr).map_err(|e| name_timeout(e, addr, bound))?
            }
        };
        let conn = Connection {
            reader: FrameReader {
                stream: stream.try_clone()?,
                decoder: FrameDecoder::new(),
                read_chunk: HANDSHAKE_READ_CHUNK,
            },
            writer: FrameWriter {
                stream,
                buf: Vec::with_capacity(4096),
            },
        };
        Ok((conn, bound))
    }

    /// The handshake's outcome, with a read timeout named for a person and the bound lifted.
    fn finish_handshake(
        self,
        addr: &str,
        bound: Duration,
        welcome: Result<Welcome, ConnectionError>,
    ) -> Result<(Connection, Welcome), ConnectionError> {
        let welcome = welcome.map_err(|e| name_timeout(e, addr, bound))?;
        self.reader.set_read_timeout(None)?;
        Ok((self, welcome))
    }

    pub fn send(&mut self, msg: &ToMaster) -> Result<(), ConnectionError> {
        self.writer.send(msg)
    }

    pub fn recv(&mut self) -> Result<FromMaster, ConnectionError> {
        self.reader.recv()
    }

    /// Sends `request` and returns the reply; a master `Error` becomes `Err(Rejected)`-like text.
    pub fn request(&mut self, request: &ToMaster) -> Result<FromMaster, ConnectionError> {
        self.send(request)?;
        self.recv()
    }

    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }
}

/// The client half of the handshake, on a connected blocking stream of any kind: waits for the
/// master's `Greeting`, answers `Hello` as `role` with a fresh nonce of ours (and, with a
/// `token`, our MAC over both nonces), and returns what the master said in `Welcome`, once the
/// master has proved the token too (with one). `master` names the peer in errors. Bound the
/// waits with a read timeout on the stream.
///
/// Bytes that followed `Welcome` stay in `decoder`, so a caller that goes on with its own IO (a
/// non-blocking stream in a poll loop, as the load generator's simulated workers do) loses none;
/// after an error they must be dropped unread (an unproven master's `Assign` may be among them).
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    master: &str,
    role: Role,
    token: Option<&[u8]>,
) -> Result<Welcome, ConnectionError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| ConnectionError::Random(e.to_string()))?;
    handshake_with_nonce(stream, decoder, master, role, token, &nonce)
}

/// [`handshake`] with the caller's nonce, which must be fresh and unpredictable (tests and the
/// simulator bring their own).
pub fn handshake_with_nonce<S: Read + Write>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    master: &str,
    role: Role,
    token: Option<&[u8]>,
    peer_nonce: &[u8; NONCE_LEN],
) -> Result<Welcome, ConnectionError> {
    let master_nonce = read_greeting(stream, decoder, master)?;
    let tag = RoleTag::of(&role);
    let mut frame = Vec::new();
    encode_frame(&hello(role, token, &master_nonce, peer_nonce), &mut frame)?;
    stream.write_all(&frame)?;
    read_welcome(
        stream,
        decoder,
        master,
        tag,
        token,
        &master_nonce,
        peer_nonce,
    )
}

/// The largest first request [`Connection::connect_client`] writes before the master has
/// accepted `Hello`: it fits the socket buffers, so the write never waits on a master that is
/// about to refuse us.
pub const PIPELINE_MAX: usize = 16 << 10;

/// Our `Hello` as `role`, answering `master_nonce` with `token` (no answer without one).
fn hello(
    role: Role,
    token: Option<&[u8]>,
    master_nonce: &[u8],
    peer_nonce: &[u8; NONCE_LEN],
) -> ToMaster {
    let tag = RoleTag::of(&role);
    ToMaster::Hello {
        version: PROTOCOL_VERSION,
        role,
        auth: auth::peer_answer(token, tag, master_nonce, peer_nonce),
        nonce: peer_nonce.to_vec(),
    }
}

/// The master's `Greeting`, checked for our protocol version; returns its nonce.
fn read_greeting<S: Read>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    master: &str,
) -> Result<Vec<u8>, ConnectionError> {
    match recv_handshake(stream, decoder)? {
        FromMaster::Greeting { version, nonce } => {
            if version != PROTOCOL_VERSION {
                return Err(ConnectionError::Version {
                    master: version,
                    ours: PROTOCOL_VERSION,
                });
            }
            Ok(nonce)
        }
        // A TLS master refuses a plaintext peer before any greeting.
        FromMaster::Rejected { reason, kind } => Err(ConnectionError::Rejected {
            addr: master.to_string(),
            reason,
            kind,
            token_sent: false,
        }),
        other => Err(ConnectionError::Unexpected(other.name().to_string())),
    }
}

/// The master's answer to our `Hello`: `Welcome` (proving `token`, with one), or a refusal.
fn read_welcome<S: Read>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    master: &str,
    tag: RoleTag,
    token: Option<&[u8]>,
    master_nonce: &[u8],
    peer_nonce: &[u8; NONCE_LEN],
) -> Result<Welcome, ConnectionError> {
    match recv_handshake(stream, decoder)? {
        FromMaster::Welcome {
            worker_id,
            heartbeat_interval_ms,
            master_id,
            incarnation,
            proof,
        } => {
            // IMPORTANT: before anything the master sent is acted on. A master that greets us
            // with our own nonce could be reflecting our `Hello`; the direction label in the MAC
            // already defeats that, the check costs nothing.
            if let Some(token) = token {
                if master_nonce == peer_nonce.as_slice()
                    || !auth::verify_master(token, tag, master_nonce, peer_nonce, &proof)
                {
                    return Err(ConnectionError::MasterUnproven {
                        addr: master.to_string(),
                    });
                }
            }
            Ok(Welcome {
                worker_id,
                heartbeat_interval_ms,
                master_id,
                incarnation,
            })
        }
        FromMaster::Rejected { reason, kind } => Err(ConnectionError::Rejected {
            addr: master.to_string(),
            reason,
            kind,
            token_sent: token.is_some(),
        }),
        other => Err(ConnectionError::Unexpected(other.name().to_string())),
    }
}

/// A handshake frame: they are tiny, so reads stay small.
fn recv_handshake<T: DeserializeOwned>(
    stream: &mut impl Read,
    decoder: &mut FrameDecoder,
) -> Result<T, ConnectionError> {
    let mut chunk = HANDSHAKE_READ_CHUNK;
    recv_blocking(stream, decoder, &mut chunk, HANDSHAKE_READ_CHUNK)
}

/// Blocks until `decoder` holds a whole message, reading `read_chunk` bytes at a time; a read
/// that fills its chunk doubles it, up to `max_chunk`.
fn recv_blocking<T: DeserializeOwned>(
    stream: &mut impl Read,
    decoder: &mut FrameDecoder,
    read_chunk: &mut usize,
    max_chunk: usize,
) -> Result<T, ConnectionError> {
    loop {
        if let Some(msg) = decoder.next_frame()? {
            return Ok(msg);
        }
        let chunk = *read_chunk;
        let spare = decoder.spare(chunk);
        match stream.read(spare) {
            Ok(n) => {
                decoder.commit(chunk, n);
                if n == chunk && chunk < max_chunk {
                    *read_chunk = (chunk * 2).min(max_chunk);
                }
                if n == 0 {
                    // A clean end, or one in the middle of a frame: either way nothing follows.
                    return Err(ConnectionError::Closed);
                }
            }
            Err(e) => {
                decoder.commit(chunk, 0);
                // A signal is not the end of the stream.
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
}

/// A read timeout during the handshake surfaces as EAGAIN ("Resource temporarily
/// unavailable"), which says nothing to a person: this names what we waited for.
fn name_timeout(e: ConnectionError, addr: &str, bound: Duration) -> ConnectionError {
    match e {
        ConnectionError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ConnectionError::HandshakeTimeout {
                addr: addr.to_string(),
                waited: bound,
            }
        }
        other => other,
    }
}

fn connect_any(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectionError> {
    let err = |cause| ConnectionError::Connect {
        addr: addr.to_string(),
        cause,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for sock in addr.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Assignment, Attempt, TaskId, TaskKind, TaskSpec, WorkerInfo};
    use std::io::Cursor;
    use std::sync::Arc;

    /// A master whose every frame is written in advance (the handshake reads `Greeting`, writes,
    /// then reads the rest), recording what the client writes.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
        /// Every other read fails with `Interrupted`, as a signal would make it.
        interrupt: bool,
        /// Most bytes one read returns.
        max_read: usize,
    }

    impl Scripted {
        fn new(frames: &[FromMaster]) -> Scripted {
            let mut input = Vec::new();
            for f in frames {
                encode_frame(f, &mut input).expect("encodes");
            }
            Scripted {
                input: Cursor::new(input),
                output: Vec::new(),
                interrupt: false,
                max_read: 1,
            }
        }

        fn sent(&self) -> Vec<ToMaster> {
            let mut dec = FrameDecoder::new();
            dec.extend(&self.output);
            let mut got = Vec::new();
            while let Some(m) = dec.next_frame().expect("valid frames") {
                got.push(m);
            }
            got
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.max_read);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const NONCE: [u8; 32] = [9; 32];
    const PEER_NONCE: [u8; 32] = [5; 32];
    const TOKEN: &[u8] = b"tok";

    fn greeting(version: u32) -> FromMaster {
        FromMaster::Greeting {
            version,
            nonce: NONCE.to_vec(),
        }
    }

    fn welcome() -> FromMaster {
        welcome_with(Vec::new())
    }

    fn welcome_with(proof: Vec<u8>) -> FromMaster {
        FromMaster::Welcome {
            worker_id: Some(WorkerId(3)),
            heartbeat_interval_ms: 250,
            master_id: 77,
            incarnation: Incarnation(2),
            proof,
        }
    }

    /// What a master holding `token` proves to a peer of `role` that sent `PEER_NONCE`.
    fn proof(token: &[u8], role: RoleTag) -> Vec<u8> {
        auth::master_proof(Some(token), role, &NONCE, &PEER_NONCE)
    }

    fn worker() -> Role {
        Role::Worker(WorkerInfo {
            allocation: None,
            name: "w".into(),
            host: "h".into(),
            cpus: 1,
            slots: 1,
            pid: 1,
            group: None,
            prefetch: 0,
            prefetch_adaptive: false,
            heartbeat_interval_ms: 0,
        })
    }

    #[test]
    fn a_master_that_never_greets_is_named_in_a_timeout_error() {
        // Issue 14: a stopped master (SIGSTOP) accepts in the kernel and says nothing; the error
        // was "Resource temporarily unavailable (os error 11)".
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let err = Connection::connect(&addr, Role::Client, None, None, Duration::from_millis(100))
            .err()
            .expect("no greeting, no connection");
        assert!(
            matches!(&err, ConnectionError::HandshakeTimeout { addr: a, .. } if *a == addr),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("no answer from the master"),
            "{err}"
        );
        drop(listener);
    }

    #[test]
    fn answers_the_nonce_and_keeps_what_followed_welcome() {
        let assign = FromMaster::Assign(vec![Assignment {
            task: TaskId(1),
            attempt: Attempt(1),
            incarnation: Incarnation(2),
            spec: Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 1 })),
        }]);
        let mut master = Scripted::new(&[
            greeting(PROTOCOL_VERSION),
            welcome_with(proof(TOKEN, RoleTag::Worker)),
            assign.clone(),
        ]);
        // Everything in the first read: the `Assign` arrives with the `Greeting`.
        master.max_read = usize::MAX;
        let mut decoder = FrameDecoder::new();
        let w = handshake_with_nonce(
            &mut master,
            &mut decoder,
            "m:1",
            worker(),
            Some(TOKEN),
            &PEER_NONCE,
        )
        .expect("ok");
        assert_eq!(
            (w.worker_id, w.heartbeat_interval_ms, w.master_id),
            (Some(WorkerId(3)), 250, 77)
        );
        assert_eq!(w.incarnation, Incarnation(2));
        assert_eq!(
            master.sent(),
            vec![ToMaster::Hello {
                version: PROTOCOL_VERSION,
                role: worker(),
                auth: auth::peer_answer(Some(TOKEN), RoleTag::Worker, &NONCE, &PEER_NONCE),
                nonce: PEER_NONCE.to_vec(),
            }]
        );
        assert_eq!(master.input.position(), master.input.get_ref().len() as u64);
        assert_eq!(
            decoder.next_frame::<FromMaster>().expect("ok"),
            Some(assign)
        );
    }

    #[test]
    fn frames_split_into_single_bytes_and_interrupted_reads_are_fine() {
        let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION), welcome()]);
        let mut decoder = FrameDecoder::new();
        let w = handshake(&mut master, &mut decoder, "m", Role::Client, None).expect("ok");
        assert_eq!(w.master_id, 77);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_refusal_names_the_master() {
        let mut master = Scripted::new(&[
            greeting(PROTOCOL_VERSION),
            FromMaster::Rejected {
                reason: "authentication failed".into(),
                kind: RejectKind::Authentication,
            },
        ]);
        match handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m:1",
            Role::Client,
            None,
        ) {
            Err(
                e @ ConnectionError::Rejected {
                    token_sent: false, ..
                },
            ) => {
                assert_eq!(
                    e.to_string(),
                    "the master at m:1 requires a token: set --token or BALLAST_TOKEN"
                );
                let ConnectionError::Rejected {
                    addr, reason, kind, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(
                    (addr.as_str(), reason.as_str(), kind),
                    ("m:1", "authentication failed", RejectKind::Authentication)
                );
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        let ToMaster::Hello { auth, nonce, .. } = &master.sent()[0] else {
            panic!("expected Hello");
        };
        assert!(auth.is_empty(), "no token, no answer");
        assert_eq!(nonce.len(), NONCE_LEN, "a fresh nonce all the same");

        // With a token, the same refusal means the master holds another one.
        let mut master = Scripted::new(&[
            greeting(PROTOCOL_VERSION),
            FromMaster::Rejected {
                reason: "authentication failed".into(),
                kind: RejectKind::Authentication,
            },
        ]);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m:1",
            Role::Client,
            Some(TOKEN),
        );
        let text = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("refused our token"), "{text}");
        // Other refusals keep the master's reason.
        let other = refusal("m:1", "version 4, we speak 5", RejectKind::Version, true);
        assert_eq!(
            other,
            "the master at m:1 refused this connection: version 4, we speak 5"
        );
    }

    /// With a token, a `Welcome` without the master's proof, with a wrong one, with one for
    /// another role, or our own answer reflected back, is refused before anything after it is
    /// read: the `Assign` that followed stays unread.
    #[test]
    fn a_master_that_does_not_prove_the_token_is_refused() {
        let answer = auth::peer_answer(Some(TOKEN), RoleTag::Worker, &NONCE, &PEER_NONCE);
        let cases = [
            ("no proof (a master without a token)", Vec::new()),
            ("another token", proof(b"other", RoleTag::Worker)),
            ("the proof for a client", proof(TOKEN, RoleTag::Client)),
            ("our own answer reflected", answer),
        ];
        for (what, bad) in cases {
            let assign = FromMaster::Assign(vec![]);
            let mut master =
                Scripted::new(&[greeting(PROTOCOL_VERSION), welcome_with(bad), assign]);
            let got = handshake_with_nonce(
                &mut master,
                &mut FrameDecoder::new(),
                "m:1",
                worker(),
                Some(TOKEN),
                &PEER_NONCE,
            );
            assert!(
                matches!(&got, Err(ConnectionError::MasterUnproven { addr }) if addr == "m:1"),
                "{what}: {got:?}"
            );
            assert!(
                got.unwrap_err()
                    .to_string()
                    .contains("did not prove the token"),
                "{what}"
            );
        }
        // A master that greets us with our own nonce and proves nothing new is refused too.
        let mut master = Scripted::new(&[
            FromMaster::Greeting {
                version: PROTOCOL_VERSION,
                nonce: PEER_NONCE.to_vec(),
            },
            welcome_with(auth::master_proof(
                Some(TOKEN),
                RoleTag::Client,
                &PEER_NONCE,
                &PEER_NONCE,
            )),
        ]);
        let got = handshake_with_nonce(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            Some(TOKEN),
            &PEER_NONCE,
        );
        assert!(
            matches!(got, Err(ConnectionError::MasterUnproven { .. })),
            "{got:?}"
        );
        // The right proof passes, for a client as for a worker.
        let mut master = Scripted::new(&[
            greeting(PROTOCOL_VERSION),
            welcome_with(proof(TOKEN, RoleTag::Client)),
        ]);
        handshake_with_nonce(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            Some(TOKEN),
            &PEER_NONCE,
        )
        .expect("proved");
    }

    #[test]
    fn every_handshake_brings_a_fresh_nonce() {
        let mut nonces = Vec::new();
        for _ in 0..2 {
            let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION), welcome()]);
            handshake(
                &mut master,
                &mut FrameDecoder::new(),
                "m",
                Role::Client,
                None,
            )
            .expect("ok");
            let ToMaster::Hello { nonce, .. } = master.sent().remove(0) else {
                panic!("expected Hello");
            };
            nonces.push(nonce);
        }
        assert_ne!(nonces[0], nonces[1]);
    }

    #[test]
    fn another_version_is_refused_before_saying_hello() {
        let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION + 1), welcome()]);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            None,
        );
        assert!(
            matches!(got, Err(ConnectionError::Version { master, ours })
                if master == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
            "{got:?}"
        );
        assert!(master.output.is_empty());
    }

    #[test]
    fn out_of_order_messages_are_named_not_dumped() {
        let status = FromMaster::Error {
            message: "x".repeat(10_000),
        };
        let mut master = Scripted::new(&[status]);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            None,
        );
        assert!(
            matches!(&got, Err(ConnectionError::Unexpected(name)) if name == "Error"),
            "{got:?}"
        );
        let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION), greeting(PROTOCOL_VERSION)]);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            None,
        );
        assert!(
            matches!(&got, Err(ConnectionError::Unexpected(name)) if name == "Greeting"),
            "{got:?}"
        );
    }

    #[test]
    fn a_master_that_hangs_up_mid_handshake_is_closed() {
        let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION)]);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            None,
        );
        assert!(matches!(got, Err(ConnectionError::Closed)), "{got:?}");
        // Cut inside the Greeting itself.
        let mut master = Scripted::new(&[greeting(PROTOCOL_VERSION)]);
        let cut = master.input.get_ref().len() - 1;
        master.input.get_mut().truncate(cut);
        let got = handshake(
            &mut master,
            &mut FrameDecoder::new(),
            "m",
            Role::Client,
            None,
        );
        assert!(matches!(got, Err(ConnectionError::Closed)), "{got:?}");
    }

    /// A master on a loopback port that runs `script` on its one connection, in a thread.
    fn fake_master(
        script: impl FnOnce(TcpStream) -> Vec<ToMaster> + Send + 'static,
    ) -> (String, std::thread::JoinHandle<Vec<ToMaster>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            script(stream)
        });
        (addr, thread)
    }

    fn read_frames(stream: &mut TcpStream, decoder: &mut FrameDecoder, n: usize) -> Vec<ToMaster> {
        let mut got = Vec::new();
        while got.len() < n {
            match decoder.next_frame().expect("valid frames") {
                Some(m) => got.push(m),
                None => {
                    let mut buf = [0u8; 512];
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => decoder.extend(&buf[..k]),
                    }
                }
            }
        }
        got
    }

    fn done() -> FromMaster {
        FromMaster::WaitDone {
            total: 1,
            succeeded: 1,
            failed: 0,
        }
    }

    #[test]
    fn without_a_token_the_first_request_travels_with_hello_before_the_greeting() {
        let (addr, master) = fake_master(|mut stream| {
            // Both frames arrive before the master has said anything: the client did not wait.
            let mut decoder = FrameDecoder::new();
            let got = read_frames(&mut stream, &mut decoder, 2);
            for reply in [greeting(PROTOCOL_VERSION), welcome(), done()] {
                let mut frame = Vec::new();
                encode_frame(&reply, &mut frame).expect("encodes");
                stream.write_all(&frame).expect("write");
            }
            got
        });
        let (mut conn, welcome) = Connection::connect_client(
            &addr,
            None,
            None,
            Duration::from_secs(10),
            &[&ToMaster::Status],
        )
        .expect("connects");
        assert_eq!(welcome.master_id, 77);
        assert_eq!(conn.recv().expect("the reply"), done());
        let got = master.join().expect("master thread");
        assert!(
            matches!(&got[..], [ToMaster::Hello { auth, role: Role::Client, .. }, ToMaster::Status] if auth.is_empty()),
            "{got:?}"
        );
    }

    #[test]
    fn with_a_token_nothing_follows_hello_until_the_master_is_proved() {
        let (addr, master) = fake_master(|mut stream| {
            let mut frame = Vec::new();
            encode_frame(&greeting(PROTOCOL_VERSION), &mut frame).expect("encodes");
            stream.write_all(&frame).expect("write");
            let mut decoder = FrameDecoder::new();
            let mut got = read_frames(&mut stream, &mut decoder, 1);
            // A Welcome that proves nothing: the client must give up without its request.
            frame.clear();
            encode_frame(&welcome(), &mut frame).expect("encodes");
            stream.write_all(&frame).expect("write");
            got.extend(read_frames(&mut stream, &mut decoder, usize::MAX));
            got
        });
        let err = Connection::connect_client(
            &addr,
            Some(TOKEN),
            None,
            Duration::from_secs(10),
            &[&ToMaster::Status],
        )
        .err()
        .expect("an unproven master");
        assert!(
            matches!(err, ConnectionError::MasterUnproven { .. }),
            "{err:?}"
        );
        let got = master.join().expect("master thread");
        assert!(
            matches!(&got[..], [ToMaster::Hello { auth, .. }] if !auth.is_empty()),
            "only the Hello: {got:?}"
        );
    }
}
