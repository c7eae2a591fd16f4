//! The client side of the `master` binary: `submit`, `status`, `results`, `wait`, `cancel`,
//! `jobs`, `logs`, `forget`.
//! Each subcommand opens one connection (`protocol::Connection`), sends its request(s), and turns
//! the replies into text or `--json` for a person or a script.
//!
//! Exit codes: 0 success; 1 the master refused (a request, or the handshake), an awaited task did
//! not succeed, or a cancelled id was unknown; 2 the master could not be reached, or bad usage.

mod alloc;
mod cancel;
mod error;
mod forget;
mod ids;
mod jobs;
mod logs;
mod progress;
mod results;
mod session;
mod status;
mod submit;
mod term;
mod view;
mod wait;

pub use alloc::AllocArgs;
pub use cancel::CancelArgs;
pub use forget::ForgetArgs;
pub use jobs::JobsArgs;
pub use logs::LogsArgs;
pub use results::ResultsArgs;
pub use status::StatusArgs;
pub use submit::SubmitArgs;
pub use wait::WaitArgs;

use error::{ClientError, Result};
use protocol::tls::{ClientTls, ClientTlsFiles, TlsError};
use session::Session;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Largest frame body the client builds, half of `MAX_FRAME`: a master that is busy with a big
/// frame is not handed a second one as large as the limit.
const FRAME_BUDGET: usize = 8 << 20;
const _: () = assert!(FRAME_BUDGET < protocol::MAX_FRAME);

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit tasks: --sleep D, --spin D, --file FILE, or -- CMD ARGS...
    Submit(SubmitArgs),
    /// Show workers and queue counts.
    Status(StatusArgs),
    /// Show task results (all tasks, or the given ids).
    Results(ResultsArgs),
    /// Wait until the given tasks (default: all unfinished) are finished.
    Wait(WaitArgs),
    /// Cancel tasks.
    Cancel(CancelArgs),
    /// Show jobs (one per submit): their tasks counted by state.
    Jobs(JobsArgs),
    /// Print a task's whole stdout (or --stderr), as stored by the master; --follow while it runs.
    Logs(LogsArgs),
    /// Forget finished tasks (by id, --job, --finished-before): from memory, journal and logs.
    Forget(ForgetArgs),
    /// Allocation queues: workers from Slurm on demand (add, list, remove).
    Alloc(AllocArgs),
}

/// Each client subcommand's name and how it is built: its arguments, then its help line (last,
/// as the derive does, so a flattened struct's doc does not win). The same as [`ClientCommand`]'s,
/// which a test checks help by help.
type Build = fn(clap::Command) -> clap::Command;
macro_rules! subcommand {
    ($name:literal, $args:ty, $about:literal) => {
        ($name, |c: clap::Command| {
            <$args as clap::Args>::augment_args(c)
                .about($about)
                .long_about(None)
        })
    };
}
const SUBCOMMANDS: [(&str, Build); 9] = [
    subcommand!(
        "submit",
        SubmitArgs,
        "Submit tasks: --sleep D, --spin D, --file FILE, or -- CMD ARGS..."
    ),
    subcommand!("status", StatusArgs, "Show workers and queue counts"),
    subcommand!(
        "results",
        ResultsArgs,
        "Show task results (all tasks, or the given ids)"
    ),
    subcommand!(
        "wait",
        WaitArgs,
        "Wait until the given tasks (default: all unfinished) are finished"
    ),
    subcommand!("cancel", CancelArgs, "Cancel tasks"),
    subcommand!(
        "jobs",
        JobsArgs,
        "Show jobs (one per submit): their tasks counted by state"
    ),
    subcommand!(
        "logs",
        LogsArgs,
        "Print a task's whole stdout (or --stderr), as stored by the master; --follow while it runs"
    ),
    subcommand!(
        "forget",
        ForgetArgs,
        "Forget finished tasks (by id, --job, --finished-before): from memory, journal and logs"
    ),
    subcommand!(
        "alloc",
        AllocArgs,
        "Allocation queues: workers from Slurm on demand (add, list, remove)"
    ),
];

/// Whether `first` (the first argument) names a client subcommand.
pub fn is_client_command(first: &std::ffi::OsStr) -> bool {
    SUBCOMMANDS.iter().any(|(c, _)| first == *c)
}

/// `master SUBCOMMAND ...` for a client subcommand: the same command line as the full one's
/// client part, but each subcommand's arguments are built only if it is the one run (`defer`):
/// the others' are most of the heap a parse touches, and every page of it is a fault in a
/// process that lives a few milliseconds (W7 in docs/PERFORMANCE.md).
fn lean_command() -> clap::Command {
    SUBCOMMANDS.iter().fold(
        clap::Command::new("master")
            .version(env!("CARGO_PKG_VERSION"))
            .subcommand_required(true)
            .arg_required_else_help(true),
        |cmd, &(name, build)| cmd.subcommand(clap::Command::new(name).defer(build)),
    )
}

/// Parses `args` (the program's name first) as a client command line.
fn parse_from<I, T>(args: I) -> std::result::Result<ClientCommand, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    lean_command()
        .try_get_matches_from(args)
        .and_then(|m| ClientCommand::from_arg_matches(&m))
}

/// Parses the command line as a client subcommand and runs it.
pub fn main() -> ExitCode {
    match parse_from(std::env::args_os()) {
        Ok(cmd) => run(cmd),
        Err(e) => e.exit(),
    }
}

/// Where the master is and how to prove we may talk to it; shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Address of the master.
    #[arg(long, value_name = "ADDR", env = "BALLAST_MASTER", default_value = protocol::DEFAULT_MASTER_ADDR)]
    pub master: String,
    /// Shared secret, if the master requires one (never sent: answers an HMAC challenge).
    #[arg(long, value_name = "T", env = "BALLAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Longest wait for any reply from the master; past it the client says what it waited for
    /// and exits 2. `wait` stays up however long its tasks take: when the master is quiet for
    /// this long it asks for a status to check that the master still answers.
    #[arg(long, value_name = "D", env = "BALLAST_REPLY_TIMEOUT", default_value = "60s",
          value_parser = parse_reply_timeout)]
    pub reply_timeout: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS to the master: on with `--tls-ca` (a master started with `--tls-cert`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS and trust the master's certificate if this PEM file holds it or the CA that
    /// issued it.
    #[arg(long, value_name = "FILE", env = "BALLAST_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The name the master's certificate must carry [default: the host of --master]; not
    /// checked for a certificate that --tls-ca holds itself.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Our certificate, for a master that requires one (--tls-client-ca).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS settings, loaded, or `None` without `--tls-ca` (an empty `BALLAST_TLS_CA=`
    /// means none too).
    pub fn load(&self) -> std::result::Result<Option<ClientTls>, TlsError> {
        let Some(ca) = self.tls_ca.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        ClientTls::load(&ClientTlsFiles {
            ca: ca.clone(),
            server_name: self.tls_server_name.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        })
        .map(Some)
    }
}

/// The default `--reply-timeout`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A duration above zero; empty (`BALLAST_REPLY_TIMEOUT=` in a script) means the default.
fn parse_reply_timeout(text: &str) -> std::result::Result<Duration, String> {
    if text.trim().is_empty() {
        return Ok(REPLY_TIMEOUT);
    }
    match protocol::duration::parse_duration(text)? {
        d if d.is_zero() => Err("the reply timeout must be greater than zero".into()),
        d => Ok(d),
    }
}

impl ConnArgs {
    /// The session with the master; it connects with its first request. An empty
    /// `BALLAST_MASTER=` reaches clap as an empty value; treat it as unset, like the token.
    fn session(&self) -> Result<Session> {
        let addr = match self.master.trim() {
            "" => protocol::DEFAULT_MASTER_ADDR,
            addr => addr,
        };
        let tls = self
            .tls
            .load()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(Session::new(
            addr,
            self.token.as_deref(),
            tls,
            self.reply_timeout,
        ))
    }
}

/// `one` for 1, `many` otherwise: `1 task`, `2 tasks`, `0 tasks`.
pub fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `1 task`, `3 tasks`.
pub fn count(n: u64, one: &'static str, many: &'static str) -> String {
    format!("{n} {}", plural(n, one, many))
}

/// How a subcommand that ran to the end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Exit 1: some awaited task did not succeed, or an id was unknown.
    TasksFailed,
}

pub fn run(cmd: ClientCommand) -> ExitCode {
    let result = match cmd {
        ClientCommand::Submit(args) => submit::run(args),
        ClientCommand::Status(args) => status::run(args),
        ClientCommand::Results(args) => results::run(args),
        ClientCommand::Wait(args) => wait::run(args),
        ClientCommand::Cancel(args) => cancel::run(args),
        ClientCommand::Jobs(args) => jobs::run(args),
        ClientCommand::Logs(args) => logs::run(args),
        ClientCommand::Forget(args) => forget::run(args),
        ClientCommand::Alloc(args) => alloc::run(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::TasksFailed) => ExitCode::from(1),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            // One line, and no panic if stderr itself is gone.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error::ClientError;
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    /// Through the lean parse that `master` runs.
    fn parse(argv: &[&str]) -> std::result::Result<ClientCommand, clap::Error> {
        parse_from(std::iter::once("master").chain(argv.iter().copied()))
    }

    #[test]
    fn command_line_contract_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let ok = [
            &[
                "submit",
                "--master",
                "h:1",
                "--priority",
                "-5",
                "--sleep",
                "1s",
                "--wait",
                "--json",
            ][..],
            &[
                "submit", "--token", "s3cret", "--count", "1000", "--", "echo", "-n", "hi",
            ],
            &["submit", "--file", "tasks.jsonl", "--count", "2"],
            &["status", "--json"],
            &["results", "--json", "1", "2", "3"],
            &["results"],
            &["wait"],
            &["wait", "--json", "4", "5"],
            &["cancel", "--master", "h:1", "7", "8"],
            &["results", "201-203"],
            &["cancel", "5-9", "12"],
            &["logs", "7"],
            &["logs", "7", "--stderr", "--follow"],
            &["forget", "--job", "3"],
            &["forget", "5-9", "--finished-before", "1h", "--json"],
            &["forget", "--finished-before", "30m"],
        ];
        for argv in ok {
            assert!(parse(argv).is_ok(), "{argv:?}: {:?}", parse(argv).err());
        }
        assert!(parse(&["cancel"]).is_err(), "cancel needs ids");
        let Ok(ClientCommand::Results(r)) = parse(&["results", "--reply-timeout", "1.5s"]) else {
            panic!("--reply-timeout parses");
        };
        assert_eq!(r.conn.reply_timeout, Duration::from_millis(1_500));
        assert!(parse(&["status", "--reply-timeout", "0s"]).is_err());
        assert_eq!(parse_reply_timeout(""), Ok(REPLY_TIMEOUT));
        assert!(parse(&["results", "x"]).is_err(), "ids are numbers");
    }

    /// The lean command line is the derived one, help by help (the help lines are written
    /// twice: in `SUBCOMMANDS`, and as `ClientCommand`'s docs for the full command line).
    #[test]
    fn the_lean_parse_knows_every_client_command() {
        use clap::CommandFactory;
        lean_command().debug_assert();
        let derived = Cli::command();
        let names: Vec<&str> = derived.get_subcommands().map(|c| c.get_name()).collect();
        let lean: Vec<&str> = SUBCOMMANDS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, lean);
        for name in names {
            let help = |cmd: clap::Command| {
                let err = cmd
                    .try_get_matches_from(["master", name, "--help"])
                    .expect_err("--help");
                assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
                err.to_string()
            };
            assert_eq!(help(lean_command()), help(Cli::command()), "{name}");
        }
        assert!(SUBCOMMANDS
            .iter()
            .all(|(c, _)| is_client_command(c.as_ref())));
        for other in ["serve", "simulate", "--version", "help", "submitx", ""] {
            assert!(!is_client_command(other.as_ref()), "{other}");
        }
    }

    #[test]
    fn master_address_defaults() {
        // Only meaningful when the environment does not set it; never mutate env in tests.
        if std::env::var_os("BALLAST_MASTER").is_none() {
            let Ok(ClientCommand::Status(s)) = parse(&["status"]) else {
                panic!("status parses");
            };
            assert_eq!(s.conn.master, protocol::DEFAULT_MASTER_ADDR);
        }
        let Ok(ClientCommand::Wait(w)) = parse(&["wait", "--master", "10.0.0.1:9", "3"]) else {
            panic!("wait parses");
        };
        assert_eq!(
            (w.conn.master.as_str(), w.ids.as_slice()),
            (
                "10.0.0.1:9",
                &[ids::IdArg(vec![ids::IdRange { first: 3, count: 1 }])][..]
            )
        );
        // Ranges, as `submit` and `cancel` print them (issue 11).
        let Ok(ClientCommand::Cancel(c)) = parse(&["cancel", "5-9", "12", "1-3,"]) else {
            panic!("cancel parses ranges");
        };
        let named: Vec<u64> = ids::from_args(&c.ids).map(|t| t.0).collect();
        assert_eq!(named, [5, 6, 7, 8, 9, 12, 1, 2, 3]);
        assert!(parse(&["results", "9-5"]).is_err(), "a backwards range");
    }

    #[test]
    fn unreachable_master_is_one_line_and_exit_2() {
        // Port 1 on loopback: nothing listens there, so connect is refused at once.
        let err = match Session::connect("127.0.0.1:1", None, Duration::from_secs(1)) {
            Err(e) => e,
            Ok(_) => return, // something does listen there; nothing to check
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot reach the master at 127.0.0.1:1"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert_eq!(err.exit_code(), 2);
        assert_eq!(ClientError::Master("no".into()).exit_code(), 1);
    }
}
