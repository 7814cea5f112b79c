//! The virtio-mmio (version 2) register layout, status bits and transport feature bits, as the
//! virtio specification defines them: the device side (`balloon::transport`), the guest's driver
//! (`guest-agent`) and the kernel-less payloads use the same constants.

/// Register offsets (virtio 1.2 §4.2.2).
pub mod regs {
    /// "virt".
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Always 2.
    pub const VERSION: u64 = 0x004;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Feature word selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 driver feature bits selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver feature word selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Ready bit of the selected queue.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification (value: queue index).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Acknowledge interrupt causes.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low word.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high word.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Driver (available) ring address, low word.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Driver (available) ring address, high word.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Device (used) ring address, low word.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Device (used) ring address, high word.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared-memory region selector.
    pub const SHM_SEL: u64 = 0x0ac;
    /// Selected region length, low word.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Selected region length, high word.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Selected region base, low word.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Selected region base, high word.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Per-queue reset.
    pub const QUEUE_RESET: u64 = 0x0c0;
    /// Config space generation counter.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific config space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest knows how to drive the device.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is set up and ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Feature bit: the device complies with virtio 1.0+.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: per-queue reset through the `QueueReset` register.
pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;

/// `InterruptStatus` bit: a used buffer was returned.
pub const INT_USED_BUFFER: u32 = 1;
/// `InterruptStatus` bit: the configuration space changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// `MagicValue`: "virt" little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
