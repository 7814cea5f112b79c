//! The device side of virtio: the [`VirtioDevice`] trait every device model implements, the
//! interrupt plumbing, strict descriptor-chain walking ([`chain`]) and the virtio-mmio version 2
//! transport ([`MmioTransport`]).
//!
//! Layering: the transport owns the register file, the status state machine, feature negotiation
//! and queue configuration; a device only ever sees negotiated features, its config space, ready
//! queues, guest memory and an [`InterruptHandle`]. Neither touches KVM: the VMM forwards MMIO
//! exits to [`MmioTransport::read`]/[`MmioTransport::write`], backs [`IrqLine`] with an irqfd, and
//! may call [`MmioTransport::process_queue`] when an ioeventfd fires.

pub mod chain;
pub mod drain;
pub mod mmio;
pub mod stream;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub use drain::Drained;
pub use mmio::{MmioCounters, MmioTransport};
pub use virtio_queue::{Queue, QueueT};

use crate::error::DeviceError;
use gcma_host::log_limit::LogLimiter;

/// Guest memory as the devices see it: `vm-memory` regions backed by `mmap` (a memfd in the VMM).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

pub use crate::virtio_mmio::{
    INT_CONFIG_CHANGE, INT_USED_BUFFER, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// One shared-memory region a device exposes through the `SHMSel`/`SHMLen`/`SHMBase` registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRegion {
    /// Region id (the value the driver writes to `SHMSel`).
    pub id: u8,
    /// Guest-physical base address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The guest's interrupt line for one device, provided by whoever runs the device: the VMM backs
/// it with an irqfd, tests with a counter ([`crate::testing::CountingIrq`]).
pub trait IrqLine: Send + Sync {
    /// Raise the interrupt (edge semantics: one call, one interrupt).
    fn raise(&self) -> std::io::Result<()>;
}

/// What a device holds to signal the guest. It sets the matching `InterruptStatus` bit in the
/// transport, bumps `ConfigGeneration` on config changes, and raises the [`IrqLine`].
#[derive(Clone)]
pub struct InterruptHandle {
    shared: Arc<InterruptShared>,
}

pub(crate) struct InterruptShared {
    pub(crate) status: AtomicU32,
    pub(crate) config_generation: AtomicU32,
    pub(crate) raised: AtomicU64,
    pub(crate) line: Arc<dyn IrqLine>,
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHandle")
            .field("status", &self.shared.status.load(Ordering::Relaxed))
            .field(
                "config_generation",
                &self.shared.config_generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl InterruptHandle {
    /// A handle that raises `line`. Transports make one per device; a transport that keeps the
    /// queues itself (a vhost-user backend, see `GcmaDevice::serve_queue`) may make one per
    /// queue, each over that queue's call eventfd.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        InterruptHandle {
            shared: Arc::new(InterruptShared {
                status: AtomicU32::new(0),
                config_generation: AtomicU32::new(0),
                raised: AtomicU64::new(0),
                line,
            }),
        }
    }

    pub(crate) fn shared(&self) -> &InterruptShared {
        &self.shared
    }

    /// Tell the guest that used buffers are waiting.
    pub fn signal_used(&self) -> std::io::Result<()> {
        self.shared
            .status
            .fetch_or(INT_USED_BUFFER, Ordering::SeqCst);
        self.raise()
    }

    /// Tell the guest that the configuration space changed (also bumps `ConfigGeneration`).
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.shared.config_generation.fetch_add(1, Ordering::SeqCst);
        self.shared
            .status
            .fetch_or(INT_CONFIG_CHANGE, Ordering::SeqCst);
        self.raise()
    }

    fn raise(&self) -> std::io::Result<()> {
        self.shared.raised.fetch_add(1, Ordering::Relaxed);
        self.shared.line.raise()
    }
}

/// Everything a device receives when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// One queue per index reported by [`VirtioDevice::queue_max_sizes`], configured by the
    /// driver (check [`QueueT::ready`]; a device may refuse to run without a required queue).
    pub queues: Vec<Queue>,
    /// How to signal the guest.
    pub interrupt: InterruptHandle,
    /// The negotiated feature bits (transport bits included).
    pub features: u64,
}

/// A virtio device model, driven by a transport.
///
/// The transport calls the methods in this order: [`features_negotiated`](Self::features_negotiated)
/// when the driver sets `FEATURES_OK`, [`activate`](Self::activate) on `DRIVER_OK`,
/// [`process_queue`](Self::process_queue) on every notification (and again while it reports more
/// work), [`reset`](Self::reset) when the driver writes 0 to `Status`. Errors returned put the device into `DEVICE_NEEDS_RESET`; the
/// transport then stops delivering notifications until the driver resets it.
pub trait VirtioDevice: Send {
    /// The virtio device id (5 for the balloon).
    fn device_id(&self) -> u32;

    /// The vendor id reported in `VendorID`.
    fn vendor_id(&self) -> u32 {
        0
    }

    /// Device-specific feature bits plus any of [`VIRTIO_RING_F_EVENT_IDX`] the device supports.
    /// The transport adds [`VIRTIO_F_VERSION_1`] itself.
    fn device_features(&self) -> u64;

    /// The driver set `FEATURES_OK` with `features` (already checked to be a subset of what was
    /// offered, with `VERSION_1`). Return `false` to refuse the combination.
    fn features_negotiated(&mut self, features: u64) -> bool {
        let _ = features;
        true
    }

    /// Maximum size of each queue, given the features the driver accepted so far (the balloon
    /// numbers its optional queues densely over negotiated features). Sizes are powers of two.
    fn queue_max_sizes(&self, features: u64) -> Vec<u16>;

    /// Read `data.len()` bytes of config space at `offset`. Bytes beyond the config space read
    /// as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write config space at `offset` (writes to read-only fields are ignored).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Start the device with the driver-configured queues.
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError>;

    /// The driver notified queue `index` (or its ioeventfd fired): process available buffers,
    /// at most `budget` chains of them (at least 1; the transport passes one queue's worth or
    /// less, see [`MmioTransport::set_requests_per_notify`]). Report [`Drained::more`] when the
    /// budget ran out with chains possibly left: the transport then serves the queue again on a
    /// later turn without waiting for a notification (the driver may not send another one), so
    /// that a guest that keeps posting cannot hold the calling thread.
    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError>;

    /// Return to the pre-negotiation state, dropping queues and in-flight buffers.
    fn reset(&mut self);

    /// Whether the device supports per-queue reset; if so the transport offers
    /// [`VIRTIO_F_RING_RESET`] and calls [`queue_reset`](Self::queue_reset) and
    /// [`queue_enable`](Self::queue_enable).
    fn supports_queue_reset(&self) -> bool {
        false
    }

    /// The driver reset queue `index` of the running device (`QueueReset`): drop that queue and
    /// any buffers of it the device holds. Other queues keep running.
    fn queue_reset(&mut self, index: u16) {
        let _ = index;
    }

    /// The driver re-enabled queue `index` after a [`queue_reset`](Self::queue_reset), with a
    /// freshly configured `queue`.
    fn queue_enable(&mut self, index: u16, queue: Queue) -> Result<(), DeviceError> {
        let _ = queue;
        Err(DeviceError::NoSuchQueue(index))
    }

    /// Shared-memory regions the device exposes (none by default).
    fn shm_regions(&self) -> Vec<ShmRegion> {
        Vec::new()
    }

    /// The limiter every log line the guest can trigger goes through (see
    /// [`crate::log_kinds`]). The transport hands the device its own when it is built and when
    /// the VMM gives it the VM's ([`MmioTransport::set_log_limiter`]).
    fn set_log_limiter(&mut self, limiter: Arc<LogLimiter>) {
        let _ = limiter;
    }
}
