//! virtio-mmio version 2 (virtio 1.2 §4.2.2) for one device.
//!
//! [`MmioTransport::read`] and [`MmioTransport::write`] take an offset into the device's MMIO
//! window and the access bytes, exactly as a VMM's MMIO bus hands them over. Spec violations by the
//! driver never panic: they are ignored (with a log line and a counter) or put the device into
//! `DEVICE_NEEDS_RESET`, as the specification prescribes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{
    Activation, GuestMemoryMmap, InterruptHandle, IrqLine, VirtioDevice, INT_CONFIG_CHANGE,
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};

pub use crate::virtio_mmio::regs;

pub use crate::virtio_mmio::{MMIO_MAGIC, MMIO_VERSION};
/// Size of the MMIO window a VMM should reserve per device.
pub const MMIO_WINDOW_LEN: u64 = 0x1000;

/// Counters of what the transport saw; read by the VMM's metrics exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmioCounters {
    /// Register reads.
    pub reads: u64,
    /// Register writes.
    pub writes: u64,
    /// Queue notifications delivered to the device.
    pub notifications: u64,
    /// Notifications between `FEATURES_OK` and `DRIVER_OK`, deferred to activation.
    pub early_notifications: u64,
    /// Writes ignored because they broke the spec (wrong state, bad value, bad size).
    pub ignored_writes: u64,
    /// Accesses with a bad size or to an unknown register.
    pub bad_accesses: u64,
    /// `QueueReady` writes refused because the queue configuration was invalid.
    pub rejected_queues: u64,
    /// Feature negotiations refused (`FEATURES_OK` not granted).
    pub rejected_features: u64,
    /// Times the device entered `DEVICE_NEEDS_RESET`.
    pub needs_reset: u64,
    /// Device resets by the driver.
    pub resets: u64,
    /// Successful activations.
    pub activations: u64,
    /// Interrupts raised (used-buffer and config-change).
    pub interrupts: u64,
}

/// One device behind a virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: Arc<GuestMemoryMmap>,
    interrupt: InterruptHandle,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    /// Per queue: reset through `QueueReset` while the device runs, not yet re-enabled.
    queue_resetting: Vec<bool>,
    /// Per queue: notified between `FEATURES_OK` and `DRIVER_OK`, replayed on activation.
    early_notified: Vec<bool>,
    shm_sel: u32,
    queues: Vec<Queue>,
    activated: bool,
    counters: MmioCounters,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_id", &self.device.device_id())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .field("counters", &self.counters)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Put `device` behind a register window; `irq` is the guest interrupt line.
    pub fn new(device: D, mem: Arc<GuestMemoryMmap>, irq: Arc<dyn IrqLine>) -> Self {
        let mut t = MmioTransport {
            device,
            mem,
            interrupt: InterruptHandle::new(irq),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            queue_resetting: Vec::new(),
            early_notified: Vec::new(),
            queues: Vec::new(),
            activated: false,
            counters: MmioCounters::default(),
        };
        t.rebuild_queues();
        t
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (for VMM-driven operations such as a new balloon target).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Current `Status` register value.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (driver set `DRIVER_OK` and activation succeeded).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Features the driver accepted (valid once `FEATURES_OK` is set).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    /// A snapshot of the transport counters.
    pub fn counters(&self) -> MmioCounters {
        let mut c = self.counters;
        c.interrupts = self.interrupt.shared().raised.load(Ordering::Relaxed);
        c
    }

    /// All features offered: the device's plus the transport's own.
    pub fn offered_features(&self) -> u64 {
        let mut f = self.device.device_features() | VIRTIO_F_VERSION_1;
        if self.device.supports_queue_reset() {
            f |= VIRTIO_F_RING_RESET;
        }
        f
    }

    /// Deliver a notification for queue `index` to the device, as a `QueueNotify` write or an
    /// ioeventfd would. Ignored unless the device is running.
    pub fn process_queue(&mut self, index: u16) {
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            debug!("virtio-mmio: notify of queue {index} while not running, ignored");
            return;
        }
        if usize::from(index) >= self.queues.len() {
            self.counters.ignored_writes += 1;
            guest_warn!(
                self.counters.ignored_writes,
                "virtio-mmio: notify of nonexistent queue {index}, ignored"
            );
            return;
        }
        self.counters.notifications += 1;
        if let Err(e) = self.device.process_queue(index) {
            self.set_needs_reset(&format!("queue {index}: {e}"));
        }
    }

    /// Put the device into `DEVICE_NEEDS_RESET` and tell the driver with a config-change
    /// interrupt. Used by the transport itself and available to the VMM.
    pub fn set_needs_reset(&mut self, why: &str) {
        if self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        warn!(
            "virtio-mmio device {}: needs reset: {why}",
            self.device.device_id()
        );
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.counters.needs_reset += 1;
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.signal_config_change() {
                warn!("virtio-mmio: config-change interrupt failed: {e}");
            }
        }
    }

    /// Handle a guest read of `data.len()` bytes at `offset` in the MMIO window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.reads += 1;
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.counters.bad_accesses += 1;
            guest_warn!(
                self.counters.bad_accesses,
                "virtio-mmio: {}-byte read at {offset:#x} (registers are 32-bit), returning 0",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let features = self.driver_features;
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_id(),
            regs::VENDOR_ID => self.device.vendor_id(),
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self
                .device
                .queue_max_sizes(features)
                .get(self.queue_sel as usize)
                .copied()
                .map(u32::from)
                .unwrap_or(0),
            regs::QUEUE_NUM => self.selected().map_or(0, |q| u32::from(q.size())),
            regs::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt.shared().status.load(Ordering::SeqCst),
            regs::STATUS => self.status,
            regs::QUEUE_DESC_LOW => self.selected().map_or(0, |q| q.desc_table() as u32),
            regs::QUEUE_DESC_HIGH => self.selected().map_or(0, |q| (q.desc_table() >> 32) as u32),
            regs::QUEUE_DRIVER_LOW => self.selected().map_or(0, |q| q.avail_ring() as u32),
            regs::QUEUE_DRIVER_HIGH => self.selected().map_or(0, |q| (q.avail_ring() >> 32) as u32),
            regs::QUEUE_DEVICE_LOW => self.selected().map_or(0, |q| q.used_ring() as u32),
            regs::QUEUE_DEVICE_HIGH => self.selected().map_or(0, |q| (q.used_ring() >> 32) as u32),
            regs::SHM_LEN_LOW => self.selected_shm().map_or(u32::MAX, |r| r.len as u32),
            regs::SHM_LEN_HIGH => self
                .selected_shm()
                .map_or(u32::MAX, |r| (r.len >> 32) as u32),
            regs::SHM_BASE_LOW => self.selected_shm().map_or(u32::MAX, |r| r.gpa as u32),
            regs::SHM_BASE_HIGH => self
                .selected_shm()
                .map_or(u32::MAX, |r| (r.gpa >> 32) as u32),
            // 1 from a completed per-queue reset until the queue is re-enabled (resets are
            // synchronous, so there is no "in progress" state to show).
            regs::QUEUE_RESET => u32::from(self.resetting(self.queue_sel)),
            regs::CONFIG_GENERATION => self
                .interrupt
                .shared()
                .config_generation
                .load(Ordering::SeqCst),
            _ => {
                self.counters.bad_accesses += 1;
                guest_warn!(
                    self.counters.bad_accesses,
                    "virtio-mmio: read of write-only or unknown register {offset:#x}"
                );
                0
            }
        }
    }

    /// Handle a guest write of `data` at `offset` in the MMIO window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.writes += 1;
        if offset >= regs::CONFIG {
            if self.status & STATUS_FAILED != 0 {
                self.ignore(offset, "device failed");
                return;
            }
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.counters.bad_accesses += 1;
            guest_warn!(
                self.counters.bad_accesses,
                "virtio-mmio: {}-byte write at {offset:#x} (registers are 32-bit), ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            self.counters.bad_accesses += 1;
            self.ignore(offset, "unaligned register write");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES => self.write_driver_features(v),
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH
            | regs::QUEUE_READY => self.write_queue_reg(offset, v),
            regs::QUEUE_NOTIFY => {
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
                match u16::try_from(v) {
                    Ok(index) if self.activated => self.process_queue(index),
                    // Linux kicks queues it filled during probe (the balloon's stats buffer)
                    // before DRIVER_OK; every ready queue is processed on activation.
                    Ok(index) if self.status & STATUS_FEATURES_OK != 0 && !self.activated => {
                        self.counters.early_notifications += 1;
                        if let Some(n) = self.early_notified.get_mut(usize::from(index)) {
                            *n = true;
                        }
                        debug!("virtio-mmio: notify of queue {index} before DRIVER_OK, deferred");
                    }
                    _ => self.ignore(offset, "notify before FEATURES_OK or bad queue index"),
                }
            }
            regs::INTERRUPT_ACK => {
                self.interrupt
                    .shared()
                    .status
                    .fetch_and(!v, Ordering::SeqCst);
            }
            regs::STATUS => self.write_status(v),
            regs::SHM_SEL => self.shm_sel = v,
            regs::QUEUE_RESET => self.write_queue_reset(v),
            _ => {
                self.counters.bad_accesses += 1;
                self.ignore(offset, "read-only or unknown register");
            }
        }
    }

    fn ignore(&mut self, offset: u64, why: &str) {
        self.counters.ignored_writes += 1;
        guest_warn!(
            self.counters.ignored_writes,
            "virtio-mmio device {}: write to {offset:#x} ignored: {why}",
            self.device.device_id()
        );
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            self.ignore(
                regs::DRIVER_FEATURES,
                "features written outside DRIVER..FEATURES_OK",
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => {
                self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32);
            }
            _ if v == 0 => {}
            _ => self.ignore(
                regs::DRIVER_FEATURES,
                "feature bits beyond 63 are never offered",
            ),
        }
    }

    fn resetting(&self, sel: u32) -> bool {
        self.queue_resetting
            .get(sel as usize)
            .copied()
            .unwrap_or(false)
    }

    fn write_queue_reset(&mut self, v: u32) {
        let offset = regs::QUEUE_RESET;
        if self.driver_features & VIRTIO_F_RING_RESET == 0 {
            self.ignore(offset, "VIRTIO_F_RING_RESET was not negotiated");
            return;
        }
        if v != 1 {
            self.ignore(offset, "QueueReset takes 1");
            return;
        }
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            self.ignore(offset, "per-queue reset of a device that is not running");
            return;
        }
        let sel = self.queue_sel as usize;
        let Some(max) = self.queues.get(sel).map(|q| q.max_size()) else {
            self.ignore(offset, "selected queue does not exist");
            return;
        };
        self.device.queue_reset(sel as u16);
        if let (Some(slot), Ok(fresh)) = (self.queues.get_mut(sel), Queue::new(max)) {
            *slot = fresh;
        }
        if let Some(r) = self.queue_resetting.get_mut(sel) {
            *r = true;
        }
        debug!(
            "virtio-mmio device {}: queue {sel} reset",
            self.device.device_id()
        );
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        let reenabling = self.resetting(self.queue_sel) && self.status & STATUS_FAILED == 0;
        if !reenabling
            && (self.status & STATUS_FEATURES_OK == 0
                || self.status & (STATUS_DRIVER_OK | STATUS_FAILED) != 0)
        {
            self.ignore(
                offset,
                "queue configured outside FEATURES_OK..DRIVER_OK (reconfiguring a live queue)",
            );
            return;
        }
        let mem = Arc::clone(&self.mem);
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            self.ignore(offset, "selected queue does not exist");
            return;
        };
        if q.ready() && offset != regs::QUEUE_READY {
            self.ignore(offset, "queue is ready; configuration is frozen");
            return;
        }
        let set_lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let set_hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let res = match offset {
            regs::QUEUE_NUM => q.try_set_size(v.try_into().unwrap_or(0)),
            regs::QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(set_lo(q.desc_table())))
            }
            regs::QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(set_hi(q.desc_table())))
            }
            regs::QUEUE_DRIVER_LOW => {
                q.try_set_avail_ring_address(GuestAddress(set_lo(q.avail_ring())))
            }
            regs::QUEUE_DRIVER_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(set_hi(q.avail_ring())))
            }
            regs::QUEUE_DEVICE_LOW => {
                q.try_set_used_ring_address(GuestAddress(set_lo(q.used_ring())))
            }
            regs::QUEUE_DEVICE_HIGH => {
                q.try_set_used_ring_address(GuestAddress(set_hi(q.used_ring())))
            }
            _ => Ok(()),
        };
        if let Err(e) = res {
            self.counters.rejected_queues += 1;
            self.ignore(offset, &format!("value {v:#x}: {e}"));
            return;
        }
        if offset != regs::QUEUE_READY {
            return;
        }
        match v {
            0 => q.set_ready(false),
            1 => {
                q.set_ready(true);
                if !q.is_valid(mem.as_ref()) || !rings_aligned(q) {
                    q.set_ready(false);
                    self.counters.rejected_queues += 1;
                    let sel = self.queue_sel;
                    self.ignore(
                        offset,
                        &format!("queue {sel}: rings misaligned or outside guest memory"),
                    );
                } else if reenabling {
                    self.reenable_queue();
                }
            }
            _ => self.ignore(offset, "QueueReady takes 0 or 1"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if old & STATUS_FAILED != 0 {
            self.ignore(regs::STATUS, "driver set FAILED; only a reset is accepted");
            return;
        }
        if v & old != old {
            self.ignore(
                regs::STATUS,
                &format!("status {old:#x} -> {v:#x} clears bits"),
            );
            return;
        }
        let added = v & !old;
        if added & STATUS_DEVICE_NEEDS_RESET != 0 {
            self.ignore(regs::STATUS, "driver may not set DEVICE_NEEDS_RESET");
            return;
        }
        if added & STATUS_FAILED != 0 {
            warn!(
                "virtio-mmio device {}: driver set FAILED",
                self.device.device_id()
            );
            self.status |= STATUS_FAILED;
            return;
        }
        let order_ok = (added & STATUS_DRIVER == 0 || v & STATUS_ACKNOWLEDGE != 0)
            && (added & STATUS_FEATURES_OK == 0 || v & STATUS_DRIVER != 0)
            && (added & STATUS_DRIVER_OK == 0 || v & STATUS_FEATURES_OK != 0);
        if !order_ok {
            self.ignore(
                regs::STATUS,
                &format!("status {old:#x} -> {v:#x} out of order"),
            );
            return;
        }
        if added & STATUS_FEATURES_OK != 0 && !self.accept_features() {
            // FEATURES_OK stays clear: the driver reads it back and gives up.
            self.status = v & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            return;
        }
        // `v` keeps every bit already set: rewriting the current status (DRIVER_OK included) of
        // a running device changes nothing, and only a newly added DRIVER_OK activates.
        self.status = v;
        if added & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn accept_features(&mut self) -> bool {
        let f = self.driver_features;
        let why = if f & VIRTIO_F_VERSION_1 == 0 {
            Some("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers unsupported)")
        } else if f & !self.offered_features() != 0 {
            Some("driver accepted features that were not offered")
        } else if !self.device.features_negotiated(f) {
            Some("device refused the feature combination")
        } else {
            None
        };
        if let Some(why) = why {
            warn!(
                "virtio-mmio device {}: FEATURES_OK refused ({f:#x}): {why}",
                self.device.device_id()
            );
            self.counters.rejected_features += 1;
            return false;
        }
        self.rebuild_queues();
        true
    }

    fn rebuild_queues(&mut self) {
        let sizes = self.device.queue_max_sizes(self.driver_features);
        self.queues = sizes
            .iter()
            .filter_map(|&max| match Queue::new(max) {
                Ok(q) => Some(q),
                Err(e) => {
                    warn!("virtio-mmio: device reported invalid queue size {max}: {e}");
                    None
                }
            })
            .collect();
        self.queue_resetting = vec![false; self.queues.len()];
        self.early_notified = vec![false; self.queues.len()];
    }

    fn activate(&mut self) {
        let features = self.driver_features;
        let mut queues = std::mem::take(&mut self.queues);
        let event_idx = features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        // The transport keeps a copy of the configuration so the registers still read back.
        self.queues = queues.iter().map(clone_queue).collect();
        let activation = Activation {
            mem: Arc::clone(&self.mem),
            queues,
            interrupt: self.interrupt.clone(),
            features,
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.activated = true;
                self.counters.activations += 1;
                // Replay notifications that arrived before DRIVER_OK.
                let early = std::mem::take(&mut self.early_notified);
                self.early_notified = vec![false; early.len()];
                for (index, _) in early.iter().enumerate().filter(|(_, &n)| n) {
                    if self.queues[index].ready() && self.status & STATUS_DEVICE_NEEDS_RESET == 0 {
                        self.counters.notifications += 1;
                        if let Err(e) = self.device.process_queue(index as u16) {
                            self.set_needs_reset(&format!("queue {index}: {e}"));
                        }
                    }
                }
            }
            Err(e) => self.set_needs_reset(&format!("activation failed: {e}")),
        }
    }

    fn reenable_queue(&mut self) {
        let sel = self.queue_sel as usize;
        let Some(q) = self.queues.get(sel) else {
            return;
        };
        let mut q = clone_queue(q);
        q.set_event_idx(self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0);
        if let Some(r) = self.queue_resetting.get_mut(sel) {
            *r = false;
        }
        if let Err(e) = self.device.queue_enable(sel as u16, q) {
            self.set_needs_reset(&format!("re-enabling queue {sel} failed: {e}"));
        }
    }

    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            self.device.reset();
        }
        self.counters.resets += 1;
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.shared().status.store(0, Ordering::SeqCst);
        self.rebuild_queues();
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn selected_shm(&self) -> Option<super::ShmRegion> {
        let id = u8::try_from(self.shm_sel).ok()?;
        self.device.shm_regions().into_iter().find(|r| r.id == id)
    }

    /// The `InterruptStatus` register (for VMMs that model a level-triggered line: the line is
    /// asserted while this is non-zero).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt.shared().status.load(Ordering::SeqCst)
    }

    /// Whether a config-change interrupt is pending (for VMMs that poll rather than use irqfd).
    pub fn config_change_pending(&self) -> bool {
        self.interrupt.shared().status.load(Ordering::SeqCst) & INT_CONFIG_CHANGE != 0
    }
}

fn rings_aligned(q: &Queue) -> bool {
    // Split-ring alignment (virtio 1.2 §2.7): descriptors 16, driver area 2, device area 4.
    q.desc_table().is_multiple_of(16)
        && q.avail_ring().is_multiple_of(2)
        && q.used_ring().is_multiple_of(4)
}

fn clone_queue(q: &Queue) -> Queue {
    // `Queue` is not `Clone`; its saved state round-trips (validation already passed once).
    Queue::try_from(q.state()).unwrap_or_default()
}
