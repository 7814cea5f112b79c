//! virtio-mmio devices (from the `balloon` crate) on the VMM's MMIO bus.
//!
//! The transport ([`MmioTransport`]) owns the register file and processes a queue when the guest
//! writes `QueueNotify`; here it only needs to be reachable from the bus. Kernel-less payloads run
//! with interrupts off and poll the used ring, so their interrupt line ([`PolledIrq`]) only counts
//! raises. [`crate::kvm::events`] provides the alternatives: an irqfd-backed line for guests with an
//! interrupt controller, and ioeventfd notifications served on a device thread (`vmm run
//! --ioeventfd`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use balloon::transport::mmio::MmioTransport;
use balloon::transport::{IrqLine, VirtioDevice};

use crate::kvm::bus::MmioDevice;

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// The interrupt line of a device whose guest polls: raising it only counts.
#[derive(Debug)]
pub struct PolledIrq {
    gsi: u32,
    raised: AtomicU64,
}

impl PolledIrq {
    /// A line for interrupt number `gsi`.
    pub fn new(gsi: u32) -> Self {
        PolledIrq {
            gsi,
            raised: AtomicU64::new(0),
        }
    }

    /// The interrupt number assigned to the device.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// How many times the device raised the line.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}

impl IrqLine for PolledIrq {
    fn raise(&self) -> std::io::Result<()> {
        self.raised.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A virtio device placed on a microVM's bus: its register window, interrupt line and transport
/// (shared with the bus; lock it to reach the device model, e.g. to set a balloon target).
pub struct VirtioSlot<D: VirtioDevice> {
    /// Guest-physical base of the device's virtio-mmio register window.
    pub base: u64,
    /// The device's interrupt line.
    pub irq: Arc<PolledIrq>,
    /// The transport and the device model behind it.
    pub transport: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioSlot<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioSlot")
            .field("base", &self.base)
            .field("gsi", &self.irq.gsi())
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> Clone for VirtioSlot<D> {
    fn clone(&self) -> Self {
        VirtioSlot {
            base: self.base,
            irq: self.irq.clone(),
            transport: self.transport.clone(),
        }
    }
}
