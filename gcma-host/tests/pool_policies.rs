//! Deterministic tests of the pool's policies and error paths: where evicted frontswap pages go
//! under each policy, the put-back limit, exhausted versus fragmented, LRU order, bad input,
//! hugetlb without huge pages.

use gcma_host::api::{
    CleancacheKey, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, RejectReason, PAGE_SIZE,
};
use gcma_host::pool::{Pool, PoolConfig};

fn pool(nr: u64, policy: FrontswapPolicy) -> std::sync::Arc<Pool> {
    let mut cfg = PoolConfig::new(nr);
    cfg.frontswap_policy = policy;
    cfg.put_back_limit_pages = 4;
    Pool::new(cfg).unwrap()
}

fn page(b: u8) -> Vec<u8> {
    vec![b; PAGE_SIZE]
}

fn fs_key(o: u64) -> FrontswapKey {
    FrontswapKey { area: 0, offset: o }
}

/// Fills an 8-page pool with 8 frontswap pages, grants all of it, and checks every page survives
/// where the policy says it goes.
fn evict_all(policy: FrontswapPolicy) -> gcma_host::pool::PoolStats {
    let p = pool(8, policy);
    let c = p.register_client("vm");
    let n = if policy == FrontswapPolicy::PutBack {
        4
    } else {
        8
    };
    for i in 0..n {
        p.frontswap_store(c, fs_key(i), &page(i as u8 + 1)).unwrap();
    }
    let g = p.alloc_contig(c, 8, 1).unwrap();
    let mut out = page(0);
    for i in 0..n {
        assert!(p.frontswap_load(c, fs_key(i), &mut out).unwrap());
        assert_eq!(out, page(i as u8 + 1));
    }
    let s = p.stats();
    assert_eq!(s.frontswap_pages, 0);
    assert_eq!(s.evictions_grant[1], n);
    p.check_consistency().unwrap();
    // A store with every page granted: write-through keeps it in the backing file, the others
    // refuse it (and the old copy of the key is gone).
    let r = p.frontswap_store(c, fs_key(0), &page(99));
    if policy == FrontswapPolicy::WriteThrough {
        r.unwrap();
        assert!(p.frontswap_load(c, fs_key(0), &mut out).unwrap());
        assert_eq!(out, page(99));
    } else {
        assert_eq!(r, Err(PoolError::Rejected(RejectReason::PoolFull)));
        assert!(!p.frontswap_load(c, fs_key(0), &mut out).unwrap());
    }
    p.free_contig(c, g.first_page).unwrap();
    p.check_consistency().unwrap();
    s
}

#[test]
fn write_through_eviction_drops_pool_copy() {
    let s = evict_all(FrontswapPolicy::WriteThrough);
    assert_eq!(s.frontswap_backing_only_pages, 8);
    assert_eq!(s.backing_writes, 8);
    assert_eq!(s.written_back_pages, 0);
    assert_eq!(s.frontswap_loads_backing, 8);
}

#[test]
fn write_back_eviction_writes_to_backing() {
    let s = evict_all(FrontswapPolicy::WriteBack);
    assert_eq!(s.backing_writes, 0);
    assert_eq!(s.written_back_pages, 8);
    assert_eq!(s.frontswap_backing_only_pages, 8);
    assert_eq!(s.frontswap_host_pages, 0);
}

#[test]
fn put_back_eviction_copies_to_host_memory() {
    let s = evict_all(FrontswapPolicy::PutBack);
    assert_eq!(s.put_back_pages, 4);
    assert_eq!(s.frontswap_host_pages, 4);
    assert_eq!(s.frontswap_loads_host, 4);
}

#[test]
fn put_back_limit_rejects_new_keys_but_allows_replacing() {
    let p = pool(16, FrontswapPolicy::PutBack);
    let c = p.register_client("vm");
    for i in 0..4 {
        p.frontswap_store(c, fs_key(i), &page(1)).unwrap();
    }
    assert_eq!(
        p.frontswap_store(c, fs_key(9), &page(1)),
        Err(PoolError::Rejected(RejectReason::PutBackLimit))
    );
    p.frontswap_store(c, fs_key(2), &page(7)).unwrap();
    let mut out = page(0);
    assert!(p.frontswap_load(c, fs_key(2), &mut out).unwrap());
    assert_eq!(out, page(7));
    assert_eq!(p.stats().frontswap_rejects, [0, 1, 0, 0]);
}

#[test]
fn client_limit_rejects() {
    let mut cfg = PoolConfig::new(16);
    cfg.client_frontswap_limit_pages = Some(2);
    let p = Pool::new(cfg).unwrap();
    let (a, b) = (p.register_client("a"), p.register_client("b"));
    p.frontswap_store(a, fs_key(0), &page(1)).unwrap();
    p.frontswap_store(a, fs_key(1), &page(1)).unwrap();
    assert_eq!(
        p.frontswap_store(a, fs_key(2), &page(1)),
        Err(PoolError::Rejected(RejectReason::ClientLimit))
    );
    p.frontswap_store(b, fs_key(2), &page(1)).unwrap();
}

#[test]
fn exhausted_versus_fragmented() {
    let p = pool(16, FrontswapPolicy::WriteThrough);
    let c = p.register_client("vm");
    let a = p.alloc_contig(c, 4, 1).unwrap();
    let b = p.alloc_contig(c, 4, 1).unwrap();
    let _d = p.alloc_contig(c, 4, 1).unwrap();
    assert_eq!((a.first_page, b.first_page), (0, 4), "lowest fit");
    assert_eq!(
        p.alloc_contig(c, 5, 1),
        Err(PoolError::Exhausted {
            requested: 5,
            available: 4
        })
    );
    p.free_contig(c, a.first_page).unwrap();
    assert_eq!(
        p.alloc_contig(c, 5, 1),
        Err(PoolError::Fragmented {
            requested: 5,
            largest_run: 4
        })
    );
    // Aligned requests fit at pages 0 and 12 only; the first takes 12 (known zero) over 0 (freed,
    // dirty): grants prefer the run with fewer pages to zero.
    assert_eq!(p.alloc_contig(c, 4, 4).unwrap().first_page, 12);
    assert_eq!(p.alloc_contig(c, 4, 4).unwrap().first_page, 0);
    assert_eq!(p.stats().grant_failures_exhausted, 1);
    assert_eq!(p.stats().grant_failures_fragmented, 1);
}

#[test]
fn other_clients_cannot_free_or_read() {
    let p = pool(16, FrontswapPolicy::WriteThrough);
    let (a, b) = (p.register_client("a"), p.register_client("b"));
    let g = p.alloc_contig(a, 2, 1).unwrap();
    assert_eq!(
        p.free_contig(b, g.first_page),
        Err(PoolError::UnknownGrant(g.first_page))
    );
    let cc = p.cleancache_new_pool(a).unwrap();
    let key = CleancacheKey {
        pool: cc,
        object: [1, 2, 3],
        index: 0,
    };
    p.cleancache_put(a, key, &page(5)).unwrap();
    let mut out = page(0);
    assert_eq!(
        p.cleancache_get(b, key, &mut out),
        Err(PoolError::UnknownPool(cc))
    );
    p.frontswap_store(a, fs_key(1), &page(3)).unwrap();
    assert!(!p.frontswap_load(b, fs_key(1), &mut out).unwrap());
    assert!(p.cleancache_get(a, key, &mut out).unwrap());
    assert_eq!(out, page(5));
}

#[test]
fn cleancache_evicts_in_lru_order_and_never_evicts_frontswap() {
    let p = pool(4, FrontswapPolicy::WriteThrough);
    let c = p.register_client("vm");
    let cc = p.cleancache_new_pool(c).unwrap();
    let key = |i| CleancacheKey {
        pool: cc,
        object: [0; 3],
        index: i,
    };
    p.frontswap_store(c, fs_key(0), &page(9)).unwrap();
    for i in 0..3 {
        assert!(p.cleancache_put(c, key(i), &page(i as u8)).unwrap());
    }
    // Replacing key 0 makes it the most recently used; key 1 is now the oldest.
    assert!(p.cleancache_put(c, key(0), &page(10)).unwrap());
    assert!(p.cleancache_put(c, key(3), &page(3)).unwrap());
    let mut out = page(0);
    assert!(!p.cleancache_get(c, key(1), &mut out).unwrap());
    assert!(p.cleancache_get(c, key(0), &mut out).unwrap());
    assert_eq!(out, page(10));
    assert!(p.frontswap_load(c, fs_key(0), &mut out).unwrap());
    assert_eq!(p.stats().evictions_pressure, [1, 0]);
    // Flushing the object drops its remaining pages (keys 2, 3).
    assert_eq!(p.cleancache_flush_object(c, cc, [0; 3]).unwrap(), 2);
    assert_eq!(p.stats().cleancache_pages, 0);
}

#[test]
fn frontswap_store_evicts_cleancache_before_frontswap() {
    let p = pool(2, FrontswapPolicy::WriteBack);
    let c = p.register_client("vm");
    let cc = p.cleancache_new_pool(c).unwrap();
    let key = CleancacheKey {
        pool: cc,
        object: [0; 3],
        index: 0,
    };
    p.frontswap_store(c, fs_key(0), &page(1)).unwrap();
    assert!(p.cleancache_put(c, key, &page(2)).unwrap());
    p.frontswap_store(c, fs_key(1), &page(3)).unwrap();
    assert_eq!(p.stats().evictions_pressure, [1, 0]);
    // Now only frontswap pages: the oldest is written back to make room.
    p.frontswap_store(c, fs_key(2), &page(4)).unwrap();
    let s = p.stats();
    assert_eq!(s.evictions_pressure, [1, 1]);
    assert_eq!(s.written_back_pages, 1);
    let mut out = page(0);
    for (k, b) in [(0, 1), (1, 3), (2, 4)] {
        assert!(p.frontswap_load(c, fs_key(k), &mut out).unwrap());
        assert_eq!(out, page(b));
    }
    p.check_consistency().unwrap();
}

#[test]
fn bad_config_is_an_error() {
    assert!(matches!(
        Pool::new(PoolConfig::new(0)),
        Err(PoolError::Invalid(_))
    ));
    let mut cfg = PoolConfig::new(100);
    cfg.huge_pages = gcma_host::huge::HugePages::Hugetlb;
    assert!(matches!(Pool::new(cfg), Err(PoolError::Invalid(_))));
    let mut cfg = PoolConfig::new(u64::MAX / 2);
    cfg.huge_pages = gcma_host::huge::HugePages::Off;
    assert!(matches!(Pool::new(cfg), Err(PoolError::Invalid(_))));
}

#[test]
fn hugetlb_without_huge_pages_says_so() {
    let mut cfg = PoolConfig::new(512);
    cfg.huge_pages = gcma_host::huge::HugePages::Hugetlb;
    match Pool::new(cfg) {
        // The host has free 2 MiB pages: the pool works.
        Ok(p) => {
            let c = p.register_client("vm");
            assert_eq!(p.alloc_contig(c, 512, 512).unwrap().first_page, 0);
        }
        Err(PoolError::Io { context, .. }) => {
            assert!(
                context.contains("nr_hugepages") || context.contains("memfd_create"),
                "{context}"
            )
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn idle_zeroing_makes_grants_skip_zeroing() {
    let p = pool(64, FrontswapPolicy::WriteThrough);
    let c = p.register_client("vm");
    let g = p.alloc_contig(c, 64, 1).unwrap();
    assert_eq!(p.stats().zeroed_pages, 0, "a fresh pool is known zero");
    p.free_contig(c, g.first_page).unwrap();
    assert_eq!(p.stats().free_dirty_pages, 64);
    assert_eq!(p.zero_idle_pages(40), 40);
    assert_eq!(p.zero_idle_pages(1000), 24);
    assert_eq!(p.zero_idle_pages(1000), 0);
    let s = p.stats();
    assert_eq!((s.free_zero_pages, s.idle_zeroed_pages), (64, 64));
    p.alloc_contig(c, 64, 1).unwrap();
    assert_eq!(p.stats().zeroed_pages, 0);
    p.check_consistency().unwrap();
}

#[test]
fn mlock_either_locks_or_says_why() {
    let mut cfg = PoolConfig::new(64);
    cfg.mlock = true;
    match Pool::new(cfg) {
        Ok(p) => assert!(p.config().mlock),
        Err(PoolError::Io { context, .. }) => {
            assert!(context.contains("RLIMIT_MEMLOCK"), "{context}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}
