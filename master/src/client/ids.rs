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

/// Most ids one command-line argument may name: a mistyped range (`1-100000000000`) is refused
/// rather than sent id by id. As many as one `submit` can create.
pub const MAX_IDS_PER_ARG: u64 = 10_000_000;

/// One id argument as the user typed it: `7`, `5-9`, or a comma list of those (`1-3,7`, and
/// `1-3,` as `master cancel` prints it, so its output can be pasted back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdArg(pub Vec<IdRange>);

/// The clap value parser for id arguments.
pub fn parse_id_arg(text: &str) -> Result<IdArg, String> {
    let mut ranges = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let number = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                format!("{s:?} is not a task id (ids are whole numbers: 7, 5-9, 1-3,7)")
            })
        };
        let range = match item.split_once('-') {
            None => IdRange {
                first: number(item)?,
                count: 1,
            },
            Some((a, b)) => {
                let (first, last) = (number(a)?, number(b)?);
                if last < first {
                    return Err(format!("{item:?} runs backwards: write {last}-{first}"));
                }
                let count = last - first + 1;
                if count > MAX_IDS_PER_ARG {
                    return Err(format!(
                        "{item:?} names {count} ids; at most {MAX_IDS_PER_ARG} per argument"
                    ));
                }
                IdRange { first, count }
            }
        };
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err(format!("{text:?} names no task id"));
    }
    Ok(IdArg(ranges))
}

/// Every id the arguments name, in the order given.
pub fn from_args(args: &[IdArg]) -> impl Iterator<Item = TaskId> + '_ {
    args.iter().flat_map(|a| all(&a.0))
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
            jobs: vec![],
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
    fn id_arguments_take_numbers_ranges_and_what_the_cli_prints() {
        let parsed = |t: &str| parse_id_arg(t).map(|a| all(&a.0).map(|t| t.0).collect::<Vec<_>>());
        assert_eq!(parsed("7"), Ok(vec![7]));
        assert_eq!(parsed("201-203"), Ok(vec![201, 202, 203]));
        assert_eq!(parsed("1-3,7"), Ok(vec![1, 2, 3, 7]));
        // `format_ranges` output, split by the shell at the spaces.
        assert_eq!(parsed("1-3,"), Ok(vec![1, 2, 3]));
        assert_eq!(parsed(" 9 - 10 "), Ok(vec![9, 10]));
        assert!(parsed("9-5").unwrap_err().contains("backwards"));
        assert!(parsed("x").unwrap_err().contains("not a task id"));
        assert!(parsed("-3").unwrap_err().contains("not a task id"));
        assert!(parsed(",").unwrap_err().contains("no task id"));
        assert!(parsed("1-18446744073709551615")
            .unwrap_err()
            .contains("at most"));
        assert_eq!(parsed("0-9999999").map(|v| v.len()), Ok(10_000_000));
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
