//! The `no_std` driver core against the real virtio-gcma device and pool, through balloon's
//! virtio-mmio transport: a test HAL forwards register accesses to the transport and takes DMA
//! pages from the harness's guest memory. Fault hooks on `QueueNotify` inject device resets,
//! `DEVICE_NEEDS_RESET`, lost notifications and a device that answers late.

mod common;

use std::sync::Arc;

use balloon::gcma::testing::MemfdGrantMapper;
use balloon::gcma::GcmaDevice;
use balloon::testing::{memfd_guest_memory, CountingIrq};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
use guest_agent::mmio::{QUEUE_NOTIFY, STATUS};
use guest_agent::proto::{
    stat, status, PAGE_SIZE, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP,
};
use guest_agent::{
    CleancacheClient, DmaExhausted, DmaRegion, DriverConfig, Error, FrontswapClient, GcmaDriver,
    Hal,
};

const GUEST_MEM: usize = 16 << 20;
const WINDOW_GPA: u64 = 1 << 32;

/// What happens to the next `QueueNotify` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NotifyFault {
    /// Deliver normally.
    None,
    /// Reset the device instead (as a host-side reset would), dropping the request.
    ResetDevice,
    /// Put the device into `DEVICE_NEEDS_RESET` instead.
    NeedsReset,
    /// Never deliver (a lost notification).
    Swallow,
    /// Deliver only after the driver has polled this many times.
    Late(u32),
}

struct HarnessHal {
    transport: MmioTransport<GcmaDevice>,
    mem: Arc<GuestMemoryMmap>,
    next: u64,
    fault: NotifyFault,
    pending: Vec<(u16, u32)>,
    notifies: u64,
    /// The device's interrupt line.
    irq: Arc<CountingIrq>,
    /// `wait_hint` asks to sleep from this many polls of a wait on (None: never).
    sleep_after: Option<u64>,
    /// `wait_interrupt` calls, and interrupts raised by the time each one returned.
    sleeps: Vec<u64>,
}

impl HarnessHal {
    fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }
}

// SAFETY: DMA pages are carved once each by a bump pointer out of guest memory (one mmap'd
// region that outlives the HAL via the Arc), zeroed before being handed out, and the device
// sees them at the same guest-physical addresses.
unsafe impl Hal for HarnessHal {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn mmio_write32(&mut self, offset: u64, value: u32) {
        if offset != QUEUE_NOTIFY {
            return self.write(offset, value);
        }
        self.notifies += 1;
        match self.fault {
            NotifyFault::None => self.write(offset, value),
            NotifyFault::ResetDevice => {
                self.fault = NotifyFault::None;
                self.write(STATUS, 0);
            }
            NotifyFault::NeedsReset => {
                self.fault = NotifyFault::None;
                self.transport.set_needs_reset("injected by test");
            }
            NotifyFault::Swallow => {}
            NotifyFault::Late(polls) => self.pending.push((value as u16, polls)),
        }
    }

    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        common::carve_dma(&self.mem, &mut self.next, GUEST_MEM as u64, pages)
    }

    fn wait_hint(&mut self, polls: u64) -> bool {
        self.deliver_due();
        self.sleep_after.is_some_and(|n| polls >= n)
    }

    fn wait_interrupt(&mut self) {
        // The guest sleeps; the device (elsewhere) answers what it was sent meanwhile.
        for (q, _) in std::mem::take(&mut self.pending) {
            self.write(QUEUE_NOTIFY, u32::from(q));
        }
        self.sleeps.push(self.irq.count());
    }
}

impl HarnessHal {
    fn deliver_due(&mut self) {
        let mut due = Vec::new();
        self.pending.retain_mut(|(q, left)| {
            if *left == 0 {
                due.push(*q);
                false
            } else {
                *left -= 1;
                true
            }
        });
        for q in due {
            self.write(QUEUE_NOTIFY, u32::from(q));
        }
    }
}

const ALL: u64 = VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP;

struct Setup {
    drv: GcmaDriver<HarnessHal>,
    mapper: Arc<MemfdGrantMapper>,
    pool: Arc<Pool>,
}

fn setup_with(pool_cfg: PoolConfig, window_pages: u64, cfg: DriverConfig) -> Setup {
    let pool = Pool::new(pool_cfg).expect("pool");
    let mem = Arc::new(memfd_guest_memory(&[(0, GUEST_MEM)]).expect("guest memory"));
    let mapper = Arc::new(MemfdGrantMapper::new(
        pool.clone(),
        WINDOW_GPA,
        window_pages * PAGE_SIZE as u64,
    ));
    let dev = GcmaDevice::new(mapper.window(), "agent-test");
    let irq = Arc::new(CountingIrq::default());
    let transport = MmioTransport::new(dev, mem.clone(), irq.clone());
    let hal = HarnessHal {
        transport,
        mem,
        next: 0x10000,
        fault: NotifyFault::None,
        pending: Vec::new(),
        notifies: 0,
        irq,
        sleep_after: None,
        sleeps: Vec::new(),
    };
    let drv = GcmaDriver::new(hal, cfg).expect("driver init");
    Setup { drv, mapper, pool }
}

fn setup() -> Setup {
    setup_with(PoolConfig::new(1024), 2048, DriverConfig::default())
}

fn pattern(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn negotiates_and_reads_config_and_window() {
    let mut s = setup();
    assert_eq!(s.drv.features() & ALL, ALL);
    assert_eq!(s.drv.config().pool_nr_pages, 1024);
    assert_eq!(s.drv.config().window_nr_pages, 2048);
    assert_eq!(s.drv.window().gpa, WINDOW_GPA);
    assert_eq!(s.drv.window().len_bytes, 2048 * PAGE_SIZE as u64);
    assert_eq!(s.drv.batch_len(), 21);
    let stats = s.drv.stats().unwrap();
    let pool_pages = stats.iter().find(|e| e.tag == stat::POOL_NR_PAGES).unwrap();
    assert_eq!(pool_pages.value, 1024);
}

#[test]
fn contiguous_alloc_and_free() {
    let mut s = setup();
    let r = s.drv.alloc_contig(64, 64).unwrap();
    assert_eq!(r.nr_pages, 64);
    assert!(r.gpa >= WINDOW_GPA && r.gpa.is_multiple_of(64 * PAGE_SIZE as u64));
    let mut buf = vec![0xaau8; 64 * PAGE_SIZE];
    s.mapper.read(r.gpa, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "granted region not zero");
    s.mapper.write(r.gpa, &pattern(3)).unwrap();
    assert_eq!(s.drv.free_contig(r).unwrap(), 64);
    assert!(s.mapper.mapped().is_empty());
    let e = s.drv.free_contig(r).unwrap_err();
    assert_eq!(e.status(), Some(status::UNKNOWN_GRANT));
    let e = s.drv.alloc_contig(5000, 1).unwrap_err();
    assert_eq!(e.status(), Some(status::NO_SPACE));
    s.mapper.fail_next_map();
    let e = s.drv.alloc_contig(1, 1).unwrap_err();
    assert_eq!(e.status(), Some(status::MAP_FAILED));
    // The whole pool is still grantable: nothing leaked.
    let all = s.drv.alloc_contig(1024, 1).unwrap();
    assert_eq!(all.nr_pages, 1024);
}

#[test]
fn cleancache_client_batches_with_tmem_semantics() {
    let mut s = setup();
    let mut cc = CleancacheClient::new();
    let pages: Vec<Vec<u8>> = (0..100).map(pattern).collect();
    let puts: Vec<([u64; 3], u32, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| ([7, 0, 0], i as u32, p.as_slice()))
        .collect();
    let before = s.drv.counters().notifies;
    let mut kept = [false; 100];
    assert_eq!(cc.put_many(&mut s.drv, &puts, &mut kept).unwrap(), 100);
    assert!(kept.iter().all(|k| *k));
    // NEW_POOL, then 100 puts at 21 per notification.
    assert_eq!(s.drv.counters().notifies - before, 1 + 5);
    let mut outs: Vec<Vec<u8>> = vec![vec![0u8; PAGE_SIZE]; 100];
    let mut gets: Vec<([u64; 3], u32, &mut [u8])> = outs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| ([7, 0, 0], i as u32, o.as_mut_slice()))
        .collect();
    let mut hits = [false; 100];
    assert_eq!(cc.get_many(&mut s.drv, &mut gets, &mut hits).unwrap(), 100);
    assert!(hits.iter().all(|h| *h));
    for (i, o) in outs.iter().enumerate() {
        assert!(*o == pages[i], "cleancache page {i} corrupted");
    }
    // Private pool: a hit removed the page.
    let mut out = vec![0u8; PAGE_SIZE];
    assert!(!cc.get(&mut s.drv, [7, 0, 0], 3, &mut out).unwrap());
    cc.put(&mut s.drv, [8, 0, 0], 1, &pages[1]).unwrap();
    cc.flush_page(&mut s.drv, [8, 0, 0], 1).unwrap();
    assert!(!cc.get(&mut s.drv, [8, 0, 0], 1, &mut out).unwrap());
    cc.put(&mut s.drv, [9, 0, 0], 1, &pages[1]).unwrap();
    cc.flush_object(&mut s.drv, [9, 0, 0]).unwrap();
    assert!(!cc.get(&mut s.drv, [9, 0, 0], 1, &mut out).unwrap());
    let c = cc.counters();
    assert_eq!((c.puts, c.hits, c.misses), (102, 100, 3));
    cc.destroy(&mut s.drv).unwrap();
    assert!(cc.put(&mut s.drv, [1, 0, 0], 1, &pages[0]).unwrap());
    assert_eq!(cc.counters().pools_created, 2);
}

#[test]
fn frontswap_client_is_persistent_and_reports_rejections() {
    let mut cfg = PoolConfig::new(1024);
    cfg.client_frontswap_limit_pages = Some(40);
    let mut s = setup_with(cfg, 64, DriverConfig::default());
    let mut fs = FrontswapClient::new(&s.drv, 1);
    let pages: Vec<Vec<u8>> = (0..50).map(|i| pattern(1000 + i)).collect();
    let stores: Vec<(u64, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.as_slice()))
        .collect();
    let mut accepted = [false; 50];
    let n = fs.store_many(&mut s.drv, &stores, &mut accepted).unwrap();
    assert_eq!(n, 40, "client limit not enforced");
    assert_eq!(accepted.iter().filter(|a| **a).count(), 40);
    assert_eq!(fs.stored_pages(), 40);
    // Accepted pages load (twice: persistent), rejected ones miss without an error.
    for _ in 0..2 {
        let mut outs: Vec<Vec<u8>> = vec![vec![0u8; PAGE_SIZE]; 50];
        let mut loads: Vec<(u64, &mut [u8])> = outs
            .iter_mut()
            .enumerate()
            .map(|(i, o)| (i as u64, o.as_mut_slice()))
            .collect();
        let mut hits = [false; 50];
        assert_eq!(fs.load_many(&mut s.drv, &mut loads, &mut hits).unwrap(), 40);
        assert_eq!(hits, accepted);
        for (i, o) in outs.iter().enumerate() {
            if accepted[i] {
                assert!(*o == pages[i], "frontswap page {i} corrupted");
            }
        }
    }
    fs.invalidate_page(&mut s.drv, 0).unwrap();
    let mut out = vec![0u8; PAGE_SIZE];
    assert!(!fs.load(&mut s.drv, 0, &mut out).unwrap());
    assert_eq!(fs.invalidate_area(&mut s.drv).unwrap(), 39);
    assert_eq!(fs.stored_pages(), 0);
    let c = fs.counters();
    assert_eq!((c.succ_stores, c.failed_stores, c.loads), (40, 10, 80));
}

#[test]
fn grant_eviction_keeps_frontswap_and_drops_cleancache() {
    let mut s = setup_with(PoolConfig::new(256), 512, DriverConfig::default());
    let mut cc = CleancacheClient::new();
    let mut fs = FrontswapClient::new(&s.drv, 0);
    let page = pattern(5);
    for i in 0..30u64 {
        assert!(cc.put(&mut s.drv, [1, 0, 0], i as u32, &page).unwrap());
        assert!(fs.store(&mut s.drv, i, &pattern(i)).unwrap());
    }
    let r = s.drv.alloc_contig(256, 1).unwrap();
    assert_eq!(r.nr_pages, 256);
    let mut out = vec![0u8; PAGE_SIZE];
    for i in 0..30u64 {
        assert!(!cc.get(&mut s.drv, [1, 0, 0], i as u32, &mut out).unwrap());
        assert!(
            fs.load(&mut s.drv, i, &mut out).unwrap(),
            "frontswap page {i} lost"
        );
        assert!(out == pattern(i));
    }
    assert_eq!(s.pool.nr_pages(), 256);
}

#[test]
fn device_reset_mid_request() {
    let mut s = setup();
    let mut cc = CleancacheClient::new();
    let mut fs = FrontswapClient::new(&s.drv, 2);
    let page = pattern(1);
    for i in 0..5 {
        assert!(fs.store(&mut s.drv, i, &page).unwrap());
    }
    assert!(cc.put(&mut s.drv, [1, 0, 0], 1, &page).unwrap());
    let grant = s.drv.alloc_contig(16, 1).unwrap();
    // The device is reset while a frontswap store is in flight.
    s.drv.hal_mut().fault = NotifyFault::ResetDevice;
    let e = fs.store(&mut s.drv, 9, &page).unwrap_err();
    assert_eq!(e, Error::FrontswapReset { lost_pages: 5 });
    assert_eq!(s.drv.epoch(), 1);
    // Everything the device held is gone, and the driver works again.
    assert!(s.mapper.mapped().is_empty(), "grant survived the reset");
    assert_eq!(
        s.drv.free_contig(grant).unwrap_err().status(),
        Some(status::UNKNOWN_GRANT)
    );
    let mut out = vec![0u8; PAGE_SIZE];
    assert!(!fs.load(&mut s.drv, 0, &mut out).unwrap());
    assert!(fs.store(&mut s.drv, 0, &page).unwrap());
    assert!(fs.load(&mut s.drv, 0, &mut out).unwrap());
    // Cleancache absorbs a reset: the old page misses, a put during a reset is just dropped.
    assert!(!cc.get(&mut s.drv, [1, 0, 0], 1, &mut out).unwrap());
    s.drv.hal_mut().fault = NotifyFault::ResetDevice;
    assert!(!cc.put(&mut s.drv, [1, 0, 0], 2, &page).unwrap());
    assert_eq!(cc.counters().recoveries, 1);
    assert!(cc.put(&mut s.drv, [1, 0, 0], 2, &page).unwrap());
    assert!(cc.get(&mut s.drv, [1, 0, 0], 2, &mut out).unwrap());
    assert_eq!(s.drv.counters().recoveries, 2);
}

#[test]
fn needs_reset_and_lost_notifications_are_errors_not_hangs() {
    let mut s = setup_with(
        PoolConfig::new(64),
        64,
        DriverConfig {
            max_polls: 5000,
            ..DriverConfig::default()
        },
    );
    s.drv.hal_mut().fault = NotifyFault::NeedsReset;
    assert_eq!(
        s.drv.alloc_contig(1, 1).unwrap_err(),
        Error::DeviceNeedsReset
    );
    assert_eq!(s.drv.alloc_contig(1, 1).unwrap_err(), Error::NotReady);
    s.drv.recover().unwrap();
    let r = s.drv.alloc_contig(1, 1).unwrap();
    assert_eq!(r.nr_pages, 1);
    s.drv.hal_mut().fault = NotifyFault::Swallow;
    assert_eq!(s.drv.stats().unwrap_err(), Error::Timeout);
    s.drv.hal_mut().fault = NotifyFault::None;
    s.drv.recover().unwrap();
    assert!(!s.drv.stats().unwrap().is_empty());
}

#[test]
fn late_device_is_polled_until_it_answers() {
    let mut s = setup();
    s.drv.hal_mut().fault = NotifyFault::Late(50);
    let mut fs = FrontswapClient::new(&s.drv, 0);
    let pages: Vec<Vec<u8>> = (0..30).map(pattern).collect();
    let stores: Vec<(u64, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.as_slice()))
        .collect();
    let mut accepted = [false; 30];
    assert_eq!(
        fs.store_many(&mut s.drv, &stores, &mut accepted).unwrap(),
        30
    );
    let mut out = vec![0u8; PAGE_SIZE];
    assert!(fs.load(&mut s.drv, 29, &mut out).unwrap());
    assert!(out == pages[29]);
}

#[test]
fn a_long_wait_turns_interrupts_on_and_sleeps_until_the_device_answers() {
    let mut s = setup();
    let mut fs = FrontswapClient::new(&s.drv, 0);
    let page = pattern(7);
    let mut out = vec![0u8; PAGE_SIZE];
    // A quick device: answered on the notify, never a wait, never an interrupt.
    s.drv.hal_mut().sleep_after = Some(3);
    assert!(fs.store(&mut s.drv, 1, &page).unwrap());
    assert_eq!(s.drv.hal().irq.count(), 0);
    assert!(s.drv.hal().sleeps.is_empty());
    // A slow one: the driver spins 3 polls, turns interrupts on, looks once more, then sleeps;
    // the device's answer raises the interrupt that ends the sleep.
    s.drv.hal_mut().fault = NotifyFault::Late(1_000_000);
    assert!(fs.load(&mut s.drv, 1, &mut out).unwrap());
    assert!(out == page);
    assert_eq!(
        s.drv.hal().sleeps,
        vec![1],
        "one sleep, ended by one interrupt"
    );
    // Interrupts are off again afterwards: a quick request raises none.
    s.drv.hal_mut().fault = NotifyFault::None;
    assert!(fs.load(&mut s.drv, 1, &mut out).unwrap());
    assert_eq!(s.drv.hal().irq.count(), 1);
    // A HAL that never asks to sleep keeps them off however long the device takes.
    s.drv.hal_mut().sleep_after = None;
    s.drv.hal_mut().fault = NotifyFault::Late(50);
    assert!(fs.load(&mut s.drv, 1, &mut out).unwrap());
    assert_eq!(s.drv.hal().irq.count(), 1);
}

#[test]
fn unnegotiated_features_and_bad_buffers() {
    let mut s = setup_with(
        PoolConfig::new(64),
        64,
        DriverConfig {
            features: VIRTIO_GCMA_F_CLEANCACHE,
            ..DriverConfig::default()
        },
    );
    assert_eq!(s.drv.features() & ALL, VIRTIO_GCMA_F_CLEANCACHE);
    let mut fs = FrontswapClient::new(&s.drv, 0);
    let e = fs.store(&mut s.drv, 0, &pattern(0)).unwrap_err();
    assert_eq!(e.status(), Some(status::UNSUPPORTED));
    assert_eq!(
        s.drv.alloc_contig(1, 1).unwrap_err().status(),
        Some(status::UNSUPPORTED)
    );
    let mut cc = CleancacheClient::new();
    assert_eq!(
        cc.put(&mut s.drv, [0; 3], 0, &[0u8; 100]).unwrap_err(),
        Error::BadBuffer
    );
    let mut too_short = [false; 1];
    let page = pattern(1);
    let two: [([u64; 3], u32, &[u8]); 2] = [([0; 3], 0, &page), ([0; 3], 1, &page)];
    assert_eq!(
        cc.put_many(&mut s.drv, &two, &mut too_short).unwrap_err(),
        Error::BadBuffer
    );
    let mut fs2 = FrontswapClient::new(&s.drv, 0);
    assert_eq!(
        fs2.store(&mut s.drv, 1 << 40, &page).unwrap_err(),
        Error::OffsetTooLarge(1 << 40)
    );
}

/// A HAL whose registers say "virtio-mmio, but a balloon".
struct NotGcma;

// SAFETY: never hands out DMA memory.
unsafe impl Hal for NotGcma {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => 0x7472_6976,
            0x004 => 2,
            0x008 => 5,
            _ => 0,
        }
    }
    fn mmio_write32(&mut self, _offset: u64, _value: u32) {}
    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        Err(DmaExhausted { pages })
    }
}

#[test]
fn refuses_other_devices() {
    assert_eq!(
        GcmaDriver::new(NotGcma, DriverConfig::default()).unwrap_err(),
        Error::WrongDevice(5)
    );
}

#[test]
fn ring_indices_wrap_past_u16() {
    // 66,000 requests move the 16-bit available and used indices past their wrap point.
    let mut s = setup_with(PoolConfig::new(64), 64, DriverConfig::default());
    let mut fs = FrontswapClient::new(&s.drv, 0);
    let pages: Vec<Vec<u8>> = (0..21).map(pattern).collect();
    let batch: Vec<(u64, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p.as_slice()))
        .collect();
    let mut accepted = [false; 21];
    for _ in 0..66_000 / 21 + 1 {
        assert_eq!(
            fs.store_many(&mut s.drv, &batch, &mut accepted).unwrap(),
            21
        );
    }
    assert!(s.drv.counters().requests > 66_000);
    let mut out = vec![0u8; PAGE_SIZE];
    for (i, p) in pages.iter().enumerate() {
        assert!(fs.load(&mut s.drv, i as u64, &mut out).unwrap());
        assert!(out == *p, "page {i} wrong after index wrap");
    }
}
