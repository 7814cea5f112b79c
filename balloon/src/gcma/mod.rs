//! virtio-gcma: the device through which a guest asks for contiguous grants of pool memory and
//! uses the pool's second-class stores (cleancache, frontswap). `balloon/PROTOCOL.md` describes
//! the protocol.
//!
//! * [`proto`]: the wire format (`no_std`, always built; the guest agent reuses it).
//! * `device` (feature `device`): [`GcmaDevice`], a [`crate::transport::VirtioDevice`]: its state
//!   machine and queue draining; `requests`: what each request does.
//! * `window`: the [`GrantWindow`], the one owner of a guest's gpa → grant table, and the
//!   [`WindowMapper`] seam that makes pool memory appear in the guest.
//! * `host_window`: [`HostWindow`], a reserved host range grants are `mmap`ped into, and
//!   [`PoolMapping`], the [`WindowMapper`] of an embedded pool.
//! * `metrics`: per-queue and per-status counters.
//! * `testing` (feature `test-utils`): `MemfdGrantMapper`, a grant window mapped into the test
//!   process.

pub use gcma_proto::gcma as proto;

#[cfg(feature = "device")]
mod device;
#[cfg(feature = "device")]
mod host_window;
#[cfg(feature = "device")]
mod metrics;
#[cfg(feature = "device")]
mod requests;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(feature = "device")]
mod window;

#[cfg(feature = "device")]
pub use device::{GcmaDevice, GCMA_DEVICE_FEATURES};
#[cfg(feature = "device")]
pub use host_window::{HostWindow, PoolMapping};
#[cfg(feature = "device")]
pub use metrics::{GcmaCounters, GcmaMetrics};
#[cfg(feature = "device")]
pub use window::{
    GrantError, GrantWindow, Released, WindowError, WindowMapper, WindowRange, WindowUsage,
};
