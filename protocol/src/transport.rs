//! The byte stream under a blocking connection: plain TCP, or TLS over it ([`crate::tls`]).
//!
//! A connection is split into a reading and a writing half, on two threads in the worker. Over
//! TLS both halves share one rustls session under a lock, held only to decrypt or encrypt, never
//! across a socket call: a writer blocked on a full socket must not stop the reader, or the two
//! ends could each wait for the other to read. Only the writing half writes to the socket, so
//! records leave in the order the session made them; what reading makes for the peer (a key
//! update's answer) leaves with the next write.

use crate::connection::ConnectionError;
use crate::tls::{describe_client_error, ClientConnection, ClientTls};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Most ciphertext read from the socket at once: a little over one TLS record.
const TLS_READ_CHUNK: usize = 17 << 10;

pub struct Transport {
    socket: TcpStream,
    tls: Option<Arc<Tls>>,
}

struct Tls {
    state: Mutex<TlsState>,
    /// The master's address, for errors.
    addr: String,
}

struct TlsState {
    session: ClientConnection,
    /// Ciphertext read from the socket that the session has not taken yet (at most one read).
    unread: Vec<u8>,
}

impl Tls {
    fn lock(&self) -> MutexGuard<'_, TlsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TLS failure as an `io::Error` whose text is the line for a person.
fn tls_error(addr: &str, e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, describe_client_error(addr, e))
}

impl Transport {
    pub fn plain(socket: TcpStream) -> Transport {
        Transport { socket, tls: None }
    }

    /// Runs the TLS handshake with the master at `addr` on `socket` (bound by its read timeout).
    /// `Err(Tls)` for what TLS itself refused (retrying cannot help), `Err(Io)` for the socket.
    pub fn tls(
        socket: TcpStream,
        tls: &ClientTls,
        addr: &str,
    ) -> Result<Transport, ConnectionError> {
        let mut session = tls
            .session(addr)
            .map_err(|e| ConnectionError::Tls(e.to_string()))?;
        let mut s = &socket;
        while session.is_handshaking() {
            if let Err(e) = session.complete_io(&mut s) {
                return Err(match rustls_inner(&e) {
                    Some(inner) => ConnectionError::Tls(describe_client_error(addr, inner)),
                    // The master hung up mid-handshake: a plaintext master that saw a TLS hello.
                    None if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ConnectionError::Tls(format!(
                            "the master at {addr} closed the connection during the TLS \
                             handshake: it does not speak TLS (drop --tls-ca, or start it with \
                             --tls-cert and --tls-key), or see its log"
                        ))
                    }
                    None => ConnectionError::Io(e),
                });
            }
        }
        Ok(Transport {
            socket,
            tls: Some(Arc::new(Tls {
                state: Mutex::new(TlsState {
                    session,
                    unread: Vec::new(),
                }),
                addr: addr.to_string(),
            })),
        })
    }

    /// A second handle on the same stream (and TLS session), for the other half.
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(Transport {
            socket: self.socket.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn shutdown(&self) -> io::Result<()> {
        self.socket.shutdown(Shutdown::Both)
    }

    /// Appends what `plaintext` becomes on the wire to `wire`: itself, or TLS records. For a
    /// writer that does its own socket writes (the worker's outbox).
    pub fn seal(&self, plaintext: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            wire.extend_from_slice(plaintext);
            return Ok(());
        };
        let mut state = tls.lock();
        let session = &mut state.session;
        let mut rest = plaintext;
        while !rest.is_empty() {
            let n = session.writer().write(rest)?;
            rest = &rest[n..];
            while session.wants_write() {
                session.write_tls(wire)?;
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the TLS session took no bytes",
                ));
            }
        }
        while session.wants_write() {
            session.write_tls(wire)?;
        }
        Ok(())
    }

    /// Decrypted bytes into `buf`; 0 at the end of the stream (with or without the peer's
    /// close_notify: a master that crashed ends as one that closed).
    fn read_tls(&self, tls: &Tls, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; TLS_READ_CHUNK];
        loop {
            {
                let mut state = tls.lock();
                let TlsState { session, unread } = &mut *state;
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // No plaintext waits, so the session takes ciphertext.
                if !unread.is_empty() {
                    let took = session.read_tls(&mut &unread[..])?;
                    unread.drain(..took);
                    session
                        .process_new_packets()
                        .map_err(|e| tls_error(&tls.addr, &e))?;
                    continue;
                }
            }
            let n = (&self.socket).read(&mut chunk)?;
            let mut state = tls.lock();
            if n == 0 {
                // Tells the session the stream ended; its reader says how.
                state.session.read_tls(&mut &[][..])?;
                state
                    .session
                    .process_new_packets()
                    .map_err(|e| tls_error(&tls.addr, &e))?;
            } else {
                state.unread.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn rustls_inner(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.socket).read(buf),
            Some(tls) => {
                let tls = tls.clone();
                self.read_tls(&tls, buf)
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return (&self.socket).write(buf);
        }
        let mut wire = Vec::with_capacity(buf.len() + 64);
        self.seal(buf, &mut wire)?;
        (&self.socket).write_all(&wire)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ServerTls;
    use std::net::TcpListener;
    use std::thread;

    /// A TLS master stand-in: echoes every byte back, upper-cased, over its own TLS session.
    fn echo_server(tls: ServerTls) -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = thread::spawn(move || {
            let (sock, _) = listener.accept().expect("accept");
            let session = tls.session().expect("session");
            let mut stream = rustls::StreamOwned::new(session, sock);
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf[..n].make_ascii_uppercase();
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (addr, handle)
    }

    #[test]
    fn split_halves_share_one_session_across_threads() {
        let dir = std::env::temp_dir().join(format!("ballast-transport-{}", std::process::id()));
        let (server, client) = crate::tls::test_pair(&dir);
        let (addr, server_thread) = echo_server(server);

        let socket = TcpStream::connect(&addr).expect("connect");
        // A regression that deadlocks the halves fails here instead of hanging.
        let bound = Some(std::time::Duration::from_secs(20));
        socket.set_read_timeout(bound).expect("timeout");
        socket.set_write_timeout(bound).expect("timeout");
        let mut writer = Transport::tls(socket, &client, &addr).expect("handshake");
        let mut reader = writer.try_clone().expect("clone");
        assert!(reader.is_tls());
        // 200 KiB each way: more than a record, more than the socket buffers, so the writer
        // blocks on the socket while the reader decrypts on the other thread.
        let sent: Vec<u8> = (0..200 << 10).map(|i| b"abcdefgh"[i % 8]).collect();
        let expect = sent.to_ascii_uppercase();
        let reading = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 1000];
            while got.len() < expect.len() {
                let n = reader.read(&mut buf).expect("read");
                assert_ne!(n, 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, expect);
            reader
        });
        for chunk in sent.chunks(3000) {
            writer.write_all(chunk).expect("write");
        }
        let reader = reading.join().expect("reader thread");
        reader.shutdown().expect("shutdown");
        server_thread.join().expect("server thread");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
