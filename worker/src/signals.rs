//! SIGINT and SIGTERM as ordinary events.
//!
//! The handler only writes the signal number to a pipe (`write` is async-signal-safe); a thread
//! blocked on the other end turns each byte into a call of the notify function, so the main loop
//! learns of a signal through the same channel as everything else, at once, without polling.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the self-pipe, read by the handler. -1 until installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The signals that stop the worker.
pub const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Installs handlers for [`STOP_SIGNALS`] and a thread that calls `notify(signal)` for each one.
/// Call once, before any child process is spawned.
pub fn install(notify: impl Fn(libc::c_int) + Send + 'static) -> io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    for fd in fds {
        // Children must not inherit the pipe. A full pipe must not block the handler: one pending
        // byte is enough to wake the thread.
        let extra = if fd == write_fd { libc::O_NONBLOCK } else { 0 };
        // SAFETY: plain fcntl calls on descriptors we own.
        unsafe {
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | extra) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: `read_fd` is a fresh descriptor owned by nothing else.
    let mut reader = unsafe { File::from_raw_fd(read_fd) };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            loop {
                match reader.read(&mut byte) {
                    Ok(1) => notify(libc::c_int::from(byte[0])),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The write end lives as long as the process, so this does not happen.
                    _ => return,
                }
            }
        })?;
    WAKE_FD.store(write_fd, Ordering::SeqCst);
    for signal in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // does async-signal-safe work.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // Signal numbers fit in a byte on every platform we build for.
    let byte = signal as u8;
    // SAFETY: write() is async-signal-safe; errno is saved and restored because the interrupted
    // code may be between a failing syscall and reading its errno.
    unsafe {
        let errno = errno_location();
        let saved = *errno;
        libc::write(fd, (&byte as *const u8).cast(), 1);
        *errno = saved;
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__errno_location()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno_location() -> *mut libc::c_int {
    libc::__error()
}

/// Name for logs.
pub fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
