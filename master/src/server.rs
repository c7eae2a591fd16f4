//! The IO shell: one single-threaded `mio` loop that moves bytes between sockets and the sans-IO
//! [`Core`](crate::core::Core), and tells it the time. It makes no scheduling decisions.
//!
//! Per connection: a `FrameDecoder` and one reused write buffer. WRITABLE interest is registered only
//! while that buffer holds bytes; everything the core emits in one turn is written with one syscall
//! per connection. The poll timeout is the core's next deadline.

use crate::core::{ConnId, Core, CoreConfig, Output, Record, RestoredTask};
use crate::journal::{FinalRecord, Journal, JournalError};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use protocol::{auth::NONCE_LEN, encode_frame, FrameDecoder, FromMaster, ToMaster};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

const LISTENER: Token = Token(usize::MAX);
/// How long a record may wait for its commit when no reply depends on it. A crash loses at most
/// this much of finished work (those tasks run again); nothing a client was told is ever lost.
const COMMIT_WINDOW: Duration = Duration::from_millis(10);
/// Commit at once past this many pending records, to bound the open transaction.
const COMMIT_BATCH_MAX: usize = 1 << 16;
/// Bytes asked of the kernel per read; also the decoder's growth step.
const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    /// The event loop itself failed (not one connection: those are only closed).
    #[error("event loop failed: {0}")]
    Poll(#[from] io::Error),
    /// The journal could not be opened, or a commit failed. The master stops rather than tell
    /// clients about work it could lose.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The journal's contents do not fit together.
    #[error("cannot recover from the journal: {0}")]
    Recovery(String),
    /// The system gave no randomness for the master id.
    #[error("no randomness for the master id: {0}")]
    Random(String),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub core: CoreConfig,
    /// Connections beyond this are accepted and closed at once, so the backlog does not fill.
    pub max_connections: usize,
    /// A peer that does not read gets disconnected once this many bytes wait for it.
    pub max_write_buffer: usize,
    /// Where the journal lives; `None` keeps everything in memory only.
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            core: CoreConfig::default(),
            max_connections: 10_000,
            max_write_buffer: 256 << 20,
            data_dir: None,
        }
    }
}

/// Milliseconds since the Unix epoch, advanced by a monotonic clock so a wall-clock jump cannot
/// fake (or hide) a heartbeat timeout.
struct Clock {
    start: Instant,
    base_ms: u64,
}

impl Clock {
    fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            base_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    decoder: FrameDecoder,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    writable_interest: bool,
    /// The core asked to close this connection once `out` is flushed.
    closing: bool,
    /// Already in this turn's list of connections to flush.
    touched: bool,
    /// Offset in `out` where bytes start that may only leave after this turn's journal commit.
    gate: Option<usize>,
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Connection>,
    core: Core,
    clock: Clock,
    config: ServerConfig,
    touched: Vec<usize>,
    /// Connections with a gate set this turn.
    gated: Vec<usize>,
    journal: Option<Journal>,
    /// When the oldest record not yet committed was made.
    uncommitted_since: Option<Instant>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn bind(addr: &str, config: ServerConfig) -> Result<Server, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let clock = Clock::new();
        let mut core_config = config.core.clone();
        core_config.persist = config.data_dir.is_some();
        let (core, journal) = match &config.data_dir {
            Some(dir) => {
                let (core, journal) = open_journal(dir, core_config, clock.now_ms())?;
                (core, Some(journal))
            }
            None => {
                // Without a journal every start is a new master: nothing it hands out may be
                // mistaken for a run of an earlier one.
                let mut id = [0u8; 8];
                getrandom::fill(&mut id).map_err(|e| ServerError::Random(e.to_string()))?;
                core_config.master_id = u64::from_le_bytes(id);
                (Core::new(core_config), None)
            }
        };
        Ok(Server {
            poll,
            listener,
            conns: Slab::new(),
            core,
            clock,
            config,
            touched: Vec::new(),
            gated: Vec::new(),
            journal,
            uncommitted_since: None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the loop forever (until the process is stopped or the poll itself fails).
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let now = self.clock.now_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(now, key);
                        }
                        if event.is_writable() {
                            self.touch(key);
                        }
                    }
                }
            }
            self.core.handle_timeout(now);
            self.end_turn(now)?;
        }
    }

    /// Places work, moves the core's output out, commits the journal once, and writes.
    fn end_turn(&mut self, now: u64) -> Result<(), ServerError> {
        // Flushing can drop a broken peer, which can free work to place: repeat until quiet.
        loop {
            self.core.dispatch(now);
            self.drain_core()?;
            // Frames to workers leave now, so they work while we fsync; client replies wait at
            // their connection's gate.
            self.flush_touched(now);
            // IMPORTANT: commit before any gated reply reaches a socket, so a client only ever
            // hears of work that survives a crash.
            let force = !self.gated.is_empty();
            self.commit_if_due(force)?;
            for key in std::mem::take(&mut self.gated) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.gate = None;
                }
                self.touch(key);
            }
            self.flush_touched(now);
            if !self.core.has_work() {
                return Ok(());
            }
        }
    }

    /// Group commit: at once when a reply waits on it (`force`), else once the oldest record has
    /// waited `COMMIT_WINDOW` or enough have piled up. A turn that only records finals for workers'
    /// results thus shares its fsync with the turns of the next few milliseconds.
    fn commit_if_due(&mut self, force: bool) -> Result<(), ServerError> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        if journal.pending() == 0 {
            self.uncommitted_since = None;
            return Ok(());
        }
        let since = *self.uncommitted_since.get_or_insert_with(Instant::now);
        if force || since.elapsed() >= COMMIT_WINDOW || journal.pending() >= COMMIT_BATCH_MAX {
            journal.commit()?;
            self.uncommitted_since = None;
        }
        Ok(())
    }

    /// The loop's sleep: until the core's next deadline or the pending commit's, if sooner.
    fn poll_timeout(&self) -> Option<Duration> {
        let core = self
            .core
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
        let commit = self
            .uncommitted_since
            .map(|since| COMMIT_WINDOW.saturating_sub(since.elapsed()));
        match (core, commit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self, now: u64) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    warn!("accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                warn!(
                    "refused {addr}: {} connections is the limit",
                    self.config.max_connections
                );
                continue; // dropping the stream closes it
            }
            let mut nonce = vec![0u8; NONCE_LEN];
            if let Err(e) = getrandom::fill(&mut nonce) {
                error!("refused {addr}: no randomness for the handshake nonce: {e}");
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                debug!("{addr}: cannot set TCP_NODELAY: {e}");
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(key), Interest::READABLE)
            {
                warn!("refused {addr}: cannot register: {e}");
                continue;
            }
            entry.insert(Connection {
                stream,
                addr,
                decoder: FrameDecoder::new(),
                out: Vec::new(),
                out_pos: 0,
                writable_interest: false,
                closing: false,
                touched: false,
                gate: None,
            });
            debug!("accepted {addr}");
            self.core
                .handle_connect(now, ConnId(key), addr.to_string(), nonce);
        }
    }

    /// Reads until the socket would block, handing every whole frame to the core.
    fn read(&mut self, now: u64, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // spurious event for a connection we already closed
        };
        if conn.closing {
            return;
        }
        let mut failure: Option<String> = None;
        loop {
            let spare = conn.decoder.spare(READ_CHUNK);
            match conn.stream.read(spare) {
                Ok(0) => {
                    conn.decoder.commit(READ_CHUNK, 0);
                    failure = Some("connection closed by peer".into());
                    break;
                }
                Ok(n) => conn.decoder.commit(READ_CHUNK, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.decoder.commit(READ_CHUNK, 0);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    conn.decoder.commit(READ_CHUNK, 0);
                }
                Err(e) => {
                    conn.decoder.commit(READ_CHUNK, 0);
                    failure = Some(format!("read error: {e}"));
                    break;
                }
            }
            // Decode as we go so the buffer holds at most one partial frame plus one read.
            if let Err(reason) = decode_all(&mut self.core, now, key, conn) {
                failure = Some(reason);
                break;
            }
        }
        if failure.is_none() {
            if let Err(reason) = decode_all(&mut self.core, now, key, conn) {
                failure = Some(reason);
            }
        }
        if let Some(reason) = failure {
            let addr = conn.addr;
            if reason.starts_with("protocol error") {
                warn!("{addr}: {reason}; closing");
            } else {
                debug!("{addr}: {reason}");
            }
            self.core.handle_disconnect(now, ConnId(key), &reason);
            self.remove(key);
        }
    }

    /// Moves the core's output into connection buffers and the journal.
    fn drain_core(&mut self) -> Result<(), ServerError> {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, msg } => {
                    let Some(c) = self.conns.get_mut(conn.0) else {
                        continue; // the peer left in this same turn
                    };
                    if self.journal.is_some() && c.gate.is_none() && needs_commit(&msg) {
                        c.gate = Some(c.out.len());
                        self.gated.push(conn.0);
                    }
                    if let Err(e) = encode_frame(&msg, &mut c.out) {
                        error!("{}: cannot encode a reply: {e}", c.addr);
                        continue;
                    }
                    self.touch(conn.0);
                }
                Output::Close { conn, reason } => {
                    if let Some(c) = self.conns.get_mut(conn.0) {
                        debug!("{}: closing: {reason}", c.addr);
                        c.closing = true;
                        self.touch(conn.0);
                    }
                }
                Output::Persist(record) => {
                    if let Some(journal) = &mut self.journal {
                        persist(journal, record)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn touch(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.touched {
                c.touched = true;
                self.touched.push(key);
            }
        }
    }

    /// One write per touched connection; WRITABLE interest only while bytes remain.
    fn flush_touched(&mut self, now: u64) {
        let touched = std::mem::take(&mut self.touched);
        for &key in &touched {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.touched = false;
            let result = write_out(c);
            let pending = c.out.len() - c.out_pos;
            let reason = match result {
                Err(e) => Some(format!("write error: {e}")),
                Ok(()) if pending > self.config.max_write_buffer => Some(format!(
                    "peer is not reading ({pending} bytes waiting, limit {})",
                    self.config.max_write_buffer
                )),
                Ok(()) => None,
            };
            if let Some(reason) = reason {
                warn!("{}: {reason}; closing", c.addr);
                self.core.handle_disconnect(now, ConnId(key), &reason);
                self.remove(key);
                continue;
            }
            if c.closing && pending == 0 {
                self.remove(key);
                continue;
            }
            // Bytes behind the gate need no WRITABLE interest: lifting the gate touches us.
            let want = c.gate.unwrap_or(c.out.len()) > c.out_pos;
            if want != c.writable_interest {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if let Err(e) = self
                    .poll
                    .registry()
                    .reregister(&mut c.stream, Token(key), interest)
                {
                    warn!("{}: cannot change interest: {e}; closing", c.addr);
                    self.core
                        .handle_disconnect(now, ConnId(key), "reregister failed");
                    self.remove(key);
                    continue;
                }
                c.writable_interest = want;
            }
        }
        // Reuse the list's allocation next turn.
        self.touched = touched;
        self.touched.clear();
    }

    fn remove(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

/// Opens (or creates) the journal in `dir`, which starts a new incarnation, and builds the core
/// of that incarnation from it.
fn open_journal(
    dir: &std::path::Path,
    mut config: CoreConfig,
    now_ms: u64,
) -> Result<(Core, Journal), ServerError> {
    let started = Instant::now();
    let (journal, recovered) = Journal::open(dir)?;
    let Some(current) = recovered.history.last().map(|s| s.incarnation) else {
        return Err(ServerError::Recovery(
            "the journal started no incarnation".into(),
        ));
    };
    config.master_id = recovered.master_id;
    config.incarnation = current;
    let mut core = Core::new(config);
    let tasks = recovered
        .tasks
        .into_iter()
        .map(|t| RestoredTask {
            id: t.id,
            spec: t.spec,
            submitted_ms: t.submitted_ms,
            outcome: t.outcome.map(|f| protocol::TaskResult {
                id: t.id,
                state: f.state,
                exit_code: f.exit_code,
                copies: f.copies,
                worker: f.worker,
                attempts: f.attempts,
                priority: 0, // comes from the spec
                submitted_ms: t.submitted_ms,
                started_ms: f.started_ms,
                finished_ms: Some(f.finished_ms),
                stdout: f.stdout,
                stderr: f.stderr,
                error: f.error,
            }),
        })
        .collect();
    let (finished, unfinished) = core
        .restore(now_ms, tasks, recovered.history)
        .map_err(ServerError::Recovery)?;
    info!(
        "journal {}: incarnation {current}; recovered {} tasks in {} ms ({finished} finished, \
         {unfinished} to run again)",
        journal.path().display(),
        finished + unfinished,
        started.elapsed().as_millis()
    );
    Ok((core, journal))
}

fn persist(journal: &mut Journal, record: Record) -> Result<(), JournalError> {
    match record {
        Record::Submitted {
            first,
            count,
            spec,
            submitted_ms,
        } => journal.record_submit(first, count, &spec, submitted_ms),
        Record::Finished(r) => journal.record_final(
            r.id,
            &FinalRecord {
                state: r.state,
                attempts: r.attempts,
                copies: r.copies,
                worker: r.worker,
                exit_code: r.exit_code,
                stdout: r.stdout,
                stderr: r.stderr,
                error: r.error,
                started_ms: r.started_ms,
                finished_ms: r.finished_ms.unwrap_or(r.submitted_ms),
            },
        ),
    }
}

/// Hands every whole frame in the decoder to the core. Err: the stream is broken.
fn decode_all(core: &mut Core, now: u64, key: usize, conn: &mut Connection) -> Result<(), String> {
    loop {
        match conn.decoder.next_frame::<ToMaster>() {
            Ok(Some(msg)) => core.handle_message(now, ConnId(key), msg),
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("protocol error: {e}")),
        }
    }
}

/// Writes as much of `out` as the socket takes; keeps the buffer's allocation for reuse.
/// Client replies that speak of durable state (ids, results, completion) wait for the commit;
/// frames to workers do not: assignments are not journaled anyway.
fn needs_commit(msg: &FromMaster) -> bool {
    matches!(
        msg,
        FromMaster::Submitted { .. }
            | FromMaster::Results { .. }
            | FromMaster::WaitDone { .. }
            | FromMaster::Progress { .. }
            | FromMaster::CancelDone { .. }
            | FromMaster::Status(_)
    )
}

/// Writes as much of `out` as the socket takes, up to the gate; keeps the allocation for reuse.
fn write_out(c: &mut Connection) -> io::Result<()> {
    let limit = c.gate.unwrap_or(c.out.len());
    while c.out_pos < limit {
        match c.stream.write(&c.out[c.out_pos..limit]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
        // Do not pin a huge buffer after one large reply.
        if c.out.capacity() > 1 << 20 {
            c.out.shrink_to(64 << 10);
        }
    } else if c.out_pos > c.out.len() / 2 {
        c.out.drain(..c.out_pos);
        if let Some(gate) = &mut c.gate {
            *gate -= c.out_pos;
        }
        c.out_pos = 0;
    }
    Ok(())
}

pub fn log_listening(addr: SocketAddr, config: &ServerConfig) {
    info!(
        "master listening on {addr} (policy {}, heartbeat {} ms, timeout {} ms, auth {})",
        config.core.policy,
        config.core.heartbeat_interval_ms,
        config.core.heartbeat_timeout_ms,
        if config.core.token.is_some() {
            "token"
        } else {
            "off"
        }
    );
}
