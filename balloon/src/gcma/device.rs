//! The virtio-gcma device model: its virtio state machine (features, activation, reset) and the
//! draining of its queues. What a request does is in `requests.rs`.
//!
//! One device is one pool client (one VM). Its grants live in its [`GrantWindow`], which owns the
//! guest-physical → grant table; the device keeps only counters. Every notification serves up to
//! one queue's worth of chains before returning used buffers and raising one interrupt: MMIO exits
//! are expensive under nested virtualization, so drivers batch and the device keeps up; a guest
//! that posts more meanwhile is served on the transport's next turn.

use std::sync::Arc;

use gcma_host::api::ClientId;
use gcma_host::guest_warn;
use gcma_host::log_limit::LogLimiter;
use log::{debug, info};

use super::metrics::GcmaMetrics;
use super::proto::{
    self, Config, NUM_QUEUES, PAGE_SIZE, QUEUE_MAX_SIZE, VIRTIO_GCMA_F_CLEANCACHE,
    VIRTIO_GCMA_F_CONTIG, VIRTIO_GCMA_F_FRONTSWAP, VIRTIO_ID_GCMA,
};
use super::window::GrantWindow;
use crate::error::DeviceError;
use crate::log_kinds;
use crate::transport::chain::Desc;
use crate::transport::drain::{drain_queue, Drained};
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
    pub(super) window: Arc<GrantWindow>,
    pub(super) name: String,
    pub(super) client: ClientId,
    offered: u64,
    pub(super) features: u64,
    running: Option<Running>,
    pub(super) metrics: Arc<GcmaMetrics>,
    /// Bounce page for request data (taken while a request runs).
    pub(super) page: Vec<u8>,
    /// The buffers of the chain being handled, reused from chain to chain (taken while a queue
    /// is drained).
    descs: Vec<Desc>,
    /// Limits the log lines the guest can trigger (the transport's, see `set_log_limiter`).
    pub(super) logs: Arc<LogLimiter>,
}

impl std::fmt::Debug for GcmaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmaDevice")
            .field("name", &self.name)
            .field("client", &self.client)
            .field("features", &self.features)
            .field("window", &self.window)
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl GcmaDevice {
    /// A device for one VM named `name`, granting through `window`: registers itself as a client
    /// of the window's pool.
    pub fn new(window: Arc<GrantWindow>, name: impl Into<String>) -> Self {
        let name = name.into();
        let client = window.pool().register_client(&name);
        info!("virtio-gcma {name}: pool client {client:?}");
        GcmaDevice {
            window,
            name,
            client,
            offered: GCMA_DEVICE_FEATURES,
            features: 0,
            running: None,
            metrics: Arc::new(GcmaMetrics::default()),
            page: vec![0u8; PAGE_SIZE],
            descs: Vec::with_capacity(usize::from(QUEUE_MAX_SIZE)),
            logs: Arc::new(LogLimiter::default()),
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

    /// The device's grant window.
    pub fn window(&self) -> &Arc<GrantWindow> {
        &self.window
    }

    fn config(&self) -> Config {
        Config {
            pool_nr_pages: self.window.pool().nr_pages(),
            window_nr_pages: self.window.range().nr_pages(),
            page_size: PAGE_SIZE as u32,
        }
    }

    /// Unmaps and frees every grant and drops the client's cleancache and frontswap pages. Grants
    /// whose unmap fails stay granted to the retired client (see [`GrantWindow`]).
    fn release_all(&mut self) {
        let released = self.window.release_client(self.client);
        if let Err(e) = self.window.pool().retire_client(self.client) {
            self.metrics.pool_error();
            guest_warn!(
                self.logs,
                log_kinds::GCMA_POOL_ERROR,
                "virtio-gcma {}: retiring pool client: {e}",
                self.name
            );
        }
        self.metrics.set_grants(&self.window.usage());
        if released.stuck > 0 {
            self.metrics.map_failed();
            guest_warn!(
                self.logs,
                log_kinds::GCMA_MAP_FAILED,
                "virtio-gcma {}: {} grants could not be unmapped; kept granted until they are",
                self.name,
                released.stuck
            );
        }
    }

    fn drain(
        &mut self,
        run: &mut Running,
        index: u16,
        budget: u32,
    ) -> Result<Drained, DeviceError> {
        let mem = Arc::clone(&run.mem);
        let Some(queue) = run.queues.get_mut(usize::from(index)) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        self.drain_ring(queue, &mem, &run.interrupt, index, budget)
    }

    /// Serves up to `budget` chains of queue `index` whose ring the caller keeps, over guest
    /// memory `mem`, signalling through `interrupt`: the request handling of
    /// [`VirtioDevice::process_queue`] for a transport that owns the queues itself (a vhost-user
    /// backend keeps them in its vrings and activates nothing). The device must have been told
    /// the negotiated features ([`VirtioDevice::features_negotiated`]); a reset
    /// ([`VirtioDevice::reset`]) still releases everything the guest held. `Err` means the ring
    /// is broken: the transport stops serving it until the driver resets the device.
    pub fn serve_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &InterruptHandle,
        budget: u32,
    ) -> Result<Drained, DeviceError> {
        if usize::from(index) >= NUM_QUEUES {
            return Err(DeviceError::NoSuchQueue(index));
        }
        self.drain_ring(queue, mem, interrupt, index, budget)
    }

    fn drain_ring(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &InterruptHandle,
        index: u16,
        budget: u32,
    ) -> Result<Drained, DeviceError> {
        if !queue.ready() {
            debug!("virtio-gcma {}: notify of unready queue {index}", self.name);
            return Ok(Drained::default());
        }
        self.metrics.notified(index);
        let mut descs = std::mem::take(&mut self.descs);
        let r = drain_queue(queue, mem, interrupt, &mut descs, budget, |chain| {
            self.answer(mem, index, chain)
        });
        self.descs = descs;
        r.map_err(|source| {
            self.metrics.broken_ring();
            DeviceError::BrokenRing {
                queue: index,
                source,
            }
        })
    }
}

impl Drop for GcmaDevice {
    fn drop(&mut self) {
        self.release_all();
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

    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError> {
        let Some(mut run) = self.running.take() else {
            return Err(DeviceError::NotActivated);
        };
        let r = self.drain(&mut run, index, budget);
        self.running = Some(run);
        r
    }

    fn reset(&mut self) {
        self.running = None;
        self.features = 0;
        self.metrics.reset();
        self.release_all();
        self.client = self.window.pool().register_client(&self.name);
        debug!(
            "virtio-gcma {}: new pool client {:?}",
            self.name, self.client
        );
    }

    fn set_log_limiter(&mut self, limiter: Arc<LogLimiter>) {
        self.logs = limiter;
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        let w = self.window.range();
        vec![ShmRegion {
            id: proto::SHM_GRANT_WINDOW,
            gpa: w.gpa,
            len: w.len_bytes,
        }]
    }
}
