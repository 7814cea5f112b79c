//! The range allocator against its reference model, structure-aware.
//!
//! An input is a span followed by operations, decoded with `arbitrary` the way the property test
//! (`gcma-host/tests/range_model.rs`) generates them: lengths, alignments and addresses lean
//! towards the interesting values (tiny, powers of two, the span's edges, zero, garbage) but any
//! `u64` can be reached. Every operation's result is compared with the model's and the
//! allocator's invariants are checked after each step (`support::range_model::step`, shared with
//! the property test).
//!
//! Byte format (all integers little-endian, as `arbitrary` reads them; missing bytes read as 0):
//! `span_tag: u8` [`base: u64, len: u64` for the free-form span], then operations until the input
//! ends, each `op_tag: u8` followed by its fields. [`encode`] writes it; `gen_seeds` uses it.

use arbitrary::{Arbitrary, Result, Unstructured};
use gcma_host::range::RangeAllocator;

#[path = "../../tests/support/range_model.rs"]
#[allow(dead_code)]
mod model;

pub use model::Op;

/// Most operations decoded from one input (keeps each run short and reproducible).
pub const MAX_OPS: usize = 512;

/// Spans at the edges of the address space, as in the property test; the last is free-form.
const SPANS: [(u64, u64); 6] = [
    (0, 1000),
    (1, 64),
    (0, 1 << 44),
    (u64::MAX - (1 << 40) + 1, 1 << 40),
    (0, u64::MAX),
    (1, u64::MAX),
];

/// One decoded input.
#[derive(Debug, Clone)]
pub struct Input {
    /// First address of the span.
    pub base: u64,
    /// Length of the span.
    pub len: u64,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let tag = u8::arbitrary(u)? as usize % (SPANS.len() + 1);
        let (base, len) = match SPANS.get(tag) {
            Some(&s) => s,
            None => {
                let base = u64::arbitrary(u)? % (1 << 50);
                let len = u64::arbitrary(u)? % ((1 << 45) - 1) + 1;
                (base, len)
            }
        };
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(op(u, base, len)?);
        }
        Ok(Input { base, len, ops })
    }
}

/// Lengths: 4/11 tiny, 3/11 a power of two below 2^44, 2/11 inside the span, 1/11 zero, 1/11 any.
fn length(u: &mut Unstructured<'_>, span: u64) -> Result<u64> {
    Ok(match u8::arbitrary(u)? % 11 {
        0..=3 => u64::from(u8::arbitrary(u)? % 8) + 1,
        4..=6 => 1 << (u8::arbitrary(u)? % 44),
        7..=8 => u64::arbitrary(u)? % span.max(1) + 1,
        9 => 0,
        _ => u64::arbitrary(u)?,
    })
}

/// Alignments: 1, powers of two up to 2^40, huge powers of two, and the invalid 0 and 3.
fn alignment(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u8::arbitrary(u)? % 11 {
        0..=3 => 1,
        4..=7 => 1 << (u8::arbitrary(u)? % 41),
        8 => 1 << (41 + u8::arbitrary(u)? % 23),
        9 => 0,
        _ => 3,
    })
}

/// An address inside or at the end of the span, or anywhere.
fn address(u: &mut Unstructured<'_>, base: u64, len: u64) -> Result<u64> {
    Ok(match u8::arbitrary(u)? % 7 {
        0..=3 => {
            let off = u128::from(u64::arbitrary(u)?) % (u128::from(len) + 1);
            base.wrapping_add(off as u64)
        }
        4 => u64::arbitrary(u)?,
        5 => 0,
        _ => u64::MAX,
    })
}

fn op(u: &mut Unstructured<'_>, base: u64, len: u64) -> Result<Op> {
    Ok(match u8::arbitrary(u)? % 16 {
        0..=3 => Op::Alloc {
            len: length(u, len)?,
            align: alignment(u)?,
        },
        4..=5 => Op::AllocIn {
            len: length(u, len)?,
            align: alignment(u)?,
            lo: address(u, base, len)?,
            hi: address(u, base, len)?,
        },
        6..=7 => Op::TopDown {
            len: length(u, len)?,
            align: alignment(u)?,
        },
        8..=9 => Op::Reserve {
            at: address(u, base, len)?,
            len: length(u, len)?,
        },
        10..=14 => Op::Free {
            i: u16::arbitrary(u)? as usize,
        },
        _ => Op::FreeAddr {
            at: address(u, base, len)?,
        },
    })
}

/// Runs one input: every operation against the allocator and the model. Panics on the first
/// disagreement or broken invariant (that is the crash libFuzzer reports).
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut a = RangeAllocator::new(input.base, input.len).expect("spans are valid");
    let mut m = model::Model::new(input.base, input.len);
    for (i, op) in input.ops.iter().enumerate() {
        if let Err(e) = model::step(&mut a, &mut m, input.base, op) {
            panic!("step {i} of span {:#x}+{:#x}: {e}", input.base, input.len);
        }
    }
}

/// Writes the bytes that decode to `input` (for seed corpora). Values the decoder cannot produce
/// (an alignment other than 0, 3 or a power of two; an `i` of `Free` above `u16::MAX`) are
/// replaced by the nearest it can.
pub fn encode(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    match SPANS.iter().position(|&s| s == (input.base, input.len)) {
        Some(i) => out.push(i as u8),
        None => {
            out.push(SPANS.len() as u8);
            out.extend_from_slice(&input.base.to_le_bytes());
            out.extend_from_slice(&(input.len - 1).to_le_bytes());
        }
    }
    let (base, len) = (input.base, input.len);
    for op in &input.ops {
        match *op {
            Op::Alloc { len: l, align } => {
                out.push(0);
                enc_length(&mut out, l, len);
                enc_alignment(&mut out, align);
            }
            Op::AllocIn {
                len: l,
                align,
                lo,
                hi,
            } => {
                out.push(4);
                enc_length(&mut out, l, len);
                enc_alignment(&mut out, align);
                enc_address(&mut out, lo, base, len);
                enc_address(&mut out, hi, base, len);
            }
            Op::TopDown { len: l, align } => {
                out.push(6);
                enc_length(&mut out, l, len);
                enc_alignment(&mut out, align);
            }
            Op::Reserve { at, len: l } => {
                out.push(8);
                enc_address(&mut out, at, base, len);
                enc_length(&mut out, l, len);
            }
            Op::Free { i } => {
                out.push(10);
                out.extend_from_slice(&(i.min(u16::MAX as usize) as u16).to_le_bytes());
            }
            Op::FreeAddr { at } => {
                out.push(15);
                enc_address(&mut out, at, base, len);
            }
        }
    }
    out
}

fn enc_length(out: &mut Vec<u8>, v: u64, _span: u64) {
    match v {
        0 => out.push(9),
        1..=8 => out.extend_from_slice(&[0, (v - 1) as u8]),
        _ if v.is_power_of_two() && v < 1 << 44 => {
            out.extend_from_slice(&[4, v.trailing_zeros() as u8])
        }
        _ => {
            out.push(10);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn enc_alignment(out: &mut Vec<u8>, v: u64) {
    match v {
        1 => out.push(0),
        0 => out.push(9),
        _ if v.is_power_of_two() && v <= 1 << 40 => {
            out.extend_from_slice(&[4, v.trailing_zeros() as u8])
        }
        _ if v.is_power_of_two() => out.extend_from_slice(&[8, (v.trailing_zeros() - 41) as u8]),
        _ => out.push(10),
    }
}

fn enc_address(out: &mut Vec<u8>, v: u64, base: u64, len: u64) {
    let off = u128::from(v.wrapping_sub(base));
    if off <= u128::from(len) {
        out.push(0);
        out.extend_from_slice(&(off as u64).to_le_bytes());
    } else if v == 0 {
        out.push(5);
    } else if v == u64::MAX {
        out.push(6);
    } else {
        out.push(4);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds pass (so does every input a crash was minimised to, once fixed): a
    /// regression of the allocator or of the model shows in `cargo test` without nightly.
    #[test]
    fn seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/range_allocator");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seeds directory") {
            run(&std::fs::read(entry.expect("seed").path()).expect("seed bytes"));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn encode_round_trips() {
        let input = Input {
            base: 0x1234,
            len: 0x10_0000,
            ops: vec![
                Op::Alloc { len: 3, align: 1 },
                Op::Alloc {
                    len: 0x999,
                    align: 1 << 12,
                },
                Op::AllocIn {
                    len: 1 << 20,
                    align: 1 << 50,
                    lo: 0x2000,
                    hi: u64::MAX,
                },
                Op::TopDown { len: 0, align: 3 },
                Op::Reserve { at: 7, len: 1 },
                Op::Free { i: 300 },
                Op::FreeAddr { at: 0 },
            ],
        };
        let back = Input::arbitrary_take_rest(Unstructured::new(&encode(&input))).unwrap();
        assert_eq!(format!("{back:?}"), format!("{input:?}"));
    }
}
