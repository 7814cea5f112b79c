//! The contract between the VMM and kernel-less payloads: where things are in guest-physical
//! space and what the payload finds in its registers at entry.
//!
//! This file holds only `const` items so that the `no_std` payload crate (`vmm/payloads`) can
//! include the very same file with `#[path]`; the two sides cannot drift apart.
//!
//! Entry state (see ARCHITECTURE.md, "Where guests run"): 64-bit mode, ring 3, paging on with an
//! identity map of guest RAM, the MMIO window and (when configured) the grant window; interrupts
//! off; `rsp` 16-byte aligned minus 8 (as if a `call` had just happened) just below the top of
//! RAM; `rdi` = guest RAM size in bytes; `rsi` = the payload argument given to the VMM.

/// Size of a guest page as the payload and the VMM see it.
pub const PAGE_SIZE: u64 = gcma_proto::PAGE_SIZE as u64;

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

/// The host link ("mailbox"): how a payload reads parameters the host chose and reports results
/// without a kernel or a shared-memory protocol. All registers are 8 bytes wide.
pub const MAILBOX_BASE: u64 = MMIO_BASE + 0x3000;
/// Size of the mailbox's register block.
pub const MAILBOX_SIZE: u64 = 0x40;
/// Write: select parameter `n` for [`MAILBOX_REG_PARAM`].
pub const MAILBOX_REG_PARAM_SEL: u64 = 0x00;
/// Read: the selected parameter (0 past the end of the list).
pub const MAILBOX_REG_PARAM: u64 = 0x08;
/// Read: the host's control word (the demo sets [`MAILBOX_CONTROL_STOP`] to end a phase).
pub const MAILBOX_REG_CONTROL: u64 = 0x10;
/// Write: the tag of the next event.
pub const MAILBOX_REG_EVENT_TAG: u64 = 0x18;
/// Write: the value of an event; the write delivers `(tag, value)` to the host.
pub const MAILBOX_REG_EVENT_VALUE: u64 = 0x20;
/// Write: the vCPU pauses this many microseconds in the host (at most
/// [`MAILBOX_MAX_SLEEP_US`]): a pause between bursts of work that costs no CPU, where a `hlt`
/// (ring 0 only) or a spin loop would not do.
pub const MAILBOX_REG_SLEEP_US: u64 = 0x28;
/// The longest pause one [`MAILBOX_REG_SLEEP_US`] write buys (so a stop request waits at most
/// this long).
pub const MAILBOX_MAX_SLEEP_US: u64 = 1_000_000;
/// Write: the vCPU sleeps in the host until one of the VM's devices raises its interrupt, or this
/// many microseconds pass (at most [`MAILBOX_MAX_SLEEP_US`]): a ring-3 payload's `hlt`. An
/// interrupt raised since the last such wait ends the next one at once. A driver turns its
/// queue's interrupts on (clears `VIRTQ_AVAIL_F_NO_INTERRUPT`), looks at the used ring once
/// more, then waits.
pub const MAILBOX_REG_WAIT_IRQ_US: u64 = 0x30;
/// Control-word bit: stop the current phase and report.
pub const MAILBOX_CONTROL_STOP: u64 = 1;

// ---- The demo's `agent` payload: mailbox parameters and event tags. ----

/// Parameter 0: the agent's role ([`DEMO_ROLE_TENANT`] or [`DEMO_ROLE_GRANTS`]).
pub const DEMO_PARAM_ROLE: u64 = 0;
/// Parameter 1: the VM's index (names its cleancache objects and page contents).
pub const DEMO_PARAM_VM: u64 = 1;
/// Tenant parameter: cleancache pages put per round.
pub const DEMO_PARAM_CC_PAGES: u64 = 2;
/// Tenant parameter: frontswap offsets in use.
pub const DEMO_PARAM_FS_PAGES: u64 = 3;
/// Tenant parameter: microseconds to pause after each round (0: none; see
/// [`MAILBOX_REG_SLEEP_US`]).
pub const DEMO_PARAM_PAUSE_US: u64 = 4;
/// Grants parameter: grants per size.
pub const DEMO_PARAM_REPS: u64 = 2;
/// Grants parameter: how many sizes follow.
pub const DEMO_PARAM_NR_SIZES: u64 = 3;
/// Grants parameter: the first size, in pages; the others follow.
pub const DEMO_PARAM_SIZES: u64 = 4;
/// Role: keep cleancache and frontswap traffic going until told to stop.
pub const DEMO_ROLE_TENANT: u64 = 1;
/// Role: ask for contiguous grants of the listed sizes.
pub const DEMO_ROLE_GRANTS: u64 = 2;
/// Role: time [`DEMO_PARAM_REPS`] bare MMIO exits (a read of the mailbox's control register),
/// the floor under any request a guest makes by notification (benchmarks).
pub const DEMO_ROLE_EXITS: u64 = 3;

/// Event: the driver is up; value = negotiated features.
pub const EV_READY: u64 = 1;
/// Event: the agent finished; value = 1 if every check passed.
pub const EV_DONE: u64 = 2;
/// Event: a driver error; value = error code.
pub const EV_ERROR: u64 = 3;
/// Event (final, before [`EV_DONE`]): waits for the device that outlasted the agent's spin, so
/// that it turned the queue's interrupts on and slept until one ([`MAILBOX_REG_WAIT_IRQ_US`]).
pub const EV_IRQ_WAITS: u64 = 4;
/// Event: grants of this many pages follow.
pub const EV_GRANT_SIZE: u64 = 10;
/// Event: one grant took this many TSC cycles (request to response, seen by the guest).
pub const EV_GRANT_CYCLES: u64 = 11;
/// Event: a grant was refused; value = error code.
pub const EV_GRANT_FAILED: u64 = 12;
/// Event: a fresh grant had this many non-zero words (must never happen).
pub const EV_GRANT_NONZERO: u64 = 13;
/// Event: this many pattern words read back wrong.
pub const EV_GRANT_PATTERN_BAD: u64 = 14;
/// Event: a free failed; value = error code.
pub const EV_GRANT_FREE_FAILED: u64 = 15;
/// Event: one MMIO exit round trip took this many TSC cycles ([`DEMO_ROLE_EXITS`]).
pub const EV_EXIT_CYCLES: u64 = 16;
/// Event: a tenant round ended; value = round number.
pub const EV_TENANT_ROUND: u64 = 20;
/// Event: cleancache puts kept so far.
pub const EV_CC_PUTS: u64 = 21;
/// Event: cleancache hits so far.
pub const EV_CC_HITS: u64 = 22;
/// Event: cleancache misses so far.
pub const EV_CC_MISSES: u64 = 23;
/// Event: frontswap stores accepted so far.
pub const EV_FS_STORES: u64 = 24;
/// Event: frontswap stores rejected so far.
pub const EV_FS_REJECTS: u64 = 25;
/// Event: frontswap loads so far.
pub const EV_FS_LOADS: u64 = 26;
/// Event (final): frontswap pages checked at the end.
pub const EV_FS_VERIFIED: u64 = 27;
/// Event (final): cleancache hits whose bytes were not the ones put.
pub const EV_CC_STALE: u64 = 28;
/// Event (final): accepted frontswap pages that could not be loaded.
pub const EV_FS_LOST: u64 = 29;
/// Event (final): frontswap pages that loaded with the wrong bytes.
pub const EV_FS_CORRUPT: u64 = 30;
/// Event (final): requests that failed with a driver error.
pub const EV_ERRORS: u64 = 31;
