//! The range allocator against a simple model (a sorted list of free ranges), over random sequences
//! of every operation and limits on the nodes a search may visit, plus regression tests for
//! defects found in peer allocators and for searches a guest can make expensive.

use std::collections::BTreeMap;

use gcma_host::range::{RangeAllocator, RangeError, DEFAULT_MAX_VISITS, SEARCH_BUDGET};
use proptest::prelude::*;

const TOP: u128 = 1 << 64;

/// The model: free ranges as `[start, end)` in `u128`, sorted and coalesced, plus allocated blocks.
#[derive(Debug)]
struct Model {
    base: u128,
    end: u128,
    free: Vec<(u128, u128)>,
    allocated: BTreeMap<u64, u64>,
}

impl Model {
    fn new(base: u64, len: u64) -> Self {
        let (base, end) = (base as u128, base as u128 + len as u128);
        Model {
            base,
            end,
            free: vec![(base, end)],
            allocated: BTreeMap::new(),
        }
    }

    fn take(&mut self, s: u128, len: u128) {
        let i = self
            .free
            .iter()
            .position(|&(a, b)| a <= s && s + len <= b)
            .unwrap();
        let (a, b) = self.free.remove(i);
        if s + len < b {
            self.free.insert(i, (s + len, b));
        }
        if a < s {
            self.free.insert(i, (a, s));
        }
        self.allocated.insert(s as u64, len as u64);
    }

    /// Lowest aligned start that fits in a free range and in `[lo, hi)`, and how many free ranges
    /// below it were long enough but could not hold the aligned request.
    fn lowest_fit(&self, len: u64, align: u64, lo: u128, hi: u128) -> (Option<u64>, Vec<u64>) {
        let (len_w, al) = (len as u128, align as u128);
        let mut rejected = Vec::new();
        for &(a, b) in &self.free {
            let (a2, b2) = (a.max(lo), b.min(hi));
            if a2 >= b2 {
                continue;
            }
            let s = a2.div_ceil(al) * al;
            if s + len_w <= b2 {
                return (Some(s as u64), rejected);
            }
            if b - a >= len_w {
                rejected.push(a as u64);
            }
        }
        (None, rejected)
    }

    /// Checks `got` against the model's lowest fit and, if valid, applies it to the model. The
    /// allocator may return a higher fit only after more than `SEARCH_BUDGET` rejected blocks, or
    /// when its visits (`s.cap`) may have run out before it walked the whole tree; it may give up
    /// ([`RangeError::SearchLimit`]) only when the visits cannot cover three walks of the tree,
    /// and, for an unwindowed request with visits enough for the `len + align - 1` descent, only
    /// when no free block of `len + align - 1` exists.
    fn alloc_in(
        &mut self,
        got: &Result<u64, RangeError>,
        s: Search,
        len: u64,
        align: u64,
        lo: u128,
        hi: u128,
    ) -> Result<u64, RangeError> {
        check(len, align)?;
        if lo >= hi {
            return Err(RangeError::NoSpace { len, align });
        }
        let n = self.free.len() as u64;
        let h = avl_height_bound(n);
        assert!(s.visits <= s.cap, "{} visits, limit {}", s.visits, s.cap);
        if let Err(RangeError::SearchLimit { visited, .. }) = got {
            assert_eq!(*visited, s.visits);
            assert!(
                u64::from(s.cap) < 3 * n + h + 4,
                "gave up with {} visits allowed for {n} free blocks",
                s.cap
            );
            let len2 = len as u128 + align as u128 - 1;
            if !s.windowed && u64::from(s.cap) >= 8 * h + 16 {
                assert!(
                    self.free.iter().all(|&(a, b)| b - a < len2),
                    "gave up although a free block of len + align - 1 exists: {:?}",
                    self.free
                );
            }
            return got.clone();
        }
        let (want, rejected) = self.lowest_fit(len, align, lo, hi);
        let Some(w) = want else {
            return Err(RangeError::NoSpace { len, align });
        };
        let chosen = match got {
            Ok(g) if *g != w => {
                let (g, len_w, al) = (*g as u128, len as u128, align as u128);
                let fits = g % al == 0
                    && g >= lo
                    && g + len_w <= hi
                    && self.free.iter().any(|&(a, b)| a <= g && g + len_w <= b);
                let skipped = rejected.iter().filter(|&&r| (r as u128) < g).count();
                assert!(fits, "allocator returned {g:#x}, which does not fit");
                let visits_short = u64::from(s.cap / 2) < n + h + 2;
                assert!(
                    g > w as u128 && (skipped as u32 >= SEARCH_BUDGET || visits_short),
                    "allocator returned {g:#x}, lowest fit is {w:#x}, only {skipped} blocks skipped"
                );
                g as u64
            }
            _ => w,
        };
        self.take(chosen as u128, len as u128);
        Ok(chosen)
    }

    fn top_down(
        &mut self,
        got: &Result<u64, RangeError>,
        s: Search,
        len: u64,
        align: u64,
    ) -> Result<u64, RangeError> {
        check(len, align)?;
        assert!(s.visits <= s.cap, "{} visits, limit {}", s.visits, s.cap);
        if let Err(RangeError::SearchLimit { .. }) = got {
            let n = self.free.len() as u64;
            assert!(
                u64::from(s.cap) < n,
                "top-down search gave up with {} visits allowed for {n} free blocks",
                s.cap
            );
            return got.clone();
        }
        let (len_w, al) = (len as u128, align as u128);
        let found = self.free.iter().rev().find_map(|&(a, b)| {
            let s = b.checked_sub(len_w)? / al * al;
            (s >= a).then_some(s)
        });
        match found {
            Some(s) => {
                self.take(s, len_w);
                Ok(s as u64)
            }
            None => Err(RangeError::NoSpace { len, align }),
        }
    }

    fn reserve(&mut self, start: u64, len: u64) -> Result<(), RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        let (s, e) = (start as u128, start as u128 + len as u128);
        if e > TOP {
            return Err(RangeError::Overflow { start, len });
        }
        if s < self.base || e > self.end {
            return Err(RangeError::OutOfSpan { start, len });
        }
        if self.free.iter().any(|&(a, b)| a <= s && e <= b) {
            self.take(s, len as u128);
            Ok(())
        } else {
            Err(RangeError::Busy { start, len })
        }
    }

    fn free(&mut self, start: u64) -> Result<u64, RangeError> {
        let len = self
            .allocated
            .remove(&start)
            .ok_or(RangeError::NotAllocated(start))?;
        self.free.push((start as u128, start as u128 + len as u128));
        self.free.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for &(a, b) in &self.free {
            match merged.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => merged.push((a, b)),
            }
        }
        self.free = merged;
        Ok(len)
    }

    fn free_list(&self) -> Vec<(u128, u128)> {
        self.free.clone()
    }
}

/// How a search went: the most nodes it could visit, how many it did, and whether its range was
/// limited to a window.
#[derive(Clone, Copy, Debug)]
struct Search {
    cap: u32,
    visits: u32,
    windowed: bool,
}

/// An upper bound on the height of an AVL tree of `n` nodes (1.4405 log2(n + 2)).
fn avl_height_bound(n: u64) -> u64 {
    (1.4405 * ((n + 2) as f64).log2()).ceil() as u64
}

fn check(len: u64, align: u64) -> Result<(), RangeError> {
    if len == 0 {
        Err(RangeError::ZeroLength)
    } else if !align.is_power_of_two() {
        Err(RangeError::InvalidAlignment(align))
    } else {
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        len: u64,
        align: u64,
    },
    AllocIn {
        len: u64,
        align: u64,
        lo: u64,
        hi: u64,
    },
    TopDown {
        len: u64,
        align: u64,
    },
    Reserve {
        at: u64,
        len: u64,
    },
    /// Frees the `i % n`-th allocated block.
    Free {
        i: usize,
    },
    /// Frees an address that may or may not start a block (interior, neighbour, garbage).
    FreeAddr {
        at: u64,
    },
}

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

/// Limits on the nodes one search visits: unlimited, the default, and ones small enough to bind
/// on the model's trees.
fn visit_cap() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(u32::MAX),
        2 => Just(DEFAULT_MAX_VISITS),
        1 => Just(1u32),
        2 => 2u32..64,
    ]
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

fn free_list(a: &RangeAllocator) -> Vec<(u128, u128)> {
    a.iter_free_blocks()
        .map(|(s, l)| (s as u128, s as u128 + l as u128))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn matches_model(
        (base, len) in span(),
        ops in span().prop_flat_map(|(b, l)| ops(b, l)),
        cap in visit_cap(),
    ) {
        let mut a = RangeAllocator::new(base, len).unwrap();
        a.set_max_visits(cap);
        let cap = a.max_visits();
        let mut m = Model::new(base, len);
        for op in ops {
            let search = |a: &RangeAllocator, windowed| Search {
                cap,
                visits: a.last_alloc_visits(),
                windowed,
            };
            let (got, want) = match op {
                Op::Alloc { len, align } => {
                    let got = a.alloc(len, align);
                    let want = m.alloc_in(&got, search(&a, false), len, align, 0, TOP);
                    (got, want)
                }
                Op::AllocIn { len, align, lo, hi } => {
                    let got = a.alloc_in(len, align, lo..hi);
                    let want =
                        m.alloc_in(&got, search(&a, true), len, align, lo as u128, hi as u128);
                    (got, want)
                }
                Op::TopDown { len, align } => {
                    let got = a.alloc_top_down(len, align);
                    let want = m.top_down(&got, search(&a, false), len, align);
                    (got, want)
                }
                Op::Reserve { at, len } => (
                    a.reserve(at, len).map(|()| at),
                    m.reserve(at, len).map(|()| at),
                ),
                Op::Free { i } => {
                    let starts: Vec<u64> = m.allocated.keys().copied().collect();
                    let at = if starts.is_empty() { base } else { starts[i % starts.len()] };
                    (a.free(at), m.free(at))
                }
                Op::FreeAddr { at } => (a.free(at), m.free(at)),
            };
            prop_assert_eq!(&got, &want);
            if let Err(e) = a.check_invariants() {
                prop_assert!(false, "invariant broken: {}", e);
            }
            prop_assert_eq!(free_list(&a), m.free_list());
            let model_free: u128 = m.free.iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(a.free_bytes() as u128, model_free);
            let model_largest = m.free.iter().map(|(s, e)| e - s).max().unwrap_or(0);
            prop_assert_eq!(a.largest_free() as u128, model_largest);
            prop_assert_eq!(a.nr_allocated(), m.allocated.len());
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

/// A guest that fragments the space with one-unit blocks freed every other unit, then asks for an
/// alignment no hole has: every hole is long enough, none fits. Without a limit the search walks
/// all of them (the cost the pool used to pay under its lock per request).
fn one_unit_holes(n: u64) -> RangeAllocator {
    let mut a = RangeAllocator::new(0, 2 * n).unwrap();
    for _ in 0..2 * n {
        a.alloc(1, 1).unwrap();
    }
    for i in 0..n {
        a.free(2 * i + 1).unwrap();
    }
    assert_eq!(a.nr_free_blocks(), n as usize);
    a
}

#[test]
fn misaligned_requests_on_fragmented_space_stop_at_the_visit_limit() {
    let mut a = one_unit_holes(32_768);
    assert_eq!(a.max_visits(), DEFAULT_MAX_VISITS);
    let before: Vec<_> = a.iter_free().collect();
    // No hole can hold an even start: the search gives up within its visits.
    let r = a.alloc(1, 2);
    assert!(
        matches!(r, Err(RangeError::SearchLimit { len: 1, align: 2, visited }) if visited <= DEFAULT_MAX_VISITS),
        "{r:?}"
    );
    assert!(a.last_alloc_visits() <= DEFAULT_MAX_VISITS);
    // No block is two units long: the augmented maximum proves it at the root.
    assert_eq!(a.alloc(2, 1), Err(RangeError::NoSpace { len: 2, align: 1 }));
    assert_eq!(a.last_alloc_visits(), 1);
    assert_eq!(
        a.iter_free().collect::<Vec<_>>(),
        before,
        "failures change nothing"
    );
    // Unlimited, the same request walks every hole to prove there is no fit.
    a.set_max_visits(u32::MAX);
    assert_eq!(a.alloc(1, 2), Err(RangeError::NoSpace { len: 1, align: 2 }));
    assert!(a.last_alloc_visits() > 32_768, "{}", a.last_alloc_visits());
    a.check_invariants().unwrap();
}

#[test]
fn a_tight_fit_beyond_the_visit_limit_is_not_looked_for() {
    // Thousands of 3-unit holes [8i+1, 8i+4) (no 4-aligned start for 2 units in any), then the
    // only fit, [8n+4, 8n+6), exactly 2 units: no block has len + align - 1 = 5 units.
    let n = 4096u64;
    let mut a = RangeAllocator::new(0, 8 * n + 8).unwrap();
    for i in 0..n {
        a.reserve(8 * i, 1).unwrap();
        a.reserve(8 * i + 4, 4).unwrap();
    }
    a.reserve(8 * n, 4).unwrap();
    a.reserve(8 * n + 6, 2).unwrap();
    let r = a.alloc(2, 4);
    assert!(matches!(r, Err(RangeError::SearchLimit { .. })), "{r:?}");
    assert!(a.last_alloc_visits() <= DEFAULT_MAX_VISITS);
    a.set_max_visits(u32::MAX);
    assert_eq!(a.alloc(2, 4), Ok(8 * n + 4));
    a.check_invariants().unwrap();
}
