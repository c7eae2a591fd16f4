//! Where a finished task's outcome lives once the journal holds it, and the reader the shell
//! hands the core to fetch it back. The core does no IO: it keeps a finished task's tails in RAM
//! only until the shell says the journal committed them (`Core::handle_stored`), then keeps just
//! this 8-byte location, and reads the outcome back through [`OutcomeReader`] when a reply needs
//! it (`results`, `logs`, the HTTP task endpoints).

use crate::tasks::FinalResult;
use protocol::TaskId;
use std::num::NonZeroU64;

/// Bits of [`StoredAt`] for the byte offset inside a `final_batches` blob. A blob is written out
/// once it reaches 4 MiB, so every record starts below 4 MiB (22 bits); 24 leave room.
const OFFSET_BITS: u32 = 24;

/// One record in the journal: the `final_batches` row `seq` and the byte offset of its frame in
/// that row's blob, so a read is one indexed row fetch. Packed into 8 bytes (and `Option` of it
/// too): `seq` keeps 40 bits, enough for a commit a millisecond for 34 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredAt(NonZeroU64);

impl StoredAt {
    /// `None` when `seq` is 0 or either part does not fit (the outcome then stays in RAM).
    pub fn new(seq: u64, offset: u64) -> Option<StoredAt> {
        if seq >= 1 << (64 - OFFSET_BITS) || offset >= 1 << OFFSET_BITS {
            return None;
        }
        NonZeroU64::new(seq << OFFSET_BITS | offset).map(StoredAt)
    }

    /// The `final_batches.seq` of the row.
    pub fn seq(self) -> u64 {
        self.0.get() >> OFFSET_BITS
    }

    /// The byte offset of the record's frame inside the row's blob.
    pub fn offset(self) -> usize {
        (self.0.get() & ((1 << OFFSET_BITS) - 1)) as usize
    }
}

/// Reads outcomes back from where the shell stored them. Called by the core while it builds a
/// reply, one task at a time; an implementation may cache (results pages read one blob's
/// tasks in a row). A record that cannot be read is `None` (the implementation logs why): the
/// reply then shows the task without its tails, exit code or error.
pub trait OutcomeReader: std::fmt::Debug + Send {
    fn read(&self, id: TaskId, at: StoredAt) -> Option<FinalResult>;
}

/// The reader of a core whose shell stores nothing (tests, `--no-journal`): every outcome stays
/// in RAM, so nothing is ever read.
#[derive(Debug, Default)]
pub struct NoReader;

impl OutcomeReader for NoReader {
    fn read(&self, _id: TaskId, _at: StoredAt) -> Option<FinalResult> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_both_parts() {
        let at = StoredAt::new(7, (4 << 20) - 1).expect("fits");
        assert_eq!((at.seq(), at.offset()), (7, (4 << 20) - 1));
        assert_eq!(std::mem::size_of::<Option<StoredAt>>(), 8);
        assert!(StoredAt::new(0, 0).is_none());
        assert!(StoredAt::new(1, 1 << OFFSET_BITS).is_none());
        assert!(StoredAt::new(1 << 40, 0).is_none());
    }
}
