//! The pool's memory: one memfd of `nr_pages` 4 KiB pages, mapped shared into this process,
//! pre-faulted so that the memory is really held, optionally locked (`mlock`) and optionally backed
//! by 2 MiB pages (hugetlb, or shmem THP: [`crate::huge`]).
//!
//! The memfd is what a VMM maps into a guest; this mapping is how the pool itself copies
//! second-class pages in and out and zeroes pages before it grants them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::api::{PoolError, PAGE_SIZE};
use crate::huge::{HugePageError, HugePages};

/// Pages of 4 KiB in one 2 MiB huge page.
pub const PAGES_PER_HUGE_PAGE: u64 = 512;

/// The pool's memory reservation. Owns the memfd and the mapping; unmaps on drop.
#[derive(Debug)]
pub struct Reservation {
    memfd: OwnedFd,
    base: NonNull<u8>,
    len_bytes: usize,
    huge: HugePages,
    locked: bool,
}

// SAFETY: the reservation is a plain shared memory mapping; the pointer is only dereferenced
// through the methods below, whose callers (the pool) guarantee by its page-state machine that no
// two threads write the same page at once and that nobody reads a page while it is written.
unsafe impl Send for Reservation {}
// SAFETY: as above; `&Reservation` hands out no references into the mapping.
unsafe impl Sync for Reservation {}

fn os_error(what: &str) -> PoolError {
    PoolError::io(what, std::io::Error::last_os_error())
}

impl Reservation {
    /// Creates and maps a memfd of `nr_pages` pages backed as `huge` says and faults every page
    /// in.
    ///
    /// With [`HugePages::Hugetlb`], `nr_pages` must be a multiple of 512 and the host must have
    /// that many free 2 MiB huge pages (`/proc/sys/vm/nr_hugepages`); with [`HugePages::Thp`],
    /// shmem THP must be enabled (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`); otherwise
    /// a [`PoolError::Io`] names the knob. With `mlock`, the mapping is locked in memory (needs
    /// `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK`).
    pub fn new(nr_pages: u64, huge: HugePages, mlock: bool) -> Result<Self, PoolError> {
        if nr_pages == 0 {
            return Err(PoolError::Invalid("a pool needs at least one page"));
        }
        if huge.is_hugetlb() && !nr_pages.is_multiple_of(PAGES_PER_HUGE_PAGE) {
            return Err(PoolError::Invalid(
                "a hugetlb pool needs a multiple of 512 pages (2 MiB)",
            ));
        }
        let len_bytes = nr_pages
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or(PoolError::Invalid("pool size overflows the address space"))?;

        let huge_err = |e: HugePageError| {
            let (context, source) = e.into_io();
            PoolError::io(format!("pool memory: {context}"), source)
        };
        let file =
            crate::huge::create_memfd(c"gcma-pool", len_bytes as u64, huge).map_err(huge_err)?;
        // Hugetlb pages are reserved at mmap time and populate faults them in; the others are
        // faulted in by `prefault`, which is faster here (see there).
        let p = crate::huge::map_shared(&file, len_bytes as u64, huge, huge.is_hugetlb())
            .map_err(huge_err)?;
        let base = NonNull::new(p).ok_or_else(|| {
            PoolError::io(
                "mmap of the pool memfd",
                std::io::Error::other("mmap returned NULL"),
            )
        })?;
        let mut r = Reservation {
            memfd: file.into(),
            base,
            len_bytes,
            huge,
            locked: false,
        };
        r.prefault()?;
        if mlock {
            // SAFETY: the range is exactly our mapping.
            if unsafe { libc::mlock(r.base.as_ptr().cast(), r.len_bytes) } != 0 {
                return Err(os_error(
                    "mlock of the pool (raise RLIMIT_MEMLOCK or run without mlock)",
                ));
            }
            r.locked = true;
        }
        Ok(r)
    }

    /// Faults every page in for writing, so that the pool's memory is held from the start and the
    /// first grant does not pay for page faults.
    ///
    /// This writes zeroes over the whole mapping rather than calling
    /// `madvise(MADV_POPULATE_WRITE)`: on the host we measured (a KVM guest), 125 MiB of memfd
    /// memory populated that way took 7–12 ms to memset afterwards, every time, against about 2 ms
    /// for memory faulted in by ordinary stores. The memfd is fresh, so every page reads zero and
    /// writing zero keeps it so.
    fn prefault(&mut self) -> Result<(), PoolError> {
        // SAFETY: the range is exactly our mapping and no other thread can see it yet.
        unsafe { std::ptr::write_bytes(self.base.as_ptr(), 0, self.len_bytes) };
        Ok(())
    }

    /// The memfd backing the pool.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// Size of the pool in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// Whether the pool is backed by 2 MiB hugetlb pages.
    pub fn is_hugetlb(&self) -> bool {
        self.huge.is_hugetlb()
    }

    /// How the pool is backed.
    pub fn huge_pages(&self) -> HugePages {
        self.huge
    }

    /// Whether the pool is locked in memory.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Pointer to the first byte of pool page `page`.
    ///
    /// # Panics
    /// Never in release; `page` is checked against the pool size in debug builds only (callers
    /// pass page numbers from their own page table).
    fn page_ptr(&self, page: u64) -> *mut u8 {
        debug_assert!((page as usize) < self.len_bytes / PAGE_SIZE);
        // SAFETY: callers pass `page < nr_pages`, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(page as usize * PAGE_SIZE) }
    }

    /// Copies one page from `src` into pool page `page`.
    ///
    /// # Safety
    /// `page < nr_pages`, `src.len() == PAGE_SIZE`, and the caller has exclusive use of the page
    /// (the pool holds its state lock and the page is a second-class page it owns).
    pub unsafe fn write_page(&self, page: u64, src: &[u8]) {
        debug_assert_eq!(src.len(), PAGE_SIZE);
        // SAFETY: per the contract, the destination page is inside the mapping and not accessed
        // concurrently; `src` is a distinct Rust slice of PAGE_SIZE bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.page_ptr(page), PAGE_SIZE) };
    }

    /// Copies pool page `page` into `dst`.
    ///
    /// # Safety
    /// `page < nr_pages`, `dst.len() == PAGE_SIZE`, and no one writes the page concurrently.
    pub unsafe fn read_page(&self, page: u64, dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), PAGE_SIZE);
        // SAFETY: per the contract, the source page is inside the mapping and stable.
        unsafe { std::ptr::copy_nonoverlapping(self.page_ptr(page), dst.as_mut_ptr(), PAGE_SIZE) };
    }

    /// Fills `nr` pages from `first` with zeroes.
    ///
    /// # Safety
    /// `first + nr <= nr_pages`, and the caller has exclusive use of these pages (they are marked
    /// granted but not yet handed out).
    pub unsafe fn zero_pages(&self, first: u64, nr: u64) {
        debug_assert!(((first + nr) as usize) <= self.len_bytes / PAGE_SIZE);
        // SAFETY: per the contract, the range is inside the mapping and exclusively ours.
        unsafe { std::ptr::write_bytes(self.page_ptr(first), 0, nr as usize * PAGE_SIZE) };
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping we created; no references into it outlive `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) };
    }
}
