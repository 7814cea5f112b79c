//! A fast keyed hasher for the pool's indexes.
//!
//! The standard `HashMap` hasher (SipHash-1-3) costs more than the rest of a cleancache lookup; a
//! put or get hashes a key several times under the pool lock. This hasher mixes each 64-bit word
//! with a multiply-rotate step and ends with a full avalanche (the MurmurHash3 finalizer). It is
//! seeded once per process from the standard library's random keys, so that guests cannot predict
//! which of their keys collide. It is not a cryptographic PRF; it is meant to make collision
//! flooding impractical, not impossible.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| std::hash::RandomState::new().hash_one(0x6763_6d61u64))
}

/// Builds [`KeyedHasher`]s with the process-wide random seed.
#[derive(Clone, Copy, Debug)]
pub struct KeyedState {
    seed: u64,
}

impl Default for KeyedState {
    fn default() -> Self {
        KeyedState {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher { h: self.seed }
    }
}

/// See the [module documentation](self).
#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher {
    h: u64,
}

impl KeyedHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(K);
    }
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.mix(v as u64);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(v as u64);
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
        let mut h = self.h;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A `HashMap` with [`KeyedState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, KeyedState>;
/// A `HashSet` with [`KeyedState`].
pub type FastSet<K> = std::collections::HashSet<K, KeyedState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_structured_keys() {
        // Keys differing in one bit of one word land in many buckets.
        let s = KeyedState::default();
        let mut buckets = FastSet::default();
        for i in 0..1024u64 {
            buckets.insert(s.hash_one((7u32, [i << 40, 0u64, 0u64])) & 1023);
        }
        assert!(buckets.len() > 500, "{} distinct buckets", buckets.len());
    }
}
