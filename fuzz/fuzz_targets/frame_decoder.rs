//! Arbitrary bytes, split at arbitrary points, through `FrameDecoder` as both directions decode
//! them: it must never panic, never allocate beyond its bound, and once it reports an error it
//! must keep reporting one (the stream cannot be resynchronised).
//!
//! Input layout: the first byte picks the read sizes (a seed for the split points), the rest is
//! the stream. Run: `cargo +nightly fuzz run frame_decoder` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{FrameDecoder, FromMaster, ToMaster, MAX_FRAME};

/// Feeds `stream` in reads whose sizes come from `seed`, decoding after each as a peer would.
fn decode_as<T: serde::de::DeserializeOwned>(seed: u8, stream: &[u8], via_spare: bool) {
    let mut dec = FrameDecoder::new();
    let mut at = 0;
    let mut state = seed as u32 | 1;
    let mut broken = false;
    while at < stream.len() {
        // xorshift32: read sizes from 1 to 64 bytes, reproducible from the seed byte.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state % 64) as usize;
        let end = (at + n).min(stream.len());
        let chunk = &stream[at..end];
        if via_spare {
            let spare = dec.spare(64);
            spare[..chunk.len()].copy_from_slice(chunk);
            dec.commit(64, chunk.len());
        } else {
            dec.extend(chunk);
        }
        at = end;
        loop {
            match dec.next_frame::<T>() {
                Ok(Some(_)) => assert!(!broken, "a frame decoded after an error"),
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        // Giving memory back between reads loses nothing.
        if state & 0x100 != 0 {
            dec.shrink();
        }
        // At most one partial frame plus one read is ever buffered.
        assert!(dec.buffered() <= MAX_FRAME + 4 + 64 || broken);
    }
    if broken {
        assert!(dec.next_frame::<T>().is_err(), "errors are sticky");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    decode_as::<ToMaster>(seed, stream, false);
    decode_as::<FromMaster>(seed, stream, true);
});
