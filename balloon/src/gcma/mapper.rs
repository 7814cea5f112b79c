//! The grant window: where granted pool memory appears in guest-physical address space.
//!
//! The device decides *what* is granted (through the pool); a [`GrantMapper`] decides *where* the
//! grant appears in the guest and makes it appear there. The VMM implements it (its own range
//! allocator over the window, `mmap` of the pool memfd, `KVM_SET_USER_MEMORY_REGION`); tests use
//! `testing::MemfdGrantMapper` (feature `test-utils`).

use std::os::fd::BorrowedFd;

use gcma_host::api::ContigGrant;

/// The guest-physical window grants are mapped into (shared-memory region 0 of the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantWindow {
    /// First guest-physical address of the window.
    pub gpa: u64,
    /// Length of the window in bytes (a multiple of the page size).
    pub len_bytes: u64,
}

/// Why a grant could not be mapped or unmapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// No free run in the window is long enough (at the requested alignment).
    #[error("grant window has no free run of {nr_pages} pages aligned to {align_pages}")]
    WindowFull {
        /// Pages asked for.
        nr_pages: u64,
        /// Alignment asked for, in pages.
        align_pages: u64,
    },
    /// No mapping starts at this guest-physical address.
    #[error("no grant mapped at {0:#x}")]
    NotMapped(u64),
    /// The host refused (mmap, memory slot).
    #[error("host mapping failed: {0}")]
    Host(#[from] std::io::Error),
}

/// Maps pool grants into a guest's grant window.
///
/// Implementations must make the guest-physical range show exactly the pool pages of the grant
/// (the pool memfd at [`ContigGrant::offset_bytes`]) until [`unmap`](Self::unmap) returns `Ok`;
/// after that the guest must no longer reach those pages.
pub trait GrantMapper: Send + Sync {
    /// The window this mapper places grants in.
    fn window(&self) -> GrantWindow;

    /// Maps `grant` (pages of `pool_memfd`) at a free guest-physical address inside the window
    /// that is a multiple of `align_pages` pages; returns that address.
    fn map(
        &self,
        pool_memfd: BorrowedFd<'_>,
        grant: &ContigGrant,
        align_pages: u64,
    ) -> Result<u64, MapError>;

    /// Removes the mapping of `grant` at `gpa` (as returned by [`map`](Self::map)).
    fn unmap(&self, gpa: u64, grant: &ContigGrant) -> Result<(), MapError>;
}
