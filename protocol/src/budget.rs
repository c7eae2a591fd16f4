//! Splitting a batch into frames by its real encoded size. Every batched message (`Assign`,
//! `Finished`, `Results`, `Submit`) is cut here, so a frame stays under its sender's budget however
//! large the items are, and no sender keeps its own size estimate.

use crate::codec::encoded_len;
use serde::Serialize;

/// Splits `items`, in order, into consecutive chunks whose encoding as a sequence (the length
/// prefix and the items, what a `Vec<T>` field of a message costs) is at most `budget_bytes`.
/// An item too big for the budget on its own gets a chunk of its own; no chunk is empty, and an
/// empty batch gives no chunk at all.
///
/// The message around the chunk (variant tag, small fields) adds a few bytes: leave room for them
/// in the budget. Costs one counting pass over the batch when it fits in one chunk (then the
/// chunk is `items` itself, allocation and all) and one more when it must be split.
pub fn chunks_within<T: Serialize>(items: Vec<T>, budget_bytes: usize) -> Chunks<T> {
    let state = if items.is_empty() {
        State::Whole(None)
    } else if encoded_len(&items) <= budget_bytes {
        State::Whole(Some(items))
    } else {
        State::Split {
            rest: items.into_iter(),
            carried: None,
        }
    };
    Chunks {
        state,
        budget_bytes,
    }
}

/// The chunks of one batch, made as they are taken; see [`chunks_within`].
pub struct Chunks<T> {
    state: State<T>,
    budget_bytes: usize,
}

enum State<T> {
    /// The batch fits (or is empty): handed out as it is.
    Whole(Option<Vec<T>>),
    Split {
        rest: std::vec::IntoIter<T>,
        /// The item that ended the previous chunk, with its encoded size.
        carried: Option<(T, usize)>,
    },
}

impl<T: Serialize> Iterator for Chunks<T> {
    type Item = Vec<T>;

    fn next(&mut self) -> Option<Vec<T>> {
        let (rest, carried) = match &mut self.state {
            State::Whole(whole) => return whole.take(),
            State::Split { rest, carried } => (rest, carried),
        };
        let mut chunk = Vec::new();
        let mut item_bytes = 0;
        loop {
            let (item, len) = match carried.take() {
                Some(next) => next,
                None => match rest.next() {
                    Some(item) => {
                        let len = encoded_len(&item);
                        (item, len)
                    }
                    None => break,
                },
            };
            if !chunk.is_empty()
                && sequence_len(chunk.len() + 1, item_bytes + len) > self.budget_bytes
            {
                *carried = Some((item, len));
                break;
            }
            item_bytes += len;
            chunk.push(item);
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// Encoded size of a sequence of `count` items that take `item_bytes` together.
pub fn sequence_len(count: usize, item_bytes: usize) -> usize {
    // A sequence is its length (as a u64, in the codec's own integer encoding), then its items.
    encoded_len(&(count as u64)) + item_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;

    fn chunks(items: Vec<String>, budget: usize) -> Vec<Vec<String>> {
        chunks_within(items, budget).collect()
    }

    #[test]
    fn a_sequence_costs_its_length_prefix_and_its_items() {
        for n in [0usize, 1, 250, 251, 70_000] {
            let items = vec![7u8; n];
            assert_eq!(encoded_len(&items), sequence_len(n, n), "{n} items");
        }
    }

    #[test]
    fn a_batch_that_fits_is_one_chunk_with_its_own_allocation() {
        let items: Vec<String> = (0..10).map(|i| format!("item {i}")).collect();
        let (expected, ptr) = (items.clone(), items.as_ptr());
        let got = chunks(items, 1_000);
        assert_eq!(got, vec![expected]);
        assert_eq!(got[0].as_ptr(), ptr, "not copied");
    }

    #[test]
    fn an_empty_batch_gives_no_chunk() {
        assert!(chunks(Vec::new(), 1_000).is_empty());
        assert!(chunks(Vec::new(), 0).is_empty());
    }

    #[test]
    fn the_budget_is_met_exactly() {
        // Each "abc" costs 4 bytes (length and 3 bytes), a 3-item sequence 1 + 12.
        let items = vec!["abc".to_string(); 7];
        let got = chunks(items, 13);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 1],
            "{got:?}"
        );
        assert!(got.iter().all(|c| encoded_len(c) <= 13));
    }

    #[test]
    fn an_item_above_the_budget_travels_alone() {
        let items = vec!["a".into(), "x".repeat(100), "b".into(), "c".into()];
        let got = chunks(items, 20);
        assert_eq!(
            got,
            vec![
                vec!["a".to_string()],
                vec!["x".repeat(100)],
                vec!["b".into(), "c".into()]
            ]
        );
        assert!(!chunks(vec!["x".repeat(100)], 0).is_empty());
    }

    #[test]
    fn completions_with_big_tails_split_under_a_frame_budget() {
        let run = TaskRef {
            task: TaskId(1),
            attempt: Attempt(1),
            incarnation: Incarnation(1),
        };
        let batch: Vec<Completion> = (0..40)
            .map(|i| {
                run.completion(
                    TaskOutcome::Exited {
                        code: i,
                        stdout_tail: "o".repeat(64 << 10),
                        stderr_tail: "e".repeat(1 << 10),
                    },
                    5,
                )
            })
            .collect();
        let budget = 1 << 20;
        let got: Vec<Vec<Completion>> = chunks_within(batch.clone(), budget).collect();
        assert!(got.len() >= 3, "{} chunks", got.len());
        for chunk in &got {
            // The message adds only its variant tag.
            assert!(encoded_len(&ToMaster::Finished(chunk.clone())) <= budget + 1);
        }
        assert_eq!(got.concat(), batch);
    }

    proptest! {
        #[test]
        fn every_item_kept_in_order_and_each_chunk_within_budget(
            lens in proptest::collection::vec(0usize..300, 0..60),
            budget in 0usize..1_000,
        ) {
            let items: Vec<String> = lens.iter().enumerate().map(|(i, &n)| {
                format!("{i}:{}", "z".repeat(n))
            }).collect();
            let got = chunks(items.clone(), budget);
            for chunk in &got {
                prop_assert!(!chunk.is_empty());
                prop_assert!(encoded_len(chunk) <= budget || chunk.len() == 1,
                    "a chunk of {} items takes {} bytes, budget {budget}", chunk.len(), encoded_len(chunk));
            }
            // Greedy: no chunk could have taken the next chunk's first item.
            for pair in got.windows(2) {
                let mut grown = pair[0].clone();
                grown.push(pair[1][0].clone());
                prop_assert!(encoded_len(&grown) > budget);
            }
            prop_assert_eq!(got.concat(), items);
        }
    }
}
