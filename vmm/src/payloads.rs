//! The built-in test payloads, built from `vmm/payloads` by `build.rs` and embedded here.
//!
//! Each is a static `no_std` x86-64 program linked at [`crate::abi::PAYLOAD_LOAD_ADDR`] that runs
//! natively in ring 3 and talks to the VMM by MMIO only.

use std::fmt;
use std::str::FromStr;

static HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/hello"));
static EXIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/exit"));
static CRASH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/crash"));
static BALLOON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/balloon"));
static FILL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/fill"));
static SPIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/spin"));
static GCMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/gcma"));
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payloads/agent"));

/// A payload embedded in the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinPayload {
    /// Prints `hello from a ring-3 payload: ram=<MiB> MiB arg=<arg>` (batched console), then
    /// `via uart` (byte by byte through the 16550), and exits with code 0.
    Hello,
    /// Exits at once with its argument (truncated to 32 bits) as the exit code.
    Exit,
    /// Prints `crash: faulting at <addr>` and executes `ud2` at that address.
    Crash,
    /// Drives the virtio balloon from the guest: inflates to the target the host set
    /// (`num_pages`), reports `actual`, prints `balloon: inflated <n> pages at <addr>`.
    Balloon,
    /// Writes `a ^ FILL_KEY` to every 8-byte word `a` of `[gpa, gpa + nr_pages * 4096)` (the
    /// argument is made by [`fill_arg`]), checks it, prints `fill: wrote <n> pages at <gpa>`.
    Fill,
    /// Prints `spin: running` and loops forever (for stopping a VM from the host).
    Spin,
    /// Drives virtio-gcma with the guest-agent driver core: `ALLOC_CONTIG`, a pattern written
    /// and checked across the whole grant (as `Fill` writes it), `FREE_CONTIG`. The argument is
    /// made by [`gcma_arg`]. Prints `gcma: granted <n> pages at <gpa>` and `gcma: freed`.
    Gcma,
    /// The demo's guest agent: a cleancache/frontswap tenant or a grant requester, chosen with
    /// its parameters through the mailbox (`abi::DEMO_*`); reports through mailbox events.
    Agent,
}

/// Ticks per second of the time-stamp counter the payloads time themselves with (`rdtsc`; the
/// `EV_*_CYCLES` events), measured against the monotonic clock over 100 ms.
pub fn tsc_hz() -> f64 {
    fn tsc() -> u64 {
        // SAFETY: `rdtsc` reads the time-stamp counter; no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    let (t0, c0) = (std::time::Instant::now(), tsc());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (t1, c1) = (std::time::Instant::now(), tsc());
    c1.wrapping_sub(c0) as f64 / (t1 - t0).as_secs_f64()
}

/// The argument that makes [`BuiltinPayload::Gcma`] ask for `nr_pages` (below 2^32) and free
/// the grant again unless `keep` (then the host can inspect the pool after the run).
pub fn gcma_arg(nr_pages: u32, keep: bool) -> u64 {
    u64::from(nr_pages) | if keep { 1 << 32 } else { 0 }
}

pub use crate::abi::FILL_KEY;

/// The argument that makes [`BuiltinPayload::Fill`] write `nr_pages` pages at `gpa` (page-aligned,
/// below 1 TiB; `nr_pages` below 2^24), or only the first word of each page with `touch_only`.
pub fn fill_arg(gpa: u64, nr_pages: u64, touch_only: bool) -> u64 {
    use crate::abi::{FILL_PAGES_SHIFT, FILL_TOUCH_ONLY};
    gpa | (nr_pages << FILL_PAGES_SHIFT) | if touch_only { FILL_TOUCH_ONLY } else { 0 }
}

impl BuiltinPayload {
    /// Every built-in payload.
    pub const ALL: [BuiltinPayload; 8] = [
        Self::Hello,
        Self::Exit,
        Self::Crash,
        Self::Balloon,
        Self::Fill,
        Self::Spin,
        Self::Gcma,
        Self::Agent,
    ];

    /// The payload's name (as accepted by `FromStr`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Exit => "exit",
            Self::Crash => "crash",
            Self::Balloon => "balloon",
            Self::Fill => "fill",
            Self::Spin => "spin",
            Self::Gcma => "gcma",
            Self::Agent => "agent",
        }
    }

    /// The ELF image.
    pub fn elf(self) -> &'static [u8] {
        match self {
            Self::Hello => HELLO,
            Self::Exit => EXIT,
            Self::Crash => CRASH,
            Self::Balloon => BALLOON,
            Self::Fill => FILL,
            Self::Spin => SPIN,
            Self::Gcma => GCMA,
            Self::Agent => AGENT,
        }
    }
}

impl fmt::Display for BuiltinPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of [`BuiltinPayload::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown built-in payload {0:?} (known: hello, exit, crash, balloon, fill, spin, gcma, agent)"
)]
pub struct UnknownPayload(pub String);

impl FromStr for BuiltinPayload {
    type Err = UnknownPayload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPayload(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::loader::load_elf;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn every_payload_is_a_loadable_static_elf_at_the_load_address() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        for p in BuiltinPayload::ALL {
            let image = load_elf(&mem, p.elf(), crate::abi::PAYLOAD_LOAD_ADDR..15 << 20)
                .unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(image.code_contains(image.entry), "{p}");
            assert_eq!(p.name().parse::<BuiltinPayload>().unwrap(), p);
        }
        assert!("nope".parse::<BuiltinPayload>().is_err());
    }
}
