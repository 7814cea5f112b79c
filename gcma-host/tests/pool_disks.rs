//! Clients with their own backing file (a disk), caps and per-client put-back limits: where pages
//! go under each policy, that a new pool over the same file reads back every acknowledged page
//! (after a flush for write-back and put-back; even without one for write-through), that failed
//! write-backs keep the host copy and are retried, and that concurrent write-outs of one key never
//! leave an older generation in the file.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use gcma_host::api::{
    CleancacheKey, ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, RejectReason,
    PAGE_SIZE,
};
use gcma_host::pool::{
    writeback_backoff, BackingStore, ClientOptions, FrontswapBacking, Pool, PoolConfig,
};

/// A file in the temporary directory, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempPath(
            std::env::temp_dir().join(format!("gcma-disk-test-{}-{tag}-{n}", std::process::id())),
        )
    }

    fn open(&self) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.0)
            .unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A file whose writes can be made to fail, or to take their time.
#[derive(Debug)]
struct Flaky {
    file: File,
    fail_writes: AtomicBool,
    write_delay_us: AtomicU64,
    writes: AtomicU64,
}

impl Flaky {
    fn new(file: File) -> Arc<Self> {
        Arc::new(Flaky {
            file,
            fail_writes: AtomicBool::new(false),
            write_delay_us: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }
}

impl BackingStore for Flaky {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        BackingStore::read_at(&self.file, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        // A delay of up to the configured time, varying from write to write, so that writes
        // started in one order may finish in another.
        let d = self.write_delay_us.load(Ordering::Relaxed);
        if d > 0 {
            let n = self
                .writes
                .load(Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            std::thread::sleep(Duration::from_micros((n >> 40) % d));
        }
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("injected write failure"));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        BackingStore::write_at(&self.file, buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        BackingStore::punch_hole(&self.file, offset, len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        BackingStore::sync_data(&self.file)
    }
}

fn pool(nr: u64, policy: FrontswapPolicy) -> Arc<Pool> {
    let mut cfg = PoolConfig::new(nr);
    cfg.frontswap_policy = policy;
    Pool::new(cfg).unwrap()
}

fn disk(pool: &Pool, store: Arc<dyn BackingStore>, cap: Option<u64>) -> ClientId {
    pool.register_client_with(
        "disk",
        ClientOptions {
            frontswap_backing: FrontswapBacking::File(store),
            frontswap_cap_pages: cap,
            ..ClientOptions::default()
        },
    )
}

fn key(o: u64) -> FrontswapKey {
    FrontswapKey { area: 0, offset: o }
}

/// A page that names its key and generation.
fn page(k: u64, gen: u64) -> Vec<u8> {
    let mut p = vec![(k * 31 + gen) as u8; PAGE_SIZE];
    p[..8].copy_from_slice(&k.to_le_bytes());
    p[8..16].copy_from_slice(&gen.to_le_bytes());
    p
}

fn load(pool: &Pool, c: ClientId, k: u64) -> Vec<u8> {
    let mut out = vec![0xeeu8; PAGE_SIZE];
    assert!(pool.frontswap_load(c, key(k), &mut out).unwrap());
    out
}

fn file_page(path: &TempPath, k: u64) -> Vec<u8> {
    let mut out = vec![0u8; PAGE_SIZE];
    BackingStore::read_at(&path.open(), &mut out, k * PAGE_SIZE as u64).unwrap();
    out
}

const POLICIES: [FrontswapPolicy; 3] = [
    FrontswapPolicy::WriteThrough,
    FrontswapPolicy::WriteBack,
    FrontswapPolicy::PutBack,
];

/// Stores 32 pages into a disk capped at 8 pool pages in a 16-page pool, grants the whole pool,
/// and checks every page reads back: nothing is refused, the cap holds, and where each page went
/// matches the policy.
#[test]
fn nothing_is_refused_and_every_page_reads_back() {
    for policy in POLICIES {
        let path = TempPath::new("all");
        let p = pool(16, policy);
        let c = disk(&p, Arc::new(path.open()), Some(8));
        for k in 0..32 {
            p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
        }
        let s = p.client_stats(c).unwrap();
        assert_eq!(s.frontswap_pool_pages, 8, "{policy:?}: the cap holds");
        assert_eq!(s.frontswap_cap_hits, 24, "{policy:?}");
        assert_eq!(s.frontswap_rejects, 0);
        // Past the cap the pages went to the file at once; write-through wrote every page.
        let want_writes = if policy == FrontswapPolicy::WriteThrough {
            32
        } else {
            24
        };
        assert_eq!(s.file_writes, want_writes, "{policy:?}");
        for k in 0..32 {
            assert_eq!(load(&p, c, k), page(k, 1), "{policy:?} key {k}");
        }
        // A grant of the whole pool evicts the 8 pool pages.
        let other = p.register_client("grants");
        let g = p.alloc_contig(other, 16, 1).unwrap();
        let s = p.client_stats(c).unwrap();
        assert_eq!(s.frontswap_pool_pages, 0);
        match policy {
            FrontswapPolicy::WriteThrough => assert_eq!(s.written_back_pages, 0),
            FrontswapPolicy::WriteBack => assert_eq!(s.written_back_pages, 8),
            // No put-back limit of its own, and the pool-wide one is the pool size: host memory.
            FrontswapPolicy::PutBack => {
                assert_eq!((s.put_back_pages, s.frontswap_host_pages), (8, 8))
            }
        }
        for k in 0..32 {
            assert_eq!(
                load(&p, c, k),
                page(k, 1),
                "{policy:?} key {k} after the grant"
            );
        }
        // Even with every page granted, stores are accepted (into the file).
        p.frontswap_store(c, key(40), &page(40, 2)).unwrap();
        assert_eq!(load(&p, c, 40), page(40, 2));
        p.free_contig(other, g.first_page).unwrap();
        p.check_consistency().unwrap();
    }
}

/// The restart case: a new pool over the same file reads back every acknowledged page, and a
/// page never written reads as zero. Write-through needs nothing; write-back and put-back need
/// the flush a daemon does on SIGTERM.
#[test]
fn a_new_pool_over_the_same_file_reads_back_every_page() {
    for policy in POLICIES {
        let path = TempPath::new("restart");
        {
            let p = pool(64, policy);
            let c = disk(&p, Arc::new(path.open()), Some(16));
            for k in 0..48 {
                p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
            }
            // Replace some, invalidate some (the file must read zero there).
            for k in (0..48).step_by(3) {
                p.frontswap_store(c, key(k), &page(k, 2)).unwrap();
            }
            assert_eq!(p.frontswap_invalidate_range(c, 0, 40..44).unwrap(), 4);
            if policy != FrontswapPolicy::WriteThrough {
                let n = p.flush_client(c).unwrap();
                assert!(n > 0, "{policy:?}: pages were owed");
                assert_eq!(p.flush_client(c).unwrap(), 0, "nothing owed twice");
            }
            // Dropped without unregistering: as if the process died here.
        }
        let p = pool(64, policy);
        let c = disk(&p, Arc::new(path.open()), Some(16));
        for k in 0..48 {
            let want = if (40..44).contains(&k) {
                vec![0u8; PAGE_SIZE]
            } else if k % 3 == 0 {
                page(k, 2)
            } else {
                page(k, 1)
            };
            assert_eq!(load(&p, c, k), want, "{policy:?} key {k}");
        }
        assert_eq!(load(&p, c, 1000), vec![0u8; PAGE_SIZE], "never written");
        let s = p.client_stats(c).unwrap();
        assert_eq!(s.frontswap_loads_backing, 49);
    }
}

/// Write-back: a page that is only in the pool is not in the file until it is evicted or
/// flushed; after a flush it is durable and its eviction writes nothing.
#[test]
fn write_back_writes_on_eviction_and_flush() {
    let path = TempPath::new("wb");
    let p = pool(8, FrontswapPolicy::WriteBack);
    let store = Flaky::new(path.open());
    let c = disk(&p, store.clone(), None);
    for k in 0..4 {
        p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
    }
    assert_eq!(store.writes.load(Ordering::Relaxed), 0);
    assert_eq!(file_page(&path, 0), vec![0u8; PAGE_SIZE]);
    assert_eq!(p.flush_client(c).unwrap(), 4);
    assert_eq!(file_page(&path, 2), page(2, 1));
    let g = p.alloc_contig(p.register_client("g"), 8, 1).unwrap();
    assert_eq!(
        store.writes.load(Ordering::Relaxed),
        4,
        "durable pages evict free"
    );
    assert_eq!(p.client_stats(c).unwrap().written_back_pages, 0);
    assert_eq!(load(&p, c, 3), page(3, 1));
    let _ = g;
    p.check_consistency().unwrap();
}

/// Put-back with a limit of its own: evicted pages go to host memory up to the limit, the rest
/// to the file.
#[test]
fn put_back_fills_host_memory_up_to_the_limit_then_the_file() {
    let path = TempPath::new("pb");
    let p = pool(16, FrontswapPolicy::PutBack);
    let c = p.register_client_with(
        "disk",
        ClientOptions {
            frontswap_backing: FrontswapBacking::File(Arc::new(path.open())),
            put_back_limit_pages: Some(5),
            ..ClientOptions::default()
        },
    );
    for k in 0..16 {
        p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
    }
    p.alloc_contig(p.register_client("g"), 16, 1).unwrap();
    let s = p.client_stats(c).unwrap();
    assert_eq!(s.put_back_pages, 5);
    assert_eq!(s.written_back_pages, 11);
    assert_eq!(s.frontswap_host_pages, 5);
    assert_eq!(p.stats().frontswap_backing_only_pages, 11);
    for k in 0..16 {
        assert_eq!(load(&p, c, k), page(k, 1));
    }
    // A flush writes the put-back copies too and frees their host memory.
    assert_eq!(p.flush_client(c).unwrap(), 5);
    assert_eq!(p.client_stats(c).unwrap().frontswap_host_pages, 0);
    p.check_consistency().unwrap();
}

/// A write-back that fails keeps the page in host memory, readable, and is retried with backoff
/// until it succeeds.
#[test]
fn failed_write_backs_are_kept_and_retried() {
    let path = TempPath::new("retry");
    let p = pool(4, FrontswapPolicy::WriteBack);
    let store = Flaky::new(path.open());
    let c = disk(&p, store.clone(), None);
    for k in 0..4 {
        p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
    }
    store.fail_writes.store(true, Ordering::Relaxed);
    let g = p.alloc_contig(p.register_client("g"), 4, 1).unwrap();
    let s = p.stats();
    assert_eq!(s.frontswap_host_pages, 4, "kept in host memory");
    assert_eq!(s.writebacks_waiting, 4);
    assert!(s.backing_write_errors >= 4);
    for k in 0..4 {
        assert_eq!(load(&p, c, k), page(k, 1));
    }
    // Nothing is due before the backoff has passed.
    assert_eq!(p.retry_writebacks(), 0);
    std::thread::sleep(writeback_backoff(1) + Duration::from_millis(5));
    assert_eq!(p.retry_writebacks(), 4, "due now; fails again");
    assert_eq!(p.stats().writebacks_waiting, 4);
    store.fail_writes.store(false, Ordering::Relaxed);
    std::thread::sleep(writeback_backoff(2) + Duration::from_millis(5));
    assert_eq!(p.retry_writebacks(), 4);
    let s = p.stats();
    assert_eq!((s.writebacks_waiting, s.frontswap_host_pages), (0, 0));
    assert_eq!(s.frontswap_backing_only_pages, 4);
    assert_eq!(s.writeback_retries, 8);
    assert_eq!(p.client_stats(c).unwrap().writeback_retries, 8);
    for k in 0..4 {
        assert_eq!(file_page(&path, k), page(k, 1));
        assert_eq!(load(&p, c, k), page(k, 1));
    }
    let _ = g;
    p.check_consistency().unwrap();
}

/// A failed write of a store the pool could not keep refuses the store and invalidates the old
/// copy (the file's bytes are unknown now); it never acknowledges data it does not hold.
#[test]
fn a_failed_direct_write_refuses_the_store() {
    let path = TempPath::new("direct");
    let p = pool(4, FrontswapPolicy::WriteThrough);
    let store = Flaky::new(path.open());
    let c = disk(&p, store.clone(), None);
    p.frontswap_store(c, key(1), &page(1, 1)).unwrap();
    store.fail_writes.store(true, Ordering::Relaxed);
    assert_eq!(
        p.frontswap_store(c, key(1), &page(1, 2)),
        Err(PoolError::Rejected(RejectReason::BackingIo))
    );
    assert_eq!(p.client_stats(c).unwrap().frontswap_stored_pages, 0);
    p.check_consistency().unwrap();
}

/// Invalidation punches the page out of the file; only area 0 exists for a disk.
#[test]
fn invalidation_reads_zero_and_other_areas_are_invalid() {
    let path = TempPath::new("inv");
    let p = pool(8, FrontswapPolicy::WriteThrough);
    let c = disk(&p, Arc::new(path.open()), None);
    for k in 0..6 {
        p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
    }
    assert!(p.frontswap_invalidate_page(c, key(2)).unwrap());
    assert_eq!(load(&p, c, 2), vec![0u8; PAGE_SIZE]);
    assert_eq!(file_page(&path, 2), vec![0u8; PAGE_SIZE]);
    assert_eq!(p.frontswap_invalidate_area(c, 0).unwrap(), 5);
    for k in 0..6 {
        assert_eq!(load(&p, c, k), vec![0u8; PAGE_SIZE]);
    }
    let other = FrontswapKey { area: 1, offset: 0 };
    let mut out = vec![0u8; PAGE_SIZE];
    assert!(matches!(
        p.frontswap_store(c, other, &out.clone()),
        Err(PoolError::Invalid(_))
    ));
    assert!(matches!(
        p.frontswap_load(c, other, &mut out),
        Err(PoolError::Invalid(_))
    ));
    p.check_consistency().unwrap();
}

/// Two disks capped at half the pool each: however hard one swaps, the other keeps its pages in
/// the pool.
#[test]
fn a_capped_client_cannot_push_another_out() {
    for policy in POLICIES {
        let (pa, pb) = (TempPath::new("a"), TempPath::new("b"));
        let p = pool(32, policy);
        let a = disk(&p, Arc::new(pa.open()), Some(16));
        let b = disk(&p, Arc::new(pb.open()), Some(16));
        for k in 0..16 {
            p.frontswap_store(b, key(k), &page(k, 9)).unwrap();
        }
        for round in 0..4 {
            for k in 0..64 {
                p.frontswap_store(a, key(k), &page(k, round)).unwrap();
            }
        }
        let sb = p.client_stats(b).unwrap();
        assert_eq!(sb.frontswap_pool_pages, 16, "{policy:?}");
        assert_eq!(p.client_stats(a).unwrap().frontswap_pool_pages, 16);
        for k in 0..16 {
            assert_eq!(load(&p, b, k), page(k, 9));
        }
        assert_eq!(p.client_stats(b).unwrap().frontswap_loads_pool, 16);
        for k in 0..64 {
            assert_eq!(load(&p, a, k), page(k, 3));
        }
        p.check_consistency().unwrap();
    }
}

/// Shared-backing clients with a cap: under write-through the store still goes to the backing
/// file; otherwise it is refused as over the client's limit.
#[test]
fn a_shared_client_at_its_cap() {
    for policy in POLICIES {
        let p = pool(16, policy);
        let c = p.register_client_with(
            "vm",
            ClientOptions {
                frontswap_cap_pages: Some(2),
                ..ClientOptions::default()
            },
        );
        for k in 0..2 {
            p.frontswap_store(c, key(k), &page(k, 1)).unwrap();
        }
        let r = p.frontswap_store(c, key(2), &page(2, 1));
        if policy == FrontswapPolicy::WriteThrough {
            r.unwrap();
            assert_eq!(load(&p, c, 2), page(2, 1));
            assert_eq!(p.stats().frontswap_backing_only_pages, 1);
        } else {
            assert_eq!(r, Err(PoolError::Rejected(RejectReason::ClientLimit)));
        }
        assert_eq!(p.client_stats(c).unwrap().frontswap_pool_pages, 2);
        p.check_consistency().unwrap();
    }
}

/// A per-client put-back limit under the pool-wide one.
#[test]
fn a_shared_client_put_back_limit() {
    let mut cfg = PoolConfig::new(32);
    cfg.frontswap_policy = FrontswapPolicy::PutBack;
    cfg.put_back_limit_pages = 6;
    let p = Pool::new(cfg).unwrap();
    let a = p.register_client_with(
        "a",
        ClientOptions {
            put_back_limit_pages: Some(4),
            ..ClientOptions::default()
        },
    );
    let b = p.register_client("b");
    for k in 0..4 {
        p.frontswap_store(a, key(k), &page(k, 1)).unwrap();
    }
    assert_eq!(
        p.frontswap_store(a, key(4), &page(4, 1)),
        Err(PoolError::Rejected(RejectReason::PutBackLimit))
    );
    p.frontswap_store(b, key(0), &page(0, 1)).unwrap();
    p.frontswap_store(b, key(1), &page(1, 1)).unwrap();
    assert_eq!(
        p.frontswap_store(b, key(2), &page(2, 1)),
        Err(PoolError::Rejected(RejectReason::PutBackLimit)),
        "the pool-wide ceiling"
    );
    p.check_consistency().unwrap();
}

/// A cleancache cap drops puts of new keys beyond it; a get that keeps the page hits again.
#[test]
fn cleancache_cap_and_get_keep() {
    let p = pool(16, FrontswapPolicy::WriteThrough);
    let c = p.register_client_with(
        "cache",
        ClientOptions {
            cleancache_cap_pages: Some(3),
            ..ClientOptions::default()
        },
    );
    let cc = p.cleancache_new_pool(c).unwrap();
    let k = |i| CleancacheKey {
        pool: cc,
        object: [0; 3],
        index: i,
    };
    for i in 0..3 {
        assert!(p.cleancache_put(c, k(i), &page(i as u64, 1)).unwrap());
    }
    assert!(
        !p.cleancache_put(c, k(3), &page(3, 1)).unwrap(),
        "at the cap"
    );
    assert!(
        p.cleancache_put(c, k(1), &page(1, 2)).unwrap(),
        "replacing is fine"
    );
    let mut out = vec![0u8; PAGE_SIZE];
    for _ in 0..3 {
        assert!(p.cleancache_get_keep(c, k(1), &mut out).unwrap());
        assert_eq!(out, page(1, 2));
    }
    assert!(!p.cleancache_get_keep(c, k(3), &mut out).unwrap());
    let s = p.client_stats(c).unwrap();
    assert_eq!((s.cleancache_pages, s.cleancache_cap_drops), (3, 1));
    assert_eq!((s.cleancache_hits, s.cleancache_misses), (3, 1));
    assert_eq!(p.stats().cleancache_cap_drops, 1);
    p.check_consistency().unwrap();
}

/// Concurrent write-outs of different generations of one key never leave an older one in the
/// file. One thread keeps replacing a few keys (write-back, pool full, so stores alternate between
/// pool pages and direct writes) while another grants and frees the whole pool (evicting them,
/// with write-backs in flight), with slow writes to widen every window. At the end, after a flush,
/// the file holds the last generation of every key, and so does a new pool over it.
#[test]
fn concurrent_write_outs_never_leave_an_older_generation() {
    const KEYS: u64 = 6;
    const ROUNDS: u64 = 300;
    let path = TempPath::new("race");
    let p = pool(4, FrontswapPolicy::WriteBack);
    let store = Flaky::new(path.open());
    store.write_delay_us.store(300, Ordering::Relaxed);
    let c = disk(&p, store.clone(), None);
    let granter = p.register_client("granter");
    let start = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (p, start, stop) = (p.clone(), start.clone(), stop.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut grants = 0;
            while !stop.load(Ordering::Relaxed) {
                // Held a while (stores go to the file), then left free a while (stores go to
                // the pool, and the next grant evicts them).
                if let Ok(g) = p.alloc_contig(granter, 4, 1) {
                    grants += 1;
                    std::thread::sleep(Duration::from_micros(150));
                    p.free_contig(granter, g.first_page).unwrap();
                }
                std::thread::sleep(Duration::from_micros(150));
            }
            grants
        })
    };
    start.wait();
    for gen in 1..=ROUNDS {
        for k in 0..KEYS {
            p.frontswap_store(c, key(k), &page(k, gen)).unwrap();
            // A load in between must see this generation, wherever it went.
            assert_eq!(load(&p, c, k), page(k, gen));
        }
        // And so must every later load: a stale write landing late would show here.
        for k in 0..KEYS {
            assert_eq!(load(&p, c, k), page(k, gen), "key {k} round {gen}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let grants = t.join().unwrap();
    assert!(grants > 0);
    let s = p.client_stats(c).unwrap();
    assert!(s.written_back_pages > 0, "write-backs raced");
    assert!(
        s.file_writes > s.written_back_pages,
        "stores written directly raced"
    );
    p.flush_client(c).unwrap();
    for k in 0..KEYS {
        assert_eq!(file_page(&path, k), page(k, ROUNDS), "key {k}");
    }
    p.check_consistency().unwrap();
    drop(p);
    let p = pool(4, FrontswapPolicy::WriteBack);
    let c = disk(&p, Arc::new(path.open()), None);
    for k in 0..KEYS {
        assert_eq!(load(&p, c, k), page(k, ROUNDS));
    }
}

/// Multi-page stores and loads of a disk do what single-page ones do, with one file write per
/// run of pages that go to the file (all of them under write-through).
#[test]
fn multi_page_runs() {
    for policy in POLICIES {
        let path = TempPath::new("runs");
        let p = pool(16, policy);
        let store = Flaky::new(path.open());
        let c = disk(&p, store.clone(), Some(6));
        let mut model: Vec<Vec<u8>> = vec![vec![0u8; PAGE_SIZE]; 64];
        let runs: [(u64, u64, u64); 5] = [(0, 8, 1), (4, 8, 2), (20, 32, 3), (60, 4, 4), (2, 1, 5)];
        for (first, n, gen) in runs {
            let before = store.writes.load(Ordering::Relaxed);
            let data: Vec<u8> = (0..n).flat_map(|i| page(first + i, gen)).collect();
            p.frontswap_store_pages(c, first, &data).unwrap();
            for i in 0..n {
                model[(first + i) as usize] = page(first + i, gen);
            }
            let writes = store.writes.load(Ordering::Relaxed) - before;
            if policy == FrontswapPolicy::WriteThrough {
                assert_eq!(writes, 1, "one write for the whole run");
            } else {
                assert!(
                    writes <= 1,
                    "{policy:?}: the pages past the cap in one write"
                );
            }
        }
        assert!(p.client_stats(c).unwrap().frontswap_pool_pages <= 6);
        // Read back in runs of several shapes, and page by page.
        let mut out = vec![0u8; 64 * PAGE_SIZE];
        p.frontswap_load_pages(c, 0, &mut out).unwrap();
        for (k, want) in model.iter().enumerate() {
            assert_eq!(
                &out[k * PAGE_SIZE..(k + 1) * PAGE_SIZE],
                &want[..],
                "{policy:?} page {k}"
            );
            assert_eq!(&load(&p, c, k as u64), want);
        }
        let mut piece = vec![0u8; 3 * PAGE_SIZE];
        p.frontswap_load_pages(c, 21, &mut piece).unwrap();
        assert_eq!(&piece[..PAGE_SIZE], &model[21][..]);
        // Bad shapes.
        assert!(p.frontswap_store_pages(c, 0, &[0u8; 100]).is_err());
        assert!(p
            .frontswap_load_pages(c, u64::MAX, &mut [0u8; PAGE_SIZE])
            .is_err());
        let shared = p.register_client("shared");
        assert!(matches!(
            p.frontswap_store_pages(shared, 0, &[0u8; PAGE_SIZE]),
            Err(PoolError::Invalid(_))
        ));
        p.check_consistency().unwrap();
    }
}

/// A failed write of a run refuses the store and leaves none of its pages readable as stale.
#[test]
fn a_failed_run_write_invalidates_its_pages() {
    let path = TempPath::new("runfail");
    let p = pool(8, FrontswapPolicy::WriteThrough);
    let store = Flaky::new(path.open());
    let c = disk(&p, store.clone(), None);
    let old: Vec<u8> = (0..4).flat_map(|i| page(i, 1)).collect();
    p.frontswap_store_pages(c, 0, &old).unwrap();
    store.fail_writes.store(true, Ordering::Relaxed);
    let new: Vec<u8> = (0..4).flat_map(|i| page(i, 2)).collect();
    assert_eq!(
        p.frontswap_store_pages(c, 0, &new),
        Err(PoolError::Rejected(RejectReason::BackingIo))
    );
    assert_eq!(p.client_stats(c).unwrap().frontswap_stored_pages, 0);
    p.check_consistency().unwrap();
}
