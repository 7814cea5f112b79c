//! Counters of one virtio-gcma device, owned by the device and read by exporters.

use std::sync::atomic::{AtomicU64, Ordering};

use super::proto::{self, status, NUM_QUEUES};
use super::window::WindowUsage;

/// Per-device counters. All are monotonic except the grant gauges ([`GcmaCounters::grants`],
/// [`GcmaCounters::granted_pages`], [`GcmaCounters::stuck_grants`],
/// [`GcmaCounters::stuck_pages`]), which mirror the device's grant window.
#[derive(Debug, Default)]
pub struct GcmaMetrics {
    by_status: [[AtomicU64; status::COUNT]; NUM_QUEUES],
    unanswerable: [AtomicU64; NUM_QUEUES],
    notifications: [AtomicU64; NUM_QUEUES],
    broken_rings: AtomicU64,
    resets: AtomicU64,
    map_failures: AtomicU64,
    pool_errors: AtomicU64,
    rejected_chains: AtomicU64,
    grants: AtomicU64,
    granted_pages: AtomicU64,
    stuck_grants: AtomicU64,
    stuck_pages: AtomicU64,
    cleancache_puts: AtomicU64,
    cleancache_succ_gets: AtomicU64,
    cleancache_failed_gets: AtomicU64,
    cleancache_flushes: AtomicU64,
    frontswap_succ_stores: AtomicU64,
    frontswap_failed_stores: AtomicU64,
    frontswap_loads: AtomicU64,
    frontswap_invalidates: AtomicU64,
}

/// A copy of [`GcmaMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcmaCounters {
    /// Requests answered, per queue and per status code (`by_status[queue][status]`).
    pub by_status: [[u64; status::COUNT]; NUM_QUEUES],
    /// Chains returned without a response (fewer than 24 writable bytes, or the response buffer
    /// outside guest memory), per queue.
    pub unanswerable: [u64; NUM_QUEUES],
    /// Notifications processed, per queue.
    pub notifications: [u64; NUM_QUEUES],
    /// Broken rings (the device asked for a reset).
    pub broken_rings: u64,
    /// Device resets.
    pub resets: u64,
    /// Grants that could not be mapped into, or unmapped from, the guest.
    pub map_failures: u64,
    /// Requests the pool failed with a host error.
    pub pool_errors: u64,
    /// Chains with a buffer outside guest memory (answered `BAD_REQUEST` where possible).
    pub rejected_chains: u64,
    /// Grants held now.
    pub grants: u64,
    /// Pages granted now.
    pub granted_pages: u64,
    /// Grants whose unmap failed: kept granted (never reused by anyone) until an unmap works.
    pub stuck_grants: u64,
    /// Pages of stuck grants.
    pub stuck_pages: u64,
    /// Cleancache puts kept.
    pub cleancache_puts: u64,
    /// Cleancache gets that hit.
    pub cleancache_succ_gets: u64,
    /// Cleancache gets that missed.
    pub cleancache_failed_gets: u64,
    /// Cleancache flushes (page, object, pool).
    pub cleancache_flushes: u64,
    /// Frontswap stores accepted.
    pub frontswap_succ_stores: u64,
    /// Frontswap stores rejected.
    pub frontswap_failed_stores: u64,
    /// Frontswap loads that hit.
    pub frontswap_loads: u64,
    /// Frontswap invalidations (page, area).
    pub frontswap_invalidates: u64,
}

impl GcmaCounters {
    /// Requests answered on `queue` (all statuses).
    pub fn requests(&self, queue: u16) -> u64 {
        self.by_status
            .get(usize::from(queue))
            .map_or(0, |row| row.iter().sum())
    }

    /// Requests answered with `status` on any queue.
    pub fn with_status(&self, status: u32) -> u64 {
        let s = status as usize;
        self.by_status
            .iter()
            .map(|row| row.get(s).copied().unwrap_or(0))
            .sum()
    }
}

/// Which tmem counter an operation bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tmem {
    Put,
    SuccGet,
    FailedGet,
    Flush,
    SuccStore,
    FailedStore,
    Load,
    Invalidate,
}

impl GcmaMetrics {
    pub(crate) fn answered(&self, queue: u16, st: u32) {
        if let Some(c) = self
            .by_status
            .get(usize::from(queue))
            .and_then(|row| row.get(st as usize))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn unanswerable(&self, queue: u16) {
        if let Some(c) = self.unanswerable.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn notified(&self, queue: u16) {
        if let Some(c) = self.notifications.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn broken_ring(&self) {
        self.broken_rings.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed grant mapping or unmapping; returns the new count.
    pub(crate) fn map_failed(&self) -> u64 {
        self.map_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a chain with a buffer outside guest memory; returns the new count.
    pub(crate) fn rejected_chain(&self) -> u64 {
        self.rejected_chains.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a host error of the pool; returns the new count.
    pub(crate) fn pool_error(&self) -> u64 {
        self.pool_errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn set_grants(&self, u: &WindowUsage) {
        self.grants.store(u.grants, Ordering::Relaxed);
        self.granted_pages.store(u.granted_pages, Ordering::Relaxed);
        self.stuck_grants.store(u.stuck_grants, Ordering::Relaxed);
        self.stuck_pages.store(u.stuck_pages, Ordering::Relaxed);
    }

    pub(crate) fn tmem(&self, what: Tmem) {
        let c = match what {
            Tmem::Put => &self.cleancache_puts,
            Tmem::SuccGet => &self.cleancache_succ_gets,
            Tmem::FailedGet => &self.cleancache_failed_gets,
            Tmem::Flush => &self.cleancache_flushes,
            Tmem::SuccStore => &self.frontswap_succ_stores,
            Tmem::FailedStore => &self.frontswap_failed_stores,
            Tmem::Load => &self.frontswap_loads,
            Tmem::Invalidate => &self.frontswap_invalidates,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> GcmaCounters {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut c = GcmaCounters::default();
        for (q, row) in self.by_status.iter().enumerate() {
            for (s, a) in row.iter().enumerate() {
                c.by_status[q][s] = ld(a);
            }
            c.unanswerable[q] = ld(&self.unanswerable[q]);
            c.notifications[q] = ld(&self.notifications[q]);
        }
        c.broken_rings = ld(&self.broken_rings);
        c.resets = ld(&self.resets);
        c.map_failures = ld(&self.map_failures);
        c.pool_errors = ld(&self.pool_errors);
        c.rejected_chains = ld(&self.rejected_chains);
        c.grants = ld(&self.grants);
        c.granted_pages = ld(&self.granted_pages);
        c.stuck_grants = ld(&self.stuck_grants);
        c.stuck_pages = ld(&self.stuck_pages);
        c.cleancache_puts = ld(&self.cleancache_puts);
        c.cleancache_succ_gets = ld(&self.cleancache_succ_gets);
        c.cleancache_failed_gets = ld(&self.cleancache_failed_gets);
        c.cleancache_flushes = ld(&self.cleancache_flushes);
        c.frontswap_succ_stores = ld(&self.frontswap_succ_stores);
        c.frontswap_failed_stores = ld(&self.frontswap_failed_stores);
        c.frontswap_loads = ld(&self.frontswap_loads);
        c.frontswap_invalidates = ld(&self.frontswap_invalidates);
        c
    }

    /// The `STATS` answer: every [`proto::stat`] tag with its value, in tag order.
    pub fn stat_entries(&self, pool_nr_pages: u64, window_nr_pages: u64) -> Vec<proto::StatEntry> {
        use proto::stat;
        let c = self.snapshot();
        let values = [
            (stat::POOL_NR_PAGES, pool_nr_pages),
            (stat::WINDOW_NR_PAGES, window_nr_pages),
            (stat::GRANTS, c.grants),
            (stat::GRANTED_PAGES, c.granted_pages),
            (stat::CLEANCACHE_PUTS, c.cleancache_puts),
            (stat::CLEANCACHE_SUCC_GETS, c.cleancache_succ_gets),
            (stat::CLEANCACHE_FAILED_GETS, c.cleancache_failed_gets),
            (stat::CLEANCACHE_FLUSHES, c.cleancache_flushes),
            (stat::FRONTSWAP_SUCC_STORES, c.frontswap_succ_stores),
            (stat::FRONTSWAP_FAILED_STORES, c.frontswap_failed_stores),
            (stat::FRONTSWAP_LOADS, c.frontswap_loads),
            (stat::FRONTSWAP_INVALIDATES, c.frontswap_invalidates),
            (stat::BAD_REQUESTS, c.with_status(status::BAD_REQUEST)),
        ];
        values
            .iter()
            .map(|&(tag, value)| proto::StatEntry { tag, value })
            .collect()
    }
}
