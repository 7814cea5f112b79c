//! Drives virtio-gcma from the guest with the guest-agent driver core: negotiates, sets up the
//! queues, asks for a contiguous grant (`ALLOC_CONTIG`), writes a pattern across the whole grant
//! and checks it, then gives it back (`FREE_CONTIG`) unless told to keep it.
//!
//! Argument: bits 0..32 the grant size in pages (0 means 256); bit 32 set keeps the grant (so the
//! host can inspect pool memory after the run). The pattern is `fill`'s: the word at guest
//! address `a` holds `a ^ FILL_KEY`. Prints `gcma: granted <n> pages at <gpa>` and, when freeing,
//! `gcma: freed`. Exit codes: 0 done, 2 no device, 3 driver set-up failed, 4 grant refused,
//! 5 pattern mismatch, 6 free failed.

#![no_std]
#![no_main]

use guest_agent::proto::{VIRTIO_GCMA_F_CONTIG, VIRTIO_ID_GCMA};
use guest_agent::{DriverConfig, GcmaDriver, RawHal};
use vmm_payloads::abi::{FILL_KEY, PAGE_SIZE};
use vmm_payloads::virtio::Device;
use vmm_payloads::{alloc_pages, entry, println};

entry!(main);

/// Bit of the argument that keeps the grant mapped at exit.
const KEEP_GRANT: u64 = 1 << 32;
/// DMA pages for the driver's rings and request buffers.
const DMA_PAGES: u64 = 256;

fn main(_ram_bytes: u64, arg: u64) -> u32 {
    let nr_pages = match arg & 0xffff_ffff {
        0 => 256,
        n => n,
    };
    let Ok(dev) = Device::find(VIRTIO_ID_GCMA) else {
        println!("gcma: no device");
        return 2;
    };
    let Some(dma) = alloc_pages(DMA_PAGES) else {
        println!("gcma: no memory for DMA");
        return 3;
    };
    // SAFETY: `dev.base()` is the identity-mapped register window the VMM placed the device at;
    // the DMA pages were just taken from free RAM (zero: fresh guest memory) and nothing else
    // uses them.
    let hal = unsafe {
        RawHal::new(
            dev.base() as usize,
            dma as usize,
            (dma + DMA_PAGES * PAGE_SIZE) as usize,
        )
    };
    let cfg = DriverConfig {
        features: VIRTIO_GCMA_F_CONTIG,
        ..DriverConfig::default()
    };
    let mut driver = match GcmaDriver::new(hal, cfg) {
        Ok(d) => d,
        Err(e) => {
            println!("gcma: driver set-up failed: {e:?}");
            return 3;
        }
    };
    let region = match driver.alloc_contig(nr_pages, 1) {
        Ok(r) => r,
        Err(e) => {
            println!("gcma: ALLOC_CONTIG of {nr_pages} pages failed: {e:?}");
            return 4;
        }
    };
    let (start, end) = (region.gpa, region.gpa + region.nr_pages * PAGE_SIZE);
    for a in (start..end).step_by(8) {
        // SAFETY: the device mapped the grant at `[start, end)` in the identity-mapped window.
        unsafe { core::ptr::write_volatile(a as *mut u64, a ^ FILL_KEY) };
    }
    for a in (start..end).step_by(8) {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(a as *const u64) } != a ^ FILL_KEY {
            println!("gcma: mismatch at {a:#x}");
            return 5;
        }
    }
    println!("gcma: granted {} pages at {start:#x}", region.nr_pages);
    if arg & KEEP_GRANT != 0 {
        return 0;
    }
    if let Err(e) = driver.free_contig(region) {
        println!("gcma: FREE_CONTIG failed: {e:?}");
        return 6;
    }
    println!("gcma: freed");
    0
}
