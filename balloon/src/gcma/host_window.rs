//! The host side of a grant window: one reserved range of this process's address space that
//! stands for the whole window, into which pool memory is mapped grant by grant.
//!
//! The VMM registers the range once as one KVM memory slot; a grant is then one
//! `mmap(MAP_FIXED | MAP_SHARED)` of the pool's memfd at the grant's place, and freeing it puts an
//! inaccessible mapping back (KVM follows both through its MMU notifier). This is how QEMU maps
//! virtio-fs DAX ranges into one shared-memory region; it costs a few microseconds where adding
//! and removing a memory slot per grant costs about a hundred (see `vmm/examples/grant_bench.rs`).
//! A guest access to a part of the window with nothing mapped reaches no host memory: KVM reports
//! it to the VMM as an MMIO exit or a memory fault at that address.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use gcma_host::api::PAGE_SIZE;

use super::window::WindowMapper;

/// Mappings at least this long are populated when made (see [`HostWindow::map_fd`]). Measured
/// here: populating costs about as much as one `mmap`, and a 16-page grant's first touch without
/// it costs 16 host faults.
pub const POPULATE_MIN_BYTES: u64 = 16 * PAGE_SIZE as u64;

/// Alignment of a window's host address: one 2 MiB huge page.
const HUGE_ALIGN: usize = 2 << 20;

/// A reserved, page-aligned range of this process's address space; inaccessible except where
/// memory has been mapped into it with [`HostWindow::map_fd`].
#[derive(Debug)]
pub struct HostWindow {
    base: usize,
    len: usize,
}

fn einval(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
}

impl HostWindow {
    /// Reserves `len` bytes (a non-zero multiple of the page size) starting at a 2 MiB boundary,
    /// so that 2 MiB-aligned window offsets are 2 MiB-aligned host addresses: hugetlb memory can
    /// only be mapped there, and KVM maps a guest page with a 2 MiB entry only when guest and
    /// host addresses agree modulo 2 MiB. Nothing is committed.
    pub fn reserve(len: u64) -> std::io::Result<Self> {
        let len =
            usize::try_from(len).map_err(|_| einval("window larger than the address space"))?;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(einval(
                "window length is not a non-zero multiple of the page size",
            ));
        }
        let slack = HUGE_ALIGN - PAGE_SIZE;
        let whole = len
            .checked_add(slack)
            .ok_or_else(|| einval("window larger than the address space"))?;
        // SAFETY: a new anonymous mapping at an address the kernel picks; no existing memory is
        // affected. Checked for failure below; trimmed to the aligned part, which the returned
        // value owns until drop.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                whole,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let raw = raw as usize;
        let base = raw.next_multiple_of(HUGE_ALIGN);
        let (head, tail) = (base - raw, raw + whole - (base + len));
        // SAFETY: the head and tail lie inside the mapping just made and outside the part kept.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((base + len) as *mut libc::c_void, tail);
            }
        }
        Ok(HostWindow { base, len })
    }

    /// Host address of the window's first byte (what a KVM memory slot points at).
    pub fn host_addr(&self) -> usize {
        self.base
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len as u64
    }

    /// The host address of `len` bytes at `offset`, after checking they are page-aligned, non-empty
    /// and inside the window.
    fn place(&self, offset: u64, len: u64) -> std::io::Result<(*mut libc::c_void, usize)> {
        let page = PAGE_SIZE as u64;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| einval("range overflows"))?;
        if len == 0
            || !offset.is_multiple_of(page)
            || !len.is_multiple_of(page)
            || end > self.len as u64
        {
            return Err(einval("range is not page-aligned and inside the window"));
        }
        Ok((
            (self.base + offset as usize) as *mut libc::c_void,
            len as usize,
        ))
    }

    /// Maps `len` bytes of `fd` at `fd_offset` over the window at `offset`, shared and writable.
    /// Mappings of [`POPULATE_MIN_BYTES`] or more get their page tables populated now, in one
    /// call (otherwise a guest's first touch of each page costs a host fault inside KVM's fault
    /// as well); smaller ones are left to fault in, which is cheaper than populating them.
    pub fn map_fd(
        &self,
        offset: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let populate = if len >= POPULATE_MIN_BYTES {
            libc::MAP_POPULATE
        } else {
            0
        };
        let (addr, len) = self.place(offset, len)?;
        let fd_offset =
            libc::off_t::try_from(fd_offset).map_err(|_| einval("file offset out of range"))?;
        // SAFETY: `addr..addr+len` lies inside the range this window reserved and owns (checked
        // by `place`), so MAP_FIXED replaces only our own mapping there. Checked for failure.
        let r = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED | populate,
                fd.as_raw_fd(),
                fd_offset,
            )
        };
        if r == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // A failed MAP_FIXED may have removed what was there: make the range ours and
            // inaccessible again, so no later mapping of this process can land inside the window.
            let _ = self.protect(addr, len);
            return Err(e);
        }
        Ok(())
    }

    /// Makes `len` bytes of the window at `offset` inaccessible again, dropping what was mapped.
    pub fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let (addr, len) = self.place(offset, len)?;
        self.protect(addr, len)
    }

    fn protect(&self, addr: *mut libc::c_void, len: usize) -> std::io::Result<()> {
        // SAFETY: `addr..addr+len` lies inside the range this window owns; MAP_FIXED replaces
        // only our own mapping there. Checked for failure.
        let r = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for HostWindow {
    fn drop(&mut self) {
        // SAFETY: the range was reserved by `reserve` and is owned by this value alone; whoever
        // registered it with KVM removed that registration before dropping their handle.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// A [`WindowMapper`] that maps one pool's memfd into a [`HostWindow`]: the embedded pool's
/// binding, made once when the window is built.
#[derive(Debug)]
pub struct PoolMapping {
    host: Arc<HostWindow>,
    pool_fd: OwnedFd,
}

impl PoolMapping {
    /// Binds `host` to the pool whose memory is `pool_memfd` (duplicated, so the binding keeps the
    /// pool's memory alive as long as it lives).
    pub fn new(host: Arc<HostWindow>, pool_memfd: BorrowedFd<'_>) -> std::io::Result<Self> {
        Ok(PoolMapping {
            host,
            pool_fd: pool_memfd.try_clone_to_owned()?,
        })
    }

    /// The host window.
    pub fn host(&self) -> &Arc<HostWindow> {
        &self.host
    }
}

impl WindowMapper for PoolMapping {
    fn map(&self, offset: u64, pool_offset: u64, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        self.host
            .map_fd(offset, self.pool_fd.as_fd(), pool_offset, len)
    }

    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.host.unmap(offset, len)
    }
}
