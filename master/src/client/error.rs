//! Everything that can go wrong in a client subcommand, and the exit code each maps to.
//!
//! Exit codes: 0 all good; 1 the master said no (a request, or the handshake: a missing or
//! wrong token), a task did not succeed, or an id was unknown;
//! 2 we could not talk to the master at all (or it stopped answering), or the command line / task file was unusable
//! (the same code clap uses for usage errors).

use protocol::ConnectionError;
use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The arguments or the task file make no sense; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// Connecting, the handshake, or the socket afterwards failed (unreachable, rejected, closed).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A task breaks a limit the master enforces (`protocol::limits`); refused before sending,
    /// with the exit code of the master's own refusal.
    #[error("{0}")]
    Refused(String),
    /// The master answered with `Error { message }`.
    #[error("{0}")]
    Master(String),
    /// The master sent nothing for `--reply-timeout` (it is stopped, stuck or overloaded).
    #[error(
        "no reply from the master within {after:?} (waiting for {waiting_for}); raise \
         --reply-timeout if it is busy"
    )]
    NoReply {
        waiting_for: &'static str,
        after: std::time::Duration,
    },
    /// The master answered with a message that does not fit the request.
    #[error("unexpected reply from the master: {got} (expected {expected})")]
    Unexpected { got: String, expected: &'static str },
    /// Writing our own output failed (a closed pipe is handled quietly by the caller).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            // A refused handshake is a refusal like any other (README: exit 1); the master is
            // there and answers, and retrying as it is cannot help.
            ClientError::Connection(ConnectionError::Rejected { .. }) => 1,
            ClientError::Usage(_) | ClientError::Connection(_) | ClientError::NoReply { .. } => 2,
            ClientError::Master(_)
            | ClientError::Refused(_)
            | ClientError::Unexpected { .. }
            | ClientError::Output(_) => 1,
        }
    }

    /// A reader closed our stdout early (`master results | head`): stop quietly, as `cat` does.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;
