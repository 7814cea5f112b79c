//! The virtio-gcma driver: device discovery checks, feature negotiation, queue setup, batched
//! request execution with polling, and recovery after a device reset.

use alloc::vec::Vec;

use gcma_proto::gcma::{
    status, Config, DataDir, Request, Response, StatEntry, CONFIG_LEN, NUM_QUEUES, PAGE_SIZE,
    RESPONSE_LEN, STAT_ENTRY_LEN, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP, VIRTIO_ID_GCMA,
};

use crate::error::Error;
use crate::hal::Hal;
use crate::mmio::*;
use crate::queue::{dma_pages, Dma, SlotData, SplitQueue, MAX_SLOTS};

/// How the driver sets the device up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// gcma feature bits wanted (`VIRTIO_F_VERSION_1` is always requested).
    pub features: u64,
    /// Entries per queue (a power of two ≥ 4; capped by the device's `QueueNumMax`). Each
    /// request takes three, so a batch of `queue_size / 3` requests goes out per notification.
    pub queue_size: u16,
    /// Polls of the used ring before a request is declared lost.
    pub max_polls: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            features: VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP,
            queue_size: 64,
            max_polls: 1 << 26,
        }
    }
}

/// A contiguous region granted by the device, in guest-physical address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContigRegion {
    /// First guest-physical address (inside the grant window).
    pub gpa: u64,
    /// Length in pages.
    pub nr_pages: u64,
}

/// The grant window (shared-memory region 0) as the device reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    /// Guest-physical base.
    pub gpa: u64,
    /// Length in bytes (0 when the device has no window).
    pub len_bytes: u64,
}

/// The data buffer of one request.
#[derive(Debug)]
pub enum Data<'a> {
    /// No data (header and response only).
    None,
    /// One page the device reads (`PUT`, `STORE`).
    In(&'a [u8]),
    /// One page the device writes (`GET`, `LOAD`), or a stats buffer (a multiple of 16 bytes, at
    /// most one page).
    Out(&'a mut [u8]),
}

/// One request of a batch; [`GcmaDriver::execute`] fills in `resp`.
#[derive(Debug)]
pub struct Op<'a> {
    /// The request.
    pub req: Request,
    /// Its data buffer.
    pub data: Data<'a>,
    /// The device's answer (valid after `execute` returned `Ok`).
    pub resp: Response,
}

impl<'a> Op<'a> {
    /// A request with a data buffer.
    pub fn new(req: Request, data: Data<'a>) -> Self {
        Op {
            req,
            data,
            resp: Response::default(),
        }
    }
}

/// What the driver did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Requests completed.
    pub requests: u64,
    /// Notifications sent (each one an MMIO exit in a VM).
    pub notifies: u64,
    /// Recoveries after a device reset or failure.
    pub recoveries: u64,
}

/// A virtio-gcma driver over a [`Hal`].
///
/// Single-threaded: requests are issued in batches and the driver polls the used ring (it asks
/// for no interrupts), checking the device status while it waits so that a device reset or
/// `DEVICE_NEEDS_RESET` ends the wait with an error instead of a hang.
///
/// Why not the `virtio-drivers` crate (0.13, evaluated for this): its `MmioTransport` refuses
/// device ids it does not know (`DeviceType::try_from` fails for 0x4743), its `Transport` trait
/// has no shared-memory-region (`SHMSel`/`SHMBase`/`SHMLen`) access, which the grant window
/// needs, and its `Hal` is a set of static functions, so a HAL bound to one harness instance (the
/// host-side tests) would need global state. Its split-ring code alone could be reused, but it
/// shares every buffer through the HAL per request and brings five dependencies (zerocopy,
/// safe-mmio, enumn, bitflags, thiserror) into a ring-3 payload for what is ~250 lines here
/// (fixed request slots, one notification per batch).
pub struct GcmaDriver<H: Hal> {
    hal: H,
    cfg: DriverConfig,
    features: u64,
    config: Config,
    window: Window,
    mem: Vec<Dma>,
    queues: Vec<SplitQueue>,
    epoch: u32,
    ready: bool,
    counters: DriverCounters,
}

impl<H: Hal> core::fmt::Debug for GcmaDriver<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GcmaDriver")
            .field("features", &self.features)
            .field("config", &self.config)
            .field("window", &self.window)
            .field("epoch", &self.epoch)
            .field("ready", &self.ready)
            .finish()
    }
}

// SAFETY: the driver exclusively owns its DMA memory (the `Hal` contract hands each region out
// once); moving it to another thread moves that ownership along.
unsafe impl<H: Hal + Send> Send for GcmaDriver<H> {}

impl<H: Hal> GcmaDriver<H> {
    /// Checks the device, allocates DMA memory for the rings and request pages, and sets the
    /// device up.
    pub fn new(mut hal: H, cfg: DriverConfig) -> Result<Self, Error> {
        let magic = hal.mmio_read32(MAGIC_VALUE);
        let version = hal.mmio_read32(VERSION);
        if magic != MAGIC || version != 2 {
            return Err(Error::NotVirtioMmio { magic, version });
        }
        let id = hal.mmio_read32(DEVICE_ID);
        if id != VIRTIO_ID_GCMA {
            return Err(Error::WrongDevice(id));
        }
        if cfg.queue_size < 4 || !cfg.queue_size.is_power_of_two() {
            return Err(Error::QueueUnavailable(0));
        }
        let pages = dma_pages(cfg.queue_size);
        let mut mem = Vec::with_capacity(NUM_QUEUES);
        for _ in 0..NUM_QUEUES {
            let r = hal
                .dma_alloc(pages)
                .map_err(|e| Error::DmaExhausted(e.pages))?;
            mem.push(Dma::from_region(r));
        }
        let mut d = GcmaDriver {
            hal,
            cfg,
            features: 0,
            config: Config::default(),
            window: Window::default(),
            mem,
            queues: Vec::new(),
            epoch: 0,
            ready: false,
            counters: DriverCounters::default(),
        };
        d.init()?;
        Ok(d)
    }

    /// Resets the device and sets it up again. Everything the device held for this guest
    /// (grants, cleancache pools, frontswap pages) is gone afterwards; [`epoch`](Self::epoch)
    /// tells clients so.
    pub fn recover(&mut self) -> Result<(), Error> {
        self.counters.recoveries += 1;
        self.epoch = self.epoch.wrapping_add(1);
        self.init()
    }

    /// Incremented by every [`recover`](Self::recover): state created in an older epoch is gone.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The device configuration read at setup.
    pub fn config(&self) -> Config {
        self.config
    }

    /// The grant window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Requests that fit in one notification.
    pub fn batch_len(&self) -> usize {
        self.queues.iter().map(|q| q.slots()).min().unwrap_or(0)
    }

    /// What the driver did so far.
    pub fn counters(&self) -> DriverCounters {
        self.counters
    }

    /// The HAL (e.g. for the test harness behind it).
    pub fn hal(&self) -> &H {
        &self.hal
    }

    /// The HAL, mutably.
    pub fn hal_mut(&mut self) -> &mut H {
        &mut self.hal
    }

    /// The device status register.
    pub fn device_status(&mut self) -> u32 {
        self.hal.mmio_read32(STATUS)
    }

    fn init(&mut self) -> Result<(), Error> {
        self.ready = false;
        self.queues.clear();
        let h = &mut self.hal;
        h.mmio_write32(STATUS, 0);
        if h.mmio_read32(STATUS) != 0 {
            return Err(Error::DeviceNeedsReset);
        }
        h.mmio_write32(STATUS, STATUS_ACKNOWLEDGE);
        h.mmio_write32(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        h.mmio_write32(DEVICE_FEATURES_SEL, 0);
        let lo = h.mmio_read32(DEVICE_FEATURES);
        h.mmio_write32(DEVICE_FEATURES_SEL, 1);
        let hi = h.mmio_read32(DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        if offered & VIRTIO_F_VERSION_1 == 0 {
            h.mmio_write32(STATUS, STATUS_FAILED);
            return Err(Error::LegacyDevice);
        }
        let features = offered & (self.cfg.features | VIRTIO_F_VERSION_1);
        h.mmio_write32(DRIVER_FEATURES_SEL, 0);
        h.mmio_write32(DRIVER_FEATURES, features as u32);
        h.mmio_write32(DRIVER_FEATURES_SEL, 1);
        h.mmio_write32(DRIVER_FEATURES, (features >> 32) as u32);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        h.mmio_write32(STATUS, s);
        if h.mmio_read32(STATUS) & STATUS_FEATURES_OK == 0 {
            h.mmio_write32(STATUS, STATUS_FAILED);
            return Err(Error::FeaturesRefused(features));
        }
        self.features = features;
        for q in 0..NUM_QUEUES as u16 {
            let queue = self.setup_queue(q)?;
            self.queues.push(queue);
        }
        self.config = self.read_config();
        let h = &mut self.hal;
        h.mmio_write32(SHM_SEL, u32::from(gcma_proto::gcma::SHM_GRANT_WINDOW));
        let len =
            u64::from(h.mmio_read32(SHM_LEN_LOW)) | (u64::from(h.mmio_read32(SHM_LEN_HIGH)) << 32);
        let gpa = u64::from(h.mmio_read32(SHM_BASE_LOW))
            | (u64::from(h.mmio_read32(SHM_BASE_HIGH)) << 32);
        self.window = if len == u64::MAX {
            Window::default()
        } else {
            Window {
                gpa,
                len_bytes: len,
            }
        };
        h.mmio_write32(STATUS, s | STATUS_DRIVER_OK);
        if h.mmio_read32(STATUS) & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(Error::DeviceNeedsReset);
        }
        self.ready = true;
        Ok(())
    }

    fn setup_queue(&mut self, q: u16) -> Result<SplitQueue, Error> {
        let h = &mut self.hal;
        h.mmio_write32(QUEUE_SEL, u32::from(q));
        if h.mmio_read32(QUEUE_READY) != 0 {
            return Err(Error::QueueUnavailable(q));
        }
        let max = h.mmio_read32(QUEUE_NUM_MAX);
        let size = (self.cfg.queue_size as u32).min(max);
        if size < 4 || !size.is_power_of_two() {
            return Err(Error::QueueUnavailable(q));
        }
        let queue = SplitQueue::new(size as u16, self.mem[usize::from(q)]);
        h.mmio_write32(QUEUE_NUM, size);
        let w64 = |h: &mut H, lo, hi, v: u64| {
            h.mmio_write32(lo, v as u32);
            h.mmio_write32(hi, (v >> 32) as u32);
        };
        w64(h, QUEUE_DESC_LOW, QUEUE_DESC_HIGH, queue.desc_gpa());
        w64(h, QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, queue.avail_gpa());
        w64(h, QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, queue.used_gpa());
        h.mmio_write32(QUEUE_READY, 1);
        if h.mmio_read32(QUEUE_READY) != 1 {
            return Err(Error::QueueUnavailable(q));
        }
        Ok(queue)
    }

    fn read_config(&mut self) -> Config {
        let mut bytes = [0u8; CONFIG_LEN];
        for _ in 0..16 {
            let gen = self.hal.mmio_read32(CONFIG_GENERATION);
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let v = self.hal.mmio_read32(CONFIG + 4 * i as u64);
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            if self.hal.mmio_read32(CONFIG_GENERATION) == gen {
                break;
            }
        }
        Config::decode(&bytes)
    }

    /// Runs a batch of requests (any mix of queues): each queue's requests go out in groups of
    /// [`batch_len`](Self::batch_len) with one notification per group. On `Ok`, every op's
    /// `resp` holds the device's answer (which may be a failure status) and `Data::Out` buffers
    /// hold the data of successful `GET`/`LOAD`/`STATS` requests.
    pub fn execute(&mut self, ops: &mut [Op<'_>]) -> Result<(), Error> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        for op in ops.iter() {
            check_data(op)?;
        }
        // No allocation on this path: payloads may run on a bump allocator that never frees.
        let mut group = [0usize; MAX_SLOTS];
        for q in 0..NUM_QUEUES as u16 {
            let per = self.queues[usize::from(q)].slots();
            let mut left = ops.iter().filter(|o| o.req.queue() == q).count();
            let mut n = 0;
            for i in 0..ops.len() {
                if ops[i].req.queue() != q {
                    continue;
                }
                group[n] = i;
                n += 1;
                left -= 1;
                if n == per || left == 0 {
                    if let Err(e) = self.run_group(q, &group[..n], ops) {
                        if e.needs_recovery() {
                            self.ready = false;
                        }
                        return Err(e);
                    }
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn run_group(&mut self, q: u16, group: &[usize], ops: &mut [Op<'_>]) -> Result<(), Error> {
        let queue = &mut self.queues[usize::from(q)];
        for (s, &i) in group.iter().enumerate() {
            let op = &ops[i];
            let data = match &op.data {
                Data::None => SlotData::None,
                Data::In(page) => {
                    queue.slot(s).page().write(0, page);
                    SlotData::ToDevice(page.len() as u32)
                }
                Data::Out(buf) => SlotData::FromDevice(buf.len() as u32),
            };
            queue.fill(s, &op.req.encode(), data);
        }
        queue.publish();
        self.hal.mmio_write32(QUEUE_NOTIFY, u32::from(q));
        self.counters.notifies += 1;
        let mut done = 0u128;
        let mut outstanding = group.len();
        let mut polls = 0u64;
        let mut interrupts = false;
        // Look at the status on the first poll, every 1024th and after every sleep (a sleep may
        // have ended on the config-change interrupt of a device that needs a reset).
        let mut look = true;
        while outstanding > 0 {
            let queue = &mut self.queues[usize::from(q)];
            match queue.pop_used() {
                Some(Ok((s, len))) => {
                    if s >= group.len() || done & (1 << s) != 0 || (len as usize) < RESPONSE_LEN {
                        return Err(Error::Protocol);
                    }
                    done |= 1 << s;
                    outstanding -= 1;
                    let slot = *queue.slot(s);
                    let resp = Response::decode(&slot.response());
                    let op = &mut ops[group[s]];
                    op.resp = resp;
                    if resp.status == status::OK {
                        if let Data::Out(buf) = &mut op.data {
                            let n = (len as usize - RESPONSE_LEN).min(buf.len());
                            slot.page().read(0, &mut buf[..n]);
                        }
                    }
                    self.counters.requests += 1;
                    continue;
                }
                Some(Err(_)) => return Err(Error::Protocol),
                None => {}
            }
            polls += 1;
            if core::mem::take(&mut look) || polls.is_multiple_of(1024) {
                let st = self.hal.mmio_read32(STATUS);
                if st & STATUS_DEVICE_NEEDS_RESET != 0 {
                    return Err(Error::DeviceNeedsReset);
                }
                if st & STATUS_DRIVER_OK == 0 {
                    return Err(Error::DeviceReset);
                }
            }
            if polls > self.cfg.max_polls {
                return Err(Error::Timeout);
            }
            if self.hal.wait_hint(polls) {
                if interrupts {
                    self.hal.wait_interrupt();
                    look = true;
                } else {
                    // Look once more before sleeping: a buffer used before the device saw the
                    // flag raised no interrupt.
                    self.queues[usize::from(q)].set_interrupts(true);
                    interrupts = true;
                }
            }
        }
        if interrupts {
            self.queues[usize::from(q)].set_interrupts(false);
        }
        Ok(())
    }

    /// Runs one request; returns the response whatever its status.
    pub fn request(&mut self, req: Request, data: Data<'_>) -> Result<Response, Error> {
        let mut ops = [Op::new(req, data)];
        self.execute(&mut ops)?;
        Ok(ops[0].resp)
    }

    fn request_ok(&mut self, req: Request, data: Data<'_>) -> Result<Response, Error> {
        let r = self.request(req, data)?;
        if r.status != status::OK {
            return Err(Error::Status(r));
        }
        Ok(r)
    }

    /// Asks for `nr_pages` contiguous pages at a guest-physical address aligned to
    /// `align_pages` pages. They read as zeros.
    pub fn alloc_contig(&mut self, nr_pages: u64, align_pages: u64) -> Result<ContigRegion, Error> {
        let r = self.request_ok(
            Request::AllocContig {
                nr_pages,
                align_pages,
            },
            Data::None,
        )?;
        // The device answers the grant's offset inside shared-memory region 0; the region's
        // base (read at start-up from the transport) makes it a guest-physical address. A grant
        // that does not lie inside the region is a device bug the driver does not pass on.
        let (offset, nr_pages) = (r.value0, r.value1);
        let inside = nr_pages
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|len| offset.checked_add(len))
            .is_some_and(|end| nr_pages != 0 && end <= self.window.len_bytes);
        let gpa = self.window.gpa.checked_add(offset);
        match gpa {
            Some(gpa) if inside => Ok(ContigRegion { gpa, nr_pages }),
            _ => Err(Error::Protocol),
        }
    }

    /// Returns a region; gives the number of pages freed.
    pub fn free_contig(&mut self, region: ContigRegion) -> Result<u64, Error> {
        // An address below the window wraps to an offset no grant has: the device answers
        // `UNKNOWN_GRANT`, as for any other address it did not hand out.
        let offset = region.gpa.wrapping_sub(self.window.gpa);
        Ok(self
            .request_ok(Request::FreeContig { offset }, Data::None)?
            .value0)
    }

    /// The device's counters.
    pub fn stats(&mut self) -> Result<Vec<StatEntry>, Error> {
        let mut buf = [0u8; PAGE_SIZE];
        let r = self.request_ok(Request::Stats, Data::Out(&mut buf))?;
        let n = (r.value0 as usize).min(PAGE_SIZE / STAT_ENTRY_LEN);
        Ok(buf[..n * STAT_ENTRY_LEN]
            .chunks_exact(STAT_ENTRY_LEN)
            .map(|c| {
                let mut e = [0u8; STAT_ENTRY_LEN];
                e.copy_from_slice(c);
                StatEntry::decode(&e)
            })
            .collect())
    }
}

fn check_data(op: &Op<'_>) -> Result<(), Error> {
    let ok = match (op.req.data(), &op.data) {
        (DataDir::None, Data::None) => true,
        (DataDir::ToDevice, Data::In(p)) => p.len() == PAGE_SIZE,
        (DataDir::FromDevice, Data::Out(p)) => p.len() == PAGE_SIZE,
        (DataDir::Stats, Data::Out(p)) => {
            p.len() <= PAGE_SIZE && p.len().is_multiple_of(STAT_ENTRY_LEN)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::BadBuffer)
    }
}
