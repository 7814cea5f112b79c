//! Concurrent stress test of the GCMA pool: threads taking and returning grants while others put,
//! get, store and load second-class pages, under each frontswap policy. Every thread checks what
//! it reads as it goes (granted pages read as zero; cleancache hits and frontswap loads return the
//! latest data; accepted frontswap pages are never lost); at the end the pool's invariants and
//! accounting are checked and every accepted frontswap page is read back.

#[path = "support/pool_view.rs"]
mod pool_view;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};

use gcma_host::api::{
    CleancacheKey, ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, PAGE_SIZE,
};
use gcma_host::pool::{Pool, PoolConfig};
use pool_view::{MemfdView, Rng};

const NR_PAGES: u64 = 256;
const OPS: u32 = 1500;

fn page_for(tag: u64) -> Vec<u8> {
    let mut p = vec![(tag % 253) as u8; PAGE_SIZE];
    p[..8].copy_from_slice(&tag.to_le_bytes());
    p[PAGE_SIZE - 8..].copy_from_slice(&(!tag).to_le_bytes());
    p
}

fn granter(pool: Arc<Pool>, view: Arc<MemfdView>, client: ClientId, seed: u64) {
    let mut rng = Rng(seed);
    let mut held: Vec<(u64, u64)> = Vec::new();
    for _ in 0..OPS {
        if held.len() < 3 && !rng.next().is_multiple_of(3) {
            let nr = 1 + rng.next() % 48;
            let align = 1 << (rng.next() % 4);
            match pool.alloc_contig(client, nr, align) {
                Ok(g) => {
                    assert_eq!(g.first_page % align, 0);
                    let bytes = view.pages_mut(g.first_page, nr);
                    assert!(bytes.iter().all(|&b| b == 0), "granted page not zero");
                    bytes.fill(0xee);
                    held.push((g.first_page, nr));
                }
                Err(PoolError::Exhausted { .. }) | Err(PoolError::Fragmented { .. }) => {}
                Err(e) => panic!("grant: {e:?}"),
            }
        } else if !held.is_empty() {
            let (f, n) = held.swap_remove((rng.next() % held.len() as u64) as usize);
            assert_eq!(pool.free_contig(client, f), Ok(n));
        }
    }
    for (f, n) in held {
        assert_eq!(pool.free_contig(client, f), Ok(n));
    }
}

/// Returns the frontswap pages it believes are stored, with their data tags.
fn tenant(pool: Arc<Pool>, client: ClientId, seed: u64) -> HashMap<FrontswapKey, u64> {
    let mut rng = Rng(seed);
    let cc_pool = pool.cleancache_new_pool(client).unwrap();
    let mut cc: HashMap<u32, u64> = HashMap::new();
    let mut fs: HashMap<FrontswapKey, u64> = HashMap::new();
    let mut out = vec![0u8; PAGE_SIZE];
    for i in 0..OPS as u64 {
        let tag = seed << 32 | i;
        match rng.next() % 6 {
            0 | 1 => {
                let idx = (rng.next() % 64) as u32;
                let key = CleancacheKey {
                    pool: cc_pool,
                    object: [seed, 1, 2],
                    index: idx,
                };
                if pool.cleancache_put(client, key, &page_for(tag)).unwrap() {
                    cc.insert(idx, tag);
                } else {
                    cc.remove(&idx);
                }
            }
            2 => {
                let idx = (rng.next() % 64) as u32;
                let key = CleancacheKey {
                    pool: cc_pool,
                    object: [seed, 1, 2],
                    index: idx,
                };
                if pool.cleancache_get(client, key, &mut out).unwrap() {
                    let want = cc.remove(&idx).expect("hit on a page never put");
                    assert!(out == page_for(want), "stale cleancache data");
                } else {
                    cc.remove(&idx);
                }
            }
            3 | 4 => {
                let key = FrontswapKey {
                    area: 0,
                    offset: rng.next() % 96,
                };
                match pool.frontswap_store(client, key, &page_for(tag)) {
                    Ok(()) => {
                        fs.insert(key, tag);
                    }
                    Err(PoolError::Rejected(_)) => {
                        fs.remove(&key);
                    }
                    Err(e) => panic!("store: {e:?}"),
                }
            }
            _ => {
                let key = FrontswapKey {
                    area: 0,
                    offset: rng.next() % 96,
                };
                let hit = pool.frontswap_load(client, key, &mut out).unwrap();
                match fs.get(&key) {
                    Some(&want) => {
                        assert!(hit, "accepted frontswap page lost");
                        assert!(out == page_for(want), "stale frontswap data");
                    }
                    None => assert!(!hit),
                }
                if rng.next().is_multiple_of(8) {
                    assert_eq!(
                        pool.frontswap_invalidate_page(client, key).unwrap(),
                        fs.remove(&key).is_some()
                    );
                }
            }
        }
    }
    fs
}

fn stress(policy: FrontswapPolicy) {
    let mut cfg = PoolConfig::new(NR_PAGES);
    cfg.frontswap_policy = policy;
    cfg.put_back_limit_pages = 120;
    let pool = Pool::new(cfg).unwrap();
    let view = Arc::new(MemfdView::new(&pool));
    let barrier = Arc::new(Barrier::new(4));
    let mut granters = Vec::new();
    for t in 0..2u64 {
        let (pool, view, barrier) = (pool.clone(), view.clone(), barrier.clone());
        let c = pool.register_client(&format!("granter{t}"));
        granters.push(std::thread::spawn(move || {
            barrier.wait();
            granter(pool, view, c, 0x1234_5678 + t)
        }));
    }
    let mut tenants = Vec::new();
    for t in 0..2u64 {
        let (p, barrier) = (pool.clone(), barrier.clone());
        let c = pool.register_client(&format!("tenant{t}"));
        tenants.push((
            c,
            std::thread::spawn(move || {
                barrier.wait();
                tenant(p, c, 0x9abc + t)
            }),
        ));
    }
    for g in granters {
        g.join().expect("granter thread");
    }
    let mut out = vec![0u8; PAGE_SIZE];
    let mut stored = 0;
    for (c, h) in tenants {
        let fs = h.join().expect("tenant thread");
        stored += fs.len() as u64;
        for (key, tag) in fs {
            assert!(pool.frontswap_load(c, key, &mut out).unwrap(), "page lost");
            assert!(out == page_for(tag), "stale page");
        }
    }
    pool.check_consistency().expect("consistent pool");
    let s = pool.stats();
    assert_eq!(s.granted_pages, 0);
    assert_eq!(s.live_grants, 0);
    assert_eq!(s.frontswap_stored_pages, stored);
    assert_eq!(
        s.free_zero_pages + s.free_dirty_pages + s.cleancache_pages + s.frontswap_pages,
        NR_PAGES
    );
    assert_eq!(s.grants, s.frees);
    // A whole-pool grant still succeeds and reads as zero, and evicts no accepted page.
    let c = pool.register_client("last");
    let g = pool.alloc_contig(c, NR_PAGES, 1).expect("whole-pool grant");
    assert!(view.pages(0, NR_PAGES).iter().all(|&b| b == 0));
    pool.free_contig(c, g.first_page).unwrap();
    assert_eq!(pool.stats().frontswap_stored_pages, stored);
}

#[test]
fn stress_write_through() {
    stress(FrontswapPolicy::WriteThrough);
}

#[test]
fn stress_write_back() {
    stress(FrontswapPolicy::WriteBack);
}

#[test]
fn stress_put_back() {
    stress(FrontswapPolicy::PutBack);
}
