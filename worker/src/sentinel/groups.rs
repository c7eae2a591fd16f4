//! What the worker tells its sentinel, and what the sentinel makes of it: the process groups of the
//! commands that run now. No IO: bytes in, a set out.
//!
//! A record is a tag byte and a process group id (4 bytes, little-endian). Records are written
//! one per `write` from several threads; a pipe write of at most `PIPE_BUF` bytes is never
//! interleaved with another, so records arrive whole and in the order they were written, though a
//! read may end inside one.

use std::collections::BTreeSet;

pub const RECORD_BYTES: usize = 5;

const STARTED: u8 = b'+';
const REAPED: u8 = b'-';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A command was spawned as the leader of this new process group.
    Started(libc::pid_t),
    /// That leader is about to be reaped: after this its id may be handed to someone else, so
    /// the sentinel must forget it. Sent while the leader is still a zombie.
    Reaped(libc::pid_t),
}

impl Record {
    pub fn encode(self) -> [u8; RECORD_BYTES] {
        let (tag, pgid) = match self {
            Record::Started(pgid) => (STARTED, pgid),
            Record::Reaped(pgid) => (REAPED, pgid),
        };
        let [a, b, c, d] = pgid.to_le_bytes();
        [tag, a, b, c, d]
    }

    fn decode(bytes: [u8; RECORD_BYTES]) -> Option<Record> {
        let [tag, a, b, c, d] = bytes;
        let pgid = libc::pid_t::from_le_bytes([a, b, c, d]);
        match tag {
            STARTED => Some(Record::Started(pgid)),
            REAPED => Some(Record::Reaped(pgid)),
            _ => None,
        }
    }
}

/// The groups started and not yet reaped. Its size is bounded by the commands the worker runs at
/// once (each `Started` is followed by its `Reaped` before the id can come back).
#[derive(Debug, Default)]
pub struct Groups {
    live: BTreeSet<libc::pid_t>,
    /// The start of a record cut by the end of a read.
    partial: [u8; RECORD_BYTES],
    partial_len: usize,
    /// Records with an unknown tag (a bug in the worker); counted, not fatal.
    garbled: u64,
}

impl Groups {
    /// Takes the next bytes read from the pipe.
    pub fn handle_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (RECORD_BYTES - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take;
            bytes = &bytes[take..];
            if self.partial_len == RECORD_BYTES {
                self.partial_len = 0;
                match Record::decode(self.partial) {
                    Some(Record::Started(pgid)) => {
                        self.live.insert(pgid);
                    }
                    Some(Record::Reaped(pgid)) => {
                        self.live.remove(&pgid);
                    }
                    None => self.garbled += 1,
                }
            }
        }
    }

    /// The groups whose leader the worker has not reaped, lowest first.
    pub fn live(&self) -> impl Iterator<Item = libc::pid_t> + '_ {
        self.live.iter().copied()
    }

    pub fn garbled(&self) -> u64 {
        self.garbled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(|r| r.encode()).collect()
    }

    #[test]
    fn a_reaped_group_is_forgotten() {
        let mut groups = Groups::default();
        groups.handle_bytes(&stream(&[
            Record::Started(10),
            Record::Started(11),
            Record::Reaped(10),
        ]));
        assert_eq!(groups.live().collect::<Vec<_>>(), [11]);
    }

    #[test]
    fn an_id_reused_after_its_reap_is_live_again() {
        let mut groups = Groups::default();
        groups.handle_bytes(&stream(&[
            Record::Started(7),
            Record::Reaped(7),
            Record::Started(7),
        ]));
        assert_eq!(groups.live().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn records_cut_at_any_byte_are_put_back_together() {
        let bytes = stream(&[
            Record::Started(1),
            Record::Started(70_000),
            Record::Reaped(1),
            Record::Started(i32::MAX),
        ]);
        for chunk in 1..=bytes.len() {
            let mut groups = Groups::default();
            for piece in bytes.chunks(chunk) {
                groups.handle_bytes(piece);
            }
            assert_eq!(
                groups.live().collect::<Vec<_>>(),
                [70_000, i32::MAX],
                "chunk {chunk}"
            );
            assert_eq!(groups.garbled(), 0);
        }
    }

    #[test]
    fn an_unknown_tag_is_counted_and_skipped() {
        let mut bytes = vec![b'?', 1, 0, 0, 0];
        bytes.extend(Record::Started(5).encode());
        let mut groups = Groups::default();
        groups.handle_bytes(&bytes);
        assert_eq!(groups.garbled(), 1);
        assert_eq!(groups.live().collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn a_reap_of_an_unknown_group_changes_nothing() {
        let mut groups = Groups::default();
        groups.handle_bytes(&stream(&[Record::Reaped(3), Record::Started(4)]));
        assert_eq!(groups.live().collect::<Vec<_>>(), [4]);
    }
}
