//! `NO_SPACE` tells a guest only its own numbers: two guests share one real pool, and what one
//! holds never shows in the other's answers (a pool-wide count would tell a guest how much its
//! neighbours use).

mod gcma_support;

use balloon::gcma::proto::{no_space, status, Request, VIRTIO_GCMA_F_CONTIG};
use gcma_host::pool::{Pool, PoolConfig};
use gcma_support::Rig;

fn alloc(rig: &mut Rig, nr_pages: u64) -> (u32, u64, u64) {
    let a = rig.call(
        Request::AllocContig {
            nr_pages,
            align_pages: 1,
        },
        None,
    );
    (a.resp.status, a.resp.value0, a.resp.value1)
}

#[test]
fn no_space_reports_the_guests_own_grants_not_the_pools() {
    let pool = Pool::new(PoolConfig::new(1024)).unwrap();
    let mut a = Rig::new(pool.clone(), 1024, VIRTIO_GCMA_F_CONTIG, 16);
    let mut b = Rig::new(pool.clone(), 1024, VIRTIO_GCMA_F_CONTIG, 16);

    // A holds 600 pages in two grants, B 100.
    let (st, a1, _) = alloc(&mut a, 300);
    assert_eq!(st, status::OK);
    assert_eq!(alloc(&mut a, 300).0, status::OK);
    assert_eq!(alloc(&mut b, 100).0, status::OK);

    // Exhausted: 324 pages are left in the pool; B learns only that it holds 100.
    let (st, reason, value) = alloc(&mut b, 500);
    assert_eq!((st, reason), (status::NO_SPACE, no_space::EXHAUSTED));
    assert_eq!(
        value, 100,
        "B's own granted pages, not the pool's free count"
    );

    // Fragmented: A frees its first run, leaving runs of 300 and 324.
    let f = a.call(Request::FreeContig { offset: a1 }, None);
    assert_eq!(f.resp.status, status::OK);
    let (st, reason, value) = alloc(&mut b, 400);
    assert_eq!((st, reason), (status::NO_SPACE, no_space::FRAGMENTED));
    assert_eq!(
        value, 100,
        "B's own granted pages, not the pool's longest run"
    );

    // Whatever A does, B's answers stay the same.
    assert_eq!(alloc(&mut a, 200).0, status::OK);
    assert_eq!(
        alloc(&mut b, 500),
        (status::NO_SPACE, no_space::EXHAUSTED, 100)
    );
    assert_eq!(alloc(&mut b, 400).2, 100);

    // A's own answer names its own 500 pages.
    assert_eq!(
        alloc(&mut a, 400),
        (status::NO_SPACE, no_space::FRAGMENTED, 500)
    );

    // The grant window's answer is the window's own free pages, as before.
    let mut small = Rig::new(pool.clone(), 8, VIRTIO_GCMA_F_CONTIG, 16);
    assert_eq!(
        alloc(&mut small, 9),
        (status::NO_SPACE, no_space::WINDOW_FULL, 8)
    );
}
