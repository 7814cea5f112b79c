//! Huge pages in the pool: where grants are placed (2 MiB-aligned from 512 pages; whole 2 MiB
//! pages on a hugetlb pool), checked step by step against a page-level model while cleancache
//! and frontswap tenants keep working at 4 KiB inside the huge backing; and the backing itself
//! (hugetlb pages really taken and kept resident, THP pools).
//!
//! The hugetlb and THP tests need the host set up as `ci/setup.sh` does; without it they print
//! `SKIPPED` (and fail under `CI=true`).

#[path = "support/pool_view.rs"]
mod pool_view;

use gcma_host::api::{CleancacheKey, ClientId, FrontswapKey, GcmaBackend, PoolError, PAGE_SIZE};
use gcma_host::huge::{self, HugePages};
use gcma_host::pool::{Pool, PoolConfig, HUGE_ALIGN_MIN_PAGES};
use pool_view::{MemfdView, Rng};

const HUGE: u64 = 512;

fn huge_pool(nr_pages: u64, backing: HugePages) -> Option<std::sync::Arc<Pool>> {
    if let Err(why) = huge::available(backing, nr_pages * PAGE_SIZE as u64) {
        e2e_tests::skip(&format!("{backing} pool"), why);
        return None;
    }
    let mut cfg = PoolConfig::new(nr_pages);
    cfg.huge_pages = backing;
    Some(Pool::new(cfg).expect("the host has the huge pages this pool needs"))
}

/// The model: which pool pages are granted, and the grants by first page.
struct Model {
    granted: Vec<bool>,
    grants: Vec<(u64, u64, u64, u8)>, // first page, asked pages, span pages, fill byte
}

impl Model {
    fn fits(&self, start: u64, span: u64) -> bool {
        start + span <= self.granted.len() as u64
            && !self.granted[start as usize..(start + span) as usize]
                .iter()
                .any(|&g| g)
    }

    /// Whether a run of `span` pages is free at some multiple of `align`.
    fn fits_aligned(&self, span: u64, align: u64) -> bool {
        (0..self.granted.len() as u64)
            .step_by(align as usize)
            .any(|s| self.fits(s, span))
    }

    fn mark(&mut self, start: u64, span: u64, on: bool) {
        for g in &mut self.granted[start as usize..(start + span) as usize] {
            *g = on;
        }
    }
}

/// Random grants, frees and tenant traffic on `pool`, every step checked against the model:
/// grants start at a multiple of the alignment asked for and of the pool's unit; a grant of
/// 512 pages or more starts at a 2 MiB boundary whenever the model has such a run free; a grant
/// fails only when the model has no fitting run; spans never overlap; every granted page
/// (the whole span) reads zero; frontswap pages come back intact.
fn run_model(pool: &Pool, seed: u64, steps: u32) {
    let unit = pool.grant_unit_pages();
    let n = pool.nr_pages();
    let view = MemfdView::new(pool);
    let vm: ClientId = pool.register_client("grants");
    let tenant = pool.register_client("tenant");
    let cc = pool.cleancache_new_pool(tenant).unwrap();
    let mut m = Model {
        granted: vec![false; n as usize],
        grants: Vec::new(),
    };
    let mut fs_stored: Vec<(u64, u8)> = Vec::new();
    let mut rng = Rng(seed);
    for step in 0..steps {
        let ctx = format!("seed {seed:#x} step {step}");
        match rng.next() % 8 {
            0..=2 => {
                let nr = match rng.next() % 3 {
                    0 => 1 + rng.next() % 64,
                    1 => 400 + rng.next() % 700,
                    _ => 1 + rng.next() % (n / 4),
                };
                let align = 1u64 << (rng.next() % 4);
                let span = nr.next_multiple_of(unit);
                let req = align.max(unit);
                let could = m.fits_aligned(span, req);
                let could_huge = span >= HUGE_ALIGN_MIN_PAGES && m.fits_aligned(span, HUGE);
                match pool.alloc_contig(vm, nr, align) {
                    Ok(g) => {
                        assert_eq!(g.nr_pages, nr, "{ctx}: the guest is told what it asked");
                        assert_eq!(g.first_page % req, 0, "{ctx}: alignment {req}");
                        if could_huge {
                            assert_eq!(
                                g.first_page % HUGE,
                                0,
                                "{ctx}: {nr} pages not 2 MiB-aligned"
                            );
                        }
                        assert!(m.fits(g.first_page, span), "{ctx}: overlaps a grant");
                        assert!(
                            view.pages(g.first_page, span).iter().all(|&b| b == 0),
                            "{ctx}: a granted page holds old bytes"
                        );
                        m.mark(g.first_page, span, true);
                        let byte = 1 + (rng.next() % 250) as u8;
                        view.fill(g.first_page, span, byte);
                        m.grants.push((g.first_page, nr, span, byte));
                    }
                    Err(PoolError::Exhausted { .. } | PoolError::Fragmented { .. }) => {
                        assert!(!could, "{ctx}: {nr} pages refused though a run was free");
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            3 | 4 if !m.grants.is_empty() => {
                let i = (rng.next() % m.grants.len() as u64) as usize;
                let (first, _, span, byte) = m.grants.swap_remove(i);
                assert!(
                    view.pages(first, span).iter().all(|&b| b == byte),
                    "{ctx}: someone wrote into a grant"
                );
                assert_eq!(pool.free_contig(vm, first).unwrap(), span, "{ctx}");
                m.mark(first, span, false);
            }
            5 => {
                for _ in 0..32 {
                    let idx = rng.next() % 4096;
                    let key = CleancacheKey {
                        pool: cc,
                        object: [1, 0, 0],
                        index: idx as u32,
                    };
                    let _ = pool
                        .cleancache_put(tenant, key, &[(idx % 251) as u8; PAGE_SIZE])
                        .unwrap();
                }
            }
            _ => {
                for _ in 0..32 {
                    let off = rng.next() % 2048;
                    let byte = (rng.next() % 255) as u8 + 1;
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    if pool
                        .frontswap_store(tenant, key, &[byte; PAGE_SIZE])
                        .is_ok()
                    {
                        fs_stored.retain(|&(o, _)| o != off);
                        fs_stored.push((off, byte));
                    }
                }
                let mut out = vec![0u8; PAGE_SIZE];
                for &(off, byte) in &fs_stored {
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    assert!(pool.frontswap_load(tenant, key, &mut out).unwrap(), "{ctx}");
                    assert!(out.iter().all(|&b| b == byte), "{ctx}: frontswap data lost");
                }
            }
        }
        pool.check_consistency().unwrap();
        let granted: u64 = m.grants.iter().map(|g| g.2).sum();
        assert_eq!(pool.stats().granted_pages, granted, "{ctx}");
    }
    pool.unregister_client(vm).unwrap();
    pool.unregister_client(tenant).unwrap();
    assert_eq!(pool.stats().granted_pages, 0);
}

#[test]
fn large_grants_start_at_2mib_on_a_4k_pool() {
    for seed in [1, 0x9e37_79b9, 0xdead_beef, 42] {
        let pool = Pool::new(PoolConfig::new(8192)).unwrap();
        assert_eq!(pool.grant_unit_pages(), 1);
        run_model(&pool, seed, 300);
    }
}

#[test]
fn a_large_grant_falls_back_when_no_2mib_place_is_free() {
    let pool = Pool::new(PoolConfig::new(2048)).unwrap();
    let c = pool.register_client("vm");
    // 1 page at 0 and 1 at 1024 leave runs of 1023 pages at 1 and 1025: no 2 MiB-aligned
    // place for 600 pages, but unaligned ones.
    let a = pool.alloc_contig(c, 1, 1).unwrap();
    assert_eq!(a.first_page, 0);
    let b = pool.alloc_contig(c, 600, 1).unwrap();
    assert_eq!(b.first_page, 512, "a 2 MiB place was free");
    let d = pool.alloc_contig(c, 700, 1).unwrap();
    assert_eq!(
        d.first_page, 1112,
        "no 2 MiB place left: the lowest unaligned fit"
    );
    let small = pool.alloc_contig(c, 3, 1).unwrap();
    assert_eq!(
        small.first_page, 1,
        "small grants are not moved to 2 MiB places"
    );
}

#[test]
fn hugetlb_pool_carves_grants_in_whole_huge_pages() {
    let Some(pool) = huge_pool(16 * HUGE, HugePages::Hugetlb) else {
        return;
    };
    assert_eq!(pool.grant_unit_pages(), HUGE);
    for seed in [7, 0x1234_5678] {
        run_model(&pool, seed, 200);
    }
    // A one-page grant takes a whole huge page no one else shares; the pool says so.
    let c = pool.register_client("small");
    let before = pool.stats().granted_pages;
    let g = pool.alloc_contig(c, 1, 1).unwrap();
    assert_eq!((g.nr_pages, g.first_page % HUGE), (1, 0));
    assert_eq!(pool.stats().granted_pages - before, HUGE);
    assert_eq!(pool.free_contig(c, g.first_page).unwrap(), HUGE);
}

#[test]
fn hugetlb_pool_takes_its_pages_and_keeps_them_through_eviction() {
    let pages = 8 * HUGE;
    let free_before = huge::free_hugetlb_pages();
    let Some(pool) = huge_pool(pages, HugePages::Hugetlb) else {
        return;
    };
    let free_after = huge::free_hugetlb_pages().unwrap();
    // Others may take huge pages meanwhile; ours are gone from the free count at least.
    assert!(
        free_before.unwrap() >= free_after + 8,
        "a hugetlb pool of 8 huge pages took {:?} -> {free_after}",
        free_before
    );
    let vm = pool.register_client("vm");
    let cc = pool.cleancache_new_pool(vm).unwrap();
    for i in 0..pages {
        let key = CleancacheKey {
            pool: cc,
            object: [2, 0, 0],
            index: i as u32,
        };
        pool.cleancache_put(vm, key, &[7; PAGE_SIZE]).unwrap();
    }
    // Granting evicts cleancache pages (bookkeeping + zeroing): no page goes back to the host.
    let g = pool.alloc_contig(vm, pages, 1).unwrap();
    assert_eq!(pool.stats().cleancache_pages, 0);
    assert!(huge::free_hugetlb_pages().unwrap() <= free_after);
    pool.free_contig(vm, g.first_page).unwrap();
    drop(pool);
}

#[test]
fn thp_pool_works_at_4k_and_gets_huge_pages() {
    let pages = 16 * HUGE;
    let shmem_huge_kb = || huge::meminfo_field("ShmemHugePages:").unwrap_or(0);
    let before = shmem_huge_kb();
    let Some(pool) = huge_pool(pages, HugePages::Thp) else {
        return;
    };
    let after = shmem_huge_kb();
    assert!(
        after > before,
        "a {pages}-page THP pool left ShmemHugePages at {before} -> {after} kB"
    );
    assert_eq!(pool.grant_unit_pages(), 1, "THP pools keep 4 KiB grants");
    run_model(&pool, 3, 200);
}

#[test]
fn hugetlb_pool_size_must_be_whole_huge_pages() {
    let mut cfg = PoolConfig::new(HUGE + 1);
    cfg.huge_pages = HugePages::Hugetlb;
    assert!(matches!(Pool::new(cfg), Err(PoolError::Invalid(_))));
}
