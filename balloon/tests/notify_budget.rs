//! A notification serves at most one queue's worth of requests: a guest that keeps posting while
//! the device works cannot hold the notifying thread (a vCPU thread, or the device thread shared
//! by every device of the VMM), and whatever it posted is still served on later turns without
//! another notification.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use balloon::gcma::proto::{Request, REQUEST_HEADER_LEN, RESPONSE_LEN, VIRTIO_GCMA_F_FRONTSWAP};
use balloon::gcma::{GcmaDevice, GrantWindow, HostWindow, PoolMapping, WindowRange};
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::mmio::regs;
use balloon::transport::MmioTransport;
use gcma_host::api::{CleancacheKey, ClientId, ContigGrant, FrontswapKey, GcmaBackend, PoolError};
use gcma_host::pool::{Pool, PoolConfig};

const QUEUE: u16 = 2; // frontswap
const QUEUE_SIZE: u16 = 16;

type Shared = Arc<Mutex<MmioTransport<GcmaDevice>>>;

/// The guest side while the device works: a driver that, like another vCPU, takes back every
/// request the device returned and posts it again, `quota` requests in all, never kicking.
struct Guest {
    driver: Driver<Shared>,
    bufs: Vec<(u64, u64)>,
    posted: u64,
    quota: u64,
}

impl Guest {
    fn keep_posting(&mut self) {
        while let Some(u) = self.driver.pop_used(QUEUE).unwrap() {
            if self.posted < self.quota {
                let b = self.bufs[usize::from(u.head) % self.bufs.len()];
                post(&mut self.driver, b);
                self.posted += 1;
            }
        }
    }
}

/// The real pool, with the guest posting more each time the device runs a frontswap request:
/// the deterministic form of a guest that keeps the ring full while the device drains it.
struct Reposting {
    pool: Arc<Pool>,
    guest: Mutex<Option<Guest>>,
}

impl GcmaBackend for Reposting {
    fn register_client(&self, name: &str) -> ClientId {
        self.pool.register_client(name)
    }
    fn unregister_client(&self, c: ClientId) -> Result<(), PoolError> {
        self.pool.unregister_client(c)
    }
    fn retire_client(&self, c: ClientId) -> Result<(), PoolError> {
        self.pool.retire_client(c)
    }
    fn alloc_contig(&self, c: ClientId, n: u64, align: u64) -> Result<ContigGrant, PoolError> {
        self.pool.alloc_contig(c, n, align)
    }
    fn free_contig(&self, c: ClientId, first: u64) -> Result<u64, PoolError> {
        self.pool.free_contig(c, first)
    }
    fn memfd(&self) -> BorrowedFd<'_> {
        self.pool.memfd()
    }
    fn nr_pages(&self) -> u64 {
        self.pool.nr_pages()
    }
    fn cleancache_new_pool(&self, c: ClientId) -> Result<u32, PoolError> {
        self.pool.cleancache_new_pool(c)
    }
    fn cleancache_put(&self, c: ClientId, k: CleancacheKey, p: &[u8]) -> Result<bool, PoolError> {
        self.pool.cleancache_put(c, k, p)
    }
    fn cleancache_get(
        &self,
        c: ClientId,
        k: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        self.pool.cleancache_get(c, k, out)
    }
    fn cleancache_flush_page(&self, c: ClientId, k: CleancacheKey) -> Result<bool, PoolError> {
        self.pool.cleancache_flush_page(c, k)
    }
    fn cleancache_flush_object(
        &self,
        c: ClientId,
        pool: u32,
        object: [u64; 3],
    ) -> Result<u64, PoolError> {
        self.pool.cleancache_flush_object(c, pool, object)
    }
    fn cleancache_destroy_pool(&self, c: ClientId, pool: u32) -> Result<(), PoolError> {
        self.pool.cleancache_destroy_pool(c, pool)
    }
    fn frontswap_store(&self, c: ClientId, k: FrontswapKey, p: &[u8]) -> Result<(), PoolError> {
        self.pool.frontswap_store(c, k, p)
    }
    fn frontswap_load(
        &self,
        c: ClientId,
        k: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        self.pool.frontswap_load(c, k, out)
    }
    fn frontswap_invalidate_page(&self, c: ClientId, k: FrontswapKey) -> Result<bool, PoolError> {
        self.pool.frontswap_invalidate_page(c, k)
    }
    fn frontswap_invalidate_area(&self, c: ClientId, area: u32) -> Result<u64, PoolError> {
        if let Some(g) = self.guest.lock().unwrap().as_mut() {
            g.keep_posting();
        }
        self.pool.frontswap_invalidate_area(c, area)
    }
}

fn device_on(backend: Arc<dyn GcmaBackend>) -> (Driver<Shared>, Shared) {
    let host = Arc::new(HostWindow::reserve(2 << 20).unwrap());
    let mapper = Arc::new(PoolMapping::new(host, backend.memfd()).unwrap());
    let range = WindowRange {
        gpa: 1 << 32,
        len_bytes: 2 << 20,
    };
    let window = Arc::new(GrantWindow::new(range, backend, mapper).unwrap());
    let mem = Arc::new(memfd_guest_memory(&[(0, 4 << 20)]).unwrap());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        GcmaDevice::new(window, "poster"),
        mem.clone(),
        Arc::new(CountingIrq::default()),
    )));
    let mut d = Driver::new(t.clone(), mem, 0x1000..(4 << 20));
    d.init(VIRTIO_GCMA_F_FRONTSWAP, QUEUE_SIZE).unwrap();
    (d, t)
}

fn device() -> (Driver<Shared>, Shared) {
    device_on(Pool::new(PoolConfig::new(64)).unwrap())
}

/// Posts one `INVALIDATE_AREA` request (two descriptors) with its own header and response.
fn post(d: &mut Driver<Shared>, bufs: (u64, u64)) {
    d.add_chain(
        QUEUE,
        &[
            (bufs.0, REQUEST_HEADER_LEN as u32, false),
            (bufs.1, RESPONSE_LEN as u32, true),
        ],
    )
    .unwrap();
}

fn request_bufs(d: &mut Driver<Shared>) -> (u64, u64) {
    let hdr = d.alloc(64, 64).unwrap();
    let resp = d.alloc(64, 64).unwrap();
    d.write_mem(hdr, &Request::InvalidateArea { area: 1 }.encode())
        .unwrap();
    (hdr, resp)
}

fn answered(t: &Shared) -> u64 {
    t.lock()
        .unwrap()
        .device()
        .metrics()
        .snapshot()
        .requests(QUEUE)
}

#[test]
fn a_driver_that_keeps_reposting_gets_one_queues_worth_per_notification() {
    const QUOTA: u64 = 10_000;
    let backend = Arc::new(Reposting {
        pool: Pool::new(PoolConfig::new(64)).unwrap(),
        guest: Mutex::new(None),
    });
    let (mut d, t) = device_on(backend.clone());
    let bufs: Vec<(u64, u64)> = (0..QUEUE_SIZE / 2).map(|_| request_bufs(&mut d)).collect();
    for b in &bufs {
        post(&mut d, *b);
    }
    *backend.guest.lock().unwrap() = Some(Guest {
        driver: d,
        posted: bufs.len() as u64,
        bufs,
        quota: QUOTA,
    });
    // One notification, as a `QueueNotify` write delivers it.
    t.lock()
        .unwrap()
        .write(regs::QUEUE_NOTIFY, &u32::from(QUEUE).to_le_bytes());
    let in_one_notification = answered(&t);
    assert!(
        in_one_notification <= u64::from(QUEUE_SIZE),
        "one notification served {in_one_notification} requests"
    );
    // The rest is served turn by turn (as the VMM does between guest runs), with no new kick.
    let mut turns = 0u64;
    while t.lock().unwrap().process_pending() {
        turns += 1;
        assert!(turns <= QUOTA, "work left after {turns} turns");
    }
    assert_eq!(
        backend.guest.lock().unwrap().as_ref().unwrap().posted,
        QUOTA
    );
    assert_eq!(answered(&t), QUOTA, "every posted request was answered");
    let c = t.lock().unwrap().counters();
    assert_eq!(
        c.notifications - c.deferred_rounds,
        1,
        "one notification only"
    );
    assert!(c.deferred_rounds >= QUOTA / u64::from(QUEUE_SIZE) - 1);
}

#[test]
fn a_smaller_budget_serves_a_batch_in_turns_without_new_notifications() {
    let (mut d, t) = device();
    t.lock().unwrap().set_requests_per_notify(Some(3));
    for _ in 0..QUEUE_SIZE / 2 {
        let b = request_bufs(&mut d);
        post(&mut d, b);
    }
    d.kick(QUEUE);
    assert_eq!(answered(&t), 3);
    assert!(t.lock().unwrap().has_pending());
    assert!(t.lock().unwrap().process_pending());
    assert_eq!(answered(&t), 6);
    assert!(
        !t.lock().unwrap().process_pending(),
        "8 requests: 3 + 3 + 2"
    );
    assert_eq!(answered(&t), 8);
    assert!(!t.lock().unwrap().has_pending());
    assert_eq!(d.drain_used(QUEUE).unwrap().len(), 8);
    // A reset drops what was pending.
    for _ in 0..QUEUE_SIZE / 2 {
        let b = request_bufs(&mut d);
        post(&mut d, b);
    }
    d.kick(QUEUE);
    assert!(t.lock().unwrap().has_pending());
    d.reset();
    assert!(!t.lock().unwrap().has_pending());
    assert!(!t.lock().unwrap().process_pending());
}
