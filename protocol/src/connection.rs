//! A blocking connection to the master, for the CLI, the worker and tests. The master itself never
//! uses this: it runs the same codec inside its mio loop.

use crate::auth;
use crate::codec::{encode_frame, FrameDecoder, FrameError};
use crate::messages::{FromMaster, Incarnation, Role, ToMaster, WorkerId};
use crate::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectionError {
    /// No address answered (or the name did not resolve).
    #[error("cannot reach the master at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// The socket failed after connecting.
    #[error("connection to the master failed: {0}")]
    Io(#[from] io::Error),
    /// The master closed the connection.
    #[error("the master closed the connection")]
    Closed,
    /// The peer sent bytes that are not our protocol.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The master refused the handshake.
    #[error("the master at {addr} refused this connection: {reason}")]
    Rejected { addr: String, reason: String },
    /// The master speaks another protocol version.
    #[error("protocol version mismatch: master speaks {master}, we speak {ours}")]
    Version { master: u32, ours: u32 },
    /// A message arrived that makes no sense at this point of the conversation.
    #[error("unexpected message from the master: {0}")]
    Unexpected(String),
}

/// What the master said when it accepted us.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    pub worker_id: Option<WorkerId>,
    pub heartbeat_interval_ms: u64,
    pub master_id: u64,
    pub incarnation: Incarnation,
}

/// Receiving half: reads frames with a reused buffer.
pub struct FrameReader {
    stream: TcpStream,
    decoder: FrameDecoder,
}

/// Sending half: frames are queued into one buffer and written with one syscall by `flush`.
pub struct FrameWriter {
    stream: TcpStream,
    buf: Vec<u8>,
}

pub struct Connection {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

impl FrameReader {
    /// Blocks for the next message. `Err(Closed)` on a clean end of stream.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ConnectionError> {
        loop {
            if let Some(msg) = self.decoder.next_frame()? {
                return Ok(msg);
            }
            const READ_CHUNK: usize = 64 << 10;
            let spare = self.decoder.spare(READ_CHUNK);
            let n = match self.stream.read(spare) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.decoder.commit(READ_CHUNK, 0);
                    return Err(e.into());
                }
            };
            self.decoder.commit(READ_CHUNK, n);
            if n == 0 && self.decoder.buffered() == 0 {
                return Err(ConnectionError::Closed);
            }
            if n == 0 {
                // EOF in the middle of a frame.
                return Err(ConnectionError::Closed);
            }
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

impl FrameWriter {
    /// Queues a message; nothing is written until `flush`.
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        encode_frame(msg, &mut self.buf)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnectionError> {
        self.queue(msg)?;
        self.flush()
    }

    /// Bytes queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Closes both directions, which also wakes a reader blocked on the other half.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The socket and the queue buffer (with what is queued and not flushed), for a caller that
    /// writes on its own terms: the worker must never block in `flush`, so its writer thread owns
    /// the socket.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

impl Connection {
    /// Connects to `addr` and completes the handshake as `role`.
    pub fn connect(
        addr: &str,
        role: Role,
        token: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<(Connection, Welcome), ConnectionError> {
        let stream = connect_any(addr, connect_timeout)?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            reader: FrameReader {
                stream: stream.try_clone()?,
                decoder: FrameDecoder::new(),
            },
            writer: FrameWriter {
                stream,
                buf: Vec::with_capacity(4096),
            },
        };
        // Bound the handshake so a wrong port does not hang us; callers set their own timeouts after.
        conn.reader
            .set_read_timeout(Some(connect_timeout.max(Duration::from_secs(5))))?;
        let welcome = conn.handshake(role, token).map_err(|e| match e {
            ConnectionError::Rejected { reason, .. } => ConnectionError::Rejected {
                addr: addr.to_string(),
                reason,
            },
            other => other,
        })?;
        conn.reader.set_read_timeout(None)?;
        Ok((conn, welcome))
    }

    fn handshake(&mut self, role: Role, token: Option<&[u8]>) -> Result<Welcome, ConnectionError> {
        let nonce = match self.reader.recv::<FromMaster>()? {
            FromMaster::Greeting { version, nonce } => {
                if version != PROTOCOL_VERSION {
                    return Err(ConnectionError::Version {
                        master: version,
                        ours: PROTOCOL_VERSION,
                    });
                }
                nonce
            }
            other => return Err(ConnectionError::Unexpected(format!("{other:?}"))),
        };
        self.writer.send(&ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role,
            auth: auth::respond(token, &nonce),
        })?;
        match self.reader.recv::<FromMaster>() {
            Ok(FromMaster::Welcome {
                worker_id,
                heartbeat_interval_ms,
                master_id,
                incarnation,
            }) => Ok(Welcome {
                worker_id,
                heartbeat_interval_ms,
                master_id,
                incarnation,
            }),
            Ok(FromMaster::Rejected { reason }) => Err(ConnectionError::Rejected {
                addr: String::new(), // filled in by `connect`, which knows it
                reason,
            }),
            Ok(other) => Err(ConnectionError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    }

    pub fn send(&mut self, msg: &ToMaster) -> Result<(), ConnectionError> {
        self.writer.send(msg)
    }

    pub fn recv(&mut self) -> Result<FromMaster, ConnectionError> {
        self.reader.recv()
    }

    /// Sends `request` and returns the reply; a master `Error` becomes `Err(Rejected)`-like text.
    pub fn request(&mut self, request: &ToMaster) -> Result<FromMaster, ConnectionError> {
        self.send(request)?;
        self.recv()
    }

    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }
}

fn connect_any(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectionError> {
    let err = |source| ConnectionError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for sock in addr.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}
