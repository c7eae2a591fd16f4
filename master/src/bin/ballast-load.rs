//! `ballast-load`: the load generator of the benchmark suite (`scripts/bench.sh`, `docs/PERFORMANCE.md`).
//!
//! - `latency`: sequential submit → result round trips of one zero-length task from one in-process
//!   client (`protocol::Connection`), recorded in an HDR histogram (workload W3).
//! - `workers`: many simulated workers held by one or a few threads (mio), each answering `Assign`
//!   with an immediate `Finished` and heartbeating like a real worker (workload W5). Each says
//!   hello through the client library (`protocol::connection::handshake`), then goes non-blocking.
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
    TaskOutcome, TaskSpec, ToMaster, WorkerInfo,
};
use std::collections::VecDeque;
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
    /// Worker names are PREFIX-<pid>-<n>.
    #[arg(long, default_value = "sim")]
    name_prefix: String,
    /// Heartbeat interval; default: the one the master asks for in `Welcome`.
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Stop by itself after this long (SIGINT/SIGTERM stop it earlier).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
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
/// Small: a simulated worker only ever receives small `Assign` frames, and 1,000 decoders add up.
const READ_CHUNK: usize = 16 << 10;

#[derive(Default)]
struct Totals {
    connected: AtomicUsize,
    /// Connections the master closed (or that failed) while we ran.
    lost: AtomicUsize,
    tasks: AtomicU64,
    assign_frames: AtomicU64,
    finished_frames: AtomicU64,
    heartbeats: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.threads == 0 {
        bail!("--count and --threads must be at least 1");
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
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let threads = args.threads.min(args.count);
    let mut handles = Vec::new();
    for t in 0..threads {
        // Worker n goes to thread n % threads.
        let mine: Vec<usize> = (t..args.count).step_by(threads).collect();
        let totals = totals.clone();
        let token = args.target.token().map(<[u8]>::to_vec);
        let (prefix, slots, heartbeat) = (args.name_prefix.clone(), args.slots, args.heartbeat);
        handles.push(thread::spawn(move || -> anyhow::Result<()> {
            let mut sim = SimThread::connect(
                addr,
                token.as_deref(),
                &prefix,
                &mine,
                slots,
                heartbeat,
                &totals,
            )?;
            sim.run(deadline, &totals)
        }));
    }
    // Tell the driver when every connection is up (it waits for this line).
    while totals.connected.load(Ordering::Relaxed) < args.count
        && !handles.iter().any(|h| h.is_finished())
        && !STOP.load(Ordering::Relaxed)
    {
        thread::sleep(Duration::from_millis(5));
    }
    let connect_s = started.elapsed().as_secs_f64();
    eprintln!(
        "ready: {} simulated workers connected in {connect_s:.2} s",
        totals.connected.load(Ordering::Relaxed)
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
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "workers": args.count,
        "threads": threads,
        "slots": args.slots,
        "connected": totals.connected.load(Ordering::Relaxed),
        "connect_s": connect_s,
        "lost": totals.lost.load(Ordering::Relaxed),
        "run_s": started.elapsed().as_secs_f64(),
        "tasks": get(&totals.tasks),
        "assign_frames": get(&totals.assign_frames),
        "finished_frames": get(&totals.finished_frames),
        "heartbeats": get(&totals.heartbeats),
        "bytes_in": get(&totals.bytes_in),
        "bytes_out": get(&totals.bytes_out),
    });
    println!("{report}");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct SimConn {
    stream: MioStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    writable_interest: bool,
    /// Completions of this loop turn, sent as one `Finished` frame (as the real worker batches).
    finished: Vec<Completion>,
    alive: bool,
    /// Already in this turn's `dirty` list.
    dirty: bool,
}

struct SimThread {
    poll: Poll,
    conns: Vec<SimConn>,
    heartbeat: Duration,
    /// (due, connection index), in due order: every connection has the same interval, so
    /// re-appending after each beat keeps the queue sorted without a heap.
    beats: VecDeque<(Instant, usize)>,
    /// Connections with output this turn.
    dirty: Vec<usize>,
}

impl SimThread {
    #[allow(clippy::too_many_arguments)]
    fn connect(
        addr: std::net::SocketAddr,
        token: Option<&[u8]>,
        prefix: &str,
        numbers: &[usize],
        slots: u32,
        heartbeat: Option<Duration>,
        totals: &Totals,
    ) -> anyhow::Result<SimThread> {
        let poll = Poll::new()?;
        let mut conns = Vec::with_capacity(numbers.len());
        let mut interval = heartbeat;
        for &n in numbers {
            if STOP.load(Ordering::Relaxed) {
                break;
            }
            let info = WorkerInfo {
                name: format!("{prefix}-{}-{n}", std::process::id()),
                host: "ballast-load".into(),
                cpus: slots,
                slots,
                pid: std::process::id(),
                group: None,
                prefetch: 0,
                heartbeat_interval_ms: 0,
            };
            let (stream, decoder, hb_ms) = handshake(addr, token, info)
                .with_context(|| format!("simulated worker {n} connecting to {addr}"))?;
            interval.get_or_insert(Duration::from_millis(hb_ms.max(1)));
            let mut stream = MioStream::from_std(stream);
            let key = conns.len();
            poll.registry()
                .register(&mut stream, Token(key), Interest::READABLE)?;
            let mut c = SimConn {
                stream,
                decoder,
                out: Vec::with_capacity(256),
                out_pos: 0,
                writable_interest: false,
                finished: Vec::new(),
                alive: true,
                dirty: true,
            };
            // A worker gets no work before it has said its load and what it still runs.
            encode_frame(&ToMaster::Load(LoadReport::default()), &mut c.out)?;
            encode_frame(&ToMaster::Running(Vec::new()), &mut c.out)?;
            conns.push(c);
            totals.connected.fetch_add(1, Ordering::Relaxed);
        }
        let heartbeat = interval.unwrap_or(Duration::from_secs(1));
        // Spread the beats over one interval, as independent workers would be.
        let now = Instant::now();
        let n = conns.len().max(1) as u32;
        let beats = (0..conns.len())
            .map(|i| (now + heartbeat * (i as u32 + 1) / n, i))
            .collect();
        let dirty = (0..conns.len()).collect();
        Ok(SimThread {
            poll,
            conns,
            heartbeat,
            beats,
            dirty,
        })
    }

    fn run(&mut self, deadline: Instant, totals: &Totals) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.flush(totals)?;
            if STOP.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            if self.conns.iter().all(|c| !c.alive) {
                break;
            }
            let wait = self
                .beats
                .front()
                .map(|&(at, _)| at.saturating_duration_since(Instant::now()))
                .unwrap_or(TICK)
                .min(TICK);
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in events.iter() {
                let key = event.token().0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(key, totals);
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

    /// Reads until WouldBlock; every `Assign` becomes an immediate success.
    fn read(&mut self, key: usize, totals: &Totals) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.alive {
            return;
        }
        let mut tasks = 0u64;
        let mut lost = false;
        loop {
            let spare = c.decoder.spare(READ_CHUNK);
            match c.stream.read(spare) {
                Ok(0) => {
                    c.decoder.commit(READ_CHUNK, 0);
                    lost = true;
                    break;
                }
                Ok(n) => {
                    c.decoder.commit(READ_CHUNK, n);
                    totals.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.decoder.commit(READ_CHUNK, 0);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    c.decoder.commit(READ_CHUNK, 0);
                }
                Err(_) => {
                    c.decoder.commit(READ_CHUNK, 0);
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
                    c.finished.extend(list.iter().map(|a| {
                        let outcome = TaskOutcome::Exited {
                            code: 0,
                            stdout_tail: String::new(),
                            stderr_tail: String::new(),
                        };
                        a.task_ref().completion(outcome, 0)
                    }));
                }
                // Nothing runs long enough to be cancelled; anything else is not for workers.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            c.alive = false;
            let _ = self.poll.registry().deregister(&mut c.stream);
            totals.lost.fetch_add(1, Ordering::Relaxed);
        } else if !c.finished.is_empty() {
            totals.tasks.fetch_add(tasks, Ordering::Relaxed);
            self.mark(key);
        }
    }

    /// Sends the heartbeats that are due.
    fn beat(&mut self, now: Instant, totals: &Totals) -> anyhow::Result<()> {
        while let Some(&(at, key)) = self.beats.front() {
            if at > now {
                break;
            }
            self.beats.pop_front();
            let c = &mut self.conns[key];
            if !c.alive {
                continue;
            }
            encode_frame(&ToMaster::Load(LoadReport::default()), &mut c.out)?;
            totals.heartbeats.fetch_add(1, Ordering::Relaxed);
            self.beats.push_back((at + self.heartbeat, key));
            self.mark(key);
        }
        Ok(())
    }

    /// One `Finished` frame per connection with completions, then one write per connection.
    fn flush(&mut self, totals: &Totals) -> anyhow::Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            let c = &mut self.conns[key];
            c.dirty = false;
            if !c.alive {
                continue;
            }
            if !c.finished.is_empty() {
                let done = std::mem::take(&mut c.finished);
                encode_frame(&ToMaster::Finished(done), &mut c.out)?;
                totals.finished_frames.fetch_add(1, Ordering::Relaxed);
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
