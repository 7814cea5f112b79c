//! Guest side of virtio-gcma.
//!
//! The driver core is `no_std` + `alloc` (build with `--no-default-features`), so the same code
//! runs in kernel-less microVM payloads, in a Linux userspace agent, and in host-side tests:
//!
//! * [`hal`]: the [`Hal`] trait (register access, DMA memory) and [`RawHal`] for identity-mapped
//!   payloads;
//! * [`GcmaDriver`]: feature negotiation, queue setup, batched requests, contiguous alloc/free,
//!   stats, recovery after a device reset;
//! * [`CleancacheClient`] and [`FrontswapClient`]: the tmem semantics on top;
//! * [`mmio`]: virtio-mmio register offsets.
//!
//! The wire format is `gcma_proto::gcma` (re-exported as [`proto`]).

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod clients;
pub mod driver;
pub mod error;
pub mod hal;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod linux;
pub mod mmio;
mod queue;

pub use clients::{CleancacheClient, CleancacheCounters, FrontswapClient, FrontswapCounters};
pub use driver::{ContigRegion, Data, DriverConfig, DriverCounters, GcmaDriver, Op, Window};
pub use error::Error;
pub use gcma_proto::gcma as proto;
pub use hal::{DmaExhausted, DmaRegion, Hal, RawHal};
