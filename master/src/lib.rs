//! The Ballast master as a library: the mio `server` that drives the sans-IO scheduler (its own
//! crate, `master/scheduler`, re-exported here as `core`), the journal and the simulator. The
//! `master` binary adds the command line (serve and the client subcommands).

pub use scheduler as core;
pub mod alloc;
pub mod fd_limit;
pub mod http;
pub mod journal;
pub mod json;
pub mod logs;
pub mod server;
pub mod sim;
pub mod stop_signal;
pub mod taskfile;
pub mod tls_conn;
