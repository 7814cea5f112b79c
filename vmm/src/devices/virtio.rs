//! virtio-mmio devices (from the `balloon` crate) on the VMM's MMIO bus.
//!
//! The transport ([`MmioTransport`]) owns the register file and processes a queue when the guest
//! writes `QueueNotify`; here it only needs to be reachable from the bus. Kernel-less payloads run
//! with interrupts off and poll the used ring, so their interrupt line ([`PolledIrq`]) only counts
//! raises. [`crate::kvm::events`] provides the alternatives: an irqfd-backed line for guests with an
//! interrupt controller, and ioeventfd notifications served on a device thread (`vmm run
//! --ioeventfd`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// What a kernel-less payload has instead of `hlt`: one per VM, rung by every [`PolledIrq`] of
/// it, waited on by the vCPU thread when the guest asks to sleep until an interrupt (the
/// mailbox's `MAILBOX_REG_WAIT_IRQ_US`). A ring with no waiter stays pending, so an interrupt
/// raised between the guest's last look at its ring and its wait is not lost; a stale one only
/// costs the guest one more look.
#[derive(Debug, Default)]
pub struct IrqDoorbell {
    pending: Mutex<bool>,
    rung: Condvar,
    rings: AtomicU64,
    /// The VM's deferred-queue-work flag: work left for the vCPU thread must not wait behind a
    /// sleep that only that work's interrupt would end.
    deferred: Option<Arc<AtomicBool>>,
}

impl IrqDoorbell {
    /// A doorbell whose waits return at once while `deferred` is set.
    pub fn new(deferred: Arc<AtomicBool>) -> Self {
        IrqDoorbell {
            deferred: Some(deferred),
            ..IrqDoorbell::default()
        }
    }

    /// Marks an interrupt pending and wakes the waiter, if any.
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.rung.notify_all();
    }

    /// Blocks until an interrupt is pending (taking it) or `timeout` passes. Returns whether an
    /// interrupt ended the wait.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self
            .deferred
            .as_ref()
            .is_some_and(|d| d.load(Ordering::Acquire))
        {
            return false;
        }
        let g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .rung
            .wait_timeout_while(g, timeout, |pending| !*pending)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *g, false)
    }

    /// Times rung so far.
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

/// The interrupt line of a device whose guest polls: raising it counts and rings the VM's
/// [`IrqDoorbell`] (which wakes a guest sleeping until an interrupt).
#[derive(Debug)]
pub struct PolledIrq {
    gsi: u32,
    raised: AtomicU64,
    doorbell: Arc<IrqDoorbell>,
}

impl PolledIrq {
    /// A line for interrupt number `gsi` with a doorbell of its own.
    pub fn new(gsi: u32) -> Self {
        Self::with_doorbell(gsi, Arc::default())
    }

    /// A line for interrupt number `gsi` that rings `doorbell`.
    pub fn with_doorbell(gsi: u32, doorbell: Arc<IrqDoorbell>) -> Self {
        PolledIrq {
            gsi,
            raised: AtomicU64::new(0),
            doorbell,
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
        self.doorbell.ring();
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

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_ring_wakes_the_waiter_and_one_without_a_waiter_stays_pending() {
        let bell = Arc::new(IrqDoorbell::default());
        // Rung before the wait: the wait takes it at once, and only once.
        bell.ring();
        assert!(bell.wait(LONG));
        assert!(!bell.wait(Duration::from_millis(1)), "a ring is taken once");
        // Rung while a vCPU thread waits: it wakes.
        let waiter = std::thread::spawn({
            let bell = bell.clone();
            move || bell.wait(LONG)
        });
        while !waiter.is_finished() {
            bell.ring();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(waiter.join().unwrap(), "woken by the ring, not the bound");
        assert!(bell.rings() >= 2);
    }

    #[test]
    fn deferred_queue_work_keeps_the_vcpu_from_sleeping() {
        let deferred = Arc::new(AtomicBool::new(true));
        let bell = IrqDoorbell::new(deferred.clone());
        assert!(
            !bell.wait(LONG),
            "returns at once: the vCPU thread has work"
        );
        deferred.store(false, Ordering::Release);
        bell.ring();
        assert!(bell.wait(LONG));
    }

    #[test]
    fn a_polled_line_rings_its_doorbell() {
        let bell = Arc::new(IrqDoorbell::default());
        let line = PolledIrq::with_doorbell(5, bell.clone());
        line.raise().unwrap();
        assert_eq!((line.raised(), bell.rings()), (1, 1));
        assert!(bell.wait(LONG));
    }
}
