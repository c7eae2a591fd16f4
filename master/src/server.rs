//! The IO shell: one single-threaded `mio` loop that moves bytes between sockets and the sans-IO
//! [`Core`](crate::core::Core), and tells it the time. It makes no scheduling decisions.
//!
//! Per connection: a `FrameDecoder` and one write buffer, both small while idle: sockets are read
//! into one scratch buffer of the server's and only what arrived is kept, and a buffer grown for a
//! large frame is given back once it has gone (10,000 idle workers cost a few KiB each). WRITABLE
//! interest is registered only
//! while that buffer holds bytes; a turn writes each connection at most twice: before the journal
//! commit (frames to workers), and after it (client replies gated on the commit). The poll timeout
//! is the core's next deadline.
//!
//! Connection ids carry their slot's generation ([`ConnTable`]), and the mio token is the id itself:
//! output or an event for a connection that is gone cannot reach the one that took over its slot.
//!
//! HTTP (`crate::http`) is a second listener in the same loop; its connections share the table
//! (and `--max-connections`), carry an `HttpState` instead of using their frame decoder, and
//! reach the core as local clients, so their answers pass the same journal gate.

use crate::alloc::{AllocError, AllocSettings, Allocator};
use crate::core::{
    needs_commit, Backlog, ConnId, Core, CoreConfig, GroupCommit, LogOp, Output, Record,
    RestoreError, CLIENT_BACKLOG_MAX_BYTES, REPLY_BYTES_IN_FLIGHT_MAX, STALLED_READER_MS,
};
use crate::http::api::{self, Action, Pending};
use crate::http::conn::{
    HttpConn, Response, CONTINUE, HEAD_TIMEOUT_MS, IDLE_TIMEOUT_MS, LINGER_MS,
};
use crate::http::events::{self as sse, Delivery, Subscribers};
use crate::http::metrics::{self as exposition, ShellGauges};
use crate::journal::{self, Journal, JournalError, JournalReader, OpenOptions, SharedJournal};
use crate::logs::{LogLimits, LogStore, LogStoreError};
use crate::stop_signal::StopSignal;
use crate::tls_conn::{is_plaintext_peer, Received, TlsConn, TlsFailure};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use protocol::tls::ServerTls;
use protocol::{
    auth::NONCE_LEN, encode_frame, FrameDecoder, FrameError, FromMaster, RejectKind, ToMaster,
};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

const LISTENER: Token = Token(usize::MAX);
/// The HTTP listener's token; no connection id is ever this (see [`ConnTable::vacant_id`]).
const HTTP_LISTENER: Token = Token(usize::MAX - 1);
/// SIGINT or SIGTERM arrived (`stop_signal.rs`).
const STOP: Token = Token(usize::MAX - 2);
/// The allocator's command thread has answers (`alloc::runner`).
const ALLOC_WAKE: Token = Token(usize::MAX - 3);
/// How often HTTP connections are checked for their timeouts, while any are open.
const HTTP_SWEEP_MS: u64 = 1_000;
/// A whole request (head and body) must have arrived this long after its first byte.
const HTTP_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Bytes asked of the kernel per read, into `Server::scratch` (shared by every connection).
const READ_CHUNK: usize = 64 << 10;
/// Bytes TLS decrypts per step, into `Server::tls_plaintext` (a record holds at most 16 KiB).
const TLS_PLAINTEXT_CHUNK: usize = 16 << 10;
/// How long a peer on a TLS port may stay silent before it is taken for a plaintext one waiting
/// for our greeting (a TLS client speaks first, at once).
const TLS_OPENING_MS: u64 = 1_000;
/// Connections accepted from one listener per turn. IMPORTANT: a crowd connecting at once (10,000
/// workers after a master restart) must not starve the connections already open; the rest wait in
/// the kernel's backlog for the next turn (`Server::accept_more`, which makes it come at once).
const ACCEPT_BATCH: usize = 256;
/// A write buffer holding more than this once everything is written is freed: a large reply
/// (a status, a batch of results) must not stay pinned to a connection that may idle for days.
const WRITE_IDLE_CAPACITY: usize = 4 << 10;
/// Bytes read from one connection per turn. IMPORTANT: what a turn decodes waits in the core's
/// output until the end of the turn (a worker's streamed output, `Output::Log`), so a peer that
/// sends faster than we read must not be read until `WouldBlock`: it gets this much a turn, the
/// others get theirs, and the core's outbox stays a few MiB however fast tasks print.
const READ_BUDGET_BYTES: usize = 1 << 20;
/// Bytes read from peers after which a master with no task queued or running gives its free heap
/// back (`give_memory_back`). Outputs pass through RAM on their way to the journal (frames, log
/// streams, the finals buffer, SQLite's copies of a blob), and glibc keeps what they freed: 20-30
/// MiB after a batch printing 64 KiB a task, the burst's peak, not a per-task cost. Reads below
/// this (a single `submit --wait`) never pay for a trim.
const TRIM_AFTER_READ_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    // The cause is part of the text, not the `source`: `{:#}` in main would print it twice.
    #[error("cannot listen on {addr}: {} ({flag})", protocol::Cause(cause))]
    Bind {
        addr: String,
        /// The flag that chose the address, so a person knows which one to change.
        flag: &'static str,
        cause: io::Error,
    },
    /// The event loop itself failed (not one connection: those are only closed).
    #[error("event loop failed: {0}")]
    Poll(#[from] io::Error),
    /// The journal could not be opened, or a commit failed. The master stops rather than tell
    /// clients about work it could lose.
    // Not `#[from]`: that would also make the inner error the `source`, and `{:#}` in main
    // would print its text twice.
    #[error("journal: {0}")]
    Journal(JournalError),
    /// The journal's contents do not fit together.
    #[error("cannot recover from the journal: {0}")]
    Recovery(RestoreError),
    /// The task log directory cannot be used.
    #[error("{0}")]
    Logs(#[from] LogStoreError),
    /// The system gave no randomness for the master id.
    #[error("no randomness for the master id: {0}")]
    Random(String),
    /// The allocation queues' state cannot be read or written.
    #[error("allocation queues: {0}")]
    Alloc(#[from] AllocError),
}

impl From<JournalError> for ServerError {
    fn from(e: JournalError) -> Self {
        ServerError::Journal(e)
    }
}

impl From<RestoreError> for ServerError {
    fn from(e: RestoreError) -> Self {
        ServerError::Recovery(e)
    }
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
    /// Start on a journal that lost acknowledged work (its lost ids become failed tasks).
    pub accept_journal_loss: bool,
    /// Where the HTTP API and dashboard listen; `None`: no HTTP side.
    pub http_addr: Option<String>,
    /// Caps of the task log store (`--log-limit`, `--log-budget`).
    pub logs: LogLimits,
    /// TLS on the protocol port (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<ServerTls>,
    /// The certificate file of `tls`, which allocation workers get as their `--tls-ca`.
    pub tls_cert_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            core: CoreConfig::default(),
            max_connections: 16_384,
            max_write_buffer: 256 << 20,
            data_dir: None,
            accept_journal_loss: false,
            http_addr: None,
            logs: LogLimits::default(),
            tls: None,
            tls_cert_file: None,
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

    /// Monotonic microseconds since start, for the group commit.
    fn monotonic_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
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
    /// The core said not to read it (backpressure): it is in `Server::paused`, and frames may
    /// wait in its decoder.
    paused: bool,
    /// When it last took bytes (or had none waiting), for closing stalled readers.
    progress_ms: u64,
    /// An HTTP connection (from the HTTP listener); `decoder` is then unused.
    http: Option<Box<HttpState>>,
    /// Its TLS session, on a master with `--tls-cert` (protocol connections only).
    tls: Option<Box<TlsConn>>,
    /// Some byte arrived: a plaintext port checks the first for a TLS client's.
    opened: bool,
}

/// What the shell keeps for one HTTP connection beyond the bytes.
#[derive(Default)]
struct HttpState {
    conn: HttpConn,
    /// The request handed to the core, gathering its replies. IMPORTANT: one request at a time:
    /// nothing more is parsed (nor read) until it is answered, so pipelined answers keep their
    /// order and a client cannot queue work faster than it reads answers.
    pending: Option<Pending>,
    /// The request in progress leaves the connection open after its answer.
    keep_alive: bool,
    /// The core knows this connection as a local client (from its first API request on).
    local: bool,
    /// Closing: the write side is shut, bytes read are dropped, and it is closed at this time.
    lingering_until: Option<u64>,
    /// When it last had a byte from the peer or sent an answer.
    last_active_ms: u64,
    /// An event stream (`GET /api/v1/events`): it only receives events from now on; what the
    /// peer sends is dropped. In `Server::subscribers`.
    streaming: bool,
}

impl Connection {
    /// Bytes waiting to be written.
    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    /// HTTP connections open (they are in `conns` with the others).
    http_conns: usize,
    next_http_sweep_ms: Option<u64>,
    /// HTTP connections whose request was answered: requests they already sent wait in their
    /// buffers, so they are read again before the turn ends.
    http_ready: Vec<ConnId>,
    /// Connections whose read stopped at `READ_BUDGET_BYTES` with bytes left in the socket:
    /// read again next turn (mio is edge-triggered: no new event would say so).
    more_input: Vec<ConnId>,
    /// A listener stopped at `ACCEPT_BATCH` with connections still waiting: accepted from again
    /// next turn (edge-triggered: no new event would say so). Protocol, HTTP.
    accept_more: (bool, bool),
    /// HTTP connections reading `/api/v1/events`; the core makes events while there is one.
    subscribers: Subscribers<ConnId>,
    conns: ConnTable<Connection>,
    core: Core,
    clock: Clock,
    config: ServerConfig,
    touched: Vec<ConnId>,
    /// Connections with a gate set this turn.
    gated: Vec<ConnId>,
    /// Connections not read for backpressure; asked about again at the end of every turn.
    paused: Vec<ConnId>,
    /// Bytes waiting in every connection's `out` together.
    unsent_total: usize,
    /// Shared with the core's reader of finished tasks' outcomes (`JournalReader`).
    journal: Option<SharedJournal>,
    /// Tasks were forgotten this turn: give the freed memory back at its end.
    trim_due: bool,
    /// Bytes read from peers since the free heap was last given back (`TRIM_AFTER_READ_BYTES`).
    read_since_trim: u64,
    /// When the oldest record not yet committed was made.
    group_commit: GroupCommit,
    /// Every task's full output (`crate::logs`).
    logs: LogStore,
    /// Where every read lands first; a connection's decoder copies only the bytes that came.
    scratch: Vec<u8>,
    /// The turn's journal records, in the core's order, written to the journal after the
    /// workers' frames have left (`persist_records`).
    records: Vec<Record>,
    /// Where TLS sessions put what they decrypt, before the frame decoder takes it.
    tls_plaintext: Vec<u8>,
    /// TLS connections by the time their first byte is due (`TLS_OPENING_MS` after accept),
    /// in accept order: a peer still silent then waits for a plaintext greeting.
    unopened: VecDeque<(u64, ConnId)>,
    /// Allocation queues (`master alloc`); only with a data dir, where they are kept.
    alloc: Option<Allocator>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn bind(addr: &str, config: ServerConfig) -> Result<Server, ServerError> {
        let bind_err = |cause| ServerError::Bind {
            addr: addr.to_string(),
            flag: "--listen",
            cause,
        };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let http_listener = match &config.http_addr {
            Some(http) => {
                let bind_err = |cause| ServerError::Bind {
                    addr: http.clone(),
                    flag: "--http",
                    cause,
                };
                let std_listener = std::net::TcpListener::bind(http).map_err(bind_err)?;
                std_listener.set_nonblocking(true).map_err(bind_err)?;
                let mut l = TcpListener::from_std(std_listener);
                poll.registry()
                    .register(&mut l, HTTP_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let clock = Clock::new();
        let mut core_config = config.core.clone();
        core_config.persist = config.data_dir.is_some();
        let (mut core, journal) = match &config.data_dir {
            Some(dir) => {
                let options = OpenOptions {
                    accept_loss: config.accept_journal_loss,
                };
                let (mut core, journal) = open_journal(dir, options, core_config, clock.now_ms())?;
                let journal = Arc::new(Mutex::new(journal));
                core.set_outcome_reader(Box::new(JournalReader::new(&journal)));
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
        let logs = match &config.data_dir {
            Some(dir) => {
                let mut logs = LogStore::open(dir.join("logs"), config.logs)?;
                let unfinished = logs.recover(|id| core.task(id).map(|t| t.state.is_final()));
                for task in unfinished {
                    core.note_logged(task);
                }
                logs
            }
            None => LogStore::in_memory(config.logs),
        };
        let alloc = match &config.data_dir {
            Some(dir) => {
                let waker = Arc::new(mio::Waker::new(poll.registry(), ALLOC_WAKE)?);
                let settings = AllocSettings {
                    token: config.core.token.clone(),
                    tls_cert: config
                        .tls_cert_file
                        .as_ref()
                        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
                    mutual_tls: config.tls.as_ref().is_some_and(ServerTls::mutual),
                };
                let listen = listener.local_addr()?;
                Some(Allocator::open(
                    &dir.join("alloc"),
                    settings,
                    listen,
                    waker,
                )?)
            }
            None => None,
        };
        Ok(Server {
            alloc,
            poll,
            listener,
            http_listener,
            http_conns: 0,
            next_http_sweep_ms: None,
            http_ready: Vec::new(),
            more_input: Vec::new(),
            accept_more: (false, false),
            subscribers: Subscribers::default(),
            conns: ConnTable::default(),
            core,
            clock,
            config,
            touched: Vec::new(),
            gated: Vec::new(),
            paused: Vec::new(),
            unsent_total: 0,
            journal,
            trim_due: false,
            read_since_trim: 0,
            group_commit: GroupCommit::default(),
            logs,
            scratch: vec![0; READ_CHUNK],
            records: Vec::new(),
            tls_plaintext: Vec::new(),
            unopened: VecDeque::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The HTTP listener's bound address, if there is one.
    pub fn http_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.http_listener.as_ref().map(|l| l.local_addr())
    }

    /// Runs the loop until SIGINT or SIGTERM (then it finishes the turn, commits the journal and
    /// logs one line) or until the poll itself fails.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut stop = StopSignal::install()?;
        self.poll
            .registry()
            .register(stop.source(), STOP, Interest::READABLE)?;
        let mut stopping = None;
        loop {
            if let Some(signal) = stopping {
                return self.stop(signal);
            }
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
                    HTTP_LISTENER => self.accept_http(now),
                    STOP => stopping = stop.take().or(stopping),
                    ALLOC_WAKE => {
                        if let Some(a) = &mut self.alloc {
                            a.wake();
                        }
                    }
                    // An event for a connection closed earlier in this batch finds nothing.
                    token => {
                        let id = ConnId(token.0);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // With the peer's end closed, read on until the 0 that says so.
                            let drained = if event.is_read_closed() || event.is_error() {
                                Drained::AtWouldBlock
                            } else {
                                Drained::AtShortRead
                            };
                            self.read_until(now, id, drained);
                        }
                        if event.is_writable() {
                            self.touch(id);
                        }
                    }
                }
            }
            let (more, more_http) = std::mem::take(&mut self.accept_more);
            if more {
                self.accept(now);
            }
            if more_http {
                self.accept_http(now);
            }
            for id in std::mem::take(&mut self.more_input) {
                self.read(now, id);
            }
            self.core.handle_timeout(now);
            if let Some(a) = &mut self.alloc {
                if a.next_due_ms().is_some_and(|at| at <= now) {
                    a.tick(now, &self.core);
                }
            }
            self.sweep_http(now);
            self.refuse_silent_peers(now);
            self.end_turn(now)?;
            self.vacuum_step()?;
            if std::mem::take(&mut self.trim_due) || self.burst_ended() {
                give_memory_back();
                self.read_since_trim = 0;
            }
        }
    }

    /// Whether a burst of input is over: enough bytes came since the last trim, no task is
    /// queued or running, and every outcome is committed (held ones are freed by the commit).
    fn burst_ended(&self) -> bool {
        self.read_since_trim >= TRIM_AFTER_READ_BYTES
            && self.core.tasks_in_flight() == 0
            && self
                .journal
                .as_ref()
                .is_none_or(|j| journal::lock(j).pending() == 0)
    }

    /// After a forget, the journal gives its freed pages back a few at a time, one small step
    /// per loop turn once the turn's records are committed, so no turn stalls on it.
    fn vacuum_step(&mut self) -> Result<(), ServerError> {
        let Some(shared) = &self.journal else {
            return Ok(());
        };
        let mut journal = journal::lock(shared);
        if journal.vacuum_due() && journal.pending() == 0 {
            if let Err(e) = journal.compact_step() {
                drop(journal);
                self.tell_waiting_clients(&e);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The end on a signal: what was accepted is committed, and one line says why the master
    /// stops, what is left unfinished and what becomes of it.
    fn stop(mut self, signal: &str) -> Result<(), ServerError> {
        self.commit_if_due(true)?;
        // Replies held for a later commit (a waiting client's `Submitted`) are true now: one
        // flush, so the client keeps its ids (best effort; the sockets close next).
        self.open_gates();
        self.flush_touched(self.clock.now_ms());
        let status = self.core.status();
        let unfinished = status.queued + status.running + status.waiting;
        let tasks = protocol::plural::count(unfinished, "task", "tasks");
        let journaled = self.journal.take().map(drop).is_some();
        let journal = match (journaled, unfinished) {
            (true, 0) => "journal closed",
            (true, _) => "journal closed; they run again at the next start",
            (false, 0) => "no journal",
            (false, _) => "no journal (--no-journal): they are forgotten",
        };
        if unfinished == 0 {
            info!("stopping on {signal}: no task unfinished; {journal}");
        } else {
            info!(
                "stopping on {signal}: {tasks} unfinished ({} queued, {} running, {} waiting); \
                 {journal}",
                status.queued, status.running, status.waiting
            );
        }
        Ok(())
    }

    /// Places work, moves the core's output out, commits the journal once, and writes.
    fn end_turn(&mut self, now: u64) -> Result<(), ServerError> {
        // Flushing can drop a broken peer, which can free work to place: repeat until quiet.
        loop {
            self.core.dispatch(now);
            self.drain_core();
            self.publish_events(now);
            // Frames to workers leave now, so they work while we journal and fsync; client
            // replies wait at their connection's gate.
            self.flush_touched(now);
            if let Err(e) = self.persist_records() {
                self.tell_waiting_clients(&e);
                return Err(e.into());
            }
            // IMPORTANT: commit before any gated reply reaches a socket, so a client only ever
            // hears of work that survives a crash. A client blocked in a wait does not force it:
            // its replies leave with the wait's answer, or at the group commit's deadline.
            let force = self.core.commit_forced_by(self.gated.iter().copied());
            if self.commit_if_due(force)? {
                self.open_gates();
            }
            self.flush_touched(now);
            self.resume_paused(now);
            for id in std::mem::take(&mut self.http_ready) {
                self.read(now, id);
            }
            self.flush_touched(now);
            if !self.core.has_work() {
                break;
            }
        }
        if self.unsent_total >= REPLY_BYTES_IN_FLIGHT_MAX {
            self.close_stalled_readers(now);
        }
        Ok(())
    }

    /// Everything recorded is committed: gated replies may leave (at the next flush).
    fn open_gates(&mut self) {
        for id in std::mem::take(&mut self.gated) {
            if let Some(c) = self.conns.get_mut(id) {
                c.gate = None;
            }
            self.touch(id);
        }
    }

    /// Asks the core about every paused connection: it may make the next chunk of a reply, and
    /// a connection it wants input from again is read (frames left in its decoder first).
    fn resume_paused(&mut self, now: u64) {
        if self.paused.is_empty() {
            return;
        }
        let mut resumed = Vec::new();
        for id in std::mem::take(&mut self.paused) {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            let backlog = Backlog {
                conn_bytes: c.unsent(),
                total_bytes: self.unsent_total,
            };
            self.core.handle_drain(now, id, backlog);
            if self.core.wants_input(id, backlog) {
                c.paused = false;
                resumed.push(id);
            } else {
                self.paused.push(id);
            }
        }
        for id in resumed {
            self.read(now, id);
        }
    }

    /// Over the global budget: a connection that has taken nothing for `STALLED_READER_MS` while
    /// bytes wait for it is closed, so one reader that never reads cannot hold every client.
    fn close_stalled_readers(&mut self, now: u64) {
        let stalled: Vec<(ConnId, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.unsent() > 0 && now.saturating_sub(c.progress_ms) > STALLED_READER_MS
            })
            .map(|(id, c)| (id, c.unsent()))
            .collect();
        for (id, unsent) in stalled {
            let reason = format!(
                "peer has read nothing for {} s with {unsent} bytes waiting, and replies in \
                 flight pass {} MiB",
                STALLED_READER_MS / 1_000,
                REPLY_BYTES_IN_FLIGHT_MAX >> 20
            );
            if let Some(c) = self.conns.get_mut(id) {
                warn!("{}: {reason}; closing", c.addr);
            }
            self.core.handle_disconnect(now, id, &reason);
            self.remove(id);
        }
    }

    /// Group commit: at once when a reply waits on it (`force`), else once the oldest record has
    /// waited `COMMIT_WINDOW` or enough have piled up. A turn that only records finals for workers'
    /// results thus shares its fsync with the turns of the next few milliseconds.
    /// Returns whether everything recorded is committed now (so gated replies may leave).
    fn commit_if_due(&mut self, force: bool) -> Result<bool, ServerError> {
        let Some(shared) = &self.journal else {
            return Ok(true);
        };
        let mut journal = journal::lock(shared);
        let now_us = self.clock.monotonic_us();
        if self.group_commit.due(now_us, journal.pending(), force) {
            let started = Instant::now();
            if let Err(e) = journal.commit() {
                drop(journal);
                self.tell_waiting_clients(&e);
                return Err(e.into());
            }
            // For `ballast_journal_commit_duration_seconds`.
            self.core.observe_commit(started.elapsed().as_secs_f64());
            // The finals are durable: the core keeps only where they are (it reads nothing
            // here, so holding the lock is safe).
            self.core.handle_stored(journal.committed_finals());
        }
        Ok(journal.pending() == 0)
    }

    /// A commit failed, so the master is about to stop: the replies that waited on it are
    /// dropped (they speak of work that is not durable), and each client that waited hears why
    /// instead of a bare closed connection. Best effort: one non-blocking write each.
    fn tell_waiting_clients(&mut self, e: &JournalError) {
        let mut message = format!("the master cannot write its journal: {e}; it is stopping");
        protocol::limits::truncate_with_marker(&mut message, protocol::limits::MAX_ERROR_BYTES);
        let msg = protocol::FromMaster::Error {
            message: message.clone(),
        };
        for id in std::mem::take(&mut self.gated) {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if let Some(gate) = c.gate.take() {
                c.out.truncate(gate.max(c.out_pos));
            }
            if c.http.is_some() {
                Response::error(503, &message)
                    .closing()
                    .write_to(&mut c.out);
                if let Err(err) = write_out(c) {
                    debug!("{}: cannot say the journal failed: {err}", c.addr);
                }
                continue;
            }
            if encode_frame(&msg, &mut c.out).is_ok() {
                if let Err(err) = write_out(c) {
                    debug!("{}: cannot say the journal failed: {err}", c.addr);
                }
            }
        }
    }

    /// The loop's sleep: until the core's next deadline or the pending commit's, if sooner.
    fn poll_timeout(&self) -> Option<Duration> {
        let core = self
            .core
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
        let now_us = self.clock.monotonic_us();
        let commit = self
            .group_commit
            .deadline_us()
            .map(|at| Duration::from_micros(at.saturating_sub(now_us)));
        let http = self
            .next_http_sweep_ms
            .map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
        let more = (!self.more_input.is_empty() || self.accept_more != (false, false))
            .then_some(Duration::ZERO);
        let unopened = self
            .unopened
            .front()
            .map(|&(at, _)| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
        // Pages to give back: the next step soon, but not a busy loop.
        let vacuum = self
            .journal
            .as_ref()
            .filter(|j| journal::lock(j).vacuum_due())
            .map(|_| Duration::from_millis(VACUUM_STEP_MS));
        let alloc = self
            .alloc
            .as_ref()
            .and_then(Allocator::next_due_ms)
            .map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_ms())));
        [core, commit, http, more, vacuum, unopened, alloc]
            .into_iter()
            .flatten()
            .min()
    }

    /// Accepts up to `ACCEPT_BATCH` connections.
    fn accept(&mut self, now: u64) {
        for _ in 0..ACCEPT_BATCH {
            let Some((stream, addr)) = accept_one(&self.listener, "") else {
                return;
            };
            let mut nonce = vec![0u8; NONCE_LEN];
            if let Err(e) = getrandom::fill(&mut nonce) {
                error!("refused {addr}: no randomness for the handshake nonce: {e}");
                continue; // dropping the stream closes it
            }
            if let Some(id) = self.admit(now, stream, addr, None) {
                debug!("accepted {addr}");
                self.core.handle_connect(now, id, addr.to_string(), nonce);
            }
        }
        self.accept_more.0 = true;
    }

    /// Accepts up to `ACCEPT_BATCH` HTTP connections. They share the table, and the limit, with
    /// the protocol's connections.
    fn accept_http(&mut self, now: u64) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.http_listener else {
                return;
            };
            let Some((stream, addr)) = accept_one(listener, "HTTP ") else {
                return;
            };
            let http = HttpState {
                last_active_ms: now,
                ..HttpState::default()
            };
            if self
                .admit(now, stream, addr, Some(Box::new(http)))
                .is_some()
            {
                self.http_conns += 1;
                if self.next_http_sweep_ms.is_none() {
                    self.next_http_sweep_ms = Some(now + HTTP_SWEEP_MS);
                }
                debug!("accepted HTTP {addr}");
            }
        }
        self.accept_more.1 = true;
    }

    /// Puts an accepted stream in the table, registered for reading, under `--max-connections`;
    /// `None` (the stream dropped, so closed) when it cannot.
    fn admit(
        &mut self,
        now: u64,
        mut stream: TcpStream,
        addr: SocketAddr,
        http: Option<Box<HttpState>>,
    ) -> Option<ConnId> {
        let kind = if http.is_some() { "HTTP " } else { "" };
        if self.conns.len() >= self.config.max_connections {
            warn!(
                "refused {kind}{addr}: {} connections is the limit",
                self.config.max_connections
            );
            return None;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{addr}: cannot set TCP_NODELAY: {e}");
        }
        let Some(id) = self.conns.vacant_id() else {
            warn!("refused {kind}{addr}: no connection slot left");
            return None;
        };
        let tls = match &self.config.tls {
            Some(tls) => match tls.session() {
                Ok(session) => Some(Box::new(TlsConn::new(session))),
                Err(e) => {
                    warn!("refused {addr}: {e}");
                    return None;
                }
            },
            _ => None,
        };
        // An HTTP client speaks first; a silent one meets the HTTP timeouts.
        let opening_deadline = tls
            .as_ref()
            .filter(|_| http.is_none())
            .map(|_| now + TLS_OPENING_MS);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token(id), Interest::READABLE)
        {
            warn!("refused {kind}{addr}: cannot register: {e}");
            return None;
        }
        self.conns.insert(
            id,
            Connection {
                stream,
                addr,
                decoder: FrameDecoder::new(),
                out: Vec::new(),
                out_pos: 0,
                writable_interest: false,
                closing: false,
                touched: false,
                gate: None,
                paused: false,
                progress_ms: now,
                http,
                tls,
                opened: false,
            },
        );
        if let Some(deadline) = opening_deadline {
            self.unopened.push_back((deadline, id));
        }
        Some(id)
    }

    /// Reads an HTTP connection until the socket would block or a request waits for the core,
    /// answering each whole request in turn.
    fn read_http(&mut self, now: u64, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Some(mut h) = c.http.take() else {
            return;
        };
        if h.lingering_until.is_some() {
            c.http = Some(h);
            // Dropping what a refused client still sends, so it reads our answer, not a reset.
            let mut scratch = [0u8; 16 << 10];
            loop {
                match read_plain(c, &mut scratch) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            self.remove(id);
            return;
        }
        if h.streaming {
            c.http = Some(h);
            // An event stream only listens for the end: what the peer sends is dropped.
            let mut scratch = [0u8; 4 << 10];
            let gone = loop {
                match read_plain(c, &mut scratch) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                }
            };
            if gone {
                debug!("{}: event stream closed by peer", c.addr);
                self.core.handle_disconnect(now, id, "event stream closed");
                self.remove(id);
            }
            return;
        }
        if c.closing || c.paused {
            c.http = Some(h);
            return;
        }
        let token = self.config.core.token.as_deref();
        let mut touched = false;
        let mut failure: Option<String> = None;
        let mut pause = false;
        'turn: loop {
            while h.pending.is_none() && !c.closing {
                // IMPORTANT: a client that pipelines requests and reads no answer is not read on
                // while this much waits for it (as `wants_input` does for a client of the core).
                if c.unsent() >= CLIENT_BACKLOG_MAX_BYTES {
                    pause = true;
                    break 'turn;
                }
                let answer = match h.conn.next_request() {
                    Ok(None) => break,
                    Ok(Some(req)) => {
                        h.last_active_ms = now;
                        h.keep_alive = req.keep_alive;
                        h.conn.restart_clock(now);
                        match api::handle(&req, token) {
                            Action::Respond(r) => r,
                            Action::Metrics => {
                                let gauges = ShellGauges {
                                    http_connections: self.http_conns as u64,
                                    sse_subscribers: self.subscribers.len() as u64,
                                    sse_dropped_total: self.subscribers.dropped_total,
                                };
                                let body = exposition::metrics_body(&self.core, &gauges);
                                Response::new(200, exposition::CONTENT_TYPE, body.into_bytes())
                            }
                            Action::Report => Response::new(
                                200,
                                crate::http::conn::JSON,
                                exposition::report_body(&self.core),
                            ),
                            Action::Subscribe => match self.subscribers.add(id) {
                                Ok(()) => {
                                    if self.subscribers.len() == 1 {
                                        self.core.set_events(now, true);
                                    }
                                    if c.unsent() == 0 {
                                        c.progress_ms = now;
                                    }
                                    let before = c.out.len();
                                    c.out.extend_from_slice(sse::stream_head().as_bytes());
                                    c.out.extend_from_slice(sse::preamble().as_bytes());
                                    self.unsent_total += c.out.len() - before;
                                    h.streaming = true;
                                    touched = true;
                                    debug!("{}: subscribed to events", c.addr);
                                    break 'turn;
                                }
                                Err(e) => Response::error(503, &e.to_string()),
                            },
                            Action::Ask { msg, pending } => {
                                if !h.local {
                                    self.core.handle_local_client(now, id, c.addr.to_string());
                                    h.local = true;
                                }
                                h.pending = Some(pending);
                                self.core.handle_message(now, id, *msg);
                                let backlog = Backlog {
                                    conn_bytes: c.unsent(),
                                    total_bytes: self.unsent_total,
                                };
                                // A chunked reply: its next chunks are made as the shell
                                // reports drains (`resume_paused`).
                                if !self.core.wants_input(id, backlog) {
                                    pause = true;
                                }
                                break 'turn;
                            }
                        }
                    }
                    Err(e) => {
                        debug!("{}: HTTP {e}", c.addr);
                        h.keep_alive = false;
                        Response::error(e.status(), &e.to_string())
                    }
                };
                self.unsent_total += push_response(c, now, answer, h.keep_alive);
                h.last_active_ms = now;
                touched = true;
            }
            if c.closing {
                break;
            }
            if h.conn.wants_continue {
                h.conn.wants_continue = false;
                c.out.extend_from_slice(CONTINUE);
                self.unsent_total += CONTINUE.len();
                touched = true;
            }
            if !h.conn.wants_bytes() {
                break;
            }
            let spare = h.conn.spare();
            let read = match c.tls.as_deref_mut() {
                Some(tls) => tls.read_plain(&mut c.stream, spare),
                None => c.stream.read(spare),
            };
            if c.tls.as_ref().is_some_and(|t| t.wants_write()) {
                touched = true; // handshake records to send
            }
            match read {
                Ok(0) => {
                    h.conn.commit(0, now);
                    failure = Some("connection closed by peer".into());
                    break;
                }
                Ok(n) => {
                    h.conn.commit(n, now);
                    h.last_active_ms = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    h.conn.commit(0, now);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => h.conn.commit(0, now),
                Err(e) if e.kind() == io::ErrorKind::InvalidData && c.tls.is_some() => {
                    h.conn.commit(0, now);
                    if is_plaintext_peer(&e) {
                        // A browser asked for http:// on the HTTPS port: say so, in plaintext.
                        let _ = c.stream.write(PLAIN_HTTP_ON_TLS);
                    }
                    failure = Some(e.to_string());
                    break;
                }
                Err(e) => {
                    h.conn.commit(0, now);
                    failure = Some(format!("read error: {e}"));
                    break;
                }
            }
        }
        let closing = c.closing;
        if pause {
            c.paused = true;
            self.paused.push(id);
        }
        if let Some(reason) = failure {
            // The peer is gone (or half-closed): what it asked for already is still answered if
            // it waits at the core, else the connection ends now.
            if c.unsent() == 0 && h.pending.is_none() {
                debug!("{}: HTTP {reason}", c.addr);
                c.http = Some(h);
                self.core.handle_disconnect(now, id, &reason);
                self.remove(id);
                return;
            }
            c.closing = true;
            h.keep_alive = false;
            touched = true;
        }
        c.http = Some(h);
        if closing {
            self.core
                .handle_disconnect(now, id, "HTTP connection closing");
        }
        if touched {
            self.touch(id);
        }
    }

    /// Closes HTTP connections past a timeout: a lingering close that is done, a request head
    /// not complete within [`HEAD_TIMEOUT_MS`] (or a whole request within
    /// [`HTTP_REQUEST_TIMEOUT_MS`]) gets 408, one with nothing in flight for [`IDLE_TIMEOUT_MS`]
    /// is closed.
    fn sweep_http(&mut self, now: u64) {
        match self.next_http_sweep_ms {
            Some(at) if now >= at => {}
            _ => return,
        }
        self.next_http_sweep_ms = (self.http_conns > 0).then_some(now + HTTP_SWEEP_MS);
        let mut lingered = Vec::new();
        let mut slow = Vec::new();
        let mut idle = Vec::new();
        let mut held = Vec::new();
        for (id, c) in self.conns.iter() {
            let Some(h) = c.http.as_deref() else {
                continue;
            };
            if let Some(until) = h.lingering_until {
                if now >= until {
                    lingered.push(id);
                }
                continue;
            }
            // An event stream is quiet by design; a dead one shows as a full buffer.
            if h.pending.is_some() || c.closing || h.streaming {
                continue;
            }
            // While answers wait for the client to read them, its next request waits for the
            // master, not the other way round: its clock starts again once they are read.
            if c.paused || c.unsent() > 0 {
                held.push(id);
                if now.saturating_sub(h.last_active_ms.max(c.progress_ms)) >= IDLE_TIMEOUT_MS {
                    idle.push(id);
                }
                continue;
            }
            let started = h.conn.started_ms.unwrap_or(now);
            let waited = now.saturating_sub(started);
            if (h.conn.head_pending() && waited >= HEAD_TIMEOUT_MS)
                || (!h.conn.is_idle() && waited >= HTTP_REQUEST_TIMEOUT_MS)
            {
                slow.push(id);
            } else if now.saturating_sub(h.last_active_ms.max(c.progress_ms)) >= IDLE_TIMEOUT_MS {
                idle.push(id);
            }
        }
        for id in held {
            if let Some(h) = self.conns.get_mut(id).and_then(|c| c.http.as_deref_mut()) {
                h.conn.restart_clock(now);
            }
        }
        for id in lingered {
            self.remove(id);
        }
        for id in idle {
            self.core.handle_disconnect(now, id, "idle HTTP connection");
            self.remove(id);
        }
        for id in slow {
            self.core.handle_disconnect(now, id, "slow HTTP request");
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            debug!("{}: HTTP request too slow; closing", c.addr);
            let e = crate::http::conn::RequestError::HeadTimeout {
                ms: HEAD_TIMEOUT_MS,
            };
            let answer = Response::error(e.status(), &e.to_string());
            self.unsent_total += push_response(c, now, answer, false);
            self.touch(id);
        }
    }

    /// Reads until the socket would block (or the turn's budget is spent), handing every whole
    /// frame to the core.
    fn read(&mut self, now: u64, id: ConnId) {
        self.read_until(now, id, Drained::AtWouldBlock);
    }

    /// [`Server::read`], stopping where `drained` says the socket is empty.
    fn read_until(&mut self, now: u64, id: ConnId, drained: Drained) {
        let Some(conn) = self.conns.get_mut(id) else {
            return; // a late event for a connection we already closed
        };
        if conn.http.is_some() {
            return self.read_http(now, id);
        }
        if conn.closing {
            return;
        }
        if conn.paused {
            return; // asked again at the end of the turn (edge-triggered: nothing is lost)
        }
        let total_bytes = self.unsent_total;
        let mut failure: Option<ReadFailure> = None;
        let mut budget = READ_BUDGET_BYTES;
        let mut emptied = false;
        let mut tls_ended = false;
        loop {
            // Decode as we go so the buffer holds at most one partial frame plus one read; frames
            // left by an earlier pause go first.
            let backlog = Backlog {
                conn_bytes: conn.unsent(),
                total_bytes,
            };
            match decode_all(&mut self.core, now, id, conn, backlog) {
                Err(e) => {
                    failure = Some(ReadFailure::Frame(e));
                    break;
                }
                // IMPORTANT: backpressure: no more bytes are taken from the socket (the kernel's
                // window then slows the peer) until the core wants input again.
                Ok(Decoded::Paused) => {
                    conn.paused = true;
                    self.paused.push(id);
                    break;
                }
                Ok(Decoded::All) => {}
            }
            if emptied {
                break;
            }
            if budget == 0 {
                self.more_input.push(id);
                break;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    failure = Some(ReadFailure::Closed);
                    break;
                }
                Ok(n) => {
                    let bytes = &self.scratch[..n];
                    self.read_since_trim += n as u64;
                    budget = budget.saturating_sub(n);
                    emptied = drained == Drained::AtShortRead && n < self.scratch.len();
                    if let Some(tls) = conn.tls.as_deref_mut() {
                        if self.tls_plaintext.is_empty() {
                            self.tls_plaintext = vec![0; TLS_PLAINTEXT_CHUNK];
                        }
                        let decoder = &mut conn.decoder;
                        match tls.receive(bytes, &mut self.tls_plaintext, |p| decoder.extend(p)) {
                            Ok(Received::More) => {}
                            Ok(Received::Ended) => {
                                // What came before the end is decoded first.
                                tls_ended = true;
                                emptied = true;
                            }
                            Ok(Received::Opening(_)) => {
                                failure = Some(ReadFailure::PlaintextOnTls);
                                break;
                            }
                            Err(e) => {
                                failure = Some(ReadFailure::Tls(e));
                                break;
                            }
                        }
                    } else {
                        if !conn.opened && protocol::tls::starts_tls(bytes[0]) {
                            failure = Some(ReadFailure::TlsOnPlaintext);
                            break;
                        }
                        conn.decoder.extend(bytes);
                    }
                    conn.opened = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(ReadFailure::Io(e));
                    break;
                }
            }
        }
        // Only a frame still arriving (or waiting for the core) keeps its memory.
        conn.decoder.shrink();
        if failure.is_none() && tls_ended {
            failure = Some(ReadFailure::Closed);
        }
        let mut handshake_out = false;
        if let Some(tls) = conn.tls.as_deref_mut() {
            if let Some((version, suite, ms)) = tls.newly_established() {
                debug!(
                    "{}: TLS established ({version}, {suite}, {ms} ms)",
                    conn.addr
                );
            }
            handshake_out = tls.wants_write();
        }
        if let Some(reason) = failure {
            let addr = conn.addr;
            match reason {
                ReadFailure::Frame(_) | ReadFailure::Tls(_) | ReadFailure::TlsOnPlaintext => {
                    warn!("{addr}: {reason}; closing")
                }
                ReadFailure::PlaintextOnTls => return self.refuse_plaintext(now, id),
                ReadFailure::Closed | ReadFailure::Io(_) => debug!("{addr}: {reason}"),
            }
            self.core.handle_disconnect(now, id, &reason);
            self.remove(id);
        } else if handshake_out {
            self.touch(id);
        }
    }

    /// A peer without TLS on a TLS port: one plaintext refusal it can read (in place of the
    /// greeting it waits for, or after its `Hello`), a log line, and the connection closed.
    fn refuse_plaintext(&mut self, now: u64, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        warn!(
            "refused plaintext connection from {}: this master speaks TLS (the peer needs \
             --tls-ca)",
            conn.addr
        );
        let mut frame = Vec::new();
        let refusal = FromMaster::Rejected {
            reason: "this master speaks TLS".into(),
            kind: RejectKind::TlsRequired,
        };
        if encode_frame(&refusal, &mut frame).is_ok() {
            // A few dozen bytes into an empty socket buffer: one write takes them or nothing
            // would (the peer then sees a closed connection).
            let _ = conn.stream.write(&frame);
        }
        self.core
            .handle_disconnect(now, id, "plaintext peer on a TLS port");
        self.remove(id);
    }

    /// TLS connections whose peer said nothing for `TLS_OPENING_MS`: a plaintext peer waits
    /// for the master's greeting, so it hears the refusal instead of waiting for good.
    fn refuse_silent_peers(&mut self, now: u64) {
        while let Some(&(deadline, id)) = self.unopened.front() {
            if deadline > now {
                break;
            }
            self.unopened.pop_front();
            let silent = self
                .conns
                .get_mut(id)
                .and_then(|c| c.tls.as_deref())
                .is_some_and(|t| !t.decided());
            if silent {
                self.refuse_plaintext(now, id);
            }
        }
    }

    /// Moves the core's output into connection buffers, and its journal records into `records`
    /// for [`Server::persist_records`]. Every reply that must wait on the commit is gated, so a
    /// journal error later in the turn leaves it to `tell_waiting_clients`. Frames to workers
    /// are not gated: they leave before the records are written, as before a commit (a run of
    /// a submission that never became durable is a run of an earlier incarnation to the next
    /// master, which cancels it).
    fn drain_core(&mut self) {
        while let Some(output) = self.core.poll_output() {
            let (conn, msg) = match output {
                Output::Send { conn, msg } => (conn, msg),
                Output::Log(op) => {
                    // Every forget tells the log store: the turn's end gives memory back.
                    self.trim_due |= matches!(op, LogOp::Forget { .. });
                    match self.logs.apply(op) {
                        Some(reply) => reply,
                        None => continue,
                    }
                }
                Output::Alloc { conn, request } => {
                    let now = self.clock.now_ms();
                    let reply = match &mut self.alloc {
                        Some(a) => a.request(now, request, &self.core),
                        None => FromMaster::Error {
                            message: "allocation queues need the master's data dir (it runs \
                                      with --no-journal)"
                                .into(),
                        },
                    };
                    (conn, reply)
                }
                Output::Close { conn, reason } => {
                    if let Some(c) = self.conns.get_mut(conn) {
                        debug!("{}: closing: {reason}", c.addr);
                        c.closing = true;
                        self.touch(conn);
                    }
                    continue;
                }
                Output::Persist(record) => {
                    if self.journal.is_some() {
                        self.records.push(record);
                    }
                    continue;
                }
            };
            let Some(c) = self.conns.get_mut(conn) else {
                continue; // the peer left in this same turn (its slot may be reused)
            };
            if let Some(h) = c.http.as_deref_mut() {
                let durable = needs_commit(&msg);
                let Some(pending) = &mut h.pending else {
                    debug!(
                        "{}: a {} reply with no request; dropped",
                        c.addr,
                        msg.name()
                    );
                    continue;
                };
                let Some(answer) = pending.absorb(msg) else {
                    continue; // more chunks to come
                };
                h.pending = None;
                // IMPORTANT: an answer about durable state waits for the commit.
                if self.journal.is_some() && c.gate.is_none() && durable {
                    c.gate = Some(c.out.len());
                    self.gated.push(conn);
                }
                let keep_alive = h.keep_alive;
                h.last_active_ms = self.clock.now_ms();
                self.unsent_total += push_response(c, self.clock.now_ms(), answer, keep_alive);
                if c.closing {
                    self.core.handle_disconnect(
                        self.clock.now_ms(),
                        conn,
                        "HTTP connection closing",
                    );
                }
                self.http_ready.push(conn);
                self.touch(conn);
                continue;
            }
            if self.journal.is_some() && c.gate.is_none() && needs_commit(&msg) {
                c.gate = Some(c.out.len());
                self.gated.push(conn);
            }
            let before = c.out.len();
            if before == c.out_pos {
                c.progress_ms = self.clock.now_ms(); // nothing waited: not stalled
            }
            if let Err(e) = encode_frame(&msg, &mut c.out) {
                // Never silent: the peer hears why instead of waiting for ever.
                error!("{}: cannot encode a {} frame: {e}", c.addr, msg.name());
                c.out.truncate(before);
                let apology = FromMaster::Error {
                    message: format!("the master could not send its {} reply: {e}", msg.name()),
                };
                if encode_frame(&apology, &mut c.out).is_err() {
                    c.out.truncate(before);
                }
            }
            self.unsent_total += c.out.len() - before;
            self.touch(conn);
        }
    }

    /// Writes the turn's records to the journal (durable at the next commit), in order. The
    /// first failure poisons the journal; the records after it are dropped with it.
    fn persist_records(&mut self) -> Result<(), JournalError> {
        let Some(shared) = &self.journal else {
            self.records.clear();
            return Ok(());
        };
        let mut journal = journal::lock(shared);
        let mut result = Ok(());
        for record in self.records.drain(..) {
            if result.is_ok() {
                result = persist(&mut journal, record);
            }
        }
        // A burst's records (a million outcomes in a turn) do not keep their room.
        if self.records.capacity() > RECORDS_KEPT {
            self.records = Vec::new();
        }
        result
    }

    /// Moves the core's events to every subscriber's buffer, each formatted once. A subscriber
    /// that fell behind (`http::events::SUBSCRIBER_BUFFER_MAX` unsent) is closed: it never makes
    /// the loop wait, and its browser reconnects.
    fn publish_events(&mut self, now: u64) {
        if self.subscribers.is_empty() {
            return;
        }
        let mut behind = Vec::new();
        let mut reached = Vec::new();
        while let Some(event) = self.core.poll_event() {
            let (conns, unsent_total) = (&mut self.conns, &mut self.unsent_total);
            behind.extend(self.subscribers.publish(&event, |id, bytes| {
                let Some(c) = conns.get_mut(id).filter(|c| !c.closing) else {
                    return Delivery::Gone;
                };
                if !sse::fits(c.unsent(), bytes.len()) {
                    return Delivery::Behind;
                }
                if c.unsent() == 0 {
                    c.progress_ms = now; // nothing waited: not stalled
                }
                c.out.extend_from_slice(bytes);
                *unsent_total += bytes.len();
                reached.push(id);
                Delivery::Queued
            }));
        }
        for id in reached {
            self.touch(id);
        }
        for id in behind {
            if let Some(c) = self.conns.get_mut(id) {
                warn!("{}: event subscriber fell behind; closing it", c.addr);
            }
            self.core
                .handle_disconnect(now, id, "event subscriber fell behind");
            self.remove(id);
        }
        if self.subscribers.is_empty() {
            self.core.set_events(now, false);
        }
    }

    fn touch(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.touched {
                c.touched = true;
                self.touched.push(id);
            }
        }
    }

    /// One write per touched connection; WRITABLE interest only while bytes remain.
    fn flush_touched(&mut self, now: u64) {
        let touched = std::mem::take(&mut self.touched);
        for &id in &touched {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.touched = false;
            let before = c.unsent();
            let result = write_out(c);
            let pending = c.unsent();
            if pending < before {
                c.progress_ms = now;
            }
            self.unsent_total -= before - pending;
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
                self.core.handle_disconnect(now, id, &reason);
                self.remove(id);
                continue;
            }
            let tls_pending = c.tls.as_ref().is_some_and(|t| t.wants_write());
            if c.closing && pending == 0 && !tls_pending {
                if let Some(h) = c.http.as_deref_mut() {
                    if h.lingering_until.is_none() {
                        // Half-close, then drop what the client still sends for a moment: a
                        // close with unread bytes would reset the connection and could destroy
                        // our answer (a 413 sent before the body) in the client's kernel.
                        if let Some(tls) = c.tls.as_deref_mut() {
                            tls.close();
                            let _ = tls.flush(&mut c.stream);
                        }
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                        h.lingering_until = Some(now + LINGER_MS);
                    }
                    continue;
                }
                self.remove(id);
                continue;
            }
            // Bytes behind the gate need no WRITABLE interest: lifting the gate touches us.
            let want = c.gate.unwrap_or(c.out.len()) > c.out_pos || tls_pending;
            if want != c.writable_interest {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if let Err(e) = self
                    .poll
                    .registry()
                    .reregister(&mut c.stream, token(id), interest)
                {
                    warn!("{}: cannot change interest: {e}; closing", c.addr);
                    self.core.handle_disconnect(now, id, "reregister failed");
                    self.remove(id);
                    continue;
                }
                c.writable_interest = want;
            }
        }
        // Reuse the list's allocation next turn.
        self.touched = touched;
        self.touched.clear();
    }

    fn remove(&mut self, id: ConnId) {
        if self.subscribers.remove(id) && self.subscribers.is_empty() {
            self.core.set_events(self.clock.now_ms(), false);
        }
        if let Some(mut c) = self.conns.remove(id) {
            if c.http.is_some() {
                self.http_conns -= 1;
            }
            self.unsent_total -= c.unsent();
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

// A `ConnId` is a slot index in the low half and that slot's generation in the high half.
const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const GENERATION_MASK: usize = usize::MAX >> INDEX_BITS;

/// The live connections, by [`ConnId`]. A slot's generation moves on each time it is freed, so an
/// id names one connection for ever: output the core queued for a connection that is gone, or an
/// event mio still reports for it, finds nothing rather than the connection that took its slot.
/// (The generation wraps after 2^32 reuses of one slot on 64 bits; no output lives that long.)
struct ConnTable<T> {
    slots: Slab<Slot<T>>,
    /// The generation the next connection in each slot gets; never shrinks, so bounded by the
    /// most connections ever open at once.
    generations: Vec<usize>,
}

struct Slot<T> {
    id: ConnId,
    conn: T,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        ConnTable {
            slots: Slab::new(),
            generations: Vec::new(),
        }
    }
}

impl<T> ConnTable<T> {
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// The id the next [`ConnTable::insert`] must use; `None` if the slot index does not fit an
    /// id (never below 2^32 open connections on 64 bits).
    fn vacant_id(&self) -> Option<ConnId> {
        let index = self.slots.vacant_key();
        // The two highest indexes are never used, so no id equals a listener's token.
        if index >= INDEX_MASK - 1 {
            return None;
        }
        let generation = self.generations.get(index).copied().unwrap_or(0);
        Some(ConnId(generation << INDEX_BITS | index))
    }

    /// Stores `conn` under `id`, which must come from [`ConnTable::vacant_id`] just before.
    fn insert(&mut self, id: ConnId, conn: T) {
        debug_assert_eq!(Some(id), self.vacant_id(), "a stale vacant id");
        let index = id.0 & INDEX_MASK;
        if self.generations.len() <= index {
            self.generations.resize(index + 1, 0);
        }
        let key = self.slots.insert(Slot { id, conn });
        debug_assert_eq!(key, index);
    }

    /// Every open connection with its id.
    fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots.iter().map(|(_, slot)| (slot.id, &slot.conn))
    }

    /// The connection `id` names, if it is still open.
    fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slots.get_mut(id.0 & INDEX_MASK) {
            Some(slot) if slot.id == id => Some(&mut slot.conn),
            _ => None,
        }
    }

    /// Closes `id`: its slot is free for a new connection, which gets the next generation.
    fn remove(&mut self, id: ConnId) -> Option<T> {
        let index = id.0 & INDEX_MASK;
        if self.slots.get(index)?.id != id {
            return None;
        }
        if let Some(next) = self.generations.get_mut(index) {
            *next = (*next + 1) & GENERATION_MASK;
        }
        Some(self.slots.remove(index).conn)
    }
}

/// A connection's mio token is its id: never shared with a later connection in the same slot.
fn token(id: ConnId) -> Token {
    Token(id.0)
}

/// Opens (or creates) the journal in `dir`, which starts a new incarnation, and builds the core
/// of that incarnation from it.
fn open_journal(
    dir: &std::path::Path,
    options: OpenOptions,
    mut config: CoreConfig,
    now_ms: u64,
) -> Result<(Core, Journal), ServerError> {
    let started = Instant::now();
    let (journal, recovered) = Journal::open_with(dir, options)?;
    let Some(current) = recovered.history.last().map(|s| s.incarnation) else {
        return Err(RestoreError::NoIncarnation.into());
    };
    config.master_id = recovered.master_id;
    config.incarnation = current;
    let mut core = Core::new(config);
    // Ids missing from `tasks` below it were forgotten (the journal checked): never reused.
    core.expect_forgotten(recovered.next_id);
    let (finished, unfinished) =
        core.restore(now_ms, recovered.tasks, recovered.history, recovered.jobs)?;
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
        Record::Finished { id, outcome } => journal.record_final(id, &outcome),
        Record::Job(job) => journal.record_job(&job),
        Record::Forgotten { ranges } => journal.record_forgotten(&ranges),
    }
}

/// After tasks were forgotten, or a burst of output ended (`Server::burst_ended`): the allocator
/// keeps what was freed in its free lists, so RSS would not drop; `malloc_trim` returns the free
/// pages to the kernel (glibc; a few ms for a heap of hundreds of MiB, once per forget or burst,
/// not per turn).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: `malloc_trim` only releases memory the allocator holds free; no pointer is
        // involved.
        unsafe {
            libc::malloc_trim(0);
        }
        debug!(
            "gave the free heap back in {} µs",
            started.elapsed().as_micros()
        );
    }
}

/// The pause between two incremental vacuum steps while an idle master compacts its journal.
const VACUUM_STEP_MS: u64 = 5;

/// Why reading from a connection ended it.
#[derive(Debug, Error)]
enum ReadFailure {
    /// The peer closed its end.
    #[error("connection closed by peer")]
    Closed,
    /// TLS failed: a certificate refused, a record garbled.
    #[error("{0}")]
    Tls(TlsFailure),
    /// A plaintext peer on a TLS port (answered with a refusal it can read).
    #[error("plaintext peer on a TLS port")]
    PlaintextOnTls,
    /// A TLS client on a plaintext port.
    #[error("the peer speaks TLS and this master does not (no --tls-cert): it needs no --tls-ca")]
    TlsOnPlaintext,
    /// The socket failed.
    #[error("read error: {0}")]
    Io(io::Error),
    /// The bytes are not our protocol (a bad length or an undecodable frame).
    #[error("protocol error: {0}")]
    Frame(FrameError),
}

/// Room for records [`Server::persist_records`] keeps between turns.
const RECORDS_KEPT: usize = 4096;

/// When a read of a socket may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Only at `WouldBlock` (or the peer's 0).
    AtWouldBlock,
    /// Also at a read shorter than asked: TCP hands over everything queued up to the length
    /// asked, so the socket was empty, and bytes arriving later raise a new edge. Saves one
    /// `recv` per event (a worker's frame is one short read). Not when the event says the
    /// peer closed: its 0 may already be queued behind the data, with no edge to come.
    AtShortRead,
}

/// How far [`decode_all`] got.
enum Decoded {
    /// Every whole frame went to the core.
    All,
    /// The core wants no more input from this connection for now, or a `Hello` was just
    /// handled; frames may wait.
    Paused,
}

/// Hands whole frames in the decoder to the core while it wants them. Err: the stream is broken.
fn decode_all(
    core: &mut Core,
    now: u64,
    id: ConnId,
    conn: &mut Connection,
    backlog: Backlog,
) -> Result<Decoded, FrameError> {
    loop {
        if !core.wants_input(id, backlog) {
            return Ok(Decoded::Paused);
        }
        match conn.decoder.next_frame::<ToMaster>() {
            Ok(Some(msg)) => {
                // A client times its `Welcome` and pipelines its first request behind the
                // `Hello`: the `Welcome` goes out (at the end of the turn) before that request,
                // which may take seconds (10 million tasks), is decoded.
                let hello = matches!(msg, ToMaster::Hello { .. });
                core.handle_message(now, id, msg);
                if hello {
                    return Ok(Decoded::Paused);
                }
            }
            Ok(None) => return Ok(Decoded::All),
            Err(e) => return Err(e),
        }
    }
}

/// Appends an HTTP answer to `c`'s buffer and marks the connection closing if the answer or its
/// request says so. Returns the bytes added.
fn push_response(c: &mut Connection, now: u64, answer: Response, keep_alive: bool) -> usize {
    let before = c.out.len();
    if before == c.out_pos {
        c.progress_ms = now; // nothing waited: not stalled
    }
    let answer = if keep_alive { answer } else { answer.closing() };
    answer.write_to(&mut c.out);
    if answer.close {
        c.closing = true;
    }
    c.out.len() - before
}

/// The next connection waiting on `listener`, or `None` once none waits (or accept fails:
/// EMFILE and friends, when we keep serving the connections we have).
fn accept_one(listener: &TcpListener, kind: &str) -> Option<(TcpStream, SocketAddr)> {
    loop {
        match listener.accept() {
            Ok(pair) => return Some(pair),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("{kind}accept failed: {e}");
                return None;
            }
        }
    }
}

/// Writes as much of `out` as the socket takes, up to the gate; keeps the allocation for reuse.
/// Plaintext from `c` as from a non-blocking socket, through its TLS session if it has one.
fn read_plain(c: &mut Connection, buf: &mut [u8]) -> io::Result<usize> {
    match c.tls.as_deref_mut() {
        Some(tls) => tls.read_plain(&mut c.stream, buf),
        None => c.stream.read(buf),
    }
}

/// The answer to a plaintext HTTP request on the HTTPS port, before closing it.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 50\r\n\r\nthis port speaks HTTPS: use https:// to reach it\r\n";

fn write_out(c: &mut Connection) -> io::Result<()> {
    let limit = c.gate.unwrap_or(c.out.len());
    match c.tls.as_deref_mut() {
        // Plaintext up to the gate into the session, records out, until the socket would block.
        Some(tls) => loop {
            if c.out_pos < limit {
                c.out_pos += tls.send(&c.out[c.out_pos..limit])?;
            }
            if !tls.wants_write() {
                break;
            }
            tls.flush(&mut c.stream)?;
            if tls.wants_write() {
                break; // the socket would block
            }
        },
        None => {
            while c.out_pos < limit {
                match c.stream.write(&c.out[c.out_pos..limit]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => c.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
        if c.out.capacity() > WRITE_IDLE_CAPACITY {
            c.out = Vec::new();
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
        "master listening on {addr} (policy {}, heartbeat {} ms, timeout {} ms, auth {}, tls {}, \
         max tasks {})",
        config.core.policy,
        config.core.heartbeat_interval_ms,
        config.core.heartbeat_timeout_ms,
        if config.core.token.is_some() {
            "token"
        } else {
            "off"
        },
        match &config.tls {
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
            None => "off",
        },
        config.core.max_tasks
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn open(table: &mut ConnTable<u32>, value: u32) -> ConnId {
        let id = table.vacant_id().expect("a free slot");
        table.insert(id, value);
        id
    }

    #[test]
    fn a_reused_slot_never_gets_an_old_id() {
        let mut table = ConnTable::default();
        let mut seen = HashSet::new();
        let keep = open(&mut table, 0);
        for i in 1..=1000 {
            let id = open(&mut table, i);
            assert_eq!(id.0 & INDEX_MASK, 1, "the freed slot is reused");
            assert!(seen.insert(id), "{id:?} handed out twice");
            assert_ne!(token(id), LISTENER);
            assert_ne!(token(id), HTTP_LISTENER);
            assert_eq!(table.remove(id), Some(i));
        }
        assert_eq!(
            table.get_mut(keep),
            Some(&mut 0),
            "other slots are untouched"
        );
    }

    #[test]
    fn an_old_id_finds_nothing_in_its_reused_slot() {
        let mut table = ConnTable::default();
        let old = open(&mut table, 1);
        assert_eq!(table.remove(old), Some(1));
        let new = open(&mut table, 2);
        assert_eq!(old.0 & INDEX_MASK, new.0 & INDEX_MASK);
        // Output queued for `old`, or a late mio event for its token, must not reach `new`.
        assert_eq!(table.get_mut(old), None);
        assert_eq!(table.remove(old), None, "removing a dead id frees nothing");
        assert_eq!(table.get_mut(new), Some(&mut 2));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn generations_wrap_within_their_bits() {
        let mut table = ConnTable::default();
        let first = open(&mut table, 0);
        table.remove(first);
        table.generations[0] = GENERATION_MASK;
        let last = open(&mut table, 1);
        assert_eq!(last, ConnId(GENERATION_MASK << INDEX_BITS));
        assert_ne!(token(last), LISTENER);
        assert_ne!(token(last), HTTP_LISTENER);
        assert_eq!(table.remove(last), Some(1));
        assert_eq!(
            table.vacant_id(),
            Some(ConnId(0)),
            "wrapped, index untouched"
        );
    }
}
