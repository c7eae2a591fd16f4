//! Length-prefixed frames: a 4-byte big-endian length, then one bincode message (serde, standard
//! config). This is the only module that names bincode, so the encoding can be swapped here alone.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// Largest frame body accepted or produced. Checked against the declared length before any buffer
/// grows, so a peer cannot make us allocate more than this per connection.
pub const MAX_FRAME: usize = 16 << 20;

const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    // The limit also stops a length field *inside* a frame from claiming a huge allocation.
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

#[derive(Debug, Error)]
pub enum FrameError {
    /// The declared length is above `MAX_FRAME` (often: not our protocol at all, e.g. HTTP).
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    /// The frame body is not a valid message.
    #[error("undecodable frame of {len} bytes: {reason}")]
    Malformed { len: usize, reason: String },
    /// A message could not be encoded (only possible for messages above `MAX_FRAME`).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let body = match bincode::serde::encode_into_std_write(msg, out, config()) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(FrameError::Encode(e.to_string()));
        }
    };
    if body > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len: body,
            max: MAX_FRAME,
        });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(())
}

/// Size of `msg` as a frame body, without keeping the bytes.
pub fn encoded_len<T: Serialize>(msg: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    let _ = bincode::serde::encode_into_std_write(msg, &mut c, bincode::config::standard());
    c.0
}

/// Capacity [`FrameDecoder::shrink`] lets a decoder keep; a larger buffer (grown for a large frame,
/// or for one large read) is given back. Small because a master holds one decoder per connection
/// (10,000 workers): a heartbeat or a worker's batch of results fits.
pub const IDLE_CAPACITY: usize = 4 << 10;

/// Reassembles frames from a byte stream split in any way. Sans-IO: the caller reads from its socket
/// and hands the bytes over with [`FrameDecoder::extend`] (or reads straight into [`FrameDecoder::spare`]).
///
/// Memory is bounded and follows what is in flight: the buffer holds at most one partial frame
/// (≤ `MAX_FRAME`) plus one read, and grows to a frame's whole size once its header has arrived.
/// [`FrameDecoder::shrink`] gives back what the frame in flight does not need (a caller with
/// many idle streams calls it when a read turn is over; one that reads with `spare` keeps its
/// buffer, which is zeroed only where it grows). Bytes are never zeroed by `extend`: `buf[..]`
/// is all initialised and the data lives in `buf[start..end]`.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// One past the last received byte.
    end: usize,
    /// Header and body of the frame whose header has arrived but not all of its body; 0 when none.
    in_flight: usize,
    /// Sticky: once the stream is broken it stays broken.
    failed: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream (copied, not zeroed first).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(bytes);
        self.end = self.buf.len();
    }

    /// A writable region of exactly `len` bytes after the data; call [`FrameDecoder::commit`] with
    /// how many were filled. Saves a copy when reading from a socket.
    pub fn spare(&mut self, len: usize) -> &mut [u8] {
        self.compact();
        if self.buf.len() < self.end + len {
            self.buf.resize(self.end + len, 0);
        }
        &mut self.buf[self.end..self.end + len]
    }

    /// Keeps `n` bytes of the region returned by the last [`FrameDecoder::spare`].
    pub fn commit(&mut self, spare_len: usize, n: usize) {
        debug_assert!(n <= spare_len && self.end + n <= self.buf.len());
        self.end += n.min(self.buf.len() - self.end);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes of memory the decoder holds (for tests and accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed. After an error every call
    /// returns an error: the stream cannot be resynchronised.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.failed {
            return Err(FrameError::Malformed {
                len: 0,
                reason: "stream already broken".into(),
            });
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME {
            self.failed = true;
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        if avail.len() < HEADER_LEN + len {
            self.in_flight = HEADER_LEN + len;
            // Reserve once for the whole frame instead of growing read by read.
            let need = self.end - self.start + HEADER_LEN + len;
            if self.buf.capacity() < need {
                self.buf.reserve(need - self.buf.len());
            }
            return Ok(None);
        }
        self.in_flight = 0;
        let body = &avail[HEADER_LEN..HEADER_LEN + len];
        let result = bincode::serde::decode_from_slice::<T, _>(body, config());
        self.start += HEADER_LEN + len;
        match result {
            Ok((msg, used)) if used == len => Ok(Some(msg)),
            Ok((_, used)) => {
                self.failed = true;
                Err(FrameError::Malformed {
                    len,
                    reason: format!("{} trailing bytes", len - used),
                })
            }
            Err(e) => {
                self.failed = true;
                Err(FrameError::Malformed {
                    len,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Moves unconsumed bytes to the front so the buffer does not grow with the stream's length.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Gives back memory beyond what the bytes held and the frame in flight need, keeping at most
    /// [`IDLE_CAPACITY`] beyond that; an empty decoder holding more keeps nothing. So an idle
    /// stream costs at most `IDLE_CAPACITY` whatever it once sent. A buffer within twice the
    /// frame in flight is kept: a large frame arriving over many reads is not reallocated.
    pub fn shrink(&mut self) {
        let need = self.in_flight.max(self.end - self.start);
        let keep = need.max(IDLE_CAPACITY);
        if self.buf.capacity() <= keep || (need > IDLE_CAPACITY && self.buf.capacity() <= 2 * need)
        {
            return;
        }
        self.compact();
        self.buf.truncate(self.end);
        if self.end == 0 {
            // Nothing left: the next read allocates what it brings.
            self.buf = Vec::new();
        } else {
            self.buf.shrink_to(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn sample() -> Vec<ToMaster> {
        vec![
            ToMaster::Hello {
                version: 1,
                role: Role::Worker(WorkerInfo {
                    allocation: None,
                    name: "a".into(),
                    host: "h".into(),
                    cpus: 4,
                    slots: 2,
                    pid: 7,
                    group: Some("g".into()),
                    prefetch: 3,
                    prefetch_adaptive: false,
                    heartbeat_interval_ms: 0,
                }),
                auth: vec![1, 2, 3],
                nonce: vec![4; 32],
            },
            ToMaster::Load(LoadReport {
                cpu_percent: 12.5,
                load_avg_1m: 0.3,
                mem_used: 1,
                mem_total: 2,
                running: 1,
            }),
            ToMaster::Submit {
                specs: vec![TaskSpec::new(TaskKind::Command {
                    argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: vec![("A".into(), "B".into())],
                    cwd: None,
                })],
                count: 3,
                name: Some("build".into()),
            },
            ToMaster::Jobs {
                ids: vec![JobId(2)],
            },
            ToMaster::Finished(vec![Completion {
                task: TaskId(9),
                attempt: Attempt(2),
                incarnation: Incarnation(1),
                outcome: TaskOutcome::Exited {
                    code: 7,
                    stdout_tail: "out".into(),
                    stderr_tail: String::new(),
                },
                run_ms: 5,
            }]),
            ToMaster::Status,
            ToMaster::Retracted(vec![TaskRef {
                task: TaskId(4),
                attempt: Attempt(1),
                incarnation: Incarnation(1),
            }]),
        ]
    }

    fn encode_all(msgs: &[ToMaster]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            encode_frame(m, &mut out).expect("encodes");
        }
        out
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<ToMaster> {
        let mut got = Vec::new();
        while let Some(m) = dec.next_frame::<ToMaster>().expect("valid stream") {
            got.push(m);
        }
        got
    }

    #[test]
    fn round_trip_whole_stream() {
        let msgs = sample();
        let mut dec = FrameDecoder::new();
        dec.extend(&encode_all(&msgs));
        assert_eq!(decode_all(&mut dec), msgs);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn round_trip_one_byte_at_a_time() {
        let msgs = sample();
        let bytes = encode_all(&msgs);
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in bytes {
            dec.extend(&[b]);
            got.extend(decode_all(&mut dec));
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn from_master_round_trip_shares_spec() {
        let spec = Arc::new(TaskSpec::new(TaskKind::Sleep { ms: 5 }));
        let msg = FromMaster::Assign(vec![Assignment {
            task: TaskId(1),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
            spec: spec.clone(),
        }]);
        let mut out = Vec::new();
        encode_frame(&msg, &mut out).expect("encodes");
        assert_eq!(out.len(), 4 + encoded_len(&msg));
        let mut dec = FrameDecoder::new();
        dec.extend(&out);
        assert_eq!(dec.next_frame::<FromMaster>().expect("ok"), Some(msg));
    }

    #[test]
    fn spare_and_commit_read_path() {
        let bytes = encode_all(&sample());
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(7) {
            let spare = dec.spare(64);
            spare[..chunk.len()].copy_from_slice(chunk);
            dec.commit(64, chunk.len());
            got.extend(decode_all(&mut dec));
        }
        assert_eq!(got, sample());
    }

    #[test]
    fn memory_grows_for_a_large_frame_and_shrinks_after() {
        let large = ToMaster::Submit {
            specs: vec![TaskSpec::new(TaskKind::Command {
                argv: vec!["x".repeat(300_000)],
                env: Vec::new(),
                cwd: None,
            })],
            count: 1,
            name: None,
        };
        let mut bytes = Vec::new();
        encode_frame(&large, &mut bytes).expect("encodes");
        let frame_len = bytes.len();
        encode_frame(&ToMaster::Status, &mut bytes).expect("encodes");
        let mut dec = FrameDecoder::new();
        dec.extend(&bytes[..1000]);
        assert_eq!(dec.next_frame::<ToMaster>().expect("valid"), None);
        let reserved = dec.capacity();
        assert!(reserved >= frame_len, "the whole frame is reserved at once");
        dec.shrink();
        assert_eq!(
            dec.capacity(),
            reserved,
            "kept while the frame is in flight"
        );
        for chunk in bytes[1000..].chunks(64 << 10) {
            dec.extend(chunk);
            dec.shrink();
            assert_eq!(dec.capacity(), reserved, "no reallocation read by read");
        }
        assert_eq!(decode_all(&mut dec), vec![large, ToMaster::Status]);
        dec.shrink();
        assert_eq!(dec.capacity(), 0, "nothing held once decoded");

        // Small frames keep a small buffer; one large read of them is given back, all but the
        // start of a frame that has not fully arrived.
        let (mut small, mut count) = (Vec::new(), 0);
        while small.len() < 100 << 10 {
            encode_frame(&ToMaster::Status, &mut small).expect("encodes");
            count += 1;
        }
        let whole = small.len();
        encode_frame(
            &ToMaster::Jobs {
                ids: vec![JobId(1)],
            },
            &mut small,
        )
        .expect("encodes");
        dec.extend(&small[..whole + 3]);
        assert_eq!(decode_all(&mut dec).len(), count);
        assert!(dec.capacity() > 100 << 10);
        dec.shrink();
        assert!(dec.capacity() <= IDLE_CAPACITY, "{}", dec.capacity());
        assert_eq!(dec.buffered(), 3);
        dec.extend(&small[whole + 3..]);
        assert_eq!(
            decode_all(&mut dec),
            vec![ToMaster::Jobs {
                ids: vec![JobId(1)]
            }]
        );
        dec.shrink();
        assert!(dec.capacity() <= IDLE_CAPACITY);
    }

    #[test]
    fn oversize_is_rejected_before_allocating() {
        let mut dec = FrameDecoder::new();
        dec.extend(&((MAX_FRAME as u32) + 1).to_be_bytes());
        match dec.next_frame::<ToMaster>() {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, MAX_FRAME + 1);
                assert_eq!(max, MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(dec.buf.capacity() < 1024, "no buffer for the declared size");
        // Sticky.
        assert!(dec.next_frame::<ToMaster>().is_err());
    }

    #[test]
    fn http_request_is_rejected() {
        let mut dec = FrameDecoder::new();
        dec.extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(
            dec.next_frame::<ToMaster>(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut dec = FrameDecoder::new();
        dec.extend(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_frame::<ToMaster>(),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut out = Vec::new();
        encode_frame(&ToMaster::Status, &mut out).expect("encodes");
        // Declare one more body byte than the message uses.
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) + 1;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.push(0);
        let mut dec = FrameDecoder::new();
        dec.extend(&out);
        assert!(matches!(
            dec.next_frame::<ToMaster>(),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let mut out = Vec::new();
        encode_frame(&ToMaster::Status, &mut out).expect("encodes");
        let mut dec = FrameDecoder::new();
        dec.extend(&out[..out.len() - 1]);
        assert_eq!(dec.next_frame::<ToMaster>().expect("not an error"), None);
    }

    #[test]
    fn huge_inner_length_does_not_allocate() {
        // A Vec<u8> claiming 2^60 elements inside a small frame: must fail, not try to allocate.
        let mut body = vec![0u8]; // ToMaster::Hello variant index
        body.push(1); // version
        body.push(1); // Role::Client
        body.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0x10]); // varint u64 length 2^60
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut dec = FrameDecoder::new();
        dec.extend(&frame);
        assert!(dec.next_frame::<ToMaster>().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), split in 1usize..64) {
            let mut dec = FrameDecoder::new();
            for chunk in data.chunks(split) {
                dec.extend(chunk);
                while let Ok(Some(_)) = dec.next_frame::<ToMaster>() {}
            }
        }

        #[test]
        fn mutated_stream_never_panics(flip in 0usize..400, byte in any::<u8>(), split in 1usize..32) {
            let mut bytes = encode_all(&sample());
            let i = flip % bytes.len();
            bytes[i] = byte;
            let mut dec = FrameDecoder::new();
            for chunk in bytes.chunks(split) {
                dec.extend(chunk);
                while let Ok(Some(_)) = dec.next_frame::<ToMaster>() {}
            }
        }

        #[test]
        fn any_split_round_trips(cuts in proptest::collection::vec(1usize..50, 1..40)) {
            let msgs = sample();
            let bytes = encode_all(&msgs);
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= bytes.len() { break; }
                let end = (at + c).min(bytes.len());
                dec.extend(&bytes[at..end]);
                at = end;
                got.extend(decode_all(&mut dec));
                // Memory given back between reads loses nothing.
                if c % 2 == 0 {
                    dec.shrink();
                }
            }
            prop_assert_eq!(got, msgs);
        }
    }
}
