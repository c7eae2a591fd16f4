//! A running command's output on its way to the master: the bytes its pipe readers read and the
//! session's loop has not yet taken.
//!
//! IMPORTANT: bounded, and the reader thread is what waits. A reader that finds the buffer full
//! blocks until the loop takes some, so the command then blocks on its full pipe (as it would
//! under `| less`), while the loop never waits for anything here: it takes what is there, at most
//! its turn's budget, and moves on. A reader wakes the loop once when the buffer stops being
//! empty (not once per read), and the loop comes back by itself while it leaves bytes behind.

use std::mem;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Bytes of one stream that may wait for the loop. Four 64 KiB pipe reads; with the outbox's own
/// bound this keeps a worker's memory for output at a few MiB however fast its tasks print.
pub const OUTPUT_BUFFER_BYTES: usize = 256 << 10;

/// Wakes the session's loop: there is output to take.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

pub struct OutputBuffer {
    inner: Mutex<Inner>,
    /// Signalled when the loop took bytes (or gave the stream up).
    space: Condvar,
    wake: Wake,
}

#[derive(Default)]
struct Inner {
    bytes: Vec<u8>,
    /// The stream offset of `bytes[0]`.
    offset: u64,
    /// The loop was woken and has not emptied the buffer since.
    woken: bool,
    /// Nobody takes any more: the reader drops what it reads, never waits.
    abandoned: bool,
    /// Bytes of the stream that are sent at most (the master keeps no more); past them the
    /// reader only counts, and never waits.
    limit: u64,
    /// Bytes the reader has read, sent or not.
    read: u64,
}

impl OutputBuffer {
    /// `limit`: bytes of the stream sent at most (see `Inner::limit`).
    pub fn new(wake: Wake, limit: u64) -> Self {
        OutputBuffer {
            inner: Mutex::new(Inner {
                limit,
                ..Inner::default()
            }),
            space: Condvar::new(),
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the buffer consistent: a panicking holder cannot break it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reader's side: appends `bytes`, first waiting while the buffer is full.
    pub fn push(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let start = inner.read;
        inner.read += bytes.len() as u64;
        let keep = inner.limit.saturating_sub(start).min(bytes.len() as u64) as usize;
        if keep == 0 {
            return; // past the limit: counted only, and the command runs on at full speed
        }
        let bytes = &bytes[..keep];
        while !inner.abandoned
            && !inner.bytes.is_empty()
            && inner.bytes.len() + bytes.len() > OUTPUT_BUFFER_BYTES
        {
            inner = self
                .space
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if inner.abandoned {
            return;
        }
        inner.bytes.extend_from_slice(bytes);
        let wake = !mem::replace(&mut inner.woken, true);
        drop(inner);
        if wake {
            (self.wake)();
        }
    }

    /// The loop's side: up to `max` bytes and their offset, or `None` when empty. Returns
    /// whether bytes are left behind (the loop must come back for them: no new wake is sent).
    pub fn take(&self, max: usize, out: &mut Vec<(u64, Vec<u8>)>) -> bool {
        let mut inner = self.lock();
        if inner.bytes.is_empty() {
            inner.woken = false;
            return false;
        }
        let offset = inner.offset;
        let bytes = if inner.bytes.len() <= max {
            inner.woken = false;
            mem::take(&mut inner.bytes)
        } else {
            let rest = inner.bytes.split_off(max);
            mem::replace(&mut inner.bytes, rest)
        };
        inner.offset += bytes.len() as u64;
        let left = !inner.bytes.is_empty();
        drop(inner);
        out.push((offset, bytes));
        self.space.notify_all();
        left
    }

    /// Where the stream ended, if the reader read past what was kept (the limit): the master
    /// learns from it how many bytes it did not get. Meaningful once the buffer was emptied.
    pub fn end_past_limit(&self) -> Option<u64> {
        let inner = self.lock();
        (inner.read > inner.offset + inner.bytes.len() as u64).then_some(inner.read)
    }

    /// Nobody will take more: the reader stops waiting and drops what it reads.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        inner.abandoned = true;
        inner.bytes = Vec::new();
        drop(inner);
        self.space.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    fn counting() -> (Arc<AtomicUsize>, Wake) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        (
            wakes,
            Arc::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn wakes_once_until_emptied_and_keeps_offsets() {
        let (wakes, wake) = counting();
        let buf = OutputBuffer::new(wake, u64::MAX);
        buf.push(b"hello ");
        buf.push(b"world");
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        let mut out = Vec::new();
        assert!(buf.take(4, &mut out));
        assert!(!buf.take(100, &mut out));
        assert_eq!(out, vec![(0, b"hell".to_vec()), (4, b"o world".to_vec())]);
        buf.push(b"!");
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        out.clear();
        buf.take(100, &mut out);
        assert_eq!(out, vec![(11, b"!".to_vec())]);
    }

    #[test]
    fn a_full_buffer_blocks_the_reader_until_the_loop_takes() {
        let (_, wake) = counting();
        let buf = Arc::new(OutputBuffer::new(wake, u64::MAX));
        let chunk = vec![7u8; 64 << 10];
        let total = 4 * OUTPUT_BUFFER_BYTES;
        let reader = {
            let buf = buf.clone();
            let chunk = chunk.clone();
            thread::spawn(move || {
                for _ in 0..total / chunk.len() {
                    buf.push(&chunk);
                }
            })
        };
        let mut got = 0;
        let mut out = Vec::new();
        while got < total {
            buf.take(usize::MAX, &mut out);
            for (offset, bytes) in out.drain(..) {
                assert_eq!(offset, got as u64);
                assert!(bytes.len() <= OUTPUT_BUFFER_BYTES);
                got += bytes.len();
            }
            thread::yield_now();
        }
        reader.join().unwrap();
        assert_eq!(got, total);
    }

    #[test]
    fn past_the_limit_bytes_are_counted_not_kept_and_never_block() {
        let (_, wake) = counting();
        let buf = OutputBuffer::new(wake, 10);
        buf.push(b"0123456");
        buf.push(b"789abc");
        for _ in 0..100 {
            buf.push(&[1u8; 64 << 10]); // would block if it were kept
        }
        let mut out = Vec::new();
        buf.take(usize::MAX, &mut out);
        assert_eq!(out, vec![(0, b"0123456789".to_vec())]);
        assert_eq!(buf.end_past_limit(), Some(13 + 100 * (64 << 10)));
    }

    #[test]
    fn an_abandoned_buffer_never_blocks() {
        let (_, wake) = counting();
        let buf = OutputBuffer::new(wake, u64::MAX);
        buf.abandon();
        for _ in 0..100 {
            buf.push(&[1u8; 64 << 10]);
        }
        let mut out = Vec::new();
        assert!(!buf.take(usize::MAX, &mut out));
        assert!(out.is_empty());
    }
}
