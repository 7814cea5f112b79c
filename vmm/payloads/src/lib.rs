//! Runtime for kernel-less payloads: entry, serial console, exit, panic handler and the memory
//! functions `core` needs.
//!
//! Payloads run in ring 3 with no kernel; they reach the VMM only through MMIO (see
//! [`abi`], shared with the VMM). A payload is a `#![no_std] #![no_main]` binary that calls
//! [`entry!`] with its `main(ram_bytes, arg) -> exit_code`.
//!
//! `vmm/build.rs` builds this crate and embeds the binaries it lists. By hand:
//! `cd vmm/payloads && cargo build --release` leaves static ELFs in `target/release/` (the flags
//! are in `.cargo/config.toml`), which `vmm run --payload <path>` runs. A new payload needs a
//! `[[bin]]` entry in `Cargo.toml`, its name in `vmm/build.rs` and a variant in
//! `vmm/src/payloads.rs` if it should be built in.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

#[path = "../../src/abi.rs"]
pub mod abi;
pub mod virtio;

extern "C" {
    /// End of the image's last segment, defined by the linker.
    static _end: u8;
}

/// First page-aligned address past the payload image: free RAM up to the stack.
pub fn free_memory_start() -> u64 {
    let end = core::ptr::addr_of!(_end) as u64;
    (end + abi::PAGE_SIZE - 1) & !(abi::PAGE_SIZE - 1)
}

/// Space kept for the stack at the top of RAM (the VMM's loader keeps the same).
pub const STACK_BYTES: u64 = 1 << 20;

/// Next free page of the area between the image and the stack, and that area's end.
static NEXT_PAGE: AtomicU64 = AtomicU64::new(0);
static PAGES_END: AtomicU64 = AtomicU64::new(0);

/// Sets up the page allocator over `[free_memory_start(), ram_bytes - STACK_BYTES)`; called by
/// [`entry!`] before `main`.
pub fn init(ram_bytes: u64) {
    NEXT_PAGE.store(free_memory_start(), Ordering::Relaxed);
    PAGES_END.store(ram_bytes.saturating_sub(STACK_BYTES), Ordering::Relaxed);
}

/// Takes `n` contiguous pages of free guest RAM (identity-mapped: address = guest-physical).
/// Pages are never given back. `None` when RAM runs out.
pub fn alloc_pages(n: u64) -> Option<u64> {
    let len = n.checked_mul(abi::PAGE_SIZE)?;
    let start = NEXT_PAGE.load(Ordering::Relaxed);
    let end = start.checked_add(len)?;
    if end > PAGES_END.load(Ordering::Relaxed) {
        return None;
    }
    NEXT_PAGE.store(end, Ordering::Relaxed);
    Some(start)
}

/// Pages left for [`alloc_pages`].
pub fn free_pages() -> u64 {
    PAGES_END
        .load(Ordering::Relaxed)
        .saturating_sub(NEXT_PAGE.load(Ordering::Relaxed))
        / abi::PAGE_SIZE
}

/// A bump heap for `alloc` (payloads are single-threaded and short-lived; nothing is freed),
/// growing by whole pages from [`alloc_pages`].
struct BumpHeap {
    next: AtomicU64,
    end: AtomicU64,
}

// SAFETY: every returned block is fresh, aligned as asked and inside pages only the heap owns.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align() as u64;
        let size = layout.size() as u64;
        let mut start = (self.next.load(Ordering::Relaxed) + align - 1) & !(align - 1);
        if start == 0 || start + size > self.end.load(Ordering::Relaxed) {
            // Grow: a new run of pages (the old remainder is abandoned).
            let pages = (size + align).div_ceil(abi::PAGE_SIZE).max(16);
            let Some(base) = alloc_pages(pages) else {
                return core::ptr::null_mut();
            };
            self.end
                .store(base + pages * abi::PAGE_SIZE, Ordering::Relaxed);
            start = (base + align - 1) & !(align - 1);
        }
        self.next.store(start + size, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: BumpHeap = BumpHeap {
    next: AtomicU64::new(0),
    end: AtomicU64::new(0),
};

/// Writes one byte to the UART's transmit register.
pub fn putc(byte: u8) {
    // SAFETY: SERIAL_BASE is the identity-mapped MMIO address of the VMM's UART; a volatile byte
    // store there is an MMIO exit the VMM handles.
    unsafe { core::ptr::write_volatile(abi::SERIAL_BASE as *mut u8, byte) }
}

/// Writes a string to the console: one MMIO exit for the whole string through the VMM's batched
/// console (the UART's output stream), instead of one per byte with [`putc`].
pub fn puts(s: &str) {
    let (addr, len) = (s.as_ptr() as u64, s.len() as u64);
    if len == 0 {
        return;
    }
    if len >= 1 << (64 - abi::CONSOLE_LEN_SHIFT) {
        s.bytes().for_each(putc);
        return;
    }
    // SAFETY: CONSOLE_BASE is the identity-mapped MMIO address of the VMM's batched console; the
    // VMM reads `len` bytes at `addr` (identity-mapped guest memory) during this exit.
    unsafe {
        core::ptr::write_volatile(
            (abi::CONSOLE_BASE + abi::CONSOLE_REG_WRITE) as *mut u64,
            addr | (len << abi::CONSOLE_LEN_SHIFT),
        )
    }
}

/// The serial console as a `core::fmt::Write` sink.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        puts(s);
        Ok(())
    }
}

/// Prints to the serial console, with a newline.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Console, $($arg)*);
    }};
}

/// Ends the microVM with `code` through the exit device.
pub fn exit(code: u32) -> ! {
    // SAFETY: EXIT_BASE is the identity-mapped MMIO address of the VMM's exit device.
    unsafe { core::ptr::write_volatile((abi::EXIT_BASE + abi::EXIT_REG_CODE) as *mut u32, code) };
    // The VMM stops the vCPU at the write above; never return if it does not.
    loop {
        core::hint::spin_loop();
    }
}

/// Defines the payload entry point `_start(ram_bytes, arg)` (the VMM passes them in `rdi` and
/// `rsi`) calling `$main` and exiting with its result.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Payload entry point (see `vmm/src/abi.rs`).
        #[no_mangle]
        pub extern "C" fn _start(ram_bytes: u64, arg: u64) -> ! {
            $crate::init(ram_bytes);
            let main: fn(u64, u64) -> u32 = $main;
            $crate::exit(main(ram_bytes, arg))
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("payload panicked: {info}");
    exit(101)
}

/// Referenced by the precompiled `core`; never called with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// The memory functions the compiler emits calls to. Written with `rep movsb`/`rep stosb` so
/// that the compiler cannot turn their bodies back into calls to themselves.
mod mem {
    /// # Safety
    /// Standard C `memcpy` contract.
    #[no_mangle]
    pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller guarantees both ranges are valid and do not overlap.
        unsafe {
            core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _,
                inout("rsi") src => _, options(nostack, preserves_flags));
        }
        dest
    }

    /// # Safety
    /// Standard C `memmove` contract.
    #[no_mangle]
    pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if (dest as usize).wrapping_sub(src as usize) >= n {
            // No harmful overlap: a forward copy is correct.
            // SAFETY: the caller guarantees both ranges are valid.
            return unsafe { memcpy(dest, src, n) };
        }
        // SAFETY: the caller guarantees both ranges are valid; copying backwards from the last
        // byte (direction flag set, then cleared as the ABI requires) handles the overlap.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld", inout("rcx") n => _,
                inout("rdi") dest.add(n).wrapping_sub(1) => _,
                inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack));
        }
        dest
    }

    /// # Safety
    /// Standard C `memset` contract.
    #[no_mangle]
    pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
        // SAFETY: the caller guarantees the range is valid.
        unsafe {
            core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _,
                in("al") c as u8, options(nostack, preserves_flags));
        }
        dest
    }

    /// # Safety
    /// Standard C `memcmp` contract.
    #[no_mangle]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        let mut i = 0;
        while i < n {
            // SAFETY: the caller guarantees both ranges hold `n` readable bytes.
            let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
            i += 1;
        }
        0
    }

    /// # Safety
    /// Standard `bcmp` contract.
    #[no_mangle]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: same contract as memcmp.
        unsafe { memcmp(a, b, n) }
    }
}
