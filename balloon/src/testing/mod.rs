//! A guest-driver stand-in for tests (feature `test-utils`).
//!
//! [`Driver`] acts only through what a real guest has: 32-bit reads and writes of the virtio-mmio
//! registers (through any [`MmioBus`]: a bare [`MmioTransport`], a shared one, or a VMM's bus) and
//! bytes in guest memory, where it allocates its rings and buffers. It has no access to device
//! state. Raw ring and descriptor writers let hostile-guest tests break the rules on purpose.
//!
//! ```
//! use std::sync::Arc;
//! use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
//! use balloon::transport::MmioTransport;
//! use balloon::virtio_balloon::{Balloon, BalloonConfig};
//!
//! let mem = Arc::new(memfd_guest_memory(&[(0, 4 << 20)]).unwrap());
//! let irq = Arc::new(CountingIrq::default());
//! let transport = MmioTransport::new(Balloon::new(BalloonConfig::default()), mem.clone(), irq);
//! // Rings and buffers live in the top MiB of guest memory.
//! let mut driver = Driver::new(transport, mem, 3 << 20..4 << 20);
//! driver.init(0, 64).unwrap();
//! // Inflate guest page 5: a PFN list in guest memory, one descriptor, one notification.
//! let buf = driver.alloc(4, 4).unwrap();
//! driver.write_mem(buf, &5u32.to_le_bytes()).unwrap();
//! driver.add_chain(0, &[(buf, 4, false)]).unwrap();
//! driver.kick(0);
//! assert!(driver.pop_used(0).unwrap().is_some());
//! assert_eq!(driver.bus().device().status().inflated_pages, 1);
//! ```
//!
//! See `tests/transport_*.rs` and `tests/balloon_*.rs` for more, including hostile guests.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, FileOffset, GuestAddress};

use crate::transport::chain::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::transport::mmio::regs;
use crate::transport::{
    GuestMemoryMmap, IrqLine, MmioTransport, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Something that answers virtio-mmio register accesses at offsets within one device window.
pub trait MmioBus {
    /// A guest read of `data.len()` bytes at `offset`.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn mmio_write(&mut self, offset: u64, data: &[u8]);
}

impl<D: VirtioDevice> MmioBus for MmioTransport<D> {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.read(offset, data)
    }
    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.write(offset, data)
    }
}

impl<T: MmioBus> MmioBus for Arc<Mutex<T>> {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        // A poisoned lock means another test thread panicked; keep going with its state.
        let mut g = self.lock().unwrap_or_else(|p| p.into_inner());
        g.mmio_read(offset, data)
    }
    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let mut g = self.lock().unwrap_or_else(|p| p.into_inner());
        g.mmio_write(offset, data)
    }
}

impl<T: MmioBus + ?Sized> MmioBus for &mut T {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        (**self).mmio_read(offset, data)
    }
    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        (**self).mmio_write(offset, data)
    }
}

/// An [`IrqLine`] that counts interrupts.
#[derive(Debug, Default)]
pub struct CountingIrq {
    count: AtomicU64,
}

impl CountingIrq {
    /// Interrupts raised so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingIrq {
    fn raise(&self) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Guest memory backed by one memfd (like the VMM's), with each `(gpa, len)` range mapped shared at
/// consecutive file offsets. Untouched pages cost nothing, so large sparse memories are cheap, and
/// hole punching is observable with `SEEK_DATA`.
pub fn memfd_guest_memory(ranges: &[(u64, usize)]) -> std::io::Result<GuestMemoryMmap> {
    // SAFETY: the name is a valid NUL-terminated string; the call has no memory side effects.
    let fd = unsafe { libc::memfd_create(c"balloon-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = Arc::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(gpa, len) in ranges {
        regions.push((
            GuestAddress(gpa),
            len,
            Some(FileOffset::from_arc(Arc::clone(&file), offset)),
        ));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(std::io::Error::other)
}

/// One region of `len` bytes of guest memory at guest-physical 0 on a memfd backed as `huge`
/// says (see `gcma_host::huge`), mapped shared as a VMM maps guest RAM: hugetlb pages are
/// reserved now (a host short of them fails here, naming `/proc/sys/vm/nr_hugepages`), shmem THP
/// is advised.
pub fn huge_memfd_guest_memory(
    len: usize,
    huge: gcma_host::huge::HugePages,
) -> Result<GuestMemoryMmap, gcma_host::huge::HugePageError> {
    use gcma_host::huge::HugePageError;
    use vm_memory::mmap::MmapRegionBuilder;
    let file = Arc::new(gcma_host::huge::create_memfd(
        c"balloon-test-guest",
        len as u64,
        huge,
    )?);
    let flags = if huge.is_hugetlb() {
        libc::MAP_SHARED
    } else {
        libc::MAP_SHARED | libc::MAP_NORESERVE
    };
    let other = |e: &dyn std::fmt::Display| HugePageError::Io {
        op: "mapping test guest memory",
        source: std::io::Error::other(e.to_string()),
    };
    let region = MmapRegionBuilder::new(len)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_file_offset(FileOffset::from_arc(file, 0))
        .with_hugetlbfs(huge.is_hugetlb())
        .build()
        .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(source) if huge.is_hugetlb() => {
                HugePageError::HugetlbUnavailable {
                    needed: (len as u64).div_ceil(gcma_host::huge::HUGE_PAGE_BYTES),
                    free: format!("{:?}", gcma_host::huge::free_hugetlb_pages()),
                    source,
                }
            }
            e => other(&e),
        })?;
    if huge == gcma_host::huge::HugePages::Thp {
        // SAFETY: the region's mapping is exactly `len` bytes at its address, owned by it.
        unsafe { gcma_host::huge::advise_hugepage(region.as_ptr(), len)? };
    }
    let region = vm_memory::GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| other(&"region overflows"))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| other(&e))
}

/// Guest memory backed by private anonymous memory (where releasing needs `MADV_DONTNEED`).
pub fn anon_guest_memory(ranges: &[(u64, usize)]) -> std::io::Result<GuestMemoryMmap> {
    let r: Vec<_> = ranges.iter().map(|&(g, l)| (GuestAddress(g), l)).collect();
    GuestMemoryMmap::from_ranges(&r).map_err(std::io::Error::other)
}

/// What went wrong while driving a device.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The device did not keep `FEATURES_OK` set.
    #[error("device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// `QueueNumMax` is 0 for this queue.
    #[error("queue {0} does not exist")]
    NoSuchQueue(u16),
    /// The requested size exceeds `QueueNumMax` or is not a power of two.
    #[error("queue {queue}: size {size} invalid (max {max})")]
    BadQueueSize {
        /// Queue index.
        queue: u16,
        /// Requested size.
        size: u16,
        /// `QueueNumMax`.
        max: u16,
    },
    /// The device did not keep `QueueReady` set.
    #[error("device refused queue {0}")]
    QueueRejected(u16),
    /// The queue was not set up through this driver.
    #[error("queue {0} not set up by this driver")]
    QueueNotSetUp(u16),
    /// Not enough free descriptors.
    #[error("queue {0} is full")]
    QueueFull(u16),
    /// The scratch area for rings and buffers is exhausted.
    #[error("scratch guest memory exhausted")]
    OutOfScratch,
    /// Guest memory access failed.
    #[error("guest memory access at {0:#x} failed")]
    Memory(u64),
}

/// Guest-physical layout of one split virtqueue set up by a [`Driver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Driver (available) ring.
    pub avail: u64,
    /// Device (used) ring.
    pub used: u64,
}

/// One used-ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the returned chain.
    pub head: u16,
    /// Bytes the device wrote.
    pub len: u32,
}

#[derive(Debug)]
struct DriverQueue {
    layout: QueueLayout,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    in_flight: HashMap<u16, Vec<u16>>,
}

/// A guest-driver stand-in over an [`MmioBus`] and guest memory.
#[derive(Debug)]
pub struct Driver<B: MmioBus> {
    bus: B,
    mem: Arc<GuestMemoryMmap>,
    next_free: u64,
    scratch_end: u64,
    features: u64,
    queues: HashMap<u16, DriverQueue>,
}

impl<B: MmioBus> Driver<B> {
    /// A driver for the device behind `bus`; rings and buffers it allocates come from `scratch`
    /// (guest-physical, must lie inside `mem`).
    pub fn new(bus: B, mem: Arc<GuestMemoryMmap>, scratch: Range<u64>) -> Self {
        Driver {
            bus,
            mem,
            next_free: scratch.start,
            scratch_end: scratch.end,
            features: 0,
            queues: HashMap::new(),
        }
    }

    /// The bus (e.g. the transport, to read counters the VMM would export).
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// The bus, mutably (e.g. for VMM-side operations on the device).
    pub fn bus_mut(&mut self) -> &mut B {
        &mut self.bus
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Features accepted by the last successful [`negotiate`](Self::negotiate).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// A 32-bit register read.
    pub fn mmio_read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A 32-bit register write.
    pub fn mmio_write(&mut self, offset: u64, value: u32) {
        self.bus.mmio_write(offset, &value.to_le_bytes());
    }

    /// Read `len` bytes of device config space at `offset`, one access of that size.
    pub fn config_read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.bus.mmio_read(regs::CONFIG + offset, &mut b);
        b
    }

    /// Read a little-endian u32 from config space.
    pub fn config_read_u32(&mut self, offset: u64) -> u32 {
        let b = self.config_read(offset, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Write device config space at `offset`.
    pub fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.bus.mmio_write(regs::CONFIG + offset, data);
    }

    /// The `Status` register.
    pub fn status(&mut self) -> u32 {
        self.mmio_read(regs::STATUS)
    }

    /// Write `Status`.
    pub fn set_status(&mut self, status: u32) {
        self.mmio_write(regs::STATUS, status)
    }

    /// `InterruptStatus`.
    pub fn interrupt_status(&mut self) -> u32 {
        self.mmio_read(regs::INTERRUPT_STATUS)
    }

    /// Acknowledge interrupt causes.
    pub fn ack_interrupts(&mut self, bits: u32) {
        self.mmio_write(regs::INTERRUPT_ACK, bits)
    }

    /// `ConfigGeneration`.
    pub fn config_generation(&mut self) -> u32 {
        self.mmio_read(regs::CONFIG_GENERATION)
    }

    /// Reset the device (write 0 to `Status`) and forget all queues.
    pub fn reset(&mut self) {
        self.set_status(0);
        self.queues.clear();
        self.features = 0;
    }

    /// All 64 offered feature bits.
    pub fn device_features(&mut self) -> u64 {
        self.mmio_write(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.mmio_read(regs::DEVICE_FEATURES);
        self.mmio_write(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.mmio_read(regs::DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Reset, acknowledge, and accept `wanted ∩ offered` plus `VERSION_1`; returns the accepted
    /// features once the device kept `FEATURES_OK`.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, HarnessError> {
        self.reset();
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let accepted = self.device_features() & (wanted | VIRTIO_F_VERSION_1);
        self.negotiate_exact(accepted)
    }

    /// Like [`negotiate`](Self::negotiate) but writes `features` verbatim (for tests that offer
    /// the device something it should refuse). Expects `ACKNOWLEDGE | DRIVER` already set.
    pub fn negotiate_exact(&mut self, features: u64) -> Result<u64, HarnessError> {
        self.mmio_write(regs::DRIVER_FEATURES_SEL, 0);
        self.mmio_write(regs::DRIVER_FEATURES, features as u32);
        self.mmio_write(regs::DRIVER_FEATURES_SEL, 1);
        self.mmio_write(regs::DRIVER_FEATURES, (features >> 32) as u32);
        let s = self.status();
        self.set_status(s | STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            return Err(HarnessError::FeaturesRefused(features));
        }
        self.features = features;
        Ok(features)
    }

    /// `QueueNumMax` of queue `index` (0: no such queue).
    pub fn queue_max(&mut self, index: u16) -> u16 {
        self.mmio_write(regs::QUEUE_SEL, u32::from(index));
        self.mmio_read(regs::QUEUE_NUM_MAX) as u16
    }

    /// Allocate `len` bytes of scratch guest memory aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, HarnessError> {
        let align = align.max(1).next_power_of_two();
        let start = self
            .next_free
            .checked_add(align - 1)
            .ok_or(HarnessError::OutOfScratch)?
            & !(align - 1);
        let end = start.checked_add(len).ok_or(HarnessError::OutOfScratch)?;
        if end > self.scratch_end {
            return Err(HarnessError::OutOfScratch);
        }
        self.next_free = end;
        Ok(start)
    }

    /// Write guest memory.
    pub fn write_mem(&self, gpa: u64, data: &[u8]) -> Result<(), HarnessError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| HarnessError::Memory(gpa))
    }

    /// Read guest memory.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Result<Vec<u8>, HarnessError> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .map_err(|_| HarnessError::Memory(gpa))?;
        Ok(v)
    }

    fn write_u16(&self, gpa: u64, v: u16) -> Result<(), HarnessError> {
        self.write_mem(gpa, &v.to_le_bytes())
    }

    fn read_u16(&self, gpa: u64) -> Result<u16, HarnessError> {
        let b = self.read_mem(gpa, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Allocate rings for queue `index` with `size` entries in scratch memory, program the queue
    /// registers and set `QueueReady`.
    pub fn setup_queue(&mut self, index: u16, size: u16) -> Result<QueueLayout, HarnessError> {
        let max = self.queue_max(index);
        if max == 0 {
            return Err(HarnessError::NoSuchQueue(index));
        }
        if size == 0 || size > max || !size.is_power_of_two() {
            return Err(HarnessError::BadQueueSize {
                queue: index,
                size,
                max,
            });
        }
        let n = u64::from(size);
        let desc = self.alloc(16 * n, 4096)?;
        let avail = self.alloc(6 + 2 * n, 4096)?;
        let used = self.alloc(6 + 8 * n, 4096)?;
        self.write_mem(desc, &vec![0u8; 16 * size as usize])?;
        self.write_mem(avail, &vec![0u8; 6 + 2 * size as usize])?;
        self.write_mem(used, &vec![0u8; 6 + 8 * size as usize])?;
        let layout = QueueLayout {
            size,
            desc,
            avail,
            used,
        };
        self.program_queue(index, layout);
        if self.mmio_read(regs::QUEUE_READY) != 1 {
            return Err(HarnessError::QueueRejected(index));
        }
        self.queues.insert(
            index,
            DriverQueue {
                layout,
                free: (0..size).rev().collect(),
                avail_idx: 0,
                last_used: 0,
                in_flight: HashMap::new(),
            },
        );
        Ok(layout)
    }

    /// Write a queue's registers verbatim (`QueueSel`, `QueueNum`, the three addresses,
    /// `QueueReady = 1`) without checking anything: for hostile tests.
    pub fn program_queue(&mut self, index: u16, l: QueueLayout) {
        self.mmio_write(regs::QUEUE_SEL, u32::from(index));
        self.mmio_write(regs::QUEUE_NUM, u32::from(l.size));
        self.mmio_write(regs::QUEUE_DESC_LOW, l.desc as u32);
        self.mmio_write(regs::QUEUE_DESC_HIGH, (l.desc >> 32) as u32);
        self.mmio_write(regs::QUEUE_DRIVER_LOW, l.avail as u32);
        self.mmio_write(regs::QUEUE_DRIVER_HIGH, (l.avail >> 32) as u32);
        self.mmio_write(regs::QUEUE_DEVICE_LOW, l.used as u32);
        self.mmio_write(regs::QUEUE_DEVICE_HIGH, (l.used >> 32) as u32);
        self.mmio_write(regs::QUEUE_READY, 1);
    }

    /// Reset queue `index` of a running device (`QueueReset`, needs `VIRTIO_F_RING_RESET`) and
    /// forget it; set it up again with [`setup_queue`](Self::setup_queue). Returns what
    /// `QueueReset` reads back afterwards (1: reset done).
    pub fn reset_queue(&mut self, index: u16) -> u32 {
        self.mmio_write(regs::QUEUE_SEL, u32::from(index));
        self.mmio_write(regs::QUEUE_RESET, 1);
        self.queues.remove(&index);
        self.mmio_read(regs::QUEUE_RESET)
    }

    /// Set `DRIVER_OK`.
    pub fn driver_ok(&mut self) {
        let s = self.status();
        self.set_status(s | STATUS_DRIVER_OK);
    }

    /// Negotiate `wanted`, set up every queue the device reports (each `min(size, max)` entries),
    /// and set `DRIVER_OK`. Returns the negotiated features.
    pub fn init(&mut self, wanted: u64, size: u16) -> Result<u64, HarnessError> {
        let f = self.negotiate(wanted)?;
        let mut index = 0u16;
        loop {
            let max = self.queue_max(index);
            if max == 0 {
                break;
            }
            self.setup_queue(index, size.min(max))?;
            index += 1;
        }
        self.driver_ok();
        Ok(f)
    }

    /// The ring layout of a queue this driver set up.
    pub fn queue_layout(&self, index: u16) -> Option<QueueLayout> {
        self.queues.get(&index).map(|q| q.layout)
    }

    /// Free descriptors of a queue.
    pub fn free_descriptors(&self, index: u16) -> usize {
        self.queues.get(&index).map_or(0, |q| q.free.len())
    }

    /// Put a chain of `(gpa, len, device_writable)` buffers on queue `index`'s available ring
    /// (without notifying). Returns the head index.
    pub fn add_chain(
        &mut self,
        index: u16,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16, HarnessError> {
        let q = self
            .queues
            .get_mut(&index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        if bufs.is_empty() || q.free.len() < bufs.len() {
            return Err(HarnessError::QueueFull(index));
        }
        let ids: Vec<u16> = (0..bufs.len()).filter_map(|_| q.free.pop()).collect();
        let layout = q.layout;
        let head = ids[0];
        let avail_idx = q.avail_idx;
        q.avail_idx = avail_idx.wrapping_add(1);
        q.in_flight.insert(head, ids.clone());
        for (i, (&(gpa, len, writable), &id)) in bufs.iter().zip(&ids).enumerate() {
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < ids.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc_raw(index, id, gpa, len, flags, next)?;
        }
        let slot = layout.avail + 4 + 2 * u64::from(avail_idx % layout.size);
        self.write_u16(slot, head)?;
        std::sync::atomic::fence(Ordering::SeqCst);
        self.write_u16(layout.avail + 2, avail_idx.wrapping_add(1))?;
        Ok(head)
    }

    /// Notify queue `index` (`QueueNotify`).
    pub fn kick(&mut self, index: u16) {
        self.mmio_write(regs::QUEUE_NOTIFY, u32::from(index))
    }

    /// Take the next used element of queue `index`, if the device returned one, and recycle its
    /// descriptors. With `EVENT_IDX`, also asks for an interrupt on the next used buffer.
    pub fn pop_used(&mut self, index: u16) -> Result<Option<UsedElem>, HarnessError> {
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let q = self
            .queues
            .get(&index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        let layout = q.layout;
        let last = q.last_used;
        let used_idx = self.read_u16(layout.used + 2)?;
        if used_idx == last {
            return Ok(None);
        }
        let elem_at = layout.used + 4 + 8 * u64::from(last % layout.size);
        let e = self.read_mem(elem_at, 8)?;
        let head = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as u16;
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if event_idx {
            let used_event = layout.avail + 4 + 2 * u64::from(layout.size);
            self.write_u16(used_event, last.wrapping_add(1))?;
        }
        let q = self
            .queues
            .get_mut(&index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        q.last_used = last.wrapping_add(1);
        if let Some(ids) = q.in_flight.remove(&head) {
            q.free.extend(ids);
        }
        Ok(Some(UsedElem { head, len }))
    }

    /// Take every used element currently on queue `index`.
    pub fn drain_used(&mut self, index: u16) -> Result<Vec<UsedElem>, HarnessError> {
        let mut v = Vec::new();
        while let Some(e) = self.pop_used(index)? {
            v.push(e);
        }
        Ok(v)
    }

    /// Write descriptor `id` of queue `index` verbatim.
    pub fn write_desc_raw(
        &mut self,
        index: u16,
        id: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), HarnessError> {
        let l = self
            .queue_layout(index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        // Index is taken modulo nothing: out-of-table ids write past the table on purpose.
        self.write_mem(l.desc + 16 * u64::from(id), &d)
    }

    /// Publish `head` on the available ring without any bookkeeping (the descriptors are whatever
    /// was written with [`write_desc_raw`](Self::write_desc_raw)).
    pub fn publish_raw(&mut self, index: u16, head: u16) -> Result<(), HarnessError> {
        let q = self
            .queues
            .get_mut(&index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        let l = q.layout;
        let idx = q.avail_idx;
        q.avail_idx = idx.wrapping_add(1);
        self.write_u16(l.avail + 4 + 2 * u64::from(idx % l.size), head)?;
        self.write_u16(l.avail + 2, idx.wrapping_add(1))
    }

    /// Overwrite the available ring's `idx` field.
    pub fn set_avail_idx_raw(&mut self, index: u16, idx: u16) -> Result<(), HarnessError> {
        let l = self
            .queue_layout(index)
            .ok_or(HarnessError::QueueNotSetUp(index))?;
        self.write_u16(l.avail + 2, idx)
    }
}
