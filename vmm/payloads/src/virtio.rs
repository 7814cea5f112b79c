//! A minimal polled virtio-mmio (version 2) driver: enough to negotiate `VIRTIO_F_VERSION_1`,
//! set up split queues in identity-mapped guest memory and submit one buffer at a time.
//!
//! Payloads run with interrupts off: after `QueueNotify` they poll the used ring. (The VMM's
//! transport processes the queue during the notify exit, so the answer is there on return.)

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use gcma_proto::virtio_mmio::regs::{
    CONFIG as REG_CONFIG, DEVICE_FEATURES as REG_DEVICE_FEATURES,
    DEVICE_FEATURES_SEL as REG_DEVICE_FEATURES_SEL, DEVICE_ID as REG_DEVICE_ID,
    DRIVER_FEATURES as REG_DRIVER_FEATURES, DRIVER_FEATURES_SEL as REG_DRIVER_FEATURES_SEL,
    MAGIC_VALUE as REG_MAGIC, QUEUE_DESC_LOW as REG_QUEUE_DESC,
    QUEUE_DEVICE_LOW as REG_QUEUE_DEVICE, QUEUE_DRIVER_LOW as REG_QUEUE_DRIVER,
    QUEUE_NOTIFY as REG_QUEUE_NOTIFY, QUEUE_NUM as REG_QUEUE_NUM,
    QUEUE_NUM_MAX as REG_QUEUE_NUM_MAX, QUEUE_READY as REG_QUEUE_READY, QUEUE_SEL as REG_QUEUE_SEL,
    STATUS as REG_STATUS, VERSION as REG_VERSION,
};
pub use gcma_proto::virtio_mmio::VIRTIO_F_VERSION_1 as F_VERSION_1;
use gcma_proto::virtio_mmio::{
    MMIO_MAGIC as MAGIC, MMIO_VERSION, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
};

use crate::abi::{PAGE_SIZE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

/// Entries per queue this driver sets up (at most; less if the device offers less).
pub const QUEUE_SIZE: u16 = 16;
/// How many times to look at the used ring before giving up on the device.
const POLL_LIMIT: u32 = 1_000_000;

/// What went wrong talking to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// No device with the wanted id in any slot.
    NotFound,
    /// The device refused the features (FEATURES_OK did not stick).
    FeaturesRefused,
    /// The device has no such queue or offers size 0.
    NoQueue(u16),
    /// The device did not return the buffer.
    Timeout,
}

/// A virtio-mmio device window.
pub struct Device {
    base: u64,
}

impl Device {
    /// Probes the VMM's virtio-mmio slots for the first device with `device_id`.
    pub fn find(device_id: u32) -> Result<Device, VirtioError> {
        (0..32u64)
            .map(|n| Device {
                base: VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE,
            })
            .find(|d| {
                d.read32(REG_MAGIC) == MAGIC
                    && d.read32(REG_VERSION) == MMIO_VERSION
                    && d.read32(REG_DEVICE_ID) == device_id
            })
            .ok_or(VirtioError::NotFound)
    }

    /// Base address of the register window.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn read32(&self, reg: u64) -> u32 {
        // SAFETY: an identity-mapped MMIO register of the VMM's virtio-mmio window.
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    fn write32(&self, reg: u64, value: u32) {
        // SAFETY: as in read32.
        unsafe { write_volatile((self.base + reg) as *mut u32, value) }
    }

    fn write64(&self, reg: u64, value: u64) {
        self.write32(reg, value as u32);
        self.write32(reg + 4, (value >> 32) as u32);
    }

    /// Reads a 32-bit field of the device config space.
    pub fn config_read32(&self, offset: u64) -> u32 {
        self.read32(REG_CONFIG + offset)
    }

    /// Writes a 32-bit field of the device config space.
    pub fn config_write32(&self, offset: u64, value: u32) {
        self.write32(REG_CONFIG + offset, value)
    }

    /// Resets the device and negotiates `wanted & offered` (which must include VERSION_1).
    pub fn negotiate(&self, wanted: u64) -> Result<u64, VirtioError> {
        self.write32(REG_STATUS, 0);
        self.write32(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write32(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.write32(REG_DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(self.read32(REG_DEVICE_FEATURES)) << (32 * sel);
        }
        let accepted = offered & wanted;
        if accepted & F_VERSION_1 == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        for sel in 0..2u32 {
            self.write32(REG_DRIVER_FEATURES_SEL, sel);
            self.write32(REG_DRIVER_FEATURES, (accepted >> (32 * sel)) as u32);
        }
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write32(REG_STATUS, status);
        if self.read32(REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// Sets up queue `index` in the page at `page` (zeroed here) and marks it ready.
    pub fn setup_queue(&self, index: u16, page: u64) -> Result<Queue, VirtioError> {
        self.write32(REG_QUEUE_SEL, u32::from(index));
        let max = self.read32(REG_QUEUE_NUM_MAX);
        if max == 0 {
            return Err(VirtioError::NoQueue(index));
        }
        let size = QUEUE_SIZE.min(max as u16);
        // SAFETY: `page` is a whole page of guest RAM the caller dedicates to this queue.
        unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE_SIZE as usize) };
        let queue = Queue {
            index,
            size,
            desc: page,
            avail: page + 16 * u64::from(QUEUE_SIZE),
            used: page + 2048,
            next_avail: 0,
        };
        self.write32(REG_QUEUE_NUM, u32::from(size));
        self.write64(REG_QUEUE_DESC, queue.desc);
        self.write64(REG_QUEUE_DRIVER, queue.avail);
        self.write64(REG_QUEUE_DEVICE, queue.used);
        self.write32(REG_QUEUE_READY, 1);
        Ok(queue)
    }

    /// Tells the device the driver is ready (after every queue is set up).
    pub fn driver_ok(&self) {
        let status = self.read32(REG_STATUS);
        self.write32(REG_STATUS, status | STATUS_DRIVER_OK);
    }

    /// Submits one device-readable buffer on `queue`, notifies and waits until it is used.
    pub fn submit_and_wait(
        &self,
        queue: &mut Queue,
        addr: u64,
        len: u32,
    ) -> Result<(), VirtioError> {
        let slot = queue.next_avail % queue.size;
        // SAFETY: the queue's rings live in the page given to setup_queue; descriptor 0 is the
        // only one used and the device is done with it (we wait for each buffer).
        unsafe {
            write_volatile(queue.desc as *mut u64, addr);
            write_volatile((queue.desc + 8) as *mut u32, len);
            write_volatile((queue.desc + 12) as *mut u16, 0); // flags: device-readable, no next
            write_volatile((queue.desc + 14) as *mut u16, 0);
            write_volatile((queue.avail + 4 + 2 * u64::from(slot)) as *mut u16, 0);
            compiler_fence(Ordering::SeqCst);
            queue.next_avail = queue.next_avail.wrapping_add(1);
            write_volatile((queue.avail + 2) as *mut u16, queue.next_avail);
        }
        compiler_fence(Ordering::SeqCst);
        self.write32(REG_QUEUE_NOTIFY, u32::from(queue.index));
        for _ in 0..POLL_LIMIT {
            // SAFETY: the used ring's idx field, written by the device.
            let used = unsafe { read_volatile((queue.used + 2) as *const u16) };
            if used == queue.next_avail {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(VirtioError::Timeout)
    }
}

/// A split virtqueue in one page: descriptors, then the available ring, the used ring at +2 KiB.
pub struct Queue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
}
