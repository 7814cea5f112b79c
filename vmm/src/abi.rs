//! The contract between the VMM and kernel-less payloads: where things are in guest-physical
//! space and what the payload finds in its registers at entry.
//!
//! This file holds only `const` items so that the `no_std` payload crate (`vmm/payloads`) can
//! include the very same file with `#[path]`; the two sides cannot drift apart.
//!
//! Entry state (see `DESIGN.md`, "Environment facts"): 64-bit mode, ring 3, paging on with an
//! identity map of guest RAM, the MMIO window and (when configured) the grant window; interrupts
//! off; `rsp` 16-byte aligned minus 8 (as if a `call` had just happened) just below the top of
//! RAM; `rdi` = guest RAM size in bytes; `rsi` = the payload argument given to the VMM.

/// Size of a guest page as the payload and the VMM see it.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical address where payload ELF images are linked (`--image-base`). Everything below
/// it is reserved for the VMM's boot structures (GDT, TSS, page tables).
pub const PAYLOAD_LOAD_ADDR: u64 = 0x40_0000;

/// Start of the window where MMIO devices live (identity-mapped, not backed by RAM).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of the MMIO window.
pub const MMIO_SIZE: u64 = 0x1000_0000;

/// 16550 UART registers, one byte each at `SERIAL_BASE + n` for the usual register numbers
/// (0 = THR/RBR, 5 = LSR, ...). Reached by MMIO because ring-3 port I/O faults.
pub const SERIAL_BASE: u64 = MMIO_BASE;
/// Size of the serial register block.
pub const SERIAL_SIZE: u64 = 8;

/// The exit device: a 4-byte write of a code to `EXIT_BASE + EXIT_REG_CODE` ends the microVM and
/// hands the code to the host (0 = success).
pub const EXIT_BASE: u64 = MMIO_BASE + 0x1000;
/// Size of the exit device's register block.
pub const EXIT_SIZE: u64 = 0x10;
/// Offset of the exit-code register in the exit device.
pub const EXIT_REG_CODE: u64 = 0;

/// Start of the grant window: where the VMM maps contiguous pool grants (when the VM has a
/// window; its size is part of the VM's configuration). Identity-mapped like RAM.
pub const GRANT_WINDOW_BASE: u64 = 0x1_0000_0000;

/// The batched console: an 8-byte write of `gpa | (len << CONSOLE_LEN_SHIFT)` to
/// `CONSOLE_BASE + CONSOLE_REG_WRITE` prints `len` bytes of guest memory at `gpa` (one VM exit
/// per string instead of one per byte on the UART).
pub const CONSOLE_BASE: u64 = MMIO_BASE + 0x2000;
/// Size of the batched console's register block.
pub const CONSOLE_SIZE: u64 = 0x10;
/// Offset of the batched console's write register.
pub const CONSOLE_REG_WRITE: u64 = 0;
/// Shift of the length in a batched console write (so `gpa < 2^48`, `len < 2^16`).
pub const CONSOLE_LEN_SHIFT: u32 = 48;

/// First virtio-mmio device slot; device `n` sits at `VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_BASE + 0x10_0000;
/// Size of one virtio-mmio register block.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

/// The `fill` payload's argument is `gpa | (nr_pages << FILL_PAGES_SHIFT) | flags`: `gpa`
/// page-aligned and below 1 TiB, `nr_pages` below 2^24.
pub const FILL_PAGES_SHIFT: u32 = 40;
/// `fill` flag: write only the first word of every page, quietly (measures first-touch latency).
pub const FILL_TOUCH_ONLY: u64 = 1;
/// The `fill` pattern: the 8-byte word at guest address `a` gets `a ^ FILL_KEY`.
pub const FILL_KEY: u64 = 0x9e37_79b9_7f4a_7c15;
