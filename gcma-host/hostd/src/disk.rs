//! What the daemon knows about each configured disk: its identity (name, guest, socket), its
//! backend, its pool client, its counters, and the gate that lets a shutdown wait for requests
//! in flight.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use balloon::blk::{BlkBackend, BlkConfig, BlkMetrics, BLK_ID_LEN};
use gcma_host::api::ClientId;

/// What a disk stores in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// Sectors are frontswap pages, with the disk's own backing file.
    Swap,
    /// Reads of a disk image are cached as cleancache pages.
    Cache,
}

impl DiskKind {
    /// The `kind` metric label.
    pub fn name(self) -> &'static str {
        match self {
            DiskKind::Swap => "swap",
            DiskKind::Cache => "cache",
        }
    }
}

/// One configured disk.
pub struct Disk {
    /// Name (metric label `disk`, log lines, GET_ID).
    pub name: String,
    /// The guest it belongs to (metric label `guest`).
    pub guest: String,
    /// Swap or cache.
    pub kind: DiskKind,
    /// The vhost-user socket it is served on.
    pub socket: PathBuf,
    /// Its virtio-blk shape.
    pub config: BlkConfig,
    /// Its storage.
    pub backend: Arc<dyn BlkBackend>,
    /// Its pool client.
    pub client: ClientId,
    /// Its request counters (shared by its queues, over reconnections).
    pub metrics: Arc<BlkMetrics>,
    /// A frontend is connected now.
    pub connected: AtomicBool,
    /// Frontend connections so far.
    pub connections: AtomicU64,
    /// Requests are answered while holding this shared; a shutdown takes it exclusively.
    gate: RwLock<()>,
    /// Set when the daemon stops: queues take no new chains.
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("name", &self.name)
            .field("guest", &self.guest)
            .field("kind", &self.kind)
            .field("socket", &self.socket)
            .field("client", &self.client)
            .finish()
    }
}

impl Disk {
    /// A disk; not yet served.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        guest: String,
        kind: DiskKind,
        socket: PathBuf,
        config: BlkConfig,
        backend: Arc<dyn BlkBackend>,
        client: ClientId,
    ) -> Self {
        Disk {
            name,
            guest,
            kind,
            socket,
            config,
            backend,
            client,
            metrics: Arc::new(BlkMetrics::default()),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            gate: RwLock::new(()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Taken while a queue answers requests; `None` once the disk is stopping.
    pub fn enter(&self) -> Option<RwLockReadGuard<'_, ()>> {
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        (!self.stop.load(Ordering::Acquire)).then_some(g)
    }

    /// Stops taking requests and waits for those in flight to be answered.
    pub fn quiesce(&self) {
        self.stop.store(true, Ordering::Release);
        drop(self.gate.write().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A GET_ID string: `prefix` and the disk's name, cut to 20 bytes.
pub fn device_id(prefix: &str, name: &str) -> [u8; BLK_ID_LEN] {
    let mut id = [0u8; BLK_ID_LEN];
    let s = format!("{prefix}{name}");
    let n = s.len().min(BLK_ID_LEN);
    id[..n].copy_from_slice(&s.as_bytes()[..n]);
    id
}

/// Striped locks over page numbers. A piece of a page is read-modified-written (or a cache page
/// filled from the image) holding its stripe exclusively; whole-page writes hold their stripes
/// shared, so that they run in parallel with each other but never inside a read-modify-write
/// of the same page (which would put back the page's old bytes over theirs).
#[derive(Debug)]
pub struct PageLocks {
    stripes: Box<[RwLock<()>]>,
}

const STRIPES: usize = 64;

impl PageLocks {
    /// 64 stripes.
    pub fn new() -> Self {
        PageLocks {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    fn stripe(page: u64) -> usize {
        (page % STRIPES as u64) as usize
    }

    /// `page`'s stripe, exclusively.
    pub fn lock(&self, page: u64) -> RwLockWriteGuard<'_, ()> {
        self.stripes[Self::stripe(page)]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The stripes of `n` pages from `first`, shared, taken in stripe order (so that no two
    /// holders can wait for each other).
    pub fn lock_shared(&self, first: u64, n: u64) -> Vec<RwLockReadGuard<'_, ()>> {
        let mut ids: Vec<usize> = (0..n.min(STRIPES as u64))
            .map(|i| Self::stripe(first + i))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|i| self.stripes[i].read().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }
}

impl Default for PageLocks {
    fn default() -> Self {
        Self::new()
    }
}
