//! The GCMA pool: one reserved memory area that hands out contiguous runs of pages ("grants") with
//! guaranteed success and bounded latency, and lends its not-granted pages meanwhile to
//! second-class tenants: cleancache (ephemeral) and frontswap (persistent) pages of its clients.
//!
//! # Layout
//! * [`reservation`]: the memfd, its shared mapping, pre-faulting, `mlock`, hugetlb.
//! * [`pages`]: the per-page state array with intrusive free/LRU lists.
//! * `grant.rs`: contiguous grants: range choice, eviction, zeroing.
//! * `cleancache.rs`, `frontswap.rs`: the two second-class stores and their eviction.
//! * `backing.rs`: the shared backing file and its slots; clients' own files
//!   ([`BackingStore`]) and the lock that serialises writes to each.
//! * `clients.rs`: client slots with generations, per-client options and counters.
//! * [`metrics`]: counters, [`PoolStats`] and the `prometheus-client` collector.
//! * `zeroer.rs`: the background [`Zeroer`], which zeroes free pages ahead of grants.
//!
//! # Page states
//! Every pool page is free (known zero, or dirty), cleancache, frontswap or granted. The range
//! allocator ([`crate::range::RangeAllocator`]) over pool page numbers tracks *granted* runs only:
//! to it, free and second-class pages are all available. A grant takes the lowest fitting run
//! (or the highest, when that has fewer pages not known to be zero: `Inner::place_grant`),
//! evicts the second-class pages in it, zeroes every page not known to be zero, and marks the run
//! granted. Pages a put or store needs come from free pages (dirty ones first, so that zero pages
//! stay cheap for grants; the newest-freed first, so that low addresses tend to stay free; bulk
//! frees such as an area invalidation go in ascending page order, so that later puts walk the
//! pool downwards page by page rather than at random, which the TLB and prefetchers reward); when
//! none is free, second-class pages are evicted in LRU order: a cleancache put evicts only
//! cleancache pages (and is dropped when there are none); a frontswap store evicts cleancache pages
//! first, then frontswap pages. Granted pages are never evicted.
//!
//! # Frontswap policies
//! * **Write-through**: every store is written to the backing file (to a fresh slot, before the
//!   store is installed) so eviction just drops the pool copy. When no pool page can be had, the
//!   store is still accepted: the backing file holds it.
//! * **Write-back**: eviction copies the page to host memory at once (under the lock, a 4 KiB
//!   copy) and writes it to the backing file afterwards, outside the lock; loads in between are
//!   served from the host copy. A failed write keeps the host copy and is retried later.
//! * **Put-back**: eviction copies the page to host memory outside the pool. The number of
//!   accepted frontswap pages is bounded by `put_back_limit_pages`, so that evicting all of them
//!   always fits the limit and grants never fail because of put-back pages; stores of new keys
//!   beyond it are rejected ([`crate::api::RejectReason::PutBackLimit`]).
//!
//! A rejected store invalidates any old copy of its key, so stale data is never returned.
//!
//! # Per-client options
//! [`Pool::register_client_with`] takes [`ClientOptions`]; [`GcmaBackend::register_client`] is
//! the default (the shared backing, no limits of its own).
//! * **Own backing file** ([`FrontswapBacking::File`]): a disk. Page `k` lives at byte `k × 4096`
//!   of the client's file, and a key the pool does not hold reads from the file (zero where never
//!   written), so a new pool over the same file reads back everything the old one made durable.
//!   Nothing such a client stores is refused: a store the pool cannot keep in a pool page (pool
//!   full, the client's cap reached) is written to the file and accepted, as write-through
//!   already does when no pool page is free. Write-through writes the file before accepting;
//!   write-back writes it when the page leaves the pool; put-back keeps evicted pages in host
//!   memory up to the client's put-back limit, then writes them. [`Pool::flush_client`] makes
//!   everything durable (shutdown, a disk's FLUSH). Invalidation punches a hole. Writes to one
//!   file are serialised, with a generation check, so an older copy of a page never lands after
//!   a newer one (see `backing::DiskBacking`).
//! * **Caps** on the pool pages its frontswap and its cleancache data may occupy, so that one
//!   client cannot push the others out: a store beyond the cap goes outside the pool (or is
//!   refused), a cleancache put beyond it is dropped.
//! * **Put-back limit** of its own, under the pool-wide one; without one, a client with the shared
//!   backing may hold an equal share of the pool-wide limit, so that one guest cannot take all of
//!   it and get every other guest's new stores rejected.
//!
//! A write-back that fails keeps the host copy and is retried with a growing backoff by
//! [`Pool::retry_writebacks`] (the [`WritebackRetrier`] timer), counted in `gcma_writeback_retries_total`.
//!
//! # Locking
//! One mutex guards all bookkeeping: page states, the range allocator, clients,
//! store indexes, backing-file slots. Page copies of cleancache/frontswap data (4 KiB each) are
//! done under it, which is what makes a page's state and contents change together. Three things
//! are done outside it:
//! * **Zeroing a grant** when more than [`ZERO_UNDER_LOCK_MAX_PAGES`] pages need it: the run is
//!   marked granted (so no put can take its pages) and recorded as *not ready* (so that
//!   [`GcmaBackend::free_contig`] refuses it), the lock is dropped, the pages are zeroed, and the
//!   lock is retaken briefly to mark the grant ready.
//! * **Backing-file I/O**: write-through writes go to a slot that no entry names yet; write-back
//!   writes go to a fresh slot and are installed only if the entry did not change meanwhile
//!   (generation check); reads pin their slot so that it cannot be reused while being read.
//! * Statistics counters are atomics. Those written only under the lock (the cleancache ones) are
//!   bumped with a plain load and store rather than a locked add: a locked instruction is a full
//!   fence, and after a 4 KiB copy it would wait for the copy's stores to drain.
//!
//! Grants (and their releases) are latency-critical and rare, second-class operations are
//! frequent and short: a grant announces that it waits for the lock, and second-class operations
//! spin (then yield) until it has it, for at most a bounded number of rounds. The standard mutex
//! lets a thread that releases and retakes the lock in a tight loop starve a sleeping waiter;
//! this keeps a busy tenant from delaying a grant.
//!
//! The background [`Zeroer`] only ever *tries* the lock, and only when no grant and no tenant
//! waits for it; holding it, it zeroes one dirty free page at a time and lets go as soon as
//! anyone waits (second-class operations count themselves in `lock_waiters` when they find the
//! lock taken). A page's zeroing and its move to the known-zero list happen under the lock, so
//! a grant that skips a known-zero page never holds another guest's bytes.
//!
//! No operation takes the lock twice nested, and the pool lock is never held across file I/O. A
//! client's own file has a write lock of its own, held across each write or hole punch to that
//! file (that is what serialises them); it is always taken before the pool lock, never while
//! holding it.

mod backing;
mod check;
mod cleancache;
mod clients;
mod frontswap;
mod grant;
mod hash;
pub mod metrics;
pub mod pages;
pub mod reservation;
mod retrier;
mod zeroer;

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use crate::api::{
    CleancacheKey, ClientId, ContigGrant, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError,
    PAGE_SIZE,
};
use crate::huge::HugePages;
use crate::log_limit::{LogLimit, LogLimiter};
use crate::range::{RangeAllocator, DEFAULT_MAX_VISITS};

pub use backing::BackingStore;
use backing::{open_backing_file, BackingSlots};
use cleancache::CcObject;
use clients::Clients;
pub use clients::{ClientOptions, FrontswapBacking};
pub use frontswap::writeback_backoff;
use frontswap::Retry;
pub use metrics::{ClientStats, EvictReason, PoolStats, GRANT_LATENCY_BUCKETS_US};
use metrics::{Counters, PoolCollector};
use pages::{PageState, PageTable};
use reservation::Reservation;
pub use retrier::{WritebackRetrier, DEFAULT_RETRY_PERIOD};
pub use zeroer::{Zeroer, ZeroerConfig, DEFAULT_ZEROER_CPU_PCT};

/// Grants with at most this many pages to zero are zeroed under the lock (cheaper than dropping
/// and retaking it); larger ones are zeroed with the lock released.
pub const ZERO_UNDER_LOCK_MAX_PAGES: u64 = 16;

/// Grants of at least this many pages (2 MiB) start at a 2 MiB boundary of the pool when such a
/// run is free, so that a window placing them 2 MiB-aligned too lets KVM map them with 2 MiB
/// entries. When none is free, a 4 KiB or THP pool falls back to the alignment asked for.
pub const HUGE_ALIGN_MIN_PAGES: u64 = crate::pool::reservation::PAGES_PER_HUGE_PAGE;

/// The unit a hugetlb pool carves grants in: one 2 MiB page (hugetlb memory cannot be mapped at
/// a 4 KiB offset). A smaller grant gets a huge page no one else shares.
pub const GRANT_UNIT_PAGES_HUGETLB: u64 = crate::pool::reservation::PAGES_PER_HUGE_PAGE;

/// Pages [`Pool::zero_idle_pages`] zeroes per lock hold.
pub const ZERO_IDLE_BATCH_PAGES: u64 = 32;

/// Largest pool: page numbers must fit the page table's `u32` links.
pub const MAX_POOL_PAGES: u64 = u32::MAX as u64 - 1;

/// Most cleancache pools one client may have at once (Linux makes one per mounted filesystem).
pub const MAX_CLEANCACHE_POOLS: usize = 1024;

/// How to build a [`Pool`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Pool size in 4 KiB pages (a multiple of 512 with [`HugePages::Hugetlb`]).
    pub nr_pages: u64,
    /// Back the pool with 2 MiB pages: hugetlb (fails clearly if the host has too few free) or
    /// shmem THP (fails clearly if the host turned it off). On a hugetlb pool every grant is
    /// carved in whole 2 MiB units ([`GRANT_UNIT_PAGES_HUGETLB`]).
    pub huge_pages: HugePages,
    /// Lock the pool in memory.
    pub mlock: bool,
    /// What happens to frontswap pages on eviction.
    pub frontswap_policy: FrontswapPolicy,
    /// Directory of the sparse backing file (write-through / write-back); the file is unlinked at
    /// once. `None` uses the system temporary directory.
    pub backing_dir: Option<PathBuf>,
    /// Put-back policy: most frontswap pages accepted at once (pool-wide). Each client has its
    /// own limit under it: [`ClientOptions::put_back_limit_pages`], by default an equal share of
    /// this one among the registered clients.
    pub put_back_limit_pages: u64,
    /// Most frontswap pages one client may hold; `None` for no limit. Under write-through a store
    /// is accepted into the backing file even when no pool page is free, so without a limit one
    /// client can grow the backing file without bound: set this for untrusted guests.
    pub client_frontswap_limit_pages: Option<u64>,
    /// Most nodes of the range allocator's tree one grant may visit under the pool lock
    /// ([`crate::range::RangeAllocator::set_max_visits`]); a grant that would need more is refused
    /// as fragmented. Bounds the lock time a guest can cost per request whatever shape its grants
    /// give the free space.
    pub max_search_nodes: u32,
    /// How many log lines of one kind the pool writes per window for events its clients can
    /// provoke (backing-file write failures); the rest are counted in
    /// `gcma_log_suppressed_lines_total`.
    pub log_limit: LogLimit,
}

impl PoolConfig {
    /// A 4 KiB-page, unlocked, write-through pool of `nr_pages` pages with its backing file in the
    /// temporary directory, a put-back limit of `nr_pages`, [`DEFAULT_MAX_VISITS`] tree nodes per
    /// grant and the default log limit.
    pub fn new(nr_pages: u64) -> Self {
        PoolConfig {
            nr_pages,
            huge_pages: HugePages::Off,
            mlock: false,
            frontswap_policy: FrontswapPolicy::WriteThrough,
            backing_dir: None,
            put_back_limit_pages: nr_pages,
            client_frontswap_limit_pages: None,
            max_search_nodes: DEFAULT_MAX_VISITS,
            log_limit: LogLimit::default(),
        }
    }
}

/// A recorded grant.
#[derive(Clone, Copy, Debug)]
struct GrantRec {
    nr_pages: u64,
    /// False while the grant is being zeroed outside the lock.
    ready: bool,
}

/// Everything the pool's lock guards. See the [module documentation](self) for the locking rules.
#[derive(Debug)]
pub(crate) struct Inner {
    pages: PageTable,
    alloc: RangeAllocator,
    clients: Clients,
    cc_objs: Vec<CcObject>,
    cc_free_objs: Vec<u32>,
    slots: BackingSlots,
    /// Copied from the configuration, for eviction.
    policy: FrontswapPolicy,
    /// Copied from the configuration, for eviction.
    put_back_limit: u64,
    /// Accepted frontswap pages in host memory (put-back or write-back pending).
    fs_host_pages: u64,
    /// Accepted frontswap pages only in the backing file.
    fs_backing_only: u64,
    /// Accepted frontswap pages in all.
    fs_stored: u64,
    /// Accepted frontswap pages of clients on the shared backing.
    fs_stored_shared: u64,
    /// Put-back copies in host memory of clients with their own file.
    pb_file_host: u64,
    /// Put-back places taken by a store being installed (0 or 1; see `fs_install`).
    pb_reserved: u64,
    /// Failed write-backs waiting for their next attempt.
    retries: Vec<Retry>,
    live_grants: u64,
    next_gen: u64,
}

impl Inner {
    fn client(&self, id: ClientId) -> Result<&clients::Client, PoolError> {
        self.clients.get(id)
    }

    fn client_mut(&mut self, id: ClientId) -> Result<&mut clients::Client, PoolError> {
        self.clients.get_mut(id)
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// A free page for a put or store, if any: dirty ones first (newest freed first), then zero
    /// ones from the top of the pool.
    fn take_free_page(&mut self) -> Option<u32> {
        self.pages
            .tail(PageState::FreeDirty)
            .or_else(|| self.pages.tail(PageState::FreeZero))
    }
}

/// Takes a consistent snapshot of the page states and counters.
pub(crate) fn snapshot(inner: &Mutex<Inner>, counters: &Counters, nr_pages: u64) -> PoolStats {
    let mut s = PoolStats {
        nr_pages,
        ..PoolStats::default()
    };
    {
        let g = inner.lock().unwrap_or_else(|e| e.into_inner());
        s.free_zero_pages = g.pages.count(PageState::FreeZero);
        s.free_dirty_pages = g.pages.count(PageState::FreeDirty);
        s.cleancache_pages = g.pages.count(PageState::Cleancache);
        s.frontswap_pages = g.pages.count(PageState::Frontswap);
        s.granted_pages = g.pages.count(PageState::Granted);
        s.frontswap_backing_only_pages = g.fs_backing_only;
        s.frontswap_host_pages = g.fs_host_pages;
        s.frontswap_stored_pages = g.fs_stored;
        s.writebacks_waiting = g.retries.len() as u64;
        s.clients = g.clients.live();
        s.live_grants = g.live_grants;
    }
    s.fill_counters(counters);
    s
}

/// The GCMA pool. Build it with [`Pool::new`]; use it through [`GcmaBackend`].
///
/// ```
/// use gcma_host::api::{CleancacheKey, GcmaBackend, PAGE_SIZE};
/// use gcma_host::pool::{Pool, PoolConfig};
///
/// let pool = Pool::new(PoolConfig::new(64)).unwrap();
/// let vm = pool.register_client("vm0");
/// let cc = pool.cleancache_new_pool(vm).unwrap();
/// let key = CleancacheKey { pool: cc, object: [1, 0, 0], index: 0 };
/// assert!(pool.cleancache_put(vm, key, &[7u8; PAGE_SIZE]).unwrap());
/// let grant = pool.alloc_contig(vm, 64, 1).unwrap(); // evicts the cleancache page
/// assert_eq!(grant.nr_pages, 64);
/// let mut out = [0u8; PAGE_SIZE];
/// assert!(!pool.cleancache_get(vm, key, &mut out).unwrap());
/// pool.free_contig(vm, grant.first_page).unwrap();
/// ```
#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    res: Reservation,
    inner: Arc<Mutex<Inner>>,
    counters: Arc<Counters>,
    backing: Option<File>,
    /// Grants waiting for the lock; second-class operations let them go first.
    grants_waiting: AtomicU32,
    /// Limits the log lines clients can provoke (see [`LOG_KINDS`]).
    logs: Arc<LogLimiter>,
    /// Second-class operations that found the lock taken and wait for it; the [`Zeroer`]
    /// steps aside for them.
    lock_waiters: AtomicU32,
}

/// Kinds of log lines the pool writes through its [`LogLimiter`]: a backing-file write that
/// failed for a write-through store, and one that failed for a write-back eviction. A client
/// provokes them at the rate it stores pages, so each is limited like a guest's own lines.
pub const LOG_KINDS: &[&str] = &[LOG_BACKING_WRITE, LOG_WRITE_BACK];
/// Log kind: a write-through store's backing-file write failed.
pub const LOG_BACKING_WRITE: &str = "pool_backing_write_failed";
/// Log kind: a write-back eviction's backing-file write failed.
pub const LOG_WRITE_BACK: &str = "pool_write_back_failed";

/// How long a second-class operation defers to waiting grants before taking its turn anyway.
const MAX_YIELD_SPINS: u32 = 1000;

fn check_page_len(len: usize) -> Result<(), PoolError> {
    if len == PAGE_SIZE {
        Ok(())
    } else {
        Err(PoolError::Invalid("page buffer is not exactly one page"))
    }
}

impl Pool {
    /// Reserves the pool's memory and builds an empty pool.
    pub fn new(cfg: PoolConfig) -> Result<Arc<Pool>, PoolError> {
        if cfg.nr_pages == 0 {
            return Err(PoolError::Invalid("a pool needs at least one page"));
        }
        if cfg.nr_pages > MAX_POOL_PAGES {
            return Err(PoolError::Invalid("pool larger than 2^32 - 2 pages"));
        }
        let res = Reservation::new(cfg.nr_pages, cfg.huge_pages, cfg.mlock)?;
        let backing = match cfg.frontswap_policy {
            FrontswapPolicy::PutBack => None,
            _ => Some(open_backing_file(cfg.backing_dir.as_ref())?),
        };
        let mut alloc = RangeAllocator::new(0, cfg.nr_pages)
            .map_err(|_| PoolError::Invalid("pool size not accepted by the range allocator"))?;
        alloc.set_max_visits(cfg.max_search_nodes);
        let logs = Arc::new(LogLimiter::new(cfg.log_limit));
        logs.declare_all(LOG_KINDS);
        let inner = Inner {
            pages: PageTable::new(cfg.nr_pages as u32),
            alloc,
            clients: Clients::default(),
            cc_objs: Vec::new(),
            cc_free_objs: Vec::new(),
            slots: BackingSlots::default(),
            policy: cfg.frontswap_policy,
            put_back_limit: cfg.put_back_limit_pages,
            fs_host_pages: 0,
            fs_backing_only: 0,
            fs_stored: 0,
            fs_stored_shared: 0,
            pb_file_host: 0,
            pb_reserved: 0,
            retries: Vec::new(),
            live_grants: 0,
            next_gen: 0,
        };
        log::info!(
            "gcma pool: {} pages ({} MiB){}{}, frontswap {:?}",
            cfg.nr_pages,
            (cfg.nr_pages * PAGE_SIZE as u64) >> 20,
            match cfg.huge_pages {
                HugePages::Off => "",
                HugePages::Thp => ", shmem THP",
                HugePages::Hugetlb => ", hugetlb",
            },
            if cfg.mlock { ", mlocked" } else { "" },
            cfg.frontswap_policy
        );
        Ok(Arc::new(Pool {
            cfg,
            res,
            inner: Arc::new(Mutex::new(inner)),
            counters: Arc::new(Counters::default()),
            backing,
            grants_waiting: AtomicU32::new(0),
            logs,
            lock_waiters: AtomicU32::new(0),
        }))
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// The unit grants are carved in, in pages ([`GcmaBackend::grant_unit_pages`]):
    /// [`GRANT_UNIT_PAGES_HUGETLB`] on a hugetlb pool, 1 otherwise.
    pub fn grant_unit_pages(&self) -> u64 {
        if self.cfg.huge_pages.is_hugetlb() {
            GRANT_UNIT_PAGES_HUGETLB
        } else {
            1
        }
    }

    /// The frontswap policy of this pool.
    pub fn frontswap_policy(&self) -> FrontswapPolicy {
        self.cfg.frontswap_policy
    }

    /// Takes the lock for a second-class operation: first lets a grant that is waiting for the
    /// lock go ahead (briefly; see the locking notes in the module documentation).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut spins = 0u32;
        while self.grants_waiting.load(Ordering::Relaxed) != 0 && spins < MAX_YIELD_SPINS {
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            spins += 1;
        }
        // A panic while holding the lock would be a bug; the state is still the best we have.
        match self.inner.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
        // Contended: say so, so that the background zeroer lets go (uncontended takes pay
        // nothing for this).
        self.lock_waiters.fetch_add(1, Ordering::Relaxed);
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.lock_waiters.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// Takes the lock for a grant or a grant's release, ahead of second-class operations.
    fn lock_for_grant(&self) -> MutexGuard<'_, Inner> {
        self.grants_waiting.fetch_add(1, Ordering::Relaxed);
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.grants_waiting.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// A consistent snapshot of page states and counters.
    pub fn stats(&self) -> PoolStats {
        snapshot(&self.inner, &self.counters, self.cfg.nr_pages)
    }

    /// Registers the pool's metrics (`gcma_*`) with a `prometheus-client` registry. Values are
    /// read from a fresh snapshot on every scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(PoolCollector {
            inner: Arc::clone(&self.inner),
            counters: Arc::clone(&self.counters),
            logs: Arc::clone(&self.logs),
            nr_pages: self.cfg.nr_pages,
            policy: self.cfg.frontswap_policy,
        }));
    }

    /// The limiter of the log lines clients can provoke (its counts are in `/metrics`).
    pub fn log_limiter(&self) -> &Arc<LogLimiter> {
        &self.logs
    }

    /// The name a client registered with.
    pub fn client_name(&self, client: ClientId) -> Result<String, PoolError> {
        Ok(self.lock().client(client)?.name.clone())
    }

    /// Registers a client with its own options (see the [module documentation](self)).
    /// [`GcmaBackend::register_client`] is this with [`ClientOptions::default`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use gcma_host::api::{FrontswapKey, GcmaBackend, PAGE_SIZE};
    /// use gcma_host::pool::{ClientOptions, FrontswapBacking, Pool, PoolConfig};
    ///
    /// let pool = Pool::new(PoolConfig::new(64)).unwrap();
    /// let file = tempfile_in_tmp();
    /// let disk = pool.register_client_with("disk0", ClientOptions {
    ///     frontswap_backing: FrontswapBacking::File(Arc::new(file)),
    ///     frontswap_cap_pages: Some(16),
    ///     ..ClientOptions::default()
    /// });
    /// let key = FrontswapKey { area: 0, offset: 3 };
    /// pool.frontswap_store(disk, key, &[7u8; PAGE_SIZE]).unwrap();
    /// // A page never written reads as zero: the client's file is a disk.
    /// let mut out = [1u8; PAGE_SIZE];
    /// assert!(pool.frontswap_load(disk, FrontswapKey { area: 0, offset: 9 }, &mut out).unwrap());
    /// assert_eq!(out, [0u8; PAGE_SIZE]);
    /// # fn tempfile_in_tmp() -> std::fs::File {
    /// #     use std::os::unix::fs::OpenOptionsExt;
    /// #     std::fs::OpenOptions::new().read(true).write(true)
    /// #         .custom_flags(libc::O_TMPFILE).open(std::env::temp_dir()).unwrap()
    /// # }
    /// ```
    pub fn register_client_with(&self, name: &str, opts: ClientOptions) -> ClientId {
        let id = self.lock().clients.register(name, opts);
        log::debug!("gcma pool: client {id:?} ({name}) registered");
        id
    }

    /// What one client holds and what it did.
    pub fn client_stats(&self, client: ClientId) -> Result<ClientStats, PoolError> {
        let g = self.lock();
        let c = g.client(client)?;
        let n = &c.counters;
        Ok(ClientStats {
            name: c.name.clone(),
            own_file: c.file.is_some(),
            frontswap_cap_pages: c.fs_cap,
            cleancache_cap_pages: c.cc_cap,
            put_back_limit_pages: c.put_back_limit,
            frontswap_stored_pages: c.fs.len() as u64,
            frontswap_pool_pages: c.fs_pool_pages,
            frontswap_host_pages: c.fs_host_pages,
            cleancache_pages: c.cc_pages,
            frontswap_stores: n.fs_stores,
            frontswap_rejects: n.fs_rejects,
            frontswap_cap_hits: n.fs_cap_hits,
            frontswap_loads_pool: n.fs_loads_pool,
            frontswap_loads_host: n.fs_loads_host,
            frontswap_loads_backing: n.fs_loads_backing,
            file_writes: n.file_writes,
            written_back_pages: n.written_back,
            put_back_pages: n.put_back,
            writeback_retries: n.writeback_retries,
            backing_write_errors: n.write_errors,
            cleancache_puts: n.cc_puts,
            cleancache_cap_drops: n.cc_cap_drops,
            cleancache_hits: n.cc_hits,
            cleancache_misses: n.cc_misses,
        })
    }

    /// Makes every client's frontswap pages durable in its own file (see
    /// [`Pool::flush_client`]); stops at the first failure. Returns how many pages were written.
    pub fn flush_all(&self) -> Result<u64, PoolError> {
        let ids: Vec<ClientId> = {
            let g = self.lock();
            g.clients
                .iter_ids()
                .filter(|(_, c)| c.file.is_some())
                .map(|(id, _)| id)
                .collect()
        };
        let mut n = 0;
        for id in ids {
            match self.flush_client(id) {
                Ok(k) => n += k,
                // Unregistered meanwhile: nothing of it is owed any more.
                Err(PoolError::UnknownClient(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Invalidates the frontswap pages of `area` whose offsets lie in `offsets` (a disk's
    /// DISCARD); for a client with its own file the range is also punched out of the file, so it
    /// reads as zero. Returns how many pages the pool held.
    pub fn frontswap_invalidate_range(
        &self,
        client: ClientId,
        area: u32,
        offsets: std::ops::Range<u64>,
    ) -> Result<u64, PoolError> {
        if offsets.start >= offsets.end {
            self.lock().client(client)?;
            return Ok(0);
        }
        self.fs_invalidate_range(client, area, offsets.start..=offsets.end - 1)
    }

    /// A cleancache get that keeps the page (the semantics of tmem's shared pools) and makes it
    /// the most recently used: for a client that cannot tell when its own copy goes, such as a
    /// disk cache under a guest's page cache. `Ok(false)` on a miss.
    pub fn cleancache_get_keep(
        &self,
        client: ClientId,
        key: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        check_page_len(out.len())?;
        self.cc_get_keep(client, key, out)
    }

    /// Zeroes up to `max_pages` free pages that may hold old bytes, so that later grants find
    /// them known-zero and skip them. Meant for idle time (a daemon's housekeeping tick; the
    /// background [`Zeroer`] does it continuously): each batch of [`ZERO_IDLE_BATCH_PAGES`] pages
    /// is zeroed under the lock (a few microseconds), and the lock is released between batches.
    /// Returns the number of pages zeroed.
    pub fn zero_idle_pages(&self, max_pages: u64) -> u64 {
        let mut done = 0;
        while done < max_pages {
            let mut g = self.lock();
            let (n, _) =
                self.zero_dirty_locked(&mut g, ZERO_IDLE_BATCH_PAGES.min(max_pages - done), false);
            drop(g);
            done += n;
            if n < ZERO_IDLE_BATCH_PAGES {
                break;
            }
        }
        Counters::add(&self.counters.idle_zeroed_pages, done);
        done
    }

    /// Zeroes up to `max_pages` dirty free pages, the lock held (`g`). With `step_aside`, stops
    /// before the next page as soon as a grant or a tenant waits for the lock. Returns the pages
    /// zeroed and whether it stopped for a waiter.
    fn zero_dirty_locked(&self, g: &mut Inner, max_pages: u64, step_aside: bool) -> (u64, bool) {
        let mut n = 0;
        while n < max_pages {
            if step_aside
                && (self.grants_waiting.load(Ordering::Relaxed) != 0
                    || self.lock_waiters.load(Ordering::Relaxed) != 0)
            {
                return (n, true);
            }
            // The oldest dirty pages: those puts would take last.
            let Some(p) = g.pages.head(PageState::FreeDirty) else {
                break;
            };
            // SAFETY: `p` is free (holds no data, granted to no one) and the lock is held,
            // so no one else reads or writes it.
            unsafe { self.res.zero_pages(p as u64, 1) };
            // To the far end of the zero list: puts take zero pages last and from the other end,
            // so the work done here stays for grants.
            g.pages.set_free_head(p, PageState::FreeZero);
            n += 1;
        }
        (n, false)
    }

    /// Unregisters `client`: drops its cleancache and frontswap pages and, unless `keep_grants`,
    /// frees its grants. With `keep_grants`, a client that still holds grants stays *retired*
    /// (see [`clients`]) until the last of them is freed.
    fn drop_client(&self, client: ClientId, keep_grants: bool) -> Result<(), PoolError> {
        let mut g = self.lock();
        let g = &mut *g;
        let c = g.clients.get_mut(client)?;
        let cc_objects = std::mem::take(&mut c.cc_objects);
        let fs = std::mem::take(&mut c.fs);
        let file = c.file.is_some();
        // Grants still being zeroed are released by their granting thread, which finds the
        // client gone (or retired) when it comes back for the lock.
        c.grants.retain(|_, rec| rec.ready);
        let keep = keep_grants && !c.grants.is_empty();
        let name = c.name.clone();
        if keep {
            c.retired = true;
        } else if let Some(c) = g.clients.remove(client) {
            for (first, rec) in c.grants {
                g.release_grant_pages(first, rec.nr_pages);
            }
        }
        for obj in cc_objects.into_values() {
            let n = g.cc_drop_object(obj);
            Counters::add_locked(&self.counters.cc_flushes, n);
        }
        for e in fs.into_values() {
            g.fs_drop_entry(client.slot(), file, e);
        }
        // Their pending write-backs go with them (a retired client keeps its slot meanwhile).
        g.retries.retain(|r| r.w.client != client.slot());
        if keep {
            log::debug!("gcma pool: client {client:?} ({name}) retired, grants kept");
        } else {
            log::debug!("gcma pool: client {client:?} ({name}) unregistered");
        }
        Ok(())
    }
}

impl GcmaBackend for Pool {
    fn register_client(&self, name: &str) -> ClientId {
        self.register_client_with(name, ClientOptions::default())
    }

    fn unregister_client(&self, client: ClientId) -> Result<(), PoolError> {
        self.drop_client(client, false)
    }

    fn retire_client(&self, client: ClientId) -> Result<(), PoolError> {
        self.drop_client(client, true)
    }

    fn alloc_contig(
        &self,
        client: ClientId,
        nr_pages: u64,
        align_pages: u64,
    ) -> Result<ContigGrant, PoolError> {
        self.grant(client, nr_pages, align_pages)
    }

    fn free_contig(&self, client: ClientId, first_page: u64) -> Result<u64, PoolError> {
        self.release(client, first_page)
    }

    fn grant_unit_pages(&self) -> u64 {
        self.grant_unit_pages()
    }

    fn memfd(&self) -> BorrowedFd<'_> {
        self.res.memfd()
    }

    fn nr_pages(&self) -> u64 {
        self.cfg.nr_pages
    }

    fn cleancache_new_pool(&self, client: ClientId) -> Result<u32, PoolError> {
        let mut g = self.lock();
        let c = g.client_mut(client)?;
        // The lowest free id, as Linux numbers its cleancache pools.
        let id = match c.cc_pools.iter().position(|&live| !live) {
            Some(i) => i,
            None if c.cc_pools.len() < MAX_CLEANCACHE_POOLS => {
                c.cc_pools.push(false);
                c.cc_pools.len() - 1
            }
            None => return Err(PoolError::Invalid("too many cleancache pools")),
        };
        c.cc_pools[id] = true;
        Ok(id as u32)
    }

    fn cleancache_put(
        &self,
        client: ClientId,
        key: CleancacheKey,
        page: &[u8],
    ) -> Result<bool, PoolError> {
        check_page_len(page.len())?;
        self.cc_put(client, key, page)
    }

    fn cleancache_get(
        &self,
        client: ClientId,
        key: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        check_page_len(out.len())?;
        self.cc_get(client, key, out)
    }

    fn cleancache_flush_page(
        &self,
        client: ClientId,
        key: CleancacheKey,
    ) -> Result<bool, PoolError> {
        self.cc_flush_page(client, key)
    }

    fn cleancache_flush_object(
        &self,
        client: ClientId,
        pool: u32,
        object: [u64; 3],
    ) -> Result<u64, PoolError> {
        self.cc_flush_object(client, pool, object)
    }

    fn cleancache_destroy_pool(&self, client: ClientId, pool: u32) -> Result<(), PoolError> {
        self.cc_destroy_pool(client, pool)
    }

    fn frontswap_store(
        &self,
        client: ClientId,
        key: FrontswapKey,
        page: &[u8],
    ) -> Result<(), PoolError> {
        check_page_len(page.len())?;
        self.fs_store(client, key, page)
    }

    fn frontswap_load(
        &self,
        client: ClientId,
        key: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        check_page_len(out.len())?;
        self.fs_load(client, key, out)
    }

    fn frontswap_invalidate_page(
        &self,
        client: ClientId,
        key: FrontswapKey,
    ) -> Result<bool, PoolError> {
        self.fs_invalidate_page(client, key)
    }

    fn frontswap_invalidate_area(&self, client: ClientId, area: u32) -> Result<u64, PoolError> {
        self.fs_invalidate_area(client, area)
    }
}
