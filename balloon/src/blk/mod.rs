//! virtio-blk device logic (virtio 1.2 §5.2), independent of the transport: what a request chain
//! means, how it is checked, and what goes back to the guest. The storage behind the disk is a
//! [`BlkBackend`]; the transport (vhost-user in `gcma-hostd`, a mock queue in tests) pops chains
//! and hands each one to [`BlkQueue::process_queue`].
//!
//! * `request` (private): the guest's `virtio_blk_outhdr`, request types IN, OUT, FLUSH, GET_ID,
//!   DISCARD and WRITE_ZEROES, data segments, bounds checks and the status byte.
//! * [`config`]: the feature bits offered and the `virtio_blk_config` space.
//! * [`metrics`]: per-disk counters (requests by type and status, bytes, host time).
//! * `testing` (feature `test-utils`): an in-memory disk backend.
//!
//! Every chain is answered in the order it was taken from the available ring, so that a frontend
//! that reconnects without in-flight tracking (QEMU's vhost-user-blk restores the available index
//! from the used index) re-submits exactly the requests that were not answered.
//!
//! Guest memory is only touched through `vm-memory`'s volatile slices, and only inside the
//! buffers of a validated chain. Whatever the guest puts in a chain is answered with a status
//! (`IOERR` for malformed or out-of-range requests, `UNSUPP` for unknown or not negotiated types)
//! and counted; the host log gets a rate-limited line; nothing panics.

pub mod config;
pub mod metrics;
mod request;
#[cfg(feature = "test-utils")]
pub mod testing;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gcma_host::guest_warn;
use gcma_host::log_limit::LogLimiter;

use crate::error::ChainError;
use crate::log_kinds;
use crate::transport::chain::{add_used, pop_chain_into, Desc, PoppedHead};
use crate::transport::{GuestMemoryMmap, Queue};

pub use config::{BlkConfig, BLK_CONFIG_LEN, BLK_DEVICE_FEATURES};
pub use metrics::{BlkCounters, BlkMetrics, ReqStatus, ReqType};

/// Size of a virtio-blk sector in bytes (fixed by the spec, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;

/// Length of the identification string a GET_ID request returns.
pub const BLK_ID_LEN: usize = 20;

/// Why a backend could not do what a request asked. Any of them is answered with
/// `VIRTIO_BLK_S_IOERR`.
#[derive(Debug, thiserror::Error)]
pub enum BlkIoError {
    /// The storage failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend refused (for example a store its pool could not accept).
    #[error("{0}")]
    Refused(String),
}

/// The storage behind a virtio-blk disk. Offsets and lengths are in bytes, multiples of
/// [`SECTOR_SIZE`], and checked against [`BlkBackend::capacity_bytes`] before any call; a backend
/// need not check them again, but must handle pieces smaller than its own page size.
///
/// Called from one thread per queue at once: implementations synchronise themselves.
pub trait BlkBackend: Send + Sync {
    /// Size of the disk in bytes (a multiple of [`SECTOR_SIZE`]).
    fn capacity_bytes(&self) -> u64;
    /// Fills `buf` with the disk's bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlkIoError>;
    /// Writes `buf` at `offset`. Once this returns `Ok`, a read returns this data.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlkIoError>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> Result<(), BlkIoError>;
    /// The guest no longer needs `[offset, offset + len)`; the backend may drop it (reads may
    /// then return anything this disk ever held there, or zeroes).
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlkIoError>;
    /// `[offset, offset + len)` must read as zero afterwards; `unmap` allows freeing it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), BlkIoError>;
    /// The disk's identification string (GET_ID), up to [`BLK_ID_LEN`] bytes.
    fn device_id(&self) -> [u8; BLK_ID_LEN];
}

/// Bytes of guest data moved per backend call: requests are split into pieces of this size so
/// that the bounce buffer stays bounded whatever lengths a guest puts in its descriptors.
pub const BOUNCE_LEN: usize = 128 * 1024;

/// One queue's worker: processes every chain a queue holds against a [`BlkBackend`]. Queues of
/// one disk share the backend and the metrics; each has its own buffers.
pub struct BlkQueue<B: ?Sized> {
    backend: Arc<B>,
    metrics: Arc<BlkMetrics>,
    name: Arc<str>,
    features: u64,
    stop: Option<Arc<AtomicBool>>,
    bounce: Vec<u8>,
    descs: Vec<Desc>,
    /// Limits the log lines the guest can trigger (see [`Self::set_log_limiter`]).
    logs: Arc<LogLimiter>,
}

impl<B: BlkBackend + ?Sized> BlkQueue<B> {
    /// A worker for one queue of the disk `name` (used in log lines).
    pub fn new(backend: Arc<B>, metrics: Arc<BlkMetrics>, name: Arc<str>) -> Self {
        BlkQueue {
            backend,
            metrics,
            name,
            features: 0,
            stop: None,
            bounce: vec![0u8; BOUNCE_LEN],
            descs: Vec::new(),
            logs: Arc::new(LogLimiter::default()),
        }
    }

    /// Routes the log lines the guest can trigger through `limiter` (one per disk, shared by its
    /// queues) instead of the queue's own.
    pub fn set_log_limiter(&mut self, limiter: Arc<LogLimiter>) {
        limiter.declare_all(log_kinds::ALL_BLK);
        self.logs = limiter;
    }

    /// The limiter of the log lines this queue writes.
    pub fn log_limiter(&self) -> &Arc<LogLimiter> {
        &self.logs
    }

    /// Records the features the driver accepted (DISCARD and WRITE_ZEROES are answered
    /// `UNSUPP` unless negotiated).
    pub fn set_features(&mut self, features: u64) {
        self.features = features;
    }

    /// Stop taking chains off the ring once `stop` is set (the chain being answered is finished;
    /// those not taken stay on the ring for whoever serves the queue next). For a daemon's
    /// orderly shutdown.
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }

    /// Answers the chains on `queue`'s available ring, in order, at most `budget` of them (at
    /// least one), so that a guest that keeps posting cannot hold the calling thread. Returns how
    /// many were put on the used ring (the caller signals the guest if that is not zero and the
    /// driver wants it). When that is `budget`, chains may be left: the caller must come back
    /// (the budget exhaustion is counted in [`BlkCounters::budget_exhausted`]).
    ///
    /// `Err` means the ring itself is broken (a loop, an index out of range, a ring outside
    /// memory): the device needs a reset; chains answered before it stay answered.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: u32,
    ) -> Result<u32, ChainError> {
        let budget = budget.max(1);
        let mut done = 0;
        loop {
            if done == budget {
                self.metrics.budget_exhausted();
                return Ok(done);
            }
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Acquire))
            {
                return Ok(done);
            }
            let popped = match pop_chain_into(queue, mem, &mut self.descs) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(done),
                Err(e) => {
                    self.metrics.broken_ring();
                    guest_warn!(
                        self.logs,
                        log_kinds::BLK_BROKEN_RING,
                        "virtio-blk {}: broken ring: {e}",
                        self.name
                    );
                    return Err(e);
                }
            };
            let (head, len) = match popped {
                PoppedHead::Chain(head) => {
                    let t0 = Instant::now();
                    let (ty, status, len) = request::handle(self, mem);
                    self.metrics.record(ty, status, t0.elapsed());
                    (head, len)
                }
                PoppedHead::Rejected { head, error } => {
                    self.metrics.unanswerable();
                    guest_warn!(
                        self.logs,
                        log_kinds::BLK_UNANSWERABLE,
                        "virtio-blk {}: chain {head} returned unused: {error}",
                        self.name
                    );
                    (head, 0)
                }
            };
            add_used(queue, mem, head, len)?;
            done += 1;
        }
    }

    /// The disk's counters.
    pub fn metrics(&self) -> &Arc<BlkMetrics> {
        &self.metrics
    }
}
