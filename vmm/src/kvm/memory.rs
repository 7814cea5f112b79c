//! Guest RAM: one memfd mapped shared through `vm-memory`.
//!
//! Backing RAM with a memfd (rather than anonymous memory) lets the balloon release guest pages
//! with `fallocate(FALLOC_FL_PUNCH_HOLE)`; `MADV_DONTNEED` frees nothing on a shared mapping.
//! The memfd is what another process (a vhost-user backend) maps to reach guest memory.
//!
//! RAM may be backed by 2 MiB pages ([`HugePages`], `--hugepages`): hugetlb RAM is a
//! `MFD_HUGETLB` memfd whose pages are all reserved when it is mapped (so a host short of them
//! fails here, not at a guest's first touch) and allocated as the guest touches them; its size
//! and every hole punched in it are whole 2 MiB pages. THP RAM is an ordinary memfd mapped with
//! `MADV_HUGEPAGE`. See `gcma_host::huge`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use gcma_host::huge::{HugePages, HUGE_PAGE_BYTES};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use crate::abi::PAGE_SIZE;
use crate::error::{Error, Result};

/// Guest RAM starting at guest-physical address 0, backed by a memfd.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    memfd: Arc<File>,
    size_bytes: u64,
    huge: HugePages,
}

impl GuestRam {
    /// Creates `size_bytes` of guest RAM (a positive multiple of [`PAGE_SIZE`]) in 4 KiB pages.
    ///
    /// Pages are not touched: host memory is used only as the guest writes.
    pub fn new(size_bytes: u64) -> Result<Self> {
        Self::with_huge_pages(size_bytes, HugePages::Off)
    }

    /// Creates `size_bytes` of guest RAM backed as `huge` says: a positive multiple of
    /// [`PAGE_SIZE`], and of 2 MiB for hugetlb. Fails with [`Error::HugePages`] naming the host
    /// knob when the host cannot back it (too few free hugetlb pages, shmem THP off).
    ///
    /// Pages are not touched: host memory is used only as the guest writes (hugetlb pages are
    /// reserved now, allocated then).
    pub fn with_huge_pages(size_bytes: u64, huge: HugePages) -> Result<Self> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Config(format!(
                "guest RAM size {size_bytes} is not a positive multiple of {PAGE_SIZE}"
            )));
        }
        if huge.is_hugetlb() && !size_bytes.is_multiple_of(HUGE_PAGE_BYTES) {
            return Err(Error::Config(format!(
                "guest RAM size {size_bytes} is not a multiple of 2 MiB, as hugetlb backing needs"
            )));
        }
        let len = usize::try_from(size_bytes)
            .map_err(|_| Error::Config(format!("guest RAM size {size_bytes} is too large")))?;
        let file = gcma_host::huge::create_memfd(c"vmm-guest-ram", size_bytes, huge)?;
        // The size is final: a process we share guest RAM with (a vhost-user backend such as
        // gcma-hostd, which refuses unsealed memory) can rely on it never shrinking under its
        // mapping. Punching holes (the balloon) stays allowed.
        // SAFETY: F_ADD_SEALS on a memfd we own, created with MFD_ALLOW_SEALING.
        let rc = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if rc != 0 {
            return Err(Error::Io {
                op: "sealing the guest RAM memfd's size",
                source: std::io::Error::last_os_error(),
            });
        }
        let memfd = Arc::new(file);
        // vm-memory maps files with MAP_NORESERVE; hugetlb RAM is mapped without it so that its
        // pages are reserved now. Both are shared, so writes land in the memfd.
        let flags = if huge.is_hugetlb() {
            libc::MAP_SHARED
        } else {
            libc::MAP_SHARED | libc::MAP_NORESERVE
        };
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_file_offset(FileOffset::from_arc(memfd.clone(), 0))
            .with_hugetlbfs(huge.is_hugetlb())
            .build()
            .map_err(|e| match e {
                vm_memory::mmap::MmapRegionError::Mmap(source) if huge.is_hugetlb() => {
                    Error::HugePages(gcma_host::huge::HugePageError::HugetlbUnavailable {
                        needed: size_bytes / HUGE_PAGE_BYTES,
                        free: gcma_host::huge::free_hugetlb_pages()
                            .map_or_else(|| "unknown".into(), |n| n.to_string()),
                        source,
                    })
                }
                e => Error::Memory(format!("mapping guest RAM: {e}")),
            })?;
        if huge == HugePages::Thp {
            // SAFETY: the region's mapping is exactly `len` bytes at its address, owned by it.
            unsafe { gcma_host::huge::advise_hugepage(region.as_ptr(), len)? };
        }
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| Error::Memory("guest RAM region overflows".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| Error::Memory(format!("mapping guest RAM: {e}")))?;
        Ok(GuestRam {
            mem,
            memfd,
            size_bytes,
            huge,
        })
    }

    /// How guest RAM is backed.
    pub fn huge_pages(&self) -> HugePages {
        self.huge
    }

    /// The guest memory, for `vm-memory`'s `Bytes` accessors and for devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size of guest RAM in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The memfd that backs guest RAM (offset in the file = guest-physical address).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Host virtual address of guest-physical address 0 (RAM is one contiguous mapping).
    pub fn host_address(&self) -> Result<u64> {
        let ptr = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| Error::Memory(format!("host address of guest RAM: {e}")))?;
        Ok(ptr as u64)
    }

    /// Releases the host memory behind `[gpa, gpa + len)`; the guest reads zeros there afterwards.
    ///
    /// Both must be page-aligned (2 MiB-aligned on hugetlb RAM) and the range must lie inside
    /// RAM. Uses `fallocate(PUNCH_HOLE | KEEP_SIZE)` on the memfd, which frees the pages of a
    /// shared mapping.
    pub fn punch_hole(&self, gpa: u64, len: u64) -> Result<()> {
        let in_range = gpa
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes);
        let unit = if self.huge.is_hugetlb() {
            HUGE_PAGE_BYTES
        } else {
            PAGE_SIZE
        };
        if !gpa.is_multiple_of(unit) || !len.is_multiple_of(unit) || !in_range {
            return Err(Error::Memory(format!(
                "cannot release [{gpa:#x}, +{len:#x}): not aligned to {unit:#x} or outside RAM of {:#x} bytes",
                self.size_bytes
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let (offset, length) = (gpa as libc::off_t, len as libc::off_t);
        // SAFETY: the descriptor is a memfd owned by `self`; the range was checked to be inside it.
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )
        };
        if rc != 0 {
            return Err(Error::Io {
                op: "fallocate(PUNCH_HOLE) on guest RAM",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Checks that `[gpa, gpa + len)` lies inside RAM.
    pub fn contains_range(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| end <= self.size_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn allocated_bytes(file: &File) -> u64 {
        let meta = file.metadata().unwrap();
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestRam::new(0).is_err());
        assert!(GuestRam::new(4097).is_err());
    }

    #[test]
    fn writes_land_in_the_memfd_and_punch_hole_frees_them() {
        let ram = GuestRam::new(16 * PAGE_SIZE).unwrap();
        let data = [0xa5u8; PAGE_SIZE as usize];
        for page in 0..16 {
            ram.memory()
                .write_slice(&data, GuestAddress(page * PAGE_SIZE))
                .unwrap();
        }
        assert_eq!(allocated_bytes(ram.memfd()), 16 * PAGE_SIZE);

        ram.punch_hole(4 * PAGE_SIZE, 8 * PAGE_SIZE).unwrap();
        assert_eq!(allocated_bytes(ram.memfd()), 8 * PAGE_SIZE);
        let mut back = [1u8; 8];
        ram.memory()
            .read_slice(&mut back, GuestAddress(5 * PAGE_SIZE))
            .unwrap();
        assert_eq!(back, [0; 8]);
        ram.memory()
            .read_slice(&mut back, GuestAddress(12 * PAGE_SIZE))
            .unwrap();
        assert_eq!(back, [0xa5; 8]);
    }

    #[test]
    fn hugetlb_ram_is_released_in_whole_huge_pages() {
        const HUGE: u64 = HUGE_PAGE_BYTES;
        if let Err(why) = gcma_host::huge::available(HugePages::Hugetlb, 2 * HUGE) {
            e2e_tests::skip("hugetlb guest RAM", why);
            return;
        }
        assert!(GuestRam::with_huge_pages(HUGE + PAGE_SIZE, HugePages::Hugetlb).is_err());
        let ram = GuestRam::with_huge_pages(2 * HUGE, HugePages::Hugetlb).unwrap();
        assert_eq!(ram.huge_pages(), HugePages::Hugetlb);
        assert_eq!(
            allocated_bytes(ram.memfd()),
            0,
            "nothing allocated before a touch"
        );
        ram.memory()
            .write_slice(&[3u8; 8], GuestAddress(HUGE + 8))
            .unwrap();
        assert_eq!(
            allocated_bytes(ram.memfd()),
            HUGE,
            "one touch takes one huge page"
        );
        assert!(
            ram.punch_hole(HUGE, PAGE_SIZE).is_err(),
            "4 KiB holes refused"
        );
        ram.punch_hole(HUGE, HUGE).unwrap();
        assert_eq!(allocated_bytes(ram.memfd()), 0);
    }

    #[test]
    fn punch_hole_rejects_unaligned_and_out_of_range() {
        let ram = GuestRam::new(4 * PAGE_SIZE).unwrap();
        assert!(ram.punch_hole(1, PAGE_SIZE).is_err());
        assert!(ram.punch_hole(0, 5 * PAGE_SIZE).is_err());
        assert!(ram.punch_hole(u64::MAX - 4095, PAGE_SIZE).is_err());
        assert!(ram.punch_hole(0, 4 * PAGE_SIZE).is_ok());
    }
}
