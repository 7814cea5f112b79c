//! The test_vmalloc.ko scenarios (lib/test_vmalloc.c), expressed in page numbers, and the seeded
//! operation stream they draw from.

use std::hint::black_box;
use std::time::Instant;

use super::adapters::RangeAlloc;

/// First page number of the managed space (4 GiB in bytes). Not 0 or 1 on purpose: vm-allocator
/// mishandles ranges starting at 1, and that is a correctness test, not a benchmark.
pub const BASE: u64 = 1 << 20;
/// Pages in the managed space: 2^33 pages = 32 TiB, the size of x86-64's vmalloc area.
pub const SPAN: u64 = 1 << 33;
/// Seed of every operation stream.
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// xorshift64*: tiny, fast, and the same stream for every allocator.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (never zero).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant here).
    #[inline]
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Counters one run of a scenario fills in.
#[derive(Default, Clone, Copy)]
pub struct Stats {
    /// Alloc attempts (each successful one is followed by its free): the unit of "ns per pair".
    pub pairs: u64,
    /// Alloc attempts that failed.
    pub failed: u64,
    /// Batch scenarios stop allocating at this instant (then free what they got), so that an O(n)
    /// allocator cannot spend half a minute on one 35,000-alloc batch.
    pub deadline: Option<Instant>,
    /// Set when a batch was cut short by `deadline`.
    pub truncated: bool,
}

/// One benchmark scenario.
#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    /// Loop: alloc 1 page, free.
    FixSize,
    /// `junk` interleaved pairs of 1-page blocks, every other one freed; loop: alloc 1 page, free
    /// (lands in the lowest hole).
    FullFit { junk: u64 },
    /// `busy` 1-page blocks kept busy; loop: alloc 100 pages, alloc `small` pages, free both.
    /// `holey == false` is test_vmalloc's layout (busy blocks back to back, small = 1);
    /// `holey == true` leaves a 1-page hole after every busy block and asks for 2 pages, so the
    /// free tree holds `busy + 1` blocks and both allocations must skip all of them.
    LongBusyList { busy: u64, holey: bool },
    /// Loop: alloc U[1,100] pages, free.
    RandomSize,
    /// Loop: alloc 5 pages aligned to 8 pages (32 KiB = THREAD_ALIGN << 1), free.
    FixAlign,
    /// Loop: r = random byte; alloc (r % 10 + 1) pages aligned to max(1, 2^(r % 23) bytes / 4 KiB)
    /// pages, free.
    RandomSizeAlign,
    /// Loop: for i in 0..64, alloc 1 page aligned to 2^i pages, free. Aligns above the space fail
    /// (cleanly, we hope), 2^63 included.
    AlignShift,
    /// Batch: `batch` allocs of U[1,1024] pages aligned to 2^U[1,11] pages, then free all in
    /// allocation order. test_vmalloc's pcpu test uses these numbers in bytes on the per-CPU
    /// allocator; here they are pages, which makes it a fragmentation-heavy batch pattern.
    Pcpu { batch: u64 },
}

impl Scenario {
    /// Row label.
    pub fn name(&self) -> String {
        match self {
            Scenario::FixSize => "fix_size".into(),
            Scenario::FullFit { .. } => "full_fit".into(),
            Scenario::LongBusyList { busy, holey: false } => {
                format!("long_busy_list({})", human(*busy))
            }
            Scenario::LongBusyList { busy, holey: true } => {
                format!("long_busy_list_holey({})", human(*busy))
            }
            Scenario::RandomSize => "random_size".into(),
            Scenario::FixAlign => "fix_align".into(),
            Scenario::RandomSizeAlign => "random_size_align".into(),
            Scenario::AlignShift => "align_shift".into(),
            Scenario::Pcpu { .. } => "pcpu-like".into(),
        }
    }

    /// Alloc attempts per loop.
    pub fn pairs_per_loop(&self) -> u64 {
        match self {
            Scenario::LongBusyList { .. } => 2,
            Scenario::AlignShift => 64,
            Scenario::Pcpu { batch } => *batch,
            _ => 1,
        }
    }

    /// Failed allocs per loop a correct allocator has (only align_shift expects any).
    pub fn expected_failures_per_loop(&self) -> u64 {
        match self {
            Scenario::AlignShift => (0..64)
                .filter(|&i| {
                    let align = 1u64 << i;
                    let start = BASE.checked_add(align - 1).map(|x| x & !(align - 1));
                    start.is_none_or(|s| s >= BASE + SPAN)
                })
                .count() as u64,
            _ => 0,
        }
    }

    /// Builds the scenario's initial busy set; returns the blocks to free in `teardown`.
    pub fn setup<A: RangeAlloc>(&self, a: &mut A) -> Result<Vec<(u64, u64)>, String> {
        let mut kept = Vec::new();
        match *self {
            Scenario::FullFit { junk } => {
                // Same layout a lowest-fit allocator produces from `junk` pairs of 1-page allocs.
                for i in 0..junk {
                    let p = BASE + 2 * i;
                    if !a.reserve(p, 1) || !a.reserve(p + 1, 1) {
                        return Err(format!("reserve of {p:#x} failed"));
                    }
                    kept.push((p, 1));
                }
                for i in 0..junk {
                    let j = BASE + 2 * i + 1;
                    if a.free(j, 1) != Some(1) {
                        return Err(format!("free of junk {j:#x} failed"));
                    }
                }
            }
            Scenario::LongBusyList { busy, holey } => {
                let stride = if holey { 2 } else { 1 };
                for i in 0..busy {
                    let p = BASE + stride * i;
                    if !a.reserve(p, 1) {
                        return Err(format!("reserve of {p:#x} failed"));
                    }
                    kept.push((p, 1));
                }
            }
            _ => {}
        }
        Ok(kept)
    }

    /// Frees what `setup` kept busy (highest first, which keeps the busy list's `Vec` removals O(1)).
    pub fn teardown<A: RangeAlloc>(&self, a: &mut A, kept: &[(u64, u64)]) -> u64 {
        kept.iter()
            .rev()
            .filter(|&&(s, l)| a.free(s, l) != Some(l))
            .count() as u64
    }

    /// Runs `loops` loops of the scenario. `buf` is scratch space for batch scenarios.
    #[inline(never)]
    pub fn run<A: RangeAlloc>(
        &self,
        a: &mut A,
        rng: &mut Rng,
        loops: u64,
        stats: &mut Stats,
        buf: &mut Vec<(u64, u64)>,
    ) {
        match *self {
            Scenario::FixSize | Scenario::FullFit { .. } => {
                for _ in 0..loops {
                    pair(a, 1, 1, stats);
                }
            }
            Scenario::LongBusyList { holey, .. } => {
                let small = if holey { 2 } else { 1 };
                for _ in 0..loops {
                    let p1 = a.alloc(black_box(100), 1);
                    let p2 = a.alloc(black_box(small), 1);
                    stats.pairs += 2;
                    match p1 {
                        Some(s) => {
                            black_box(a.free(s, 100));
                        }
                        None => stats.failed += 1,
                    }
                    match p2 {
                        Some(s) => {
                            black_box(a.free(s, small));
                        }
                        None => stats.failed += 1,
                    }
                }
            }
            Scenario::RandomSize => {
                for _ in 0..loops {
                    let len = rng.range(1, 100);
                    pair(a, len, 1, stats);
                }
            }
            Scenario::FixAlign => {
                for _ in 0..loops {
                    pair(a, 5, 8, stats);
                }
            }
            Scenario::RandomSizeAlign => {
                for _ in 0..loops {
                    let r = rng.next_u64() & 0xff;
                    let align_bytes = 1u64 << (r % 23);
                    let align = (align_bytes >> 12).max(1);
                    pair(a, r % 10 + 1, align, stats);
                }
            }
            Scenario::AlignShift => {
                for _ in 0..loops {
                    for i in 0..64 {
                        pair(a, 1, black_box(1u64 << i), stats);
                    }
                }
            }
            Scenario::Pcpu { batch } => {
                for _ in 0..loops {
                    buf.clear();
                    for i in 0..batch {
                        if i % 256 == 255 && stats.deadline.is_some_and(|d| Instant::now() >= d) {
                            stats.truncated = true;
                            break;
                        }
                        let len = rng.range(1, 1024);
                        let align = 1u64 << rng.range(1, 11);
                        stats.pairs += 1;
                        match a.alloc(len, align) {
                            Some(s) => buf.push((s, len)),
                            None => stats.failed += 1,
                        }
                    }
                    for &(s, len) in buf.iter() {
                        black_box(a.free(s, len));
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn pair<A: RangeAlloc>(a: &mut A, len: u64, align: u64, stats: &mut Stats) {
    stats.pairs += 1;
    match a.alloc(black_box(len), black_box(align)) {
        Some(s) => {
            black_box(a.free(s, len));
        }
        None => stats.failed += 1,
    }
}

/// `15000` -> `15k`, `1000000` -> `1M`.
pub fn human(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
