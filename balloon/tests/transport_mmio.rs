//! virtio-mmio transport tests, driven through the harness against a small echo device.

use std::sync::{Arc, Mutex};

use balloon::error::DeviceError;
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver, HarnessError, QueueLayout};
use balloon::transport::drain::{drain_queue, Chain, Completion, Drained};
use balloon::transport::mmio::{regs, MMIO_MAGIC};
use balloon::transport::{
    Activation, GuestMemoryMmap, InterruptHandle, MmioTransport, Queue, QueueT, ShmRegion,
    VirtioDevice, INT_CONFIG_CHANGE, INT_USED_BUFFER, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use vm_memory::Bytes;

const ECHO_ID: u32 = 0x4242;
const ECHO_F_EXTRA_QUEUE: u64 = 1 << 0;

/// Copies each chain's readable bytes into its writable buffers. Config: 8 bytes, writable.
#[derive(Default)]
struct Echo {
    config: [u8; 8],
    running: Option<(Arc<GuestMemoryMmap>, Vec<Queue>, InterruptHandle)>,
    rejected: u64,
    resets: u64,
}

impl VirtioDevice for Echo {
    fn device_id(&self) -> u32 {
        ECHO_ID
    }
    fn device_features(&self) -> u64 {
        ECHO_F_EXTRA_QUEUE | VIRTIO_RING_F_EVENT_IDX
    }
    fn queue_max_sizes(&self, features: u64) -> Vec<u16> {
        if features & ECHO_F_EXTRA_QUEUE != 0 {
            vec![16, 8]
        } else {
            vec![16]
        }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        if !a.queues[0].ready() {
            return Err(DeviceError::QueueNotReady(0));
        }
        self.running = Some((a.mem, a.queues, a.interrupt));
        Ok(())
    }
    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError> {
        let (mem, queues, irq) = self.running.as_mut().ok_or(DeviceError::NotActivated)?;
        let q = queues
            .get_mut(usize::from(index))
            .ok_or(DeviceError::NoSuchQueue(index))?;
        let rejected = &mut self.rejected;
        let mut descs = Vec::new();
        drain_queue(q, mem, irq, &mut descs, budget, |chain| match chain {
            Chain::Rejected { .. } => {
                *rejected += 1;
                Completion::Used(0)
            }
            Chain::Valid(c) => {
                let mut data = Vec::new();
                for d in c.readable() {
                    let mut b = vec![0u8; d.len as usize];
                    mem.read_slice(&mut b, d.addr).ok();
                    data.extend(b);
                }
                let mut written = 0usize;
                for d in c.writable() {
                    let n = (d.len as usize).min(data.len() - written);
                    mem.write_slice(&data[written..written + n], d.addr).ok();
                    written += n;
                }
                Completion::Used(written as u32)
            }
        })
        .map_err(|source| DeviceError::BrokenRing {
            queue: index,
            source,
        })
    }
    fn reset(&mut self) {
        self.running = None;
        self.resets += 1;
    }
    fn shm_regions(&self) -> Vec<ShmRegion> {
        vec![ShmRegion {
            id: 0,
            gpa: 0x1_0000_0000,
            len: 0x4000_0000,
        }]
    }
}

type Shared = Arc<Mutex<MmioTransport<Echo>>>;

fn setup() -> (Driver<Shared>, Shared, Arc<CountingIrq>) {
    let mem = Arc::new(memfd_guest_memory(&[(0, 1 << 20)]).unwrap());
    let irq = Arc::new(CountingIrq::default());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        Echo::default(),
        mem.clone(),
        irq.clone(),
    )));
    (Driver::new(t.clone(), mem, 0x1_0000..0x10_0000), t, irq)
}

#[test]
fn identity_registers() {
    let (mut d, _, _) = setup();
    assert_eq!(d.mmio_read(regs::MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(d.mmio_read(regs::VERSION), 2);
    assert_eq!(d.mmio_read(regs::DEVICE_ID), ECHO_ID);
    let f = d.device_features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & ECHO_F_EXTRA_QUEUE, 0);
}

#[test]
fn echo_round_trip_and_interrupts() {
    let (mut d, t, irq) = setup();
    let f = d.init(0, 16).unwrap();
    assert_eq!(f, VIRTIO_F_VERSION_1);
    assert_eq!(
        d.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
    assert_eq!(d.queue_max(1), 0, "extra queue only with its feature");
    let src = d.alloc(64, 8).unwrap();
    let dst = d.alloc(64, 8).unwrap();
    d.write_mem(src, b"hello, device").unwrap();
    let head = d
        .add_chain(0, &[(src, 13, false), (dst, 64, true)])
        .unwrap();
    d.kick(0);
    let used = d.pop_used(0).unwrap().unwrap();
    assert_eq!((used.head, used.len), (head, 13));
    assert_eq!(d.read_mem(dst, 13).unwrap(), b"hello, device");
    assert_eq!(irq.count(), 1);
    assert_eq!(d.interrupt_status() & INT_USED_BUFFER, INT_USED_BUFFER);
    d.ack_interrupts(INT_USED_BUFFER);
    assert_eq!(d.interrupt_status(), 0);
    let c = t.lock().unwrap().counters();
    assert_eq!(c.notifications, 1);
    assert_eq!(c.activations, 1);
}

#[test]
fn dense_queues_follow_features_and_event_idx_suppresses() {
    let (mut d, _, irq) = setup();
    d.init(ECHO_F_EXTRA_QUEUE | VIRTIO_RING_F_EVENT_IDX, 8)
        .unwrap();
    assert!(d.queue_layout(1).is_some());
    let buf = d.alloc(16, 8).unwrap();
    // used_event starts at 0: the first used buffer interrupts, later ones wait until the driver
    // moves used_event (which pop_used does).
    for _ in 0..3 {
        d.add_chain(1, &[(buf, 4, false), (buf + 8, 4, true)])
            .unwrap();
    }
    d.kick(1);
    assert_eq!(irq.count(), 1);
    assert_eq!(d.drain_used(1).unwrap().len(), 3);
    d.add_chain(1, &[(buf, 4, false), (buf + 8, 4, true)])
        .unwrap();
    d.kick(1);
    assert_eq!(irq.count(), 2);
}

#[test]
fn config_space_and_generation() {
    let (mut d, _, _) = setup();
    d.init(0, 16).unwrap();
    d.config_write(2, &[7, 8]);
    assert_eq!(d.config_read(0, 4), vec![0, 0, 7, 8]);
    assert_eq!(
        d.config_read(6, 4),
        vec![0, 0, 0, 0],
        "past the end reads zero"
    );
    assert_eq!(d.config_generation(), 0);
}

#[test]
fn shm_registers() {
    let (mut d, _, _) = setup();
    d.mmio_write(regs::SHM_SEL, 0);
    assert_eq!(d.mmio_read(regs::SHM_BASE_LOW), 0);
    assert_eq!(d.mmio_read(regs::SHM_BASE_HIGH), 1);
    assert_eq!(d.mmio_read(regs::SHM_LEN_LOW), 0x4000_0000);
    assert_eq!(d.mmio_read(regs::SHM_LEN_HIGH), 0);
    d.mmio_write(regs::SHM_SEL, 1);
    assert_eq!(
        d.mmio_read(regs::SHM_LEN_LOW),
        u32::MAX,
        "absent region has length -1"
    );
    assert_eq!(d.mmio_read(regs::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn features_without_version_1_are_refused() {
    let (mut d, t, _) = setup();
    d.set_status(STATUS_ACKNOWLEDGE);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert!(matches!(
        d.negotiate_exact(ECHO_F_EXTRA_QUEUE),
        Err(HarnessError::FeaturesRefused(_))
    ));
    d.reset();
    d.set_status(STATUS_ACKNOWLEDGE);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert!(
        d.negotiate_exact(VIRTIO_F_VERSION_1 | (1 << 20)).is_err(),
        "unoffered bit"
    );
    assert_eq!(t.lock().unwrap().counters().rejected_features, 2);
}

#[test]
fn out_of_order_status_and_bad_sizes_are_ignored() {
    let (mut d, t, _) = setup();
    d.set_status(STATUS_DRIVER_OK);
    assert_eq!(d.status(), 0);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(
        d.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
        "FEATURES_OK without VERSION_1"
    );
    // 2-byte register access.
    let mut b = [0xffu8; 2];
    t.lock().unwrap().read(regs::STATUS, &mut b);
    assert_eq!(b, [0, 0]);
    t.lock().unwrap().write(regs::STATUS, &[0]);
    assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let c = t.lock().unwrap().counters();
    assert!(c.ignored_writes >= 1);
    assert_eq!(c.bad_accesses, 2);
}

#[test]
fn invalid_queue_configuration_is_refused() {
    let (mut d, t, _) = setup();
    d.negotiate(0).unwrap();
    // Size not a power of two, rings outside guest memory, misaligned rings.
    d.program_queue(
        0,
        QueueLayout {
            size: 12,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        },
    );
    assert_eq!(
        d.mmio_read(regs::QUEUE_NUM),
        16,
        "bad size ignored, max kept"
    );
    d.mmio_write(regs::QUEUE_READY, 0);
    d.program_queue(
        0,
        QueueLayout {
            size: 16,
            desc: 0x10_0000 - 16,
            avail: 0x2000,
            used: 0x3000,
        },
    );
    assert_eq!(d.mmio_read(regs::QUEUE_READY), 0);
    d.program_queue(
        0,
        QueueLayout {
            size: 16,
            desc: 0x1000,
            avail: 0x2000,
            used: 0xff_fff0,
        },
    );
    assert_eq!(d.mmio_read(regs::QUEUE_READY), 0);
    d.program_queue(
        0,
        QueueLayout {
            size: 16,
            desc: 0x1008,
            avail: 0x2000,
            used: 0x3000,
        },
    );
    assert_eq!(
        d.mmio_read(regs::QUEUE_DESC_LOW),
        0x1000,
        "misaligned address not taken"
    );
    let c = t.lock().unwrap().counters();
    assert!(c.rejected_queues >= 4, "{c:?}");
    // DRIVER_OK without the required queue: activation fails, NEEDS_RESET.
    d.mmio_write(regs::QUEUE_READY, 0);
    d.driver_ok();
    assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.interrupt_status() & INT_CONFIG_CHANGE, 0);
    // Reset recovers.
    d.init(0, 16).unwrap();
    assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reconfiguring_a_live_queue_is_ignored() {
    let (mut d, t, _) = setup();
    d.init(0, 16).unwrap();
    let l = d.queue_layout(0).unwrap();
    d.mmio_write(regs::QUEUE_SEL, 0);
    d.mmio_write(regs::QUEUE_DESC_LOW, 0x8_0000);
    d.mmio_write(regs::QUEUE_NUM, 4);
    d.mmio_write(regs::QUEUE_READY, 0);
    assert_eq!(d.mmio_read(regs::QUEUE_DESC_LOW), l.desc as u32);
    assert_eq!(d.mmio_read(regs::QUEUE_NUM), 16);
    assert_eq!(d.mmio_read(regs::QUEUE_READY), 1);
    assert!(t.lock().unwrap().counters().ignored_writes >= 3);
    // The queue still works.
    let b = d.alloc(8, 8).unwrap();
    d.add_chain(0, &[(b, 1, false), (b + 4, 1, true)]).unwrap();
    d.kick(0);
    assert!(d.pop_used(0).unwrap().is_some());
}

#[test]
fn descriptor_loop_needs_reset() {
    let (mut d, t, _) = setup();
    d.init(0, 16).unwrap();
    let b = d.alloc(64, 8).unwrap();
    d.write_desc_raw(0, 0, b, 8, 1, 1).unwrap();
    d.write_desc_raw(0, 1, b, 8, 1, 0).unwrap();
    d.publish_raw(0, 0).unwrap();
    d.kick(0);
    assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(t.lock().unwrap().counters().needs_reset, 1);
    // Further notifications are ignored until reset.
    d.kick(0);
    assert_eq!(t.lock().unwrap().counters().notifications, 1);
}

#[test]
fn avail_index_too_far_needs_reset() {
    let (mut d, _, _) = setup();
    d.init(0, 16).unwrap();
    d.set_avail_idx_raw(0, 40).unwrap();
    d.kick(0);
    assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn out_of_range_buffer_is_returned_unused() {
    let (mut d, t, _) = setup();
    d.init(0, 16).unwrap();
    let head = d
        .add_chain(0, &[(0xdead_0000, 8, false), (0x2000, 8, true)])
        .unwrap();
    d.kick(0);
    let u = d.pop_used(0).unwrap().unwrap();
    assert_eq!((u.head, u.len), (head, 0));
    assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(t.lock().unwrap().device().rejected, 1);
}

#[test]
fn reset_returns_device_to_initial_state() {
    let (mut d, t, _) = setup();
    d.init(ECHO_F_EXTRA_QUEUE, 16).unwrap();
    d.reset();
    assert_eq!(d.status(), 0);
    assert_eq!(d.queue_max(1), 0);
    assert_eq!(d.mmio_read(regs::QUEUE_READY), 0);
    let g = t.lock().unwrap();
    assert_eq!(g.device().resets, 1);
    assert!(!g.is_activated());
}

#[test]
fn failed_driver_needs_a_reset() {
    let (mut d, t, _) = setup();
    d.negotiate(0).unwrap();
    d.setup_queue(0, 16).unwrap();
    let s = d.status();
    d.set_status(s | balloon::transport::STATUS_FAILED);
    d.set_status(s | balloon::transport::STATUS_FAILED | STATUS_DRIVER_OK);
    assert_eq!(d.status() & STATUS_DRIVER_OK, 0);
    assert!(!t.lock().unwrap().is_activated());
    d.init(0, 16).unwrap();
    assert!(t.lock().unwrap().is_activated());
}

#[test]
fn transport_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<MmioTransport<Echo>>();
    assert_send::<MmioTransport<balloon::virtio_balloon::Balloon>>();
    let (mut d, t, _) = setup();
    d.init(0, 16).unwrap();
    assert_eq!(t.lock().unwrap().interrupt_status(), 0);
    // A notification delivered from another thread (as an ioeventfd handler would).
    let b = d.alloc(8, 8).unwrap();
    d.add_chain(0, &[(b, 1, false), (b + 4, 1, true)]).unwrap();
    let t2 = t.clone();
    std::thread::spawn(move || t2.lock().unwrap().process_queue(0))
        .join()
        .unwrap();
    assert!(d.pop_used(0).unwrap().is_some());
    assert_eq!(t.lock().unwrap().interrupt_status(), INT_USED_BUFFER);
}
