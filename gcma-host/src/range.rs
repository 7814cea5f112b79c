//! A range allocator over a span of `u64` addresses, built the way Linux vmalloc tracks free space
//! since 2019: the *free* blocks live in an address-ordered balanced tree, and every node carries the
//! largest free block of its subtree, so the lowest-addressed block that can hold a request is found
//! by one descent, in O(log n).
//!
//! We write our own rather than use a crate: the rust-vmm `vm-allocator` (used by Firecracker) and
//! Dragonball's `dbs-allocator` keep an AVL tree of every node without a subtree maximum and search
//! it in order, O(n); Cloud Hypervisor and crosvm keep `BTreeMap`/`BTreeSet`s searched linearly. A
//! pool that must grant contiguous memory with bounded latency needs the logarithmic search
//! (`examples/range_bench.rs` measures the difference).
//!
//! One file on purpose: the arena tree, its augmentation and the cut/merge code all maintain the
//! same invariants (`check_invariants`), and splitting them would spread one proof over several
//! places.
//!
//! # Structure
//! * Free blocks: an AVL tree in an arena (`Vec` of nodes linked by `u32` indices; no `unsafe`),
//!   ordered by start. Each node stores `max_len`, the largest `len` in its subtree.
//! * Allocated blocks: a hash map from start to length, so that [`RangeAllocator::free`] can
//!   validate its argument (double frees, frees of unknown or interior addresses are errors, not
//!   silent corruption) in O(1); an ordered map here cost as much as the whole tree search.
//!
//! Cutting a request out of a free block follows vmalloc's four fit types: the whole block (FL:
//! remove the node), the left edge (LE: move the node's start), the right edge (RE: shrink the node),
//! or the middle (NE: shrink the node to the left piece and insert the right piece). Freeing merges
//! with the previous and/or next free block, or inserts a new node.
//!
//! Alignment is absolute (`start % align == 0`), not relative to the span's base.
//!
//! # Cost
//! `alloc`, `alloc_in`, `reserve` and `free` are O(log n) in the number of free blocks. With an
//! alignment above 1 a free block can be long enough and still unable to hold an aligned start; the
//! search skips such blocks and returns the exact lowest fit as long as it skips at most
//! [`SEARCH_BUDGET`] of them. Past that it takes the lowest block of at least `len + align - 1`
//! (vmalloc's rule: always fits, one more O(log n) descent), and only if no such block exists does
//! it go on skipping until it finds the exact fit. So an allocation never fails when some free
//! block can hold it, and the cost stays O(log n) except when nothing but tight, misaligned holes
//! is left. `alloc_top_down` always returns the exact highest fit, O(log n + k) with k the skipped
//! blocks.
//!
//! # Example
//! ```
//! use gcma_host::range::RangeAllocator;
//!
//! let mut a = RangeAllocator::new(0x1000, 0x10000).unwrap();
//! let x = a.alloc(0x100, 0x1000).unwrap();
//! assert_eq!(x, 0x1000);
//! let y = a.alloc(0x100, 1).unwrap();
//! assert_eq!(y, 0x1100);
//! assert_eq!(a.free(x).unwrap(), 0x100);
//! assert_eq!(a.free_bytes(), 0x10000 - 0x100);
//! ```
//!
//! Kept as one unit although it is long: the tree's balancing, the augmented maxima and the
//! searches that rely on them must change together; the invariant checker sits beside them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

/// Errors of the range allocator. Every error leaves the allocator unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A length of zero was given.
    #[error("length must be greater than zero")]
    ZeroLength,
    /// The alignment is zero or not a power of two.
    #[error("alignment {0:#x} is not a power of two")]
    InvalidAlignment(u64),
    /// `start + len` does not fit in the 64-bit address space.
    #[error("range at {start:#x} of length {len:#x} overflows the 64-bit address space")]
    Overflow {
        /// Start of the range.
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range is not inside the allocator's span.
    #[error("range at {start:#x} of length {len:#x} is outside the managed span")]
    OutOfSpan {
        /// Start of the range.
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// No free block can hold the request.
    #[error("no free range of length {len:#x} aligned to {align:#x}")]
    NoSpace {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// Part of the range to reserve is already allocated.
    #[error("range at {start:#x} of length {len:#x} is not entirely free")]
    Busy {
        /// Start of the range.
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// No allocated block starts at this address (never allocated, already freed, or an interior
    /// address of a block).
    #[error("no allocated block starts at {0:#x}")]
    NotAllocated(u64),
    /// A block being freed overlaps a free block: the allocator's own bookkeeping is broken. Reported
    /// rather than hidden, and nothing is changed.
    #[error("freeing {start:#x}+{len:#x} overlaps a free block: allocator state is inconsistent")]
    Overlap {
        /// Start of the block being freed.
        start: u64,
        /// Its length.
        len: u64,
    },
}

const NIL: u32 = u32::MAX;

/// How many free blocks an aligned search may reject (long enough, but no aligned start fits)
/// before it falls back to vmalloc's `len + align - 1` rule. See [`RangeAllocator::alloc`].
pub const SEARCH_BUDGET: u32 = 64;

/// Outcome of [`RangeAllocator::first_fit`].
enum Search {
    Found(u32, u64),
    NotFound,
    /// The budget ran out at the block starting here; every block below it was rejected.
    GaveUp(u64),
}

#[derive(Clone, Copy, Debug)]
struct Node {
    start: u64,
    len: u64,
    /// Largest `len` in this node's subtree.
    max_len: u64,
    left: u32,
    right: u32,
    height: u8,
}

/// End (exclusive) of `[start, start + len)` as `u128`, so that a block ending at 2^64 is representable.
fn end(start: u64, len: u64) -> u128 {
    start as u128 + len as u128
}

/// Lowest `align`-aligned start of a `len`-long range inside `[lo, hi)`, if any.
fn fit_low(lo: u64, hi: u128, len: u64, align: u64) -> Option<u64> {
    let mask = align - 1;
    let s = (lo as u128 + mask as u128) & !(mask as u128);
    (s + len as u128 <= hi).then_some(s as u64)
}

/// Highest `align`-aligned start of a `len`-long range inside `[lo, hi)`, if any.
fn fit_high(lo: u64, hi: u128, len: u64, align: u64) -> Option<u64> {
    let top = hi.checked_sub(len as u128)?;
    let s = top & !((align - 1) as u128);
    (s >= lo as u128).then_some(s as u64)
}

/// Allocator of ranges inside `[base, base + len)`. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    base: u64,
    span_len: u64,
    nodes: Vec<Node>,
    spare: Vec<u32>,
    root: u32,
    allocated: HashMap<u64, u64, BuildHasherDefault<StartHasher>>,
    free_bytes: u64,
    nr_free_blocks: usize,
}

impl RangeAllocator {
    /// Creates an allocator managing `[base, base + len)`, all free. `len` must be non-zero and the
    /// span must end at or below 2^64.
    pub fn new(base: u64, len: u64) -> Result<Self, RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        if end(base, len) > 1u128 << 64 {
            return Err(RangeError::Overflow { start: base, len });
        }
        let mut a = RangeAllocator {
            base,
            span_len: len,
            nodes: Vec::new(),
            spare: Vec::new(),
            root: NIL,
            allocated: HashMap::default(),
            free_bytes: 0,
            nr_free_blocks: 0,
        };
        a.insert_free(base, len);
        Ok(a)
    }

    /// First address of the managed span.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length of the managed span.
    pub fn span_len(&self) -> u64 {
        self.span_len
    }

    /// Allocates `len` units at the lowest address aligned to `align` (a power of two). Succeeds
    /// whenever some free block can hold the aligned range; the address is the lowest possible one
    /// unless more than [`SEARCH_BUDGET`] free blocks below it were too misaligned (see the module
    /// documentation).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, RangeError> {
        self.alloc_window(len, align, 0, 1u128 << 64)
    }

    /// Allocates `len` units at the lowest address aligned to `align` such that the whole range lies
    /// inside `within`.
    pub fn alloc_in(
        &mut self,
        len: u64,
        align: u64,
        within: Range<u64>,
    ) -> Result<u64, RangeError> {
        self.alloc_window(len, align, within.start, within.end as u128)
    }

    fn alloc_window(&mut self, len: u64, align: u64, lo: u64, hi: u128) -> Result<u64, RangeError> {
        Self::check_request(len, align)?;
        if (lo as u128) >= hi {
            return Err(RangeError::NoSpace { len, align });
        }
        // The search visits blocks starting at or after `from`: the block holding `lo`, if any, and
        // every block above it.
        let from = if lo <= self.base {
            0
        } else {
            match self.floor(lo) {
                Some(n) if self.block_end(n) > lo as u128 => self.nodes[n as usize].start,
                _ => lo,
            }
        };
        let fit = |s: u64, l: u64| fit_low(s.max(lo), end(s, l).min(hi), len, align);
        let mut budget = SEARCH_BUDGET;
        let found = match self.first_fit(self.root, from, hi, len, &fit, &mut budget) {
            Search::Found(n, s) => Some((n, s)),
            Search::NotFound => None,
            Search::GaveUp(at) => {
                // Many blocks were long enough yet could not hold the aligned range. A block of
                // `len + align - 1` always can: take the lowest such block (vmalloc's rule, one
                // O(log n) descent), and only when there is none keep searching exactly.
                let mut unlimited = u32::MAX;
                let guaranteed = len.checked_add(align - 1).and_then(|l2| {
                    match self.first_fit(self.root, at, hi, l2, &fit, &mut unlimited) {
                        Search::Found(n, s) => Some((n, s)),
                        _ => None,
                    }
                });
                guaranteed.or_else(|| {
                    match self.first_fit(self.root, at, hi, len, &fit, &mut unlimited) {
                        Search::Found(n, s) => Some((n, s)),
                        _ => None,
                    }
                })
            }
        };
        match found {
            Some((node, start)) => {
                self.cut(node, start, len);
                self.allocated.insert(start, len);
                Ok(start)
            }
            None => Err(RangeError::NoSpace { len, align }),
        }
    }

    /// Allocates `len` units at the highest address aligned to `align`.
    pub fn alloc_top_down(&mut self, len: u64, align: u64) -> Result<u64, RangeError> {
        Self::check_request(len, align)?;
        let found = self.last_fit(self.root, len, &|s, l| fit_high(s, end(s, l), len, align));
        match found {
            Some((node, start)) => {
                self.cut(node, start, len);
                self.allocated.insert(start, len);
                Ok(start)
            }
            None => Err(RangeError::NoSpace { len, align }),
        }
    }

    /// Marks exactly `[start, start + len)` allocated. Fails if any part of it is outside the span or
    /// not free.
    pub fn reserve(&mut self, start: u64, len: u64) -> Result<(), RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        let e = end(start, len);
        if e > 1u128 << 64 {
            return Err(RangeError::Overflow { start, len });
        }
        if start < self.base || e > self.span_end() {
            return Err(RangeError::OutOfSpan { start, len });
        }
        match self.floor(start) {
            Some(n) if end(self.nodes[n as usize].start, self.nodes[n as usize].len) >= e => {
                self.cut(n, start, len);
                self.allocated.insert(start, len);
                Ok(())
            }
            _ => Err(RangeError::Busy { start, len }),
        }
    }

    /// Frees the allocated block that starts at `start`; returns its length.
    pub fn free(&mut self, start: u64) -> Result<u64, RangeError> {
        let len = self
            .allocated
            .remove(&start)
            .ok_or(RangeError::NotAllocated(start))?;
        let (prev, next) = self.neighbours(start);
        let e = end(start, len);
        let prev_touch = match prev {
            Some(p) => {
                let pe = end(self.nodes[p as usize].start, self.nodes[p as usize].len);
                if pe > start as u128 {
                    self.allocated.insert(start, len);
                    return Err(RangeError::Overlap { start, len });
                }
                pe == start as u128
            }
            None => false,
        };
        let next_touch = match next {
            Some(n) => {
                let ns = self.nodes[n as usize].start as u128;
                if ns < e {
                    self.allocated.insert(start, len);
                    return Err(RangeError::Overlap { start, len });
                }
                ns == e
            }
            None => false,
        };
        match (prev, next, prev_touch, next_touch) {
            (Some(p), Some(n), true, true) => {
                // Unlink "next" first, then grow "prev" over the freed block and next.
                let (ns, nl) = (self.nodes[n as usize].start, self.nodes[n as usize].len);
                self.root = self.remove(self.root, ns);
                self.nr_free_blocks -= 1;
                let ps = self.nodes[p as usize].start;
                self.root = self.update(self.root, ps, &mut |node| node.len += len + nl);
            }
            (Some(p), _, true, false) => {
                let ps = self.nodes[p as usize].start;
                self.root = self.update(self.root, ps, &mut |node| node.len += len);
            }
            (_, Some(n), false, true) => {
                let ns = self.nodes[n as usize].start;
                self.root = self.update(self.root, ns, &mut |node| {
                    node.start = start;
                    node.len += len;
                });
            }
            _ => {
                self.root = self.insert(self.root, start, len);
                self.nr_free_blocks += 1;
            }
        }
        self.free_bytes += len;
        Ok(len)
    }

    /// Total free units.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Length of the largest free block (0 when everything is allocated).
    pub fn largest_free(&self) -> u64 {
        self.max_len(self.root)
    }

    /// Number of free blocks.
    pub fn nr_free_blocks(&self) -> usize {
        self.nr_free_blocks
    }

    /// Number of allocated blocks.
    pub fn nr_allocated(&self) -> usize {
        self.allocated.len()
    }

    /// Length of the allocated block starting at `start`, if there is one.
    pub fn allocated_len(&self, start: u64) -> Option<u64> {
        self.allocated.get(&start).copied()
    }

    /// Free blocks in address order. A block ending at 2^64 is reported with `end == u64::MAX`
    /// (the one address that `Range<u64>` cannot name is left out).
    pub fn iter_free(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.iter_free_blocks()
            .map(|(s, l)| s..end(s, l).min(u64::MAX as u128) as u64)
    }

    /// Free blocks in address order, as `(start, len)`: unlike [`Self::iter_free`] this can name a
    /// block that ends at 2^64.
    pub fn iter_free_blocks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        FreeIter {
            alloc: self,
            stack: Vec::new(),
            cur: self.root,
        }
    }

    /// Allocated blocks in address order, as `(start, len)`. O(n log n): for diagnostics.
    pub fn iter_allocated(&self) -> impl Iterator<Item = (u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.allocated.iter().map(|(&s, &l)| (s, l)).collect();
        v.sort_unstable();
        v.into_iter()
    }

    /// Checks every internal invariant: tree order and balance, the augmented maximum of every node,
    /// free blocks disjoint and fully merged, free + allocated covering the span exactly. For tests
    /// and debugging; O(n).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_node(self.root, None, None)?;
        let mut blocks: Vec<(u64, u64, bool)> =
            self.iter_free_blocks().map(|(s, l)| (s, l, true)).collect();
        if blocks.len() != self.nr_free_blocks {
            return Err(format!(
                "free block count {} but {} in the tree",
                self.nr_free_blocks,
                blocks.len()
            ));
        }
        for w in blocks.windows(2) {
            if end(w[0].0, w[0].1) >= w[1].0 as u128 {
                return Err(format!(
                    "free blocks {:?} and {:?} touch or overlap",
                    w[0], w[1]
                ));
            }
        }
        let free_sum: u128 = blocks.iter().map(|b| b.1 as u128).sum();
        if free_sum != self.free_bytes as u128 {
            return Err(format!(
                "free_bytes {} but blocks sum {}",
                self.free_bytes, free_sum
            ));
        }
        blocks.extend(self.allocated.iter().map(|(&s, &l)| (s, l, false)));
        blocks.sort_unstable();
        let mut at = self.base as u128;
        for (s, l, _) in &blocks {
            if *l == 0 || *s as u128 != at {
                return Err(format!(
                    "gap or overlap at {at:#x}: next block {s:#x}+{l:#x}"
                ));
            }
            at = end(*s, *l);
        }
        if at != self.span_end() {
            return Err(format!(
                "blocks end at {at:#x}, span ends at {:#x}",
                self.span_end()
            ));
        }
        Ok(())
    }

    fn check_node(&self, n: u32, lo: Option<u64>, hi: Option<u64>) -> Result<(u64, u8), String> {
        if n == NIL {
            return Ok((0, 0));
        }
        let node = &self.nodes[n as usize];
        if lo.is_some_and(|lo| node.start <= lo) || hi.is_some_and(|hi| node.start >= hi) {
            return Err(format!("node {:#x} out of order", node.start));
        }
        let (lm, lh) = self.check_node(node.left, lo, Some(node.start))?;
        let (rm, rh) = self.check_node(node.right, Some(node.start), hi)?;
        let max = node.len.max(lm).max(rm);
        if max != node.max_len {
            return Err(format!(
                "node {:#x}: max_len {} but subtree max {}",
                node.start, node.max_len, max
            ));
        }
        if lh.abs_diff(rh) > 1 || node.height != lh.max(rh) + 1 {
            return Err(format!(
                "node {:#x}: unbalanced or wrong height",
                node.start
            ));
        }
        Ok((max, node.height))
    }

    fn block_end(&self, n: u32) -> u128 {
        end(self.nodes[n as usize].start, self.nodes[n as usize].len)
    }

    fn span_end(&self) -> u128 {
        end(self.base, self.span_len)
    }

    fn check_request(len: u64, align: u64) -> Result<(), RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(RangeError::InvalidAlignment(align));
        }
        Ok(())
    }

    /// Carves `[start, start + len)` out of free node `n`, which must contain it (FL/LE/RE/NE).
    fn cut(&mut self, n: u32, start: u64, len: u64) {
        let Node {
            start: bs, len: bl, ..
        } = self.nodes[n as usize];
        let (be, e) = (end(bs, bl), end(start, len));
        debug_assert!(bs <= start && e <= be);
        if start == bs && e == be {
            // FL: the whole block.
            self.root = self.remove(self.root, bs);
            self.nr_free_blocks -= 1;
        } else if start == bs {
            // LE: cut the left edge; the node's key grows but stays below the next block.
            self.root = self.update(self.root, bs, &mut |node| {
                node.start += len;
                node.len -= len;
            });
        } else if e == be {
            // RE: cut the right edge.
            self.root = self.update(self.root, bs, &mut |node| node.len -= len);
        } else {
            // NE: keep the left piece in the node, insert the right piece.
            self.root = self.update(self.root, bs, &mut |node| node.len = start - bs);
            let rs = e as u64;
            self.root = self.insert(self.root, rs, (be - e) as u64);
            self.nr_free_blocks += 1;
        }
        self.free_bytes -= len;
    }

    /// Lowest-addressed block among those starting at or after `from` and below `hi` for which `fit`
    /// finds a start; subtrees whose largest block is shorter than `len` are skipped. Each block that
    /// is long enough but rejected by `fit` costs one unit of `budget`; at zero the search gives up
    /// and says where.
    fn first_fit<F: Fn(u64, u64) -> Option<u64>>(
        &self,
        n: u32,
        from: u64,
        hi: u128,
        len: u64,
        fit: &F,
        budget: &mut u32,
    ) -> Search {
        if n == NIL {
            return Search::NotFound;
        }
        let node = &self.nodes[n as usize];
        if node.max_len < len {
            return Search::NotFound;
        }
        if node.start > from {
            match self.first_fit(node.left, from, hi, len, fit, budget) {
                Search::NotFound => {}
                r => return r,
            }
        }
        if (node.start as u128) >= hi {
            return Search::NotFound;
        }
        if node.start >= from && node.len >= len {
            if let Some(s) = fit(node.start, node.len) {
                return Search::Found(n, s);
            }
            *budget = budget.saturating_sub(1);
            if *budget == 0 {
                return Search::GaveUp(node.start);
            }
        }
        self.first_fit(node.right, from, hi, len, fit, budget)
    }

    /// Highest-addressed block for which `fit` finds a start.
    fn last_fit<F: Fn(u64, u64) -> Option<u64>>(
        &self,
        n: u32,
        len: u64,
        fit: &F,
    ) -> Option<(u32, u64)> {
        if n == NIL {
            return None;
        }
        let node = &self.nodes[n as usize];
        if node.max_len < len {
            return None;
        }
        if let Some(r) = self.last_fit(node.right, len, fit) {
            return Some(r);
        }
        if node.len >= len {
            if let Some(s) = fit(node.start, node.len) {
                return Some((n, s));
            }
        }
        self.last_fit(node.left, len, fit)
    }

    /// The free block with the largest start ≤ `key`.
    fn floor(&self, key: u64) -> Option<u32> {
        let (mut n, mut best) = (self.root, None);
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start <= key {
                best = Some(n);
                n = node.right;
            } else {
                n = node.left;
            }
        }
        best
    }

    /// The free blocks just below and just above `key` (which is not itself a free block's start).
    fn neighbours(&self, key: u64) -> (Option<u32>, Option<u32>) {
        let (mut n, mut prev, mut next) = (self.root, None, None);
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start < key {
                prev = Some(n);
                n = node.right;
            } else {
                next = Some(n);
                n = node.left;
            }
        }
        (prev, next)
    }

    // ---- AVL tree over the arena; every structural change re-computes height and max_len. ----

    fn height(&self, n: u32) -> u8 {
        if n == NIL {
            0
        } else {
            self.nodes[n as usize].height
        }
    }

    fn max_len(&self, n: u32) -> u64 {
        if n == NIL {
            0
        } else {
            self.nodes[n as usize].max_len
        }
    }

    fn fix(&mut self, n: u32) {
        let Node {
            left, right, len, ..
        } = self.nodes[n as usize];
        let height = self.height(left).max(self.height(right)) + 1;
        let max_len = len.max(self.max_len(left)).max(self.max_len(right));
        let node = &mut self.nodes[n as usize];
        node.height = height;
        node.max_len = max_len;
    }

    fn rotate_right(&mut self, n: u32) -> u32 {
        let l = self.nodes[n as usize].left;
        self.nodes[n as usize].left = self.nodes[l as usize].right;
        self.nodes[l as usize].right = n;
        self.fix(n);
        self.fix(l);
        l
    }

    fn rotate_left(&mut self, n: u32) -> u32 {
        let r = self.nodes[n as usize].right;
        self.nodes[n as usize].right = self.nodes[r as usize].left;
        self.nodes[r as usize].left = n;
        self.fix(n);
        self.fix(r);
        r
    }

    fn balance(&mut self, n: u32) -> u32 {
        self.fix(n);
        let (l, r) = (self.nodes[n as usize].left, self.nodes[n as usize].right);
        let (hl, hr) = (self.height(l), self.height(r));
        if hl > hr + 1 {
            let (ll, lr) = (self.nodes[l as usize].left, self.nodes[l as usize].right);
            if self.height(lr) > self.height(ll) {
                self.nodes[n as usize].left = self.rotate_left(l);
            }
            self.rotate_right(n)
        } else if hr > hl + 1 {
            let (rl, rr) = (self.nodes[r as usize].left, self.nodes[r as usize].right);
            if self.height(rl) > self.height(rr) {
                self.nodes[n as usize].right = self.rotate_right(r);
            }
            self.rotate_left(n)
        } else {
            n
        }
    }

    fn new_node(&mut self, start: u64, len: u64) -> u32 {
        let node = Node {
            start,
            len,
            max_len: len,
            left: NIL,
            right: NIL,
            height: 1,
        };
        match self.spare.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                // Node indices are u32: 2^32 - 1 free blocks would need more than 2^32 allocated
                // blocks between them, far beyond any span this allocator manages in memory.
                let i = u32::try_from(self.nodes.len()).expect("more than 2^32 free blocks");
                self.nodes.push(node);
                i
            }
        }
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.root = self.insert(self.root, start, len);
        self.nr_free_blocks += 1;
        self.free_bytes += len;
    }

    fn insert(&mut self, n: u32, start: u64, len: u64) -> u32 {
        if n == NIL {
            return self.new_node(start, len);
        }
        if start < self.nodes[n as usize].start {
            let l = self.insert(self.nodes[n as usize].left, start, len);
            self.nodes[n as usize].left = l;
        } else {
            let r = self.insert(self.nodes[n as usize].right, start, len);
            self.nodes[n as usize].right = r;
        }
        self.balance(n)
    }

    /// Applies `f` to the node whose start is `key` (which must exist and must keep its order among
    /// its neighbours), re-computing the augmented values on the path.
    fn update(&mut self, n: u32, key: u64, f: &mut dyn FnMut(&mut Node)) -> u32 {
        debug_assert!(n != NIL, "update of a missing key");
        if n == NIL {
            return n;
        }
        let s = self.nodes[n as usize].start;
        if key < s {
            let l = self.update(self.nodes[n as usize].left, key, f);
            self.nodes[n as usize].left = l;
        } else if key > s {
            let r = self.update(self.nodes[n as usize].right, key, f);
            self.nodes[n as usize].right = r;
        } else {
            f(&mut self.nodes[n as usize]);
        }
        self.fix(n);
        n
    }

    fn remove(&mut self, n: u32, key: u64) -> u32 {
        debug_assert!(n != NIL, "remove of a missing key");
        if n == NIL {
            return n;
        }
        let s = self.nodes[n as usize].start;
        if key < s {
            let l = self.remove(self.nodes[n as usize].left, key);
            self.nodes[n as usize].left = l;
        } else if key > s {
            let r = self.remove(self.nodes[n as usize].right, key);
            self.nodes[n as usize].right = r;
        } else {
            let Node { left, right, .. } = self.nodes[n as usize];
            self.spare.push(n);
            if left == NIL {
                return right;
            }
            if right == NIL {
                return left;
            }
            let (new_right, min) = self.remove_min(right);
            self.nodes[min as usize].left = left;
            self.nodes[min as usize].right = new_right;
            return self.balance(min);
        }
        self.balance(n)
    }

    /// Detaches the smallest node of subtree `n`; returns (new subtree root, detached node).
    fn remove_min(&mut self, n: u32) -> (u32, u32) {
        let left = self.nodes[n as usize].left;
        if left == NIL {
            return (self.nodes[n as usize].right, n);
        }
        let (new_left, min) = self.remove_min(left);
        self.nodes[n as usize].left = new_left;
        (self.balance(n), min)
    }
}

/// Hasher for block starts: one multiply and a fold of the high half into the low half, so that
/// aligned starts (many low zero bits) still spread over the table. Starts are not attacker-chosen
/// keys in a way that matters here: a collision costs time, never correctness.
#[derive(Default)]
struct StartHasher(u64);

impl Hasher for StartHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, k: u64) {
        let h = (k ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// In-order walk of the free tree.
struct FreeIter<'a> {
    alloc: &'a RangeAllocator,
    stack: Vec<u32>,
    cur: u32,
}

impl Iterator for FreeIter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        while self.cur != NIL {
            self.stack.push(self.cur);
            self.cur = self.alloc.nodes[self.cur as usize].left;
        }
        let n = self.stack.pop()?;
        let node = &self.alloc.nodes[n as usize];
        self.cur = node.right;
        Some((node.start, node.len))
    }
}
