//! virtio-gcma through the virtio-mmio transport, driven by the harness driver: negotiation, every
//! operation, grants through a test `GrantMapper`, counters, resets and batching. The scenarios are
//! written once over `Arc<dyn GcmaBackend>` and run against the real pool (`gcma_host::pool::Pool`)
//! and against a small in-test stand-in that can inject failures.

mod gcma_support;

use std::sync::Arc;

use balloon::gcma::proto::{
    self, no_space, reject, stat, status, Config, PageKey, Request, StatEntry, SwapKey, CONFIG_LEN,
    PAGE_SIZE, STAT_ENTRY_LEN, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP, VIRTIO_ID_GCMA,
};
use balloon::transport::mmio::regs;
use balloon::transport::{STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1};
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
use gcma_support::{pattern, FakeBackend, Rig, WINDOW_GPA};

pub const ALL: u64 = VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP;

fn fake() -> Arc<dyn GcmaBackend> {
    FakeBackend::new(1024)
}

fn real_pool(nr_pages: u64) -> Arc<dyn GcmaBackend> {
    Pool::new(PoolConfig::new(nr_pages)).expect("pool")
}

fn key(pool: u32, obj: u64, index: u32) -> PageKey {
    PageKey {
        pool,
        object: [obj, 0, 0],
        index,
    }
}

#[test]
fn negotiation_config_and_window() {
    let mut rig = Rig::new(fake(), 2048, ALL, 16);
    let d = &mut rig.driver;
    assert_eq!(d.mmio_read(regs::DEVICE_ID), VIRTIO_ID_GCMA);
    assert_eq!(d.device_features(), ALL | VIRTIO_F_VERSION_1);
    assert_eq!(d.features(), ALL | VIRTIO_F_VERSION_1);
    for q in 0..3 {
        assert_eq!(d.queue_max(q), proto::QUEUE_MAX_SIZE);
    }
    assert_eq!(d.queue_max(3), 0);
    let cfg = d.config_read(0, CONFIG_LEN);
    let cfg = Config::decode(cfg.as_slice().try_into().unwrap());
    assert_eq!(cfg.pool_nr_pages, 1024);
    assert_eq!(cfg.window_nr_pages, 2048);
    assert_eq!(cfg.page_size, PAGE_SIZE as u32);
    d.mmio_write(regs::SHM_SEL, 0);
    let base = u64::from(d.mmio_read(regs::SHM_BASE_LOW))
        | u64::from(d.mmio_read(regs::SHM_BASE_HIGH)) << 32;
    let len = u64::from(d.mmio_read(regs::SHM_LEN_LOW))
        | u64::from(d.mmio_read(regs::SHM_LEN_HIGH)) << 32;
    assert_eq!((base, len), (WINDOW_GPA, 2048 * PAGE_SIZE as u64));
}

pub fn cleancache_semantics(backend: Arc<dyn GcmaBackend>) {
    let mut rig = Rig::new(backend, 256, ALL, 16);
    let a = rig.call(Request::NewPool, None);
    assert_eq!(a.resp.status, status::OK);
    let pool = a.resp.value0 as u32;
    let page = pattern(1);
    let a = rig.call(Request::Put(key(pool, 5, 0)), Some(&page));
    assert_eq!(a.resp.status, status::OK);
    assert_eq!(a.used_len, 24);
    // A hit returns the data and (private pool) removes it.
    let a = rig.call(Request::Get(key(pool, 5, 0)), None);
    assert_eq!(a.resp.status, status::OK);
    assert_eq!(a.used_len as usize, PAGE_SIZE + 24);
    assert!(a.data == page, "cleancache data corrupted");
    assert_eq!(
        rig.call(Request::Get(key(pool, 5, 0)), None).resp.status,
        status::MISS
    );
    // A put over an existing key replaces it: never stale data.
    rig.call(Request::Put(key(pool, 5, 1)), Some(&pattern(2)));
    rig.call(Request::Put(key(pool, 5, 1)), Some(&pattern(3)));
    let a = rig.call(Request::Get(key(pool, 5, 1)), None);
    assert_eq!(a.resp.status, status::OK);
    assert!(a.data == pattern(3), "stale cleancache data returned");
    // Flushes.
    rig.call(Request::Put(key(pool, 6, 0)), Some(&page));
    assert_eq!(
        rig.call(Request::FlushPage(key(pool, 6, 0)), None)
            .resp
            .status,
        status::OK
    );
    assert_eq!(
        rig.call(Request::FlushPage(key(pool, 6, 0)), None)
            .resp
            .status,
        status::MISS
    );
    for i in 0..3 {
        rig.call(Request::Put(key(pool, 7, i)), Some(&pattern(u64::from(i))));
    }
    let a = rig.call(
        Request::FlushObject {
            pool,
            object: [7, 0, 0],
        },
        None,
    );
    assert_eq!((a.resp.status, a.resp.value0), (status::OK, 3));
    assert_eq!(
        rig.call(Request::Get(key(pool, 7, 1)), None).resp.status,
        status::MISS
    );
    assert_eq!(
        rig.call(Request::DestroyPool { pool }, None).resp.status,
        status::OK
    );
    assert_eq!(
        rig.call(Request::Get(key(pool, 5, 0)), None).resp.status,
        status::UNKNOWN_POOL
    );
    assert_eq!(
        rig.call(Request::Put(key(999, 1, 1)), Some(&page))
            .resp
            .status,
        status::UNKNOWN_POOL
    );
    let c = rig.counters();
    assert_eq!(c.by_status[1][status::UNKNOWN_POOL as usize], 2);
    assert_eq!(c.cleancache_succ_gets, 2);
    assert_eq!(c.cleancache_failed_gets, 2);
}

#[test]
fn cleancache_semantics_fake() {
    cleancache_semantics(fake());
}

pub fn frontswap_semantics(backend: Arc<dyn GcmaBackend>) {
    let mut rig = Rig::new(backend, 256, ALL, 16);
    let k = |offset| SwapKey { area: 2, offset };
    for off in 0..8 {
        let a = rig.call(Request::Store(k(off)), Some(&pattern(100 + off)));
        assert_eq!(a.resp.status, status::OK);
    }
    // Persistent: loads keep succeeding until invalidated.
    for _ in 0..2 {
        let a = rig.call(Request::Load(k(3)), None);
        assert_eq!(a.resp.status, status::OK);
        assert!(a.data == pattern(103), "frontswap data corrupted");
    }
    rig.call(Request::Store(k(3)), Some(&pattern(7)));
    assert!(
        rig.call(Request::Load(k(3)), None).data == pattern(7),
        "store did not replace"
    );
    assert_eq!(
        rig.call(Request::InvalidatePage(k(3)), None).resp.status,
        status::OK
    );
    assert_eq!(
        rig.call(Request::Load(k(3)), None).resp.status,
        status::MISS
    );
    assert_eq!(
        rig.call(Request::InvalidatePage(k(3)), None).resp.status,
        status::MISS
    );
    let a = rig.call(Request::InvalidateArea { area: 2 }, None);
    assert_eq!((a.resp.status, a.resp.value0), (status::OK, 7));
    assert_eq!(
        rig.call(Request::Load(k(0)), None).resp.status,
        status::MISS
    );
    let c = rig.counters();
    assert_eq!(c.frontswap_succ_stores, 9);
    assert_eq!(c.frontswap_loads, 3);
}

#[test]
fn frontswap_semantics_fake() {
    frontswap_semantics(fake());
}

#[test]
fn rejected_store_leaves_no_stale_copy() {
    let backend = FakeBackend::new(64);
    let mut rig = Rig::new(backend.clone(), 64, ALL, 16);
    let k = SwapKey { area: 0, offset: 9 };
    rig.call(Request::Store(k), Some(&pattern(1)));
    backend.reject_stores(true);
    let a = rig.call(Request::Store(k), Some(&pattern(2)));
    assert_eq!(
        (a.resp.status, a.resp.value0),
        (status::REJECTED, reject::POOL_FULL)
    );
    backend.reject_stores(false);
    assert_eq!(rig.call(Request::Load(k), None).resp.status, status::MISS);
    assert_eq!(rig.counters().frontswap_failed_stores, 1);
}

pub fn grants_through_the_window(backend: Arc<dyn GcmaBackend>) {
    let pool_pages = backend.nr_pages();
    let mut rig = Rig::new(backend.clone(), pool_pages * 2, ALL, 16);
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 16,
            align_pages: 16,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK);
    // The device answers the offset inside shared-memory region 0; the guest adds the base.
    let (offset, n) = (a.resp.value0, a.resp.value1);
    assert_eq!(n, 16);
    assert!(
        offset.is_multiple_of(16 * PAGE_SIZE as u64),
        "offset {offset:#x}"
    );
    let gpa = WINDOW_GPA + offset;
    let mapped = rig.mapper.mapped();
    assert_eq!(mapped.len(), 1);
    assert_eq!(mapped[0].gpa, gpa);
    // The grant reads as zero and writes land in the pool memory.
    let mut buf = vec![0xffu8; 16 * PAGE_SIZE];
    rig.mapper.read(gpa, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "grant not zeroed");
    rig.mapper
        .write(gpa + PAGE_SIZE as u64, &pattern(42))
        .unwrap();
    let mut pool_bytes = vec![0u8; PAGE_SIZE];
    let off = mapped[0].grant.offset_bytes() + PAGE_SIZE as u64;
    nix_pread(backend.memfd(), &mut pool_bytes, off);
    assert!(
        pool_bytes == pattern(42),
        "grant write did not reach the pool"
    );
    let c = rig.counters();
    assert_eq!((c.grants, c.granted_pages), (1, 16));
    // A second grant lands elsewhere.
    let b = rig.call(
        Request::AllocContig {
            nr_pages: 3,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(b.resp.status, status::OK);
    assert!(
        b.resp.value0 >= offset + 16 * PAGE_SIZE as u64
            || b.resp.value0 + 3 * PAGE_SIZE as u64 <= offset
    );
    // Free, double free, unknown offsets (inside the window, and past the end of the address
    // space once the base is added).
    let f = rig.call(Request::FreeContig { offset }, None);
    assert_eq!((f.resp.status, f.resp.value0), (status::OK, 16));
    assert_eq!(
        rig.call(Request::FreeContig { offset }, None).resp.status,
        status::UNKNOWN_GRANT
    );
    for bad in [12345, u64::MAX - PAGE_SIZE as u64 + 1, gpa] {
        assert_eq!(
            rig.call(Request::FreeContig { offset: bad }, None)
                .resp
                .status,
            status::UNKNOWN_GRANT,
            "offset {bad:#x}"
        );
    }
    assert_eq!(rig.mapper.mapped().len(), 1);
    assert_eq!(rig.counters().granted_pages, 3);
    // Too big for the pool.
    let a = rig.call(
        Request::AllocContig {
            nr_pages: pool_pages + 1,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::NO_SPACE);
    assert_eq!(a.resp.value0, no_space::EXHAUSTED);
    // With every grant returned, the whole pool can be granted, then nothing more.
    let f = rig.call(
        Request::FreeContig {
            offset: b.resp.value0,
        },
        None,
    );
    assert_eq!(f.resp.status, status::OK);
    assert!(rig.mapper.mapped().is_empty());
    let a = rig.call(
        Request::AllocContig {
            nr_pages: pool_pages,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK, "{:?}", a.resp);
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 1,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::NO_SPACE);
    let c = rig.counters();
    assert_eq!(c.by_status[0][status::NO_SPACE as usize], 2);
    assert_eq!(c.granted_pages, pool_pages);
}

fn nix_pread(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8], off: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    f.read_exact_at(buf, off).unwrap();
}

#[test]
fn grants_through_the_window_fake() {
    grants_through_the_window(fake());
}

#[test]
fn window_full_and_map_failure_return_the_grant() {
    let backend = FakeBackend::new(256);
    let mut rig = Rig::new(backend.clone(), 8, ALL, 16);
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 9,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(
        (a.resp.status, a.resp.value0),
        (status::NO_SPACE, no_space::WINDOW_FULL)
    );
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 6,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK);
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 4,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(
        (a.resp.status, a.resp.value0),
        (status::NO_SPACE, no_space::WINDOW_FULL)
    );
    assert_eq!(
        backend.granted_pages(),
        6,
        "grant not returned after window full"
    );
    rig.mapper.fail_next_map();
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 1,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::MAP_FAILED);
    assert_eq!(
        backend.granted_pages(),
        6,
        "grant not returned after map failure"
    );
    // A failing unmap keeps the grant (the guest may still see it) and says so.
    let offset = rig.mapper.mapped()[0].gpa - WINDOW_GPA;
    rig.mapper.fail_unmaps(true);
    assert_eq!(
        rig.call(Request::FreeContig { offset }, None).resp.status,
        status::IO_ERROR
    );
    assert_eq!(backend.granted_pages(), 6);
    rig.mapper.fail_unmaps(false);
    assert_eq!(
        rig.call(Request::FreeContig { offset }, None).resp.status,
        status::OK
    );
    assert_eq!(backend.granted_pages(), 0);
}

#[test]
fn features_not_negotiated_are_unsupported() {
    let mut rig = Rig::new(fake(), 64, VIRTIO_GCMA_F_CLEANCACHE, 16);
    assert_eq!(rig.call(Request::NewPool, None).resp.status, status::OK);
    let a = rig.call(Request::Store(SwapKey::default()), Some(&pattern(0)));
    assert_eq!(a.resp.status, status::UNSUPPORTED);
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 1,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::UNSUPPORTED);
    // STATS needs no feature.
    assert_eq!(rig.call(Request::Stats, None).resp.status, status::OK);
}

#[test]
fn stats_report_the_counters() {
    let mut rig = Rig::new(fake(), 64, ALL, 16);
    let pool = rig.call(Request::NewPool, None).resp.value0 as u32;
    rig.call(Request::Put(key(pool, 1, 1)), Some(&pattern(1)));
    rig.call(Request::Get(key(pool, 1, 1)), None);
    rig.call(Request::Get(key(pool, 1, 1)), None);
    rig.call(Request::Store(SwapKey::default()), Some(&pattern(1)));
    rig.call(
        Request::AllocContig {
            nr_pages: 5,
            align_pages: 1,
        },
        None,
    );
    let a = rig.call(Request::Stats, None);
    assert_eq!(a.resp.status, status::OK);
    assert_eq!(a.resp.value1 as usize, stat::COUNT);
    let n = a.resp.value0 as usize;
    assert_eq!(n, stat::COUNT);
    assert_eq!(a.used_len as usize, n * STAT_ENTRY_LEN + 24);
    let entries: Vec<StatEntry> = a.data[..n * STAT_ENTRY_LEN]
        .chunks(STAT_ENTRY_LEN)
        .map(|c| StatEntry::decode(c.try_into().unwrap()))
        .collect();
    let get = |tag| entries.iter().find(|e| e.tag == tag).map(|e| e.value);
    assert_eq!(get(stat::POOL_NR_PAGES), Some(1024));
    assert_eq!(get(stat::WINDOW_NR_PAGES), Some(64));
    assert_eq!(get(stat::GRANTS), Some(1));
    assert_eq!(get(stat::GRANTED_PAGES), Some(5));
    assert_eq!(get(stat::CLEANCACHE_PUTS), Some(1));
    assert_eq!(get(stat::CLEANCACHE_SUCC_GETS), Some(1));
    assert_eq!(get(stat::CLEANCACHE_FAILED_GETS), Some(1));
    assert_eq!(get(stat::FRONTSWAP_SUCC_STORES), Some(1));
    // A smaller buffer gets fewer entries.
    let head = rig.submit(0, &Request::Stats, None, 2 * STAT_ENTRY_LEN as u32);
    rig.driver.kick(0);
    let u = rig.driver.pop_used(0).unwrap().unwrap();
    assert_eq!((u.head, u.len as usize), (head, 2 * STAT_ENTRY_LEN + 24));
}

#[test]
fn batch_is_answered_on_one_notification() {
    let mut rig = Rig::new(fake(), 64, ALL, 256);
    let reqs: Vec<_> = (0..64)
        .map(|i| {
            (
                Request::Store(SwapKey { area: 1, offset: i }),
                Some(pattern(i)),
            )
        })
        .collect();
    let irqs = rig.irq.count();
    let answers = rig.batch(&reqs);
    assert!(answers.iter().all(|a| a.resp.status == status::OK));
    assert_eq!(rig.irq.count() - irqs, 1, "one interrupt per batch");
    assert_eq!(rig.counters().notifications[2], 1);
    let loads: Vec<_> = (0..64)
        .map(|i| (Request::Load(SwapKey { area: 1, offset: i }), None))
        .collect();
    for (i, a) in rig.batch(&loads).iter().enumerate() {
        assert!(a.data == pattern(i as u64), "load {i} wrong");
    }
}

pub fn reset_releases_everything(backend: Arc<dyn GcmaBackend>) {
    let mut rig = Rig::new(backend.clone(), 1024, ALL, 16);
    let pool = rig.call(Request::NewPool, None).resp.value0 as u32;
    rig.call(Request::Put(key(pool, 1, 1)), Some(&pattern(1)));
    rig.call(
        Request::Store(SwapKey { area: 0, offset: 1 }),
        Some(&pattern(2)),
    );
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 32,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK);
    let client = rig.driver.bus().device().client();
    // A request in flight when the driver resets is dropped with the queue.
    rig.submit(1, &Request::Load(SwapKey { area: 0, offset: 1 }), None, 0);
    rig.driver.reset();
    assert!(
        rig.mapper.mapped().is_empty(),
        "grant still mapped after reset"
    );
    assert_ne!(rig.driver.bus().device().client(), client);
    assert_eq!(rig.counters().granted_pages, 0);
    // The pages are free again: the whole pool can be granted.
    rig.driver.init(ALL, 16).unwrap();
    let all = backend.nr_pages();
    let a = rig.call(
        Request::AllocContig {
            nr_pages: all,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK, "{:?}", a.resp);
    // The old client's data is gone.
    assert_eq!(
        rig.call(Request::Load(SwapKey { area: 0, offset: 1 }), None)
            .resp
            .status,
        status::MISS
    );
    assert_eq!(
        rig.call(Request::Get(key(pool, 1, 1)), None).resp.status,
        status::UNKNOWN_POOL
    );
    assert_eq!(rig.counters().resets, 1);
}

#[test]
fn reset_releases_everything_fake() {
    reset_releases_everything(fake());
}

#[test]
fn drop_releases_the_client() {
    let backend = FakeBackend::new(64);
    {
        let mut rig = Rig::new(backend.clone(), 64, ALL, 16);
        rig.call(
            Request::AllocContig {
                nr_pages: 10,
                align_pages: 1,
            },
            None,
        );
        assert_eq!(backend.granted_pages(), 10);
    }
    assert_eq!(backend.granted_pages(), 0);
}

#[test]
fn needs_reset_bit_is_not_set_by_normal_traffic() {
    let mut rig = Rig::new(fake(), 64, ALL, 16);
    rig.call(Request::NewPool, None);
    assert_eq!(rig.driver.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn cleancache_semantics_pool() {
    cleancache_semantics(real_pool(512));
}

#[test]
fn frontswap_semantics_pool() {
    frontswap_semantics(real_pool(512));
}

#[test]
fn grants_through_the_window_pool() {
    grants_through_the_window(real_pool(512));
}

#[test]
fn reset_releases_everything_pool() {
    reset_releases_everything(real_pool(512));
}

/// A grant of the whole pool evicts second-class pages: cleancache pages are dropped (gets miss),
/// frontswap pages survive (write-through), and the grant reads as zeros.
#[test]
fn grant_evicts_second_class_pages_pool() {
    let backend = real_pool(256);
    let mut rig = Rig::new(backend.clone(), 512, ALL, 64);
    let pool = rig.call(Request::NewPool, None).resp.value0 as u32;
    let puts: Vec<_> = (0..20)
        .map(|i| (Request::Put(key(pool, 1, i)), Some(pattern(u64::from(i)))))
        .collect();
    assert!(rig.batch(&puts).iter().all(|a| a.resp.status == status::OK));
    let stores: Vec<_> = (0..20)
        .map(|i| {
            (
                Request::Store(SwapKey { area: 0, offset: i }),
                Some(pattern(1000 + i)),
            )
        })
        .collect();
    assert!(rig
        .batch(&stores)
        .iter()
        .all(|a| a.resp.status == status::OK));
    let a = rig.call(
        Request::AllocContig {
            nr_pages: 256,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(a.resp.status, status::OK, "{:?}", a.resp);
    let mut buf = vec![0xffu8; 256 * PAGE_SIZE];
    rig.mapper
        .read(WINDOW_GPA + a.resp.value0, &mut buf)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0), "grant shows evicted data");
    let gets: Vec<_> = (0..20)
        .map(|i| (Request::Get(key(pool, 1, i)), None))
        .collect();
    assert!(rig
        .batch(&gets)
        .iter()
        .all(|a| a.resp.status == status::MISS));
    let loads: Vec<_> = (0..20)
        .map(|i| (Request::Load(SwapKey { area: 0, offset: i }), None))
        .collect();
    for (i, a) in rig.batch(&loads).iter().enumerate() {
        assert_eq!(a.resp.status, status::OK, "frontswap page {i} lost");
        assert!(
            a.data == pattern(1000 + i as u64),
            "frontswap page {i} corrupted"
        );
    }
}

/// Two VMs on one pool: neither can name the other's cleancache pool, frontswap pages or grants.
#[test]
fn clients_are_isolated_pool() {
    let backend = real_pool(512);
    let mut a = Rig::new(backend.clone(), 512, ALL, 16);
    let mut b = Rig::new(backend.clone(), 512, ALL, 16);
    let pool_a = a.call(Request::NewPool, None).resp.value0 as u32;
    assert_eq!(
        a.call(Request::Put(key(pool_a, 1, 1)), Some(&pattern(1)))
            .resp
            .status,
        status::OK
    );
    let sk = SwapKey { area: 0, offset: 7 };
    assert_eq!(
        a.call(Request::Store(sk), Some(&pattern(2))).resp.status,
        status::OK
    );
    let grant = a.call(
        Request::AllocContig {
            nr_pages: 4,
            align_pages: 1,
        },
        None,
    );
    assert_eq!(grant.resp.status, status::OK);
    // B uses A's identifiers.
    let r = b.call(Request::Get(key(pool_a, 1, 1)), None);
    assert_ne!(r.resp.status, status::OK);
    assert!(r.data != pattern(1), "B read A's cleancache page");
    assert_eq!(b.call(Request::Load(sk), None).resp.status, status::MISS);
    assert_eq!(
        b.call(Request::InvalidateArea { area: 0 }, None)
            .resp
            .value0,
        0
    );
    assert_eq!(
        b.call(
            Request::FreeContig {
                offset: grant.resp.value0
            },
            None
        )
        .resp
        .status,
        status::UNKNOWN_GRANT
    );
    // A still has everything.
    assert_eq!(a.call(Request::Load(sk), None).resp.status, status::OK);
    assert_eq!(
        a.call(Request::Get(key(pool_a, 1, 1)), None).resp.status,
        status::OK
    );
    assert_eq!(
        a.call(
            Request::FreeContig {
                offset: grant.resp.value0
            },
            None
        )
        .resp
        .status,
        status::OK
    );
}
