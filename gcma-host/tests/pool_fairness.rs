//! One guest cannot use up what the pool shares among all of them: under put-back, each client
//! may hold only its share of the put-back limit, so a guest that stores without end cannot get
//! every other guest's new frontswap stores rejected.

use gcma_host::api::{
    FrontswapKey, FrontswapPolicy, GcmaBackend, PoolError, RejectReason, PAGE_SIZE,
};
use gcma_host::pool::{ClientOptions, Pool, PoolConfig};

fn key(offset: u64) -> FrontswapKey {
    FrontswapKey { area: 0, offset }
}

/// Stores `n` new keys for `c`; returns how many were accepted, checking every refusal is the
/// put-back limit.
fn store_many(p: &Pool, c: gcma_host::api::ClientId, n: u64) -> u64 {
    let data = [5u8; PAGE_SIZE];
    let mut accepted = 0;
    for i in 0..n {
        match p.frontswap_store(c, key(i), &data) {
            Ok(()) => accepted += 1,
            Err(e) => assert_eq!(e, PoolError::Rejected(RejectReason::PutBackLimit)),
        }
    }
    accepted
}

#[test]
fn a_guest_storing_without_end_leaves_the_others_their_share() {
    let mut cfg = PoolConfig::new(256);
    cfg.frontswap_policy = FrontswapPolicy::PutBack;
    cfg.put_back_limit_pages = 100;
    let p = Pool::new(cfg).unwrap();
    let hog = p.register_client("hog");
    let other = p.register_client("other");
    // Two clients: 50 pages each at most.
    assert_eq!(store_many(&p, hog, 1000), 50);
    assert_eq!(
        store_many(&p, other, 50),
        50,
        "the other guest gets its whole share"
    );
    assert_eq!(p.stats().frontswap_stored_pages, 100);
    // Replacing a page the hog holds is still allowed at its limit.
    p.frontswap_store(hog, key(3), &[9u8; PAGE_SIZE]).unwrap();
    let mut out = [0u8; PAGE_SIZE];
    assert!(p.frontswap_load(hog, key(3), &mut out).unwrap());
    assert_eq!(out, [9u8; PAGE_SIZE]);
    // When the other guest goes, the hog's share grows to the whole limit again.
    p.unregister_client(other).unwrap();
    assert_eq!(store_many(&p, hog, 1000), 100);
    p.check_consistency().unwrap();
}

#[test]
fn a_clients_own_limit_applies_under_the_pool_wide_ceiling() {
    let mut cfg = PoolConfig::new(256);
    cfg.frontswap_policy = FrontswapPolicy::PutBack;
    cfg.put_back_limit_pages = 30;
    let p = Pool::new(cfg).unwrap();
    let own = ClientOptions {
        put_back_limit_pages: Some(20),
        ..ClientOptions::default()
    };
    let a = p.register_client_with("a", own.clone());
    let b = p.register_client_with("b", own);
    assert_eq!(store_many(&p, a, 100), 20);
    // The pool-wide ceiling still holds: 10 left for b, not 20.
    assert_eq!(store_many(&p, b, 100), 10);
    let s = p.stats();
    assert_eq!(s.frontswap_stored_pages, 30);
    assert_eq!(s.frontswap_rejects[1], 80 + 90);
}
