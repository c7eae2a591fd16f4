//! The journal's high-water marks: a tiny file beside the database (`ballast.db-marks`) that says
//! how far the journal had got at its last commit, checked at `open` against what SQLite gives.
//!
//! Why a separate file: SQLite replays the WAL up to the first frame whose checksum fails and
//! silently ignores the rest, so a WAL damaged in the middle opens as a valid, older database. Only
//! something outside the database can tell that acknowledged work went missing. The marks are
//! monotonic counters that every commit only raises: the first task id never committed, the last
//! `final_batches` row, the last incarnation. A journal that opens below them lost work.
//!
//! Layout: two 64-byte slots, each a whole record with its own sequence number and checksum.
//! Commits write them in turn (in place, then `fdatasync`), so a torn write spoils only the slot
//! being written and the other still holds the previous marks, which the database has reached.
//! The file is created whole (a temporary file, fsynced, renamed), so a crash never leaves a
//! half-made one.
//!
//! IMPORTANT: the marks are written only after SQLite's commit returned, so they never claim more
//! than the database holds (a crash between the two leaves them behind, which is harmless), and
//! before the commit's replies leave (the caller sends nothing until `Journal::commit` returns).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The marks file's name beside the database.
pub const MARKS_FILE: &str = "ballast.db-marks";

const MAGIC: &[u8; 8] = b"BLSTMRK1";
const SLOT_BYTES: usize = 64;
const SLOTS: u64 = 2;

/// What a commit reached. Every field only grows while one journal lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MarkValues {
    /// The data dir's id (`master` table): marks of another journal do not apply to this one.
    pub master_id: u64,
    /// The first task id not committed (1 for none).
    pub next_id: u64,
    /// The largest `final_batches.seq` committed (0 for none).
    pub finals_seq: u64,
    /// The last incarnation committed.
    pub incarnation: u64,
}

/// One slot as stored: the values and the write's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u64,
    values: MarkValues,
}

/// What [`read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No marks file, or an empty one: nothing to check against (a journal from before the marks,
    /// or a new one).
    None,
    /// The newest valid slot.
    Marks(MarkValues),
    /// The file holds bytes but no valid slot.
    Damaged,
}

/// The open marks file, for the commits to write.
#[derive(Debug)]
pub struct Marks {
    file: File,
    path: PathBuf,
    /// The sequence number of the last write; the next goes to the other slot.
    seq: u64,
    /// What the file says now.
    last: MarkValues,
}

/// FNV-1a, 64 bits: finds torn and damaged slots; nobody forges marks.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(slot: &Slot) -> [u8; SLOT_BYTES] {
    let mut out = [0u8; SLOT_BYTES];
    out[..8].copy_from_slice(MAGIC);
    let fields = [
        slot.seq,
        slot.values.master_id,
        slot.values.next_id,
        slot.values.finals_seq,
        slot.values.incarnation,
        0, // reserved
    ];
    for (i, v) in fields.iter().enumerate() {
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    let sum = checksum(&out[..56]);
    out[56..].copy_from_slice(&sum.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Slot> {
    if bytes.len() != SLOT_BYTES || &bytes[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if word(56) != checksum(&bytes[..56]) {
        return None;
    }
    Some(Slot {
        seq: word(8),
        values: MarkValues {
            master_id: word(16),
            next_id: word(24),
            finals_seq: word(32),
            incarnation: word(40),
        },
    })
}

/// The newest valid slot of a whole file's bytes.
fn newest(bytes: &[u8]) -> Option<Slot> {
    bytes
        .chunks(SLOT_BYTES)
        .take(SLOTS as usize)
        .filter_map(decode)
        .max_by_key(|s| s.seq)
}

/// Reads the marks beside `db` (`path` is the marks file).
pub fn read(path: &Path) -> io::Result<Found> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::None),
        Err(e) => return Err(e),
    };
    if bytes.is_empty() {
        return Ok(Found::None);
    }
    Ok(match newest(&bytes) {
        Some(slot) => Found::Marks(slot.values),
        None => Found::Damaged,
    })
}

impl Marks {
    /// Makes the file say `values`, replacing whatever it held: written whole to a temporary file,
    /// fsynced, renamed over, and the directory fsynced.
    pub fn create(path: &Path, values: MarkValues) -> io::Result<Marks> {
        let tmp = path.with_extension("marks-tmp");
        let first = Slot { seq: 1, values };
        let mut bytes = Vec::with_capacity(SLOT_BYTES * SLOTS as usize);
        bytes.extend_from_slice(&encode(&first));
        // The other slot starts as a copy (same seq): either one alone is enough.
        bytes.extend_from_slice(&encode(&first));
        {
            let file = File::create(&tmp)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Marks {
            file,
            path: path.to_path_buf(),
            seq: 1,
            last: values,
        })
    }

    /// Records `values` (one in-place write of one slot and an `fdatasync`); nothing when they are
    /// what the file already says.
    pub fn write(&mut self, values: MarkValues) -> io::Result<()> {
        if values == self.last {
            return Ok(());
        }
        let seq = self.seq + 1;
        let slot = Slot { seq, values };
        self.file
            .write_all_at(&encode(&slot), (seq % SLOTS) * SLOT_BYTES as u64)?;
        self.file.sync_data()?;
        self.seq = seq;
        self.last = values;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: u64) -> MarkValues {
        MarkValues {
            master_id: 7,
            next_id: n,
            finals_seq: n / 2,
            incarnation: 3,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ballast-marks-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(MARKS_FILE)
    }

    #[test]
    fn a_slot_round_trips_and_any_flipped_byte_spoils_it() {
        let slot = Slot {
            seq: 9,
            values: values(1234),
        };
        let bytes = encode(&slot);
        assert_eq!(decode(&bytes), Some(slot));
        for i in 0..SLOT_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
    }

    #[test]
    fn writes_alternate_slots_and_a_torn_one_leaves_the_previous() {
        let path = temp("torn");
        assert_eq!(read(&path).expect("read"), Found::None);
        let mut marks = Marks::create(&path, values(1)).expect("create");
        assert_eq!(read(&path).expect("read"), Found::Marks(values(1)));
        for n in 2..=5 {
            marks.write(values(n)).expect("write");
            assert_eq!(read(&path).expect("read"), Found::Marks(values(n)));
        }
        // Tear the slot the last write went to: the one before it is what remains.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[0xff; 20], (marks.seq % SLOTS) * SLOT_BYTES as u64 + 30)
            .expect("tear");
        assert_eq!(read(&path).expect("read"), Found::Marks(values(4)));
        // Both gone: damaged, not "none".
        file.write_all_at(
            &[0xff; 20],
            ((marks.seq + 1) % SLOTS) * SLOT_BYTES as u64 + 30,
        )
        .expect("tear");
        assert_eq!(read(&path).expect("read"), Found::Damaged);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    proptest::proptest! {
        /// Whatever bytes the file holds, reading it never panics, and a valid slot is only ever
        /// found where one was written whole.
        #[test]
        fn any_file_bytes_read_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = newest(&bytes);
        }

        /// A run of writes, the last one torn at any byte: the file says the last values whole,
        /// or the ones before them, never anything else.
        #[test]
        fn a_torn_last_write_reads_as_the_one_before(
            writes in 1u64..20,
            cut in 0usize..SLOT_BYTES,
            garbage in proptest::num::u8::ANY,
        ) {
            let mut file = Vec::new();
            let first = Slot { seq: 1, values: values(1) };
            file.extend_from_slice(&encode(&first));
            file.extend_from_slice(&encode(&first));
            for n in 2..=writes + 1 {
                let slot = encode(&Slot { seq: n, values: values(n) });
                let at = (n % SLOTS) as usize * SLOT_BYTES;
                let torn = n == writes + 1;
                let upto = if torn { cut } else { SLOT_BYTES };
                file[at..at + upto].copy_from_slice(&slot[..upto]);
                if torn {
                    for b in &mut file[at + upto..at + SLOT_BYTES] {
                        *b ^= garbage | 1;
                    }
                }
            }
            let got = newest(&file).map(|s| s.values);
            let last = writes + 1;
            proptest::prop_assert!(
                got == Some(values(last - 1)) || got == Some(values(last)),
                "got {got:?} after {writes} writes, the last torn at {cut}"
            );
        }
    }

    #[test]
    fn an_unchanged_mark_is_not_written_again() {
        let path = temp("same");
        let mut marks = Marks::create(&path, values(3)).expect("create");
        marks.write(values(3)).expect("write");
        assert_eq!(marks.seq, 1, "no write for the same values");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
