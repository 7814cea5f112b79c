//! The grant seam against the real pool: window space is reserved before the pool is asked, so a
//! full window evicts nothing; a reset whose unmaps fail keeps the grant's pages granted (no other
//! VM ever gets pages the first may still reach) until an unmap succeeds.

mod gcma_support;

use std::sync::Arc;

use balloon::gcma::proto::{
    no_space, status, Request, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP,
};
use gcma_host::api::{CleancacheKey, GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig};
use gcma_support::{pattern, Rig, WINDOW_GPA};

const ALL: u64 = VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP;

fn alloc(rig: &mut Rig, nr_pages: u64) -> (u32, u64) {
    let a = rig.call(
        Request::AllocContig {
            nr_pages,
            align_pages: 1,
        },
        None,
    );
    // On success, the guest-physical address: the window's base plus the offset the device
    // answers; otherwise the device's reason.
    match a.resp.status {
        status::OK => (status::OK, WINDOW_GPA + a.resp.value0),
        st => (st, a.resp.value0),
    }
}

#[test]
fn a_full_window_evicts_nothing() {
    let pool = Pool::new(PoolConfig::new(256)).unwrap();
    // A tenant fills the pool with cleancache pages.
    let tenant = pool.register_client("tenant");
    let cc = pool.cleancache_new_pool(tenant).unwrap();
    for index in 0..256 {
        let key = CleancacheKey {
            pool: cc,
            object: [1, 0, 0],
            index,
        };
        assert!(pool
            .cleancache_put(tenant, key, &pattern(index.into()))
            .unwrap());
    }
    let mut rig = Rig::new(pool.clone(), 16, ALL, 16);
    assert_eq!(alloc(&mut rig, 12).0, status::OK);
    let before = pool.stats();
    assert_eq!(
        before.cleancache_pages,
        256 - 12,
        "the grant evicted its run"
    );
    // 4 window pages are left: a grant of 8 cannot be placed, and must cost the tenant nothing.
    for _ in 0..10 {
        let (st, why) = alloc(&mut rig, 8);
        assert_eq!((st, why), (status::NO_SPACE, no_space::WINDOW_FULL));
    }
    let after = pool.stats();
    assert_eq!(after.cleancache_pages, before.cleancache_pages);
    assert_eq!(after.evictions_grant, before.evictions_grant);
    assert_eq!(after.zeroed_pages, before.zeroed_pages);
    assert_eq!(after.grants, before.grants);
    pool.check_consistency().unwrap();
}

#[test]
fn reset_with_failing_unmaps_keeps_pages_granted() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let backend: Arc<dyn GcmaBackend> = pool.clone();
    let mut a = Rig::new(backend.clone(), 64, ALL, 16);
    let (st, gpa_a) = alloc(&mut a, 16);
    assert_eq!(st, status::OK);
    let mine: Vec<u8> = (0..16u64).flat_map(pattern).collect();
    a.mapper.write(gpa_a, &mine).unwrap();

    // The guest resets its device while unmapping fails: its grant may still be reachable.
    a.mapper.fail_unmaps(true);
    a.driver.reset();
    assert_eq!(pool.stats().granted_pages, 16, "stuck pages stay granted");
    assert_eq!(a.counters().stuck_pages, 16);
    assert_eq!(a.counters().granted_pages, 0);

    // Another VM takes every page the pool can give: none of the stuck ones.
    let mut b = Rig::new(backend, 64, ALL, 16);
    let (st, gpa_b) = alloc(&mut b, 48);
    assert_eq!(st, status::OK);
    b.mapper.write(gpa_b, &vec![0xbb; 48 * PAGE_SIZE]).unwrap();
    assert_eq!(alloc(&mut b, 1).0, status::NO_SPACE);
    // Through its stale mapping, the first VM still sees its own bytes, never the second's.
    let mut seen = vec![0u8; mine.len()];
    a.mapper.read(gpa_a, &mut seen).unwrap();
    assert!(seen == mine, "a stale mapping shows another VM's bytes");
    pool.check_consistency().unwrap();

    // Once unmapping works again, the next window operation frees the stuck grant.
    a.mapper.fail_unmaps(false);
    a.driver.init(ALL, 16).unwrap();
    assert_eq!(alloc(&mut a, 8).0, status::OK);
    assert_eq!(a.counters().stuck_pages, 0);
    assert_eq!(pool.stats().granted_pages, 48 + 8);
    assert!(a
        .mapper
        .read(gpa_a + 8 * PAGE_SIZE as u64, &mut [0u8; 1])
        .is_none());
    pool.check_consistency().unwrap();
}
