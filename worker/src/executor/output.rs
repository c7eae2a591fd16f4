//! A running command's output on its way to the master: the bytes the executor's IO thread read
//! from its pipes and the session's loop has not yet taken.
//!
//! IMPORTANT: bounded, and the pipe is what waits. The IO thread (see `reactor`) reads a pipe only
//! while [`OutputBuffer::room`] says there is room; a full buffer leaves the pipe unread until the
//! loop takes some, so the command then blocks on its full pipe (as it would under `| less`). Nobody
//! ever blocks here: the loop takes what is there, at most its turn's budget, and moves on, and a
//! take that frees room the IO thread was waiting for wakes it (`space`). A push wakes the loop once
//! when the buffer stops being empty (not once per read), and the loop comes back by itself while
//! it leaves bytes behind.

use std::mem;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Bytes of one stream that may wait for the loop. Four 64 KiB pipe reads; with the outbox's own
/// bound this keeps a worker's memory for output at a few MiB however fast its tasks print.
pub const OUTPUT_BUFFER_BYTES: usize = 256 << 10;

/// Wakes the session's loop: there is output to take.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

pub struct OutputBuffer {
    inner: Mutex<Inner>,
    /// Wakes the IO thread when the loop took bytes (or gave the stream up) after it found the
    /// buffer full.
    space: Wake,
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
    /// The IO thread found no room and waits for `space`.
    full: bool,
    /// Bytes of the stream that are sent at most (the master keeps no more); past them the
    /// reader only counts, and never waits.
    limit: u64,
    /// Bytes the reader has read, sent or not.
    read: u64,
}

impl OutputBuffer {
    /// `wake` wakes the session's loop (there is output to take), `space` the IO thread (there
    /// is room again); `limit`: bytes of the stream sent at most (see `Inner::limit`).
    pub fn new(wake: Wake, space: Wake, limit: u64) -> Self {
        OutputBuffer {
            inner: Mutex::new(Inner {
                limit,
                ..Inner::default()
            }),
            space,
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the buffer consistent: a panicking holder cannot break it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reader's side: how many bytes (at most `max`) it may read now and [`push`]. Zero: the
    /// buffer is full, and `space` is called once the loop has taken some (or given the stream
    /// up). Past the limit, or abandoned, there is always room: those bytes are only counted.
    ///
    /// [`push`]: OutputBuffer::push
    pub fn room(&self, max: usize) -> usize {
        let mut inner = self.lock();
        if inner.abandoned || inner.read >= inner.limit || inner.bytes.is_empty() {
            return max;
        }
        let room = OUTPUT_BUFFER_BYTES
            .saturating_sub(inner.bytes.len())
            .min(max);
        if room == 0 {
            inner.full = true;
        }
        room
    }

    /// The reader's side: appends `bytes`, never waiting; `bytes` is at most what
    /// [`OutputBuffer::room`] allowed.
    pub fn push(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let start = inner.read;
        inner.read += bytes.len() as u64;
        let keep = inner.limit.saturating_sub(start).min(bytes.len() as u64) as usize;
        if keep == 0 || inner.abandoned {
            return; // past the limit (counted only), or nobody takes it
        }
        debug_assert!(inner.bytes.is_empty() || inner.bytes.len() + keep <= OUTPUT_BUFFER_BYTES);
        inner.bytes.extend_from_slice(&bytes[..keep]);
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
        let full = mem::take(&mut inner.full);
        drop(inner);
        out.push((offset, bytes));
        if full {
            (self.space)();
        }
        left
    }

    /// Where the stream ended, if the reader read past what was kept (the limit): the master
    /// learns from it how many bytes it did not get. Meaningful once the buffer was emptied.
    pub fn end_past_limit(&self) -> Option<u64> {
        let inner = self.lock();
        (inner.read > inner.offset + inner.bytes.len() as u64).then_some(inner.read)
    }

    /// Bytes waiting for the loop.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Nobody will take more: the reader stops waiting and drops what it reads.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        inner.abandoned = true;
        inner.bytes = Vec::new();
        let full = mem::take(&mut inner.full);
        drop(inner);
        if full {
            (self.space)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    fn nothing() -> Wake {
        Arc::new(|| {})
    }

    #[test]
    fn wakes_once_until_emptied_and_keeps_offsets() {
        let (wakes, wake) = counting();
        let buf = OutputBuffer::new(wake, nothing(), u64::MAX);
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
    fn a_full_buffer_has_no_room_until_the_loop_takes() {
        let (_, wake) = counting();
        let (spaces, space) = counting();
        let buf = OutputBuffer::new(wake, space, u64::MAX);
        let chunk = vec![7u8; 64 << 10];
        let mut pushed = 0;
        while buf.room(chunk.len()) > 0 {
            let n = buf.room(chunk.len());
            buf.push(&chunk[..n]);
            pushed += n;
        }
        assert_eq!(pushed, OUTPUT_BUFFER_BYTES);
        assert_eq!(spaces.load(Ordering::SeqCst), 0);
        let mut out = Vec::new();
        assert!(buf.take(1000, &mut out));
        assert_eq!(
            spaces.load(Ordering::SeqCst),
            1,
            "the reader is told of room once"
        );
        assert_eq!(buf.room(chunk.len()), 1000);
        assert!(!buf.take(usize::MAX, &mut out));
        assert_eq!(spaces.load(Ordering::SeqCst), 1, "nobody waited this time");
        let got: usize = out.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(got, pushed);
        assert_eq!(out[1].0, 1000);
    }

    #[test]
    fn abandoning_a_full_buffer_wakes_the_reader_and_leaves_room() {
        let (_, wake) = counting();
        let (spaces, space) = counting();
        let buf = OutputBuffer::new(wake, space, u64::MAX);
        buf.push(&vec![1u8; OUTPUT_BUFFER_BYTES]);
        assert_eq!(buf.room(10), 0);
        buf.abandon();
        assert_eq!(spaces.load(Ordering::SeqCst), 1);
        assert_eq!(buf.room(10), 10);
    }

    #[test]
    fn past_the_limit_bytes_are_counted_not_kept_and_never_block() {
        let (_, wake) = counting();
        let buf = OutputBuffer::new(wake, nothing(), 10);
        buf.push(b"0123456");
        buf.push(b"789abc");
        for _ in 0..100 {
            assert_eq!(buf.room(64 << 10), 64 << 10, "never full past the limit");
            buf.push(&[1u8; 64 << 10]);
        }
        let mut out = Vec::new();
        buf.take(usize::MAX, &mut out);
        assert_eq!(out, vec![(0, b"0123456789".to_vec())]);
        assert_eq!(buf.end_past_limit(), Some(13 + 100 * (64 << 10)));
    }

    #[test]
    fn an_abandoned_buffer_never_blocks() {
        let (_, wake) = counting();
        let buf = OutputBuffer::new(wake, nothing(), u64::MAX);
        buf.abandon();
        for _ in 0..100 {
            assert_eq!(buf.room(64 << 10), 64 << 10);
            buf.push(&[1u8; 64 << 10]);
        }
        let mut out = Vec::new();
        assert!(!buf.take(usize::MAX, &mut out));
        assert!(out.is_empty());
    }
}
