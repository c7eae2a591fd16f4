//! `IdHashMap`: a hash map keyed by an id the master hands out itself (task, worker, connection)
//! that hashes with one multiplication. The default SipHash costs more than the rest of an
//! insert and a remove, and it buys nothing here: no peer chooses these keys, so none can make
//! them collide (an id a client names is only looked up).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing: the odd constant is 2^64 / φ. A bijection on u64, so dense ids spread
/// over the low bits the table indexes by, and the top bits (its control bytes) vary too.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(MULTIPLIER);
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }

    fn write_usize(&mut self, id: usize) {
        self.write_u64(id as u64);
    }

    // Only ids (integer newtypes) are keys; any other shape still hashes, a byte at a time.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskId;
    use std::hash::BuildHasher;

    #[test]
    fn dense_ids_spread_over_the_low_bits() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut buckets = [0u32; 64];
        for i in 1..=6_400u64 {
            buckets[(build.hash_one(TaskId(i)) & 63) as usize] += 1;
        }
        // A bijection mod 64 on consecutive ids: each bucket gets exactly its share.
        assert!(buckets.iter().all(|&n| n == 100), "{buckets:?}");
    }

    #[test]
    fn a_map_keyed_by_ids_behaves_as_a_map() {
        let mut m: IdHashMap<TaskId, u64> = IdHashMap::default();
        for i in 1..=10_000u64 {
            m.insert(TaskId(i), i * 2);
        }
        for i in (1..=10_000u64).step_by(2) {
            assert_eq!(m.remove(&TaskId(i)), Some(i * 2));
        }
        assert_eq!(m.len(), 5_000);
        assert_eq!(m.get(&TaskId(2)), Some(&4));
        assert_eq!(m.get(&TaskId(3)), None);
    }
}
