//! Giving the host memory behind guest pages back to the host kernel.
//!
//! One entry point, [`release`], picks the call that actually frees memory for the region's
//! backing:
//! - shared file-backed regions (the VMM's memfd, shared files, hugetlbfs): `fallocate(PUNCH_HOLE)` on
//!   the file at the region's offset — `MADV_DONTNEED` on a shared mapping only drops the page
//!   table entries and frees nothing;
//! - anonymous shared mappings: `madvise(MADV_REMOVE)`;
//! - private mappings (anonymous, or copy-on-write over a file): `madvise(MADV_DONTNEED)`.
//!
//! Ranges must be aligned to the region's host page size ([`host_page_size`]); callers that work
//! in 4 KiB guest pages round inward (the balloon only frees a huge page once every 4 KiB piece of
//! it is in the balloon).

use std::os::fd::AsRawFd;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::ReleaseError;
use crate::transport::GuestMemoryMmap;

/// The page size the balloon protocol works in: virtio-balloon PFNs always name 4 KiB pages
/// (`VIRTIO_BALLOON_PFN_SHIFT` is 12 whatever the guest's page size), the pool's page.
pub const GUEST_PAGE_SIZE: u64 = gcma_proto::PAGE_SIZE as u64;

/// Which call released a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseMethod {
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` on the backing file.
    PunchHole,
    /// `madvise(MADV_REMOVE)` on a shared anonymous mapping.
    MadviseRemove,
    /// `madvise(MADV_DONTNEED)` on a private anonymous mapping.
    MadviseDontneed,
}

/// Page size of the host memory behind the region holding `gpa` (4 KiB unless the region is
/// backed by a hugetlbfs file). `None` if `gpa` is not guest memory.
pub fn host_page_size(mem: &GuestMemoryMmap, gpa: u64) -> Option<u64> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let Some(fo) = region.file_offset() else {
        return Some(GUEST_PAGE_SIZE);
    };
    // SAFETY: `statfs` is plain old data; zeroed is a valid value to pass for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is owned by the region's `FileOffset` and open for the call's duration;
    // `st` is a valid, writable `statfs`.
    let rc = unsafe { libc::fstatfs(fo.file().as_raw_fd(), &mut st) };
    if rc == 0 && st.f_type == libc::HUGETLBFS_MAGIC {
        // Anything but a power of two ≥ 4 KiB would be a kernel surprise; fall back to 4 KiB.
        Some(
            u64::try_from(st.f_bsize)
                .ok()
                .filter(|b| b.is_power_of_two() && *b >= GUEST_PAGE_SIZE)
                .unwrap_or(GUEST_PAGE_SIZE),
        )
    } else {
        Some(GUEST_PAGE_SIZE)
    }
}

/// The one guest memory region holding all of the non-empty `[gpa, gpa + len)`, and `gpa`'s
/// offset in it; `OutOfRange` otherwise.
fn locate(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
) -> Result<(&vm_memory::GuestRegionMmap<()>, u64), ReleaseError> {
    let out_of_range = || ReleaseError::OutOfRange { gpa, len };
    let region = mem
        .find_region(GuestAddress(gpa))
        .ok_or_else(out_of_range)?;
    let offset = GuestAddress(gpa).unchecked_offset_from(region.start_addr());
    let end = offset.checked_add(len).ok_or_else(out_of_range)?;
    if end > region.len() || len == 0 {
        return Err(out_of_range());
    }
    Ok((region, offset))
}

/// Release the host memory behind guest-physical `[gpa, gpa + len)`. The range must lie inside one
/// guest memory region; afterwards reads of it return zeros and the host may reuse the memory.
pub fn release(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<ReleaseMethod, ReleaseError> {
    let out_of_range = || ReleaseError::OutOfRange { gpa, len };
    let (region, offset) = locate(mem, gpa, len)?;
    let syscall = |call, source| ReleaseError::Syscall {
        call,
        gpa,
        len,
        source,
    };
    let mapping = region.get_mmap();
    let shared = mapping.flags() & libc::MAP_SHARED != 0;
    if let (Some(fo), true) = (region.file_offset(), shared) {
        let file_off = fo.start().checked_add(offset).ok_or_else(out_of_range)?;
        // SAFETY: the fd is valid for the call; punching a hole only changes file contents, which
        // the guest gave up (the mapping stays valid and reads back zeros).
        let rc = unsafe {
            libc::fallocate(
                fo.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                file_off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(syscall(
                "fallocate(PUNCH_HOLE)",
                std::io::Error::last_os_error(),
            ));
        }
        return Ok(ReleaseMethod::PunchHole);
    }
    // Private mappings (anonymous or copy-on-write file) drop their private copies.
    let (advice, method, call) = if shared {
        (
            libc::MADV_REMOVE,
            ReleaseMethod::MadviseRemove,
            "madvise(MADV_REMOVE)",
        )
    } else {
        (
            libc::MADV_DONTNEED,
            ReleaseMethod::MadviseDontneed,
            "madvise(MADV_DONTNEED)",
        )
    };
    // `offset + len <= region.len()` was checked, so the pointer stays inside the mapping.
    let host = mapping.as_ptr().wrapping_add(offset as usize);
    // SAFETY: `[host, host + len)` lies inside this region's live mapping (checked above); the
    // advice only discards contents the guest gave up and keeps the mapping valid.
    let rc = unsafe { libc::madvise(host.cast(), len as usize, advice) };
    if rc != 0 {
        return Err(syscall(call, std::io::Error::last_os_error()));
    }
    Ok(method)
}

/// Gives back the host memory behind guest-physical `[gpa, gpa + len)` after a [`release`], for a
/// guest that takes it back (a deflate): on a shared file-backed region, `fallocate(mode 0)`
/// allocates the file's pages again, so that a hugetlb page is taken (or refused, as an error
/// here) now rather than at the guest's next touch, where no free huge page would be a fault.
/// Other backings need nothing: their next touch refaults a fresh zero page. Returns whether a
/// call was made.
pub fn repopulate(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<bool, ReleaseError> {
    let out_of_range = || ReleaseError::OutOfRange { gpa, len };
    let (region, offset) = locate(mem, gpa, len)?;
    let shared = region.get_mmap().flags() & libc::MAP_SHARED != 0;
    let (Some(fo), true) = (region.file_offset(), shared) else {
        return Ok(false);
    };
    let file_off = fo.start().checked_add(offset).ok_or_else(out_of_range)?;
    // SAFETY: the fd is valid for the call; allocating file blocks changes no data (a hole reads
    // zero before and after).
    let rc = unsafe {
        libc::fallocate(
            fo.file().as_raw_fd(),
            0,
            file_off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(ReleaseError::Syscall {
            call: "fallocate(re-populate)",
            gpa,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn anonymous_private_memory_reads_zero_after_release() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xab; 8192], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            release(&mem, 0x1000, 0x1000).unwrap(),
            ReleaseMethod::MadviseDontneed
        );
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(b, [0, 0]);
        mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(b, [0xab, 0xab], "the next page is untouched");
    }

    /// Whether the host page behind `gpa` is resident (mincore).
    fn resident(mem: &GuestMemoryMmap, gpa: u64) -> bool {
        let host = mem.get_host_address(GuestAddress(gpa)).unwrap();
        let mut vec = [0u8; 1];
        // SAFETY: `host` is page-aligned inside a live mapping; `vec` has room for one page.
        let rc = unsafe { libc::mincore(host.cast(), 4096, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec[0] & 1 != 0
    }

    #[test]
    fn released_pages_leave_rss() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[1u8; 0x4000], GuestAddress(0x8000))
            .unwrap();
        assert!(resident(&mem, 0x8000));
        release(&mem, 0x8000, 0x4000).unwrap();
        assert!((0..4).all(|i| !resident(&mem, 0x8000 + i * 4096)));
    }

    #[test]
    fn shared_anonymous_memory_uses_remove() {
        let region = vm_memory::mmap::MmapRegionBuilder::new(1 << 20)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .unwrap();
        let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        mem.write_slice(&[9u8; 4096], GuestAddress(0x5000)).unwrap();
        assert_eq!(
            release(&mem, 0x5000, 0x1000).unwrap(),
            ReleaseMethod::MadviseRemove
        );
        // Check residency first: a read fault on shmem allocates the page again.
        assert!(!resident(&mem, 0x5000));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 0);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(release(&mem, 0xff000, 0x2000).is_err());
        assert!(release(&mem, 1 << 20, 0x1000).is_err());
        assert!(release(&mem, 0, 0).is_err());
        assert_eq!(host_page_size(&mem, 0), Some(GUEST_PAGE_SIZE));
        assert_eq!(host_page_size(&mem, 1 << 30), None);
    }
}
