//! `master`: the client CLI (`submit`, `status`, `wait`, ...), and the way in to the server.
//!
//! Why two programs: a client command is a process that lives a few milliseconds, and most of its
//! cost is starting (W7 in `docs/PERFORMANCE.md`). The server, its journal, HTTP side and
//! simulator are most of the code; linked into the client, their relocations and pages are
//! faults that every `master submit` pays. So this binary holds only the client, and any other
//! command line (`serve`, none, `simulate`, `--help`, `--version`) is handed whole to
//! `ballast-master` beside it, by `exec`: the same process and pid, the same arguments, so
//! `master serve` behaves as it always did.

mod client;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// The server's program, installed in the same folder as `master`.
const SERVER: &str = "ballast-master";

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| client::is_client_command(&first))
    {
        return client::main();
    }
    exec_server()
}

/// Replaces this process with `ballast-master` and the same arguments; returns only if that
/// fails, saying why.
fn exec_server() -> ExitCode {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("master"));
    let server = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(SERVER),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot find the server: where this program is ({e}) is unknown, and \
                 {SERVER} is looked for beside it"
            );
            return ExitCode::from(2);
        }
    };
    // argv[0] stays what the user typed, so `ps` shows the command line as before.
    let e = Command::new(&server).arg0(arg0).args(args).exec();
    let _ = writeln!(
        std::io::stderr(),
        "error: cannot run the server {}: {e} (install {SERVER} beside master: both are built by \
         `cargo build -p master`)",
        server.display()
    );
    ExitCode::from(2)
}
