//! Fills guest memory the host mapped (a grant) with a pattern and checks it.
//!
//! The argument packs the target: `arg = gpa | nr_pages` with `gpa` page-aligned and
//! `1 <= nr_pages < 4096`. Every 8-byte word at address `a` gets `a ^ FILL_KEY`; the payload reads
//! everything back, prints `fill: wrote <n> pages at <gpa>` and exits 0 (1 on a mismatch, 2 on a
//! bad argument).

#![no_std]
#![no_main]

use vmm_payloads::abi::PAGE_SIZE;
use vmm_payloads::{entry, println};

entry!(main);

/// XORed into every word's address to make the pattern (the host test uses the same key).
const FILL_KEY: u64 = 0x9e37_79b9_7f4a_7c15;

fn main(_ram_bytes: u64, arg: u64) -> u32 {
    let gpa = arg & !(PAGE_SIZE - 1);
    let nr_pages = arg & (PAGE_SIZE - 1);
    if gpa == 0 || nr_pages == 0 {
        println!("fill: bad argument {arg:#x}");
        return 2;
    }
    let end = gpa + nr_pages * PAGE_SIZE;
    for a in (gpa..end).step_by(8) {
        // SAFETY: the host mapped `[gpa, end)` for this payload (identity-mapped window).
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
