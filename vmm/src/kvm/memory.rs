//! Guest RAM: one memfd mapped shared through `vm-memory`.
//!
//! Backing RAM with a memfd (rather than anonymous memory) lets the balloon release guest pages
//! with `fallocate(FALLOC_FL_PUNCH_HOLE)`; `MADV_DONTNEED` frees nothing on a shared mapping.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::abi::PAGE_SIZE;
use crate::error::{Error, Result};

/// Guest RAM starting at guest-physical address 0, backed by a memfd.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    memfd: Arc<File>,
    size_bytes: u64,
}

impl GuestRam {
    /// Creates `size_bytes` of guest RAM (a positive multiple of [`PAGE_SIZE`]).
    ///
    /// Pages are not touched: host memory is used only as the guest writes.
    pub fn new(size_bytes: u64) -> Result<Self> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Config(format!(
                "guest RAM size {size_bytes} is not a positive multiple of {PAGE_SIZE}"
            )));
        }
        let len = usize::try_from(size_bytes)
            .map_err(|_| Error::Config(format!("guest RAM size {size_bytes} is too large")))?;
        let name: &CStr = c"vmm-guest-ram";
        // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::Io {
                op: "memfd_create",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns; the File closes it on drop.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size_bytes).map_err(|source| Error::Io {
            op: "sizing the guest RAM memfd",
            source,
        })?;
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
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            len,
            Some(FileOffset::from_arc(memfd.clone(), 0)),
        )])
        .map_err(|e| Error::Memory(format!("mapping guest RAM: {e}")))?;
        Ok(GuestRam {
            mem,
            memfd,
            size_bytes,
        })
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
    /// Both must be page-aligned and the range must lie inside RAM. Uses
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` on the memfd, which frees the pages of a shared mapping.
    pub fn punch_hole(&self, gpa: u64, len: u64) -> Result<()> {
        let in_range = gpa
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes);
        if !gpa.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || !in_range {
            return Err(Error::Memory(format!(
                "cannot release [{gpa:#x}, +{len:#x}): not page-aligned or outside RAM of {:#x} bytes",
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
    fn punch_hole_rejects_unaligned_and_out_of_range() {
        let ram = GuestRam::new(4 * PAGE_SIZE).unwrap();
        assert!(ram.punch_hole(1, PAGE_SIZE).is_err());
        assert!(ram.punch_hole(0, 5 * PAGE_SIZE).is_err());
        assert!(ram.punch_hole(u64::MAX - 4095, PAGE_SIZE).is_err());
        assert!(ram.punch_hole(0, 4 * PAGE_SIZE).is_ok());
    }
}
