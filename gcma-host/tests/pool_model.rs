//! Model-based property test of the GCMA pool: random interleavings of every operation by several
//! clients, under all three frontswap policies, checked step by step against a simple model.
//!
//! Asserted after every step: tmem semantics (cleancache hits return the latest put and remove the
//! page; misses are allowed), no accepted frontswap page is ever lost or stale, granted pages read
//! as zero through the memfd mapping, grants fail only when they must (and say why correctly),
//! bad input changes nothing, and the pool's accounting adds up.
//!
//! Kept as one file although it is long: the model, its operations and the per-step checks are
//! one test; the disk-client model at the end reuses the same harness.

#[path = "support/pool_view.rs"]
mod pool_view;

use std::collections::HashMap;
use std::sync::Arc;

use gcma_host::api::{
    CleancacheKey, ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, RejectReason,
    PAGE_SIZE,
};
use gcma_host::pool::{Pool, PoolConfig, PoolStats};
use pool_view::MemfdView;
use proptest::prelude::*;

const NR_PAGES: u64 = 48;
const NR_CLIENTS: usize = 3;
const PUT_BACK_LIMIT: u64 = 20;
const CLIENT_LIMIT: u64 = 18;

/// Page contents that identify their key and version: mix-ups and stale data show.
fn page_for(tag: u64, byte: u8) -> Vec<u8> {
    let mut p = vec![byte; PAGE_SIZE];
    p[..8].copy_from_slice(&tag.to_le_bytes());
    p[PAGE_SIZE - 8..].copy_from_slice(&(!tag).to_le_bytes());
    p
}

fn cc_tag(c: usize, k: &CleancacheKey) -> u64 {
    (c as u64) << 56 | (k.pool as u64) << 40 | k.object[0] << 20 | k.index as u64
}

fn fs_tag(c: usize, k: &FrontswapKey) -> u64 {
    1 << 63 | (c as u64) << 56 | (k.area as u64) << 40 | k.offset
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        c: usize,
        nr: u64,
        align_shift: u32,
    },
    Free {
        which: usize,
    },
    FreeUnknown {
        c: usize,
        page: u64,
    },
    Scribble {
        which: usize,
        byte: u8,
    },
    NewCcPool {
        c: usize,
    },
    CcPut {
        c: usize,
        pool: usize,
        obj: u64,
        idx: u32,
        byte: u8,
    },
    CcGet {
        c: usize,
        pool: usize,
        obj: u64,
        idx: u32,
    },
    /// A get that keeps the page.
    CcGetKeep {
        c: usize,
        pool: usize,
        obj: u64,
        idx: u32,
    },
    CcFlushPage {
        c: usize,
        pool: usize,
        obj: u64,
        idx: u32,
    },
    CcFlushObject {
        c: usize,
        pool: usize,
        obj: u64,
    },
    CcDestroyPool {
        c: usize,
        pool: usize,
    },
    FsStore {
        c: usize,
        area: u32,
        off: u64,
        byte: u8,
    },
    FsLoad {
        c: usize,
        area: u32,
        off: u64,
    },
    FsInvalidate {
        c: usize,
        area: u32,
        off: u64,
    },
    FsInvalidateArea {
        c: usize,
        area: u32,
    },
    Reregister {
        c: usize,
    },
    /// Retire the client keeping its grants (as a device reset does when unmaps fail), then
    /// register a new one in its place.
    Retire {
        c: usize,
    },
    FreeRetired {
        which: usize,
    },
    ZeroIdle {
        max: u64,
    },
    Bad {
        kind: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..NR_CLIENTS;
    prop_oneof![
        3 => (c.clone(), 1..20u64, 0..4u32).prop_map(|(c, nr, align_shift)| Op::Alloc { c, nr, align_shift }),
        2 => (0..8usize).prop_map(|which| Op::Free { which }),
        1 => (c.clone(), 0..NR_PAGES + 2).prop_map(|(c, page)| Op::FreeUnknown { c, page }),
        1 => (0..8usize, any::<u8>()).prop_map(|(which, byte)| Op::Scribble { which, byte }),
        1 => c.clone().prop_map(|c| Op::NewCcPool { c }),
        6 => (c.clone(), 0..3usize, 0..3u64, 0..6u32, any::<u8>())
            .prop_map(|(c, pool, obj, idx, byte)| Op::CcPut { c, pool, obj, idx, byte }),
        4 => (c.clone(), 0..3usize, 0..3u64, 0..6u32)
            .prop_map(|(c, pool, obj, idx)| Op::CcGet { c, pool, obj, idx }),
        2 => (c.clone(), 0..3usize, 0..3u64, 0..6u32)
            .prop_map(|(c, pool, obj, idx)| Op::CcGetKeep { c, pool, obj, idx }),
        1 => (c.clone(), 0..3usize, 0..3u64, 0..6u32)
            .prop_map(|(c, pool, obj, idx)| Op::CcFlushPage { c, pool, obj, idx }),
        1 => (c.clone(), 0..3usize, 0..3u64).prop_map(|(c, pool, obj)| Op::CcFlushObject { c, pool, obj }),
        1 => (c.clone(), 0..3usize).prop_map(|(c, pool)| Op::CcDestroyPool { c, pool }),
        6 => (c.clone(), 0..2u32, 0..12u64, any::<u8>())
            .prop_map(|(c, area, off, byte)| Op::FsStore { c, area, off, byte }),
        5 => (c.clone(), 0..2u32, 0..12u64).prop_map(|(c, area, off)| Op::FsLoad { c, area, off }),
        1 => (c.clone(), 0..2u32, 0..12u64).prop_map(|(c, area, off)| Op::FsInvalidate { c, area, off }),
        1 => (c.clone(), 0..2u32).prop_map(|(c, area)| Op::FsInvalidateArea { c, area }),
        1 => c.clone().prop_map(|c| Op::Reregister { c }),
        1 => c.prop_map(|c| Op::Retire { c }),
        1 => (0..8usize).prop_map(|which| Op::FreeRetired { which }),
        1 => (0..20u64).prop_map(|max| Op::ZeroIdle { max }),
        1 => (0..8u8).prop_map(|kind| Op::Bad { kind }),
    ]
}

fn policy() -> impl Strategy<Value = FrontswapPolicy> {
    prop_oneof![
        Just(FrontswapPolicy::WriteThrough),
        Just(FrontswapPolicy::WriteBack),
        Just(FrontswapPolicy::PutBack),
    ]
}

struct Model {
    ids: Vec<ClientId>,
    /// (client slot, first page, nr pages)
    grants: Vec<(usize, u64, u64)>,
    /// Grants of retired clients: (old id, first page, nr pages).
    retired: Vec<(ClientId, u64, u64)>,
    cc_pools: Vec<Vec<u32>>,
    cc: HashMap<(usize, CleancacheKey), Vec<u8>>,
    fs: HashMap<(usize, FrontswapKey), Vec<u8>>,
}

impl Model {
    fn granted(&self) -> u64 {
        self.runs().map(|(_, n)| n).sum()
    }

    /// Every granted run, of live and retired clients.
    fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let live = self.grants.iter().map(|&(_, f, n)| (f, n));
        live.chain(self.retired.iter().map(|&(_, f, n)| (f, n)))
    }

    fn has_aligned_run(&self, nr: u64, align: u64) -> bool {
        let mut busy = vec![false; NR_PAGES as usize];
        for (f, n) in self.runs() {
            for p in f..f + n {
                busy[p as usize] = true;
            }
        }
        (0..NR_PAGES)
            .step_by(align as usize)
            .any(|s| s + nr <= NR_PAGES && (s..s + nr).all(|p| !busy[p as usize]))
    }

    fn cc_key(&self, c: usize, pool: usize, obj: u64, idx: u32) -> CleancacheKey {
        // A pool index past the live ones names a pool that does not exist.
        let pool = self.cc_pools[c]
            .get(pool)
            .copied()
            .unwrap_or(1000 + pool as u32);
        CleancacheKey {
            pool,
            object: [obj, 7, 9],
            index: idx,
        }
    }
}

fn page_counts(s: &PoolStats) -> [u64; 5] {
    [
        s.free_zero_pages,
        s.free_dirty_pages,
        s.cleancache_pages,
        s.frontswap_pages,
        s.granted_pages,
    ]
}

fn check_accounting(pool: &Pool, m: &Model) {
    if let Err(e) = pool.check_consistency() {
        panic!("inconsistent pool: {e}");
    }
    let s = pool.stats();
    assert_eq!(page_counts(&s).iter().sum::<u64>(), NR_PAGES);
    assert_eq!(s.granted_pages, m.granted());
    assert_eq!(s.live_grants, (m.grants.len() + m.retired.len()) as u64);
    assert_eq!(s.frontswap_stored_pages, m.fs.len() as u64);
    assert_eq!(
        s.frontswap_stored_pages,
        s.frontswap_pages + s.frontswap_host_pages + s.frontswap_backing_only_pages
    );
    assert!(s.cleancache_pages <= m.cc.len() as u64);
    let capped = pool
        .client_stats(m.ids[NR_CLIENTS - 1])
        .expect("capped client");
    assert!(capped.frontswap_pool_pages <= CAPPED_FS_PAGES);
    assert!(capped.cleancache_pages <= CAPPED_CC_PAGES);
    if pool.frontswap_policy() == FrontswapPolicy::PutBack {
        assert!(capped.frontswap_stored_pages <= CAPPED_PUT_BACK);
    }
    if pool.frontswap_policy() == FrontswapPolicy::PutBack {
        assert!(s.frontswap_stored_pages <= PUT_BACK_LIMIT);
    }
}

/// The last client has caps of its own (on frontswap and cleancache pool pages, and a put-back
/// limit under the pool-wide one); the others take the defaults.
fn register(pool: &Pool, c: usize, name: &str) -> ClientId {
    if c + 1 < NR_CLIENTS {
        return pool.register_client(name);
    }
    pool.register_client_with(
        name,
        gcma_host::pool::ClientOptions {
            frontswap_cap_pages: Some(CAPPED_FS_PAGES),
            cleancache_cap_pages: Some(CAPPED_CC_PAGES),
            put_back_limit_pages: Some(CAPPED_PUT_BACK),
            ..Default::default()
        },
    )
}

const CAPPED_FS_PAGES: u64 = 5;
const CAPPED_CC_PAGES: u64 = 4;
const CAPPED_PUT_BACK: u64 = 8;

fn run(policy: FrontswapPolicy, ops: Vec<Op>) {
    let mut cfg = PoolConfig::new(NR_PAGES);
    cfg.frontswap_policy = policy;
    cfg.put_back_limit_pages = PUT_BACK_LIMIT;
    cfg.client_frontswap_limit_pages = Some(CLIENT_LIMIT);
    let pool: Arc<Pool> = Pool::new(cfg).expect("pool");
    let view = MemfdView::new(&pool);
    let mut m = Model {
        ids: (0..NR_CLIENTS).map(|i| register(&pool, i, "vm")).collect(),
        grants: Vec::new(),
        retired: Vec::new(),
        cc_pools: vec![Vec::new(); NR_CLIENTS],
        cc: HashMap::new(),
        fs: HashMap::new(),
    };
    let mut out = vec![0u8; PAGE_SIZE];
    for op in ops {
        match op {
            Op::Alloc { c, nr, align_shift } => {
                let align = 1u64 << align_shift;
                let granted = m.granted();
                match pool.alloc_contig(m.ids[c], nr, align) {
                    Ok(g) => {
                        assert_eq!(g.client, m.ids[c]);
                        assert_eq!(g.nr_pages, nr);
                        assert_eq!(g.first_page % align, 0);
                        assert!(g.first_page + nr <= NR_PAGES);
                        for (f, n) in m.runs() {
                            assert!(g.first_page + nr <= f || f + n <= g.first_page, "overlap");
                        }
                        assert!(
                            view.pages(g.first_page, nr).iter().all(|&b| b == 0),
                            "granted pages must read as zero"
                        );
                        m.grants.push((c, g.first_page, nr));
                    }
                    Err(PoolError::Exhausted {
                        requested,
                        available,
                    }) => {
                        assert_eq!(requested, nr);
                        assert_eq!(available, NR_PAGES - granted);
                        assert!(nr > available);
                    }
                    Err(PoolError::Fragmented { requested, .. }) => {
                        assert_eq!(requested, nr);
                        assert!(nr <= NR_PAGES - granted);
                        assert!(
                            !m.has_aligned_run(nr, align),
                            "grant refused though a run fits"
                        );
                    }
                    Err(e) => panic!("unexpected grant error {e:?}"),
                }
            }
            Op::Free { which } => {
                if m.grants.is_empty() {
                    continue;
                }
                let (c, f, n) = m.grants.remove(which % m.grants.len());
                assert_eq!(pool.free_contig(m.ids[c], f), Ok(n));
                assert_eq!(
                    pool.free_contig(m.ids[c], f),
                    Err(PoolError::UnknownGrant(f)),
                    "double free"
                );
            }
            Op::FreeUnknown { c, page } => {
                if m.grants.iter().any(|&(gc, f, _)| gc == c && f == page) {
                    continue;
                }
                let before = page_counts(&pool.stats());
                assert_eq!(
                    pool.free_contig(m.ids[c], page),
                    Err(PoolError::UnknownGrant(page))
                );
                assert_eq!(page_counts(&pool.stats()), before);
            }
            Op::Scribble { which, byte } => {
                if let Some(&(_, f, n)) = m.grants.get(which % m.grants.len().max(1)) {
                    view.fill(f, n, byte);
                }
            }
            Op::NewCcPool { c } => {
                let id = pool.cleancache_new_pool(m.ids[c]).expect("new pool");
                assert!(!m.cc_pools[c].contains(&id));
                m.cc_pools[c].push(id);
            }
            Op::CcPut {
                c,
                pool: pi,
                obj,
                idx,
                byte,
            } => {
                let key = m.cc_key(c, pi, obj, idx);
                let data = page_for(cc_tag(c, &key), byte);
                match pool.cleancache_put(m.ids[c], key, &data) {
                    Ok(true) => {
                        m.cc.insert((c, key), data);
                    }
                    Ok(false) => {
                        // Dropped: an older copy must not survive either.
                        m.cc.remove(&(c, key));
                        assert!(!pool.cleancache_get(m.ids[c], key, &mut out).unwrap());
                    }
                    Err(PoolError::UnknownPool(p)) => {
                        assert_eq!(p, key.pool);
                        assert!(!m.cc_pools[c].contains(&p));
                    }
                    Err(e) => panic!("unexpected put error {e:?}"),
                }
            }
            Op::CcGet {
                c,
                pool: pi,
                obj,
                idx,
            } => {
                let key = m.cc_key(c, pi, obj, idx);
                match pool.cleancache_get(m.ids[c], key, &mut out) {
                    Ok(true) => {
                        let want = m.cc.remove(&(c, key)).expect("hit on a key never put");
                        assert!(out == want, "cleancache returned wrong or stale data");
                        // A hit removes the page (private pool).
                        assert!(!pool.cleancache_get(m.ids[c], key, &mut out).unwrap());
                    }
                    Ok(false) => {
                        m.cc.remove(&(c, key));
                    }
                    Err(PoolError::UnknownPool(_)) => assert!(!m.cc_pools[c].contains(&key.pool)),
                    Err(e) => panic!("unexpected get error {e:?}"),
                }
            }
            Op::CcGetKeep {
                c,
                pool: pi,
                obj,
                idx,
            } => {
                let key = m.cc_key(c, pi, obj, idx);
                match pool.cleancache_get_keep(m.ids[c], key, &mut out) {
                    Ok(true) => {
                        let want = m.cc.get(&(c, key)).expect("hit on a key never put");
                        assert!(out == *want, "cleancache returned wrong or stale data");
                        // The page stays: a second get hits with the same data.
                        assert!(pool.cleancache_get_keep(m.ids[c], key, &mut out).unwrap());
                        assert!(out == *want);
                    }
                    Ok(false) => {
                        m.cc.remove(&(c, key));
                    }
                    Err(PoolError::UnknownPool(_)) => assert!(!m.cc_pools[c].contains(&key.pool)),
                    Err(e) => panic!("unexpected get error {e:?}"),
                }
            }
            Op::CcFlushPage {
                c,
                pool: pi,
                obj,
                idx,
            } => {
                let key = m.cc_key(c, pi, obj, idx);
                match pool.cleancache_flush_page(m.ids[c], key) {
                    Ok(hit) => {
                        let had = m.cc.remove(&(c, key)).is_some();
                        assert!(!hit || had, "flushed a page never put");
                    }
                    Err(PoolError::UnknownPool(_)) => assert!(!m.cc_pools[c].contains(&key.pool)),
                    Err(e) => panic!("unexpected flush error {e:?}"),
                }
            }
            Op::CcFlushObject { c, pool: pi, obj } => {
                let key = m.cc_key(c, pi, obj, 0);
                match pool.cleancache_flush_object(m.ids[c], key.pool, key.object) {
                    Ok(n) => {
                        let before = m.cc.len();
                        m.cc.retain(|(mc, k), _| {
                            !(*mc == c && k.pool == key.pool && k.object == key.object)
                        });
                        assert!(n as usize <= before - m.cc.len());
                    }
                    Err(PoolError::UnknownPool(_)) => assert!(!m.cc_pools[c].contains(&key.pool)),
                    Err(e) => panic!("unexpected flush error {e:?}"),
                }
            }
            Op::CcDestroyPool { c, pool: pi } => {
                let key = m.cc_key(c, pi, 0, 0);
                match pool.cleancache_destroy_pool(m.ids[c], key.pool) {
                    Ok(()) => {
                        m.cc_pools[c].retain(|&p| p != key.pool);
                        m.cc.retain(|(mc, k), _| !(*mc == c && k.pool == key.pool));
                    }
                    Err(PoolError::UnknownPool(_)) => assert!(!m.cc_pools[c].contains(&key.pool)),
                    Err(e) => panic!("unexpected destroy error {e:?}"),
                }
            }
            Op::FsStore { c, area, off, byte } => {
                let key = FrontswapKey { area, offset: off };
                let data = page_for(fs_tag(c, &key), byte);
                match pool.frontswap_store(m.ids[c], key, &data) {
                    Ok(()) => {
                        m.fs.insert((c, key), data);
                    }
                    Err(PoolError::Rejected(r)) => {
                        match r {
                            RejectReason::PutBackLimit => {
                                assert_eq!(policy, FrontswapPolicy::PutBack)
                            }
                            RejectReason::PoolFull => {
                                assert_ne!(policy, FrontswapPolicy::WriteThrough)
                            }
                            RejectReason::ClientLimit => {}
                            RejectReason::BackingIo => panic!("backing I/O failed"),
                        }
                        // A refused duplicate invalidates the old copy.
                        m.fs.remove(&(c, key));
                    }
                    Err(e) => panic!("unexpected store error {e:?}"),
                }
            }
            Op::FsLoad { c, area, off } => {
                let key = FrontswapKey { area, offset: off };
                let hit = pool.frontswap_load(m.ids[c], key, &mut out).expect("load");
                match m.fs.get(&(c, key)) {
                    Some(want) => {
                        assert!(hit, "accepted frontswap page lost");
                        assert!(out == *want, "frontswap returned wrong or stale data");
                    }
                    None => assert!(!hit, "frontswap load of an invalidated key hit"),
                }
            }
            Op::FsInvalidate { c, area, off } => {
                let key = FrontswapKey { area, offset: off };
                let hit = pool.frontswap_invalidate_page(m.ids[c], key).unwrap();
                assert_eq!(hit, m.fs.remove(&(c, key)).is_some());
            }
            Op::FsInvalidateArea { c, area } => {
                let n = pool.frontswap_invalidate_area(m.ids[c], area).unwrap();
                let before = m.fs.len();
                m.fs.retain(|(mc, k), _| !(*mc == c && k.area == area));
                assert_eq!(n as usize, before - m.fs.len());
            }
            Op::Reregister { c } => {
                let old = m.ids[c];
                pool.unregister_client(old).expect("unregister");
                assert_eq!(
                    pool.unregister_client(old),
                    Err(PoolError::UnknownClient(old))
                );
                m.grants.retain(|g| g.0 != c);
                m.cc.retain(|k, _| k.0 != c);
                m.fs.retain(|k, _| k.0 != c);
                m.cc_pools[c].clear();
                m.ids[c] = register(&pool, c, "again");
                assert_ne!(m.ids[c], old);
                let key = FrontswapKey { area: 0, offset: 0 };
                assert_eq!(
                    pool.frontswap_load(old, key, &mut out),
                    Err(PoolError::UnknownClient(old))
                );
            }
            Op::Retire { c } => {
                let old = m.ids[c];
                pool.retire_client(old).expect("retire");
                assert_eq!(pool.retire_client(old), Err(PoolError::UnknownClient(old)));
                let key = FrontswapKey { area: 0, offset: 0 };
                assert_eq!(
                    pool.frontswap_load(old, key, &mut out),
                    Err(PoolError::UnknownClient(old))
                );
                assert_eq!(
                    pool.alloc_contig(old, 1, 1),
                    Err(PoolError::UnknownClient(old))
                );
                for (_, f, n) in m.grants.iter().filter(|g| g.0 == c) {
                    m.retired.push((old, *f, *n));
                }
                m.grants.retain(|g| g.0 != c);
                m.cc.retain(|k, _| k.0 != c);
                m.fs.retain(|k, _| k.0 != c);
                m.cc_pools[c].clear();
                m.ids[c] = register(&pool, c, "after retire");
                assert_ne!(m.ids[c], old);
            }
            Op::FreeRetired { which } => {
                if m.retired.is_empty() {
                    continue;
                }
                let (id, f, n) = m.retired.remove(which % m.retired.len());
                assert_eq!(pool.free_contig(id, f), Ok(n));
                assert!(pool.free_contig(id, f).is_err());
            }
            Op::ZeroIdle { max } => {
                let before = pool.stats();
                let n = pool.zero_idle_pages(max);
                assert_eq!(n, max.min(before.free_dirty_pages));
                let after = pool.stats();
                assert_eq!(after.free_zero_pages, before.free_zero_pages + n);
            }
            Op::Bad { kind } => {
                let before = pool.stats();
                let c = m.ids[0];
                let nobody = ClientId(9999);
                let short = vec![0u8; PAGE_SIZE - 1];
                let key = FrontswapKey { area: 0, offset: 0 };
                let r = match kind {
                    0 => pool.alloc_contig(c, 0, 1).map(|_| ()),
                    1 => pool.alloc_contig(c, 1, 3).map(|_| ()),
                    2 => pool.alloc_contig(c, u64::MAX, 1).map(|_| ()),
                    3 => pool.alloc_contig(nobody, 1, 1).map(|_| ()),
                    4 => pool.frontswap_store(c, key, &short),
                    5 => pool
                        .cleancache_put(nobody, m.cc_key(0, 0, 0, 0), &out)
                        .map(|_| ()),
                    6 => pool.frontswap_load(c, key, &mut [0u8; 1]).map(|_| ()),
                    _ => pool.cleancache_new_pool(nobody).map(|_| ()),
                };
                assert!(r.is_err(), "bad input {kind} accepted");
                let after = pool.stats();
                assert_eq!(page_counts(&after), page_counts(&before));
                assert_eq!(after.frontswap_stored_pages, before.frontswap_stored_pages);
            }
        }
        check_accounting(&pool, &m);
    }
    // Every accepted frontswap page is still there, with its latest data.
    for ((c, key), want) in &m.fs {
        assert!(pool.frontswap_load(m.ids[*c], *key, &mut out).unwrap());
        assert!(out == *want);
    }
    // Granting the whole pool evicts everything and still reads as zero.
    for (c, f, _) in std::mem::take(&mut m.grants) {
        pool.free_contig(m.ids[c], f).unwrap();
    }
    for (id, f, _) in std::mem::take(&mut m.retired) {
        pool.free_contig(id, f).unwrap();
    }
    let g = pool
        .alloc_contig(m.ids[0], NR_PAGES, 1)
        .expect("whole-pool grant");
    assert!(view.pages(0, NR_PAGES).iter().all(|&b| b == 0));
    for ((c, key), want) in &m.fs {
        assert!(pool.frontswap_load(m.ids[*c], *key, &mut out).unwrap());
        assert!(out == *want, "frontswap page lost by a grant's eviction");
    }
    pool.free_contig(m.ids[0], g.first_page).unwrap();
    check_accounting(&pool, &m);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("POOL_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)))]

    #[test]
    fn pool_matches_model(policy in policy(), ops in prop::collection::vec(op(), 1..120)) {
        run(policy, ops);
    }
}

#[test]
fn metrics_encode() {
    let pool = Pool::new(PoolConfig::new(16)).unwrap();
    let c = pool.register_client("vm");
    let g = pool.alloc_contig(c, 4, 1).unwrap();
    pool.free_contig(c, g.first_page).unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    pool.register_metrics(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    for needle in [
        "gcma_pool_pages{state=\"free_dirty\"} 4",
        "gcma_pool_pages{state=\"free_zero\"} 12",
        "gcma_grants_total 1",
        "gcma_grant_latency_seconds_count 1",
        "gcma_frontswap_rejects_total{reason=\"pool_full\"} 0",
        "gcma_evicted_pages_total{reason=\"grant\",kind=\"cleancache\"} 0",
        "gcma_pool_capacity_pages 16",
        "gcma_frontswap_stored_pages{location=\"pool\",policy=\"write_through\"} 0",
        "gcma_writeback_retries_total 0",
        "gcma_writeback_waiting_pages 0",
        "gcma_frontswap_cap_hits_total 0",
        "gcma_cleancache_cap_drops_total 0",
        "gcma_file_written_pages_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Disks: clients with their own backing file and caps, beside a shared-backing client, under
// random grants, replacements, invalidations, flushes and restarts (a new pool over the same
// files). A disk is modelled as its bytes: a key reads as its latest store, or zero.

mod disks {
    use super::*;
    use gcma_host::pool::{ClientOptions, FrontswapBacking};
    use std::collections::HashSet;
    use std::path::PathBuf;

    const DISK_POOL_PAGES: u64 = 24;
    const NR_DISKS: usize = 2;

    #[derive(Clone, Debug)]
    pub enum DiskOp {
        Store {
            d: usize,
            off: u64,
            byte: u8,
        },
        /// A multi-page store of `n` pages from `off`.
        StoreRun {
            d: usize,
            off: u64,
            n: u64,
            byte: u8,
        },
        /// A multi-page load of `n` pages from `off`.
        LoadRun {
            d: usize,
            off: u64,
            n: u64,
        },
        Load {
            d: usize,
            off: u64,
        },
        Invalidate {
            d: usize,
            off: u64,
        },
        InvalidateRange {
            d: usize,
            start: u64,
            len: u64,
        },
        Flush {
            d: usize,
        },
        SharedStore {
            off: u64,
            byte: u8,
        },
        SharedLoad {
            off: u64,
        },
        Grant {
            nr: u64,
        },
        Free {
            which: usize,
        },
        Retry,
        /// Flush what is owed (write-back, put-back; write-through owes nothing, so it does not
        /// flush: the kill -9 case), drop the pool, open a new one over the same files.
        Restart,
    }

    pub fn disk_op() -> impl Strategy<Value = DiskOp> {
        let d = 0..NR_DISKS;
        prop_oneof![
            8 => (d.clone(), 0..16u64, any::<u8>()).prop_map(|(d, off, byte)| DiskOp::Store { d, off, byte }),
            3 => (d.clone(), 0..16u64, 1..8u64, any::<u8>()).prop_map(|(d, off, n, byte)| DiskOp::StoreRun { d, off, n, byte }),
            3 => (d.clone(), 0..16u64, 1..8u64).prop_map(|(d, off, n)| DiskOp::LoadRun { d, off, n }),
            6 => (d.clone(), 0..16u64).prop_map(|(d, off)| DiskOp::Load { d, off }),
            1 => (d.clone(), 0..16u64).prop_map(|(d, off)| DiskOp::Invalidate { d, off }),
            1 => (d.clone(), 0..16u64, 0..6u64).prop_map(|(d, start, len)| DiskOp::InvalidateRange { d, start, len }),
            1 => d.prop_map(|d| DiskOp::Flush { d }),
            3 => (0..10u64, any::<u8>()).prop_map(|(off, byte)| DiskOp::SharedStore { off, byte }),
            2 => (0..10u64).prop_map(|off| DiskOp::SharedLoad { off }),
            3 => (1..20u64).prop_map(|nr| DiskOp::Grant { nr }),
            2 => (0..4usize).prop_map(|which| DiskOp::Free { which }),
            1 => Just(DiskOp::Retry),
            1 => Just(DiskOp::Restart),
        ]
    }

    struct Files(Vec<PathBuf>);

    impl Drop for Files {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn open(path: &PathBuf) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    struct World {
        pool: Arc<Pool>,
        disks: Vec<ClientId>,
        shared: ClientId,
        granter: ClientId,
    }

    fn start(policy: FrontswapPolicy, files: &Files, caps: &[u64]) -> World {
        let mut cfg = PoolConfig::new(DISK_POOL_PAGES);
        cfg.frontswap_policy = policy;
        cfg.put_back_limit_pages = 10;
        let pool = Pool::new(cfg).unwrap();
        let disks = files
            .0
            .iter()
            .zip(caps)
            .map(|(p, &cap)| {
                pool.register_client_with(
                    "disk",
                    ClientOptions {
                        frontswap_backing: FrontswapBacking::File(Arc::new(open(p))),
                        frontswap_cap_pages: Some(cap),
                        put_back_limit_pages: Some(cap / 2),
                        ..ClientOptions::default()
                    },
                )
            })
            .collect();
        let shared = pool.register_client_with(
            "shared",
            ClientOptions {
                frontswap_cap_pages: Some(6),
                ..ClientOptions::default()
            },
        );
        let granter = pool.register_client("granter");
        World {
            pool,
            disks,
            shared,
            granter,
        }
    }

    fn disk_page(d: usize, off: u64, byte: u8) -> Vec<u8> {
        page_for((d as u64) << 48 | off, byte)
    }

    pub fn run(policy: FrontswapPolicy, caps: Vec<u64>, ops: Vec<DiskOp>) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let files = Files(
            (0..NR_DISKS)
                .map(|d| {
                    std::env::temp_dir()
                        .join(format!("gcma-model-disk-{}-{n}-{d}", std::process::id()))
                })
                .collect(),
        );
        let mut w = start(policy, &files, &caps);
        // The model: each disk's bytes, the keys the pool holds entries for, the shared
        // client's accepted pages, the live grants.
        let mut bytes: Vec<HashMap<u64, Vec<u8>>> = vec![HashMap::new(); NR_DISKS];
        let mut entries: Vec<HashSet<u64>> = vec![HashSet::new(); NR_DISKS];
        let mut shared: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut grants: Vec<u64> = Vec::new();
        let zero = vec![0u8; PAGE_SIZE];
        let mut out = vec![0u8; PAGE_SIZE];
        for op in ops {
            let pool = &w.pool;
            match op {
                DiskOp::Store { d, off, byte } => {
                    let data = disk_page(d, off, byte);
                    // A disk never refuses a store.
                    pool.frontswap_store(
                        w.disks[d],
                        FrontswapKey {
                            area: 0,
                            offset: off,
                        },
                        &data,
                    )
                    .expect("disk store");
                    bytes[d].insert(off, data);
                    entries[d].insert(off);
                }
                DiskOp::StoreRun { d, off, n, byte } => {
                    let data: Vec<u8> = (0..n).flat_map(|i| disk_page(d, off + i, byte)).collect();
                    pool.frontswap_store_pages(w.disks[d], off, &data)
                        .expect("disk store run");
                    for i in 0..n {
                        bytes[d].insert(off + i, disk_page(d, off + i, byte));
                        entries[d].insert(off + i);
                    }
                }
                DiskOp::LoadRun { d, off, n } => {
                    let mut buf = vec![0u8; n as usize * PAGE_SIZE];
                    pool.frontswap_load_pages(w.disks[d], off, &mut buf)
                        .unwrap();
                    for i in 0..n {
                        let got = &buf[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE];
                        let want = bytes[d].get(&(off + i)).unwrap_or(&zero);
                        assert!(
                            got == &want[..],
                            "disk {d} page {}: wrong or stale data",
                            off + i
                        );
                    }
                }
                DiskOp::Load { d, off } => {
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    assert!(pool.frontswap_load(w.disks[d], key, &mut out).unwrap());
                    let want = bytes[d].get(&off).unwrap_or(&zero);
                    assert!(out == *want, "disk {d} page {off}: wrong or stale data");
                }
                DiskOp::Invalidate { d, off } => {
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    let hit = pool.frontswap_invalidate_page(w.disks[d], key).unwrap();
                    assert_eq!(hit, entries[d].remove(&off));
                    bytes[d].remove(&off);
                }
                DiskOp::InvalidateRange { d, start, len } => {
                    let n = pool
                        .frontswap_invalidate_range(w.disks[d], 0, start..start + len)
                        .unwrap();
                    let before = entries[d].len();
                    entries[d].retain(|o| !(start..start + len).contains(o));
                    bytes[d].retain(|o, _| !(start..start + len).contains(o));
                    assert_eq!(n as usize, before - entries[d].len());
                }
                DiskOp::Flush { d } => {
                    pool.flush_client(w.disks[d]).unwrap();
                    let s = pool.client_stats(w.disks[d]).unwrap();
                    assert_eq!(s.frontswap_host_pages, 0, "a flush frees host copies");
                }
                DiskOp::SharedStore { off, byte } => {
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    let data = page_for(off, byte);
                    match pool.frontswap_store(w.shared, key, &data) {
                        Ok(()) => {
                            shared.insert(off, data);
                        }
                        Err(PoolError::Rejected(r)) => {
                            assert_ne!(r, RejectReason::BackingIo);
                            shared.remove(&off);
                        }
                        Err(e) => panic!("unexpected store error {e:?}"),
                    }
                }
                DiskOp::SharedLoad { off } => {
                    let key = FrontswapKey {
                        area: 0,
                        offset: off,
                    };
                    let hit = pool.frontswap_load(w.shared, key, &mut out).unwrap();
                    match shared.get(&off) {
                        Some(want) => assert!(hit && out == *want, "shared page {off} lost"),
                        None => assert!(!hit),
                    }
                }
                DiskOp::Grant { nr } => {
                    if let Ok(g) = pool.alloc_contig(w.granter, nr, 1) {
                        grants.push(g.first_page);
                    }
                }
                DiskOp::Free { which } => {
                    if !grants.is_empty() {
                        let f = grants.remove(which % grants.len());
                        pool.free_contig(w.granter, f).unwrap();
                    }
                }
                DiskOp::Retry => {
                    // Nothing fails here: nothing is waiting.
                    assert_eq!(pool.retry_writebacks(), 0);
                }
                DiskOp::Restart => {
                    if policy != FrontswapPolicy::WriteThrough {
                        pool.flush_all().unwrap();
                    }
                    w = start(policy, &files, &caps);
                    for e in &mut entries {
                        e.clear();
                    }
                    shared.clear();
                    grants.clear();
                }
            }
            let pool = &w.pool;
            if let Err(e) = pool.check_consistency() {
                panic!("inconsistent pool: {e}");
            }
            let s = pool.stats();
            let held: usize = entries.iter().map(HashSet::len).sum();
            assert_eq!(s.frontswap_stored_pages, (shared.len() + held) as u64);
            for (d, &id) in w.disks.iter().enumerate() {
                let cs = pool.client_stats(id).unwrap();
                assert!(cs.frontswap_pool_pages <= caps[d], "disk {d} over its cap");
                assert_eq!(cs.frontswap_rejects, 0, "a disk refused a store");
            }
        }
        // Every page of every disk reads back, now and after a grant of the whole pool.
        for (d, &id) in w.disks.iter().enumerate() {
            for off in 0..16 {
                let key = FrontswapKey {
                    area: 0,
                    offset: off,
                };
                assert!(w.pool.frontswap_load(id, key, &mut out).unwrap());
                assert!(out == *bytes[d].get(&off).unwrap_or(&zero));
            }
        }
        for f in grants.drain(..) {
            w.pool.free_contig(w.granter, f).unwrap();
        }
        let g = w
            .pool
            .alloc_contig(w.granter, DISK_POOL_PAGES, 1)
            .expect("whole-pool grant");
        for (d, &id) in w.disks.iter().enumerate() {
            for off in 0..16 {
                let key = FrontswapKey {
                    area: 0,
                    offset: off,
                };
                assert!(w.pool.frontswap_load(id, key, &mut out).unwrap());
                assert!(
                    out == *bytes[d].get(&off).unwrap_or(&zero),
                    "disk {d} page {off} lost by a grant"
                );
            }
        }
        w.pool.free_contig(w.granter, g.first_page).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("POOL_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)))]

    #[test]
    fn disks_match_model(
        policy in policy(),
        caps in prop::collection::vec(1..12u64, 2),
        ops in prop::collection::vec(disks::disk_op(), 1..120),
    ) {
        disks::run(policy, caps, ops);
    }
}
