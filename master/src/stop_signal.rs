//! SIGINT and SIGTERM as an event of the master's loop: the handler stores the signal and
//! writes one byte to a socket pair whose other end the loop polls, so the loop finishes its
//! turn, commits the journal and says one line about how it stopped (instead of dying mid-turn
//! with nothing in the log).

use mio::net::UnixStream;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the pair, for the handler. -1 until installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received, 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The loop's end of the pair: readable once a stop signal came.
pub struct StopSignal {
    read: UnixStream,
    /// Kept open for the handler (its fd is in `WAKE_FD`).
    _write: UnixStream,
}

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full (non-blocking) pair drops the byte, and
        // one pending byte is enough to wake the loop.
        unsafe { libc::write(fd, std::ptr::addr_of!(byte).cast(), 1) };
    }
}

impl StopSignal {
    /// Installs the handlers for SIGINT and SIGTERM. Call once.
    pub fn install() -> io::Result<StopSignal> {
        let (read, write) = UnixStream::pair()?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is "no flags, empty mask"; the handler only does
            // async-signal-safe work. SA_RESTART keeps blocking calls (SQLite) from failing.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(StopSignal {
            read,
            _write: write,
        })
    }

    /// The source to register for READABLE.
    pub fn source(&mut self) -> &mut UnixStream {
        &mut self.read
    }

    /// Drains the wake-up bytes; the signal's name if one came.
    pub fn take(&mut self) -> Option<&'static str> {
        let mut buf = [0u8; 64];
        // Bounded: the pair holds what the handler wrote, and it is non-blocking.
        for _ in 0..64 {
            match self.read.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        match SIGNAL.swap(0, Ordering::SeqCst) {
            libc::SIGINT => Some("SIGINT"),
            libc::SIGTERM => Some("SIGTERM"),
            _ => None,
        }
    }
}
