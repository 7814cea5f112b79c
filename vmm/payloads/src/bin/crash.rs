//! Faults on purpose: prints the address of the faulting instruction, then executes `ud2` there.
//! With no IDT the #UD becomes a triple fault, which the VMM reports with the guest RIP.

#![no_std]
#![no_main]

use vmm_payloads::{entry, println};

entry!(main);

/// The faulting instruction is the first byte of this function.
#[unsafe(naked)]
extern "C" fn fault_here() -> ! {
    core::arch::naked_asm!("ud2")
}

fn main(_ram_bytes: u64, _arg: u64) -> u32 {
    println!("crash: faulting at {:#x}", fault_here as *const () as usize);
    fault_here()
}
