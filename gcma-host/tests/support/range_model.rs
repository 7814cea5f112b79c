//! The range allocator's reference model: free ranges as a sorted, coalesced list of `u128`
//! intervals, plus the allocated blocks. Shared by the property test (`tests/range_model.rs`) and
//! the coverage-guided fuzz target (`fuzz/fuzz_targets/range_allocator.rs`), so that both check
//! the allocator against the same rules.

use std::collections::BTreeMap;

use gcma_host::range::{RangeAllocator, RangeError, SEARCH_BUDGET};

pub const TOP: u128 = 1 << 64;

/// The model: free ranges as `[start, end)` in `u128`, sorted and coalesced, plus allocated blocks.
#[derive(Debug)]
pub struct Model {
    base: u128,
    end: u128,
    /// Free ranges `[start, end)`, sorted and coalesced.
    pub free: Vec<(u128, u128)>,
    /// Allocated blocks: start → length.
    pub allocated: BTreeMap<u64, u64>,
}

impl Model {
    pub fn new(base: u64, len: u64) -> Self {
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
    /// allocator may return a higher fit only after more than `SEARCH_BUDGET` rejected blocks.
    pub fn alloc_in(
        &mut self,
        got: &Result<u64, RangeError>,
        len: u64,
        align: u64,
        lo: u128,
        hi: u128,
    ) -> Result<u64, RangeError> {
        check(len, align)?;
        if lo >= hi {
            return Err(RangeError::NoSpace { len, align });
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
                assert!(
                    g > w as u128 && skipped as u32 >= SEARCH_BUDGET,
                    "allocator returned {g:#x}, lowest fit is {w:#x}, only {skipped} blocks skipped"
                );
                g as u64
            }
            _ => w,
        };
        self.take(chosen as u128, len as u128);
        Ok(chosen)
    }

    pub fn top_down(&mut self, len: u64, align: u64) -> Result<u64, RangeError> {
        check(len, align)?;
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

    pub fn reserve(&mut self, start: u64, len: u64) -> Result<(), RangeError> {
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

    pub fn free(&mut self, start: u64) -> Result<u64, RangeError> {
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

    pub fn free_list(&self) -> Vec<(u128, u128)> {
        self.free.clone()
    }
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

/// One operation on the allocator, as both the property test and the fuzz target generate them.
#[derive(Clone, Debug)]
pub enum Op {
    /// `alloc(len, align)`.
    Alloc { len: u64, align: u64 },
    /// `alloc_in(len, align, lo..hi)`.
    AllocIn {
        len: u64,
        align: u64,
        lo: u64,
        hi: u64,
    },
    /// `alloc_top_down(len, align)`.
    TopDown { len: u64, align: u64 },
    /// `reserve(at, len)`.
    Reserve { at: u64, len: u64 },
    /// Frees the `i % n`-th allocated block.
    Free { i: usize },
    /// Frees an address that may or may not start a block (interior, neighbour, garbage).
    FreeAddr { at: u64 },
}

/// The allocator's free blocks as `[start, end)` in `u128`.
pub fn free_list(a: &RangeAllocator) -> Vec<(u128, u128)> {
    a.iter_free_blocks()
        .map(|(s, l)| (s as u128, s as u128 + l as u128))
        .collect()
}

/// Applies `op` to the allocator and the model, then checks that both answered the same and that
/// their states agree (free list, free total, largest block, allocated count) and that the
/// allocator's own invariants hold. `base` is the span's base (what `Free` frees when nothing is
/// allocated).
pub fn step(a: &mut RangeAllocator, m: &mut Model, base: u64, op: &Op) -> Result<(), String> {
    let (got, want) = match *op {
        Op::Alloc { len, align } => {
            let got = a.alloc(len, align);
            let want = m.alloc_in(&got, len, align, 0, TOP);
            (got, want)
        }
        Op::AllocIn { len, align, lo, hi } => {
            let got = a.alloc_in(len, align, lo..hi);
            let want = m.alloc_in(&got, len, align, lo as u128, hi as u128);
            (got, want)
        }
        Op::TopDown { len, align } => (a.alloc_top_down(len, align), m.top_down(len, align)),
        Op::Reserve { at, len } => (
            a.reserve(at, len).map(|()| at),
            m.reserve(at, len).map(|()| at),
        ),
        Op::Free { i } => {
            let starts: Vec<u64> = m.allocated.keys().copied().collect();
            let at = if starts.is_empty() {
                base
            } else {
                starts[i % starts.len()]
            };
            (a.free(at), m.free(at))
        }
        Op::FreeAddr { at } => (a.free(at), m.free(at)),
    };
    if got != want {
        return Err(format!("{op:?}: allocator {got:?}, model {want:?}"));
    }
    a.check_invariants()
        .map_err(|e| format!("after {op:?}: invariant broken: {e}"))?;
    let (af, mf) = (free_list(a), m.free_list());
    if af != mf {
        return Err(format!(
            "after {op:?}: free lists differ: {af:x?} vs {mf:x?}"
        ));
    }
    let model_free: u128 = m.free.iter().map(|(s, e)| e - s).sum();
    if a.free_bytes() as u128 != model_free {
        return Err(format!(
            "after {op:?}: free bytes {:#x}, model {model_free:#x}",
            a.free_bytes()
        ));
    }
    let model_largest = m.free.iter().map(|(s, e)| e - s).max().unwrap_or(0);
    if a.largest_free() as u128 != model_largest {
        return Err(format!(
            "after {op:?}: largest free {:#x}, model {model_largest:#x}",
            a.largest_free()
        ));
    }
    if a.nr_allocated() != m.allocated.len() {
        return Err(format!(
            "after {op:?}: {} blocks allocated, model {}",
            a.nr_allocated(),
            m.allocated.len()
        ));
    }
    Ok(())
}
