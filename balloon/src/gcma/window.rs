//! The grant window: where a guest's contiguous grants appear in its guest-physical address space,
//! and the one record of which grant is mapped where.
//!
//! A [`GrantWindow`] owns the guest-physical → grant table of one guest. It is built once, bound to
//! the pool it grants from and to a [`WindowMapper`] that makes pool memory appear in the window
//! (the VMM's KVM mapping; over vhost-user, a request to the VMM that owns the guest). A grant
//! takes three steps, cheapest first, and undoes the cheap ones when a later one fails:
//!
//! 1. reserve guest-physical space in the window (its own range allocator; nothing else changes);
//! 2. ask the pool for the run (this evicts tenants' pages and zeroes; done only once the grant
//!    has somewhere to go);
//! 3. install the mapping.
//!
//! Freeing unmaps first and returns the pages to the pool only once the guest has lost access. A
//! grant whose unmap fails stays granted (to a retired pool client if its device was reset) and
//! is *stuck*: it keeps its window space, is counted, and is retried on later window operations;
//! the pool never hands its pages to anyone else meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gcma_host::api::{ClientId, ContigGrant, GcmaBackend, PoolError, PAGE_SIZE};
use gcma_host::range::RangeAllocator;

/// Where a grant window lies in guest-physical address space (shared-memory region 0 of the
/// device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRange {
    /// First guest-physical address of the window.
    pub gpa: u64,
    /// Length of the window in bytes (a multiple of the page size).
    pub len_bytes: u64,
}

impl WindowRange {
    /// Length in pages.
    pub fn nr_pages(&self) -> u64 {
        self.len_bytes / PAGE_SIZE as u64
    }
}

/// Makes pool memory appear in, and disappear from, one guest's grant window.
///
/// Offsets are bytes from the start of the window and from the start of the pool's memory; both
/// are page-aligned, and `len` is a non-zero multiple of the page size. [`GrantWindow`] calls
/// `map` only on window space nothing is mapped in, and `unmap` only on exactly what one `map`
/// mapped.
pub trait WindowMapper: Send + Sync {
    /// Makes `len` bytes of the window at `offset` show the pool's memory at `pool_offset`.
    fn map(&self, offset: u64, pool_offset: u64, len: u64) -> std::io::Result<()>;

    /// Makes `len` bytes of the window at `offset` inaccessible to the guest. Once this returns
    /// `Ok`, the guest can no longer reach the pool memory that was mapped there.
    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()>;
}

/// Why a window operation failed. Every error but [`GrantError::Unmap`] leaves the window and
/// the pool as they were.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// No free run of the window is long enough at the requested alignment.
    #[error("grant window has no free run of {nr_pages} pages aligned to {align_pages}")]
    WindowFull {
        /// Pages asked for.
        nr_pages: u64,
        /// Alignment asked for, in pages.
        align_pages: u64,
    },
    /// The pool refused the grant.
    #[error("pool: {0}")]
    Pool(#[from] PoolError),
    /// The pool granted the run but it could not be mapped; the run went back to the pool.
    #[error("mapping the grant into the window failed")]
    Map(#[source] std::io::Error),
    /// No grant of this client is mapped at this address.
    #[error("no grant of this client at guest-physical {0:#x}")]
    UnknownGrant(u64),
    /// The grant could not be unmapped: it stays granted and mapped (stuck) until a retry works.
    #[error("unmapping the grant at guest-physical {gpa:#x} failed; it stays granted")]
    Unmap {
        /// Where the grant is mapped.
        gpa: u64,
        /// Why the unmap failed.
        #[source]
        source: std::io::Error,
    },
}

/// Building a window failed.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The window is empty, not page-aligned, or ends past the top of the address space.
    #[error("grant window {gpa:#x}+{len_bytes:#x} is not page-aligned and non-empty")]
    BadRange {
        /// Requested start.
        gpa: u64,
        /// Requested length.
        len_bytes: u64,
    },
}

/// What a window holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowUsage {
    /// Grants mapped and usable by the guest.
    pub grants: u64,
    /// Pages of those grants.
    pub granted_pages: u64,
    /// Grants whose unmap failed; kept granted until a retry works.
    pub stuck_grants: u64,
    /// Pages of stuck grants.
    pub stuck_pages: u64,
    /// Bytes of the window no grant (live or stuck) occupies.
    pub free_bytes: u64,
}

/// What [`GrantWindow::release_client`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Grants unmapped and returned to the pool.
    pub freed: u64,
    /// Grants whose unmap failed: still granted, now stuck.
    pub stuck: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    grant: ContigGrant,
    /// The unmap failed: the guest may still reach it; retried later.
    stuck: bool,
}

#[derive(Debug)]
struct State {
    /// Free window space, in guest page numbers (so alignment is absolute).
    space: RangeAllocator,
    /// Every grant mapped (or stuck) in the window, by guest-physical address.
    grants: BTreeMap<u64, Entry>,
    stuck: u64,
}

/// One guest's grant window. See the [module documentation](self).
pub struct GrantWindow {
    range: WindowRange,
    /// The pool's grant unit ([`GcmaBackend::grant_unit_pages`]).
    unit_pages: u64,
    pool: Arc<dyn GcmaBackend>,
    mapper: Arc<dyn WindowMapper>,
    state: Mutex<State>,
}

impl std::fmt::Debug for GrantWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantWindow")
            .field("range", &self.range)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

const PAGE: u64 = PAGE_SIZE as u64;

/// Pages in a 2 MiB huge page: grants at least this long are placed at a 2 MiB boundary.
const HUGE_PAGE_PAGES: u64 = 512;

impl GrantWindow {
    /// A window over `range` for grants of `pool`, made visible by `mapper`.
    pub fn new(
        range: WindowRange,
        pool: Arc<dyn GcmaBackend>,
        mapper: Arc<dyn WindowMapper>,
    ) -> Result<Self, WindowError> {
        let bad = WindowError::BadRange {
            gpa: range.gpa,
            len_bytes: range.len_bytes,
        };
        if range.len_bytes == 0
            || !range.gpa.is_multiple_of(PAGE)
            || !range.len_bytes.is_multiple_of(PAGE)
        {
            return Err(bad);
        }
        let unit_pages = pool.grant_unit_pages().max(1);
        if !(range.gpa / PAGE).is_multiple_of(unit_pages)
            || !(range.len_bytes / PAGE).is_multiple_of(unit_pages)
        {
            return Err(bad);
        }
        let space =
            RangeAllocator::new(range.gpa / PAGE, range.len_bytes / PAGE).map_err(|_| bad)?;
        Ok(GrantWindow {
            range,
            unit_pages,
            pool,
            mapper,
            state: Mutex::new(State {
                space,
                grants: BTreeMap::new(),
                stuck: 0,
            }),
        })
    }

    /// Where the window lies.
    pub fn range(&self) -> WindowRange {
        self.range
    }

    /// The pool grants come from.
    pub fn pool(&self) -> &Arc<dyn GcmaBackend> {
        &self.pool
    }

    /// Bytes of the window a grant occupies and maps: its span in the pool's grant unit.
    fn map_len(&self, grant: &ContigGrant) -> u64 {
        grant.span_pages(self.unit_pages) * PAGE
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants `nr_pages` contiguous pool pages to `client` and maps them at a free guest-physical
    /// address of the window that is a multiple of `align_pages` pages (the pool run is aligned
    /// the same way). Returns that address and the grant.
    pub fn alloc(
        &self,
        client: ClientId,
        nr_pages: u64,
        align_pages: u64,
    ) -> Result<(u64, ContigGrant), GrantError> {
        self.retry_stuck();
        let full = GrantError::WindowFull {
            nr_pages,
            align_pages,
        };
        if nr_pages == 0 || !align_pages.is_power_of_two() {
            return Err(GrantError::Pool(PoolError::Invalid(
                "grant of zero pages or alignment not a power of two",
            )));
        }
        // 1. Window space: cheap, and nothing else has changed if there is none. The span the
        // pool will set aside (whole 2 MiB pages on hugetlb), at a 2 MiB boundary when it is
        // that long and such a place is free: with the pool's run 2 MiB-aligned too, KVM can
        // then map it with 2 MiB entries.
        let span = nr_pages
            .checked_next_multiple_of(self.unit_pages)
            .ok_or(GrantError::Pool(PoolError::Invalid(
                "grant size out of range",
            )))?;
        let align_pages = align_pages.max(self.unit_pages);
        let prefer = if span >= HUGE_PAGE_PAGES {
            align_pages.max(HUGE_PAGE_PAGES)
        } else {
            align_pages
        };
        let page = {
            let mut s = self.lock();
            match s.space.alloc(span, prefer) {
                Err(_) if prefer != align_pages => s.space.alloc(span, align_pages),
                r => r,
            }
        }
        .map_err(|_| full)?;
        let gpa = page * PAGE;
        // 2. The pool's run (eviction, zeroing), with the window lock released.
        let grant = match self.pool.alloc_contig(client, nr_pages, align_pages) {
            Ok(g) => g,
            Err(e) => {
                self.give_back_space(page);
                return Err(e.into());
            }
        };
        // 3. The mapping.
        if let Err(e) = self.mapper.map(
            gpa - self.range.gpa,
            grant.offset_bytes(),
            self.map_len(&grant),
        ) {
            if let Err(fe) = self.pool.free_contig(client, grant.first_page) {
                // The run was never visible to the guest; the pool refusing it back is a bug.
                log::error!("returning an unmapped grant to the pool failed: {fe}");
            }
            self.give_back_space(page);
            return Err(GrantError::Map(e));
        }
        self.lock().grants.insert(
            gpa,
            Entry {
                grant,
                stuck: false,
            },
        );
        Ok((gpa, grant))
    }

    fn give_back_space(&self, page: u64) {
        if let Err(e) = self.lock().space.free(page) {
            log::error!("grant window bookkeeping: {e}");
        }
    }

    /// Unmaps `client`'s grant at `gpa` and returns its pages to the pool; returns its length in
    /// pages. If the unmap fails, the grant stays granted and mapped (it is not stuck: the guest
    /// still holds it and may free it again).
    pub fn free(&self, client: ClientId, gpa: u64) -> Result<u64, GrantError> {
        self.retry_stuck();
        let grant = match self.lock().grants.get(&gpa) {
            Some(e) if !e.stuck && e.grant.client == client => e.grant,
            _ => return Err(GrantError::UnknownGrant(gpa)),
        };
        self.mapper
            .unmap(gpa - self.range.gpa, self.map_len(&grant))
            .map_err(|source| GrantError::Unmap { gpa, source })?;
        self.forget(gpa, &grant)
    }

    /// Drops a grant the guest can no longer reach from the table and the pool.
    fn forget(&self, gpa: u64, grant: &ContigGrant) -> Result<u64, GrantError> {
        {
            let mut s = self.lock();
            if let Some(e) = s.grants.remove(&gpa) {
                s.stuck -= u64::from(e.stuck);
            }
            if let Err(e) = s.space.free(gpa / PAGE) {
                log::error!("grant window bookkeeping: {e}");
            }
        }
        Ok(self.pool.free_contig(grant.client, grant.first_page)?)
    }

    /// Unmaps and frees every grant of `client` (a device reset or a guest gone). Grants whose
    /// unmap fails are kept granted and marked stuck; call [`GcmaBackend::retire_client`] next,
    /// which keeps them granted to the retired client until a retry frees them.
    pub fn release_client(&self, client: ClientId) -> Released {
        self.retry_stuck();
        let mine: Vec<(u64, ContigGrant)> = self
            .lock()
            .grants
            .iter()
            .filter(|(_, e)| !e.stuck && e.grant.client == client)
            .map(|(&gpa, e)| (gpa, e.grant))
            .collect();
        let mut r = Released::default();
        for (gpa, grant) in mine {
            match self
                .mapper
                .unmap(gpa - self.range.gpa, self.map_len(&grant))
            {
                Ok(()) => match self.forget(gpa, &grant) {
                    Ok(_) => r.freed += 1,
                    Err(e) => log::error!("freeing the grant at {gpa:#x}: {e}"),
                },
                Err(e) => {
                    log::error!(
                        "unmapping the grant at {gpa:#x} ({} pages) failed; \
                         it stays granted until an unmap succeeds: {e}",
                        grant.nr_pages
                    );
                    let mut s = self.lock();
                    if let Some(entry) = s.grants.get_mut(&gpa) {
                        entry.stuck = true;
                        s.stuck += 1;
                    }
                    r.stuck += 1;
                }
            }
        }
        r
    }

    /// Tries again to unmap stuck grants; frees those that unmap. Returns how many were freed.
    pub fn retry_stuck(&self) -> u64 {
        let stuck: Vec<(u64, ContigGrant)> = {
            let s = self.lock();
            if s.stuck == 0 {
                return 0;
            }
            s.grants
                .iter()
                .filter(|(_, e)| e.stuck)
                .map(|(&gpa, e)| (gpa, e.grant))
                .collect()
        };
        let mut freed = 0;
        for (gpa, grant) in stuck {
            if self
                .mapper
                .unmap(gpa - self.range.gpa, self.map_len(&grant))
                .is_ok()
            {
                match self.forget(gpa, &grant) {
                    Ok(_) => freed += 1,
                    Err(e) => log::error!("freeing the stuck grant at {gpa:#x}: {e}"),
                }
            }
        }
        freed
    }

    /// The grants the guest holds now (stuck ones excluded), lowest address first.
    pub fn grants(&self) -> Vec<(u64, ContigGrant)> {
        self.lock()
            .grants
            .iter()
            .filter(|(_, e)| !e.stuck)
            .map(|(&gpa, e)| (gpa, e.grant))
            .collect()
    }

    /// The grants whose unmap failed (the guest may still reach them), lowest address first.
    pub fn stuck(&self) -> Vec<(u64, ContigGrant)> {
        self.lock()
            .grants
            .iter()
            .filter(|(_, e)| e.stuck)
            .map(|(&gpa, e)| (gpa, e.grant))
            .collect()
    }

    /// What the window holds now.
    pub fn usage(&self) -> WindowUsage {
        let s = self.lock();
        let mut u = WindowUsage {
            free_bytes: s.space.free_bytes() * PAGE,
            ..WindowUsage::default()
        };
        for e in s.grants.values() {
            if e.stuck {
                u.stuck_grants += 1;
                u.stuck_pages += e.grant.nr_pages;
            } else {
                u.grants += 1;
                u.granted_pages += e.grant.nr_pages;
            }
        }
        u
    }
}
