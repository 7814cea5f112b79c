//! virtio-gcma: the device through which a guest asks for contiguous grants of pool memory and
//! uses the pool's second-class stores (cleancache, frontswap). `balloon/PROTOCOL.md` describes
//! the protocol.
//!
//! * [`proto`]: the wire format (`no_std`, always built; the guest agent reuses it).
//! * `device` (feature `device`): [`GcmaDevice`], a [`crate::transport::VirtioDevice`] over any
//!   [`gcma_host::api::GcmaBackend`].
//! * `mapper`: the [`GrantMapper`] seam the VMM implements to place grants in the guest.
//! * `metrics`: per-queue and per-status counters.
//! * `testing` (feature `test-utils`): `MemfdGrantMapper`, a grant mapper for tests.

pub mod proto;

#[cfg(feature = "device")]
mod device;
#[cfg(feature = "device")]
mod mapper;
#[cfg(feature = "device")]
mod metrics;
#[cfg(feature = "test-utils")]
pub mod testing;

#[cfg(feature = "device")]
pub use device::{GcmaDevice, GCMA_DEVICE_FEATURES};
#[cfg(feature = "device")]
pub use mapper::{GrantMapper, GrantWindow, MapError};
#[cfg(feature = "device")]
pub use metrics::{GcmaCounters, GcmaMetrics};
