//! One connection's TLS session on the master's side (`serve --tls-cert`), as the mio loop drives
//! it: ciphertext in from the socket, plaintext out to the frame decoder; plaintext in from the
//! connection's write buffer, ciphertext out to the socket. No IO of its own but through the
//! stream it is handed, which is non-blocking.
//!
//! Memory stays bounded: rustls holds at most its buffer limit (64 KiB) of records not yet
//! written; the rest of what waits stays in the connection's plaintext buffer, where the write
//! buffer limit and backpressure already count it.

use protocol::tls::{starts_tls, ServerConnection};
use std::io::{self, Read, Write};
use std::time::Instant;

/// [`TlsConn::read_plain`]'s error for a peer whose first byte is not a TLS record, inside an
/// `io::Error` of kind `InvalidData` (tell it with [`is_plaintext_peer`]).
#[derive(Debug)]
pub struct PlaintextPeer;

impl std::fmt::Display for PlaintextPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plaintext peer on a TLS port")
    }
}

impl std::error::Error for PlaintextPeer {}

/// Whether `e` is [`PlaintextPeer`].
pub fn is_plaintext_peer(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<PlaintextPeer>())
}

/// A socket that can show its next bytes without taking them (mio's `TcpStream`).
pub trait Peek {
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Peek for mio::net::TcpStream {
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        mio::net::TcpStream::peek(self, buf)
    }
}

pub struct TlsConn {
    session: ServerConnection,
    /// The first byte told TLS from a plaintext peer.
    decided: bool,
    /// The handshake finished: logged once.
    established: bool,
    accepted_at: Instant,
}

/// What the first bytes of a connection on a TLS port said.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    Tls,
    /// Not a TLS record: a peer without `--tls-ca`.
    Plaintext,
}

impl TlsConn {
    pub fn new(session: ServerConnection) -> TlsConn {
        TlsConn {
            session,
            decided: false,
            established: false,
            accepted_at: Instant::now(),
        }
    }

    /// Whether the peer has sent anything yet.
    pub fn decided(&self) -> bool {
        self.decided
    }

    /// Takes ciphertext the socket gave and hands the plaintext in it to `plaintext`. Returns
    /// `Received::Ended` once the peer ended the stream (close_notify). A connection's first
    /// bytes decide whether it speaks TLS at all.
    pub fn receive(
        &mut self,
        mut ciphertext: &[u8],
        scratch: &mut [u8],
        mut plaintext: impl FnMut(&[u8]),
    ) -> Result<Received, TlsFailure> {
        if !self.decided {
            if let Some(&first) = ciphertext.first() {
                if !starts_tls(first) {
                    return Ok(Received::Opening(Opening::Plaintext));
                }
                self.decided = true;
            }
        }
        let mut ended = false;
        while !ciphertext.is_empty() {
            let took = self
                .session
                .read_tls(&mut ciphertext)
                .map_err(TlsFailure::Io)?;
            if took == 0 {
                // IMPORTANT: after the peer's close_notify rustls takes nothing more; looping on
                // what followed it in the same read would never end (one peer froze the loop).
                // The plaintext before the alert was drained in the round that took it.
                ended = true;
                break;
            }
            self.session
                .process_new_packets()
                .map_err(TlsFailure::Tls)?;
            // Drain what it decrypted before giving it more (its plaintext buffer is bounded).
            loop {
                match self.session.reader().read(scratch) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => plaintext(&scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(TlsFailure::Io(e)),
                }
            }
        }
        Ok(if ended {
            Received::Ended
        } else {
            Received::More
        })
    }

    /// Plaintext into `buf` the way a non-blocking socket reads: `Ok(0)` at the end,
    /// `WouldBlock` while nothing waits. Takes ciphertext from `socket` as it needs it. For an
    /// HTTP connection, whose parser brings its own buffer; a plaintext peer is
    /// `ErrorKind::InvalidData` carrying [`PlaintextPeer`].
    pub fn read_plain(
        &mut self,
        socket: &mut (impl Read + Peek),
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if !self.decided {
                let mut first = [0u8; 1];
                match socket.peek(&mut first)? {
                    0 => return Ok(0),
                    _ if !starts_tls(first[0]) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, PlaintextPeer))
                    }
                    _ => self.decided = true,
                }
            }
            if self.session.read_tls(socket)? == 0 {
                // The end: the session's reader says whether it was clean.
                self.session
                    .process_new_packets()
                    .map_err(|e| io::Error::other(TlsFailure::Tls(e).to_string()))?;
                return match self.session.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
            self.session
                .process_new_packets()
                .map_err(|e| io::Error::other(TlsFailure::Tls(e).to_string()))?;
        }
    }

    /// Queues the close_notify alert (sent by the next [`TlsConn::flush`]).
    pub fn close(&mut self) {
        if self.decided {
            self.session.send_close_notify();
        }
    }

    /// The handshake finished since the last call: (TLS version, cipher suite, how long it
    /// took), for one log line.
    pub fn newly_established(&mut self) -> Option<(String, String, u128)> {
        if self.established || self.session.is_handshaking() {
            return None;
        }
        self.established = true;
        let version = self
            .session
            .protocol_version()
            .map_or_else(|| "?".into(), |v| format!("{v:?}"));
        let suite = self
            .session
            .negotiated_cipher_suite()
            .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite()));
        Some((version, suite, self.accepted_at.elapsed().as_millis()))
    }

    /// Hands plaintext to the session, up to its buffer limit; returns how many bytes it took.
    /// Before the handshake ends the session keeps them and sends them after.
    pub fn send(&mut self, plaintext: &[u8]) -> io::Result<usize> {
        if !self.decided || plaintext.is_empty() {
            return Ok(0);
        }
        self.session.writer().write(plaintext)
    }

    /// Records waiting for the socket (handshake messages included).
    pub fn wants_write(&self) -> bool {
        self.decided && self.session.wants_write()
    }

    /// Writes records to `socket` until it would block or none are left.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<()> {
        while self.wants_write() {
            match self.session.write_tls(socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What one [`TlsConn::receive`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Plaintext (perhaps none yet): go on.
    More,
    /// The peer closed its side of TLS.
    Ended,
    /// The connection's first bytes decided against TLS.
    Opening(Opening),
}

#[derive(Debug)]
pub enum TlsFailure {
    /// rustls refused what the peer sent (a bad certificate, a garbled record ...).
    Tls(rustls::Error),
    Io(io::Error),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFailure::Tls(rustls::Error::InvalidCertificate(c)) => write!(
                f,
                "TLS: the peer's certificate is not trusted: {}",
                protocol::tls::certificate_problem(c)
            ),
            TlsFailure::Tls(rustls::Error::NoCertificatesPresented) => write!(
                f,
                "TLS: the peer presented no certificate (this master requires one: \
                 --tls-client-ca)"
            ),
            TlsFailure::Tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateUnknown
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA,
            )) => write!(
                f,
                "TLS: the peer does not trust this master's certificate (its --tls-ca must \
                 hold the certificate or its CA)"
            ),
            TlsFailure::Tls(e) => write!(f, "TLS: {e}"),
            TlsFailure::Io(e) => write!(f, "TLS: {}", protocol::Cause(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tls::ClientConnection;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A master's TLS session and a peer's, the handshake done in memory.
    fn established(name: &str) -> (TlsConn, ClientConnection) {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("ballast-tlsconn-{name}-{}", std::process::id()));
        let (server, client) = protocol::tls::test_pair(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let mut conn = TlsConn::new(server.session().expect("session"));
        let mut peer = client.session("localhost:1").expect("session");
        let mut scratch = vec![0u8; 16 << 10];
        for _ in 0..8 {
            let mut wire = Vec::new();
            while peer.wants_write() {
                peer.write_tls(&mut wire).expect("peer out");
            }
            let got = conn.receive(&wire, &mut scratch, |_| {});
            assert_eq!(got.expect("handshake"), Received::More);
            let mut back = Vec::new();
            conn.flush(&mut back).expect("flush");
            peer.read_tls(&mut &back[..]).expect("peer in");
            peer.process_new_packets().expect("peer process");
            if !peer.is_handshaking() && conn.newly_established().is_some() {
                return (conn, peer);
            }
        }
        panic!("no handshake after 8 rounds");
    }

    /// Runs `receive` on `wire` on a thread of its own, so a loop that never ends fails the test
    /// instead of hanging it.
    fn receive_within(mut conn: TlsConn, wire: Vec<u8>) -> (Result<Received, String>, Vec<u8>) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut scratch = vec![0u8; 16 << 10];
            let mut plain = Vec::new();
            let got = conn
                .receive(&wire, &mut scratch, |p| plain.extend_from_slice(p))
                .map_err(|e| e.to_string());
            let _ = tx.send((got, plain));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("receive returned (it spun on the bytes after close_notify)")
    }

    #[test]
    fn bytes_after_close_notify_in_the_same_read_end_the_stream() {
        let (conn, mut peer) = established("after-close");
        peer.writer().write_all(b"last words").expect("write");
        peer.send_close_notify();
        let mut wire = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut wire).expect("peer out");
        }
        // More than rustls reads at once (4 KiB) of anything after the alert, in the same read.
        wire.extend(std::iter::repeat_n(0x17, 20 << 10));
        let (got, plain) = receive_within(conn, wire);
        assert_eq!(got, Ok(Received::Ended));
        assert_eq!(plain, b"last words");
    }

    #[test]
    fn garbage_and_oversized_records_are_errors_not_panics() {
        for (what, record) in [
            ("garbage", vec![0x17, 0x03, 0x03, 0x00, 0x04, 9, 9, 9, 9]),
            ("oversized", vec![0x17, 0x03, 0x03, 0xff, 0xff, 0]),
            ("unknown type", vec![0x63, 0x03, 0x03, 0x00, 0x01, 0]),
        ] {
            let (conn, _peer) = established(what);
            let (got, plain) = receive_within(conn, record);
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("TLS: ")),
                "{what}: {got:?}"
            );
            assert!(plain.is_empty(), "{what}");
        }
    }
}
