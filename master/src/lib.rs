//! The Ballast master as a library: the sans-IO scheduling `core` and the mio `server` that drives it.
//! The `master` binary adds the command line (serve and the client subcommands).

pub mod core;
pub mod journal;
pub mod server;
pub mod sim;
pub mod taskfile;
