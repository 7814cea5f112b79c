//! DMA memory for a userspace driver: locked memory whose physical (guest-physical) address is
//! known and fixed.
//!
//! * Memory comes from `mmap(MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE)`, 2 MiB hugetlb pages
//!   first (physically contiguous by construction, and never moved by compaction), else 4 KiB
//!   pages (one log line says so). The mapping is `mlock`ed explicitly (so a locking failure is an
//!   error, not a silent fallback), excluded from transparent huge pages (khugepaged would move
//!   it) and from `fork`.
//! * Addresses come from `/proc/self/pagemap`: one little-endian `u64` per page, bit 63 =
//!   present, bits 0–54 = page frame number. Since Linux 4.2 the PFN reads as 0 unless the
//!   *opener* of the file has `CAP_SYS_ADMIN`; that case is a clear error
//!   ([`DmaError::PfnHidden`]), never a zero address handed to a device.
//! * A buffer of several pages is only handed out when its pages are physically contiguous. With
//!   4 KiB pages the allocator maps a larger scratch area, looks for a set of pages whose frames
//!   are consecutive (in any virtual order), moves them with `mremap` (which keeps the frames)
//!   into a fresh virtual range in physical order, checks the result through the pagemap again
//!   and releases the rest; when there is no such set it fails clearly and suggests reserving
//!   huge pages.
//!
//! Caveat, stated where it matters: locked 4 KiB pages can still be *migrated* by memory
//! compaction when `/proc/sys/vm/compact_unevictable_allowed` is 1 (the default); the allocator
//! logs a warning then. Hugetlb pages do not have that problem, which is why they come first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use log::{info, warn};

/// Page-table entry bit: page present.
pub const PM_PRESENT: u64 = 1 << 63;
/// Page-table entry bit: page swapped out.
pub const PM_SWAPPED: u64 = 1 << 62;
/// Page-table entry bits 0–54: the page frame number.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// Size of a hugetlb page this allocator asks for.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Why DMA memory could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// `/proc/self/pagemap` could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Pagemap {
        /// The pagemap path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PFN reads as 0: the process lacks `CAP_SYS_ADMIN`.
    #[error("/proc/self/pagemap hides physical addresses (PFN reads as 0): the agent needs CAP_SYS_ADMIN (run as root)")]
    PfnHidden,
    /// A page of a locked buffer is not present (should not happen after `MAP_POPULATE` + `mlock`).
    #[error("page at {vaddr:#x} is not present in memory (pagemap entry {entry:#018x})")]
    NotPresent {
        /// Virtual address of the page.
        vaddr: usize,
        /// The raw pagemap entry.
        entry: u64,
    },
    /// `mmap` or `mlock` failed.
    #[error("cannot allocate {len} bytes of locked memory: {what}: {source}{hint}")]
    Alloc {
        /// Bytes asked for.
        len: usize,
        /// Which call failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// No physically contiguous run of the wanted length was found.
    #[error("no {nr_pages} physically contiguous 4 KiB pages found among {scanned} locked pages: reserve huge pages (e.g. `echo 16 > /proc/sys/vm/nr_hugepages`) or use buffers of one page")]
    NotContiguous {
        /// Pages wanted.
        nr_pages: usize,
        /// Pages inspected.
        scanned: usize,
    },
    /// Hugetlb pages were required but are not available.
    #[error("hugetlb pages required but not available: {0} (reserve some: `echo 16 > /proc/sys/vm/nr_hugepages`)")]
    NoHugePages(std::io::Error),
    /// Zero pages, or a size that overflows.
    #[error("invalid DMA buffer size of {0} pages")]
    BadSize(usize),
}

/// The system page size (the unit of `/proc/self/pagemap`).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory side effects.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|v| *v > 0).unwrap_or(4096)
}

/// Decodes one pagemap entry for the page at `vaddr` into a physical address (of `vaddr`'s byte
/// within the page, for a `page_size`-byte page).
pub fn decode_pagemap_entry(entry: u64, vaddr: usize, page_size: usize) -> Result<u64, DmaError> {
    if entry & PM_PRESENT == 0 {
        return Err(DmaError::NotPresent { vaddr, entry });
    }
    let pfn = entry & PM_PFN_MASK;
    if pfn == 0 {
        return Err(DmaError::PfnHidden);
    }
    Ok(pfn * page_size as u64 + (vaddr % page_size) as u64)
}

/// Virtual → physical translation through a pagemap file.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: String,
    page_size: usize,
}

impl Pagemap {
    /// Opens `/proc/self/pagemap`. What it reveals depends on the capabilities of the thread
    /// that opens it (not of the one that reads it).
    pub fn open_self() -> Result<Self, DmaError> {
        Self::open(Path::new("/proc/self/pagemap"))
    }

    /// Opens a pagemap file.
    pub fn open(path: &Path) -> Result<Self, DmaError> {
        let file = File::open(path).map_err(|source| DmaError::Pagemap {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Pagemap {
            file,
            path: path.display().to_string(),
            page_size: page_size(),
        })
    }

    /// The raw entry of the page holding `vaddr`.
    pub fn entry(&self, vaddr: usize) -> Result<u64, DmaError> {
        let mut b = [0u8; 8];
        let off = (vaddr / self.page_size) as u64 * 8;
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|source| DmaError::Pagemap {
                path: self.path.clone(),
                source,
            })?;
        Ok(u64::from_le_bytes(b))
    }

    /// The physical address of `vaddr`.
    pub fn translate(&self, vaddr: usize) -> Result<u64, DmaError> {
        decode_pagemap_entry(self.entry(vaddr)?, vaddr, self.page_size)
    }

    /// Physical addresses of the `nr_pages` pages starting at page-aligned `vaddr` (one read).
    pub fn translate_pages(&self, vaddr: usize, nr_pages: usize) -> Result<Vec<u64>, DmaError> {
        let mut raw = vec![0u8; nr_pages * 8];
        let off = (vaddr / self.page_size) as u64 * 8;
        self.file
            .read_exact_at(&mut raw, off)
            .map_err(|source| DmaError::Pagemap {
                path: self.path.clone(),
                source,
            })?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(i, c)| {
                let mut e = [0u8; 8];
                e.copy_from_slice(c);
                decode_pagemap_entry(
                    u64::from_le_bytes(e),
                    vaddr + i * self.page_size,
                    self.page_size,
                )
            })
            .collect()
    }

    /// The page size entries are indexed by.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
}

/// The first index `i` such that `phys[i..i + n]` are consecutive pages (`phys[j+1] = phys[j] +
/// page_size`), if any.
pub fn find_contiguous_run(phys: &[u64], n: usize, page_size: usize) -> Option<usize> {
    if n == 0 || n > phys.len() {
        return None;
    }
    let mut start = 0;
    for i in 1..=phys.len() {
        if i - start >= n {
            return Some(start);
        }
        if i < phys.len() && phys[i] != phys[i - 1].wrapping_add(page_size as u64) {
            start = i;
        }
    }
    None
}

/// Indexes of `n` entries of `phys` that are consecutive frames, in physical order (the lowest
/// such set), if any.
pub fn find_contiguous_set(phys: &[u64], n: usize, page_size: usize) -> Option<Vec<usize>> {
    let mut idx: Vec<usize> = (0..phys.len()).collect();
    idx.sort_by_key(|&i| phys[i]);
    let sorted: Vec<u64> = idx.iter().map(|&i| phys[i]).collect();
    let first = find_contiguous_run(&sorted, n, page_size)?;
    Some(idx[first..first + n].to_vec())
}

/// Reserves `len` bytes of address space (no access, no memory).
fn map_reserve(len: usize) -> std::io::Result<NonNull<u8>> {
    // SAFETY: a fresh inaccessible anonymous mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// How to use hugetlb pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Try hugetlb, fall back to 4 KiB pages with a log line.
    #[default]
    Auto,
    /// Only hugetlb; fail if none are available.
    Require,
    /// Never hugetlb.
    Never,
}

/// One mapping of this module, unmapped when the last buffer in it goes.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only unmapped on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself gives no access to the bytes.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.ptr.as_ptr(), self.len);
    }
}

/// A locked, physically contiguous buffer.
#[derive(Debug)]
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
    phys: u64,
    huge: bool,
    /// The mapping the buffer lies in (shared by the buffers carved out of one huge page).
    _map: Arc<Mapping>,
}

// SAFETY: the buffer's bytes belong to it alone (buffers never overlap); the mapping is kept
// alive by the Arc.
unsafe impl Send for DmaBuffer {}

impl DmaBuffer {
    /// Start of the buffer in this process.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len
    }
    /// Physical (guest-physical) address of the first byte.
    pub fn phys(&self) -> u64 {
        self.phys
    }
    /// Whether it lives in hugetlb pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }
}

/// The unused tail of the last hugetlb mapping (physically contiguous, never handed out, so
/// still zero).
#[derive(Debug)]
struct HugeArena {
    map: Arc<Mapping>,
    phys: u64,
    used: usize,
}

/// Allocates [`DmaBuffer`]s.
#[derive(Debug)]
pub struct DmaAllocator {
    pagemap: Pagemap,
    huge: HugePages,
    /// Set once hugetlb failed in `Auto` mode (logged once, not retried).
    huge_failed: bool,
    warned_migration: bool,
    arena: Option<HugeArena>,
}

fn map_anon(len: usize, huge: bool) -> std::io::Result<Mapping> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED | libc::MAP_POPULATE;
    if huge {
        // MAP_HUGE_2MB: log2(2 MiB) << MAP_HUGE_SHIFT.
        flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
    }
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let ptr = NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
    Ok(Mapping { ptr, len })
}

/// Unmaps `len` bytes at `p` (a mapping, or a piece of one, this module created).
fn unmap(p: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: callers pass ranges of mappings created here that nothing else uses.
        unsafe {
            libc::munmap(p.cast(), len);
        }
    }
}

impl DmaAllocator {
    /// An allocator translating through `/proc/self/pagemap`. Checks at once that physical
    /// addresses are visible, so a missing capability is reported before any device is touched.
    pub fn new(huge: HugePages) -> Result<Self, DmaError> {
        Self::with_pagemap(Pagemap::open_self()?, huge)
    }

    /// An allocator over an already opened pagemap (tests open it from a thread with reduced
    /// capabilities). Fails with [`DmaError::PfnHidden`] when the PFNs are hidden.
    pub fn with_pagemap(pagemap: Pagemap, huge: HugePages) -> Result<Self, DmaError> {
        let mut a = DmaAllocator {
            pagemap,
            huge,
            huge_failed: false,
            warned_migration: false,
            arena: None,
        };
        // One page, translated: proves the capability (and frees the page again).
        a.alloc_small(1)?;
        Ok(a)
    }

    /// The pagemap in use.
    pub fn pagemap(&self) -> &Pagemap {
        &self.pagemap
    }

    /// A zeroed, locked, physically contiguous buffer of `nr_pages` 4 KiB pages.
    pub fn alloc(&mut self, nr_pages: usize) -> Result<DmaBuffer, DmaError> {
        let len = nr_pages
            .checked_mul(4096)
            .filter(|l| *l > 0 && *l <= isize::MAX as usize / 2)
            .ok_or(DmaError::BadSize(nr_pages))?;
        let try_huge = match self.huge {
            HugePages::Never => false,
            HugePages::Require => true,
            HugePages::Auto => !self.huge_failed,
        };
        if try_huge {
            match self.alloc_huge(len) {
                Ok(b) => return Ok(b),
                Err(DmaError::Alloc { source, .. }) if self.huge == HugePages::Auto => {
                    info!(
                        "hugetlb pages unavailable ({source}); falling back to 4 KiB pages \
                         (multi-page buffers need physically contiguous runs)"
                    );
                    self.huge_failed = true;
                }
                Err(DmaError::Alloc { source, .. }) => return Err(DmaError::NoHugePages(source)),
                Err(e) => return Err(e),
            }
        }
        self.warn_migration();
        self.alloc_small(nr_pages)
    }

    /// Carves `len` bytes out of the current huge-page arena, or maps new huge pages.
    fn alloc_huge(&mut self, len: usize) -> Result<DmaBuffer, DmaError> {
        if let Some(a) = &mut self.arena {
            if a.map.len - a.used >= len {
                // SAFETY: `used + len <= map.len`: the range lies inside the arena's mapping.
                let ptr = unsafe { a.map.ptr.add(a.used) };
                let b = DmaBuffer {
                    ptr,
                    len,
                    phys: a.phys + a.used as u64,
                    huge: true,
                    _map: Arc::clone(&a.map),
                };
                a.used += len;
                return Ok(b);
            }
        }
        let map_len = len.next_multiple_of(HUGE_PAGE_SIZE);
        let map = map_anon(map_len, true).map_err(|source| DmaError::Alloc {
            len: map_len,
            what: "mmap(MAP_HUGETLB)",
            source,
            hint: "",
        })?;
        self.lock(&map, true)?;
        let ps = self.pagemap.page_size;
        let pages = map_len / ps;
        let phys = self
            .pagemap
            .translate_pages(map.ptr.as_ptr() as usize, pages)?;
        if find_contiguous_run(&phys, pages, ps) != Some(0) {
            // Several huge pages that are not adjacent.
            return Err(DmaError::NotContiguous {
                nr_pages: len / 4096,
                scanned: pages,
            });
        }
        let map = Arc::new(map);
        let b = DmaBuffer {
            ptr: map.ptr,
            len,
            phys: phys[0],
            huge: true,
            _map: Arc::clone(&map),
        };
        if map_len > len {
            self.arena = Some(HugeArena {
                map,
                phys: phys[0],
                used: len,
            });
        }
        Ok(b)
    }

    /// Locks a fresh mapping and excludes it from THP (for 4 KiB pages) and from `fork`.
    fn lock(&self, map: &Mapping, huge: bool) -> Result<(), DmaError> {
        let p = map.ptr.as_ptr().cast::<libc::c_void>();
        // SAFETY: `p`/`len` is a mapping we own; mlock/madvise do not invalidate it.
        let rc = unsafe { libc::mlock(p, map.len) };
        if rc != 0 {
            return Err(DmaError::Alloc {
                len: map.len,
                what: "mlock",
                source: std::io::Error::last_os_error(),
                hint: " (raise RLIMIT_MEMLOCK or run as root)",
            });
        }
        // SAFETY: as above. Failures only lose an optimisation and are ignored on purpose.
        unsafe {
            libc::madvise(p, map.len, libc::MADV_DONTFORK);
            if !huge {
                libc::madvise(p, map.len, libc::MADV_NOHUGEPAGE);
            }
        }
        Ok(())
    }

    fn alloc_small(&mut self, nr_pages: usize) -> Result<DmaBuffer, DmaError> {
        let ps = self.pagemap.page_size;
        // Pages of the system size that hold `nr_pages` 4 KiB pages.
        let want = (nr_pages * 4096).div_ceil(ps);
        if want == 1 {
            let map = self.map_small(ps)?;
            let phys = self.pagemap.translate(map.ptr.as_ptr() as usize)?;
            return Ok(DmaBuffer {
                ptr: map.ptr,
                len: nr_pages * 4096,
                phys,
                huge: false,
                _map: Arc::new(map),
            });
        }
        // Scratch areas to find a contiguous set in: a small one, then a large one (64 MiB at
        // most beyond the buffer itself), freed again at once.
        let small = want.saturating_mul(16).max(256).min(want + 16384);
        let large = want.saturating_mul(64).max(4096).min(want + 16384);
        match self.alloc_scan(nr_pages, want, small) {
            Err(DmaError::NotContiguous { .. }) if large > small => {
                self.alloc_scan(nr_pages, want, large)
            }
            r => r,
        }
    }

    fn map_small(&self, len: usize) -> Result<Mapping, DmaError> {
        let map = map_anon(len, false).map_err(|source| DmaError::Alloc {
            len,
            what: "mmap(MAP_LOCKED|MAP_POPULATE)",
            hint: if source.raw_os_error() == Some(libc::EAGAIN) {
                " (RLIMIT_MEMLOCK too low: raise it or run as root)"
            } else {
                ""
            },
            source,
        })?;
        self.lock(&map, false)?;
        Ok(map)
    }

    /// One attempt of [`Self::alloc_small`] over `scan` scratch pages: find `want` pages whose
    /// frames are consecutive (in any virtual order), move them with `mremap` (which keeps the
    /// frames) into a fresh virtual range in physical order, check the result through the
    /// pagemap, and release the other scratch pages.
    fn alloc_scan(
        &mut self,
        nr_pages: usize,
        want: usize,
        scan: usize,
    ) -> Result<DmaBuffer, DmaError> {
        let ps = self.pagemap.page_size;
        let scratch = self.map_small(scan * ps)?;
        let base = scratch.ptr.as_ptr();
        // From here on the scratch range is released page run by page run (never as a whole:
        // once pages are moved out, the holes could be reused by other threads' mappings).
        std::mem::forget(scratch);
        let mut moved = vec![false; scan];
        let result = self.assemble(base, scan, want, nr_pages, &mut moved);
        let mut i = 0;
        while i < scan {
            let start = i;
            while i < scan && !moved[i] {
                i += 1;
            }
            // SAFETY: `start <= i <= scan`: inside the scratch mapping.
            unmap(unsafe { base.add(start * ps) }, (i - start) * ps);
            i += 1;
        }
        result
    }

    fn assemble(
        &self,
        base: *mut u8,
        scan: usize,
        want: usize,
        nr_pages: usize,
        moved: &mut [bool],
    ) -> Result<DmaBuffer, DmaError> {
        let ps = self.pagemap.page_size;
        let phys = self.pagemap.translate_pages(base as usize, scan)?;
        let not_found = DmaError::NotContiguous {
            nr_pages,
            scanned: scan,
        };
        let order = find_contiguous_set(&phys, want, ps).ok_or(not_found)?;
        let dest = map_reserve(want * ps).map_err(|source| DmaError::Alloc {
            len: want * ps,
            what: "mmap(PROT_NONE)",
            source,
            hint: "",
        })?;
        // Owns `dest` from now on: unmapped on every error path.
        let dest = Mapping {
            ptr: dest,
            len: want * ps,
        };
        for (k, &i) in order.iter().enumerate() {
            // SAFETY: `i < scan` pages of the scratch mapping and `k < want` pages of the
            // reservation, both owned here; MREMAP_FIXED replaces the reserved page.
            let r = unsafe {
                libc::mremap(
                    base.add(i * ps).cast(),
                    ps,
                    ps,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    dest.ptr.as_ptr().add(k * ps).cast::<libc::c_void>(),
                )
            };
            if r == libc::MAP_FAILED {
                return Err(DmaError::Alloc {
                    len: want * ps,
                    what: "mremap",
                    source: std::io::Error::last_os_error(),
                    hint: "",
                });
            }
            moved[i] = true;
        }
        // Check the result independently of the bookkeeping above.
        let got = self
            .pagemap
            .translate_pages(dest.ptr.as_ptr() as usize, want)?;
        if find_contiguous_run(&got, want, ps) != Some(0) {
            return Err(DmaError::NotContiguous {
                nr_pages,
                scanned: scan,
            });
        }
        Ok(DmaBuffer {
            ptr: dest.ptr,
            len: nr_pages * 4096,
            phys: got[0],
            huge: false,
            _map: Arc::new(dest),
        })
    }

    fn warn_migration(&mut self) {
        if self.warned_migration {
            return;
        }
        self.warned_migration = true;
        let v =
            std::fs::read_to_string("/proc/sys/vm/compact_unevictable_allowed").unwrap_or_default();
        if v.trim() == "1" {
            warn!(
                "4 KiB DMA pages are locked but compaction may still migrate them \
                 (vm.compact_unevictable_allowed=1): set it to 0 or reserve huge pages"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_decoding() {
        assert_eq!(
            decode_pagemap_entry(PM_PRESENT | 0x1234, 0x7f00_0000_0123, 4096).unwrap(),
            0x0123_4123
        );
        assert!(matches!(
            decode_pagemap_entry(PM_PRESENT, 0, 4096),
            Err(DmaError::PfnHidden)
        ));
        assert!(matches!(
            decode_pagemap_entry(PM_SWAPPED | 5, 0x1000, 4096),
            Err(DmaError::NotPresent { vaddr: 0x1000, .. })
        ));
        // Bits 55..=61 are flags, not PFN.
        assert_eq!(
            decode_pagemap_entry(PM_PRESENT | (1 << 55) | (1 << 61) | 7, 0, 4096).unwrap(),
            7 * 4096
        );
    }

    #[test]
    fn contiguous_runs() {
        let p = [0x5000, 0x1000, 0x2000, 0x3000, 0x9000];
        assert_eq!(find_contiguous_run(&p, 1, 4096), Some(0));
        assert_eq!(find_contiguous_run(&p, 2, 4096), Some(1));
        assert_eq!(find_contiguous_run(&p, 3, 4096), Some(1));
        assert_eq!(find_contiguous_run(&p, 4, 4096), None);
        assert_eq!(find_contiguous_run(&p, 0, 4096), None);
        assert_eq!(find_contiguous_run(&[0x1000, 0x2000], 2, 4096), Some(0));
        assert_eq!(find_contiguous_run(&[0x2000, 0x1000], 2, 4096), None);
        assert_eq!(
            find_contiguous_set(&[0x9000, 0x3000, 0x1000, 0x2000], 3, 4096),
            Some(vec![2, 3, 1])
        );
        assert_eq!(
            find_contiguous_set(&[0x9000, 0x3000, 0x1000], 2, 4096),
            None
        );
    }
}
