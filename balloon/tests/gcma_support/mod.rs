//! Shared pieces of the virtio-gcma tests: a small in-test pool stand-in and a rig that drives a
//! `GcmaDevice` through the virtio-mmio transport with the harness driver.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use balloon::gcma::proto::{
    DataDir, Request, Response, PAGE_SIZE, REQUEST_HEADER_LEN, RESPONSE_LEN,
};
use balloon::gcma::testing::MemfdGrantMapper;
use balloon::gcma::{GcmaCounters, GcmaDevice};
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::MmioTransport;
use gcma_host::api::{
    CleancacheKey, ClientId, ContigGrant, FrontswapKey, GcmaBackend, PoolError, RejectReason,
};

/// Guest RAM size of the rig.
pub const GUEST_MEM: usize = 32 << 20;
/// Grant window base (above guest RAM, as a VMM would place it).
pub const WINDOW_GPA: u64 = 1 << 32;

/// A pool stand-in: maps for cleancache and frontswap, first fit over a page bitmap for grants.
/// Used until tests run against `gcma_host::pool::Pool` too; it keeps the tmem contract
/// (private-pool gets remove, puts replace) and can be told to reject stores.
pub struct FakeBackend {
    memfd: OwnedFd,
    nr_pages: u64,
    inner: Mutex<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    next_client: u64,
    clients: BTreeMap<u64, FakeClient>,
    granted: Vec<bool>,
    reject_stores: bool,
}

/// One cleancache pool: (object, index) → page.
type CleanPool = HashMap<([u64; 3], u32), Vec<u8>>;

#[derive(Default)]
struct FakeClient {
    next_pool: u32,
    pools: HashMap<u32, CleanPool>,
    swap: HashMap<(u32, u64), Vec<u8>>,
    grants: BTreeMap<u64, u64>,
    /// Unregistered with grants kept (`retire_client`): only frees are accepted.
    retired: bool,
}

impl FakeBackend {
    /// A stand-in pool of `nr_pages` pages.
    pub fn new(nr_pages: u64) -> Arc<Self> {
        // SAFETY: valid NUL-terminated name; no memory side effects.
        let fd = unsafe { libc::memfd_create(c"gcma-fake-pool".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: fd was just created and is owned by nobody else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let f = std::fs::File::from(memfd.try_clone().expect("dup"));
        f.set_len(nr_pages * PAGE_SIZE as u64).expect("set_len");
        Arc::new(FakeBackend {
            memfd,
            nr_pages,
            inner: Mutex::new(FakeInner {
                granted: vec![false; nr_pages as usize],
                ..Default::default()
            }),
        })
    }

    /// Make every frontswap store fail with `Rejected(PoolFull)` while `on`.
    pub fn reject_stores(&self, on: bool) {
        self.inner.lock().unwrap().reject_stores = on;
    }

    /// Pages granted to anyone.
    pub fn granted_pages(&self) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .granted
            .iter()
            .filter(|g| **g)
            .count() as u64
    }

    /// Pool bytes at `page` (read through the memfd, not a mapping).
    pub fn read_page(&self, page: u64) -> Vec<u8> {
        let f = std::fs::File::from(self.memfd.try_clone().expect("dup"));
        let mut v = vec![0u8; PAGE_SIZE];
        f.read_exact_at(&mut v, page * PAGE_SIZE as u64)
            .expect("read");
        v
    }

    fn with_client<T>(
        &self,
        c: ClientId,
        f: impl FnOnce(&mut FakeClient) -> Result<T, PoolError>,
    ) -> Result<T, PoolError> {
        let mut g = self.inner.lock().unwrap();
        let cl = g
            .clients
            .get_mut(&c.0)
            .filter(|cl| !cl.retired)
            .ok_or(PoolError::UnknownClient(c))?;
        f(cl)
    }
}

impl GcmaBackend for FakeBackend {
    fn register_client(&self, _name: &str) -> ClientId {
        let mut g = self.inner.lock().unwrap();
        g.next_client += 1;
        let id = g.next_client;
        g.clients.insert(id, FakeClient::default());
        ClientId(id)
    }

    fn unregister_client(&self, client: ClientId) -> Result<(), PoolError> {
        let mut g = self.inner.lock().unwrap();
        let cl = g
            .clients
            .remove(&client.0)
            .ok_or(PoolError::UnknownClient(client))?;
        for (first, n) in cl.grants {
            for p in first..first + n {
                g.granted[p as usize] = false;
            }
        }
        Ok(())
    }

    fn retire_client(&self, client: ClientId) -> Result<(), PoolError> {
        let mut g = self.inner.lock().unwrap();
        let cl = g
            .clients
            .get_mut(&client.0)
            .filter(|cl| !cl.retired)
            .ok_or(PoolError::UnknownClient(client))?;
        cl.pools.clear();
        cl.swap.clear();
        cl.retired = true;
        if cl.grants.is_empty() {
            g.clients.remove(&client.0);
        }
        Ok(())
    }

    fn alloc_contig(
        &self,
        client: ClientId,
        nr: u64,
        align: u64,
    ) -> Result<ContigGrant, PoolError> {
        if nr == 0 || !align.is_power_of_two() {
            return Err(PoolError::Invalid("size or alignment"));
        }
        let mut g = self.inner.lock().unwrap();
        if g.clients.get(&client.0).is_none_or(|c| c.retired) {
            return Err(PoolError::UnknownClient(client));
        }
        let free = g.granted.iter().filter(|x| !**x).count() as u64;
        if free < nr {
            return Err(PoolError::Exhausted {
                requested: nr,
                available: free,
            });
        }
        let mut start = 0u64;
        while start + nr <= self.nr_pages {
            match (start..start + nr).find(|&p| g.granted[p as usize]) {
                Some(busy) => start = (busy + 1).next_multiple_of(align),
                None => {
                    for p in start..start + nr {
                        g.granted[p as usize] = true;
                    }
                    g.clients
                        .get_mut(&client.0)
                        .unwrap()
                        .grants
                        .insert(start, nr);
                    let f = std::fs::File::from(self.memfd.try_clone().expect("dup"));
                    f.write_all_at(
                        &vec![0u8; (nr as usize) * PAGE_SIZE],
                        start * PAGE_SIZE as u64,
                    )
                    .map_err(|e| PoolError::io("zeroing a grant", e))?;
                    return Ok(ContigGrant {
                        client,
                        first_page: start,
                        nr_pages: nr,
                    });
                }
            }
        }
        Err(PoolError::Fragmented {
            requested: nr,
            largest_run: 0,
        })
    }

    fn free_contig(&self, client: ClientId, first_page: u64) -> Result<u64, PoolError> {
        let mut g = self.inner.lock().unwrap();
        let cl = g
            .clients
            .get_mut(&client.0)
            .ok_or(PoolError::UnknownClient(client))?;
        let n = cl
            .grants
            .remove(&first_page)
            .ok_or(PoolError::UnknownGrant(first_page))?;
        if cl.retired && cl.grants.is_empty() {
            g.clients.remove(&client.0);
        }
        for p in first_page..first_page + n {
            g.granted[p as usize] = false;
        }
        Ok(n)
    }

    fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    fn cleancache_new_pool(&self, client: ClientId) -> Result<u32, PoolError> {
        self.with_client(client, |c| {
            let id = c.next_pool;
            c.next_pool += 1;
            c.pools.insert(id, HashMap::new());
            Ok(id)
        })
    }

    fn cleancache_put(
        &self,
        client: ClientId,
        k: CleancacheKey,
        page: &[u8],
    ) -> Result<bool, PoolError> {
        if page.len() != PAGE_SIZE {
            return Err(PoolError::Invalid("page size"));
        }
        self.with_client(client, |c| {
            let p = c
                .pools
                .get_mut(&k.pool)
                .ok_or(PoolError::UnknownPool(k.pool))?;
            p.insert((k.object, k.index), page.to_vec());
            Ok(true)
        })
    }

    fn cleancache_get(
        &self,
        client: ClientId,
        k: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        self.with_client(client, |c| {
            let p = c
                .pools
                .get_mut(&k.pool)
                .ok_or(PoolError::UnknownPool(k.pool))?;
            match p.remove(&(k.object, k.index)) {
                Some(v) => {
                    out.copy_from_slice(&v);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn cleancache_flush_page(&self, client: ClientId, k: CleancacheKey) -> Result<bool, PoolError> {
        self.with_client(client, |c| {
            let p = c
                .pools
                .get_mut(&k.pool)
                .ok_or(PoolError::UnknownPool(k.pool))?;
            Ok(p.remove(&(k.object, k.index)).is_some())
        })
    }

    fn cleancache_flush_object(
        &self,
        client: ClientId,
        pool: u32,
        object: [u64; 3],
    ) -> Result<u64, PoolError> {
        self.with_client(client, |c| {
            let p = c.pools.get_mut(&pool).ok_or(PoolError::UnknownPool(pool))?;
            let before = p.len();
            p.retain(|(o, _), _| *o != object);
            Ok((before - p.len()) as u64)
        })
    }

    fn cleancache_destroy_pool(&self, client: ClientId, pool: u32) -> Result<(), PoolError> {
        self.with_client(client, |c| {
            c.pools
                .remove(&pool)
                .map(|_| ())
                .ok_or(PoolError::UnknownPool(pool))
        })
    }

    fn frontswap_store(
        &self,
        client: ClientId,
        k: FrontswapKey,
        page: &[u8],
    ) -> Result<(), PoolError> {
        let reject = self.inner.lock().unwrap().reject_stores;
        self.with_client(client, |c| {
            if reject {
                c.swap.remove(&(k.area, k.offset));
                return Err(PoolError::Rejected(RejectReason::PoolFull));
            }
            c.swap.insert((k.area, k.offset), page.to_vec());
            Ok(())
        })
    }

    fn frontswap_load(
        &self,
        client: ClientId,
        k: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        self.with_client(client, |c| match c.swap.get(&(k.area, k.offset)) {
            Some(v) => {
                out.copy_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        })
    }

    fn frontswap_invalidate_page(
        &self,
        client: ClientId,
        k: FrontswapKey,
    ) -> Result<bool, PoolError> {
        self.with_client(client, |c| Ok(c.swap.remove(&(k.area, k.offset)).is_some()))
    }

    fn frontswap_invalidate_area(&self, client: ClientId, area: u32) -> Result<u64, PoolError> {
        self.with_client(client, |c| {
            let before = c.swap.len();
            c.swap.retain(|(a, _), _| *a != area);
            Ok((before - c.swap.len()) as u64)
        })
    }
}

/// One set of request buffers in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Header buffer (48 bytes).
    pub hdr: u64,
    /// Data page.
    pub page: u64,
    /// Response buffer (24 bytes).
    pub resp: u64,
}

/// A virtio-gcma device behind a virtio-mmio transport, driven by the harness driver.
pub struct Rig {
    /// The harness driver (owns the transport).
    pub driver: Driver<MmioTransport<GcmaDevice>>,
    /// The grant mapper the device uses.
    pub mapper: Arc<MemfdGrantMapper>,
    /// Interrupts raised.
    pub irq: Arc<CountingIrq>,
    /// Request buffers, one per in-flight request.
    pub slots: Vec<Slot>,
}

/// What came back for one request.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The decoded response (zeroes if the device wrote none).
    pub resp: Response,
    /// The data page (GET/LOAD) or stats bytes, as found after completion.
    pub data: Vec<u8>,
    /// Used length the device reported.
    pub used_len: u32,
}

impl Rig {
    /// A rig with a window of `window_pages`, negotiating `features`, queues of `queue_size`.
    pub fn new(
        backend: Arc<dyn GcmaBackend>,
        window_pages: u64,
        features: u64,
        queue_size: u16,
    ) -> Rig {
        let mem = Arc::new(memfd_guest_memory(&[(0, GUEST_MEM)]).expect("guest memory"));
        let mapper = Arc::new(MemfdGrantMapper::new(
            backend,
            WINDOW_GPA,
            window_pages * PAGE_SIZE as u64,
        ));
        let dev = GcmaDevice::new(mapper.window(), "test-vm");
        let irq = Arc::new(CountingIrq::default());
        let transport = MmioTransport::new(dev, mem.clone(), irq.clone());
        let mut driver = Driver::new(transport, mem, 0x1000..GUEST_MEM as u64);
        driver.init(features, queue_size).expect("init");
        let mut slots = Vec::new();
        for _ in 0..queue_size {
            let hdr = driver.alloc(64, 64).expect("alloc");
            let resp = driver.alloc(64, 64).expect("alloc");
            let page = driver
                .alloc(PAGE_SIZE as u64, PAGE_SIZE as u64)
                .expect("alloc");
            slots.push(Slot { hdr, page, resp });
        }
        Rig {
            driver,
            mapper,
            irq,
            slots,
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> GcmaCounters {
        self.driver.bus().device().metrics().snapshot()
    }

    /// Puts one well-formed request on its queue using `slot`'s buffers (no kick).
    pub fn submit(
        &mut self,
        slot: usize,
        req: &Request,
        data: Option<&[u8]>,
        stats_len: u32,
    ) -> u16 {
        let s = self.slots[slot];
        self.driver.write_mem(s.hdr, &req.encode()).unwrap();
        self.driver.write_mem(s.resp, &[0u8; RESPONSE_LEN]).unwrap();
        if let Some(d) = data {
            self.driver.write_mem(s.page, d).unwrap();
        }
        let hdr = (s.hdr, REQUEST_HEADER_LEN as u32, false);
        let resp = (s.resp, RESPONSE_LEN as u32, true);
        let page = PAGE_SIZE as u32;
        let bufs: Vec<(u64, u32, bool)> = match req.data() {
            DataDir::None => vec![hdr, resp],
            DataDir::ToDevice => vec![hdr, (s.page, page, false), resp],
            DataDir::FromDevice => vec![hdr, (s.page, page, true), resp],
            DataDir::Stats => vec![hdr, (s.page, stats_len, true), resp],
        };
        self.driver
            .add_chain(req.queue(), &bufs)
            .expect("add_chain")
    }

    fn collect(&mut self, queue: u16, heads: &[(u16, usize)]) -> Vec<Answer> {
        let used = self.driver.drain_used(queue).expect("used ring");
        heads
            .iter()
            .map(|&(head, slot)| {
                let u = used
                    .iter()
                    .find(|u| u.head == head)
                    .unwrap_or_else(|| panic!("head {head} not returned"));
                let s = self.slots[slot];
                let r = self.driver.read_mem(s.resp, RESPONSE_LEN).unwrap();
                Answer {
                    resp: Response::decode(r.as_slice().try_into().unwrap()),
                    data: self.driver.read_mem(s.page, PAGE_SIZE).unwrap(),
                    used_len: u.len,
                }
            })
            .collect()
    }

    /// Sends one request, kicks, returns the answer.
    pub fn call(&mut self, req: Request, data: Option<&[u8]>) -> Answer {
        let head = self.submit(0, &req, data, PAGE_SIZE as u32);
        self.driver.kick(req.queue());
        self.collect(req.queue(), &[(head, 0)]).remove(0)
    }

    /// Sends requests (all on one queue) in one batch with a single kick.
    pub fn batch(&mut self, reqs: &[(Request, Option<Vec<u8>>)]) -> Vec<Answer> {
        let queue = reqs[0].0.queue();
        let mut heads = Vec::new();
        for (i, (r, d)) in reqs.iter().enumerate() {
            assert_eq!(r.queue(), queue);
            heads.push((self.submit(i, r, d.as_deref(), PAGE_SIZE as u32), i));
        }
        self.driver.kick(queue);
        self.collect(queue, &heads)
    }
}

/// A page whose bytes depend on `seed`.
pub fn pattern(seed: u64) -> Vec<u8> {
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
