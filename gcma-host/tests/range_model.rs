//! The range allocator against a simple model (a sorted list of free ranges), over random sequences
//! of every operation, plus regression tests for defects found in peer allocators.

mod support;

use gcma_host::range::{RangeAllocator, RangeError, SEARCH_BUDGET};
use proptest::prelude::*;
use support::range_model::{step, Model, Op};

fn length(span: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=8u64,
        3 => (0u32..44).prop_map(|s| 1u64 << s),
        2 => 1u64..=span.max(1),
        1 => Just(0u64),
        1 => any::<u64>(),
    ]
}

fn alignment() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(1u64),
        4 => (0u32..=40).prop_map(|s| 1u64 << s),
        1 => (41u32..64).prop_map(|s| 1u64 << s),
        1 => Just(0u64),
        1 => Just(3u64),
    ]
}

/// An address inside or near the span.
fn address(base: u64, len: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..=len).prop_map(move |o| base.wrapping_add(o)),
        1 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
    ]
}

fn ops(base: u64, len: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (length(len), alignment()).prop_map(|(len, align)| Op::Alloc { len, align }),
        2 => (length(len), alignment(), address(base, len), address(base, len))
            .prop_map(|(len, align, lo, hi)| Op::AllocIn { len, align, lo, hi }),
        2 => (length(len), alignment()).prop_map(|(len, align)| Op::TopDown { len, align }),
        2 => (address(base, len), length(len)).prop_map(|(at, len)| Op::Reserve { at, len }),
        5 => any::<usize>().prop_map(|i| Op::Free { i }),
        1 => address(base, len).prop_map(|at| Op::FreeAddr { at }),
    ];
    prop::collection::vec(op, 1..120)
}

/// Spans at the edges of the address space.
fn span() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        Just((0u64, 1000u64)),
        Just((1, 64)),
        Just((0, 1 << 44)),
        Just((u64::MAX - (1 << 40) + 1, 1 << 40)),
        Just((0, u64::MAX)),
        Just((1, u64::MAX)),
        (0u64..1 << 50, 1u64..1 << 45),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn matches_model((base, len) in span(), ops in span().prop_flat_map(|(b, l)| ops(b, l))) {
        let mut a = RangeAllocator::new(base, len).unwrap();
        let mut m = Model::new(base, len);
        for op in &ops {
            if let Err(e) = step(&mut a, &mut m, base, op) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

#[test]
fn new_rejects_bad_spans() {
    assert_eq!(
        RangeAllocator::new(0, 0).unwrap_err(),
        RangeError::ZeroLength
    );
    assert!(matches!(
        RangeAllocator::new(2, u64::MAX),
        Err(RangeError::Overflow { .. })
    ));
    // Ending exactly at 2^64 is allowed.
    let mut a = RangeAllocator::new(1, u64::MAX).unwrap();
    assert_eq!(a.alloc_top_down(1, 1).unwrap(), u64::MAX);
    assert_eq!(a.alloc(1, 1).unwrap(), 1);
    a.check_invariants().unwrap();
}

#[test]
fn block_at_address_zero_and_one() {
    // A peer allocator leaks a block starting at 1 and reports underflow on its free.
    let mut a = RangeAllocator::new(0, 16).unwrap();
    assert_eq!(a.reserve(1, 1), Ok(()));
    assert_eq!(a.alloc(1, 1).unwrap(), 0);
    assert_eq!(a.free(1).unwrap(), 1);
    assert_eq!(a.free(0).unwrap(), 1);
    assert_eq!(a.free_bytes(), 16);
    assert_eq!(a.nr_free_blocks(), 1);
    a.check_invariants().unwrap();
}

#[test]
fn one_unit_neighbours_merge() {
    // A peer allocator never merges 1-byte neighbours.
    let mut a = RangeAllocator::new(0, 4).unwrap();
    let starts: Vec<u64> = (0..4).map(|_| a.alloc(1, 1).unwrap()).collect();
    assert_eq!(starts, vec![0, 1, 2, 3]);
    assert_eq!(a.largest_free(), 0);
    // Free out of order: 1 and 3 stand alone, then 2 joins them, then 0 joins all.
    a.free(1).unwrap();
    a.free(3).unwrap();
    assert_eq!(a.nr_free_blocks(), 2);
    a.free(2).unwrap();
    assert_eq!(a.iter_free().collect::<Vec<_>>(), vec![1..4]);
    a.free(0).unwrap();
    assert_eq!(a.iter_free().collect::<Vec<_>>(), vec![0..4]);
    assert_eq!(a.alloc(4, 4).unwrap(), 0);
    a.check_invariants().unwrap();
}

#[test]
fn sub_range_unknown_and_double_free_are_errors() {
    let mut a = RangeAllocator::new(0x1000, 0x1000).unwrap();
    let x = a.alloc(0x100, 1).unwrap();
    // Interior address of an allocated block (a peer panics here).
    assert_eq!(a.free(x + 0x10), Err(RangeError::NotAllocated(x + 0x10)));
    // Never allocated, inside free space (a peer returns Ok).
    assert_eq!(a.free(0x1800), Err(RangeError::NotAllocated(0x1800)));
    // Outside the span.
    assert_eq!(a.free(0), Err(RangeError::NotAllocated(0)));
    assert_eq!(a.free(x), Ok(0x100));
    assert_eq!(a.free(x), Err(RangeError::NotAllocated(x)));
    assert_eq!(a.free_bytes(), 0x1000);
    a.check_invariants().unwrap();
}

#[test]
fn reserve_busy_and_out_of_span() {
    let mut a = RangeAllocator::new(100, 100).unwrap();
    a.reserve(150, 10).unwrap();
    assert_eq!(
        a.reserve(155, 1),
        Err(RangeError::Busy { start: 155, len: 1 })
    );
    assert_eq!(
        a.reserve(140, 20),
        Err(RangeError::Busy {
            start: 140,
            len: 20
        })
    );
    assert_eq!(
        a.reserve(99, 2),
        Err(RangeError::OutOfSpan { start: 99, len: 2 })
    );
    assert_eq!(
        a.reserve(199, 2),
        Err(RangeError::OutOfSpan { start: 199, len: 2 })
    );
    assert_eq!(
        a.reserve(u64::MAX, 2),
        Err(RangeError::Overflow {
            start: u64::MAX,
            len: 2
        })
    );
    assert_eq!(a.free_bytes(), 90);
    a.check_invariants().unwrap();
}

#[test]
fn aligned_search_is_exact() {
    // A search for `len + align - 1` would miss the exactly-fitting aligned hole at 0x1000.
    let mut a = RangeAllocator::new(0, 0x10000).unwrap();
    a.reserve(0, 0x1000).unwrap();
    a.reserve(0x2000, 0xe000).unwrap();
    assert_eq!(a.alloc(0x1000, 0x1000), Ok(0x1000));
    assert_eq!(a.alloc(1, 1), Err(RangeError::NoSpace { len: 1, align: 1 }));
}

#[test]
fn misaligned_holes_fall_back_without_failing() {
    // Many 3-unit holes [8i+1, 8i+4): long enough for 2 units, but no 4-aligned start fits in one.
    let n = 3 * SEARCH_BUDGET as u64;
    let mut a = RangeAllocator::new(0, 8 * n + 64).unwrap();
    for i in 0..n {
        a.reserve(8 * i, 1).unwrap();
        a.reserve(8 * i + 4, 4).unwrap();
    }
    // Free space: [8i+1, 8i+4) for every i, then the tail [8n, 8n+64).
    a.check_invariants().unwrap();
    let x = a.alloc(2, 4).unwrap();
    assert_eq!(
        x,
        8 * n,
        "must fall back to the first block that surely fits"
    );
    // With only misaligned holes left below and nothing else, an exact search still finds the
    // tight fit rather than failing.
    let mut b = RangeAllocator::new(0, 8 * n + 8).unwrap();
    for i in 0..n {
        b.reserve(8 * i, 1).unwrap();
        b.reserve(8 * i + 4, 4).unwrap();
    }
    b.reserve(8 * n, 4).unwrap();
    b.reserve(8 * n + 6, 2).unwrap();
    // The only aligned fit: [8n+4, 8n+6).
    assert_eq!(b.alloc(2, 4), Ok(8 * n + 4));
    b.check_invariants().unwrap();
}

#[test]
fn bad_requests_change_nothing() {
    let mut a = RangeAllocator::new(0, 64).unwrap();
    let before: Vec<_> = a.iter_free().collect();
    assert_eq!(a.alloc(0, 1), Err(RangeError::ZeroLength));
    assert_eq!(a.alloc(1, 0), Err(RangeError::InvalidAlignment(0)));
    assert_eq!(a.alloc(1, 6), Err(RangeError::InvalidAlignment(6)));
    assert_eq!(
        a.alloc(65, 1),
        Err(RangeError::NoSpace { len: 65, align: 1 })
    );
    assert_eq!(a.alloc(1, 1 << 63), Ok(0));
    a.free(0).unwrap();
    assert_eq!(
        a.alloc_in(8, 1, 60..64),
        Err(RangeError::NoSpace { len: 8, align: 1 })
    );
    assert_eq!(
        a.alloc_in(1, 1, 10..10),
        Err(RangeError::NoSpace { len: 1, align: 1 })
    );
    assert_eq!(a.iter_free().collect::<Vec<_>>(), before);
}

#[test]
fn top_down_and_windows() {
    let mut a = RangeAllocator::new(0, 1 << 20).unwrap();
    assert_eq!(a.alloc_top_down(0x1000, 0x1000), Ok((1 << 20) - 0x1000));
    assert_eq!(a.alloc_in(0x10, 0x100, 0x150..0x1000), Ok(0x200));
    // The window's lower edge may fall inside a free block.
    assert_eq!(a.alloc_in(0x10, 1, 0x205..0x300), Ok(0x210));
    a.check_invariants().unwrap();
}

#[test]
fn many_blocks_stay_balanced() {
    let mut a = RangeAllocator::new(0, 1 << 20).unwrap();
    let xs: Vec<u64> = (0..20_000).map(|_| a.alloc(1, 1).unwrap()).collect();
    for x in xs.iter().step_by(2) {
        a.free(*x).unwrap();
    }
    assert_eq!(a.nr_free_blocks(), 10_001);
    a.check_invariants().unwrap();
    // Holes are one unit; a two-unit request goes past all of them.
    assert_eq!(a.alloc(2, 1), Ok(20_000));
    assert_eq!(a.alloc(1, 1), Ok(0));
    for x in xs.iter().skip(1).step_by(2) {
        a.free(*x).unwrap();
    }
    a.check_invariants().unwrap();
}
