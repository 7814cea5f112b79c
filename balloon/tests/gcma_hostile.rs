//! Hostile guests against virtio-gcma: malformed requests get a status (or, when not even a
//! response buffer exists, a used length of 0) and a counter; broken rings get
//! `DEVICE_NEEDS_RESET`; nothing panics. Proptests fuzz the header parser, whole request chains
//! and raw descriptor tables.

mod gcma_support;

use std::cell::RefCell;

use balloon::gcma::proto::{
    req, status, Request, RequestHeader, Response, SwapKey, PAGE_SIZE, REQUEST_HEADER_LEN,
    RESPONSE_LEN, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG, VIRTIO_GCMA_F_FRONTSWAP,
};
use balloon::transport::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use balloon::transport::STATUS_DEVICE_NEEDS_RESET;
use gcma_support::{pattern, FakeBackend, Rig, GUEST_MEM};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const ALL: u64 = VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP;
const FS: u16 = 2;

fn rig() -> Rig {
    Rig::new(FakeBackend::new(256), 256, ALL, 16)
}

/// Puts `bufs` on `queue`, kicks, returns (used length, response at `resp_gpa`).
fn send(rig: &mut Rig, queue: u16, bufs: &[(u64, u32, bool)], resp_gpa: u64) -> (u32, Response) {
    rig.driver
        .write_mem(resp_gpa, &[0xee; RESPONSE_LEN])
        .unwrap();
    let head = rig.driver.add_chain(queue, bufs).unwrap();
    rig.driver.kick(queue);
    let u = rig
        .driver
        .pop_used(queue)
        .unwrap()
        .expect("chain not returned");
    assert_eq!(u.head, head);
    let r = rig.driver.read_mem(resp_gpa, RESPONSE_LEN).unwrap();
    (u.len, Response::decode(r.as_slice().try_into().unwrap()))
}

fn bad(rig: &mut Rig, queue: u16, bufs: &[(u64, u32, bool)], resp_gpa: u64) {
    let (len, r) = send(rig, queue, bufs, resp_gpa);
    assert_eq!(
        (len, r.status),
        (RESPONSE_LEN as u32, status::BAD_REQUEST),
        "{bufs:x?}"
    );
}

#[test]
fn malformed_requests_get_bad_request() {
    let mut rig = rig();
    let s = rig.slots[0];
    let hdr = (s.hdr, REQUEST_HEADER_LEN as u32, false);
    let resp = (s.resp, RESPONSE_LEN as u32, true);
    let page_r = (s.page, PAGE_SIZE as u32, false);
    let page_w = (s.page, PAGE_SIZE as u32, true);
    let store = Request::Store(SwapKey { area: 1, offset: 2 });
    rig.driver.write_mem(s.page, &pattern(5)).unwrap();

    // Unknown type.
    let mut h = RequestHeader {
        req_type: 0x02ff,
        ..Default::default()
    };
    rig.driver.write_mem(s.hdr, &h.encode()).unwrap();
    bad(&mut rig, FS, &[hdr, resp], s.resp);
    // Reserved field set.
    h = store.header();
    h.object[1] = 1;
    rig.driver.write_mem(s.hdr, &h.encode()).unwrap();
    bad(&mut rig, FS, &[hdr, page_r, resp], s.resp);
    // Right request, wrong queue.
    rig.driver.write_mem(s.hdr, &store.encode()).unwrap();
    bad(&mut rig, 1, &[hdr, page_r, resp], s.resp);
    // Short header.
    bad(&mut rig, FS, &[(s.hdr, 40, false), resp], s.resp);
    // STORE without its page; with a page that is too long; with the page device-writable.
    bad(&mut rig, FS, &[hdr, resp], s.resp);
    bad(
        &mut rig,
        FS,
        &[hdr, (s.page, PAGE_SIZE as u32 + 1, false), resp],
        s.resp,
    );
    bad(&mut rig, FS, &[hdr, page_w, resp], s.resp);
    // LOAD with the page device-readable (wrong direction).
    rig.driver
        .write_mem(s.hdr, &Request::Load(SwapKey::default()).encode())
        .unwrap();
    bad(&mut rig, FS, &[hdr, page_r, resp], s.resp);
    // Writable before readable.
    bad(&mut rig, FS, &[page_w, hdr, resp], s.resp);
    // Page outside guest memory; huge length.
    rig.driver.write_mem(s.hdr, &store.encode()).unwrap();
    bad(
        &mut rig,
        FS,
        &[hdr, (GUEST_MEM as u64 - 100, PAGE_SIZE as u32, false), resp],
        s.resp,
    );
    bad(
        &mut rig,
        FS,
        &[hdr, (s.page, u32::MAX, false), resp],
        s.resp,
    );
    bad(
        &mut rig,
        FS,
        &[hdr, (u64::MAX - 10, PAGE_SIZE as u32, false), resp],
        s.resp,
    );
    let c = rig.counters();
    assert_eq!(c.by_status[2][status::BAD_REQUEST as usize], 11);
    assert_eq!(c.by_status[1][status::BAD_REQUEST as usize], 1);
    assert_eq!(rig.driver.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // The device still works, and nothing bad was stored.
    assert_eq!(
        rig.call(Request::Load(SwapKey { area: 1, offset: 2 }), None)
            .resp
            .status,
        status::MISS
    );
    assert_eq!(rig.call(store, Some(&pattern(5))).resp.status, status::OK);
}

#[test]
fn unanswerable_chains_are_returned_empty_and_counted() {
    let mut rig = rig();
    let s = rig.slots[0];
    let hdr = (s.hdr, REQUEST_HEADER_LEN as u32, false);
    rig.driver
        .write_mem(s.hdr, &Request::InvalidateArea { area: 1 }.encode())
        .unwrap();
    // No writable buffer at all.
    let (len, _) = send(&mut rig, FS, &[hdr], s.resp);
    assert_eq!(len, 0);
    // Writable buffer too small for a response.
    let (len, r) = send(&mut rig, FS, &[hdr, (s.resp, 23, true)], s.resp);
    assert_eq!(len, 0);
    assert_eq!(
        r.status, 0xeeee_eeee,
        "device wrote into a too-small buffer"
    );
    // Response buffer outside guest memory.
    let (len, _) = send(
        &mut rig,
        FS,
        &[hdr, (GUEST_MEM as u64 - 8, 24, true)],
        s.resp,
    );
    assert_eq!(len, 0);
    assert_eq!(rig.counters().unanswerable[2], 3);
    assert_eq!(
        rig.call(Request::InvalidateArea { area: 1 }, None)
            .resp
            .status,
        status::OK
    );
}

#[test]
fn any_layout_split_buffers_work() {
    let mut rig = rig();
    let s = rig.slots[0];
    let store = Request::Store(SwapKey { area: 3, offset: 4 });
    let mut stream = store.encode().to_vec();
    stream.extend_from_slice(&pattern(9));
    // Header and page laid out contiguously, cut at odd places into 4 descriptors.
    rig.driver.write_mem(s.page, &stream[..PAGE_SIZE]).unwrap();
    let rest = rig.driver.alloc(64, 8).unwrap();
    rig.driver.write_mem(rest, &stream[PAGE_SIZE..]).unwrap();
    let bufs = [
        (s.page, 7, false),
        (s.page + 7, 100, false),
        (s.page + 107, PAGE_SIZE as u32 - 107, false),
        (rest, REQUEST_HEADER_LEN as u32, false),
        (s.resp, 5, true),
        (s.resp + 5, 19, true),
    ];
    let (len, r) = send(&mut rig, FS, &bufs, s.resp);
    assert_eq!((len, r.status), (24, status::OK));
    let a = rig.call(Request::Load(SwapKey { area: 3, offset: 4 }), None);
    assert!(a.data == pattern(9), "split store corrupted the page");
    // A load into a page split over two writable descriptors (the device's bounce-buffer path).
    rig.driver
        .write_mem(
            s.hdr,
            &Request::Load(SwapKey { area: 3, offset: 4 }).encode(),
        )
        .unwrap();
    rig.driver.write_mem(s.page, &[0u8; PAGE_SIZE]).unwrap();
    let bufs = [
        (s.hdr, REQUEST_HEADER_LEN as u32, false),
        (s.page, 100, true),
        (s.page + 100, PAGE_SIZE as u32 - 100, true),
        (s.resp, RESPONSE_LEN as u32, true),
    ];
    let (len, r) = send(&mut rig, FS, &bufs, s.resp);
    assert_eq!(
        (len as usize, r.status),
        (PAGE_SIZE + RESPONSE_LEN, status::OK)
    );
    let got = rig.driver.read_mem(s.page, PAGE_SIZE).unwrap();
    assert!(got == pattern(9), "split load corrupted the page");
}

#[test]
fn descriptor_loop_needs_reset() {
    let mut rig = rig();
    let s = rig.slots[0];
    rig.driver
        .write_mem(s.hdr, &Request::InvalidateArea { area: 1 }.encode())
        .unwrap();
    rig.driver
        .write_desc_raw(FS, 0, s.hdr, 48, VIRTQ_DESC_F_NEXT, 1)
        .unwrap();
    rig.driver
        .write_desc_raw(FS, 1, s.resp, 24, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0)
        .unwrap();
    rig.driver.publish_raw(FS, 0).unwrap();
    rig.driver.kick(FS);
    assert_ne!(rig.driver.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(rig.counters().broken_rings, 1);
    // A reset brings the device back.
    rig.driver.init(ALL, 16).unwrap();
    assert_eq!(
        rig.call(Request::InvalidateArea { area: 1 }, None)
            .resp
            .status,
        status::OK
    );
}

fn valid_header() -> impl Strategy<Value = [u8; REQUEST_HEADER_LEN]> {
    let types = prop::sample::select(vec![
        req::ALLOC_CONTIG,
        req::FREE_CONTIG,
        req::STATS,
        req::NEW_POOL,
        req::PUT,
        req::GET,
        req::FLUSH_PAGE,
        req::FLUSH_OBJECT,
        req::DESTROY_POOL,
        req::STORE,
        req::LOAD,
        req::INVALIDATE_PAGE,
        req::INVALIDATE_AREA,
    ]);
    (
        types,
        0u32..4,
        prop::option::of(any::<[u64; 3]>()),
        prop::option::of(0u64..300),
        prop::option::of(any::<u64>()),
        prop::option::of((0usize..48, any::<u8>())),
    )
        .prop_map(|(t, pool, obj, index, arg, flip)| {
            let h = RequestHeader {
                req_type: t,
                pool,
                object: obj.unwrap_or_default(),
                index: index.unwrap_or(1),
                arg: arg.map_or(1, |a| a % 4),
            };
            let mut b = h.encode();
            if let Some((i, x)) = flip {
                b[i] ^= x;
            }
            b
        })
}

fn any_header() -> impl Strategy<Value = [u8; REQUEST_HEADER_LEN]> {
    prop_oneof![valid_header(), any::<[u8; REQUEST_HEADER_LEN]>()]
}

#[test]
fn parser_never_panics_and_round_trips() {
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..100), |bytes| {
            if let Ok(r) = Request::parse(&bytes) {
                prop_assert_eq!(Request::parse(&r.encode()), Ok(r));
                prop_assert_eq!(&r.encode()[..], &bytes[..REQUEST_HEADER_LEN]);
            }
            Ok(())
        })
        .unwrap();
    runner
        .run(&valid_header(), |b| {
            if let Ok(r) = Request::parse(&b) {
                prop_assert_eq!(r.encode(), b);
            }
            Ok(())
        })
        .unwrap();
}

/// One descriptor of a fuzzed chain: where it points and how long it is.
#[derive(Debug, Clone)]
struct FuzzDesc {
    place: u8,
    offset: u32,
    len_kind: u8,
    len: u32,
    writable: bool,
}

fn fuzz_desc() -> impl Strategy<Value = FuzzDesc> {
    (0u8..10, 0u32..0x8000, 0u8..10, any::<u32>(), any::<bool>()).prop_map(
        |(place, offset, len_kind, len, writable)| FuzzDesc {
            place,
            offset,
            len_kind,
            len,
            writable,
        },
    )
}

#[test]
fn fuzzed_request_chains_never_panic() {
    let rig = RefCell::new(rig());
    let arena = rig.borrow_mut().driver.alloc(0x10000, 4096).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    let strat = (
        0u16..3,
        any_header(),
        prop::collection::vec(fuzz_desc(), 1..7),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    runner
        .run(&strat, |(queue, header, descs, noise)| {
            let mut rig = rig.borrow_mut();
            rig.driver.write_mem(arena, &header).unwrap();
            rig.driver.write_mem(arena + 0x9000, &noise).unwrap();
            let bufs: Vec<(u64, u32, bool)> = descs
                .iter()
                .map(|d| {
                    let len = match d.len_kind {
                        0 => 0,
                        1 => REQUEST_HEADER_LEN as u32,
                        2 => RESPONSE_LEN as u32,
                        3 => PAGE_SIZE as u32,
                        4 => (PAGE_SIZE + RESPONSE_LEN) as u32,
                        5 => u32::MAX,
                        _ => d.len % 0x2000,
                    };
                    let addr = match d.place {
                        0 => GUEST_MEM as u64 - u64::from(d.offset % 64),
                        1 => u64::MAX - u64::from(d.offset),
                        2 => arena,
                        _ => arena + u64::from(d.offset),
                    };
                    (addr, len, d.writable)
                })
                .collect();
            let total_w: u64 = bufs.iter().filter(|b| b.2).map(|b| u64::from(b.1)).sum();
            let head = rig.driver.add_chain(queue, &bufs).unwrap();
            rig.driver.kick(queue);
            prop_assert_eq!(rig.driver.status() & STATUS_DEVICE_NEEDS_RESET, 0);
            let u = rig.driver.pop_used(queue).unwrap();
            let u = u.expect("chain returned");
            prop_assert_eq!(u.head, head);
            prop_assert!(u64::from(u.len) <= total_w);
            Ok(())
        })
        .unwrap();
    let mut rig = rig.into_inner();
    let c = rig.counters();
    let answered: u64 = (0..3).map(|q| c.requests(q)).sum();
    let unanswerable: u64 = c.unanswerable.iter().sum();
    assert_eq!(answered + unanswerable, 300);
    assert_eq!(rig.call(Request::Stats, None).resp.status, status::OK);
}

#[test]
fn fuzzed_descriptor_tables_never_panic() {
    let rig = RefCell::new(rig());
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    let desc = (0u64..0x3000, 0u32..0x1100, 0u16..8, 0u16..20);
    let strat = (
        prop::collection::vec(desc, 16),
        0u16..20,
        any_header(),
        any::<bool>(),
    );
    runner
        .run(&strat, |(table, head, header, bump_avail)| {
            let mut rig = rig.borrow_mut();
            let s = rig.slots[0];
            rig.driver.write_mem(s.hdr, &header).unwrap();
            for (i, &(off, len, flags, next)) in table.iter().enumerate() {
                let flags =
                    flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT);
                rig.driver
                    .write_desc_raw(FS, i as u16, s.hdr + off, len, flags, next)
                    .unwrap();
            }
            rig.driver.publish_raw(FS, head).unwrap();
            if bump_avail {
                rig.driver.set_avail_idx_raw(FS, 40).unwrap();
            }
            rig.driver.kick(FS);
            let needs_reset = rig.driver.status() & STATUS_DEVICE_NEEDS_RESET != 0;
            // The harness's bookkeeping is meaningless after raw writes: start over each time.
            rig.driver.init(ALL, 16).unwrap();
            let st = rig
                .call(Request::InvalidateArea { area: 9 }, None)
                .resp
                .status;
            prop_assert_eq!(
                st,
                status::OK,
                "device unusable after reset (needs_reset {})",
                needs_reset
            );
            Ok(())
        })
        .unwrap();
}
