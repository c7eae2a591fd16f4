//! Ballast's wire contract: every message that crosses a socket, the frame codec, the handshake's
//! HMAC, and a small blocking connection used by the CLI, the worker and tests.
//!
//! The codec is sans-IO: [`FrameDecoder`] takes bytes in any split and yields whole messages,
//! [`encode_frame`] appends one frame to a caller-owned buffer. Only `codec` knows about bincode.
//! Batched messages are cut to a frame budget by [`budget::chunks_within`], by their encoded size.

pub mod alloc;
pub mod auth;
pub mod budget;
pub mod bytes;
pub mod cause;
pub mod codec;
pub mod connection;
pub mod dag;
pub mod duration;
pub mod limits;
pub mod messages;
pub mod names;
pub mod plural;
pub mod tls;
pub mod transport;

pub use cause::Cause;
pub use codec::{encode_frame, FrameDecoder, FrameError, MAX_FRAME};
pub use connection::{Connection, ConnectionError};
pub use messages::*;

/// Bumped whenever a wire type changes shape; peers with another version are rejected.
pub const PROTOCOL_VERSION: u32 = 12;

/// Address used when neither `--master` nor `$BALLAST_MASTER` is given.
pub const DEFAULT_MASTER_ADDR: &str = "127.0.0.1:7700";

/// Tasks a worker holds beyond its slots without `--prefetch`, which the master holds only while
/// tasks are short. One is enough for a slot never to wait a round trip for its next task; four
/// let the worker report every second task, which halves the master's wakeups per short task.
/// The load generator's simulated workers declare the same by default.
pub const ADAPTIVE_PREFETCH: u32 = 4;
