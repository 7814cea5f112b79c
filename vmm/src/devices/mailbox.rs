//! The host link: a tiny MMIO device through which a kernel-less payload reads parameters the
//! host chose and sends `(tag, value)` events back (progress, measurements, verdicts). Register
//! layout in [`crate::abi`] (`MAILBOX_*`).
//!
//! Every access is a guest exit, so payloads use it for a few words per phase, not for data. A
//! guest may still write events in a loop: the host's channel must be bounded (for example
//! `crossbeam::channel::bounded(`[`EVENT_QUEUE_LEN`]`)`); events that find it full are dropped and
//! counted ([`OutputCounters`], exported as `vmm_mailbox_dropped_events_total`), so a guest can
//! neither grow host memory nor block its vCPU thread through the mailbox.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::channel::{Sender, TrySendError};

use super::output::OutputCounters;
use super::virtio::IrqDoorbell;

use crate::abi::{
    MAILBOX_BASE, MAILBOX_MAX_SLEEP_US, MAILBOX_REG_CONTROL, MAILBOX_REG_EVENT_TAG,
    MAILBOX_REG_EVENT_VALUE, MAILBOX_REG_PARAM, MAILBOX_REG_PARAM_SEL, MAILBOX_REG_SLEEP_US,
    MAILBOX_REG_WAIT_IRQ_US, MAILBOX_SIZE,
};
use crate::kvm::bus::MmioDevice;

/// A good length for the host's event channel: far more than the few events per phase a payload
/// sends, a few tens of KiB of memory at most.
pub const EVENT_QUEUE_LEN: usize = 4096;

/// One event a payload sent: which VM, its tag and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxEvent {
    /// The id the host gave this mailbox.
    pub vm: usize,
    /// Event tag (payload-defined).
    pub tag: u64,
    /// Event value.
    pub value: u64,
}

/// The device. Parameters are fixed at creation; the control word is shared with the host.
#[derive(Debug)]
pub struct Mailbox {
    vm: usize,
    params: Vec<u64>,
    sel: u64,
    tag: u64,
    control: Arc<AtomicU64>,
    events: Sender<MailboxEvent>,
    counters: Arc<OutputCounters>,
    doorbell: Arc<IrqDoorbell>,
}

impl Mailbox {
    /// A mailbox for VM `vm` offering `params`, delivering events to `events` (a bounded
    /// channel: events that find it full are dropped and counted in `counters`, the VM's);
    /// its wait-for-interrupt register sleeps on `doorbell` (the VM's:
    /// `MicroVm::irq_doorbell`). Returns the device and the control word the host sets.
    pub fn new(
        vm: usize,
        params: Vec<u64>,
        events: Sender<MailboxEvent>,
        counters: Arc<OutputCounters>,
        doorbell: Arc<IrqDoorbell>,
    ) -> (Self, Arc<AtomicU64>) {
        let control = Arc::new(AtomicU64::new(0));
        let dev = Mailbox {
            vm,
            params,
            sel: 0,
            tag: 0,
            control: control.clone(),
            events,
            counters,
            doorbell,
        };
        (dev, control)
    }
}

/// Places a mailbox for VM `vm_index` offering `params` on `vm`'s bus at [`MAILBOX_BASE`],
/// counting into the VM's output counters and sleeping on its interrupt doorbell; events go to
/// `events`. Returns the control word the host sets.
pub fn attach(
    vm: &mut crate::MicroVm,
    vm_index: usize,
    params: Vec<u64>,
    events: Sender<MailboxEvent>,
) -> crate::Result<Arc<AtomicU64>> {
    let (mailbox, control) = Mailbox::new(
        vm_index,
        params,
        events,
        vm.output_counters().clone(),
        vm.irq_doorbell().clone(),
    );
    vm.bus_mut().insert(
        MAILBOX_BASE,
        MAILBOX_SIZE,
        Arc::new(std::sync::Mutex::new(mailbox)),
    )?;
    Ok(control)
}

fn put(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
    data[n..].fill(0);
}

fn get(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl MmioDevice for Mailbox {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            MAILBOX_REG_PARAM => usize::try_from(self.sel)
                .ok()
                .and_then(|i| self.params.get(i).copied())
                .unwrap_or(0),
            MAILBOX_REG_CONTROL => self.control.load(Ordering::Acquire),
            _ => 0,
        };
        put(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = get(data);
        match offset {
            MAILBOX_REG_PARAM_SEL => self.sel = v,
            MAILBOX_REG_EVENT_TAG => self.tag = v,
            MAILBOX_REG_EVENT_VALUE => {
                let ev = MailboxEvent {
                    vm: self.vm,
                    tag: self.tag,
                    value: v,
                };
                // Never waits: a full channel drops the event (counted); a gone receiver (the
                // host stopped listening) drops it too.
                match self.events.try_send(ev) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                    Err(TrySendError::Full(_)) => self.counters.mailbox_event_dropped(),
                }
            }
            // Blocks the vCPU thread, bounded: the guest pauses without spinning a host core.
            MAILBOX_REG_SLEEP_US => std::thread::sleep(std::time::Duration::from_micros(
                v.min(MAILBOX_MAX_SLEEP_US),
            )),
            // Blocks the vCPU thread until an interrupt or the bound: the payload's `hlt`.
            MAILBOX_REG_WAIT_IRQ_US => {
                self.doorbell.wait(std::time::Duration::from_micros(
                    v.min(MAILBOX_MAX_SLEEP_US),
                ));
            }
            _ => log::debug!("mailbox: write to unknown register {offset:#x} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_control_and_events() {
        let (tx, rx) = crossbeam::channel::bounded(EVENT_QUEUE_LEN);
        let (mut m, control) = Mailbox::new(3, vec![10, 20], tx, Arc::default(), Arc::default());
        let mut buf = [0u8; 8];
        m.write(MAILBOX_REG_PARAM_SEL, &1u64.to_le_bytes());
        m.read(MAILBOX_REG_PARAM, &mut buf);
        assert_eq!(u64::from_le_bytes(buf), 20);
        m.write(MAILBOX_REG_PARAM_SEL, &u64::MAX.to_le_bytes());
        m.read(MAILBOX_REG_PARAM, &mut buf);
        assert_eq!(u64::from_le_bytes(buf), 0);
        control.store(1, Ordering::Release);
        let mut small = [0xffu8; 4];
        m.read(MAILBOX_REG_CONTROL, &mut small);
        assert_eq!(small, [1, 0, 0, 0]);
        m.write(MAILBOX_REG_EVENT_TAG, &7u64.to_le_bytes());
        m.write(MAILBOX_REG_EVENT_VALUE, &99u64.to_le_bytes());
        assert_eq!(
            rx.try_recv().unwrap(),
            MailboxEvent {
                vm: 3,
                tag: 7,
                value: 99
            }
        );
        m.read(0x1234, &mut buf);
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn a_guest_flooding_events_fills_a_bounded_channel_and_the_rest_is_counted() {
        let (tx, rx) = crossbeam::channel::bounded(16);
        let counters = Arc::new(OutputCounters::default());
        let (mut m, _) = Mailbox::new(0, vec![], tx, counters.clone(), Arc::default());
        for i in 0..100_000u64 {
            m.write(MAILBOX_REG_EVENT_VALUE, &i.to_le_bytes());
        }
        assert_eq!(rx.len(), 16, "the channel holds what it can, no more");
        assert_eq!(counters.snapshot().mailbox_dropped_events, 100_000 - 16);
        assert_eq!(
            rx.try_recv().unwrap().value,
            0,
            "the oldest events are kept"
        );
    }
}
