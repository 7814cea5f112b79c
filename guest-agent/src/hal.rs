//! The hardware abstraction the driver core runs on: register access to one virtio-mmio window and
//! DMA memory (memory the device can reach, with both the driver's pointer and the guest-physical
//! address the device uses).
//!
//! Three implementations exist or are planned: [`RawHal`] (kernel-less payloads: identity-mapped,
//! registers through volatile pointers, a bump allocator over a fixed DMA area), the Linux
//! userspace agent (`/dev/mem` + pagemap), and the host-side test HAL over `balloon`'s harness.

use core::ptr::NonNull;

use gcma_proto::gcma::PAGE_SIZE;

/// A run of DMA pages handed out by a [`Hal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// Where the driver reads and writes the memory.
    pub vaddr: NonNull<u8>,
    /// Guest-physical address of the first byte (what the device is told).
    pub gpa: u64,
    /// Length in pages.
    pub pages: usize,
}

/// Why a HAL could not provide DMA memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaExhausted {
    /// Pages asked for.
    pub pages: usize,
}

/// Register access and DMA memory for one virtio-mmio device.
///
/// # Safety
///
/// Implementors promise that every [`DmaRegion`] returned by [`dma_alloc`](Self::dma_alloc) is
/// zeroed, page-aligned, valid for reads and writes of `pages * 4096` bytes at `vaddr` for as long
/// as the HAL lives, not handed out twice, and seen by the device at `gpa` (contiguously).
pub unsafe trait Hal {
    /// 32-bit read of the register at `offset` in the device's MMIO window.
    fn mmio_read32(&mut self, offset: u64) -> u32;
    /// 32-bit write of the register at `offset` in the device's MMIO window.
    fn mmio_write32(&mut self, offset: u64, value: u32);
    /// `pages` zeroed, physically contiguous pages of DMA memory.
    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted>;
    /// Called while the driver polls for used buffers, with the number of polls of this wait so
    /// far (1 on the first). Spins by default and returns `false`. A HAL that can sleep until
    /// the device's interrupt returns `true` once the wait has lasted longer than spinning is
    /// worth: the driver then turns the queue's interrupts on, looks at the used ring once more
    /// and calls [`wait_interrupt`](Self::wait_interrupt) between further looks.
    fn wait_hint(&mut self, polls: u64) -> bool {
        let _ = polls;
        core::hint::spin_loop();
        false
    }

    /// Sleeps until the device raises its interrupt (one raised since the last call counts) or
    /// some bounded time passes. Only called after [`wait_hint`](Self::wait_hint) returned
    /// `true`; the default just spins once.
    fn wait_interrupt(&mut self) {
        core::hint::spin_loop();
    }
}

/// A HAL for identity-mapped, kernel-less guests: registers are read and written with volatile
/// accesses at `mmio_base + offset`; DMA pages come from a bump allocator over a fixed area whose
/// guest-physical address equals its address (nothing is ever freed; the driver allocates once).
#[derive(Debug)]
pub struct RawHal {
    mmio_base: usize,
    next: usize,
    end: usize,
}

impl RawHal {
    /// A HAL for the device whose registers start at `mmio_base`, taking DMA pages from
    /// `dma_start..dma_end`.
    ///
    /// # Safety
    ///
    /// `mmio_base` must be the (identity-mapped) base of a virtio-mmio register window, and
    /// `dma_start..dma_end` identity-mapped guest RAM, zeroed, that nothing else uses while the
    /// HAL lives.
    pub unsafe fn new(mmio_base: usize, dma_start: usize, dma_end: usize) -> Self {
        RawHal {
            mmio_base,
            next: dma_start.next_multiple_of(PAGE_SIZE),
            end: dma_end,
        }
    }
}

// SAFETY: pages come from the caller-guaranteed exclusive, zeroed, identity-mapped area, each
// handed out once by the bump pointer.
unsafe impl Hal for RawHal {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        let p = (self.mmio_base + offset as usize) as *const u32;
        // SAFETY: `new`'s contract: the window is a mapped register file; offsets come from the
        // driver's register constants (4-byte aligned).
        unsafe { core::ptr::read_volatile(p) }
    }

    fn mmio_write32(&mut self, offset: u64, value: u32) {
        let p = (self.mmio_base + offset as usize) as *mut u32;
        // SAFETY: as for `mmio_read32`.
        unsafe { core::ptr::write_volatile(p, value) }
    }

    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        let len = pages.checked_mul(PAGE_SIZE).ok_or(DmaExhausted { pages })?;
        let end = self.next.checked_add(len).ok_or(DmaExhausted { pages })?;
        if end > self.end {
            return Err(DmaExhausted { pages });
        }
        let vaddr = NonNull::new(self.next as *mut u8).ok_or(DmaExhausted { pages })?;
        let r = DmaRegion {
            vaddr,
            gpa: self.next as u64,
            pages,
        };
        self.next = end;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_hal_accesses_registers_and_bumps_dma_pages() {
        let mut regs = [0u32; 64];
        let layout = std::alloc::Layout::from_size_align(4 * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let dma = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!dma.is_null());
        let base = dma as usize;
        // SAFETY: `regs` outlives the HAL and stands in for a register window; the DMA area is a
        // zeroed, exclusively owned allocation of four pages.
        let mut hal =
            unsafe { RawHal::new(regs.as_mut_ptr() as usize, base + 1, base + 4 * PAGE_SIZE) };
        hal.mmio_write32(0x70, 0xf);
        assert_eq!(hal.mmio_read32(0x70), 0xf);
        let a = hal.dma_alloc(1).unwrap();
        assert_eq!(
            a.gpa as usize,
            base + PAGE_SIZE,
            "start is rounded up to a page"
        );
        assert_eq!(a.vaddr.as_ptr() as u64, a.gpa, "identity mapping");
        let b = hal.dma_alloc(2).unwrap();
        assert_eq!(b.gpa, a.gpa + PAGE_SIZE as u64);
        assert_eq!(hal.dma_alloc(1), Err(DmaExhausted { pages: 1 }));
        assert_eq!(
            hal.dma_alloc(usize::MAX),
            Err(DmaExhausted { pages: usize::MAX })
        );
        assert_eq!(regs[0x70 / 4], 0xf);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(dma, layout) };
    }
}
