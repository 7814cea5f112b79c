//! Shared by the harness tests: DMA pages carved out of harness guest memory.

use std::ptr::NonNull;

use balloon::transport::GuestMemoryMmap;
use guest_agent::{DmaExhausted, DmaRegion};
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// Takes `pages` zeroed pages at `*next` (bumping it) from `mem`, whose single region ends at
/// `limit`; the device sees them at the same guest-physical addresses.
pub fn carve_dma(
    mem: &GuestMemoryMmap,
    next: &mut u64,
    limit: u64,
    pages: usize,
) -> Result<DmaRegion, DmaExhausted> {
    let len = (pages * guest_agent::proto::PAGE_SIZE) as u64;
    if *next + len > limit {
        return Err(DmaExhausted { pages });
    }
    let gpa = *next;
    *next += len;
    let host = mem
        .get_host_address(GuestAddress(gpa))
        .map_err(|_| DmaExhausted { pages })?;
    // SAFETY: `gpa..gpa + len` lies inside the single guest memory region (checked above), so
    // `host` is valid for `len` bytes.
    unsafe { std::ptr::write_bytes(host, 0, len as usize) };
    Ok(DmaRegion {
        vaddr: NonNull::new(host).ok_or(DmaExhausted { pages })?,
        gpa,
        pages,
    })
}
