//! Per-page state of the pool: a flat array indexed by pool page number (no hashing on the grant
//! path), with four intrusive doubly-linked lists threaded through it.
//!
//! Every page is on exactly one list, or on none when granted:
//! * `FreeZero`: not granted, holds no data, known to read as zero (a grant takes it for free);
//! * `FreeDirty`: not granted, holds no data, may hold old bytes (a grant must zero it);
//! * `Cleancache` / `Frontswap`: holds a second-class page, in least-recently-used order
//!   (head = oldest).
//!
//! The owner of a second-class page is stored beside it ([`Tenant`]) so that eviction reaches the
//! store's index without searching.

use crate::api::FrontswapKey;

const NIL: u32 = u32::MAX;

/// A cache prefetch hint for `r`; does nothing where not supported.
#[inline]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it never faults
    // and has no architectural effect; `r` is a valid reference anyway.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Which list a page is on, i.e. its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Free and known to read as zero.
    FreeZero = 0,
    /// Free, contents unknown.
    FreeDirty = 1,
    /// Holds a cleancache page.
    Cleancache = 2,
    /// Holds a frontswap page.
    Frontswap = 3,
    /// Part of a contiguous grant (on no list).
    Granted = 4,
}

const NR_LISTS: usize = 4;

/// Who owns a second-class page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenant {
    /// Nobody (free or granted page).
    None,
    /// A cleancache page: object slot in the cleancache store, page index in the object.
    Cleancache {
        /// Object slot (see `cleancache::CleancacheStore`).
        obj: u32,
        /// Page index inside the object.
        index: u32,
    },
    /// A frontswap page of `client`.
    Frontswap {
        /// Owning client id.
        client: u32,
        /// Frontswap key.
        key: FrontswapKey,
    },
}

#[derive(Clone, Copy, Debug)]
struct PageMeta {
    prev: u32,
    next: u32,
    state: PageState,
    tenant: Tenant,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: u64,
}

/// The page table. See the [module documentation](self).
#[derive(Debug)]
pub struct PageTable {
    meta: Vec<PageMeta>,
    lists: [List; NR_LISTS],
    granted: u64,
}

impl PageTable {
    /// A table of `nr_pages` pages, all free and zero.
    pub fn new(nr_pages: u32) -> Self {
        let n = nr_pages as usize;
        let mut meta = Vec::with_capacity(n);
        for i in 0..nr_pages {
            meta.push(PageMeta {
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == nr_pages { NIL } else { i + 1 },
                state: PageState::FreeZero,
                tenant: Tenant::None,
            });
        }
        let empty = List {
            head: NIL,
            tail: NIL,
            len: 0,
        };
        let mut lists = [empty; NR_LISTS];
        lists[PageState::FreeZero as usize] = List {
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { nr_pages - 1 },
            len: n as u64,
        };
        PageTable {
            meta,
            lists,
            granted: 0,
        }
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Whether the table has no pages (never true for a pool).
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// State of `page`.
    pub fn state(&self, page: u32) -> PageState {
        self.meta[page as usize].state
    }

    /// Owner of `page`.
    pub fn tenant(&self, page: u32) -> Tenant {
        self.meta[page as usize].tenant
    }

    /// Number of pages in `state`.
    pub fn count(&self, state: PageState) -> u64 {
        match state {
            PageState::Granted => self.granted,
            s => self.lists[s as usize].len,
        }
    }

    /// Oldest page of a list, if any.
    pub fn head(&self, state: PageState) -> Option<u32> {
        debug_assert!(state != PageState::Granted);
        let h = self.lists[state as usize].head;
        (h != NIL).then_some(h)
    }

    /// Newest page of a list, if any.
    pub fn tail(&self, state: PageState) -> Option<u32> {
        debug_assert!(state != PageState::Granted);
        let t = self.lists[state as usize].tail;
        (t != NIL).then_some(t)
    }

    fn unlink(&mut self, page: u32) {
        let m = self.meta[page as usize];
        if m.state == PageState::Granted {
            self.granted -= 1;
            return;
        }
        let l = &mut self.lists[m.state as usize];
        l.len -= 1;
        if m.prev == NIL {
            l.head = m.next;
        } else {
            self.meta[m.prev as usize].next = m.next;
        }
        if m.next == NIL {
            l.tail = m.prev;
        } else {
            self.meta[m.next as usize].prev = m.prev;
        }
    }

    fn push_tail(&mut self, page: u32, state: PageState) {
        if state == PageState::Granted {
            self.granted += 1;
            let m = &mut self.meta[page as usize];
            m.prev = NIL;
            m.next = NIL;
            m.state = state;
            return;
        }
        let l = &mut self.lists[state as usize];
        let old_tail = l.tail;
        l.tail = page;
        if old_tail == NIL {
            l.head = page;
        }
        l.len += 1;
        if old_tail != NIL {
            self.meta[old_tail as usize].next = page;
        }
        let m = &mut self.meta[page as usize];
        m.prev = old_tail;
        m.next = NIL;
        m.state = state;
    }

    fn push_head(&mut self, page: u32, state: PageState) {
        debug_assert!(state != PageState::Granted);
        let l = &mut self.lists[state as usize];
        let old_head = l.head;
        l.head = page;
        if old_head == NIL {
            l.tail = page;
        }
        l.len += 1;
        if old_head != NIL {
            self.meta[old_head as usize].prev = page;
        }
        let m = &mut self.meta[page as usize];
        m.prev = NIL;
        m.next = old_head;
        m.state = state;
    }

    /// Moves `page` to the head (oldest end) of a free list, so that it is the last one taken.
    pub fn set_free_head(&mut self, page: u32, state: PageState) {
        debug_assert!(matches!(state, PageState::FreeZero | PageState::FreeDirty));
        self.unlink(page);
        self.push_head(page, state);
        self.meta[page as usize].tenant = Tenant::None;
    }

    /// Moves `page` to the tail (newest end) of the list for `state`, setting its tenant.
    pub fn set(&mut self, page: u32, state: PageState, tenant: Tenant) {
        self.unlink(page);
        self.push_tail(page, state);
        self.meta[page as usize].tenant = tenant;
    }

    /// Asks the CPU to start fetching what unlinking `page` will touch (its list neighbours,
    /// which on an LRU list lie anywhere in the table).
    #[inline]
    pub fn prefetch_unlink(&self, page: u32) {
        if let Some(m) = self.meta.get(page as usize) {
            for n in [m.prev, m.next] {
                if let Some(x) = self.meta.get(n as usize) {
                    prefetch(x);
                }
            }
        }
    }

    /// Marks `page` most recently used on its list.
    pub fn touch(&mut self, page: u32) {
        let m = self.meta[page as usize];
        if self.lists[m.state as usize].tail != page {
            self.unlink(page);
            self.push_tail(page, m.state);
        }
    }

    /// Checks that the lists are well formed and agree with the states; used by the pool's
    /// consistency check.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = 0u64;
        for s in [
            PageState::FreeZero,
            PageState::FreeDirty,
            PageState::Cleancache,
            PageState::Frontswap,
        ] {
            let l = self.lists[s as usize];
            let mut prev = NIL;
            let mut cur = l.head;
            let mut n = 0u64;
            while cur != NIL {
                let m = self.meta[cur as usize];
                if m.state != s || m.prev != prev {
                    return Err(format!("page {cur} badly linked on list {s:?}"));
                }
                let tenant_ok = match s {
                    PageState::Cleancache => matches!(m.tenant, Tenant::Cleancache { .. }),
                    PageState::Frontswap => matches!(m.tenant, Tenant::Frontswap { .. }),
                    _ => m.tenant == Tenant::None,
                };
                if !tenant_ok {
                    return Err(format!(
                        "page {cur} in state {s:?} has tenant {:?}",
                        m.tenant
                    ));
                }
                n += 1;
                if n > self.len() {
                    return Err(format!("cycle on list {s:?}"));
                }
                prev = cur;
                cur = m.next;
            }
            if prev != l.tail || n != l.len {
                return Err(format!("list {s:?}: tail or length wrong"));
            }
            seen += n;
        }
        let granted = self
            .meta
            .iter()
            .filter(|m| m.state == PageState::Granted)
            .count() as u64;
        if granted != self.granted || seen + granted != self.len() {
            return Err(format!(
                "page counts do not add up: {seen} listed + {granted} granted (counter {}) != {}",
                self.granted,
                self.len()
            ));
        }
        Ok(())
    }
}
