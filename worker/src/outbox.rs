//! The bytes on their way to the master: the loop queues frames, a writer thread that owns the
//! socket's write half writes them. Nothing here makes the loop wait for the master.
//!
//! Why a thread and not only non-blocking writes on the loop: the loop waits on its event channel,
//! not on sockets, so it could not learn that a full socket has drained (the master's mio shell
//! has WRITABLE interest for that; here it would take a retry timer, which is polling). The writer
//! thread is the twin of the reader thread: it blocks in `write` as that one blocks in `read`, and
//! speaks to the loop through the same channel. When the writer has nothing queued or in flight,
//! the loop sends the turn's bytes itself with one `send(MSG_DONTWAIT)`, which never blocks; the
//! thread gets only what the socket did not take. Otherwise the loop takes a lock to swap (or,
//! while the writer is behind, append) one buffer per turn.
//!
//! Bounds, in the spirit of rustls's `wants_write`: once `limit` bytes wait, [`Outbox::accepting`]
//! says no and the session keeps its reports (bounded by the tasks the master assigned) until the
//! writer has drained half and says so with [`WriterNote::Drained`]. Progress is checked apart:
//! bytes that wait without a single one reaching the socket for a while mean a master that does
//! not read, which the session gives up on ([`Outbox::stall_deadline`]). Completions in bytes that
//! had not reached the socket when the connection is given up come back from [`Outbox::close`]
//! to be reported again on the next connection.

use log::error;
use protocol::transport::Transport;
use protocol::{encode_frame, Completion, ToMaster};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Unwritten bytes beyond which the loop stops queueing: one frame of the largest size fits, and a
/// master that reads at all drains it long before its reports are stale.
pub const OUTBOX_LIMIT: usize = protocol::MAX_FRAME;
/// Unwritten bytes below which commands' output may be queued (`Outbox::wants_output`): far
/// below `OUTBOX_LIMIT`, so a heartbeat or a completion never waits behind more than a couple of
/// MiB of output, and a master on a slow link does not take a worker for dead.
pub const OUTPUT_BACKLOG_BYTES: usize = 1 << 20;
/// Most bytes per `write`. A blocking `write` returns only once all its bytes are in the socket,
/// so this is the grain at which progress is seen: a master that takes less than this per stall
/// timeout counts as not reading.
const WRITE_CHUNK: usize = 64 << 10;
/// A buffer that grew past this in a burst is given back once empty, so an idle connection does
/// not keep three burst-sized buffers.
const KEEP_CAPACITY: usize = 1 << 20;

/// What the writer thread tells the loop.
#[derive(Debug)]
pub enum WriterNote {
    /// A write failed: the connection is gone.
    Failed(io::Error),
    /// The loop found the outbox full and half of it has been written since.
    Drained,
}

/// The accounting between the loop and the writer thread, kept under one lock. No IO: the thread
/// below does the writes and reports them here.
#[derive(Debug)]
struct Backlog {
    /// Queued by the loop, not yet taken by the writer.
    queued: Vec<u8>,
    /// Taken by the writer and not yet written.
    in_flight: usize,
    /// Bytes written to the socket since the outbox started: the stream offset reached.
    written: u64,
    /// Since when unwritten bytes have waited with no byte written: the start of a stall.
    waiting_since: Option<Instant>,
    limit: usize,
    /// The loop found the backlog full and waits for `Drained`.
    drain_wanted: bool,
    /// The loop held output back (`OUTPUT_BACKLOG_BYTES`) and waits for `Drained`.
    output_wanted: bool,
    /// The writer waits for bytes (so an append must wake it).
    writer_idle: bool,
    /// The loop gave the connection up: the writer exits.
    closed: bool,
}

impl Backlog {
    fn new(limit: usize) -> Self {
        Backlog {
            queued: Vec::new(),
            in_flight: 0,
            written: 0,
            waiting_since: None,
            limit,
            drain_wanted: false,
            output_wanted: false,
            writer_idle: false,
            closed: false,
        }
    }

    fn unwritten(&self) -> usize {
        self.queued.len() + self.in_flight
    }

    /// Whether the loop may queue more. When it may not, the writer sends `Drained` once half is
    /// written. The limit is checked before a turn's output, not within it, so the backlog holds
    /// at most the limit plus one turn's output (and a turn's output always goes out eventually,
    /// however large).
    fn accepting(&mut self) -> bool {
        let full = self.unwritten() >= self.limit;
        self.drain_wanted |= full;
        !full
    }

    /// Whether commands' output may be queued now; when not, `Drained` follows once the backlog
    /// is down to half of `OUTPUT_BACKLOG_BYTES`.
    fn wants_output(&mut self) -> bool {
        let ok = self.unwritten() < OUTPUT_BACKLOG_BYTES;
        self.output_wanted |= !ok;
        ok
    }

    /// Moves `staged` to the end of the queue, leaving it empty (swapped, not copied, when the
    /// writer has taken everything before). Returns whether the writer must be woken.
    fn append(&mut self, now: Instant, staged: &mut Vec<u8>) -> bool {
        if staged.is_empty() {
            return false;
        }
        if self.unwritten() == 0 {
            self.waiting_since = Some(now);
        }
        if self.queued.is_empty() {
            mem::swap(&mut self.queued, staged);
        } else {
            self.queued.extend_from_slice(staged);
            staged.clear();
        }
        mem::take(&mut self.writer_idle)
    }

    /// The writer takes everything queued into `buf`, which it has emptied.
    fn take(&mut self, buf: &mut Vec<u8>) {
        debug_assert!(buf.is_empty() && self.in_flight == 0);
        mem::swap(&mut self.queued, buf);
        self.in_flight = buf.len();
    }

    /// `n` of the taken bytes reached the socket. Returns whether to send `Drained`.
    fn wrote(&mut self, now: Instant, n: usize) -> bool {
        debug_assert!(n <= self.in_flight);
        self.in_flight -= n.min(self.in_flight);
        self.written += n as u64;
        self.waiting_since = (self.unwritten() > 0).then_some(now);
        let drained = self.drain_wanted && self.unwritten() <= self.limit / 2;
        self.drain_wanted &= !drained;
        let output = self.output_wanted && self.unwritten() <= OUTPUT_BACKLOG_BYTES / 2;
        self.output_wanted &= !output;
        drained || output
    }

    fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.waiting_since.map(|since| since + timeout)
    }
}

/// Completions in queued frames, each with the stream offset where its frame ends, until the
/// writer is past that offset: if the connection is given up first, they are reported again.
#[derive(Debug, Default)]
struct Unconfirmed {
    entries: VecDeque<(u64, Completion)>,
}

/// The frame end of a completion queued over TLS until its turn is sealed.
const UNSEALED: u64 = u64::MAX;

impl Unconfirmed {
    fn push(&mut self, frame_end: u64, completions: impl Iterator<Item = Completion>) {
        self.entries.extend(completions.map(|c| (frame_end, c)));
    }

    /// Over TLS, this turn's completions end where its records end, at `wire_end`: a frame is
    /// only known written once the whole turn is (a record can hold several frames).
    fn seal(&mut self, wire_end: u64) {
        for entry in self.entries.iter_mut().rev() {
            if entry.0 != UNSEALED {
                break;
            }
            entry.0 = wire_end;
        }
    }

    /// Forgets the completions whose frames were written entirely.
    fn confirm(&mut self, written: u64) {
        while self.entries.front().is_some_and(|(end, _)| *end <= written) {
            self.entries.pop_front();
        }
    }

    /// The rest, oldest first: their frames did not reach the socket whole, so the master cannot
    /// have decoded them.
    fn reclaim(&mut self, written: u64) -> Vec<Completion> {
        self.confirm(written);
        self.entries.drain(..).map(|(_, c)| c).collect()
    }
}

struct Shared {
    backlog: Mutex<Backlog>,
    /// Signalled when bytes are queued for an idle writer, and on close.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        // The lock guards counters that every step leaves consistent, so a panic elsewhere does not
        // make them unusable.
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The loop's end of one connection's outgoing bytes. Dropping it closes the connection.
pub struct Outbox {
    shared: Arc<Shared>,
    stream: Arc<Transport>,
    /// This turn's frames, handed to the writer by `send`.
    staged: Vec<u8>,
    /// Over TLS: the records `staged` becomes, which is what the writer writes (and what its
    /// offsets count).
    sealed: Vec<u8>,
    /// Bytes handed to the writer so far: the stream offset of the first staged byte.
    handed: u64,
    unconfirmed: Unconfirmed,
}

impl Outbox {
    /// Starts the writer thread for `stream`; `staged` is the (empty) buffer to reuse. `notify`
    /// tells the loop what the writer has to say and returns `false` once nobody listens.
    pub fn start(
        stream: Transport,
        staged: Vec<u8>,
        limit: usize,
        notify: impl FnMut(WriterNote) -> bool + Send + 'static,
    ) -> io::Result<Outbox> {
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog::new(limit)),
            wake: Condvar::new(),
        });
        let stream = Arc::new(stream);
        let (thread_shared, thread_stream) = (shared.clone(), stream.clone());
        let spawned = thread::Builder::new()
            .name("master-writer".into())
            .spawn(move || write_loop(thread_stream.socket(), &thread_shared, notify));
        if let Err(e) = spawned {
            // Wakes the reader thread, which holds its own handle on the socket.
            let _ = stream.shutdown();
            return Err(e);
        }
        Ok(Outbox {
            shared,
            stream,
            staged,
            sealed: Vec::new(),
            handed: 0,
            unconfirmed: Unconfirmed::default(),
        })
    }

    /// Queues `msg` for this turn's `send`. It can only fail for a message above `MAX_FRAME`;
    /// ours are kept far smaller.
    pub fn queue(&mut self, msg: &ToMaster) {
        if let Err(e) = encode_frame(msg, &mut self.staged) {
            error!("dropping a report the codec refused: {e}");
        }
    }

    /// Queues `batch` as one `Finished` frame and leaves it empty, keeping its allocation. The
    /// completions are kept until their frame is written (see [`Outbox::close`]).
    pub fn queue_finished(&mut self, batch: &mut Vec<Completion>) {
        let msg = ToMaster::Finished(mem::take(batch));
        self.queue(&msg);
        // Over TLS the wire offset is known once the turn is sealed (`send`).
        let frame_end = if self.stream.is_tls() {
            UNSEALED
        } else {
            self.handed + self.staged.len() as u64
        };
        if let ToMaster::Finished(mut completions) = msg {
            self.unconfirmed.push(frame_end, completions.drain(..));
            *batch = completions;
        }
    }

    /// Whether the writer can take more now. When it cannot, `WriterNote::Drained` follows once
    /// it has caught up by half.
    pub fn accepting(&self) -> bool {
        self.shared.lock().accepting()
    }

    /// Whether commands' output may be queued now (see `OUTPUT_BACKLOG_BYTES`). When it may not,
    /// `WriterNote::Drained` follows once the writer has caught up by half.
    pub fn wants_output(&self) -> bool {
        self.shared.lock().wants_output()
    }

    /// Hands this turn's frames to the writer.
    pub fn send(&mut self, now: Instant) {
        if self.staged.is_empty() {
            return;
        }
        if self.stream.is_tls() {
            self.sealed.clear();
            if let Err(e) = self.stream.seal(&self.staged, &mut self.sealed) {
                // The session is broken: closing ends the reader, which reports the loss.
                error!("cannot encrypt for the master: {e}");
                self.shut();
                return;
            }
            mem::swap(&mut self.staged, &mut self.sealed);
            self.sealed.clear();
            if self.sealed.capacity() > KEEP_CAPACITY {
                self.sealed = Vec::new();
            }
        }
        self.handed += self.staged.len() as u64;
        self.unconfirmed.seal(self.handed);
        let (wake, written) = {
            let mut backlog = self.shared.lock();
            // Fast path: with nothing queued or in flight the writer is not in `write`, so the
            // loop may write itself, without waiting and without waking a thread (a context
            // switch per turn, the round trip of a one-slot worker). What the socket does not
            // take at once goes to the writer as before.
            if backlog.unwritten() == 0 && !backlog.closed {
                let n = try_send(self.stream.socket(), &self.staged);
                if n > 0 {
                    backlog.written += n as u64;
                    self.staged.drain(..n);
                }
            }
            (backlog.append(now, &mut self.staged), backlog.written)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        if self.staged.capacity() > KEEP_CAPACITY {
            self.staged = Vec::new();
        }
        self.unconfirmed.confirm(written);
    }

    /// When bytes will have waited `timeout` with none written, if they keep waiting; `None`
    /// while nothing waits.
    pub fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.shared.lock().stall_deadline(timeout)
    }

    /// Whether bytes have waited `timeout` with none written.
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.stall_deadline(timeout).is_some_and(|at| now >= at)
    }

    /// Closes the connection (which also wakes the reader thread and a writer blocked in
    /// `write`) and returns the completions whose frames had not been written, oldest first.
    /// A frame being written at this very moment may reach the master too: a completion is then
    /// reported twice, which the master drops as stale, and never lost.
    pub fn close(&mut self) -> Vec<Completion> {
        // Bytes still in the kernel's send queue were accepted, not delivered: a master that took
        // none of them may never see them, so their completions are reported again too.
        let unsent = unsent_bytes(self.stream.socket());
        self.shut();
        let written = self.shared.lock().written;
        self.unconfirmed.reclaim(written.saturating_sub(unsent))
    }

    fn shut(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let _ = self.stream.shutdown();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Bytes the socket accepted and has not yet sent (`SIOCOUTQ`); 0 where that cannot be read.
fn unsent_bytes(stream: &TcpStream) -> u64 {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one int to the pointer given.
        let ok = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) } == 0;
        if ok {
            return u64::try_from(n).unwrap_or(0);
        }
    }
    let _ = stream;
    0
}

/// One `send` that never blocks; returns how many bytes the socket took (0 when it would block or
/// failed: the writer thread then meets the error on its own write).
fn try_send(stream: &TcpStream, bytes: &[u8]) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: the pointer and length describe a live slice; the fd belongs to `stream`, which
    // outlives the call.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// The writer thread: takes whatever is queued, writes it, reports progress, until closed or a
/// write fails.
fn write_loop(stream: &TcpStream, shared: &Shared, mut notify: impl FnMut(WriterNote) -> bool) {
    let mut out = stream;
    let mut buf = Vec::new();
    loop {
        {
            let mut backlog = shared.lock();
            while backlog.queued.is_empty() && !backlog.closed {
                backlog.writer_idle = true;
                backlog = shared
                    .wake
                    .wait(backlog)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            backlog.writer_idle = false;
            if backlog.closed {
                return;
            }
            backlog.take(&mut buf);
        }
        let mut at = 0;
        while at < buf.len() {
            let end = buf.len().min(at + WRITE_CHUNK);
            let n = match out.write(&buf[at..end]) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            match n {
                Ok(n) => {
                    at += n;
                    let drained = shared.lock().wrote(Instant::now(), n);
                    if drained && !notify(WriterNote::Drained) {
                        return;
                    }
                }
                Err(e) => {
                    // After `close` the error is our own shutdown: nobody needs to hear of it.
                    if !shared.lock().closed {
                        notify(WriterNote::Failed(e));
                    }
                    return;
                }
            }
        }
        buf.clear();
        if buf.capacity() > KEEP_CAPACITY {
            buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests;
