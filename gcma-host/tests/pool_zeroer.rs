//! The background zeroer: it zeroes idle free pages (and grants then skip them), it stops when
//! dropped, and, racing grants and cleancache/frontswap traffic on real threads, it never lets a
//! grant hold another guest's bytes nor a tenant read anything but its own data.

#[path = "support/pool_view.rs"]
mod pool_view;

use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use gcma_host::api::{
    CleancacheKey, ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, PAGE_SIZE,
};
use gcma_host::pool::{Pool, PoolConfig, Zeroer, ZeroerConfig};
use pool_view::{MemfdView, Rng};

/// Waits until the pool has no dirty free page, failing after a generous deadline (the zeroer
/// must get there; how fast is the eval's business, not a test's).
fn wait_all_zero(pool: &Pool) {
    let t = Instant::now();
    while pool.stats().free_dirty_pages != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the zeroer left {} dirty free pages",
            pool.stats().free_dirty_pages
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Drops `z` on another thread and fails if that does not return within a minute (far below the
/// hour-long idle poll one test sets: a drop must wake the thread, not wait for it).
fn drop_within_deadline(z: Zeroer) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(z);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "dropping the zeroer did not stop its thread"
    );
}

#[test]
fn zeroer_zeroes_idle_pages_and_stops_on_drop() {
    const N: u64 = 2048;
    let pool = Pool::new(PoolConfig::new(N)).unwrap();
    let view = MemfdView::new(&pool);
    let vm = pool.register_client("vm0");
    let g = pool.alloc_contig(vm, N, 1).unwrap();
    view.pages_mut(g.first_page, N).fill(0xa5);
    pool.free_contig(vm, g.first_page).unwrap();
    assert_eq!(pool.stats().free_dirty_pages, N);

    let cfg = ZeroerConfig {
        // An hour: a drop that waited for the poll would never return in time.
        idle_poll: Duration::from_secs(3600),
        ..ZeroerConfig::new(50)
    };
    let z = Zeroer::start(&pool, cfg).unwrap();
    wait_all_zero(&pool);
    let s = pool.stats();
    assert_eq!(s.free_zero_pages, N);
    assert_eq!(s.idle_zeroed_pages, N);
    assert!(s.zeroer_busy_ns > 0);
    let mut registry = prometheus_client::registry::Registry::default();
    pool.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("gcma_zeroer_busy_seconds_total "), "{text}");

    // A grant now zeroes nothing itself, and its pages really are zero.
    let g = pool.alloc_contig(vm, N, 1).unwrap();
    assert_eq!(pool.stats().zeroed_pages, s.zeroed_pages);
    assert!(view.pages_mut(g.first_page, N).iter().all(|&b| b == 0));
    view.pages_mut(g.first_page, N).fill(0x5a);
    pool.free_contig(vm, g.first_page).unwrap();

    // Stopped by the drop (which woke it from its hour-long idle poll): it zeroes no more.
    drop_within_deadline(z);
    std::thread::sleep(Duration::from_millis(50));
    let after = pool.stats();
    assert_eq!(after.free_dirty_pages, N);
    assert_eq!(after.idle_zeroed_pages, N);
    pool.check_consistency().unwrap();
}

#[test]
fn zeroer_ends_with_its_pool_and_refuses_bad_shares() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    for pct in [0, 101] {
        assert!(matches!(
            Zeroer::start(&pool, ZeroerConfig::new(pct)),
            Err(PoolError::Invalid(_))
        ));
    }
    let z = Zeroer::start(&pool, ZeroerConfig::new(100)).unwrap();
    // It holds no strong reference: the pool goes when its owners drop it.
    let weak = Arc::downgrade(&pool);
    drop(pool);
    assert!(weak.upgrade().is_none());
    drop_within_deadline(z);
}

const RACE_PAGES: u64 = 512;
const RACE_OPS: u32 = 3000;

fn tag_page(tag: u64) -> Vec<u8> {
    let mut p = vec![(tag % 251) as u8 | 1; PAGE_SIZE];
    p[..8].copy_from_slice(&tag.to_le_bytes());
    p
}

/// Takes and returns grants; every grant must read as zero when handed out, then is filled with
/// this guest's mark so that a later grant holding it would be caught.
fn granter(pool: Arc<Pool>, view: Arc<MemfdView>, c: ClientId, seed: u64, start: Arc<Barrier>) {
    let mut rng = Rng(seed);
    let mut held: Vec<(u64, u64)> = Vec::new();
    let mark = 0xe0 | (seed as u8 & 0x0f);
    start.wait();
    for _ in 0..RACE_OPS {
        if held.len() < 3 && !rng.next().is_multiple_of(3) {
            let nr = 1 + rng.next() % 96;
            let align = 1 << (rng.next() % 3);
            match pool.alloc_contig(c, nr, align) {
                Ok(g) => {
                    let bytes = view.pages_mut(g.first_page, nr);
                    if let Some(i) = bytes.iter().position(|&b| b != 0) {
                        panic!(
                            "grant at page {} holds byte {:#x} at offset {i}",
                            g.first_page, bytes[i]
                        );
                    }
                    bytes.fill(mark);
                    held.push((g.first_page, nr));
                }
                Err(PoolError::Exhausted { .. }) | Err(PoolError::Fragmented { .. }) => {}
                Err(e) => panic!("grant: {e:?}"),
            }
        } else if !held.is_empty() {
            let (f, n) = held.swap_remove((rng.next() % held.len() as u64) as usize);
            assert_eq!(pool.free_contig(c, f), Ok(n));
        }
    }
    for (f, n) in held {
        assert_eq!(pool.free_contig(c, f), Ok(n));
    }
}

/// Cleancache and frontswap traffic of one guest; every hit must be this guest's latest data.
fn tenant(pool: Arc<Pool>, c: ClientId, seed: u64, start: Arc<Barrier>) {
    let mut rng = Rng(seed);
    let cc = pool.cleancache_new_pool(c).unwrap();
    let mut fs_version = [0u64; 128];
    let mut out = vec![0u8; PAGE_SIZE];
    start.wait();
    for _ in 0..RACE_OPS {
        let k = rng.next() % 128;
        let cc_key = CleancacheKey {
            pool: cc,
            object: [seed, 0, 0],
            index: k as u32,
        };
        let fs_key = FrontswapKey { area: 0, offset: k };
        match rng.next() % 4 {
            0 => {
                pool.cleancache_put(c, cc_key, &tag_page(seed << 32 | k))
                    .unwrap();
            }
            1 => {
                if pool.cleancache_get(c, cc_key, &mut out).unwrap() {
                    assert_eq!(out, tag_page(seed << 32 | k), "cleancache: foreign bytes");
                }
            }
            2 => {
                let v = fs_version[k as usize] + 1;
                let tag = seed << 48 | v << 16 | k;
                match pool.frontswap_store(c, fs_key, &tag_page(tag)) {
                    Ok(()) => fs_version[k as usize] = v,
                    Err(PoolError::Rejected(_)) => fs_version[k as usize] = 0,
                    Err(e) => panic!("store: {e:?}"),
                }
            }
            _ => {
                let v = fs_version[k as usize];
                let hit = pool.frontswap_load(c, fs_key, &mut out).unwrap();
                assert_eq!(hit, v != 0, "frontswap lost or invented a page");
                if hit {
                    assert_eq!(
                        out,
                        tag_page(seed << 48 | v << 16 | k),
                        "frontswap: foreign bytes"
                    );
                }
            }
        }
    }
}

/// The invariant under a race: a zeroer at full speed that never pauses, two granters and two
/// tenants on real threads, for several seeds and each frontswap policy. Afterwards the pool is
/// consistent, and with the traffic gone the zeroer's "known zero" pages really are zero (a
/// grant of the whole pool zeroes nothing and reads all zero).
#[test]
fn grant_never_holds_foreign_bytes_with_zeroer_racing() {
    let policies = [
        FrontswapPolicy::WriteThrough,
        FrontswapPolicy::WriteBack,
        FrontswapPolicy::PutBack,
    ];
    let mut zeroed_ahead = 0;
    for (round, seed) in (1..=6u64).enumerate() {
        let mut cfg = PoolConfig::new(RACE_PAGES);
        cfg.frontswap_policy = policies[round % policies.len()];
        let pool = Pool::new(cfg).unwrap();
        let view = Arc::new(MemfdView::new(&pool));
        let zcfg = ZeroerConfig {
            idle_poll: Duration::ZERO,
            step_aside_pause: Duration::ZERO,
            ..ZeroerConfig::new(100)
        };
        let zeroer = Zeroer::start(&pool, zcfg).unwrap();
        let start = Arc::new(Barrier::new(4));
        let mut threads = Vec::new();
        for i in 0..2u64 {
            let c = pool.register_client(&format!("granter{i}"));
            let (pool, view, start) = (pool.clone(), view.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                granter(pool, view, c, seed * 16 + i, start)
            }));
        }
        let mut tenants = Vec::new();
        for i in 0..2u64 {
            let c = pool.register_client(&format!("tenant{i}"));
            tenants.push(c);
            let (pool, start) = (pool.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                tenant(pool, c, seed * 16 + 8 + i, start)
            }));
        }
        for t in threads {
            t.join().expect("worker thread");
        }
        pool.check_consistency().unwrap();
        for c in tenants {
            pool.unregister_client(c).unwrap();
        }
        wait_all_zero(&pool);
        drop_within_deadline(zeroer);
        let s = pool.stats();
        zeroed_ahead += s.idle_zeroed_pages;
        assert_eq!(s.free_zero_pages, RACE_PAGES);
        let c = pool.register_client("whole pool");
        let g = pool.alloc_contig(c, RACE_PAGES, 1).unwrap();
        assert_eq!(pool.stats().zeroed_pages, s.zeroed_pages);
        assert!(view
            .pages_mut(g.first_page, RACE_PAGES)
            .iter()
            .all(|&b| b == 0));
        pool.free_contig(c, g.first_page).unwrap();
        pool.check_consistency().unwrap();
    }
    // The zeroer really raced: it zeroed pages while the others ran and after.
    assert!(zeroed_ahead > 0);
}

/// Grants prefer runs that are already zero: with tenants in the lowest fitting run and the
/// highest one all known-zero, a grant takes the highest and evicts and zeroes nothing.
#[test]
fn grant_prefers_known_zero_run() {
    const N: u64 = 256;
    let pool = Pool::new(PoolConfig::new(N)).unwrap();
    let vm = pool.register_client("vm0");
    let cc = pool.cleancache_new_pool(vm).unwrap();
    let a = pool.alloc_contig(vm, N / 2, 1).unwrap();
    let b = pool.alloc_contig(vm, N / 2, 1).unwrap();
    assert_eq!((a.first_page, b.first_page), (0, N / 2));
    // Freed, the low half is dirty; puts take the newest-freed dirty pages, the top of it.
    pool.free_contig(vm, a.first_page).unwrap();
    for i in 0..N / 4 {
        let key = CleancacheKey {
            pool: cc,
            object: [0, 0, 0],
            index: i as u32,
        };
        assert!(pool.cleancache_put(vm, key, &tag_page(i)).unwrap());
    }
    pool.free_contig(vm, b.first_page).unwrap();
    assert_eq!(pool.zero_idle_pages(u64::MAX), N - N / 4);
    let before = pool.stats();
    let g = pool.alloc_contig(vm, N / 2, 1).unwrap();
    let after = pool.stats();
    assert_eq!(g.first_page, N / 2, "the lowest fit holds the tenants");
    assert_eq!(after.zeroed_pages, before.zeroed_pages);
    assert_eq!(after.cleancache_pages, N / 4);
    pool.free_contig(vm, g.first_page).unwrap();
    // A lowest fit that is all known-zero is taken as it is.
    let g = pool.alloc_contig(vm, 1, 1).unwrap();
    assert_eq!(g.first_page, 0);
    pool.free_contig(vm, g.first_page).unwrap();
    pool.check_consistency().unwrap();
}

/// The zeroer's thread runs in the SCHED_IDLE class (policy 5 in /proc's `stat`, field 41).
#[test]
fn the_zeroer_thread_only_takes_idle_cpu() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let z = Zeroer::start(&pool, ZeroerConfig::default()).unwrap();
    let policy = |stat: &str| -> Option<u32> {
        let after_comm = &stat[stat.rfind(')')? + 2..];
        // Fields from 3 (state) on; policy is field 41.
        after_comm.split(' ').nth(41 - 3)?.parse().ok()
    };
    let t = Instant::now();
    let found = loop {
        let found = std::fs::read_dir("/proc/thread-self/..")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "gcma-zeroer")
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter_map(|s| policy(&s))
            .collect::<Vec<_>>();
        // Other tests' zeroers start in parallel: a thread is named before it changes its own
        // class, so wait for a moment where every zeroer thread has done so.
        let all_idle = found.iter().all(|&p| p == libc::SCHED_IDLE as u32);
        if (!found.is_empty() && all_idle) || t.elapsed() > Duration::from_secs(30) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!found.is_empty(), "no gcma-zeroer thread found");
    assert!(
        found.iter().all(|&p| p == libc::SCHED_IDLE as u32),
        "zeroer scheduling policies {found:?}"
    );
    drop_within_deadline(z);
}
