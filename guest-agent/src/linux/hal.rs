//! The driver core's [`Hal`] for the Linux agent: registers through any
//! [`RegisterWindow`] (a `/dev/mem` mapping in a guest) and DMA pages from any [`DmaPages`]
//! source (locked, pagemap-translated memory in a guest).
//!
//! Both halves are seams so the same `LinuxHal` runs on the host against `balloon`'s harness:
//! a window over the harness transport and pages out of the harness guest memory.

use std::sync::{Arc, Mutex};

use crate::hal::{DmaExhausted, DmaRegion, Hal};

use super::dma::{DmaAllocator, DmaBuffer, DmaError, HugePages};
use super::regs::RegisterWindow;

/// A source of DMA pages.
///
/// # Safety
///
/// Implementors promise what [`Hal::dma_alloc`] promises: every region is zeroed, page-aligned,
/// valid for reads and writes of `pages * 4096` bytes at `vaddr` as long as the source lives,
/// handed out once, and seen by the device contiguously at `gpa`.
pub unsafe trait DmaPages {
    /// `pages` zeroed, physically contiguous pages.
    fn alloc_pages(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted>;
}

/// DMA pages from [`DmaAllocator`]: locked memory (hugetlb when available) whose guest-physical
/// addresses come from `/proc/self/pagemap`. Buffers are kept until the source is dropped.
#[derive(Debug)]
pub struct PagemapDma {
    alloc: DmaAllocator,
    held: Vec<DmaBuffer>,
    last_error: Arc<Mutex<Option<DmaError>>>,
}

impl PagemapDma {
    /// A source over `/proc/self/pagemap`; fails at once when addresses are hidden.
    pub fn new(huge: HugePages) -> Result<Self, DmaError> {
        Ok(Self::with_allocator(DmaAllocator::new(huge)?))
    }

    /// A source over an existing allocator.
    pub fn with_allocator(alloc: DmaAllocator) -> Self {
        PagemapDma {
            alloc,
            held: Vec::new(),
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the reason of the last failed allocation is kept (the HAL interface only says
    /// "exhausted"); stays readable after the source moved into a driver.
    pub fn error_sink(&self) -> Arc<Mutex<Option<DmaError>>> {
        Arc::clone(&self.last_error)
    }

    /// Buffers handed out so far.
    pub fn buffers(&self) -> &[DmaBuffer] {
        &self.held
    }
}

// SAFETY: every region is a `DmaBuffer` (zeroed anonymous memory, page-aligned, locked, checked
// physically contiguous through the pagemap) kept in `held` until the source is dropped, and each
// is handed out once.
unsafe impl DmaPages for PagemapDma {
    fn alloc_pages(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        match self.alloc.alloc(pages) {
            Ok(b) => {
                let r = DmaRegion {
                    vaddr: b.as_ptr(),
                    gpa: b.phys(),
                    pages,
                };
                self.held.push(b);
                Ok(r)
            }
            Err(e) => {
                let mut sink = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                *sink = Some(e);
                Err(DmaExhausted { pages })
            }
        }
    }
}

/// The Linux agent's HAL.
#[derive(Debug)]
pub struct LinuxHal<W, D> {
    regs: W,
    dma: D,
}

impl<W: RegisterWindow, D: DmaPages> LinuxHal<W, D> {
    /// A HAL over a register window and a DMA source.
    pub fn new(regs: W, dma: D) -> Self {
        LinuxHal { regs, dma }
    }

    /// The register window.
    pub fn regs(&mut self) -> &mut W {
        &mut self.regs
    }

    /// The DMA source.
    pub fn dma(&mut self) -> &mut D {
        &mut self.dma
    }
}

// SAFETY: `dma_alloc` forwards to a `DmaPages` source, whose contract is the same as the HAL's.
unsafe impl<W: RegisterWindow, D: DmaPages> Hal for LinuxHal<W, D> {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        usize::try_from(offset).map_or(u32::MAX, |o| self.regs.read32(o))
    }

    fn mmio_write32(&mut self, offset: u64, value: u32) {
        if let Ok(o) = usize::try_from(offset) {
            self.regs.write32(o, value)
        }
    }

    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        self.dma.alloc_pages(pages)
    }
}
