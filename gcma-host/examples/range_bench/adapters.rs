//! One adapter per allocator behind a small trait, so every scenario drives all of them with the
//! same code and the same operation stream.
//!
//! Units: every allocator manages page numbers (one unit = one 4 KiB page). Alignments are in
//! pages and absolute (a start is aligned when `start % align == 0`).

use std::collections::BTreeMap;

use dbs_allocator::{Constraint, IntervalTree, NodeState, Range};
use gcma_host::range::RangeAllocator;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

/// What a scenario needs from an allocator.
pub trait RangeAlloc {
    /// Column name in the tables.
    const NAME: &'static str;

    /// An allocator managing `[base, base + len)`.
    fn create(base: u64, len: u64) -> Self;

    /// Lowest-address fit of `len` units aligned to `align`; `None` when it fails.
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64>;

    /// Marks `[start, start + len)` busy (exact placement). Used to build the initial state of a
    /// scenario in O(n log n) where the allocator offers a way to; never timed.
    fn reserve(&mut self, start: u64, len: u64) -> bool;

    /// Frees the block `[start, start + len)` that `alloc`/`reserve` handed out; returns the length
    /// the allocator says it freed (allocators that do not report it echo `len` on success).
    fn free(&mut self, start: u64, len: u64) -> Option<u64>;

    /// Free units, where the allocator can tell cheaply.
    fn free_units(&self) -> Option<u64> {
        None
    }
}

/// `gcma_host::range::RangeAllocator`: free blocks in an augmented, address-ordered tree.
pub struct Ours(RangeAllocator);

impl RangeAlloc for Ours {
    const NAME: &'static str = "ours";

    fn create(base: u64, len: u64) -> Self {
        Ours(RangeAllocator::new(base, len).expect("valid span"))
    }

    #[inline]
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        self.0.alloc(len, align).ok()
    }

    fn reserve(&mut self, start: u64, len: u64) -> bool {
        self.0.reserve(start, len).is_ok()
    }

    #[inline]
    fn free(&mut self, start: u64, _len: u64) -> Option<u64> {
        self.0.free(start).ok()
    }

    fn free_units(&self) -> Option<u64> {
        Some(self.0.free_bytes())
    }
}

impl Ours {
    /// The wrapped allocator (for the threaded run).
    pub fn into_inner(self) -> RangeAllocator {
        self.0
    }
}

/// `vm-allocator` 0.1.4 `AddressAllocator` (rust-vmm), policy `FirstMatch`. Ranges are inclusive.
pub struct VmAllocator(AddressAllocator);

impl RangeAlloc for VmAllocator {
    const NAME: &'static str = "vm-allocator";

    fn create(base: u64, len: u64) -> Self {
        VmAllocator(AddressAllocator::new(base, len).expect("valid span"))
    }

    #[inline]
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        self.0
            .allocate(len, align, AllocPolicy::FirstMatch)
            .ok()
            .map(|r| r.start())
    }

    fn reserve(&mut self, start: u64, len: u64) -> bool {
        // ExactMatch finds the containing free node by key (O(log n)) instead of the in-order walk.
        self.0
            .allocate(len, 1, AllocPolicy::ExactMatch(start))
            .is_ok()
    }

    #[inline]
    fn free(&mut self, start: u64, len: u64) -> Option<u64> {
        let last = start.checked_add(len.checked_sub(1)?)?;
        let key = RangeInclusive::new(start, last).ok()?;
        self.0.free(&key).ok().map(|()| len)
    }
}

/// `dbs-allocator` 0.1.1 `IntervalTree` (Dragonball), `Constraint` with `FirstMatch`.
pub struct DbsAllocator(IntervalTree<()>);

impl RangeAlloc for DbsAllocator {
    const NAME: &'static str = "dbs-allocator";

    fn create(base: u64, len: u64) -> Self {
        let mut tree = IntervalTree::new();
        tree.insert(Range::new(base, base + (len - 1)), None);
        DbsAllocator(tree)
    }

    #[inline]
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let constraint = Constraint::new(len)
            .align(align)
            .policy(dbs_allocator::AllocPolicy::FirstMatch);
        self.0.allocate(&constraint).map(|r| r.min)
    }

    fn reserve(&mut self, start: u64, len: u64) -> bool {
        // The crate's `allocate` with min/max bounds walks the tree in order (O(n) per call, O(n^2)
        // to set up 1M blocks), so split the containing free node by hand (O(log n)). The busy block
        // is stored as `Valued(())`, which `allocate` skips and `free` releases like `Allocated`.
        let Some(last) = start.checked_add(len.saturating_sub(1)) else {
            return false;
        };
        if len == 0 {
            return false;
        }
        let key = Range::new(start, last);
        let container = match self.0.get_superset(&key) {
            Some((r, NodeState::Free)) => *r,
            _ => return false,
        };
        self.0.delete(&container);
        if container.min < start {
            self.0.insert(Range::new(container.min, start - 1), None);
        }
        self.0.insert(key, Some(()));
        if container.max > last {
            self.0.insert(Range::new(last + 1, container.max), None);
        }
        true
    }

    #[inline]
    fn free(&mut self, start: u64, len: u64) -> Option<u64> {
        // `free` panics on ranges it never handed out; the scenarios only free what they got.
        let last = start.checked_add(len.checked_sub(1)?)?;
        self.0.free(&Range::new(start, last));
        Some(len)
    }
}

/// The pre-2019 vmalloc baseline: an address-sorted list of busy blocks; an allocation walks it
/// from the start of the space and takes the first gap that fits (the old `__get_vm_area_node` /
/// `alloc_vmap_area` list walk, without its free-area cache). Stored as a `Vec`, which scans
/// faster than the kernel's linked list, so this baseline is, if anything, flattering to itself.
pub struct BusyList {
    base: u64,
    end: u64,
    /// `(start, len)`, sorted by start, disjoint.
    busy: Vec<(u64, u64)>,
    busy_units: u64,
}

#[inline]
fn align_up(x: u64, align: u64) -> Option<u64> {
    if align == 0 || !align.is_power_of_two() {
        return None;
    }
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl RangeAlloc for BusyList {
    const NAME: &'static str = "busy-list";

    fn create(base: u64, len: u64) -> Self {
        BusyList {
            base,
            end: base + len,
            busy: Vec::new(),
            busy_units: 0,
        }
    }

    #[inline]
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let mut cursor = self.base;
        let mut pos = self.busy.len();
        let mut found = None;
        for (i, &(start, blen)) in self.busy.iter().enumerate() {
            if let Some(a) = align_up(cursor, align) {
                if a.checked_add(len).is_some_and(|e| e <= start) {
                    found = Some(a);
                    pos = i;
                    break;
                }
            }
            cursor = start + blen;
        }
        let start = match found {
            Some(a) => a,
            None => {
                let a = align_up(cursor, align)?;
                if a.checked_add(len)? > self.end {
                    return None;
                }
                a
            }
        };
        self.busy.insert(pos, (start, len));
        self.busy_units += len;
        Some(start)
    }

    fn reserve(&mut self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if len == 0 || start < self.base || end > self.end {
            return false;
        }
        let pos = self.busy.partition_point(|&(s, _)| s < start);
        if pos > 0 {
            let (ps, pl) = self.busy[pos - 1];
            if ps + pl > start {
                return false;
            }
        }
        if pos < self.busy.len() && self.busy[pos].0 < end {
            return false;
        }
        self.busy.insert(pos, (start, len));
        self.busy_units += len;
        true
    }

    #[inline]
    fn free(&mut self, start: u64, _len: u64) -> Option<u64> {
        let pos = self.busy.binary_search_by_key(&start, |&(s, _)| s).ok()?;
        let (_, len) = self.busy.remove(pos);
        self.busy_units -= len;
        Some(len)
    }

    fn free_units(&self) -> Option<u64> {
        Some(self.end - self.base - self.busy_units)
    }
}

/// Wraps an allocator and checks every answer against a shadow map of live blocks: in bounds,
/// aligned, not overlapping any live block, `free` returns the allocated length. Also keeps a hash
/// every answer so allocators can be compared op for op. Only used in the untimed check pass.
pub struct Checked<A> {
    inner: A,
    base: u64,
    end: u64,
    live: BTreeMap<u64, u64>,
    /// Broken promises seen so far (with the first one's description).
    pub violations: u64,
    /// Description of the first violation.
    pub first_violation: Option<String>,
    /// Every `alloc` answer in order (`u64::MAX` for a failure), to compare allocators op for op.
    pub trace: Vec<u64>,
}

impl<A: RangeAlloc> Checked<A> {
    fn note(&mut self, what: String) {
        self.violations += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    fn admit(&mut self, start: u64, len: u64, align: u64, op: &str) {
        let end = start.checked_add(len);
        if start < self.base || end.is_none_or(|e| e > self.end) {
            self.note(format!("{op}({len}, {align}) -> {start:#x}: out of bounds"));
        }
        if align.is_power_of_two() && !start.is_multiple_of(align) {
            self.note(format!("{op}({len}, {align}) -> {start:#x}: misaligned"));
        }
        if let Some((&ps, &pl)) = self.live.range(..=start).next_back() {
            if ps + pl > start {
                self.note(format!(
                    "{op}({len}) -> {start:#x} overlaps live [{ps:#x}, +{pl})"
                ));
            }
        }
        if let Some((&ns, &nl)) = self.live.range(start..).next() {
            if end.is_none_or(|e| ns < e) && ns != start {
                self.note(format!(
                    "{op}({len}) -> {start:#x} overlaps live [{ns:#x}, +{nl})"
                ));
            }
        }
        self.live.insert(start, len);
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Units the shadow map holds live.
    pub fn live_units(&self) -> u64 {
        self.live.values().sum()
    }
}

impl<A: RangeAlloc> RangeAlloc for Checked<A> {
    const NAME: &'static str = A::NAME;

    fn create(base: u64, len: u64) -> Self {
        Checked {
            inner: A::create(base, len),
            base,
            end: base + len,
            live: BTreeMap::new(),
            violations: 0,
            first_violation: None,
            trace: Vec::new(),
        }
    }

    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let r = self.inner.alloc(len, align);
        self.trace.push(r.unwrap_or(u64::MAX));
        if let Some(start) = r {
            self.admit(start, len, align, "alloc");
        }
        r
    }

    fn reserve(&mut self, start: u64, len: u64) -> bool {
        let ok = self.inner.reserve(start, len);
        if ok {
            self.admit(start, len, 1, "reserve");
        }
        ok
    }

    fn free(&mut self, start: u64, len: u64) -> Option<u64> {
        match self.live.remove(&start) {
            Some(l) if l == len => {}
            Some(l) => self.note(format!("shadow: {start:#x} was {l} units, freeing {len}")),
            None => self.note(format!("free of {start:#x} that is not live")),
        }
        let r = self.inner.free(start, len);
        if r != Some(len) {
            self.note(format!("free({start:#x}) returned {r:?}, allocated {len}"));
        }
        r
    }

    fn free_units(&self) -> Option<u64> {
        self.inner.free_units()
    }
}
