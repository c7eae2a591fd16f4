//! `ballast-load`: the load generator of the benchmark suite (`scripts/bench.sh`, `docs/PERFORMANCE.md`).
//!
//! - `latency`: sequential submit → result round trips of one zero-length task from one in-process
//!   client (`protocol::Connection`), recorded in an HDR histogram (workload W3).
//! - `workers`: many simulated workers (10,000 and more) held by one or a few threads (mio), each
//!   answering `Assign` with an immediate `Started` and `Finished` (one write, as a real worker
//!   reports a round of short tasks) and heartbeating like a real worker (workload
//!   W5). Each says hello through the client library (`protocol::connection::handshake`), then
//!   goes non-blocking; a thread keeps the ones it has connected beating while it connects the
//!   rest. It raises its own open-file limit, and with `--master-pid` reports the master's RSS
//!   and CPU.
//!
//! It measures; it asserts nothing about the figures. Both subcommands print one JSON object on
//! stdout at the end (human lines go to stderr), so the script can collect them.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use protocol::connection;
use protocol::duration::parse_duration;
use protocol::{
    encode_frame, Completion, Connection, FrameDecoder, FromMaster, LoadReport, Role, TaskKind,
    TaskOutcome, TaskRef, TaskSpec, ToMaster, WorkerInfo,
};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "ballast-load",
    version,
    about = "Ballast load generator: latency probe and simulated workers for the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sequential submit → wait round trips of one zero-length task; prints percentiles.
    Latency(LatencyArgs),
    /// Hold many simulated worker connections that finish every task at once and heartbeat.
    Workers(WorkersArgs),
}

#[derive(Args, Debug)]
struct Target {
    /// Address of the master.
    #[arg(long, value_name = "ADDR", env = "BALLAST_MASTER", default_value = protocol::DEFAULT_MASTER_ADDR)]
    master: String,
    /// Shared secret, if the master requires one.
    #[arg(long, value_name = "T", env = "BALLAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Target {
    fn token(&self) -> Option<&[u8]> {
        self.token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::as_bytes)
    }
}

#[derive(Args, Debug)]
struct LatencyArgs {
    #[command(flatten)]
    target: Target,
    /// Round trips recorded.
    #[arg(long, default_value_t = 2_000)]
    count: u32,
    /// Round trips run first and not recorded (connection and cache warm-up).
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Run this command (argv, no shell) instead of a zero-length synthetic task, e.g.
    /// `--command true`: adds the worker's process spawn to every round trip.
    #[arg(long, value_name = "CMD", num_args = 1.., allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct WorkersArgs {
    #[command(flatten)]
    target: Target,
    /// Simulated workers (one connection each).
    #[arg(long, default_value_t = 1_000)]
    count: usize,
    /// Slots each simulated worker announces.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Threads sharing the connections (each runs one mio loop).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Tasks each simulated worker holds beyond its slots, as `worker --prefetch K` [default:
    /// what a worker started without it declares: up to 4 while tasks are short].
    #[arg(long, value_name = "K")]
    prefetch: Option<u32>,
    /// Worker names are PREFIX-<pid>-<n>.
    #[arg(long, default_value = "sim")]
    name_prefix: String,
    /// Heartbeat interval; default: the one the master asks for in `Welcome`.
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Stop by itself after this long (SIGINT/SIGTERM stop it earlier).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// The master's process id (same host): its RSS when every worker is connected and at the
    /// end, and its CPU in between, go into the report.
    #[arg(long, value_name = "PID")]
    master_pid: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Latency(args) => latency(args),
        Command::Workers(args) => workers(args),
    }
}

// ---- latency ---------------------------------------------------------------------------------

fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let (mut conn, _) = Connection::connect(
        &args.target.master,
        Role::Client,
        args.target.token(),
        None,
        Duration::from_secs(5),
    )
    .context("connecting as a client")?;
    // 1 µs .. 60 s at 3 significant digits: exact enough for sub-millisecond percentiles.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let spec = TaskSpec::new(if args.command.is_empty() {
        TaskKind::Sleep { ms: 0 }
    } else {
        TaskKind::Command {
            argv: args.command.clone(),
            env: Vec::new(),
            cwd: None,
        }
    });
    let started = Instant::now();
    for i in 0..args.warmup + args.count {
        let t0 = Instant::now();
        round_trip(&mut conn, &spec)?;
        let us = t0.elapsed().as_micros() as u64;
        if i >= args.warmup {
            hist.saturating_record(us.max(1));
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    eprintln!(
        "latency: {} round trips, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        hist.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1e3
    );
    let report = serde_json::json!({
        "count": hist.len(),
        "warmup": args.warmup,
        "task": if args.command.is_empty() { "sleep 0ms".to_string() } else { args.command.join(" ") },
        "wall_s": wall_s,
        "min_ms": hist.min() as f64 / 1e3,
        "mean_ms": hist.mean() / 1e3,
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": hist.max() as f64 / 1e3,
    });
    println!("{report}");
    Ok(())
}

/// One `Submit` of one task, then `Wait` for it: the client-visible latency of the whole path
/// (decode, journal commit, placement, worker round trip, result, waiter wake-up).
fn round_trip(conn: &mut Connection, spec: &TaskSpec) -> anyhow::Result<()> {
    let first = match conn.request(&ToMaster::Submit {
        specs: vec![spec.clone()],
        count: 1,
        name: None,
    })? {
        FromMaster::Submitted {
            first, count: 1, ..
        } => first,
        other => bail!("unexpected reply to Submit: {other:?}"),
    };
    match conn.request(&ToMaster::Wait {
        ids: vec![first],
        progress: false,
        jobs: vec![],
    })? {
        FromMaster::WaitDone { succeeded: 1, .. } => Ok(()),
        other => bail!("unexpected reply to Wait for {first}: {other:?}"),
    }
}

// ---- simulated workers -----------------------------------------------------------------------

/// Set by SIGINT/SIGTERM; every loop checks it at least every `TICK`.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Longest poll wait: bounds how late a stop or a heartbeat is noticed.
const TICK: Duration = Duration::from_millis(20);
/// Bytes per read, into the thread's one scratch buffer: a simulated worker only ever receives
/// small `Assign` frames, and its decoder keeps only what arrived (10,000 decoders add up).
const READ_CHUNK: usize = 16 << 10;
/// Handshakes a thread does in a row before it serves the workers it has (their heartbeats must
/// not stop while thousands more connect: the master would declare them dead).
const CONNECT_SLICE: Duration = Duration::from_millis(5);

/// One thread's counters: each thread has its own, on cache lines of their own (counted per frame,
/// shared ones bounced between the cores on every update); the report sums them.
#[derive(Default)]
#[repr(align(128))]
struct Totals {
    connected: AtomicUsize,
    /// Connections the master closed (or that failed) while we ran.
    lost: AtomicUsize,
    tasks: AtomicU64,
    assign_frames: AtomicU64,
    finished_frames: AtomicU64,
    /// `Retract`s answered.
    retracts: AtomicU64,
    heartbeats: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.threads == 0 {
        bail!("--count and --threads must be at least 1");
    }
    // One descriptor per simulated worker, plus a few.
    let wanted = args.count as u64 + master::fd_limit::RESERVED_FDS;
    match master::fd_limit::raise_to_hard() {
        Ok(limit) if limit < wanted => eprintln!(
            "warning: the open-file limit is {limit}, below the {wanted} that {} workers need",
            args.count
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let addr = args
        .target
        .master
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.target.master))?
        .next()
        .context("address resolved to nothing")?;
    let threads = args.threads.min(args.count);
    let all: Vec<Arc<Totals>> = (0..threads).map(|_| Arc::default()).collect();
    let count = |f: fn(&Totals) -> u64| all.iter().map(|t| f(t)).sum::<u64>();
    let connected = || count(|t| t.connected.load(Ordering::Relaxed) as u64);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut handles = Vec::new();
    for (t, totals) in all.iter().enumerate() {
        // Worker n goes to thread n % threads.
        let mine: Vec<usize> = (t..args.count).step_by(threads).collect();
        let totals = totals.clone();
        let token = args.target.token().map(<[u8]>::to_vec);
        let (prefix, slots, heartbeat) = (args.name_prefix.clone(), args.slots, args.heartbeat);
        let prefetch = args.prefetch;
        handles.push(thread::spawn(move || -> anyhow::Result<()> {
            let target = SimTarget {
                addr,
                token,
                prefix,
                slots,
                prefetch,
            };
            let mut sim = SimThread::new(target, mine, heartbeat)?;
            sim.run(deadline, &totals)
        }));
    }
    // Tell the driver when every connection is up (it waits for this line).
    while connected() < args.count as u64
        && !handles.iter().any(|h| h.is_finished())
        && !STOP.load(Ordering::Relaxed)
    {
        thread::sleep(Duration::from_millis(5));
    }
    let connect_s = started.elapsed().as_secs_f64();
    let master = args.master_pid.map(MasterSample::take);
    let rss = master
        .as_ref()
        .and_then(|m| m.rss_kb)
        .map(|kb| format!("; master RSS {kb} KiB"))
        .unwrap_or_default();
    eprintln!(
        "ready: {} simulated workers connected in {connect_s:.2} s{rss}",
        connected()
    );
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a simulated-worker thread panicked")),
        }
        // One thread failing (e.g. connect refused) stops the others too.
        STOP.store(true, Ordering::Relaxed);
    }
    let get = |f: fn(&Totals) -> &AtomicU64| {
        all.iter()
            .map(|t| f(t).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let master_report = master.map(|ready| {
        let end = MasterSample::take(ready.pid);
        let cpu_pct = match (ready.cpu_ticks, end.cpu_ticks) {
            (Some(a), Some(b)) => {
                let secs = end.at.duration_since(ready.at).as_secs_f64();
                Some(100.0 * b.saturating_sub(a) as f64 / clock_ticks_per_s() / secs.max(1e-3))
            }
            _ => None,
        };
        serde_json::json!({
            "pid": ready.pid,
            "rss_kb_ready": ready.rss_kb,
            "rss_kb_end": end.rss_kb,
            "cpu_pct_ready_to_end": cpu_pct,
        })
    });
    let report = serde_json::json!({
        "workers": args.count,
        "threads": threads,
        "slots": args.slots,
        "connected": connected(),
        "connect_s": connect_s,
        "lost": count(|t| t.lost.load(Ordering::Relaxed) as u64),
        "run_s": started.elapsed().as_secs_f64(),
        "tasks": get(|t| &t.tasks),
        "assign_frames": get(|t| &t.assign_frames),
        "finished_frames": get(|t| &t.finished_frames),
        "retracts": get(|t| &t.retracts),
        "prefetch": args.prefetch.unwrap_or(protocol::ADAPTIVE_PREFETCH),
        "prefetch_adaptive": args.prefetch.is_none(),
        "heartbeats": get(|t| &t.heartbeats),
        "bytes_in": get(|t| &t.bytes_in),
        "bytes_out": get(|t| &t.bytes_out),
        "master": master_report,
    });
    println!("{report}");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The master's RSS and CPU time at one moment, from `/proc` (Linux; `None` where unreadable).
struct MasterSample {
    pid: u32,
    at: Instant,
    rss_kb: Option<u64>,
    cpu_ticks: Option<u64>,
}

impl MasterSample {
    fn take(pid: u32) -> MasterSample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
        let rss_kb = status.as_deref().and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        });
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // utime and stime are fields 14 and 15; the name (field 2) may hold spaces, so count
        // from its closing parenthesis.
        let cpu_ticks = stat.as_deref().and_then(|text| {
            let rest = &text[text.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace().skip(11);
            let user: u64 = fields.next()?.parse().ok()?;
            let system: u64 = fields.next()?.parse().ok()?;
            Some(user + system)
        });
        MasterSample {
            pid,
            at: Instant::now(),
            rss_kb,
            cpu_ticks,
        }
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

struct SimConn {
    stream: MioStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    writable_interest: bool,
    /// Runs started this loop turn, sent as one `Started` frame before `finished`: a real worker
    /// reports each start, and the master's handling of it is part of what W2 measures.
    started: Vec<TaskRef>,
    /// Completions of this loop turn, sent as one `Finished` frame (as the real worker batches).
    finished: Vec<Completion>,
    /// `Retract`s of this loop turn, each answered after `finished`.
    retracts: usize,
    alive: bool,
    /// Already in this turn's `dirty` list.
    dirty: bool,
}

/// Where and as whom a thread's workers connect.
struct SimTarget {
    addr: std::net::SocketAddr,
    token: Option<Vec<u8>>,
    prefix: String,
    slots: u32,
    /// `--prefetch`; `None`: the worker's default (adaptive).
    prefetch: Option<u32>,
}

struct SimThread {
    poll: Poll,
    target: SimTarget,
    /// Worker numbers still to connect, the next one last.
    to_connect: Vec<usize>,
    conns: Vec<SimConn>,
    /// From `--heartbeat`, else from the first `Welcome`.
    heartbeat: Option<Duration>,
    /// (due, connection index), earliest first.
    beats: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connections with output this turn.
    dirty: Vec<usize>,
    /// Every read lands here first; a connection's decoder copies only what arrived.
    scratch: Vec<u8>,
}

impl SimThread {
    fn new(
        target: SimTarget,
        mut numbers: Vec<usize>,
        heartbeat: Option<Duration>,
    ) -> anyhow::Result<SimThread> {
        numbers.reverse();
        Ok(SimThread {
            poll: Poll::new()?,
            target,
            conns: Vec::with_capacity(numbers.len()),
            to_connect: numbers,
            heartbeat,
            beats: BinaryHeap::new(),
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
        })
    }

    /// Connects workers for at most `CONNECT_SLICE`, each with its first beat one interval on.
    fn connect_some(&mut self, totals: &Totals) -> anyhow::Result<()> {
        let until = Instant::now() + CONNECT_SLICE;
        while let Some(&n) = self.to_connect.last() {
            if STOP.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
            self.to_connect.pop();
            let t = &self.target;
            let info = WorkerInfo {
                allocation: None,
                name: format!("{}-{}-{n}", t.prefix, std::process::id()),
                host: "ballast-load".into(),
                cpus: t.slots,
                slots: t.slots,
                pid: std::process::id(),
                group: None,
                prefetch: t.prefetch.unwrap_or(protocol::ADAPTIVE_PREFETCH),
                prefetch_adaptive: t.prefetch.is_none(),
                heartbeat_interval_ms: 0,
            };
            let (stream, decoder, hb_ms) = handshake(t.addr, t.token.as_deref(), info)
                .with_context(|| format!("simulated worker {n} connecting to {}", t.addr))?;
            let interval = *self
                .heartbeat
                .get_or_insert(Duration::from_millis(hb_ms.max(1)));
            let mut stream = MioStream::from_std(stream);
            let key = self.conns.len();
            self.poll
                .registry()
                .register(&mut stream, Token(key), Interest::READABLE)?;
            let mut c = SimConn {
                stream,
                decoder,
                out: Vec::with_capacity(256),
                out_pos: 0,
                writable_interest: false,
                started: Vec::new(),
                finished: Vec::new(),
                retracts: 0,
                alive: true,
                dirty: false,
            };
            // A worker gets no work before it has said its load and what it still runs.
            encode_frame(&ToMaster::Load(LoadReport::default()), &mut c.out)?;
            encode_frame(&ToMaster::Running(Vec::new()), &mut c.out)?;
            self.conns.push(c);
            self.mark(key);
            self.beats.push(Reverse((Instant::now() + interval, key)));
            totals.connected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn run(&mut self, deadline: Instant, totals: &Totals) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if !self.to_connect.is_empty() {
                self.connect_some(totals)?;
            }
            self.flush(totals)?;
            if STOP.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            if self.to_connect.is_empty() && self.conns.iter().all(|c| !c.alive) {
                break;
            }
            let wait = if self.to_connect.is_empty() {
                self.beats
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(TICK)
                    .min(TICK)
            } else {
                Duration::ZERO // more to connect: only serve what is ready
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in events.iter() {
                let key = event.token().0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    let closed = event.is_read_closed() || event.is_error();
                    self.read(key, closed, totals);
                }
                if event.is_writable() {
                    self.mark(key);
                }
            }
            self.beat(Instant::now(), totals)?;
        }
        Ok(())
    }

    fn mark(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Reads until WouldBlock (or a short read, unless the event said `closed`); every `Assign`
    /// becomes an immediate success.
    fn read(&mut self, key: usize, closed: bool, totals: &Totals) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.alive {
            return;
        }
        let mut tasks = 0u64;
        let mut lost = false;
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    lost = true;
                    break;
                }
                Ok(n) => {
                    c.decoder.extend(&self.scratch[..n]);
                    totals.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    // A short read emptied the socket (TCP hands over all it holds), and what
                    // comes later raises a new edge: one `recv` less per frame, as the master.
                    if n < self.scratch.len() && !closed {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        loop {
            match c.decoder.next_frame::<FromMaster>() {
                Ok(Some(FromMaster::Assign(list))) => {
                    totals.assign_frames.fetch_add(1, Ordering::Relaxed);
                    tasks += list.len() as u64;
                    c.started.extend(list.iter().map(|a| a.task_ref()));
                    c.finished.extend(list.iter().map(|a| {
                        let outcome = TaskOutcome::Exited {
                            code: 0,
                            stdout_tail: String::new(),
                            stderr_tail: String::new(),
                        };
                        a.task_ref().completion(outcome, 0)
                    }));
                }
                // Every task finished the turn it came, so a prefetched one has already been
                // reported and nothing is given back: what a worker answers when all had started.
                Ok(Some(FromMaster::Retract(_))) => c.retracts += 1,
                // Nothing runs long enough to be cancelled; anything else is not for workers.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        c.decoder.shrink();
        if lost {
            c.alive = false;
            let _ = self.poll.registry().deregister(&mut c.stream);
            totals.lost.fetch_add(1, Ordering::Relaxed);
        } else if !c.finished.is_empty() || c.retracts > 0 {
            totals.tasks.fetch_add(tasks, Ordering::Relaxed);
            self.mark(key);
        }
    }

    /// Sends the heartbeats that are due.
    fn beat(&mut self, now: Instant, totals: &Totals) -> anyhow::Result<()> {
        let interval = self.heartbeat.unwrap_or(Duration::from_secs(1));
        while let Some(&Reverse((at, key))) = self.beats.peek() {
            if at > now {
                break;
            }
            self.beats.pop();
            let c = &mut self.conns[key];
            if !c.alive {
                continue;
            }
            encode_frame(&ToMaster::Load(LoadReport::default()), &mut c.out)?;
            totals.heartbeats.fetch_add(1, Ordering::Relaxed);
            self.beats.push(Reverse((at + interval, key)));
            self.mark(key);
        }
        Ok(())
    }

    /// One `Started` and one `Finished` frame per connection with completions, then one write per
    /// connection.
    fn flush(&mut self, totals: &Totals) -> anyhow::Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            let c = &mut self.conns[key];
            c.dirty = false;
            if !c.alive {
                continue;
            }
            if !c.started.is_empty() {
                let started = std::mem::take(&mut c.started);
                encode_frame(&ToMaster::Started(started), &mut c.out)?;
            }
            if !c.finished.is_empty() {
                let done = std::mem::take(&mut c.finished);
                encode_frame(&ToMaster::Finished(done), &mut c.out)?;
                totals.finished_frames.fetch_add(1, Ordering::Relaxed);
            }
            for _ in 0..std::mem::take(&mut c.retracts) {
                encode_frame(&ToMaster::Retracted(Vec::new()), &mut c.out)?;
                totals.retracts.fetch_add(1, Ordering::Relaxed);
            }
            let mut failed = false;
            while c.out_pos < c.out.len() {
                match c.stream.write(&c.out[c.out_pos..]) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        c.out_pos += n;
                        totals.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                c.alive = false;
                let _ = self.poll.registry().deregister(&mut c.stream);
                totals.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if c.out_pos == c.out.len() {
                c.out.clear();
                c.out_pos = 0;
            }
            let want = c.out_pos < c.out.len();
            if want != c.writable_interest {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.poll
                    .registry()
                    .reregister(&mut c.stream, Token(key), interest)?;
                c.writable_interest = want;
            }
        }
        Ok(())
    }
}

/// Connects and completes the worker handshake with blocking IO, then hands back a non-blocking
/// stream and the decoder (which may already hold bytes that followed `Welcome`).
fn handshake(
    addr: std::net::SocketAddr,
    token: Option<&[u8]>,
    info: WorkerInfo,
) -> anyhow::Result<(TcpStream, FrameDecoder, u64)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut decoder = FrameDecoder::new();
    let welcome = connection::handshake(
        &mut stream,
        &mut decoder,
        &addr.to_string(),
        Role::Worker(info),
        token,
    )?;
    stream.set_read_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok((stream, decoder, welcome.heartbeat_interval_ms))
}
