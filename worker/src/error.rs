//! Why the worker stops.

use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WorkerError {
    /// The master refused the handshake (bad token, other protocol version): retrying cannot help.
    #[error("the master at {addr} rejected this worker: {reason}")]
    Rejected { addr: String, reason: String },
    /// We hold a token and the master did not prove it in its `Welcome`: it has none or
    /// another, or it is not our master at all. Nothing it sent was acted on.
    #[error(
        "the master at {addr} did not prove the token (it has none, or another one): refusing \
         to take tasks from it"
    )]
    MasterUnproven { addr: String },
    /// The master connection broke and `--on-master-lost stop` asked us not to wait for it.
    #[error("lost the master at {addr}: {reason}")]
    MasterLost { addr: String, reason: String },
    /// TLS settings that cannot work: a file we cannot use, a master whose certificate we do
    /// not trust, a master that speaks TLS to a worker without `--tls-ca` or the reverse.
    #[error("{line}")]
    Tls { line: String },
    /// The process could not be set up (signal handlers, pipes).
    #[error("cannot {what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
}

impl WorkerError {
    /// The process exit status for this error: 2 when a person must change something before a
    /// retry can work, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Rejected { .. } | WorkerError::MasterUnproven { .. } => 2,
            // 1 like a setup error: our own TLS settings are what a person must change.
            WorkerError::MasterLost { .. }
            | WorkerError::Setup { .. }
            | WorkerError::Tls { .. } => 1,
        }
    }
}
