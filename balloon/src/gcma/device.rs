//! The virtio-gcma device model: parses request chains, calls the pool, writes responses.
//!
//! One device is one pool client (one VM). Every notification drains the queue completely before
//! returning used buffers and raising one interrupt: MMIO exits are expensive under nested
//! virtualization, so drivers batch and the device keeps up.

use std::collections::BTreeMap;
use std::sync::Arc;

use gcma_host::api::{
    CleancacheKey, ClientId, ContigGrant, FrontswapKey, GcmaBackend, PoolError, RejectReason,
};
use log::{debug, error, info, warn};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::mapper::{GrantMapper, MapError};
use super::metrics::{GcmaMetrics, Tmem};
use super::proto::{
    self, no_space, reject, status, Config, DataDir, PageKey, Request, Response, SwapKey,
    NUM_QUEUES, PAGE_SIZE, QUEUE_MAX_SIZE, REQUEST_HEADER_LEN, RESPONSE_LEN, STAT_ENTRY_LEN,
    VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG, VIRTIO_GCMA_F_FRONTSWAP, VIRTIO_ID_GCMA,
};
use crate::error::DeviceError;
use crate::transport::chain::{
    add_used, notify_used, pop_chain_into, Desc, PoppedHead, DESC_SIZE, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use crate::transport::{
    Activation, GuestMemoryMmap, InterruptHandle, Queue, QueueT, ShmRegion, VirtioDevice,
};

/// Every feature the device offers.
pub const GCMA_DEVICE_FEATURES: u64 =
    VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP;

struct Running {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: InterruptHandle,
}

/// The virtio-gcma device (see `balloon/PROTOCOL.md`).
pub struct GcmaDevice {
    backend: Arc<dyn GcmaBackend>,
    mapper: Arc<dyn GrantMapper>,
    name: String,
    client: ClientId,
    offered: u64,
    features: u64,
    /// Grants held by the guest, by the guest-physical address they are mapped at.
    grants: BTreeMap<u64, ContigGrant>,
    granted_pages: u64,
    running: Option<Running>,
    metrics: Arc<GcmaMetrics>,
    /// Bounce buffer for data pages split over descriptors (taken while a request runs).
    page: Option<Box<[u8; PAGE_SIZE]>>,
    /// The buffers of the chain being handled, reused from chain to chain (taken while a queue
    /// is drained).
    descs: Vec<Desc>,
}

impl std::fmt::Debug for GcmaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmaDevice")
            .field("name", &self.name)
            .field("client", &self.client)
            .field("features", &self.features)
            .field("grants", &self.grants.len())
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl GcmaDevice {
    /// A device for one VM named `name`: registers itself as a client of `backend` and places
    /// grants through `mapper`.
    pub fn new(
        backend: Arc<dyn GcmaBackend>,
        mapper: Arc<dyn GrantMapper>,
        name: impl Into<String>,
    ) -> Self {
        let name = name.into();
        let client = backend.register_client(&name);
        info!("virtio-gcma {name}: pool client {client:?}");
        GcmaDevice {
            backend,
            mapper,
            name,
            client,
            offered: GCMA_DEVICE_FEATURES,
            features: 0,
            grants: BTreeMap::new(),
            granted_pages: 0,
            running: None,
            metrics: Arc::new(GcmaMetrics::default()),
            page: Some(Box::new([0u8; PAGE_SIZE])),
            descs: Vec::with_capacity(usize::from(QUEUE_MAX_SIZE)),
        }
    }

    /// Offer only `features` (a subset of [`GCMA_DEVICE_FEATURES`]), e.g. a VM that may not use
    /// frontswap.
    pub fn with_features(mut self, features: u64) -> Self {
        self.offered = features & GCMA_DEVICE_FEATURES;
        self
    }

    /// The device's counters (shared with exporters).
    pub fn metrics(&self) -> Arc<GcmaMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The pool client this device currently is (changes on every reset).
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// Grants the guest holds: `(gpa, grant)` in address order.
    pub fn grants(&self) -> Vec<(u64, ContigGrant)> {
        self.grants.iter().map(|(&g, &c)| (g, c)).collect()
    }

    fn config(&self) -> Config {
        Config {
            pool_nr_pages: self.backend.nr_pages(),
            window_nr_pages: self.mapper.window().len_bytes / PAGE_SIZE as u64,
            page_size: PAGE_SIZE as u32,
        }
    }

    /// Unmaps and frees every grant, drops the client's cleancache and frontswap pages, and
    /// registers a fresh client.
    fn release_all(&mut self, reregister: bool) {
        let grants = std::mem::take(&mut self.grants);
        for (gpa, grant) in &grants {
            if let Err(e) = self.mapper.unmap(*gpa, grant) {
                error!(
                    "virtio-gcma {}: unmapping grant at {gpa:#x} failed: {e}",
                    self.name
                );
            }
        }
        self.granted_pages = 0;
        self.metrics.set_grants(0, 0);
        if let Err(e) = self.backend.unregister_client(self.client) {
            warn!("virtio-gcma {}: unregistering client: {e}", self.name);
        }
        if reregister {
            self.client = self.backend.register_client(&self.name);
            debug!(
                "virtio-gcma {}: new pool client {:?}",
                self.name, self.client
            );
        }
    }

    fn drain_queue(&mut self, run: &mut Running, index: u16) -> Result<(), DeviceError> {
        let mem = Arc::clone(&run.mem);
        let Some(queue) = run.queues.get_mut(usize::from(index)) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        if !queue.ready() {
            debug!("virtio-gcma {}: notify of unready queue {index}", self.name);
            return Ok(());
        }
        self.metrics.notified(index);
        let mut returned = 0u32;
        let mut descs = std::mem::take(&mut self.descs);
        let outcome = loop {
            let popped = match pop_chain_into(queue, &mem, &mut descs) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let (head, used_len) = match popped {
                PoppedHead::Chain(head) => (head, self.handle_chain(&mem, index, &descs)),
                PoppedHead::Rejected { head, error } => {
                    debug!("virtio-gcma {}: queue {index}: {error}", self.name);
                    walk_raw(queue, &mem, head, &mut descs);
                    (head, self.answer_bad(&mem, index, &descs))
                }
            };
            if let Err(e) = add_used(queue, &mem, head, used_len) {
                break Err(e);
            }
            returned += 1;
        };
        self.descs = descs;
        if returned > 0 {
            notify_used(queue, &mem, &run.interrupt).map_err(|source| DeviceError::BrokenRing {
                queue: index,
                source,
            })?;
        }
        outcome.map_err(|source| {
            self.metrics.broken_ring();
            DeviceError::BrokenRing {
                queue: index,
                source,
            }
        })
    }

    /// Answers one structurally valid chain; returns the used length.
    fn handle_chain(&mut self, mem: &GuestMemoryMmap, queue: u16, descs: &[Desc]) -> u32 {
        let w_len: u64 = descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum();
        if w_len < RESPONSE_LEN as u64 {
            self.metrics.unanswerable(queue);
            debug!(
                "virtio-gcma {}: queue {queue}: chain without room for a response",
                self.name
            );
            return 0;
        }
        let (resp, data_len) = self.execute(mem, queue, descs, w_len);
        self.respond(mem, queue, descs, w_len, resp, data_len)
    }

    /// Answers a chain the transport layer found unusable with `BAD_REQUEST`, if its response
    /// bytes are writable guest memory.
    fn answer_bad(&mut self, mem: &GuestMemoryMmap, queue: u16, descs: &[Desc]) -> u32 {
        let w_len: u64 = descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum();
        if w_len < RESPONSE_LEN as u64 {
            self.metrics.unanswerable(queue);
            return 0;
        }
        let resp = Response::status(status::BAD_REQUEST);
        self.respond(mem, queue, descs, w_len, resp, 0)
    }

    fn respond(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: u16,
        descs: &[Desc],
        w_len: u64,
        resp: Response,
        data_len: u32,
    ) -> u32 {
        let at = w_len - RESPONSE_LEN as u64;
        if !write_stream(mem, descs, at, &resp.encode()) {
            self.metrics.unanswerable(queue);
            return 0;
        }
        self.metrics.answered(queue, resp.status);
        data_len + RESPONSE_LEN as u32
    }

    /// Validates and runs one request; returns the response and how many data bytes were
    /// written before it.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: u16,
        descs: &[Desc],
        w_len: u64,
    ) -> (Response, u32) {
        let bad = (Response::status(status::BAD_REQUEST), 0);
        if !is_ordered(descs) {
            return bad;
        }
        let r_len: u64 = descs
            .iter()
            .filter(|d| !d.writable)
            .map(|d| u64::from(d.len))
            .sum();
        let mut header = [0u8; REQUEST_HEADER_LEN];
        if r_len < REQUEST_HEADER_LEN as u64 || !read_stream(mem, descs, 0, &mut header) {
            return bad;
        }
        let req = match Request::parse(&header) {
            Ok(r) => r,
            Err(e) => {
                debug!(
                    "virtio-gcma {}: queue {queue}: bad header: {e:?}",
                    self.name
                );
                return bad;
            }
        };
        let data_len = (w_len - RESPONSE_LEN as u64) as usize;
        if req.queue() != queue
            || r_len != req.readable_len() as u64
            || !req.writable_len_ok(w_len as usize)
        {
            debug!(
                "virtio-gcma {}: queue {queue}: {req:?} with {r_len} readable, {w_len} writable bytes",
                self.name
            );
            return bad;
        }
        if req.feature() & !self.features != 0 {
            return (Response::status(status::UNSUPPORTED), 0);
        }
        let mut bounce = self
            .page
            .take()
            .unwrap_or_else(|| Box::new([0u8; PAGE_SIZE]));
        let r = self.execute_valid(mem, descs, req, data_len, &mut bounce);
        self.page = Some(bounce);
        r.unwrap_or(bad)
    }

    /// Runs a request whose chain has the right shape; `None` means guest memory could not be
    /// read or written after all (answered `BAD_REQUEST`).
    fn execute_valid(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
        req: Request,
        data_len: usize,
        bounce: &mut [u8; PAGE_SIZE],
    ) -> Option<(Response, u32)> {
        let direct = guest_page(mem, descs, req.data());
        match req.data() {
            DataDir::ToDevice => {
                let page: &[u8] = match direct {
                    // SAFETY: `guest_page` checked that `p..p+PAGE_SIZE` is host memory backing
                    // one guest region, mapped while `mem` lives (the caller holds it). The guest
                    // may write it concurrently (it is memory shared with the guest, like a
                    // MAP_SHARED file); the bytes are only copied and any value is a valid `u8`.
                    Some(p) => unsafe { std::slice::from_raw_parts(p, PAGE_SIZE) },
                    None => {
                        if !read_stream(mem, descs, REQUEST_HEADER_LEN as u64, &mut bounce[..]) {
                            return None;
                        }
                        &bounce[..]
                    }
                };
                Some((self.run(req, data_len, PageArg::In(page)), 0))
            }
            DataDir::FromDevice => {
                let resp = match direct {
                    Some(p) => {
                        // SAFETY: as above; the device-writable guest page is the destination of
                        // a plain copy, and no other host code holds a reference to it.
                        let out = unsafe { std::slice::from_raw_parts_mut(p, PAGE_SIZE) };
                        self.run(req, data_len, PageArg::Out(out))
                    }
                    None => {
                        let resp = self.run(req, data_len, PageArg::Out(&mut bounce[..]));
                        if resp.status == status::OK && !write_stream(mem, descs, 0, &bounce[..]) {
                            return None;
                        }
                        resp
                    }
                };
                let written = if resp.status == status::OK {
                    PAGE_SIZE as u32
                } else {
                    0
                };
                Some((resp, written))
            }
            DataDir::Stats => {
                let resp = self.run(req, data_len, PageArg::None);
                let entries = self
                    .metrics
                    .stat_entries(self.backend.nr_pages(), self.config().window_nr_pages);
                let n = (resp.value0 as usize).min(entries.len());
                let mut buf = Vec::with_capacity(n * STAT_ENTRY_LEN);
                for e in &entries[..n] {
                    buf.extend_from_slice(&e.encode());
                }
                if !write_stream(mem, descs, 0, &buf) {
                    return None;
                }
                Some((resp, buf.len() as u32))
            }
            DataDir::None => Some((self.run(req, data_len, PageArg::None), 0)),
        }
    }

    /// Performs a validated request against the pool.
    fn run(&mut self, req: Request, data_len: usize, page: PageArg<'_>) -> Response {
        let b: &dyn GcmaBackend = &*self.backend;
        let c = self.client;
        let ok = Response::status(status::OK);
        let ok_or_miss = |hit: bool| Response::status(if hit { status::OK } else { status::MISS });
        let mut page = page;
        match req {
            Request::AllocContig {
                nr_pages,
                align_pages,
            } => self.alloc_contig(nr_pages, align_pages),
            Request::FreeContig { gpa } => self.free_contig(gpa),
            Request::Stats => Response {
                status: status::OK,
                value0: (data_len / STAT_ENTRY_LEN).min(proto::stat::COUNT) as u64,
                value1: proto::stat::COUNT as u64,
            },
            Request::NewPool => match b.cleancache_new_pool(c) {
                Ok(id) => Response {
                    value0: u64::from(id),
                    ..ok
                },
                Err(e) => self.pool_error(e),
            },
            Request::Put(k) => match b.cleancache_put(c, cc_key(k), page.input()) {
                Ok(true) => {
                    self.metrics.tmem(Tmem::Put);
                    ok
                }
                Ok(false) => Response::status(status::NOT_STORED),
                Err(e) => self.pool_error(e),
            },
            Request::Get(k) => match b.cleancache_get(c, cc_key(k), page.output()) {
                Ok(hit) => {
                    self.metrics
                        .tmem(if hit { Tmem::SuccGet } else { Tmem::FailedGet });
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::FlushPage(k) => match b.cleancache_flush_page(c, cc_key(k)) {
                Ok(hit) => {
                    self.metrics.tmem(Tmem::Flush);
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::FlushObject { pool, object } => {
                match b.cleancache_flush_object(c, pool, object) {
                    Ok(n) => {
                        self.metrics.tmem(Tmem::Flush);
                        Response { value0: n, ..ok }
                    }
                    Err(e) => self.pool_error(e),
                }
            }
            Request::DestroyPool { pool } => match b.cleancache_destroy_pool(c, pool) {
                Ok(()) => {
                    self.metrics.tmem(Tmem::Flush);
                    ok
                }
                Err(e) => self.pool_error(e),
            },
            Request::Store(k) => match b.frontswap_store(c, fs_key(k), page.input()) {
                Ok(()) => {
                    self.metrics.tmem(Tmem::SuccStore);
                    ok
                }
                Err(e) => {
                    if matches!(e, PoolError::Rejected(_)) {
                        self.metrics.tmem(Tmem::FailedStore);
                    }
                    self.pool_error(e)
                }
            },
            Request::Load(k) => match b.frontswap_load(c, fs_key(k), page.output()) {
                Ok(hit) => {
                    if hit {
                        self.metrics.tmem(Tmem::Load);
                    }
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::InvalidatePage(k) => match b.frontswap_invalidate_page(c, fs_key(k)) {
                Ok(hit) => {
                    self.metrics.tmem(Tmem::Invalidate);
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::InvalidateArea { area } => match b.frontswap_invalidate_area(c, area) {
                Ok(n) => {
                    self.metrics.tmem(Tmem::Invalidate);
                    Response { value0: n, ..ok }
                }
                Err(e) => self.pool_error(e),
            },
        }
    }

    fn alloc_contig(&mut self, nr_pages: u64, align_pages: u64) -> Response {
        let window_pages = self.mapper.window().len_bytes / PAGE_SIZE as u64;
        if nr_pages > window_pages {
            return Response {
                status: status::NO_SPACE,
                value0: no_space::WINDOW_FULL,
                value1: window_pages,
            };
        }
        let grant = match self
            .backend
            .alloc_contig(self.client, nr_pages, align_pages)
        {
            Ok(g) => g,
            Err(e) => return self.pool_error(e),
        };
        let gpa = match self.mapper.map(self.backend.memfd(), &grant, align_pages) {
            Ok(gpa) => gpa,
            Err(e) => {
                if let Err(fe) = self.backend.free_contig(self.client, grant.first_page) {
                    error!(
                        "virtio-gcma {}: returning an unmapped grant failed: {fe}",
                        self.name
                    );
                }
                return match e {
                    MapError::WindowFull { .. } => Response {
                        status: status::NO_SPACE,
                        value0: no_space::WINDOW_FULL,
                        value1: 0,
                    },
                    e => {
                        warn!("virtio-gcma {}: mapping a grant failed: {e}", self.name);
                        Response::status(status::MAP_FAILED)
                    }
                };
            }
        };
        self.grants.insert(gpa, grant);
        self.granted_pages += grant.nr_pages;
        self.metrics
            .set_grants(self.grants.len() as u64, self.granted_pages);
        Response {
            status: status::OK,
            value0: gpa,
            value1: grant.nr_pages,
        }
    }

    fn free_contig(&mut self, gpa: u64) -> Response {
        let Some(grant) = self.grants.get(&gpa).copied() else {
            return Response::status(status::UNKNOWN_GRANT);
        };
        // Unmap first: the guest must lose access before the pages can go to anyone else. If
        // unmapping fails the grant stays held (leaked until reset) rather than shared.
        if let Err(e) = self.mapper.unmap(gpa, &grant) {
            error!(
                "virtio-gcma {}: unmapping grant at {gpa:#x} failed, keeping it: {e}",
                self.name
            );
            return Response::status(status::IO_ERROR);
        }
        self.grants.remove(&gpa);
        self.granted_pages -= grant.nr_pages;
        self.metrics
            .set_grants(self.grants.len() as u64, self.granted_pages);
        match self.backend.free_contig(self.client, grant.first_page) {
            Ok(n) => Response {
                status: status::OK,
                value0: n,
                value1: 0,
            },
            Err(e) => self.pool_error(e),
        }
    }

    fn pool_error(&self, e: PoolError) -> Response {
        match e {
            PoolError::UnknownPool(_) => Response::status(status::UNKNOWN_POOL),
            PoolError::UnknownGrant(_) => Response::status(status::UNKNOWN_GRANT),
            PoolError::Invalid(_) => Response::status(status::BAD_REQUEST),
            PoolError::Exhausted { available, .. } => Response {
                status: status::NO_SPACE,
                value0: no_space::EXHAUSTED,
                value1: available,
            },
            PoolError::Fragmented { largest_run, .. } => Response {
                status: status::NO_SPACE,
                value0: no_space::FRAGMENTED,
                value1: largest_run,
            },
            PoolError::Rejected(r) => Response {
                status: status::REJECTED,
                value0: match r {
                    RejectReason::PoolFull => reject::POOL_FULL,
                    RejectReason::PutBackLimit => reject::PUT_BACK_LIMIT,
                    RejectReason::BackingIo => reject::BACKING_IO,
                    RejectReason::ClientLimit => reject::CLIENT_LIMIT,
                },
                value1: 0,
            },
            PoolError::UnknownClient(_) | PoolError::Io(_) => {
                warn!("virtio-gcma {}: pool error: {e}", self.name);
                Response::status(status::IO_ERROR)
            }
        }
    }
}

impl Drop for GcmaDevice {
    fn drop(&mut self) {
        self.release_all(false);
    }
}

impl VirtioDevice for GcmaDevice {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_GCMA
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn features_negotiated(&mut self, features: u64) -> bool {
        self.features = features;
        true
    }

    fn queue_max_sizes(&self, _features: u64) -> Vec<u16> {
        vec![QUEUE_MAX_SIZE; NUM_QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config().encode();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-gcma {}: ignored write of {} config bytes at {offset:#x}",
            self.name,
            data.len()
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        if activation.queues.len() < NUM_QUEUES {
            return Err(DeviceError::MissingQueues {
                needed: NUM_QUEUES,
                got: activation.queues.len(),
            });
        }
        self.features = activation.features;
        self.running = Some(Running {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        let Some(mut run) = self.running.take() else {
            return Err(DeviceError::NotActivated);
        };
        let r = self.drain_queue(&mut run, index);
        self.running = Some(run);
        r
    }

    fn reset(&mut self) {
        self.running = None;
        self.features = 0;
        self.metrics.reset();
        self.release_all(true);
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        let w = self.mapper.window();
        vec![ShmRegion {
            id: proto::SHM_GRANT_WINDOW,
            gpa: w.gpa,
            len: w.len_bytes,
        }]
    }
}

/// The data page of a request as the pool sees it.
enum PageArg<'a> {
    None,
    In(&'a [u8]),
    Out(&'a mut [u8]),
}

impl PageArg<'_> {
    /// The page to read; empty (which the pool refuses as invalid) if there is none.
    fn input(&self) -> &[u8] {
        match self {
            PageArg::In(p) => p,
            _ => &[],
        }
    }

    /// The page to fill; empty (refused as invalid) if there is none.
    fn output(&mut self) -> &mut [u8] {
        match self {
            PageArg::Out(p) => p,
            _ => &mut [],
        }
    }
}

/// The host address of a request's data page when the chain carries it as one descriptor of
/// exactly one page right after the header (`ToDevice`) or right before the response
/// (`FromDevice`) inside one guest memory region: then the pool copies straight from or to guest
/// memory. Anything else goes through the bounce buffer. (Guest memory here has no dirty bitmap;
/// with one, direct writes would have to mark it.)
fn guest_page(mem: &GuestMemoryMmap, descs: &[Desc], dir: DataDir) -> Option<*mut u8> {
    let d = match dir {
        DataDir::ToDevice => {
            let mut r = descs.iter().filter(|d| !d.writable);
            let header = r.next()?;
            let page = r.next()?;
            if header.len as usize != REQUEST_HEADER_LEN || r.next().is_some() {
                return None;
            }
            page
        }
        DataDir::FromDevice => {
            let mut w = descs.iter().filter(|d| d.writable);
            let page = w.next()?;
            let resp = w.next()?;
            if resp.len as usize != RESPONSE_LEN || w.next().is_some() {
                return None;
            }
            page
        }
        _ => return None,
    };
    if d.len as usize != PAGE_SIZE {
        return None;
    }
    let slice = mem.get_slice(d.addr, PAGE_SIZE).ok()?;
    Some(slice.ptr_guard_mut().as_ptr())
}

fn cc_key(k: PageKey) -> CleancacheKey {
    CleancacheKey {
        pool: k.pool,
        object: k.object,
        index: k.index,
    }
}

fn fs_key(k: SwapKey) -> FrontswapKey {
    FrontswapKey {
        area: k.area,
        offset: k.offset,
    }
}

/// Whether all readable buffers precede all writable ones.
fn is_ordered(descs: &[Desc]) -> bool {
    let first_w = descs.iter().position(|d| d.writable).unwrap_or(descs.len());
    descs[first_w..].iter().all(|d| d.writable)
}

/// Walks the `len` bytes that start `offset` bytes into the readable (or writable) stream of
/// `descs`, handing each piece that lies in one descriptor to `copy` as (guest address, range of
/// the caller's buffer). False if the stream is too short, an address overflows, or `copy` fails.
fn for_each_piece(
    descs: &[Desc],
    writable: bool,
    offset: u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut skip = offset;
    let mut done = 0usize;
    for d in descs.iter().filter(|d| d.writable == writable) {
        if done == len {
            break;
        }
        let d_len = u64::from(d.len);
        if skip >= d_len {
            skip -= d_len;
            continue;
        }
        let n = ((d_len - skip) as usize).min(len - done);
        let Some(addr) = d.addr.checked_add(skip) else {
            return false;
        };
        if !copy(addr, done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == len
}

/// Reads `out.len()` bytes starting `offset` bytes into the readable stream.
fn read_stream(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, out: &mut [u8]) -> bool {
    for_each_piece(descs, false, offset, out.len(), |addr, range| {
        let dst = &mut out[range];
        // One translation for a piece inside one region; the general path (pieces spanning
        // regions, or outside memory) decides the rest.
        let copied = match mem.get_slice(addr, dst.len()) {
            Ok(s) => s.copy_to(dst) == dst.len(),
            Err(_) => false,
        };
        copied || mem.read_slice(dst, addr).is_ok()
    })
}

/// Writes `data` starting `offset` bytes into the writable stream.
fn write_stream(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, data: &[u8]) -> bool {
    for_each_piece(descs, true, offset, data.len(), |addr, range| {
        let src = &data[range];
        // As in `read_stream`: one translation when the piece lies inside one region.
        let copied = match mem.get_slice(addr, src.len()) {
            Ok(s) => {
                s.copy_from(src);
                true
            }
            Err(_) => false,
        };
        copied || mem.write_slice(src, addr).is_ok()
    })
}

/// The descriptors of a chain the transport rejected for out-of-memory buffers (its structure
/// was already checked), read again into `descs` so the response buffer can be located.
fn walk_raw(queue: &Queue, mem: &GuestMemoryMmap, head: u16, descs: &mut Vec<Desc>) {
    let size = queue.size();
    let table = GuestAddress(queue.desc_table());
    descs.clear();
    let mut index = head;
    while index < size && descs.len() < usize::from(size) {
        let Some(at) = table.checked_add(u64::from(index) * DESC_SIZE) else {
            break;
        };
        let mut raw = [0u8; DESC_SIZE as usize];
        if mem.read_slice(&mut raw, at).is_err() {
            break;
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[0..8]);
        let mut l = [0u8; 4];
        l.copy_from_slice(&raw[8..12]);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        descs.push(Desc {
            addr: GuestAddress(u64::from_le_bytes(a)),
            len: u32::from_le_bytes(l),
            writable: flags & VIRTQ_DESC_F_WRITE != 0,
        });
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        index = u16::from_le_bytes([raw[14], raw[15]]);
    }
}
