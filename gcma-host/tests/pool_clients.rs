//! The client table: slots are reused when clients go, an old id never reaches a slot's new
//! client, statistics do not grow with the number of clients ever registered, and a retired
//! client keeps exactly the grants it could not give back.

use gcma_host::api::{CleancacheKey, ClientId, FrontswapKey, GcmaBackend, PoolError, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig};

#[test]
fn slots_are_reused_and_old_ids_do_not_alias() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let a = pool.register_client("a");
    let key = FrontswapKey { area: 0, offset: 7 };
    pool.frontswap_store(a, key, &[0xa5; PAGE_SIZE]).unwrap();
    pool.unregister_client(a).unwrap();

    let b = pool.register_client("b");
    assert_eq!(b.slot(), a.slot(), "the freed slot is reused");
    assert_ne!(b, a, "but under a new generation");
    // The old id reaches nothing: not the new client, not the old data.
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(
        pool.frontswap_load(a, key, &mut out),
        Err(PoolError::UnknownClient(a))
    );
    assert_eq!(
        pool.frontswap_store(a, key, &[1; PAGE_SIZE]),
        Err(PoolError::UnknownClient(a))
    );
    assert_eq!(pool.alloc_contig(a, 1, 1), Err(PoolError::UnknownClient(a)));
    // The new client starts empty.
    assert!(!pool.frontswap_load(b, key, &mut out).unwrap());
    assert_eq!(pool.client_name(b).unwrap(), "b");
    pool.check_consistency().unwrap();
}

#[test]
fn a_million_reregistrations_keep_the_table_small() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let keep = pool.register_client("steady");
    let mut id = pool.register_client("churn");
    let first_slot = id.slot();
    let cc = pool.cleancache_new_pool(id).unwrap();
    let key = CleancacheKey {
        pool: cc,
        object: [1, 2, 3],
        index: 0,
    };
    assert!(pool.cleancache_put(id, key, &[3; PAGE_SIZE]).unwrap());
    for _ in 0..1_000_000 {
        pool.unregister_client(id).unwrap();
        id = pool.register_client("churn");
        // One live client besides `keep`: the same slot every time.
        assert_eq!(id.slot(), first_slot);
    }
    let s = pool.stats();
    assert_eq!(s.clients, 2);
    assert_eq!(
        s.cleancache_pages, 0,
        "the first client's page went with it"
    );
    assert!(pool.client_name(keep).is_ok());
    // 2^32 generations would wrap; a million leave every old id unknown.
    assert_eq!(
        pool.unregister_client(ClientId::new(first_slot, 0)),
        Err(PoolError::UnknownClient(ClientId::new(first_slot, 0)))
    );
    pool.check_consistency().unwrap();
}

#[test]
fn a_retired_client_keeps_its_grants_until_freed() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let a = pool.register_client("a");
    let g1 = pool.alloc_contig(a, 8, 1).unwrap();
    let g2 = pool.alloc_contig(a, 4, 1).unwrap();
    let key = FrontswapKey { area: 1, offset: 1 };
    pool.frontswap_store(a, key, &[9; PAGE_SIZE]).unwrap();
    // g1 could be given back, g2 could not (its mapping is stuck): free g1, retire the client.
    pool.free_contig(a, g1.first_page).unwrap();
    pool.retire_client(a).unwrap();
    let s = pool.stats();
    assert_eq!(s.granted_pages, 4, "the stuck grant stays granted");
    assert_eq!(s.frontswap_stored_pages, 0, "second-class pages go at once");
    assert_eq!(s.clients, 1, "the retired client still counts");

    // Nothing but freeing works for it, and its slot is not reused meanwhile.
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(
        pool.frontswap_load(a, key, &mut out),
        Err(PoolError::UnknownClient(a))
    );
    assert_eq!(pool.alloc_contig(a, 1, 1), Err(PoolError::UnknownClient(a)));
    assert_eq!(pool.retire_client(a), Err(PoolError::UnknownClient(a)));
    let b = pool.register_client("b");
    assert_ne!(b.slot(), a.slot());
    // Another client never gets the stuck pages: it can take every other page, one by one.
    let mut taken = 0;
    while let Ok(gb) = pool.alloc_contig(b, 1, 1) {
        assert!(
            !(g2.first_page..g2.first_page + 4).contains(&gb.first_page),
            "{gb:?} lies in the retired grant {g2:?}"
        );
        taken += 1;
    }
    assert_eq!(taken, 60);
    pool.check_consistency().unwrap();

    // Once the last grant is freed, the client is gone and its slot free again.
    assert_eq!(pool.free_contig(a, g2.first_page).unwrap(), 4);
    assert_eq!(pool.stats().clients, 1);
    assert_eq!(
        pool.free_contig(a, g2.first_page),
        Err(PoolError::UnknownClient(a))
    );
    let c = pool.register_client("c");
    assert_eq!(c.slot(), a.slot());
    pool.check_consistency().unwrap();
}

#[test]
fn retiring_without_grants_is_unregistering() {
    let pool = Pool::new(PoolConfig::new(16)).unwrap();
    let a = pool.register_client("a");
    pool.retire_client(a).unwrap();
    assert_eq!(pool.stats().clients, 0);
    assert_eq!(pool.register_client("b").slot(), a.slot());
}
