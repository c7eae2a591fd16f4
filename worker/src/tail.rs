//! The last N bytes of a stream. A task may print gigabytes; the master only ever sees the tail.

/// Keeps the last `cap` bytes written to it.
///
/// Bytes are appended to a buffer that may grow to `2 * cap` before the oldest half is dropped, so
/// each byte is copied at most twice (amortised O(1)) and memory stays below `2 * cap`.
#[derive(Debug)]
pub struct TailBuffer {
    buf: Vec<u8>,
    cap: usize,
    /// Whether bytes were ever dropped, so the tail may start inside a UTF-8 character.
    truncated: bool,
}

impl TailBuffer {
    pub fn new(cap: usize) -> Self {
        TailBuffer {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.cap {
            self.truncated |= !self.buf.is_empty() || bytes.len() > self.cap;
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.cap {
            let excess = self.buf.len() - self.cap;
            self.buf.drain(..excess);
            self.truncated = true;
        }
    }

    /// The kept bytes, oldest first.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.buf.len().saturating_sub(self.cap)..]
    }

    /// The tail as text, at most `cap` bytes. Invalid UTF-8 becomes U+FFFD (3 bytes for one, so
    /// the text is cut again after the conversion, keeping its end); when the start was cut off,
    /// the partial character it may begin with is skipped rather than shown as garbage.
    pub fn to_string_lossy(&self) -> String {
        let mut bytes = self.bytes();
        if self.truncated || self.buf.len() > self.cap {
            // A UTF-8 character is at most 4 bytes, so at most 3 continuation bytes lead.
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|&&b| b & 0xC0 == 0x80)
                .count();
            bytes = &bytes[skip..];
        }
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        protocol::limits::keep_tail(&mut text, self.cap);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut t = TailBuffer::new(16);
        t.write(b"hello ");
        t.write(b"world");
        assert_eq!(t.bytes(), b"hello world");
        assert_eq!(t.to_string_lossy(), "hello world");
    }

    #[test]
    fn keeps_the_last_bytes_across_many_writes() {
        let cap = 100;
        let mut t = TailBuffer::new(cap);
        let mut all = Vec::new();
        for i in 0..10_000u32 {
            let chunk = format!("{i},");
            t.write(chunk.as_bytes());
            all.extend_from_slice(chunk.as_bytes());
            let want = &all[all.len().saturating_sub(cap)..];
            assert_eq!(t.bytes(), want, "after write {i}");
            assert!(t.buf.len() <= 2 * cap, "memory stays bounded");
        }
    }

    #[test]
    fn one_write_larger_than_cap() {
        let mut t = TailBuffer::new(4);
        t.write(b"ab");
        t.write(b"0123456789");
        assert_eq!(t.bytes(), b"6789");
        t.write(b"x");
        assert_eq!(t.bytes(), b"789x");
    }

    #[test]
    fn exact_cap_write_keeps_everything() {
        let mut t = TailBuffer::new(4);
        t.write(b"abcd");
        assert_eq!(t.bytes(), b"abcd");
        assert!(!t.truncated);
    }

    #[test]
    fn cut_multibyte_character_is_skipped() {
        let mut t = TailBuffer::new(4);
        // "xé€" is 78 C3 A9 E2 82 AC; its last 4 bytes start inside "é".
        t.write("xé€".as_bytes());
        assert_eq!(t.to_string_lossy(), "€");
    }

    #[test]
    fn replaced_bytes_never_take_the_tail_above_its_cap() {
        // Issue 14: 64 KiB of invalid bytes became 192 KiB of U+FFFD.
        let cap = 64 << 10;
        let mut t = TailBuffer::new(cap);
        t.write(&vec![0xff; 3 * cap]);
        t.write(b"end");
        let text = t.to_string_lossy();
        assert!(text.len() <= cap, "{} bytes", text.len());
        assert!(text.ends_with("\u{fffd}end"));
        let mut short = TailBuffer::new(4);
        short.write(&[0xff, 0xfe]);
        assert_eq!(short.to_string_lossy(), "\u{fffd}");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut t = TailBuffer::new(16);
        t.write(&[b'a', 0xff, b'b']);
        assert_eq!(t.to_string_lossy(), "a\u{fffd}b");
    }
}
