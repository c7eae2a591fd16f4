//! `ballast-master`: the whole `master` command line. It serves the cluster (no subcommand, or
//! `serve`), simulates one (`simulate`), and has the client subcommands too. Users run `master`
//! (`src/main.rs`), which runs client subcommands itself and hands every other command line to
//! this program, installed beside it.

#[path = "../client/mod.rs"]
mod client;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use master::core::policy::{PolicyKind, QueueOrder};
use master::core::CoreConfig;
use master::server::{log_listening, Server, ServerConfig};
use protocol::duration::parse_duration;
use protocol::tls::{ServerTls, ServerTlsFiles};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "master",
    version,
    args_conflicts_with_subcommands = true,
    about = "Ballast master: schedules tasks over workers by their live load",
    long_about = "Ballast master. With no subcommand (or `serve`) it runs the scheduler; the other \
                  subcommands are clients that talk to a running master (see --master)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the master (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Simulate a cluster in virtual time: the real scheduler over simulated workers.
    Simulate(master::sim::SimulateArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (see --port-file).
    #[arg(long, default_value = protocol::DEFAULT_MASTER_ADDR)]
    listen: String,
    /// How tasks are placed on workers.
    #[arg(long, default_value = "least-loaded", value_parser = PolicyKind::NAMES)]
    policy: String,
    /// Which queued task goes first within a priority level: fifo, or largest-first (by size).
    #[arg(long, default_value = "fifo", value_parser = QueueOrder::NAMES)]
    order: String,
    /// A worker silent for this long is declared dead and its tasks re-queued.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    heartbeat_timeout: std::time::Duration,
    /// How often workers report their load (the heartbeat).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat: std::time::Duration,
    /// Shared secret every worker and client must prove (HMAC challenge; never sent).
    #[arg(long, env = "BALLAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    insecure: bool,
    /// Serve the worker and client port over TLS 1.3 with this certificate (PEM, the chain
    /// after it); peers then need --tls-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every worker and client must present a certificate issued by a CA in this
    /// PEM file (their --tls-cert/--tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Write the bound address (host:port) to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Address of the HTTP API and dashboard (http://ADDR/); port 0 picks a free port (see
    /// --http-port-file); "off" serves no HTTP. Same rule as --listen: a non-loopback address
    /// needs a token, or --insecure.
    #[arg(long, value_name = "ADDR|off", default_value = master::http::DEFAULT_HTTP_ADDR)]
    http: String,
    /// Write the HTTP listener's bound address (host:port) to this file once listening.
    #[arg(long, value_name = "FILE")]
    http_port_file: Option<PathBuf>,
    /// Most connections served at once (10,000 workers and their clients fit); more are closed
    /// on accept. The master raises its open-file limit to the hard limit for them, and warns if
    /// that stays too low.
    #[arg(long, default_value_t = 16_384)]
    max_connections: usize,
    /// Folder of the journal (SQLite, WAL): accepted tasks and results survive a crash.
    #[arg(long, value_name = "DIR", default_value = "ballast-data")]
    data_dir: PathBuf,
    /// Keep everything in memory only: a restart forgets all tasks (benchmarks, throwaway runs).
    #[arg(long)]
    no_journal: bool,
    /// Start even if the journal lost acknowledged work (a damaged WAL, an older copy of the
    /// database): the lost ids are logged and recorded as failed. Without it the master refuses.
    #[arg(long, conflicts_with = "no_journal")]
    accept_journal_loss: bool,
    /// When a slot is idle and nothing is queued, start a second copy of any task that has run
    /// longer than F times its estimate (its size times the run time per unit of size seen so
    /// far); the first success wins. F must be at least 1.
    #[arg(long, value_name = "F", value_parser = parse_speculate)]
    speculate: Option<f64>,
    /// Close a client connection that has nothing in flight (no wait) and sends nothing for this
    /// long; 0 or "off" never closes one.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_idle_timeout)]
    client_idle_timeout: IdleTimeout,
    /// The most tasks the master holds, finished ones included; a submission that would pass it
    /// is refused whole (the client exits 1). Default: half of this machine's memory at
    /// 256 bytes a task, and at least 1,000,000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tasks: Option<u64>,
    /// The most bytes of each task's stdout (and of its stderr) kept in its log (`master logs`);
    /// past it the log ends with one line saying how many bytes were dropped. 64MiB, 1G, 500K ...
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = master::logs::parse_size)]
    log_limit: u64,
    /// The most bytes all task logs take together (in the data dir, or in memory with
    /// --no-journal); the logs of the oldest finished tasks are removed first.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = master::logs::parse_size)]
    log_budget: u64,
    /// Forget the tasks of a job (results, logs, journal rows) once the whole job has been
    /// finished this long, checked every second: a master that runs for months stays small.
    /// One line is logged per job forgotten. Default: keep everything (see `master forget`).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    keep_finished: Option<std::time::Duration>,
}

/// What one task costs the master, for the default `--max-tasks`: its record, its queue entry
/// and its share of a journaled batch, with room to spare.
const TASK_BYTES: u64 = 256;
const MIN_DEFAULT_MAX_TASKS: u64 = 1_000_000;

/// Half of `MemTotal` (from `/proc/meminfo`) at [`TASK_BYTES`] a task, at least
/// [`MIN_DEFAULT_MAX_TASKS`] (also when the memory cannot be read).
fn default_max_tasks() -> u64 {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text));
    max_tasks_for(mem_total)
}

fn max_tasks_for(mem_total_bytes: Option<u64>) -> u64 {
    mem_total_bytes
        .map(|bytes| bytes / 2 / TASK_BYTES)
        .unwrap_or(0)
        .max(MIN_DEFAULT_MAX_TASKS)
}

/// `MemTotal:  16314480 kB` in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn parse_speculate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 1.0 => Ok(f),
        _ => Err(format!("expected a number >= 1, got {s:?}")),
    }
}

fn main() -> ExitCode {
    // A client subcommand builds only the client's part of the command line: the server's and
    // the simulator's options are most of the heap a full parse touches, and every page of it is
    // a fault in a process that lives a few milliseconds (W7 in docs/PERFORMANCE.md).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| client::is_client_command(&first))
    {
        return client::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Client(cmd)) => client::run(cmd),
        Some(Command::Serve(args)) => serve_main(args),
        Some(Command::Simulate(args)) => master::sim::main(args),
        None => serve_main(cli.serve),
    }
}

fn serve_main(args: ServeArgs) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let policy: PolicyKind = args.policy.parse().map_err(anyhow::Error::msg)?;
    let order: QueueOrder = args.order.parse().map_err(anyhow::Error::msg)?;
    let token = args.token.filter(|t| !t.is_empty()).map(String::into_bytes);
    let heartbeat_interval_ms = args.heartbeat.as_millis().max(1) as u64;
    let heartbeat_timeout_ms = args.heartbeat_timeout.as_millis() as u64;
    if heartbeat_timeout_ms <= heartbeat_interval_ms {
        bail!("--heartbeat-timeout ({heartbeat_timeout_ms} ms) must exceed --heartbeat ({heartbeat_interval_ms} ms)");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::load(&ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })
            .context("loading the TLS certificate")?,
        ),
        _ => None,
    };
    if let (Some(tls), Some(cert)) = (&tls, &args.tls_cert) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(problem) = tls.certificate_warning(now) {
            log::warn!("--tls-cert {}: {problem}", cert.display());
        }
    }
    let guard = Guard {
        token: token.is_some(),
        tls: tls.is_some(),
        mutual_tls: tls.as_ref().is_some_and(ServerTls::mutual),
        insecure: args.insecure,
    };
    let mut readable: Vec<String> = check_exposure("--listen", &args.listen, guard)?
        .into_iter()
        .collect();
    let http_addr = (args.http != "off").then_some(args.http);
    if let Some(http) = &http_addr {
        // The HTTP side is served over the same TLS (HTTPS), client certificates included.
        readable.extend(check_exposure("--http", http, guard)?);
    }
    if !readable.is_empty() {
        log::warn!(
            "no TLS on {}: command lines, environments and outputs cross the network readable \
             (the token itself is never sent); --tls-cert and --tls-key encrypt the worker port",
            readable.join(" and ")
        );
    }
    if http_addr.is_none() && args.http_port_file.is_some() {
        bail!("--http-port-file needs an HTTP listener, but --http is off");
    }
    let config = ServerConfig {
        core: CoreConfig {
            policy,
            order,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            token,
            speculate: args.speculate,
            client_idle_timeout_ms: args
                .client_idle_timeout
                .0
                .map(|d| d.as_millis().max(1) as u64),
            max_tasks: args.max_tasks.unwrap_or_else(default_max_tasks),
            log_limit_bytes: args.log_limit,
            keep_finished_ms: args
                .keep_finished
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..CoreConfig::default()
        },
        max_connections: args.max_connections,
        data_dir: (!args.no_journal).then_some(args.data_dir),
        accept_journal_loss: args.accept_journal_loss,
        http_addr,
        tls,
        tls_cert_file: args.tls_cert.clone(),
        logs: master::logs::LogLimits {
            per_stream: args.log_limit,
            budget: args.log_budget,
        },
        ..ServerConfig::default()
    };
    master::fd_limit::ensure_room_for(config.max_connections, "--max-connections");
    let server = Server::bind(&args.listen, config.clone())?;
    let addr = server.local_addr().context("reading the bound address")?;
    log_listening(addr, &config);
    if let Some(http) = server.http_addr() {
        let http = http.context("reading the bound HTTP address")?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        log::info!("HTTP API and dashboard on {scheme}://{http}/");
        if let Some(path) = &args.http_port_file {
            write_atomically(path, &http.to_string())
                .with_context(|| format!("writing --http-port-file {}", path.display()))?;
        }
    }
    if let Some(path) = &args.port_file {
        write_atomically(path, &addr.to_string())
            .with_context(|| format!("writing --port-file {}", path.display()))?;
    }
    server.run()?;
    Ok(())
}

/// `--client-idle-timeout`: a duration, or none (a newtype: clap reads a bare `Option` field as
/// "the flag may be missing").
#[derive(Debug, Clone, Copy)]
struct IdleTimeout(Option<std::time::Duration>);

/// A duration, or 0 / `off` for none.
fn parse_idle_timeout(text: &str) -> Result<IdleTimeout, String> {
    if text == "off" || text == "0" {
        return Ok(IdleTimeout(None));
    }
    parse_duration(text).map(|d| IdleTimeout((!d.is_zero()).then_some(d)))
}

/// What protects a listener from the network.
#[derive(Debug, Clone, Copy)]
struct Guard {
    token: bool,
    tls: bool,
    /// Peers must present a certificate of our client CA: TLS says who they are.
    mutual_tls: bool,
    insecure: bool,
}

/// Refuses to serve strangers: a non-loopback address needs a token (or mutual TLS), or an
/// explicit --insecure. Returns the exposed address if its traffic is readable (no TLS), for one
/// warning.
fn check_exposure(flag: &str, listen: &str, guard: Guard) -> anyhow::Result<Option<String>> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .with_context(|| format!("resolving {flag} {listen}"))?
        .collect();
    let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) else {
        return Ok(None);
    };
    if !(guard.token || guard.mutual_tls || guard.insecure) {
        let tls_note = if guard.tls {
            " (TLS hides the traffic but does not say who may connect: add --tls-client-ca)"
        } else {
            ""
        };
        bail!(
            "refusing to listen on {open} ({flag}) without a token: anyone who can reach it could \
             run commands here{tls_note}. Set --token / BALLAST_TOKEN, or pass --insecure if the \
             network is trusted"
        );
    }
    Ok((!guard.tls && !guard.insecure).then(|| format!("{open} ({flag})")))
}

/// Readers polling for the file never see it half-written.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_a_token_or_mutual_tls_and_warns_without_tls() {
        let none = Guard {
            token: false,
            tls: false,
            mutual_tls: false,
            insecure: false,
        };
        assert_eq!(
            check_exposure("--listen", "127.0.0.1:0", none).ok(),
            Some(None)
        );
        let refused = check_exposure("--listen", "0.0.0.0:0", none).expect_err("open");
        assert!(refused.to_string().contains("without a token"), "{refused}");
        let tls_only = Guard { tls: true, ..none };
        let refused = check_exposure("--listen", "0.0.0.0:0", tls_only).expect_err("anyone");
        assert!(refused.to_string().contains("--tls-client-ca"), "{refused}");
        let token = Guard {
            token: true,
            ..none
        };
        let readable = check_exposure("--listen", "0.0.0.0:0", token).expect("token");
        assert_eq!(readable.as_deref(), Some("0.0.0.0:0 (--listen)"));
        let sealed = Guard {
            token: true,
            tls: true,
            ..none
        };
        assert_eq!(
            check_exposure("--listen", "0.0.0.0:0", sealed).ok(),
            Some(None)
        );
        let mutual = Guard {
            tls: true,
            mutual_tls: true,
            ..none
        };
        assert_eq!(
            check_exposure("--listen", "0.0.0.0:0", mutual).ok(),
            Some(None)
        );
        let insecure = Guard {
            insecure: true,
            ..none
        };
        assert_eq!(
            check_exposure("--listen", "0.0.0.0:0", insecure).ok(),
            Some(None)
        );
    }

    #[test]
    fn the_default_task_limit_fits_the_machine() {
        let meminfo = "MemTotal:       16314480 kB\nMemFree:         1000 kB\n";
        let bytes = mem_total_bytes(meminfo);
        assert_eq!(bytes, Some(16_314_480 * 1024));
        assert_eq!(max_tasks_for(bytes), 16_314_480 * 1024 / 2 / 256);
        assert_eq!(max_tasks_for(Some(1 << 20)), MIN_DEFAULT_MAX_TASKS);
        assert_eq!(max_tasks_for(None), MIN_DEFAULT_MAX_TASKS);
        assert_eq!(mem_total_bytes("nonsense"), None);
    }
}
