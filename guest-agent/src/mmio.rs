//! virtio-mmio (version 2) register offsets and status bits for the driver: the constants shared
//! with the device side (`balloon::virtio_mmio`), plus the ring flags only a driver sets.

pub use balloon::virtio_mmio::regs::*;
pub use balloon::virtio_mmio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};

/// `MagicValue` contents.
pub const MAGIC: u32 = balloon::virtio_mmio::MMIO_MAGIC;

/// Descriptor flag: chain continues.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Available-ring flag: the driver polls; no used-buffer interrupts wanted.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
