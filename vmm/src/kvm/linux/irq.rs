//! Interrupt lines of a Linux guest's devices, through KVM irqfds into the in-kernel irqchip.

use std::sync::Arc;

use balloon::transport::IrqLine;
use vm_superio::Trigger;

use crate::devices::PolledIrq;
use crate::kvm::events::IrqfdLine;

/// The UART raises its interrupt through an irqfd (edge: one signal, one interrupt).
impl Trigger for IrqfdLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.raise()
    }
}

/// A virtio slot's line in a VM with an irqchip: counts raises on the slot's [`PolledIrq`] (the
/// counter the API and tests read) and signals the irqfd of the same GSI.
pub struct SlotIrq {
    counter: Arc<PolledIrq>,
    irqfd: IrqfdLine,
}

impl SlotIrq {
    /// Counts on `counter` and signals `irqfd`.
    pub fn new(counter: Arc<PolledIrq>, irqfd: IrqfdLine) -> Self {
        SlotIrq { counter, irqfd }
    }
}

impl IrqLine for SlotIrq {
    fn raise(&self) -> std::io::Result<()> {
        self.counter.raise()?;
        self.irqfd.raise()
    }
}
