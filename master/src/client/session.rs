//! One client connection to the master: the handshake, and replies sorted into "what we asked for",
//! "the master refused" and "something else".

use super::error::{ClientError, Result};
use protocol::tls::ClientTls;
use protocol::{Connection, ConnectionError, FromMaster, ToMaster};
use std::time::Duration;

/// How long to wait for the TCP connect. A refused port fails at once; this bounds a silent one
/// (a firewall dropping packets) so the user gets the one-line "cannot reach" error quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Session {
    /// `None` until the first request: the connection opens with it (see [`Session::send`]).
    conn: Option<Connection>,
    addr: String,
    /// Empty counts as none.
    token: Option<String>,
    /// TLS to the master, with `--tls-ca`.
    tls: Option<ClientTls>,
    /// How long one read may wait for the master (`--reply-timeout`).
    reply_timeout: Duration,
}

impl Session {
    /// A session with the master at `addr`, connected by its first request. An empty token
    /// counts as no token, so `BALLAST_TOKEN=` in a script means "none" rather than "HMAC with
    /// an empty key". Every later read waits at most `reply_timeout` (a master that stopped
    /// answering is an error that says so, not a hang).
    pub fn new(
        addr: &str,
        token: Option<&str>,
        tls: Option<ClientTls>,
        reply_timeout: Duration,
    ) -> Session {
        Session {
            conn: None,
            addr: addr.to_string(),
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            tls,
            reply_timeout,
        }
    }

    /// Connects now, with no request (the first `send` connects otherwise).
    #[cfg(test)]
    pub fn connect(addr: &str, token: Option<&str>, reply_timeout: Duration) -> Result<Session> {
        let mut session = Session::new(addr, token, None, reply_timeout);
        let token = session.token.as_deref().map(str::as_bytes);
        let (conn, _welcome) =
            Connection::connect(addr, protocol::Role::Client, token, None, CONNECT_TIMEOUT)?;
        session.opened(conn)?;
        Ok(session)
    }

    fn opened(&mut self, conn: Connection) -> Result<()> {
        conn.reader
            .set_read_timeout(Some(self.reply_timeout))
            .map_err(ConnectionError::Io)?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends `msg`; the first one opens the connection and travels with the handshake
    /// (`Connection::connect_client`), so a one-request command waits on the master once.
    pub fn send(&mut self, msg: &ToMaster) -> Result<()> {
        self.send_all(&[msg])
    }

    /// Sends `msgs` in one write (with the handshake's, if they open the connection).
    pub fn send_all(&mut self, msgs: &[&ToMaster]) -> Result<()> {
        match &mut self.conn {
            Some(conn) => {
                for msg in msgs {
                    conn.writer.queue(msg)?;
                }
                Ok(conn.writer.flush()?)
            }
            None => {
                let token = self.token.as_deref().map(str::as_bytes);
                let (conn, _welcome) = Connection::connect_client(
                    &self.addr,
                    token,
                    self.tls.as_ref(),
                    CONNECT_TIMEOUT,
                    msgs,
                )?;
                self.opened(conn)
            }
        }
    }

    /// The next reply, which `waiting_for` names in a timeout's error ("the reply to Results");
    /// the master's `Error { message }` becomes `ClientError::Master`.
    pub fn recv(&mut self, waiting_for: &'static str) -> Result<FromMaster> {
        let Some(conn) = &mut self.conn else {
            // Nothing was asked yet, so nothing can answer.
            return Err(ClientError::Unexpected {
                got: "nothing (no request sent)".into(),
                expected: waiting_for,
            });
        };
        match conn.recv() {
            Ok(FromMaster::Error { message }) => Err(ClientError::Master(message)),
            Ok(other) => Ok(other),
            // A read timeout leaves a partial frame in the decoder: a later `recv` goes on.
            Err(ConnectionError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::NoReply {
                    waiting_for,
                    after: self.reply_timeout,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn request(&mut self, msg: &ToMaster) -> Result<FromMaster> {
        self.request_with(msg, &[])
    }

    /// `msg`'s reply, with `then` sent in the same write right behind it (their replies
    /// follow, for the caller to read).
    pub fn request_with(&mut self, msg: &ToMaster, then: &[&ToMaster]) -> Result<FromMaster> {
        let mut all = Vec::with_capacity(1 + then.len());
        all.push(msg);
        all.extend_from_slice(then);
        self.send_all(&all)?;
        self.recv(reply_to(msg))
    }
}

/// What a reply to `msg` is called in a timeout's error.
pub fn reply_to(msg: &ToMaster) -> &'static str {
    match msg {
        ToMaster::Submit { .. } => "the reply to Submit",
        ToMaster::Status => "the reply to Status",
        ToMaster::Results { .. } => "the reply to Results",
        ToMaster::Wait { .. } | ToMaster::WaitSubmitted { .. } => "the reply to Wait",
        ToMaster::Cancel { .. } => "the reply to Cancel",
        ToMaster::Forget { .. } => "the reply to Forget",
        _ => "a reply",
    }
}

/// One request, one reply. A seam for code that only needs that (submission), so it can be tested
/// against a fake master without a socket.
pub trait Requester {
    /// `msg`'s reply; `then` goes in the same write, right behind `msg`.
    fn request_with(&mut self, msg: &ToMaster, then: &[&ToMaster]) -> Result<FromMaster>;

    fn request(&mut self, msg: &ToMaster) -> Result<FromMaster> {
        self.request_with(msg, &[])
    }
}

impl Requester for Session {
    fn request_with(&mut self, msg: &ToMaster, then: &[&ToMaster]) -> Result<FromMaster> {
        Session::request_with(self, msg, then)
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
