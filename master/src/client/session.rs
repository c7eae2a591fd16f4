//! One client connection to the master: the handshake, and replies sorted into "what we asked for",
//! "the master refused" and "something else".

use super::error::{ClientError, Result};
use protocol::{Connection, FromMaster, Role, ToMaster};
use std::time::Duration;

/// How long to wait for the TCP connect. A refused port fails at once; this bounds a silent one
/// (a firewall dropping packets) so the user gets the one-line "cannot reach" error quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Session {
    conn: Connection,
}

impl Session {
    /// Connects to `addr` as a client. An empty token counts as no token, so `BALLAST_TOKEN=` in
    /// a script means "none" rather than "HMAC with an empty key".
    pub fn connect(addr: &str, token: Option<&str>) -> Result<Session> {
        let token = token.filter(|t| !t.is_empty()).map(str::as_bytes);
        let (conn, _welcome) = Connection::connect(addr, Role::Client, token, CONNECT_TIMEOUT)?;
        Ok(Session { conn })
    }

    pub fn send(&mut self, msg: &ToMaster) -> Result<()> {
        Ok(self.conn.send(msg)?)
    }

    /// The next reply; the master's `Error { message }` becomes `ClientError::Master`.
    pub fn recv(&mut self) -> Result<FromMaster> {
        match self.conn.recv()? {
            FromMaster::Error { message } => Err(ClientError::Master(message)),
            other => Ok(other),
        }
    }

    pub fn request(&mut self, msg: &ToMaster) -> Result<FromMaster> {
        self.send(msg)?;
        self.recv()
    }
}

/// One request, one reply. A seam for code that only needs that (submission), so it can be tested
/// against a fake master without a socket.
pub trait Requester {
    fn request(&mut self, msg: &ToMaster) -> Result<FromMaster>;
}

impl Requester for Session {
    fn request(&mut self, msg: &ToMaster) -> Result<FromMaster> {
        Session::request(self, msg)
    }
}

/// The error for a reply that does not answer the request. Only the variant is named: a stray
/// `Results` chunk printed with `{:?}` could be megabytes of task output.
pub fn unexpected(got: &FromMaster, expected: &'static str) -> ClientError {
    ClientError::Unexpected {
        got: got.name().to_string(),
        expected,
    }
}
