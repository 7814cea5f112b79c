//! virtio-mmio (version 2) register offsets and status bits, as the virtio specification defines
//! them (driver side; the device side lives in `balloon::transport`).

/// `MagicValue` ("virt").
pub const MAGIC_VALUE: u64 = 0x000;
/// `Version`.
pub const VERSION: u64 = 0x004;
/// `DeviceID`.
pub const DEVICE_ID: u64 = 0x008;
/// `VendorID`.
pub const VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures`.
pub const DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel`.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures`.
pub const DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel`.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// `QueueSel`.
pub const QUEUE_SEL: u64 = 0x030;
/// `QueueNumMax`.
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// `QueueNum`.
pub const QUEUE_NUM: u64 = 0x038;
/// `QueueReady`.
pub const QUEUE_READY: u64 = 0x044;
/// `QueueNotify`.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus`.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK`.
pub const INTERRUPT_ACK: u64 = 0x064;
/// `Status`.
pub const STATUS: u64 = 0x070;
/// `QueueDescLow`.
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh`.
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow` (available ring).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh`.
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow` (used ring).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh`.
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel`.
pub const SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow`.
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh`.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow`.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh`.
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// `ConfigGeneration`.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device configuration space.
pub const CONFIG: u64 = 0x100;

/// `MagicValue` contents.
pub const MAGIC: u32 = 0x7472_6976;

/// Status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Status: the driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Status: feature negotiation done.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Status: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Status: the driver gave up.
pub const STATUS_FAILED: u32 = 128;

/// Feature: virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Descriptor flag: chain continues.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Available-ring flag: the driver polls; no used-buffer interrupts wanted.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
