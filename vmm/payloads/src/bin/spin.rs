//! Prints `spin: running` and then loops forever without exiting: for stopping a VM from the host.

#![no_std]
#![no_main]

use vmm_payloads::{entry, println};

entry!(main);

fn main(_ram_bytes: u64, _arg: u64) -> u32 {
    println!("spin: running");
    loop {
        core::hint::spin_loop();
    }
}
