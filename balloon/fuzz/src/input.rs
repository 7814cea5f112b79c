//! Reading fuzz inputs, and writing them (for seeds).
//!
//! Inputs are decoded with `arbitrary`'s [`Unstructured`]: integers are little-endian and read as
//! zero once the input is used up, so every byte string decodes to something and the fuzzer's
//! mutations map onto fields. [`Enc`] writes the same format, so seeds can be built from the
//! scenarios of the unit and property tests (`src/bin/gen_seeds.rs`).

use arbitrary::{Arbitrary, Unstructured};

/// A decoder over one fuzz input.
pub struct Src<'a> {
    u: Unstructured<'a>,
}

impl<'a> Src<'a> {
    /// Decodes `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Src {
            u: Unstructured::new(data),
        }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }

    /// One byte (0 once the input is used up).
    pub fn u8(&mut self) -> u8 {
        u8::arbitrary(&mut self.u).unwrap_or(0)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::arbitrary(&mut self.u).unwrap_or(0)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::arbitrary(&mut self.u).unwrap_or(0)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::arbitrary(&mut self.u).unwrap_or(0)
    }

    /// A byte below `n` (`n` ≥ 1).
    pub fn below(&mut self, n: u8) -> u8 {
        self.u8() % n
    }

    /// A `u16` length (capped at `max`) followed by that many bytes (fewer if the input ends).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u16()).min(max).min(self.u.len());
        self.u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// Writes bytes that [`Src`] decodes back to the same values.
#[derive(Default, Debug, Clone)]
pub struct Enc {
    /// The bytes written so far.
    pub out: Vec<u8>,
}

impl Enc {
    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-prefixed byte string (see [`Src::bytes`]).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u16(v.len() as u16);
        self.out.extend_from_slice(v);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enc_and_src_agree() {
        let mut e = Enc::default();
        e.u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1)
            .bytes(b"abc");
        let mut s = Src::new(&e.out);
        assert_eq!(s.u8(), 7);
        assert_eq!(s.u16(), 0x1234);
        assert_eq!(s.u32(), 0xdead_beef);
        assert_eq!(s.u64(), u64::MAX - 1);
        assert_eq!(s.bytes(16), b"abc");
        assert!(s.is_empty());
        // Past the end everything reads as zero.
        assert_eq!(s.u64(), 0);
    }
}
