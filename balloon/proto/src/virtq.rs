//! Split-virtqueue layout constants (virtio 1.2 §2.7), for drivers and devices alike.

/// Size in bytes of one descriptor table entry.
pub const DESC_SIZE: u64 = 16;
/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available-ring flag: the driver polls; no used-buffer interrupts wanted.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
