//! A guest that fragments the pool with one-page grants and then asks for alignments no hole
//! has costs a bounded search under the pool lock: the request is refused as fragmented within
//! the configured number of tree nodes, and counted apart from plain fragmentation.

use gcma_host::api::{GcmaBackend, PoolError};
use gcma_host::pool::{Pool, PoolConfig};
use gcma_host::range::DEFAULT_MAX_VISITS;

const PAGES: u64 = 16_384;

/// A pool whose every odd page is a one-page hole between one-page grants.
fn fragmented(max_search_nodes: u32) -> std::sync::Arc<Pool> {
    let pool = Pool::new(PoolConfig {
        max_search_nodes,
        ..PoolConfig::new(PAGES)
    })
    .unwrap();
    let c = pool.register_client("fragmenter");
    let grants: Vec<u64> = (0..PAGES)
        .map(|_| pool.alloc_contig(c, 1, 1).unwrap().first_page)
        .collect();
    for g in grants.iter().filter(|&&p| p % 2 == 1) {
        pool.free_contig(c, *g).unwrap();
    }
    pool
}

#[test]
fn misaligned_requests_on_a_fragmented_pool_are_refused_within_the_search_limit() {
    assert_eq!(PoolConfig::new(1).max_search_nodes, DEFAULT_MAX_VISITS);
    let pool = fragmented(DEFAULT_MAX_VISITS);
    let c = pool.register_client("asker");
    for _ in 0..1000 {
        assert!(matches!(
            pool.alloc_contig(c, 1, 2),
            Err(PoolError::Fragmented { requested: 1, .. })
        ));
    }
    let s = pool.stats();
    assert_eq!(s.grant_failures_search_limit, 1000);
    assert_eq!(s.grant_failures_fragmented, 0);
    // A request the augmented tree proves impossible is plain "fragmented".
    assert!(matches!(
        pool.alloc_contig(c, 2, 1),
        Err(PoolError::Fragmented { largest_run: 1, .. })
    ));
    assert_eq!(pool.stats().grant_failures_fragmented, 1);
    // Unaligned one-page requests still fit the holes.
    assert!(pool.alloc_contig(c, 1, 1).is_ok());
    pool.check_consistency().unwrap();
}

#[test]
fn an_unlimited_search_finds_the_same_answer_by_walking_every_hole() {
    let pool = fragmented(u32::MAX);
    let c = pool.register_client("asker");
    assert!(matches!(
        pool.alloc_contig(c, 1, 2),
        Err(PoolError::Fragmented { .. })
    ));
    let s = pool.stats();
    assert_eq!(
        (s.grant_failures_fragmented, s.grant_failures_search_limit),
        (1, 0)
    );
}
