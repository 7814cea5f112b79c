//! Inflates the virtio balloon to the target the host set (`num_pages`), as a guest driver would:
//! negotiate, set up the inflate and deflate queues, write a pattern to each page it gives up (so
//! the host holds real memory there), hand the page frame numbers over in batches of at most 256,
//! report `actual`, and print `balloon: inflated <n> pages at <addr>`.
//!
//! Exit codes: 0 done, 2 no balloon device, 3 negotiation or queue set-up failed, 4 the device did
//! not return a buffer, 5 a pattern write did not read back.

#![no_std]
#![no_main]

use vmm_payloads::abi::PAGE_SIZE;
use vmm_payloads::virtio::{Device, F_VERSION_1};
use vmm_payloads::{alloc_pages, entry, free_pages, println};

entry!(main);

const VIRTIO_ID_BALLOON: u32 = 5;
const CONFIG_NUM_PAGES: u64 = 0;
const CONFIG_ACTUAL: u64 = 4;
const PFNS_PER_BUFFER: u64 = 256;
const PATTERN: u8 = 0xa5;

fn main(_ram_bytes: u64, _arg: u64) -> u32 {
    let dev = match Device::find(VIRTIO_ID_BALLOON) {
        Ok(dev) => dev,
        Err(e) => {
            println!("balloon: no device: {e:?}");
            return 2;
        }
    };
    let Some(rings) = alloc_pages(3) else {
        return 3;
    };
    let (inflate_page, deflate_page, pfn_page) = (rings, rings + PAGE_SIZE, rings + 2 * PAGE_SIZE);
    let setup = dev.negotiate(F_VERSION_1).and_then(|_| {
        let inflate = dev.setup_queue(0, inflate_page)?;
        dev.setup_queue(1, deflate_page)?;
        Ok(inflate)
    });
    let mut inflate = match setup {
        Ok(q) => q,
        Err(e) => {
            println!("balloon: set-up failed: {e:?}");
            return 3;
        }
    };
    dev.driver_ok();

    let target = u64::from(dev.config_read32(CONFIG_NUM_PAGES));
    let count = target.min(free_pages());
    let Some(first) = alloc_pages(count) else {
        return 3;
    };
    let mut done = 0u64;
    while done < count {
        let batch = (count - done).min(PFNS_PER_BUFFER);
        for i in 0..batch {
            let page = first + (done + i) * PAGE_SIZE;
            // SAFETY: `page` is a whole page of free guest RAM above the image and below the
            // stack, identity-mapped; the pfn buffer page is likewise ours.
            unsafe {
                core::ptr::write_bytes(page as *mut u8, PATTERN, PAGE_SIZE as usize);
                if core::ptr::read_volatile((page + PAGE_SIZE - 1) as *const u8) != PATTERN {
                    return 5;
                }
                core::ptr::write_volatile(
                    (pfn_page + 4 * i) as *mut u32,
                    (page / PAGE_SIZE) as u32,
                );
            }
        }
        if let Err(e) = dev.submit_and_wait(&mut inflate, pfn_page, (batch * 4) as u32) {
            println!("balloon: inflate failed after {done} pages: {e:?}");
            return 4;
        }
        done += batch;
    }
    dev.config_write32(CONFIG_ACTUAL, done as u32);
    println!("balloon: inflated {done} pages at {first:#x}");
    0
}
