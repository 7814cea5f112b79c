//! Fills guest memory the host mapped (a grant) with a pattern and checks it.
//!
//! The argument packs the target (see `abi::FILL_PAGES_SHIFT`): `gpa | (nr_pages << 40) | flags`.
//! Every 8-byte word at address `a` gets `a ^ FILL_KEY`; the payload reads everything back, prints
//! `fill: wrote <n> pages at <gpa>` and exits 0 (1 on a mismatch, 2 on a bad argument). With
//! `FILL_TOUCH_ONLY` it writes the first word of each page only and exits 0 without printing.

#![no_std]
#![no_main]

use vmm_payloads::abi::{FILL_KEY, FILL_PAGES_SHIFT, FILL_TOUCH_ONLY, PAGE_SIZE};
use vmm_payloads::{entry, println};

entry!(main);

fn main(_ram_bytes: u64, arg: u64) -> u32 {
    let gpa = arg & ((1 << FILL_PAGES_SHIFT) - 1) & !(PAGE_SIZE - 1);
    let nr_pages = arg >> FILL_PAGES_SHIFT;
    if gpa == 0 || nr_pages == 0 {
        println!("fill: bad argument {arg:#x}");
        return 2;
    }
    let end = gpa + nr_pages * PAGE_SIZE;
    if arg & FILL_TOUCH_ONLY != 0 {
        for a in (gpa..end).step_by(PAGE_SIZE as usize) {
            // SAFETY: the host mapped `[gpa, end)` for this payload (identity-mapped window).
            unsafe { core::ptr::write_volatile(a as *mut u64, a ^ FILL_KEY) };
        }
        return 0;
    }
    for a in (gpa..end).step_by(8) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(a as *mut u64, a ^ FILL_KEY) };
    }
    for a in (gpa..end).step_by(8) {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(a as *const u64) } != a ^ FILL_KEY {
            println!("fill: mismatch at {a:#x}");
            return 1;
        }
    }
    println!("fill: wrote {nr_pages} pages at {gpa:#x}");
    0
}
