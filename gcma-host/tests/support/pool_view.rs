//! What the pool's integration tests share: the pool's memory mapped as a VMM maps it, and a
//! small deterministic random number generator. Included with `#[path]` by the tests that use it.

#![allow(dead_code)] // Each test uses part of it.

use std::os::fd::AsRawFd;

use gcma_host::api::{GcmaBackend, PAGE_SIZE};
use gcma_host::pool::Pool;

/// xorshift64: reproducible from its seed, which a failing run prints.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A read-write shared mapping of the pool's memfd, unmapped on drop. Threads share it: each
/// touches only pages of grants it holds.
pub struct MemfdView {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the view is a plain mapping; callers only touch pages of grants they hold.
unsafe impl Send for MemfdView {}
// SAFETY: as above.
unsafe impl Sync for MemfdView {}

impl MemfdView {
    /// Maps all of `pool`.
    pub fn new(pool: &Pool) -> Self {
        let len = pool.nr_pages() as usize * PAGE_SIZE;
        // SAFETY: a fresh shared mapping of the pool's memfd; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool.memfd().as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of the pool memfd");
        MemfdView {
            ptr: ptr.cast(),
            len,
        }
    }

    fn range(&self, first: u64, nr: u64) -> (usize, usize) {
        let (off, len) = (first as usize * PAGE_SIZE, nr as usize * PAGE_SIZE);
        assert!(off + len <= self.len);
        (off, len)
    }

    /// The bytes of `nr` pages from `first`, which the caller holds granted.
    pub fn pages(&self, first: u64, nr: u64) -> &[u8] {
        let (off, len) = self.range(first, nr);
        // SAFETY: inside the mapping; granted pages are not touched by the pool while granted.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// The same pages, writable.
    #[allow(clippy::mut_from_ref)]
    pub fn pages_mut(&self, first: u64, nr: u64) -> &mut [u8] {
        let (off, len) = self.range(first, nr);
        // SAFETY: inside the mapping; the caller holds the grant, so no one else uses the pages.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }

    /// Fills granted pages with `byte`.
    pub fn fill(&self, first: u64, nr: u64, byte: u8) {
        self.pages_mut(first, nr).fill(byte);
    }
}

impl Drop for MemfdView {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
