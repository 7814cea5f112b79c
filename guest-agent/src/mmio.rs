//! virtio-mmio (version 2) register offsets, status bits and split-ring flags for the driver: the
//! constants the device side uses too (`gcma_proto`).

pub use gcma_proto::virtio_mmio::regs::*;
pub use gcma_proto::virtio_mmio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};
pub use gcma_proto::virtq::{VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// `MagicValue` contents.
pub const MAGIC: u32 = gcma_proto::virtio_mmio::MMIO_MAGIC;
