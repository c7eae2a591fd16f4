//! Task id lists: the contiguous ranges the master hands out, their compact display, and batches
//! small enough for one frame.

use super::FRAME_BUDGET;
use protocol::TaskId;
use serde::ser::{Serialize, Serializer};

/// Worst case bytes for one `TaskId` on the wire (bincode varint of a u64).
const MAX_ID_BYTES: usize = 9;

/// Ids per `Wait` / `Results` / `Cancel` frame: even at 9 bytes each they stay within the budget.
pub const IDS_PER_FRAME: usize = FRAME_BUDGET / MAX_ID_BYTES;

/// Ids `first .. first + count`, as `FromMaster::Submitted` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u64,
    pub count: u64,
}

impl IdRange {
    /// Saturating, so a nonsense `Submitted` from the network cannot overflow.
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.count)
    }

    pub fn iter(&self) -> impl Iterator<Item = TaskId> {
        (self.first..self.end()).map(TaskId)
    }
}

/// Every id of `ranges`, in order.
pub fn all(ranges: &[IdRange]) -> impl Iterator<Item = TaskId> + '_ {
    ranges.iter().flat_map(IdRange::iter)
}

pub fn total(ranges: &[IdRange]) -> u64 {
    ranges.iter().map(|r| r.count).sum()
}

/// Cuts `ids` into frame-sized batches lazily, so a million ids never exist twice.
pub fn batched(ids: impl IntoIterator<Item = TaskId>) -> impl Iterator<Item = Vec<TaskId>> {
    let mut ids = ids.into_iter();
    std::iter::from_fn(move || {
        let batch: Vec<TaskId> = ids.by_ref().take(IDS_PER_FRAME).collect();
        (!batch.is_empty()).then_some(batch)
    })
}

/// Sorted, de-duplicated ranges covering exactly `ids`.
pub fn compress(ids: &[TaskId]) -> Vec<IdRange> {
    let mut sorted: Vec<u64> = ids.iter().map(|t| t.0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<IdRange> = Vec::new();
    for id in sorted {
        match out.last_mut() {
            Some(r) if r.end() == id => r.count += 1,
            _ => out.push(IdRange {
                first: id,
                count: 1,
            }),
        }
    }
    out
}

/// `1-3, 7, 9-10`: readable even when thousands of ids were cancelled.
pub fn format_ranges(ranges: &[IdRange]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| match r.count {
            1 => r.first.to_string(),
            _ => format!("{}-{}", r.first, r.end() - 1),
        })
        .collect();
    parts.join(", ")
}

/// Serializes as a flat JSON array of numbers without expanding the ranges into a `Vec` first.
pub struct IdList<'a>(pub &'a [IdRange]);

impl Serialize for IdList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(all(self.0).map(|t| t.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<TaskId> {
        v.iter().copied().map(TaskId).collect()
    }

    #[test]
    fn compress_and_format() {
        let r = compress(&ids(&[9, 1, 2, 3, 7, 10, 2]));
        assert_eq!(
            r,
            vec![
                IdRange { first: 1, count: 3 },
                IdRange { first: 7, count: 1 },
                IdRange { first: 9, count: 2 },
            ]
        );
        assert_eq!(format_ranges(&r), "1-3, 7, 9-10");
        assert_eq!(format_ranges(&[]), "");
    }

    #[test]
    fn batches_cover_everything_in_order() {
        let n = IDS_PER_FRAME * 2 + 5;
        let batches: Vec<Vec<TaskId>> = batched((1..=n as u64).map(TaskId)).collect();
        assert_eq!(batches.len(), 3);
        assert!(batches.iter().all(|b| b.len() <= IDS_PER_FRAME));
        let flat: Vec<u64> = batches.iter().flatten().map(|t| t.0).collect();
        assert_eq!(flat, (1..=n as u64).collect::<Vec<_>>());
        // The worst-case frame really fits.
        let worst = protocol::ToMaster::Wait {
            ids: vec![TaskId(u64::MAX); IDS_PER_FRAME],
            progress: true,
        };
        assert!(protocol::codec::encoded_len(&worst) <= FRAME_BUDGET + 16);
        assert!(protocol::codec::encoded_len(&worst) < protocol::MAX_FRAME);
    }

    #[test]
    fn id_list_is_a_flat_json_array() {
        let r = [
            IdRange { first: 4, count: 2 },
            IdRange {
                first: 10,
                count: 1,
            },
        ];
        assert_eq!(serde_json::to_string(&IdList(&r)).unwrap(), "[4,5,10]");
    }

    #[test]
    fn hostile_range_does_not_overflow() {
        let r = IdRange {
            first: u64::MAX - 1,
            count: u64::MAX,
        };
        assert_eq!(r.end(), u64::MAX);
        assert_eq!(r.iter().count(), 1);
    }
}
