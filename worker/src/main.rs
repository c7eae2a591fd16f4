//! `worker`: joins a Ballast master, runs the tasks it assigns, and reports this host's load.

mod allocation;
mod backoff;
mod error;
mod executor;
mod outbox;
mod pending;
mod procfs;
mod sampler;
mod sentinel;
mod session;
mod signals;
mod tail;
mod task_log;

use clap::{Parser, ValueEnum};
use log::error;
use protocol::tls::{ClientTls, ClientTlsFiles};
use protocol::WorkerInfo;
use session::{Config, Event, OnMasterLost};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Ballast worker: runs the tasks a master assigns and reports this host's load.
///
/// Exit status: 0 after SIGINT/SIGTERM, 1 when the master is lost under `--on-master-lost stop`
/// (or on a setup error), 2 when the master rejects the worker (wrong token, other version).
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
struct Args {
    /// Address of the master (host:port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "BALLAST_MASTER",
        default_value = protocol::DEFAULT_MASTER_ADDR
    )]
    master: String,

    /// How many tasks to run at once [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    slots: Option<u32>,

    /// Tasks held beyond the slots, not yet started, to hide dispatch latency: the next one starts
    /// as soon as a slot frees, without a round trip to the master. The master may take them back
    /// to run elsewhere [default: up to 4, held only while this worker's tasks are short next to
    /// the round trip to the master; with K given, K whatever the tasks take].
    #[arg(long, value_name = "K")]
    prefetch: Option<u32>,

    /// Name shown by `master status` [default: <hostname>-<pid>].
    #[arg(long)]
    name: Option<String>,

    /// Group (network, pool) this worker serves; tasks submitted with `--group NAME` run only on
    /// its members [default: none, the shared pool].
    #[arg(long, value_name = "NAME")]
    group: Option<String>,

    /// Interval of load reports, which are also the heartbeat: 250ms, 1s, 1m
    /// [default: the interval the master asks for].
    #[arg(long, value_name = "DURATION", value_parser = parse_heartbeat)]
    heartbeat: Option<Duration>,

    /// Shared secret the master requires, if any.
    #[arg(long, env = "BALLAST_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Read the token from this file (its first line) instead: keeps it off command lines and
    /// out of the environment. Given, it wins over `--token` and `BALLAST_TOKEN`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Exit (status 0) after this long with no task to run: 30s, 5m. A worker of a batch
    /// allocation ends the allocation so [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_timeout)]
    idle_timeout: Option<Duration>,

    /// When the master connection breaks: keep tasks running and reconnect (`wait`), or kill
    /// them and exit with status 1 (`stop`).
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = LostPolicy::Wait)]
    on_master_lost: LostPolicy,

    /// Also tie each command to the worker with Linux PR_SET_PDEATHSIG, for when the worker's
    /// sentinel is killed together with it (e.g. `kill -9` of both). Commands die with the worker
    /// without it: the sentinel kills them. Costs a full fork per spawn, about 0.5 ms.
    #[arg(long)]
    tasks_die_with_worker: bool,

    /// Speak TLS to the master and trust its certificate if this PEM file holds it or the CA
    /// that issued it.
    #[arg(long, value_name = "FILE", env = "BALLAST_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// The name the master's certificate must carry [default: the host of --master]; not
    /// checked for a certificate that --tls-ca holds itself.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,

    /// Our certificate, for a master that requires one (--tls-client-ca).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LostPolicy {
    Wait,
    Stop,
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let interval = protocol::duration::parse_duration(text)?;
    if interval.is_zero() {
        return Err("the heartbeat interval must be greater than zero".into());
    }
    Ok(interval)
}

fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    let idle = protocol::duration::parse_duration(text)?;
    if idle.is_zero() {
        return Err("the idle timeout must be greater than zero".into());
    }
    Ok(idle)
}

/// The token in `path`: its first line, without the line end.
fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {}", path.display(), protocol::Cause(&e)))?;
    let token = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(token.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let mut args = Args::parse();
    if let Some(path) = &args.token_file {
        match read_token_file(path) {
            Ok(token) => args.token = Some(token),
            Err(e) => {
                error!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    // IMPORTANT: the token must not reach the tasks, which inherit our environment: a task that
    // prints `env` would put it in its stored output. Done while the process has one thread.
    std::env::remove_var("BALLAST_TOKEN");
    // An address that cannot be parsed or resolved is a mistake on the command line: retrying
    // cannot fix it, so say so at once. Only a refused or lost connection is retried.
    if let Err(e) = check_master_addr(&args.master) {
        error!("{e}");
        return ExitCode::from(1);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Session errors were logged when they happened; setup errors were not.
            let code = match e.downcast_ref::<error::WorkerError>() {
                Some(worker_error @ error::WorkerError::Setup { .. }) => {
                    error!("{worker_error}");
                    worker_error.exit_code()
                }
                Some(worker_error) => worker_error.exit_code(),
                None => {
                    error!("{e:#}");
                    1
                }
            };
            ExitCode::from(code)
        }
    }
}

/// `--master` as HOST:PORT that resolves to at least one address.
fn check_master_addr(addr: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "--master {addr:?} is not HOST:PORT (for example 127.0.0.1:7700)"
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "--master {addr:?} is not HOST:PORT (for example 127.0.0.1:7700)"
        ));
    }
    match addr.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("--master {addr}: the host resolves to no address")),
        Err(e) => Err(format!(
            "--master {addr}: cannot resolve the host: {}",
            protocol::Cause(&e)
        )),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "unknown-host".to_string());
    let pid = std::process::id();
    let name = args.name.unwrap_or_else(|| format!("{host}-{pid}"));
    let allocation = allocation::detect();
    // Inside an allocation the job's CPUs on this node, not the host's, are ours.
    let default_slots = match &allocation {
        Some(_) => allocation::cpus_on_node().unwrap_or(cpus),
        None => cpus,
    };
    // IMPORTANT: first, while the process has one thread (the sentinel is forked).
    sentinel::start(&name).map_err(|source| error::WorkerError::Setup {
        what: "start the sentinel process",
        source,
    })?;
    let tls = match args.tls_ca.filter(|p| !p.as_os_str().is_empty()) {
        None => None,
        Some(ca) => Some(
            ClientTls::load(&ClientTlsFiles {
                ca,
                server_name: args.tls_server_name,
                cert: args.tls_cert,
                key: args.tls_key,
            })
            .map_err(|e| {
                // Logged here like the session's errors (`main` logs only setup errors).
                error!("{e}");
                error::WorkerError::Tls {
                    line: e.to_string(),
                }
            })?,
        ),
    };
    let config = Config {
        master_addr: args.master,
        tls,
        // An empty token (e.g. `BALLAST_TOKEN=`) means none.
        token: args.token.filter(|t| !t.is_empty()).map(String::into_bytes),
        info: WorkerInfo {
            allocation: allocation.map(Box::new),
            name,
            host,
            cpus,
            slots: args.slots.unwrap_or(default_slots),
            pid,
            group: args.group.filter(|g| !g.is_empty()),
            prefetch: args.prefetch.unwrap_or(protocol::ADAPTIVE_PREFETCH),
            prefetch_adaptive: args.prefetch.is_none(),
            heartbeat_interval_ms: args.heartbeat.map_or(0, |d| d.as_millis().max(1) as u64),
        },
        heartbeat: args.heartbeat,
        on_master_lost: match args.on_master_lost {
            LostPolicy::Wait => OnMasterLost::Wait,
            LostPolicy::Stop => OnMasterLost::Stop,
        },
        tasks_die_with_worker: args.tasks_die_with_worker,
        idle_timeout: args.idle_timeout,
    };
    let (events, inbox) = mpsc::channel();
    let signal_events = events.clone();
    signals::install(move |signal| {
        let _ = signal_events.send(Event::Signal(signal));
    })
    .map_err(|source| error::WorkerError::Setup {
        what: "install signal handlers",
        source,
    })?;
    session::run(config, events, inbox)?;
    Ok(())
}
