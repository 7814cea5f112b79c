//! Prints a greeting with what it found in its entry registers through the batched console, then
//! `via uart` byte by byte through the 16550, and exits with code 0.

#![no_std]
#![no_main]

use vmm_payloads::{entry, println, putc};

entry!(main);

fn main(ram_bytes: u64, arg: u64) -> u32 {
    println!(
        "hello from a ring-3 payload: ram={} MiB arg={arg}",
        ram_bytes >> 20
    );
    b"via uart\n".iter().copied().for_each(putc);
    0
}
