//! The range allocator against its reference model (see `src/range.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gcma_host_fuzz::range::run(data));
