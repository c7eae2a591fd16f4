//! The open-file limit. Every connection is a descriptor, and the usual soft limit (1,024) is far
//! below the 10,000 workers one master serves, while the hard limit usually allows them: a process
//! may raise its own soft limit up to the hard one without privileges.

use std::io;

/// Descriptors the master uses besides its connections: stdio, the epoll instance, the stop
/// signal's pipe, two listeners, the journal (database, WAL, shared memory) and the task logs
/// being written. Generous: a shortfall only shows when connections are refused.
pub const RESERVED_FDS: u64 = 64;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the soft limit in force
/// afterwards (the old one if it could not be raised).
// `rlim_t` is u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
pub fn raise_to_hard() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur as u64);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raised.rlim_cur as u64)
}

/// Raises the limit for `connections` and says (a warning) if it stays too low for them.
pub fn ensure_room_for(connections: usize, flag: &str) {
    let wanted = connections as u64 + RESERVED_FDS;
    match raise_to_hard() {
        Ok(limit) if limit >= wanted => {
            log::debug!("open-file limit {limit} (room for {connections} connections)")
        }
        Ok(limit) => log::warn!(
            "the open-file limit is {limit}, below the {wanted} that {connections} connections \
             ({flag}) need: connections past about {} will be refused. Raise the hard limit \
             (ulimit -Hn, LimitNOFILE= in systemd)",
            limit.saturating_sub(RESERVED_FDS)
        ),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}
