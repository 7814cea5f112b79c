//! The pool's memory: one memfd of `nr_pages` 4 KiB pages, mapped shared into this process,
//! pre-faulted so that the memory is really held, optionally locked (`mlock`) and optionally backed
//! by 2 MiB hugetlb pages.
//!
//! The memfd is what a VMM maps into a guest; this mapping is how the pool itself copies
//! second-class pages in and out and zeroes pages before it grants them.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::api::{PoolError, PAGE_SIZE};

/// Pages of 4 KiB in one 2 MiB huge page.
pub const PAGES_PER_HUGE_PAGE: u64 = 512;

/// The pool's memory reservation. Owns the memfd and the mapping; unmaps on drop.
#[derive(Debug)]
pub struct Reservation {
    memfd: OwnedFd,
    base: NonNull<u8>,
    len_bytes: usize,
    hugetlb: bool,
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

/// Reads `HugePages_Free` from `/proc/meminfo`, for a helpful error message.
fn free_huge_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Reservation {
    /// Creates and maps a memfd of `nr_pages` pages and faults every page in.
    ///
    /// With `hugetlb`, `nr_pages` must be a multiple of 512 and the host must have that many free
    /// 2 MiB huge pages (`/proc/sys/vm/nr_hugepages`); otherwise a [`PoolError::Io`] says so.
    /// With `mlock`, the mapping is locked in memory (needs `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK`).
    pub fn new(nr_pages: u64, hugetlb: bool, mlock: bool) -> Result<Self, PoolError> {
        if nr_pages == 0 {
            return Err(PoolError::Invalid("a pool needs at least one page"));
        }
        if hugetlb && !nr_pages.is_multiple_of(PAGES_PER_HUGE_PAGE) {
            return Err(PoolError::Invalid(
                "a hugetlb pool needs a multiple of 512 pages (2 MiB)",
            ));
        }
        let len_bytes = nr_pages
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or(PoolError::Invalid("pool size overflows the address space"))?;

        let name: &CStr = c"gcma-pool";
        let mut flags = libc::MFD_CLOEXEC;
        if hugetlb {
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no memory effects.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::ftruncate(fd, len_bytes as libc::off_t) } != 0 {
            return Err(os_error("ftruncate of the pool memfd"));
        }
        let mut mmap_flags = libc::MAP_SHARED;
        if hugetlb {
            // Hugetlb pages are reserved at mmap time; populate faults them in.
            mmap_flags |= libc::MAP_POPULATE;
        }
        // SAFETY: mapping a fresh region chosen by the kernel (addr NULL) of a valid fd; nothing
        // else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                mmap_flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            if hugetlb {
                return Err(PoolError::io(
                    format!(
                        "cannot map {nr_pages} pages of 2 MiB-hugetlb pool memory; \
                         HugePages_Free on this host: {}; raise /proc/sys/vm/nr_hugepages",
                        free_huge_pages().map_or("unknown".to_string(), |n| n.to_string())
                    ),
                    e,
                ));
            }
            return Err(PoolError::io("mmap of the pool memfd", e));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| {
            PoolError::io(
                "mmap of the pool memfd",
                std::io::Error::other("mmap returned NULL"),
            )
        })?;
        let mut r = Reservation {
            memfd,
            base,
            len_bytes,
            hugetlb,
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
        self.hugetlb
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
