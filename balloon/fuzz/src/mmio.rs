//! The virtio-mmio transport (`balloon::transport::MmioTransport`) under arbitrary register
//! traffic, with a real device behind it (the balloon, or virtio-gcma on a small real pool) and
//! real memfd guest memory.
//!
//! An input picks the device, then a sequence of register reads and writes (any offset in the
//! window, any access size, values drawn from what matters: status bits, feature words, ring
//! addresses, queue indexes) mixed with the steps a driver takes (negotiate, set up a queue,
//! `DRIVER_OK`, put a buffer on a queue and notify, reset, per-queue reset, acknowledge
//! interrupts, config-space accesses, shared-memory region selection).
//!
//! Checked after every step, through the registers a guest reads and the transport's own view:
//! the identity registers never change; `Status` and `InterruptStatus` read what the transport
//! holds; a running device has gone through `ACKNOWLEDGE`, `DRIVER`, `FEATURES_OK`, `DRIVER_OK`,
//! and `DRIVER_OK` without a running device means `DEVICE_NEEDS_RESET`, which only a reset
//! clears; a reset device neither runs nor has interrupts pending; accepted features are a subset
//! of those offered and include `VERSION_1`; `ConfigGeneration` and the transport's counters
//! never go back. After the sequence,
//! whatever state it left: a reset and a normal initialisation succeed and the device serves a
//! request (no guest can wedge the transport).

use std::sync::{Arc, Mutex};

use balloon::gcma::proto::{self, Request, RESPONSE_LEN};
use balloon::gcma::testing::MemfdGrantMapper;
use balloon::gcma::GcmaDevice;
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::mmio::{regs, MMIO_MAGIC, MMIO_VERSION};
use balloon::transport::{
    MmioCounters, MmioTransport, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use gcma_host::api::FrontswapPolicy;
use gcma_host::pool::{Pool, PoolConfig};

use crate::input::{Enc, Src};

/// Guest memory: 1 MiB of memfd; the driver's rings and buffers live in its top half.
const MEM_LEN: u64 = 1 << 20;
const SCRATCH: std::ops::Range<u64> = (MEM_LEN / 2)..MEM_LEN;
/// Most steps decoded from one input.
pub const MAX_STEPS: usize = 256;

type Shared<D> = Arc<Mutex<MmioTransport<D>>>;

/// Registers the offset selector names (the rest of the window is reached with raw offsets).
const REGS: [u64; 31] = [
    regs::MAGIC_VALUE,
    regs::VERSION,
    regs::DEVICE_ID,
    regs::VENDOR_ID,
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::SHM_LEN_LOW,
    regs::SHM_LEN_HIGH,
    regs::SHM_BASE_LOW,
    regs::SHM_BASE_HIGH,
    regs::QUEUE_RESET,
    regs::CONFIG_GENERATION,
    regs::CONFIG,
    regs::CONFIG + 4,
];

/// One step of an input.
#[derive(Debug, Clone)]
pub enum Step {
    /// A register write of `size` bytes.
    Write {
        offset: u64,
        size: usize,
        value: u64,
    },
    /// A register read of `size` bytes.
    Read { offset: u64, size: usize },
    /// Write `Status`.
    Status(u32),
    /// `ACKNOWLEDGE | DRIVER`, then the driver feature words, then `FEATURES_OK` (no reset).
    Negotiate(u64),
    /// Set up queue `index` with `size` entries in scratch memory (through the harness).
    SetupQueue { index: u16, size: u16 },
    /// Program queue `index` with raw addresses and `QueueReady = 1`.
    ProgramQueue {
        index: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
    /// Set `DRIVER_OK`.
    DriverOk,
    /// Put one buffer carrying `arg` on queue `queue` (if the harness set it up) and notify.
    Traffic { queue: u16, arg: u32 },
    /// Write `QueueNotify`.
    Notify(u32),
    /// Reset the device (the harness's reset: `Status = 0`).
    Reset,
    /// `QueueReset` of queue `index`.
    QueueReset(u16),
    /// Acknowledge interrupt bits.
    Ack(u32),
    /// Read `len` config bytes at `offset`.
    ConfigRead { offset: u64, len: usize },
    /// Write config bytes at `offset`.
    ConfigWrite { offset: u64, data: Vec<u8> },
    /// Select shared-memory region `id` and read its length and base.
    Shm(u32),
    /// Something the VMM does to the device (balloon: new target or a stats request).
    Vmm(u32),
}

/// Which device sits behind the transport.
#[derive(Debug, Clone, Copy)]
pub enum Dev {
    /// The balloon with these features offered (bit 0 stats, 1 reporting, 2 poison, 3 deflate on
    /// OOM) and queue size `32 << (size % 4)`.
    Balloon { features: u8, size: u8 },
    /// virtio-gcma on a 16-page pool.
    Gcma,
}

/// A decoded input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The device.
    pub dev: Dev,
    /// The steps.
    pub steps: Vec<Step>,
}

fn offset(s: &mut Src) -> u64 {
    let i = s.u8();
    match REGS.get(usize::from(i)) {
        Some(&r) => r,
        None => u64::from(s.u16() % 0x1000),
    }
}

fn size(s: &mut Src) -> usize {
    [4, 4, 4, 4, 4, 1, 2, 8][usize::from(s.below(8))]
}

/// Values that matter to registers: 0, 1, small, status bits, feature words, scratch addresses.
fn value(s: &mut Src) -> u64 {
    match s.below(8) {
        0 => 0,
        1 => 1,
        2 => u64::from(s.u8()),
        3 => u64::from(s.u8()) & 0xcf,
        4 => [0, 0x3f | 1 << 29, 1, 1 << 8]
            .get(usize::from(s.below(4)))
            .copied()
            .unwrap_or(0),
        5 => SCRATCH.start + u64::from(s.u16()) * 16,
        6 => u64::from(s.u32()),
        _ => u64::from(u32::MAX),
    }
}

fn step(s: &mut Src) -> Step {
    match s.below(16) {
        0 | 1 => Step::Write {
            offset: offset(s),
            size: size(s),
            value: value(s),
        },
        2 => Step::Read {
            offset: offset(s),
            size: size(s),
        },
        3 => Step::Status(u32::from(s.u8())),
        4 => Step::Negotiate(s.u64()),
        5 => Step::SetupQueue {
            index: u16::from(s.below(6)),
            size: 1 << s.below(10),
        },
        6 => Step::ProgramQueue {
            index: u16::from(s.below(6)),
            size: s.u16(),
            desc: value(s),
            avail: value(s),
            used: value(s),
        },
        7 => Step::DriverOk,
        8 | 9 => Step::Traffic {
            queue: u16::from(s.below(6)),
            arg: s.u32(),
        },
        10 => Step::Notify(value(s) as u32),
        11 => Step::Reset,
        12 => Step::QueueReset(u16::from(s.below(6))),
        13 => Step::Ack(u32::from(s.below(4))),
        14 => match s.below(3) {
            0 => Step::ConfigRead {
                offset: u64::from(s.u8() % 40),
                len: usize::from(s.below(9)),
            },
            1 => Step::ConfigWrite {
                offset: u64::from(s.u8() % 40),
                data: s.bytes(8),
            },
            _ => Step::Shm(u32::from(s.below(3))),
        },
        _ => Step::Vmm(s.u32()),
    }
}

/// Decodes an input.
pub fn decode(data: &[u8]) -> Input {
    let mut s = Src::new(data);
    let dev = match s.below(4) {
        0..=2 => Dev::Balloon {
            features: s.u8(),
            size: s.u8(),
        },
        _ => Dev::Gcma,
    };
    let mut steps = Vec::new();
    while !s.is_empty() && steps.len() < MAX_STEPS {
        steps.push(step(&mut s));
    }
    Input { dev, steps }
}

/// Runs one input; panics on the first broken property.
pub fn run(data: &[u8]) {
    let input = decode(data);
    let mem = Arc::new(memfd_guest_memory(&[(0, MEM_LEN as usize)]).expect("guest memory"));
    let irq = Arc::new(CountingIrq::default());
    match input.dev {
        Dev::Balloon { features, size } => {
            let cfg = BalloonConfig {
                stats: features & 1 != 0,
                free_page_reporting: features & 2 != 0,
                page_poison: features & 4 != 0,
                deflate_on_oom: features & 8 != 0,
                queue_size: 32 << (size % 4),
                target_pages: 0,
            };
            let t = MmioTransport::new(Balloon::new(cfg), mem.clone(), irq);
            drive(
                Arc::new(Mutex::new(t)),
                mem,
                &input.steps,
                balloon_traffic,
                balloon_vmm,
                balloon_serves,
            );
        }
        Dev::Gcma => {
            let mut cfg = PoolConfig::new(16);
            cfg.frontswap_policy = FrontswapPolicy::PutBack;
            let pool = Pool::new(cfg).expect("pool");
            let mapper = MemfdGrantMapper::new(pool, 1 << 32, 16 << 12);
            let dev = GcmaDevice::new(mapper.window(), "fuzz-vm");
            let t = MmioTransport::new(dev, mem.clone(), irq);
            drive(
                Arc::new(Mutex::new(t)),
                mem,
                &input.steps,
                gcma_traffic,
                |_, _| {},
                gcma_serves,
            );
        }
    }
}

fn drive<D: VirtioDevice + 'static>(
    t: Shared<D>,
    mem: Arc<balloon::transport::GuestMemoryMmap>,
    steps: &[Step],
    traffic: fn(&mut Driver<Shared<D>>, u16, u32),
    vmm: fn(&mut MmioTransport<D>, u32),
    serves: fn(&mut Driver<Shared<D>>),
) {
    let device_id = t.lock().expect("transport").device().device_id();
    let mut d = Driver::new(t.clone(), mem.clone(), SCRATCH);
    let mut seen = Seen::default();
    for (i, st) in steps.iter().enumerate() {
        match st {
            Step::Write {
                offset,
                size,
                value,
            } => {
                let b = value.to_le_bytes();
                t.lock().expect("transport").write(*offset, &b[..*size]);
            }
            Step::Read { offset, size } => {
                let mut b = [0u8; 8];
                t.lock().expect("transport").read(*offset, &mut b[..*size]);
            }
            Step::Status(v) => d.set_status(*v),
            Step::Negotiate(f) => {
                d.set_status(STATUS_ACKNOWLEDGE);
                d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                let _ = d.negotiate_exact(*f);
            }
            Step::SetupQueue { index, size } => {
                let _ = d.setup_queue(*index, *size);
            }
            Step::ProgramQueue {
                index,
                size,
                desc,
                avail,
                used,
            } => d.program_queue(
                *index,
                balloon::testing::QueueLayout {
                    size: *size,
                    desc: *desc,
                    avail: *avail,
                    used: *used,
                },
            ),
            Step::DriverOk => d.driver_ok(),
            Step::Traffic { queue, arg } => {
                traffic(&mut d, *queue, *arg);
                let _ = d.drain_used(*queue);
            }
            Step::Notify(v) => d.mmio_write(regs::QUEUE_NOTIFY, *v),
            Step::Reset => {
                // A new driver: the harness forgets its queues and scratch on a reset.
                d.reset();
                d = Driver::new(t.clone(), mem.clone(), SCRATCH);
            }
            Step::QueueReset(q) => {
                d.reset_queue(*q);
            }
            Step::Ack(bits) => d.ack_interrupts(*bits),
            Step::ConfigRead { offset, len } => {
                d.config_read(*offset, *len);
            }
            Step::ConfigWrite { offset, data } => d.config_write(*offset, data),
            Step::Shm(id) => {
                d.mmio_write(regs::SHM_SEL, *id);
                for r in [
                    regs::SHM_LEN_LOW,
                    regs::SHM_LEN_HIGH,
                    regs::SHM_BASE_LOW,
                    regs::SHM_BASE_HIGH,
                ] {
                    d.mmio_read(r);
                }
            }
            Step::Vmm(arg) => vmm(&mut t.lock().expect("transport"), *arg),
        }
        if let Err(e) = check(&mut d, &t, device_id, &mut seen) {
            panic!("after step {i} ({st:?}): {e}");
        }
    }
    // Whatever the steps left behind, a reset and a normal start bring the device back.
    let mut d = Driver::new(t.clone(), mem, SCRATCH);
    serves(&mut d);
}

/// What a guest can see of the transport agrees with what it holds, and is consistent.
/// What the checks remember from one step to the next.
#[derive(Default)]
struct Seen {
    counters: Option<MmioCounters>,
    generation: u32,
    status: u32,
}

fn counter_list(c: &MmioCounters) -> [u64; 12] {
    [
        c.reads,
        c.writes,
        c.notifications,
        c.early_notifications,
        c.ignored_writes,
        c.bad_accesses,
        c.rejected_queues,
        c.rejected_features,
        c.needs_reset,
        c.resets,
        c.activations,
        c.interrupts,
    ]
}

fn check<D: VirtioDevice>(
    d: &mut Driver<Shared<D>>,
    t: &Shared<D>,
    device_id: u32,
    seen: &mut Seen,
) -> Result<(), String> {
    let generation = d.config_generation();
    if generation < seen.generation {
        return Err(format!(
            "ConfigGeneration went back from {} to {generation}",
            seen.generation
        ));
    }
    seen.generation = generation;
    let magic = d.mmio_read(regs::MAGIC_VALUE);
    let version = d.mmio_read(regs::VERSION);
    let id = d.mmio_read(regs::DEVICE_ID);
    if (magic, version, id) != (MMIO_MAGIC, MMIO_VERSION, device_id) {
        return Err(format!(
            "identity registers changed: {magic:#x} {version} {id:#x}"
        ));
    }
    let status_reg = d.status();
    let int_reg = d.interrupt_status();
    let g = t.lock().map_err(|_| "transport lock poisoned")?;
    if status_reg != g.status() {
        return Err(format!(
            "Status reads {status_reg:#x}, transport holds {:#x}",
            g.status()
        ));
    }
    if int_reg != g.interrupt_status() {
        return Err(format!(
            "InterruptStatus reads {int_reg:#x}, transport holds {:#x}",
            g.interrupt_status()
        ));
    }
    let s = g.status();
    let full = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    if g.is_activated() && s & full != full {
        return Err(format!("device runs with status {s:#x}"));
    }
    if s & STATUS_DRIVER_OK != 0 && !g.is_activated() && s & STATUS_DEVICE_NEEDS_RESET == 0 {
        return Err(format!(
            "DRIVER_OK set ({s:#x}) but the device neither runs nor needs a reset"
        ));
    }
    let c = g.counters();
    let reset = match seen.counters {
        Some(old) => {
            for (i, (o, n)) in counter_list(&old).iter().zip(counter_list(&c)).enumerate() {
                if n < *o {
                    return Err(format!("transport counter {i} went back from {o} to {n}"));
                }
            }
            c.resets > old.resets
        }
        None => true,
    };
    seen.counters = Some(c);
    // DEVICE_NEEDS_RESET stays until the driver resets the device; a reset clears everything.
    if !reset && seen.status & STATUS_DEVICE_NEEDS_RESET != 0 && s & STATUS_DEVICE_NEEDS_RESET == 0
    {
        return Err(format!(
            "DEVICE_NEEDS_RESET cleared without a reset ({:#x} -> {s:#x})",
            seen.status
        ));
    }
    seen.status = s;
    if s == 0 && (g.is_activated() || g.interrupt_status() != 0) {
        return Err("a reset device runs or has interrupts pending".into());
    }
    if s & STATUS_FEATURES_OK != 0 {
        let f = g.negotiated_features();
        if f & !g.offered_features() != 0 || f & VIRTIO_F_VERSION_1 == 0 {
            return Err(format!(
                "FEATURES_OK with features {f:#x}, offered {:#x}",
                g.offered_features()
            ));
        }
    }
    Ok(())
}

/// A balloon buffer: `arg` as a PFN (inside guest memory when small), readable.
fn balloon_traffic(d: &mut Driver<Shared<Balloon>>, queue: u16, arg: u32) {
    let Ok(buf) = d.alloc(16, 16) else {
        return;
    };
    let pfn = if arg & 0x8000_0000 != 0 {
        arg
    } else {
        arg % (MEM_LEN as u32 / 4096 / 2)
    };
    let mut bytes = [0u8; 10];
    bytes[..4].copy_from_slice(&pfn.to_le_bytes());
    let _ = d.write_mem(buf, &bytes);
    // 4 bytes: one PFN (inflate, deflate); 10 bytes: one stats entry; writable for reporting.
    let (len, writable) = match arg % 3 {
        0 => (4, false),
        1 => (10, false),
        _ => (4096, true),
    };
    let buf = if writable {
        d.alloc(4096, 4096).unwrap_or(buf)
    } else {
        buf
    };
    if d.add_chain(queue, &[(buf, len, writable)]).is_ok() {
        d.kick(queue);
    }
}

fn balloon_vmm(t: &mut MmioTransport<Balloon>, arg: u32) {
    if arg & 1 == 0 {
        let _ = t.device_mut().set_target_pages(arg >> 1);
    } else if t.device_mut().request_stats().is_err() {
        t.set_needs_reset("stats request failed");
    }
}

fn balloon_serves(d: &mut Driver<Shared<Balloon>>) {
    d.init(u64::MAX, 32).expect("init after the steps");
    assert!(
        d.bus().lock().expect("transport").is_activated(),
        "not running after init"
    );
    let buf = d.alloc(4, 4).expect("scratch");
    d.write_mem(buf, &5u32.to_le_bytes()).expect("guest memory");
    d.add_chain(0, &[(buf, 4, false)]).expect("add chain");
    d.kick(0);
    assert_eq!(
        d.drain_used(0).expect("used ring").len(),
        1,
        "inflate not served"
    );
    assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    let status = d.bus().lock().expect("transport").device().status();
    assert_eq!(
        status.inflated_pages, 1,
        "a fresh balloon holds the one inflated page"
    );
}

/// A `STATS` request (header + response) on `queue`; `arg` picks the stats buffer size.
fn gcma_traffic(d: &mut Driver<Shared<GcmaDevice>>, queue: u16, arg: u32) {
    let (Ok(hdr), Ok(resp)) = (d.alloc(48, 16), d.alloc(24 + 64, 16)) else {
        return;
    };
    let _ = d.write_mem(hdr, &Request::Stats.encode());
    let len = RESPONSE_LEN as u32 + 16 * (arg % 5);
    if d.add_chain(queue, &[(hdr, 48, false), (resp, len, true)])
        .is_ok()
    {
        d.kick(queue);
    }
}

fn gcma_serves(d: &mut Driver<Shared<GcmaDevice>>) {
    d.init(u64::MAX, 16).expect("init after the steps");
    let (hdr, resp) = (
        d.alloc(48, 16).expect("scratch"),
        d.alloc(24, 16).expect("scratch"),
    );
    d.write_mem(hdr, &Request::Stats.encode())
        .expect("guest memory");
    d.write_mem(resp, &[0xee; 24]).expect("guest memory");
    d.add_chain(0, &[(hdr, 48, false), (resp, 24, true)])
        .expect("add chain");
    d.kick(0);
    let used = d.drain_used(0).expect("used ring");
    assert_eq!(used.len(), 1, "stats request not served");
    let r = d.read_mem(resp, 24).expect("guest memory");
    let r = proto::Response::decode(r.as_slice().try_into().expect("24 bytes"));
    assert_eq!(
        r.status,
        proto::status::OK,
        "stats request after a clean start"
    );
}

/// Writes the bytes that decode to `input` (for seeds).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut e = Enc::default();
    match input.dev {
        Dev::Balloon { features, size } => e.u8(0).u8(features).u8(size),
        Dev::Gcma => e.u8(3),
    };
    for st in &input.steps {
        enc_step(&mut e, st);
    }
    e.out
}

fn enc_offset(e: &mut Enc, off: u64) {
    match REGS.iter().position(|&r| r == off) {
        Some(i) => e.u8(i as u8),
        None => e.u8(0xff).u16(off as u16),
    };
}

fn enc_size(e: &mut Enc, size: usize) {
    e.u8(match size {
        1 => 5,
        2 => 6,
        8 => 7,
        _ => 0,
    });
}

fn enc_value(e: &mut Enc, v: u64) {
    match v {
        0 => e.u8(0),
        1 => e.u8(1),
        _ if v <= 0xff => e.u8(2).u8(v as u8),
        _ => e.u8(6).u32(v as u32),
    };
}

fn enc_step(e: &mut Enc, st: &Step) {
    match st {
        Step::Write {
            offset,
            size,
            value,
        } => {
            e.u8(0);
            enc_offset(e, *offset);
            enc_size(e, *size);
            enc_value(e, *value);
        }
        Step::Read { offset, size } => {
            e.u8(2);
            enc_offset(e, *offset);
            enc_size(e, *size);
        }
        Step::Status(v) => {
            e.u8(3).u8(*v as u8);
        }
        Step::Negotiate(f) => {
            e.u8(4).u64(*f);
        }
        Step::SetupQueue { index, size } => {
            e.u8(5).u8(*index as u8).u8(size.trailing_zeros() as u8);
        }
        Step::ProgramQueue {
            index,
            size,
            desc,
            avail,
            used,
        } => {
            e.u8(6).u8(*index as u8).u16(*size);
            enc_value(e, *desc);
            enc_value(e, *avail);
            enc_value(e, *used);
        }
        Step::DriverOk => {
            e.u8(7);
        }
        Step::Traffic { queue, arg } => {
            e.u8(8).u8(*queue as u8).u32(*arg);
        }
        Step::Notify(v) => {
            e.u8(10);
            enc_value(e, u64::from(*v));
        }
        Step::Reset => {
            e.u8(11);
        }
        Step::QueueReset(q) => {
            e.u8(12).u8(*q as u8);
        }
        Step::Ack(bits) => {
            e.u8(13).u8(*bits as u8);
        }
        Step::ConfigRead { offset, len } => {
            e.u8(14).u8(0).u8(*offset as u8).u8(*len as u8);
        }
        Step::ConfigWrite { offset, data } => {
            e.u8(14).u8(1).u8(*offset as u8).bytes(data);
        }
        Step::Shm(id) => {
            e.u8(14).u8(2).u8(*id as u8);
        }
        Step::Vmm(arg) => {
            e.u8(15).u32(*arg);
        }
    }
}
