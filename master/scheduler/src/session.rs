//! The session layer: who is at the other end of each connection. It owns the shell's connection
//! ids, the handshake (`Greeting`, `Hello`, the version check, authentication, the deadline) and the
//! master's identity in `Welcome`, and maps connections to the [`WorkerId`]s and [`ClientId`]s the
//! scheduler speaks. Every message leaves through it: one for a worker or client that has no
//! connection any more is dropped here, so the scheduler never names a connection and cannot
//! reach the wrong one. Like the rest of the crate it does no IO.
//!
//! A connection is `Pending` from `connect` until its `Hello` is accepted (a client at once, a
//! worker once the scheduler gives it its id with [`Sessions::accept_worker`]), then bound to its
//! peer until the shell reports it gone (`disconnect`) or the layer closes it (`close_*`, a refused
//! handshake, a missed deadline). A closed connection is forgotten at once; the `Close` output
//! tells the shell to flush and drop it.

use crate::id_hash::IdHashMap;
use crate::log_limit::LogLimiter;
use crate::{Output, Record};
use log::{debug, warn};
use protocol::auth::{self, RoleTag};
use protocol::{
    FromMaster, Incarnation, RejectKind, Role, ToMaster, WorkerId, WorkerInfo, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// The shell's handle for one connection (the mio token's value); the core never interprets it.
/// The shell never gives one id to two connections, so output for a closed one reaches no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// A client as the scheduler knows it: issued when its handshake succeeds, never issued again
/// (a later client on a reused connection id gets another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client #{}", self.0)
    }
}

/// A worker may prefetch at most this many tasks beyond its slots.
pub const MAX_PREFETCH: u32 = 1024;
/// Longest worker name, host name and group accepted, in bytes: they go into every log line,
/// status report and outcome record.
const MAX_WORKER_NAME: usize = protocol::limits::MAX_NAME_BYTES;

/// Why the master closes a connection (`Output::Close`).
#[derive(Debug, Clone, PartialEq)]
pub enum CloseReason {
    /// The peer broke the protocol; it was sent `Error` first.
    Protocol(Violation),
    /// The handshake was refused; the peer was sent `Rejected` first.
    Refused(Refusal),
    /// No valid `Hello` within the handshake deadline.
    HandshakeTimeout { timeout_ms: u64 },
    /// A worker silent for longer than the heartbeat timeout.
    HeartbeatTimeout { quiet_ms: u64 },
    /// The same worker connected again before its old connection was seen to die.
    Replaced,
    /// A client with nothing in flight sent nothing for this long (`--client-idle-timeout`).
    ClientIdle { idle_ms: u64 },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Protocol(v) => v.fmt(f),
            CloseReason::Refused(r) => r.fmt(f),
            CloseReason::HandshakeTimeout { timeout_ms } => {
                write!(f, "no handshake within {timeout_ms} ms")
            }
            CloseReason::HeartbeatTimeout { quiet_ms } => {
                write!(f, "no heartbeat for {quiet_ms} ms")
            }
            CloseReason::Replaced => {
                f.write_str("replaced by a new connection from the same worker")
            }
            CloseReason::ClientIdle { idle_ms } => {
                write!(f, "client idle for {idle_ms} ms with nothing in flight")
            }
        }
    }
}

/// A message the peer may not send in its state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Violation {
    /// The first frame was not `Hello`.
    ExpectedHello { got: &'static str },
    /// A worker sent a client request (or a second `Hello`).
    WorkerMayNotSend(&'static str),
    /// A client sent a worker report (or a second `Hello`).
    ClientMayNotSend(&'static str),
    /// `WorkerLost` is the master's verdict, never a worker's report.
    WorkerLostReported,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ExpectedHello { got } => write!(f, "expected Hello, got {got}"),
            Violation::WorkerMayNotSend(m) => write!(f, "a worker may not send {m}"),
            Violation::ClientMayNotSend(m) => write!(f, "a client may not send {m}"),
            Violation::WorkerLostReported => f.write_str("a worker may not report WorkerLost"),
        }
    }
}

/// Why a `Hello` was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    VersionMismatch {
        peer: u32,
    },
    AuthenticationFailed,
    NoSlots,
    BadName {
        len: usize,
    },
    /// Names starting with `#` would read as the master's internal ids (`#3`) in the log.
    NameLooksLikeId,
    HostTooLong {
        len: usize,
    },
    /// Empty (use no group) or too long.
    BadGroup {
        len: usize,
    },
    PrefetchTooLarge {
        asked: u32,
    },
    /// An allocation's job id that is empty or too long.
    BadAllocation {
        len: usize,
    },
    /// A live worker (connected, heard from within the heartbeat timeout) has this name and is
    /// not this process: two workers under one name would take each other's id and tasks.
    NameInUse {
        name: String,
        /// Where the live one is connected from.
        addr: String,
        quiet_ms: u64,
        timeout_ms: u64,
    },
}

impl Refusal {
    /// What the peer is told it may act on (`Rejected::kind`).
    pub fn kind(&self) -> RejectKind {
        match self {
            Refusal::VersionMismatch { .. } => RejectKind::Version,
            Refusal::AuthenticationFailed => RejectKind::Authentication,
            Refusal::NoSlots
            | Refusal::BadName { .. }
            | Refusal::NameLooksLikeId
            | Refusal::HostTooLong { .. }
            | Refusal::BadGroup { .. }
            | Refusal::PrefetchTooLarge { .. }
            | Refusal::BadAllocation { .. } => RejectKind::InvalidInfo,
            Refusal::NameInUse { .. } => RejectKind::NameInUse,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::VersionMismatch { peer } => write!(
                f,
                "protocol version mismatch: master speaks {PROTOCOL_VERSION}, peer speaks {peer}"
            ),
            Refusal::AuthenticationFailed => f.write_str("authentication failed"),
            Refusal::NoSlots => f.write_str("a worker needs at least one slot"),
            Refusal::BadName { len } => write!(
                f,
                "worker name must be 1 to {MAX_WORKER_NAME} bytes, not {len}"
            ),
            Refusal::NameLooksLikeId => f.write_str(
                "worker name must not start with '#': the log writes the master's ids that way",
            ),
            Refusal::HostTooLong { len } => write!(
                f,
                "worker host name must be at most {MAX_WORKER_NAME} bytes, not {len}"
            ),
            Refusal::BadGroup { len } => write!(
                f,
                "worker group must be 1 to {MAX_WORKER_NAME} bytes, not {len}"
            ),
            Refusal::BadAllocation { len } => write!(
                f,
                "an allocation's job id must be 1 to {MAX_WORKER_NAME} bytes, not {len}"
            ),
            Refusal::PrefetchTooLarge { asked } => {
                write!(f, "prefetch must be at most {MAX_PREFETCH}, not {asked}")
            }
            Refusal::NameInUse {
                name,
                addr,
                quiet_ms,
                timeout_ms,
            } => write!(
                f,
                "the name {name:?} is in use by a live worker (connected from {addr}, heard from \
                 {quiet_ms} ms ago; a worker silent for {timeout_ms} ms is declared dead)"
            ),
        }
    }
}

/// What the session layer needs to know of the master: the handshake's rules and `Welcome`'s content.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub heartbeat_interval_ms: u64,
    pub handshake_timeout_ms: u64,
    /// Shared secret; `None` accepts every peer.
    pub token: Option<Vec<u8>>,
    pub master_id: u64,
    pub incarnation: Incarnation,
}

/// What a frame means to the scheduler, once the session layer has taken its part.
#[derive(Debug)]
pub enum Inbound {
    /// Nothing for the scheduler: a handshake step, a refusal, or a connection already closed.
    Handled,
    /// A worker passed the handshake: the scheduler gives it its id with `accept_worker`.
    WorkerHello(WorkerHello),
    Worker(WorkerId, ToMaster),
    Client(ClientId, ToMaster),
}

/// A worker's accepted `Hello`, waiting for the scheduler to name the worker.
#[derive(Debug)]
pub struct WorkerHello {
    pub ticket: HelloTicket,
    pub info: WorkerInfo,
    pub addr: String,
}

/// Names the pending connection of a `WorkerHello` without showing the scheduler its id.
#[derive(Debug)]
pub struct HelloTicket(ConnId);

/// Who a connection the shell reports gone belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departed {
    Worker(WorkerId),
    Client(ClientId),
}

#[derive(Debug)]
enum Peer {
    /// `proof` is empty until the `Hello` is accepted, then the master's MAC for `Welcome`.
    Pending {
        nonce: Vec<u8>,
        deadline_ms: u64,
        proof: Vec<u8>,
    },
    Worker(WorkerId),
    Client(ClientId),
    /// Failed its authentication from an address that keeps failing: told `refusal` and closed
    /// only at `at_ms` (in `handshakes`), so guessing tokens goes slowly. Frames are ignored.
    Refusing {
        at_ms: u64,
        refusal: Refusal,
    },
}

#[derive(Debug)]
struct Conn {
    addr: String,
    peer: Peer,
    /// When the peer last sent a frame (or connected).
    last_active_ms: u64,
}

#[derive(Debug)]
pub struct Sessions {
    config: SessionConfig,
    /// Only looked up by id, never iterated: its hash order decides nothing.
    conns: IdHashMap<ConnId, Conn>,
    /// Pending handshakes by deadline, and delayed refusals by their time: expiries go out in one
    /// deterministic order.
    handshakes: BTreeSet<(u64, ConnId)>,
    workers: BTreeMap<WorkerId, ConnId>,
    clients: BTreeMap<ClientId, ConnId>,
    next_client: u64,
    out: VecDeque<Output>,
    /// Warnings about peers before (or at) their handshake, per IP address: a flood of wrong
    /// tokens or idle connections from one address writes a few lines and a summary a second.
    refusals: LogLimiter<String>,
    /// Failed authentications per IP address: (start of the window, failures in it).
    auth_failures: BTreeMap<String, (u64, u32)>,
}

/// Failed authentications from one address within `AUTH_FAILURE_WINDOW_MS` answered at once;
/// beyond, each waits `AUTH_FAILURE_DELAY_MS` for its `Rejected`. A script that guesses tokens
/// one connection at a time gets 10 guesses a second instead of thousands; the holder of the
/// right token from the same address is let in at once.
const AUTH_FAILURES_FREE: u32 = 5;
const AUTH_FAILURE_WINDOW_MS: u64 = 10_000;
const AUTH_FAILURE_DELAY_MS: u64 = 100;
/// Addresses whose failures are counted at once (beyond, new ones are not slowed down).
const MAX_FAILING_ADDRS: usize = 4_096;

/// Lines about one address's refused or failed handshakes: this many per window, then counted.
const REFUSAL_LINES: u32 = 5;
const REFUSAL_WINDOW_MS: u64 = 10_000;

/// The address part of `ip:port` (`[v6]:port` keeps its brackets).
fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Self {
        Sessions {
            config,
            conns: IdHashMap::default(),
            handshakes: BTreeSet::new(),
            workers: BTreeMap::new(),
            clients: BTreeMap::new(),
            next_client: 1,
            out: VecDeque::new(),
            refusals: LogLimiter::new(REFUSAL_LINES, REFUSAL_WINDOW_MS),
            auth_failures: BTreeMap::new(),
        }
    }

    /// Connections: (workers, clients, in the handshake or being refused).
    pub fn connection_counts(&self) -> (u64, u64, u64) {
        let (w, c) = (self.workers.len() as u64, self.clients.len() as u64);
        (w, c, (self.conns.len() as u64).saturating_sub(w + c))
    }

    /// No connection is open (so no deadline can pass).
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection was accepted: greet it and start its handshake deadline. The shell never
    /// reuses a live id; if it did, the earlier peer is returned as departed (the scheduler
    /// forgets it) rather than left bound to a connection that is no longer its own.
    pub fn connect(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        addr: String,
        nonce: Vec<u8>,
    ) -> Option<Departed> {
        let earlier = self.disconnect(conn, &"its connection id was given to a new connection");
        self.out.push_back(Output::Send {
            conn,
            msg: FromMaster::Greeting {
                version: PROTOCOL_VERSION,
                nonce: nonce.clone(),
            },
        });
        let deadline_ms = now_ms + self.config.handshake_timeout_ms;
        self.handshakes.insert((deadline_ms, conn));
        self.conns.insert(
            conn,
            Conn {
                addr,
                last_active_ms: now_ms,
                peer: Peer::Pending {
                    nonce,
                    deadline_ms,
                    proof: Vec::new(),
                },
            },
        );
        earlier
    }

    /// A client that needs no handshake (the shell's HTTP side, which checked the bearer token
    /// itself): bound at once, with no `Greeting` and no deadline. Like [`Sessions::connect`], a
    /// live id given again departs its earlier peer.
    pub fn connect_local(&mut self, now_ms: u64, conn: ConnId, addr: String) -> Option<Departed> {
        let earlier = self.disconnect(conn, &"its connection id was given to a new connection");
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.conns.insert(
            conn,
            Conn {
                addr,
                last_active_ms: now_ms,
                peer: Peer::Client(id),
            },
        );
        self.clients.insert(id, conn);
        earlier
    }

    /// One decoded frame from `conn`: handshake frames are handled here, the rest are handed on
    /// with the peer's id.
    pub fn receive(&mut self, now_ms: u64, conn: ConnId, msg: ToMaster) -> Inbound {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Inbound::Handled; // closed by us; late bytes are ignored
        };
        c.last_active_ms = now_ms;
        let c = &*c;
        match (&c.peer, msg) {
            (Peer::Worker(id), msg) => Inbound::Worker(*id, msg),
            (Peer::Client(id), msg) => Inbound::Client(*id, msg),
            (Peer::Refusing { .. }, _) => Inbound::Handled,
            (
                Peer::Pending { .. },
                ToMaster::Hello {
                    version,
                    role,
                    auth,
                    nonce,
                },
            ) => self.on_hello(now_ms, conn, version, role, &auth, &nonce),
            (Peer::Pending { .. }, other) => {
                let v = Violation::ExpectedHello { got: other.name() };
                if self.refusals.allow(now_ms, &ip_of(&c.addr).to_string()) {
                    warn!("protocol error from {}: {v}", c.addr);
                }
                self.close(conn, CloseReason::Protocol(v));
                Inbound::Handled
            }
        }
    }

    fn on_hello(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        version: u32,
        role: Role,
        answer: &[u8],
        peer_nonce: &[u8],
    ) -> Inbound {
        let Some(Conn {
            addr,
            peer: Peer::Pending { nonce, .. },
            ..
        }) = self.conns.get(&conn)
        else {
            return Inbound::Handled;
        };
        let tag = RoleTag::of(&role);
        let token = self.config.token.as_deref();
        let refusal = if version != PROTOCOL_VERSION {
            Some(Refusal::VersionMismatch { peer: version })
        } else if token.is_some_and(|t| !auth::verify_peer(t, tag, nonce, peer_nonce, answer)) {
            Some(Refusal::AuthenticationFailed)
        } else if let Role::Worker(info) = &role {
            worker_refusal(info)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // IMPORTANT: a wrong token costs one line only while the address stays under its
            // budget: 500 attempts a second write a handful and a summary a second.
            let ip = ip_of(addr).to_string();
            if self.refusals.allow(now_ms, &ip) {
                warn!("refused connection from {addr}: {refusal}");
            }
            if refusal == Refusal::AuthenticationFailed && self.count_auth_failure(now_ms, ip) {
                self.refuse_later(now_ms, conn, refusal);
            } else {
                self.close(conn, CloseReason::Refused(refusal));
            }
            return Inbound::Handled;
        }
        let master_proof = auth::master_proof(token, tag, nonce, peer_nonce);
        let addr = addr.clone();
        if let Some(Conn {
            peer: Peer::Pending { proof, .. },
            ..
        }) = self.conns.get_mut(&conn)
        {
            *proof = master_proof;
        }
        match role {
            Role::Client => {
                debug!("client connected from {addr}");
                let id = ClientId(self.next_client);
                self.next_client += 1;
                let proof = self.bind(conn, Peer::Client(id));
                self.clients.insert(id, conn);
                let interval_ms = self.config.heartbeat_interval_ms;
                self.welcome(conn, None, proof, interval_ms);
                Inbound::Handled
            }
            Role::Worker(info) => Inbound::WorkerHello(WorkerHello {
                ticket: HelloTicket(conn),
                info,
                addr,
            }),
        }
    }

    /// Counts a failed authentication from `ip`; returns whether its answer is to be delayed.
    fn count_auth_failure(&mut self, now_ms: u64, ip: String) -> bool {
        if !self.auth_failures.contains_key(&ip) && self.auth_failures.len() >= MAX_FAILING_ADDRS {
            return false;
        }
        let (start_ms, failures) = self.auth_failures.entry(ip).or_insert((now_ms, 0));
        if now_ms.saturating_sub(*start_ms) >= AUTH_FAILURE_WINDOW_MS {
            (*start_ms, *failures) = (now_ms, 0);
        }
        *failures += 1;
        *failures > AUTH_FAILURES_FREE
    }

    /// Holds `conn`'s refusal until `AUTH_FAILURE_DELAY_MS` from now (`expire_handshakes`).
    fn refuse_later(&mut self, now_ms: u64, conn: ConnId, refusal: Refusal) {
        let at_ms = now_ms + AUTH_FAILURE_DELAY_MS;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Peer::Pending { deadline_ms, .. } = c.peer {
            self.handshakes.remove(&(deadline_ms, conn));
        }
        c.peer = Peer::Refusing { at_ms, refusal };
        self.handshakes.insert((at_ms, conn));
    }

    /// When the next delayed refusal or handshake deadline is due (the sweep runs every 100 ms;
    /// that granularity is enough for both).
    #[cfg(test)]
    pub fn next_refusal(&self) -> Option<u64> {
        self.handshakes
            .iter()
            .find(|(_, conn)| {
                matches!(
                    self.conns.get(conn).map(|c| &c.peer),
                    Some(Peer::Refusing { .. })
                )
            })
            .map(|&(at, _)| at)
    }

    /// Refuses a worker's `Hello` for a reason only the scheduler knows (its name is taken).
    pub fn refuse_worker(&mut self, now_ms: u64, ticket: HelloTicket, refusal: Refusal) {
        let conn = ticket.0;
        if let Some(c) = self.conns.get(&conn) {
            if self.refusals.allow(now_ms, &ip_of(&c.addr).to_string()) {
                warn!("refused worker from {}: {refusal}", c.addr);
            }
            self.close(conn, CloseReason::Refused(refusal));
        }
    }

    /// Binds a worker's connection to the id the scheduler gave it and welcomes it, telling it
    /// to report every `heartbeat_interval_ms`. Returns whether another connection held that
    /// worker: it is closed (`Replaced`), and the scheduler must take back what it had assigned
    /// there.
    pub fn accept_worker(
        &mut self,
        ticket: HelloTicket,
        id: WorkerId,
        heartbeat_interval_ms: u64,
    ) -> bool {
        let conn = ticket.0;
        let replaced = match self.workers.get(&id) {
            Some(&old) if old != conn => {
                self.close(old, CloseReason::Replaced);
                true
            }
            _ => false,
        };
        if !matches!(
            self.conns.get(&conn).map(|c| &c.peer),
            Some(Peer::Pending { .. })
        ) {
            return replaced; // closed meanwhile (the scheduler accepts in the same call)
        }
        let proof = self.bind(conn, Peer::Worker(id));
        self.workers.insert(id, conn);
        self.welcome(conn, Some(id), proof, heartbeat_interval_ms);
        replaced
    }

    /// Binds a pending connection to its peer; returns the master's proof for its `Welcome`.
    fn bind(&mut self, conn: ConnId, peer: Peer) -> Vec<u8> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        match std::mem::replace(&mut c.peer, peer) {
            Peer::Pending {
                deadline_ms, proof, ..
            } => {
                self.handshakes.remove(&(deadline_ms, conn));
                proof
            }
            _ => Vec::new(),
        }
    }

    fn welcome(
        &mut self,
        conn: ConnId,
        worker_id: Option<WorkerId>,
        proof: Vec<u8>,
        heartbeat_interval_ms: u64,
    ) {
        self.out.push_back(Output::Send {
            conn,
            msg: FromMaster::Welcome {
                worker_id,
                heartbeat_interval_ms,
                master_id: self.config.master_id,
                incarnation: self.config.incarnation,
                proof,
            },
        });
    }

    /// The shell saw the connection close or fail. Returns whose it was, if it had finished its
    /// handshake; the id is forgotten either way.
    pub fn disconnect(&mut self, conn: ConnId, reason: &dyn fmt::Display) -> Option<Departed> {
        let c = self.forget(conn)?;
        match c.peer {
            Peer::Worker(id) => Some(Departed::Worker(id)),
            Peer::Client(id) => Some(Departed::Client(id)),
            Peer::Pending { .. } | Peer::Refusing { .. } => {
                debug!("{} left before the handshake: {reason}", c.addr);
                None
            }
        }
    }

    /// Closes every connection whose handshake deadline has passed.
    pub fn expire_handshakes(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, conn)) = self.handshakes.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.handshakes.pop_first();
            if let Some(Conn {
                peer: Peer::Refusing { refusal, .. },
                ..
            }) = self.conns.get(&conn)
            {
                let reason = CloseReason::Refused(refusal.clone());
                self.close(conn, reason);
                continue;
            }
            if let Some(c) = self.conns.get(&conn) {
                if self.refusals.allow(now_ms, &ip_of(&c.addr).to_string()) {
                    warn!(
                        "{}: no handshake within {} ms, closing",
                        c.addr, self.config.handshake_timeout_ms
                    );
                }
            }
            let timeout_ms = self.config.handshake_timeout_ms;
            self.close(conn, CloseReason::HandshakeTimeout { timeout_ms });
        }
    }

    /// Some refusal line waits for its summary (the sweep must go on).
    pub fn has_pending_logs(&self) -> bool {
        self.refusals.has_pending()
    }

    /// Writes one line per address whose refusals were not written, at most once a second.
    pub fn summarise_logs(&mut self, now_ms: u64) {
        self.auth_failures.retain(|_, &mut (start_ms, _)| {
            now_ms.saturating_sub(start_ms) < AUTH_FAILURE_WINDOW_MS
        });
        for s in self.refusals.summarise(now_ms) {
            let from = s.peer.as_deref().unwrap_or("other addresses");
            warn!(
                "{from}: {} more refused or failed handshakes in the last {:.1} s (not logged \
                 one by one)",
                s.suppressed,
                s.over_ms as f64 / 1e3
            );
        }
    }

    /// The earliest handshake deadline, if a handshake is pending (the core's sweep, armed
    /// while any connection is open, checks them).
    #[cfg(test)]
    pub fn next_deadline(&self) -> Option<u64> {
        self.handshakes.first().map(|&(at, _)| at)
    }

    /// Closes `worker`'s connection, if it has one. The scheduler forgets the worker itself.
    pub fn close_worker(&mut self, worker: WorkerId, reason: CloseReason) {
        if let Some(&conn) = self.workers.get(&worker) {
            self.close(conn, reason);
        }
    }

    /// Clients that have sent nothing for `timeout_ms`, in id order (the caller spares those
    /// with a request in flight).
    pub fn idle_clients(&self, now_ms: u64, timeout_ms: u64) -> Vec<(ClientId, u64)> {
        self.clients
            .iter()
            .filter_map(|(&id, conn)| {
                let idle_ms = now_ms.saturating_sub(self.conns.get(conn)?.last_active_ms);
                (idle_ms >= timeout_ms).then_some((id, idle_ms))
            })
            .collect()
    }

    /// Closes `client`'s connection, if it has one.
    pub fn close_client(&mut self, client: ClientId, reason: CloseReason) {
        if let Some(&conn) = self.clients.get(&client) {
            if let CloseReason::Protocol(v) = &reason {
                if let Some(c) = self.conns.get(&conn) {
                    warn!("protocol error from {}: {v}", c.addr);
                }
            }
            self.close(conn, reason);
        }
    }

    /// Says why (`Error` for a violation, `Rejected` for a refusal), asks the shell to close, and
    /// forgets the connection: nothing more is sent to it.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        let farewell = match &reason {
            CloseReason::Protocol(v) => Some(FromMaster::Error {
                message: v.to_string(),
            }),
            CloseReason::Refused(r) => Some(FromMaster::Rejected {
                reason: r.to_string(),
                kind: r.kind(),
            }),
            _ => None,
        };
        if let Some(msg) = farewell {
            self.out.push_back(Output::Send { conn, msg });
        }
        self.out.push_back(Output::Close { conn, reason });
        self.forget(conn);
    }

    fn forget(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        match c.peer {
            Peer::Pending { deadline_ms, .. } => {
                self.handshakes.remove(&(deadline_ms, conn));
            }
            Peer::Refusing { at_ms, .. } => {
                self.handshakes.remove(&(at_ms, conn));
            }
            Peer::Worker(id) => {
                self.workers.remove(&id);
            }
            Peer::Client(id) => {
                self.clients.remove(&id);
            }
        }
        Some(c)
    }

    /// Sends to `worker`'s connection; dropped if it has none.
    pub fn send_worker(&mut self, worker: WorkerId, msg: FromMaster) {
        if let Some(&conn) = self.workers.get(&worker) {
            self.out.push_back(Output::Send { conn, msg });
        }
    }

    /// Sends to `client`'s connection; dropped if it has gone.
    pub fn send_client(&mut self, client: ClientId, msg: FromMaster) {
        if let Some(&conn) = self.clients.get(&client) {
            self.out.push_back(Output::Send { conn, msg });
        }
    }

    /// The client on `conn`, if a client has it.
    pub fn client_on(&self, conn: ConnId) -> Option<ClientId> {
        match self.conns.get(&conn)?.peer {
            Peer::Client(id) => Some(id),
            _ => None,
        }
    }

    /// The connection of `client`, if it still has one.
    pub fn conn_of(&self, client: ClientId) -> Option<ConnId> {
        self.clients.get(&client).copied()
    }

    /// Queues a journal record, in order with this turn's messages.
    pub fn push_record(&mut self, record: Record) {
        self.out.push_back(Output::Persist(record));
    }

    /// Queues an operation for the log store, in order with this turn's messages.
    pub fn push_log(&mut self, op: crate::LogOp) {
        self.out.push_back(Output::Log(op));
    }

    /// Queues a client's allocation-queue request for the shell, in order with this turn's
    /// messages.
    pub fn push_alloc(&mut self, conn: ConnId, request: crate::AllocRequest) {
        self.out.push_back(Output::Alloc { conn, request });
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether `worker` has a connection (for the scheduler's cross-checks).
    #[cfg(test)]
    pub fn has_worker(&self, worker: WorkerId) -> bool {
        self.workers.contains_key(&worker)
    }

    /// The maps agree with each other.
    #[cfg(test)]
    pub fn sanity_check(&self) {
        let mut pending = 0;
        for (&conn, c) in &self.conns {
            match c.peer {
                Peer::Pending { deadline_ms, .. } => {
                    pending += 1;
                    assert!(self.handshakes.contains(&(deadline_ms, conn)));
                }
                Peer::Refusing { at_ms, .. } => {
                    pending += 1;
                    assert!(self.handshakes.contains(&(at_ms, conn)));
                }
                Peer::Worker(id) => assert_eq!(self.workers.get(&id), Some(&conn)),
                Peer::Client(id) => assert_eq!(self.clients.get(&id), Some(&conn)),
            }
        }
        assert_eq!(pending, self.handshakes.len());
        assert_eq!(
            self.conns.len(),
            pending + self.workers.len() + self.clients.len()
        );
    }
}

/// Whether a worker's declared info is acceptable.
fn worker_refusal(info: &WorkerInfo) -> Option<Refusal> {
    if info.slots == 0 {
        Some(Refusal::NoSlots)
    } else if info.name.is_empty() || info.name.len() > MAX_WORKER_NAME {
        Some(Refusal::BadName {
            len: info.name.len(),
        })
    } else if info.name.starts_with('#') {
        Some(Refusal::NameLooksLikeId)
    } else if info.host.len() > MAX_WORKER_NAME {
        Some(Refusal::HostTooLong {
            len: info.host.len(),
        })
    } else if let Some(len) = info
        .group
        .as_ref()
        .map(String::len)
        .filter(|&len| len == 0 || len > MAX_WORKER_NAME)
    {
        Some(Refusal::BadGroup { len })
    } else if let Some(len) = info
        .allocation
        .as_ref()
        .map(|a| a.job_id.len())
        .filter(|&len| len == 0 || len > MAX_WORKER_NAME)
    {
        Some(Refusal::BadAllocation { len })
    } else if info.prefetch > MAX_PREFETCH {
        Some(Refusal::PrefetchTooLarge {
            asked: info.prefetch,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::auth::NONCE_LEN;

    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];
    /// What every test peer sends as its nonce (`hello` puts it in).
    const PEER_NONCE: [u8; NONCE_LEN] = [5; NONCE_LEN];

    fn answer(token: &[u8], role: RoleTag) -> Vec<u8> {
        auth::peer_answer(Some(token), role, &NONCE, &PEER_NONCE)
    }

    fn sessions(token: Option<&[u8]>) -> Sessions {
        Sessions::new(SessionConfig {
            heartbeat_interval_ms: 1_000,
            handshake_timeout_ms: 5_000,
            token: token.map(<[u8]>::to_vec),
            master_id: 42,
            incarnation: Incarnation(3),
        })
    }

    fn drain(s: &mut Sessions) -> Vec<Output> {
        let out = std::iter::from_fn(|| s.poll_output()).collect();
        s.sanity_check();
        out
    }

    fn hello(role: Role, auth: Vec<u8>) -> ToMaster {
        ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role,
            auth,
            nonce: PEER_NONCE.to_vec(),
        }
    }

    fn worker(name: &str) -> Role {
        Role::Worker(WorkerInfo {
            allocation: None,
            name: name.into(),
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

    /// Opens `conn` and completes a client handshake on it.
    fn client(s: &mut Sessions, conn: ConnId) -> ClientId {
        assert_eq!(s.connect(0, conn, "c".into(), NONCE.to_vec()), None);
        assert!(matches!(
            s.receive(0, conn, hello(Role::Client, vec![])),
            Inbound::Handled
        ));
        drain(s);
        match s.receive(0, conn, ToMaster::Status) {
            Inbound::Client(id, ToMaster::Status) => id,
            other => panic!("expected a client's message, got {other:?}"),
        }
    }

    /// Opens `conn` and binds it to worker `id`; returns whether that replaced a connection.
    fn join(s: &mut Sessions, conn: ConnId, name: &str, id: WorkerId) -> bool {
        s.connect(0, conn, "w".into(), NONCE.to_vec());
        let Inbound::WorkerHello(h) = s.receive(0, conn, hello(worker(name), vec![])) else {
            panic!("expected a worker's hello");
        };
        assert_eq!(h.info.name, name);
        s.accept_worker(h.ticket, id, 1_000)
    }

    fn send(conn: ConnId, msg: FromMaster) -> Output {
        Output::Send { conn, msg }
    }

    #[test]
    fn an_accepted_client_is_welcomed_with_the_masters_identity() {
        let mut s = sessions(None);
        let conn = ConnId(1);
        s.connect(0, conn, "c".into(), NONCE.to_vec());
        assert_eq!(
            drain(&mut s),
            vec![send(
                conn,
                FromMaster::Greeting {
                    version: PROTOCOL_VERSION,
                    nonce: NONCE.to_vec()
                }
            )]
        );
        assert!(matches!(
            s.receive(0, conn, hello(Role::Client, vec![])),
            Inbound::Handled
        ));
        let welcome = FromMaster::Welcome {
            worker_id: None,
            heartbeat_interval_ms: 1_000,
            master_id: 42,
            incarnation: Incarnation(3),
            proof: Vec::new(),
        };
        assert_eq!(drain(&mut s), vec![send(conn, welcome)]);
        assert_eq!(s.next_deadline(), None, "no handshake pending");
        assert!(matches!(
            s.receive(0, conn, ToMaster::Status),
            Inbound::Client(_, ToMaster::Status)
        ));
    }

    #[test]
    fn a_worker_is_bound_to_the_id_the_scheduler_gives_it() {
        let mut s = sessions(None);
        let conn = ConnId(1);
        assert!(!join(&mut s, conn, "a", WorkerId(4)));
        let out = drain(&mut s);
        assert!(matches!(
            out.last(),
            Some(Output::Send {
                conn: c,
                msg: FromMaster::Welcome {
                    worker_id: Some(WorkerId(4)),
                    incarnation: Incarnation(3),
                    ..
                }
            }) if *c == conn
        ));
        assert!(matches!(
            s.receive(0, conn, ToMaster::Running(vec![])),
            Inbound::Worker(WorkerId(4), ToMaster::Running(_))
        ));
        s.send_worker(WorkerId(4), FromMaster::Cancel(vec![]));
        assert_eq!(drain(&mut s), vec![send(conn, FromMaster::Cancel(vec![]))]);
    }

    #[test]
    fn refused_handshakes_say_why_and_close() {
        let mut s = sessions(Some(b"secret"));
        let cases: Vec<(ToMaster, Refusal)> = vec![
            (
                ToMaster::Hello {
                    version: PROTOCOL_VERSION + 1,
                    role: Role::Client,
                    auth: answer(b"secret", RoleTag::Client),
                    nonce: PEER_NONCE.to_vec(),
                },
                Refusal::VersionMismatch {
                    peer: PROTOCOL_VERSION + 1,
                },
            ),
            (
                hello(Role::Client, answer(b"wrong", RoleTag::Client)),
                Refusal::AuthenticationFailed,
            ),
            (hello(Role::Client, vec![]), Refusal::AuthenticationFailed),
            (
                hello(
                    Role::Worker(WorkerInfo {
                        slots: 0,
                        ..worker_info("a")
                    }),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::NoSlots,
            ),
            (
                hello(
                    Role::Worker(worker_info(&"x".repeat(MAX_WORKER_NAME + 1))),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::BadName {
                    len: MAX_WORKER_NAME + 1,
                },
            ),
            (
                hello(
                    Role::Worker(worker_info("#2")),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::NameLooksLikeId,
            ),
            (
                hello(
                    Role::Worker(WorkerInfo {
                        host: "h".repeat(MAX_WORKER_NAME + 1),
                        ..worker_info("a")
                    }),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::HostTooLong {
                    len: MAX_WORKER_NAME + 1,
                },
            ),
            (
                hello(
                    Role::Worker(WorkerInfo {
                        group: Some("g".repeat(MAX_WORKER_NAME + 1)),
                        ..worker_info("a")
                    }),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::BadGroup {
                    len: MAX_WORKER_NAME + 1,
                },
            ),
            (
                hello(
                    Role::Worker(WorkerInfo {
                        group: Some(String::new()),
                        ..worker_info("a")
                    }),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::BadGroup { len: 0 },
            ),
            (
                // A worker's answer replayed as a client's `Hello` (a relay posing as the master).
                hello(Role::Client, answer(b"secret", RoleTag::Worker)),
                Refusal::AuthenticationFailed,
            ),
            (
                // The right MAC for another peer nonce than the one sent.
                hello(
                    Role::Client,
                    auth::peer_answer(Some(b"secret"), RoleTag::Client, &NONCE, &[6; NONCE_LEN]),
                ),
                Refusal::AuthenticationFailed,
            ),
            (
                hello(
                    Role::Worker(WorkerInfo {
                        prefetch: MAX_PREFETCH + 1,
                        ..worker_info("a")
                    }),
                    answer(b"secret", RoleTag::Worker),
                ),
                Refusal::PrefetchTooLarge {
                    asked: MAX_PREFETCH + 1,
                },
            ),
        ];
        for (i, (msg, refusal)) in cases.into_iter().enumerate() {
            let conn = ConnId(i + 1);
            s.connect(0, conn, "x".into(), NONCE.to_vec());
            drain(&mut s);
            assert!(matches!(s.receive(0, conn, msg), Inbound::Handled));
            assert_eq!(
                drain(&mut s),
                vec![
                    send(
                        conn,
                        FromMaster::Rejected {
                            reason: refusal.to_string(),
                            kind: refusal.kind(),
                        }
                    ),
                    Output::Close {
                        conn,
                        reason: CloseReason::Refused(refusal)
                    }
                ]
            );
            // Forgotten: late frames are ignored and nothing more is sent.
            assert!(matches!(
                s.receive(0, conn, ToMaster::Status),
                Inbound::Handled
            ));
            assert!(drain(&mut s).is_empty());
        }
        assert!(s.is_empty());
        // The right answer passes.
        let conn = ConnId(99);
        s.connect(0, conn, "x".into(), NONCE.to_vec());
        let answer = answer(b"secret", RoleTag::Client);
        assert!(matches!(
            s.receive(0, conn, hello(Role::Client, answer)),
            Inbound::Handled
        ));
        let out = drain(&mut s);
        let Some(Output::Send {
            msg: FromMaster::Welcome { proof, .. },
            ..
        }) = out.last()
        else {
            panic!("expected Welcome, got {out:?}");
        };
        assert!(
            auth::verify_master(b"secret", RoleTag::Client, &NONCE, &PEER_NONCE, proof),
            "the master proves the token over both nonces, for a client"
        );
    }

    /// An address that keeps failing its authentication is answered late; the holder of the
    /// right token from the same address is let in at once, and another address is not slowed.
    #[test]
    fn repeated_auth_failures_from_one_address_are_answered_late() {
        let mut s = sessions(Some(b"secret"));
        let wrong = || hello(Role::Client, answer(b"wrong", RoleTag::Client));
        let mut conn = 0;
        let mut open = |s: &mut Sessions, addr: &str| {
            conn += 1;
            s.connect(1_000, ConnId(conn), addr.into(), NONCE.to_vec());
            drain(s);
            ConnId(conn)
        };
        for _ in 0..AUTH_FAILURES_FREE {
            let c = open(&mut s, "10.0.0.1:5");
            s.receive(1_000, c, wrong());
            assert!(matches!(
                &drain(&mut s)[..],
                [
                    Output::Send {
                        msg: FromMaster::Rejected { .. },
                        ..
                    },
                    Output::Close { .. }
                ]
            ));
        }
        let slow = open(&mut s, "10.0.0.1:6");
        s.receive(1_000, slow, wrong());
        assert!(drain(&mut s).is_empty(), "answered later");
        assert_eq!(s.next_refusal(), Some(1_000 + AUTH_FAILURE_DELAY_MS));
        // Frames meanwhile are ignored.
        s.receive(1_010, slow, wrong());
        assert!(drain(&mut s).is_empty());
        // The right token from the same address, and a wrong one from another, at once.
        let good = open(&mut s, "10.0.0.1:7");
        s.receive(
            1_010,
            good,
            hello(Role::Client, answer(b"secret", RoleTag::Client)),
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Output::Send {
                msg: FromMaster::Welcome { .. },
                ..
            }]
        ));
        let other = open(&mut s, "10.0.0.2:5");
        s.receive(1_010, other, wrong());
        assert_eq!(drain(&mut s).len(), 2);
        s.expire_handshakes(1_000 + AUTH_FAILURE_DELAY_MS - 1);
        assert!(drain(&mut s).is_empty());
        s.expire_handshakes(1_000 + AUTH_FAILURE_DELAY_MS);
        assert_eq!(
            drain(&mut s),
            vec![
                send(
                    slow,
                    FromMaster::Rejected {
                        reason: Refusal::AuthenticationFailed.to_string(),
                        kind: RejectKind::Authentication,
                    }
                ),
                Output::Close {
                    conn: slow,
                    reason: CloseReason::Refused(Refusal::AuthenticationFailed)
                }
            ]
        );
        // After the window, the address starts afresh.
        s.summarise_logs(1_000 + AUTH_FAILURE_WINDOW_MS);
        let late = open(&mut s, "10.0.0.1:8");
        s.receive(1_000 + AUTH_FAILURE_WINDOW_MS, late, wrong());
        assert_eq!(drain(&mut s).len(), 2, "answered at once again");
    }

    /// A worker's `Welcome` proves the token for a worker: bound to its role and to both nonces.
    #[test]
    fn a_worker_is_welcomed_with_the_masters_proof() {
        let mut s = sessions(Some(b"secret"));
        let conn = ConnId(1);
        s.connect(0, conn, "w".into(), NONCE.to_vec());
        let msg = hello(worker("a"), answer(b"secret", RoleTag::Worker));
        let Inbound::WorkerHello(h) = s.receive(0, conn, msg) else {
            panic!("expected a worker's hello");
        };
        s.accept_worker(h.ticket, WorkerId(1), 1_000);
        let out = drain(&mut s);
        let Some(Output::Send {
            msg: FromMaster::Welcome { proof, .. },
            ..
        }) = out.last()
        else {
            panic!("expected Welcome, got {out:?}");
        };
        assert!(auth::verify_master(
            b"secret",
            RoleTag::Worker,
            &NONCE,
            &PEER_NONCE,
            proof
        ));
        assert!(!auth::verify_master(
            b"secret",
            RoleTag::Client,
            &NONCE,
            &PEER_NONCE,
            proof
        ));
    }

    fn worker_info(name: &str) -> WorkerInfo {
        match worker(name) {
            Role::Worker(info) => info,
            Role::Client => unreachable!(),
        }
    }

    #[test]
    fn a_frame_before_hello_is_a_protocol_error() {
        let mut s = sessions(None);
        let conn = ConnId(1);
        s.connect(0, conn, "x".into(), NONCE.to_vec());
        drain(&mut s);
        assert!(matches!(
            s.receive(0, conn, ToMaster::Status),
            Inbound::Handled
        ));
        let v = Violation::ExpectedHello { got: "Status" };
        assert_eq!(
            drain(&mut s),
            vec![
                send(
                    conn,
                    FromMaster::Error {
                        message: "expected Hello, got Status".into()
                    }
                ),
                Output::Close {
                    conn,
                    reason: CloseReason::Protocol(v)
                }
            ]
        );
    }

    #[test]
    fn the_handshake_deadline_closes_only_pending_connections() {
        let mut s = sessions(None);
        let (slow, quick, late) = (ConnId(1), ConnId(2), ConnId(3));
        s.connect(0, slow, "slow".into(), NONCE.to_vec());
        client(&mut s, quick);
        s.connect(1_000, late, "late".into(), NONCE.to_vec());
        drain(&mut s);
        assert_eq!(s.next_deadline(), Some(5_000));
        s.expire_handshakes(4_999);
        assert!(
            drain(&mut s).is_empty(),
            "before the deadline nothing happens"
        );
        s.expire_handshakes(5_000);
        let timeout = CloseReason::HandshakeTimeout { timeout_ms: 5_000 };
        assert_eq!(
            drain(&mut s),
            vec![Output::Close {
                conn: slow,
                reason: timeout.clone()
            }]
        );
        assert_eq!(s.next_deadline(), Some(6_000));
        s.expire_handshakes(60_000);
        assert_eq!(
            drain(&mut s),
            vec![Output::Close {
                conn: late,
                reason: timeout
            }]
        );
        assert_eq!(s.next_deadline(), None);
        assert!(
            matches!(s.receive(0, quick, ToMaster::Status), Inbound::Client(..)),
            "the welcomed client stays"
        );
    }

    #[test]
    fn output_for_a_gone_peer_is_dropped_and_client_ids_are_never_reused() {
        let mut s = sessions(None);
        // The same connection id, over and over (a shell that reused its slots).
        let conn = ConnId(5);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let id = client(&mut s, conn);
            assert!(!seen.contains(&id), "{id} issued twice");
            assert_eq!(s.disconnect(conn, &"bye"), Some(Departed::Client(id)));
            assert_eq!(s.disconnect(conn, &"bye"), None, "idempotent");
            seen.push(id);
        }
        let current = client(&mut s, conn);
        for &old in &seen {
            s.send_client(
                old,
                FromMaster::Error {
                    message: "x".into(),
                },
            );
        }
        assert!(
            drain(&mut s).is_empty(),
            "nothing for the earlier clients reaches the one now on their connection id"
        );
        s.send_client(
            current,
            FromMaster::Error {
                message: "y".into(),
            },
        );
        assert_eq!(
            drain(&mut s),
            vec![send(
                conn,
                FromMaster::Error {
                    message: "y".into()
                }
            )]
        );
        // A worker closed by the master hears nothing more either.
        join(&mut s, ConnId(6), "a", WorkerId(1));
        drain(&mut s);
        s.close_worker(
            WorkerId(1),
            CloseReason::HeartbeatTimeout { quiet_ms: 3_000 },
        );
        s.send_worker(WorkerId(1), FromMaster::Cancel(vec![]));
        s.close_worker(WorkerId(1), CloseReason::Replaced);
        assert_eq!(
            drain(&mut s),
            vec![Output::Close {
                conn: ConnId(6),
                reason: CloseReason::HeartbeatTimeout { quiet_ms: 3_000 }
            }]
        );
        assert!(matches!(
            s.receive(0, ConnId(6), ToMaster::Running(vec![])),
            Inbound::Handled
        ));
    }

    #[test]
    fn a_worker_connecting_again_replaces_its_old_connection() {
        let mut s = sessions(None);
        let (old, new) = (ConnId(1), ConnId(2));
        assert!(!join(&mut s, old, "a", WorkerId(1)));
        drain(&mut s);
        assert!(join(&mut s, new, "a", WorkerId(1)));
        let out = drain(&mut s);
        assert_eq!(
            out[1],
            Output::Close {
                conn: old,
                reason: CloseReason::Replaced
            },
            "{out:?}"
        );
        assert!(matches!(
            out[2],
            Output::Send { conn, msg: FromMaster::Welcome { .. } } if conn == new
        ));
        assert_eq!(
            s.disconnect(old, &"late"),
            None,
            "the old one is already forgotten"
        );
        s.send_worker(WorkerId(1), FromMaster::Cancel(vec![]));
        assert_eq!(drain(&mut s), vec![send(new, FromMaster::Cancel(vec![]))]);
    }

    #[test]
    fn a_reused_live_connection_id_departs_the_earlier_peer() {
        let mut s = sessions(None);
        join(&mut s, ConnId(1), "a", WorkerId(1));
        assert_eq!(
            s.connect(0, ConnId(1), "b".into(), NONCE.to_vec()),
            Some(Departed::Worker(WorkerId(1)))
        );
        s.send_worker(WorkerId(1), FromMaster::Cancel(vec![]));
        let out = drain(&mut s);
        assert!(
            out.iter().all(|o| !matches!(
                o,
                Output::Send {
                    msg: FromMaster::Cancel(_),
                    ..
                }
            )),
            "{out:?}"
        );
    }
}
