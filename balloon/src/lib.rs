//! virtio device models for the GCMA memory service.
//!
//! Without the default `device` feature only the `no_std` gcma wire format is built.
//!
//! Map of the host side (feature `device`):
//! - [`transport`]: the [`transport::VirtioDevice`] trait, interrupts, strict descriptor-chain
//!   walking and the virtio-mmio v2 transport ([`transport::MmioTransport`]).
//! - [`virtio_balloon`]: the standard balloon (id 5) on top of [`memory_release`], which frees the
//!   host memory behind guest pages with the call that works for the backing.
//! - [`gcma`]: virtio-gcma: the wire format (`gcma::proto`, `no_std`, built without `device`
//!   too), the device model, the `GrantMapper` seam the VMM implements, per-queue/per-status
//!   counters, and (feature `test-utils`) a memfd-backed grant mapper.
//! - [`blk`]: virtio-blk device logic (request parsing and checks, config space, counters) over
//!   a `BlkBackend` trait; `gcma-hostd` serves it over vhost-user with pool-backed backends.
//! - [`error`]: the crate's error types.
//! - `testing` (feature `test-utils`): a guest-driver stand-in acting only through MMIO registers
//!   and guest memory.

#![cfg_attr(not(feature = "device"), no_std)]

/// `log::warn!` for events a guest can trigger at will: logs the first 16 occurrences and then
/// only when the occurrence count `n` (the event's counter after incrementing) is a power of two,
/// so a hostile guest cannot flood the host log. The counters keep the exact numbers.
#[cfg(feature = "device")]
macro_rules! guest_warn {
    ($n:expr, $($arg:tt)+) => {{
        let n: u64 = $n;
        if n <= 16 || n.is_power_of_two() {
            log::warn!($($arg)+);
        }
    }};
}

#[cfg(feature = "device")]
pub mod blk;
#[cfg(feature = "device")]
pub mod error;
pub mod gcma;
#[cfg(feature = "device")]
pub mod memory_release;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(feature = "device")]
pub mod transport;
#[cfg(feature = "device")]
pub mod virtio_balloon;
pub use gcma_proto::virtio_mmio;
