//! Writes the seed corpus of every target into `seeds/<target>/` (from the fuzz directory:
//! `cargo run --bin gen_seeds`). The seeds are the scenarios of the crate's unit, property and
//! hostile-guest tests (`balloon/tests/*.rs`, `gcma::proto`'s unit tests), encoded in each
//! target's input format. Every seed is checked to decode back to what it encodes and to pass
//! its target.
//!
//! Kept as one file although it is long: one seed builder per target, each a list of scenarios
//! encoded the same way.

use std::path::Path;

use ::balloon::gcma::proto::{
    req, PageKey, Request, RequestHeader, SwapKey, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP,
};
use balloon_fuzz::{balloon, gcma, mmio, proto};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create seeds directory");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn proto_seeds() -> Vec<(String, Vec<u8>)> {
    let k = PageKey {
        pool: 3,
        object: [1, 2, 3],
        index: 7,
    };
    let s = SwapKey {
        area: 1,
        offset: 1 << 40,
    };
    let all = [
        Request::AllocContig {
            nr_pages: 512,
            align_pages: 512,
        },
        Request::FreeContig {
            offset: 0x1_0000_0000,
        },
        Request::Stats,
        Request::NewPool,
        Request::Put(k),
        Request::Get(k),
        Request::FlushPage(k),
        Request::FlushObject {
            pool: 3,
            object: [9, 8, 7],
        },
        Request::DestroyPool { pool: 3 },
        Request::Store(s),
        Request::Load(s),
        Request::InvalidatePage(s),
        Request::InvalidateArea { area: 1 },
    ];
    // A response, a stats entry, a config space, a status code and a writable length follow.
    let mut tail = Vec::new();
    tail.extend_from_slice(&3u32.to_le_bytes());
    tail.extend_from_slice(&[0xaa; 4]);
    tail.extend_from_slice(&2u64.to_le_bytes());
    tail.extend_from_slice(&u64::MAX.to_le_bytes());
    tail.extend_from_slice(&12u32.to_le_bytes());
    tail.extend_from_slice(&[0xbb; 4]);
    tail.extend_from_slice(&42u64.to_le_bytes());
    tail.extend_from_slice(&(1u64 << 20).to_le_bytes());
    tail.extend_from_slice(&(1u64 << 21).to_le_bytes());
    tail.extend_from_slice(&4096u32.to_le_bytes());
    tail.extend_from_slice(&[0xcc; 4]);
    tail.extend_from_slice(&10u32.to_le_bytes());
    tail.extend_from_slice(&4120u64.to_le_bytes());
    let mut v: Vec<(String, Vec<u8>)> = all
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut b = r.encode().to_vec();
            b.extend_from_slice(&tail);
            (format!("request_{i:02}"), b)
        })
        .collect();
    // The malformed headers of the unit tests.
    let mut bad = Vec::new();
    let mut h = Request::Stats.header();
    h.index = 1;
    bad.push(h);
    h = Request::Put(PageKey::default()).header();
    h.index = 1 << 32;
    bad.push(h);
    h = Request::AllocContig {
        nr_pages: 1,
        align_pages: 1,
    }
    .header();
    h.arg = 3;
    bad.push(h);
    h.arg = 0;
    bad.push(h);
    h.arg = 1;
    h.index = 0;
    bad.push(h);
    h.req_type = 0x0301;
    bad.push(h);
    bad.push(RequestHeader {
        req_type: 0x02ff,
        ..Default::default()
    });
    h = Request::Store(SwapKey { area: 1, offset: 2 }).header();
    h.object[1] = 1;
    bad.push(h);
    for (i, h) in bad.iter().enumerate() {
        v.push((format!("malformed_{i:02}"), h.encode().to_vec()));
    }
    v.push(("short".into(), vec![0u8; 47]));
    v
}

fn mmio_seeds() -> Vec<(String, mmio::Input)> {
    use ::balloon::transport::mmio::regs;
    use mmio::{Dev, Step::*};
    let all_balloon = Dev::Balloon {
        features: 0xf,
        size: 0,
    };
    let init = |features: u64, queues: u16| {
        let mut v = vec![Negotiate(features | 1 << 32)];
        v.extend((0..queues).map(|index| SetupQueue { index, size: 8 }));
        v.push(DriverOk);
        v
    };
    let mut v = Vec::new();
    // A normal start, an inflate, a stats buffer, a report, a new target and a stats request.
    let mut s = init(0x3f | 1 << 29 | 1 << 40, 4);
    s.extend([
        Traffic { queue: 0, arg: 3 },
        Traffic { queue: 2, arg: 1 },
        Traffic { queue: 3, arg: 2 },
        Vmm(64),
        Vmm(1),
        Ack(3),
        ConfigRead { offset: 0, len: 8 },
        ConfigWrite {
            offset: 4,
            data: 16u32.to_le_bytes().to_vec(),
        },
    ]);
    v.push((
        "balloon_start".into(),
        mmio::Input {
            dev: all_balloon,
            steps: s,
        },
    ));
    // Per-queue reset and re-enable (the balloon supports it).
    let mut s = init(0x3f | 1 << 40, 4);
    s.extend([
        QueueReset(2),
        SetupQueue { index: 2, size: 8 },
        Traffic { queue: 2, arg: 1 },
        QueueReset(5),
    ]);
    v.push((
        "queue_reset".into(),
        mmio::Input {
            dev: all_balloon,
            steps: s,
        },
    ));
    // A stats buffer kicked before DRIVER_OK is picked up on activation.
    let mut s = init(0x3f, 4);
    let ok = s.pop().expect("driver ok");
    s.extend([Traffic { queue: 2, arg: 1 }, ok]);
    v.push((
        "early_notify".into(),
        mmio::Input {
            dev: all_balloon,
            steps: s,
        },
    ));
    // Features not offered, no VERSION_1, FAILED, then a reset.
    v.push((
        "refused_and_failed".into(),
        mmio::Input {
            dev: all_balloon,
            steps: vec![
                Negotiate(1 << 63),
                Negotiate(0x3),
                Status(0x83),
                Write {
                    offset: regs::STATUS,
                    size: 4,
                    value: 0xf,
                },
                Reset,
                Status(1),
                Status(3),
                Status(7),
            ],
        },
    ));
    // Queue configuration outside FEATURES_OK..DRIVER_OK, bad sizes and misaligned rings.
    v.push((
        "queue_misconfig".into(),
        mmio::Input {
            dev: all_balloon,
            steps: vec![
                ProgramQueue {
                    index: 0,
                    size: 8,
                    desc: 0x8_0000,
                    avail: 0x9_0000,
                    used: 0xa_0000,
                },
                Negotiate(1 << 32),
                ProgramQueue {
                    index: 0,
                    size: 3,
                    desc: 0x8_0001,
                    avail: 0x9_0000,
                    used: 0xa_0000,
                },
                ProgramQueue {
                    index: 1,
                    size: 8,
                    desc: 0xffff_ffff,
                    avail: 0x9_0000,
                    used: 0xa_0000,
                },
                SetupQueue { index: 0, size: 8 },
                DriverOk,
                Notify(0),
                Notify(9),
            ],
        },
    ));
    // Raw register traffic, as in the balloon property test.
    v.push((
        "raw_registers".into(),
        mmio::Input {
            dev: all_balloon,
            steps: vec![
                Write {
                    offset: regs::STATUS,
                    size: 4,
                    value: 1,
                },
                Write {
                    offset: regs::DRIVER_FEATURES,
                    size: 2,
                    value: 3,
                },
                Read {
                    offset: regs::DEVICE_FEATURES,
                    size: 1,
                },
                Write {
                    offset: 0x3,
                    size: 4,
                    value: 1,
                },
                Read {
                    offset: regs::CONFIG + 12,
                    size: 8,
                },
                Write {
                    offset: regs::QUEUE_NOTIFY,
                    size: 4,
                    value: 0,
                },
            ],
        },
    ));
    // The first defect this target found: the driver writes the status of a running device
    // again (balloon/tests/fuzz_regressions.rs).
    let mut s = init(0, 2);
    s.extend([
        Traffic { queue: 0, arg: 3 },
        Status(0xf),
        Status(0xf),
        Traffic { queue: 0, arg: 6 },
    ]);
    v.push((
        "status_rewrite".into(),
        mmio::Input {
            dev: all_balloon,
            steps: s,
        },
    ));
    // virtio-gcma: start, stats on every queue, shared-memory regions.
    let mut s = init(0x7, 3);
    s.extend([
        Traffic { queue: 0, arg: 2 },
        Traffic { queue: 1, arg: 0 },
        Shm(0),
        Shm(1),
        ConfigRead { offset: 0, len: 8 },
        ConfigRead { offset: 16, len: 4 },
        Reset,
    ]);
    v.push((
        "gcma_start".into(),
        mmio::Input {
            dev: Dev::Gcma,
            steps: s,
        },
    ));
    v
}

fn balloon_seeds() -> Vec<(String, balloon::Input)> {
    use balloon::{Addr, Buf, Content, Len, Pfn, Step::*};
    let all = (1u64 << 1) | (1 << 5) | (1 << 4) | (1 << 2) | (1 << 29) | (1 << 40);
    let buf = |page: u8, writable: bool| Buf {
        addr: Addr::Data { page, offset: 0 },
        len: Len::Content,
        writable,
    };
    let pfns = |p: &[u8]| Content::Pfns(p.iter().map(|&i| Pfn::Data(i)).collect());
    let mut v = Vec::new();
    // Inflate and deflate, duplicates and pages in both regions.
    v.push((
        "inflate_deflate".into(),
        balloon::Input {
            offer: 0,
            steps: vec![
                Init {
                    features: all,
                    size: 8,
                },
                Chain {
                    queue: 0,
                    content: pfns(&[10, 11, 12, 40, 11]),
                    bufs: vec![buf(1, false)],
                },
                Kick(0),
                Drain(0),
                Chain {
                    queue: 1,
                    content: pfns(&[10, 40, 45]),
                    bufs: vec![buf(1, false)],
                },
                Kick(1),
                Drain(1),
                Chain {
                    queue: 0,
                    content: Content::Pfns(vec![
                        Pfn::Raw(u32::MAX),
                        Pfn::Raw(0x100),
                        Pfn::Rings(30),
                    ]),
                    bufs: vec![buf(2, false)],
                },
                Kick(0),
            ],
        },
    ));
    // Stats held and returned on request; reporting released unless poisoned.
    v.push((
        "stats_and_reporting".into(),
        balloon::Input {
            offer: 0,
            steps: vec![
                Init {
                    features: all,
                    size: 8,
                },
                Chain {
                    queue: 2,
                    content: Content::Stats(vec![(0, 1), (4, 1 << 30), (15, 7), (19, 9)]),
                    bufs: vec![buf(3, false)],
                },
                Kick(2),
                RequestStats,
                Drain(2),
                Chain {
                    queue: 3,
                    content: Content::Raw(vec![]),
                    bufs: vec![Buf {
                        addr: Addr::Data {
                            page: 35,
                            offset: 0,
                        },
                        len: Len::Raw(3 * 4096),
                        writable: true,
                    }],
                },
                Kick(3),
                Config {
                    offset: 12,
                    data: 0xaau32.to_le_bytes().to_vec(),
                },
                Chain {
                    queue: 3,
                    content: Content::Raw(vec![]),
                    bufs: vec![Buf {
                        addr: Addr::Data {
                            page: 20,
                            offset: 100,
                        },
                        len: Len::Page,
                        writable: true,
                    }],
                },
                Kick(3),
                Target(100),
            ],
        },
    ));
    // Stats kicked before DRIVER_OK; per-queue reset; device reset.
    v.push((
        "early_stats_queue_reset".into(),
        balloon::Input {
            offer: 0,
            steps: vec![
                Negotiate { features: all },
                SetupQueue { index: 0, size: 8 },
                SetupQueue { index: 1, size: 8 },
                SetupQueue { index: 2, size: 8 },
                SetupQueue { index: 3, size: 32 },
                Chain {
                    queue: 2,
                    content: Content::Stats(vec![(1, 2)]),
                    bufs: vec![buf(3, false)],
                },
                Kick(2),
                DriverOk,
                QueueReset { queue: 2, size: 8 },
                RequestStats,
                QueueReset { queue: 0, size: 0 },
                Kick(0),
                Reset,
            ],
        },
    ));
    // Hostile rings: a descriptor loop, a head out of range, an indirect descriptor, a buffer
    // outside memory, wrong directions, a huge PFN list.
    let hostile = |name: &str, tail: Vec<balloon::Step>| {
        let mut steps = vec![Init {
            features: all,
            size: 8,
        }];
        steps.extend(tail);
        (name.to_string(), balloon::Input { offer: 0, steps })
    };
    v.push(hostile(
        "descriptor_loop",
        vec![
            RawDesc {
                queue: 0,
                id: 0,
                addr: Addr::Data { page: 1, offset: 0 },
                len: 4,
                flags: 1,
                next: 1,
            },
            RawDesc {
                queue: 0,
                id: 1,
                addr: Addr::Data { page: 1, offset: 0 },
                len: 4,
                flags: 1,
                next: 0,
            },
            Publish { queue: 0, head: 0 },
            Kick(0),
            Reset,
        ],
    ));
    v.push(hostile(
        "head_out_of_range",
        vec![
            Publish {
                queue: 1,
                head: 200,
            },
            Kick(1),
            AvailIdx { queue: 0, idx: 500 },
            Kick(0),
        ],
    ));
    v.push(hostile(
        "indirect",
        vec![
            RawDesc {
                queue: 0,
                id: 3,
                addr: Addr::Data { page: 1, offset: 0 },
                len: 16,
                flags: 4,
                next: 0,
            },
            Publish { queue: 0, head: 3 },
            Kick(0),
        ],
    ));
    v.push(hostile(
        "buffers_outside_memory",
        vec![
            Chain {
                queue: 0,
                content: pfns(&[5]),
                bufs: vec![
                    buf(1, false),
                    Buf {
                        addr: Addr::Hole(9),
                        len: Len::Short(4),
                        writable: false,
                    },
                ],
            },
            Chain {
                queue: 3,
                content: Content::Raw(vec![]),
                bufs: vec![Buf {
                    addr: Addr::Data {
                        page: 31,
                        offset: 0,
                    },
                    len: Len::Raw(2 * 4096),
                    writable: true,
                }],
            },
            Kick(0),
            Kick(3),
        ],
    ));
    v.push(hostile(
        "wrong_directions",
        vec![
            Chain {
                queue: 0,
                content: pfns(&[6, 7]),
                bufs: vec![buf(1, true)],
            },
            Chain {
                queue: 2,
                content: Content::Stats(vec![(2, 3)]),
                bufs: vec![buf(3, true)],
            },
            Chain {
                queue: 3,
                content: pfns(&[8]),
                bufs: vec![buf(4, false), buf(20, true)],
            },
            Chain {
                queue: 0,
                content: Content::Raw(vec![]),
                bufs: vec![Buf {
                    addr: Addr::Data { page: 0, offset: 0 },
                    len: Len::Raw(128 << 10),
                    writable: false,
                }],
            },
            Kick(0),
            Kick(2),
            Kick(3),
        ],
    ));
    v
}

fn gcma_seeds() -> Vec<(String, gcma::Input)> {
    use gcma::{Dev, GrantSel, Kind, PoolSel, Req, Setup, Step::*};
    let setup = |policy: u8| Setup {
        pool: 24,
        policy,
        put_back_limit: 20,
        client_limit: 18,
        windows: [28, 28],
    };
    let r = |kind: Kind| Req { kind, devs: vec![] };
    let batch = |vm: u8, queue: u16, reqs: Vec<Req>| Batch { vm, queue, reqs };
    let pool = PoolSel::Own(0);
    let mut v = Vec::new();
    // cleancache_semantics: new pool, put, get (hit removes), flushes, destroy.
    v.push((
        "cleancache".into(),
        gcma::Input {
            setup: setup(0),
            steps: vec![
                batch(0, 1, vec![r(Kind::NewPool), r(Kind::NewPool)]),
                batch(
                    0,
                    1,
                    vec![
                        r(Kind::Put {
                            pool,
                            obj: 1,
                            index: 2,
                            seed: 1,
                        }),
                        r(Kind::Put {
                            pool,
                            obj: 1,
                            index: 3,
                            seed: 2,
                        }),
                        r(Kind::Get {
                            pool,
                            obj: 1,
                            index: 2,
                        }),
                        r(Kind::Get {
                            pool,
                            obj: 1,
                            index: 2,
                        }),
                        r(Kind::FlushPage {
                            pool,
                            obj: 1,
                            index: 3,
                        }),
                        r(Kind::FlushObject { pool, obj: 1 }),
                        r(Kind::DestroyPool(pool)),
                        r(Kind::Get {
                            pool,
                            obj: 1,
                            index: 2,
                        }),
                    ],
                ),
                batch(
                    1,
                    1,
                    vec![
                        r(Kind::Get {
                            pool: PoolSel::Other(1),
                            obj: 1,
                            index: 2,
                        }),
                        r(Kind::DestroyPool(PoolSel::Other(1))),
                    ],
                ),
            ],
        },
    ));
    // frontswap_semantics: store, load, duplicate store, invalidate page and area.
    for policy in 0..3u8 {
        v.push((
            format!("frontswap_{policy}"),
            gcma::Input {
                setup: setup(policy),
                steps: vec![
                    batch(
                        0,
                        2,
                        vec![
                            r(Kind::Store {
                                area: 0,
                                offset: 1,
                                seed: 1,
                            }),
                            r(Kind::Store {
                                area: 0,
                                offset: 2,
                                seed: 2,
                            }),
                            r(Kind::Store {
                                area: 1,
                                offset: 1,
                                seed: 3,
                            }),
                            r(Kind::Load { area: 0, offset: 1 }),
                            r(Kind::Store {
                                area: 0,
                                offset: 1,
                                seed: 4,
                            }),
                            r(Kind::Load { area: 0, offset: 1 }),
                            r(Kind::Invalidate { area: 0, offset: 2 }),
                            r(Kind::InvalidateArea(1)),
                        ],
                    ),
                    batch(1, 2, vec![r(Kind::Load { area: 0, offset: 1 })]),
                    // A grant that evicts everything, then loads.
                    batch(1, 0, vec![r(Kind::Alloc { nr: 16, align: 1 })]),
                    batch(0, 2, vec![r(Kind::Load { area: 0, offset: 1 })]),
                ],
            },
        ));
    }
    // grants_through_the_window and clients_are_isolated: grants, writes, frees, the other
    // VM's gpa, stats.
    v.push((
        "grants".into(),
        gcma::Input {
            setup: setup(2),
            steps: vec![
                batch(
                    0,
                    0,
                    vec![
                        r(Kind::Alloc { nr: 4, align: 4 }),
                        r(Kind::Alloc { nr: 1, align: 1 }),
                        r(Kind::Stats),
                    ],
                ),
                WriteGrant {
                    vm: 0,
                    grant: 0,
                    page: 1,
                    seed: 9,
                },
                batch(1, 0, vec![r(Kind::Alloc { nr: 3, align: 2 })]),
                batch(
                    1,
                    0,
                    vec![
                        r(Kind::Free(GrantSel::Other(0))),
                        r(Kind::Free(GrantSel::Own(0))),
                        r(Kind::Free(GrantSel::Raw(12345))),
                    ],
                ),
                batch(
                    0,
                    0,
                    vec![
                        r(Kind::Free(GrantSel::Own(1))),
                        r(Kind::Alloc { nr: 64, align: 1 }),
                        r(Kind::Alloc {
                            nr: 1,
                            align: 1 << 40,
                        }),
                    ],
                ),
                Reset(0),
                Init {
                    vm: 1,
                    features: 1,
                    size: 0,
                },
                batch(
                    1,
                    2,
                    vec![r(Kind::Store {
                        area: 0,
                        offset: 0,
                        seed: 0,
                    })],
                ),
            ],
        },
    ));
    // malformed_requests and any_layout_split_buffers: every deviation once.
    let devs = [
        Dev::SplitHeader(10),
        Dev::SplitPage(100),
        Dev::SplitResponse(5),
        Dev::Merge,
        Dev::HeaderLen(1),
        Dev::PageLen(0),
        Dev::ResponseLen(10),
        Dev::Flip(1),
        Dev::Far(2),
        Dev::ToggleData,
        Dev::StatsLen(40),
        Dev::TrailingReadable,
    ];
    let store = Kind::Store {
        area: 0,
        offset: 3,
        seed: 5,
    };
    let mut reqs: Vec<Req> = devs
        .iter()
        .take(8)
        .map(|&d| Req {
            kind: store.clone(),
            devs: vec![d],
        })
        .collect();
    reqs.truncate(8);
    let rest: Vec<Req> = devs[8..]
        .iter()
        .map(|&d| Req {
            kind: Kind::Load { area: 0, offset: 3 },
            devs: vec![d],
        })
        .chain([
            Req {
                kind: Kind::Stats,
                devs: vec![Dev::StatsLen(33)],
            },
            Req {
                kind: Kind::Raw {
                    header: RequestHeader {
                        req_type: req::STORE,
                        index: 3,
                        object: [0, 1, 0],
                        ..Default::default()
                    }
                    .encode()
                    .to_vec(),
                    seed: 1,
                },
                devs: vec![],
            },
        ])
        .collect();
    v.push((
        "layouts".into(),
        gcma::Input {
            setup: setup(1),
            steps: vec![
                batch(0, 2, reqs),
                batch(0, 2, rest),
                batch(0, 1, vec![r(store.clone())]),
                BreakRing {
                    vm: 0,
                    queue: 2,
                    how: 0,
                },
                batch(0, 2, vec![r(Kind::Load { area: 0, offset: 3 })]),
                Reset(0),
                BreakRing {
                    vm: 1,
                    queue: 1,
                    how: 1,
                },
            ],
        },
    ));
    // features_not_negotiated_are_unsupported.
    v.push((
        "unsupported".into(),
        gcma::Input {
            setup: setup(0),
            steps: vec![
                Init {
                    vm: 0,
                    features: VIRTIO_GCMA_F_CONTIG as u8,
                    size: 1,
                },
                batch(0, 1, vec![r(Kind::NewPool)]),
                batch(0, 2, vec![r(store)]),
                Init {
                    vm: 1,
                    features: (VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP) as u8,
                    size: 2,
                },
                batch(
                    1,
                    0,
                    vec![r(Kind::Alloc { nr: 1, align: 1 }), r(Kind::Stats)],
                ),
            ],
        },
    ));
    v
}

fn main() {
    let mut n = 0;
    for (name, bytes) in proto_seeds() {
        proto::run(&bytes);
        write("gcma_proto", &name, &bytes);
        n += 1;
    }
    for (name, input) in mmio_seeds() {
        let bytes = mmio::encode(&input);
        assert_eq!(
            format!("{:?}", mmio::decode(&bytes)),
            format!("{input:?}"),
            "mmio seed {name} does not decode to itself"
        );
        mmio::run(&bytes);
        write("mmio_transport", &name, &bytes);
        n += 1;
    }
    for (name, input) in balloon_seeds() {
        let bytes = balloon::encode(&input);
        assert_eq!(
            balloon::decode(&bytes),
            input,
            "balloon seed {name} does not decode to itself"
        );
        balloon::run(&bytes);
        write("virtio_balloon", &name, &bytes);
        n += 1;
    }
    for (name, input) in gcma_seeds() {
        let bytes = gcma::encode(&input);
        assert_eq!(
            gcma::decode(&bytes),
            input,
            "gcma seed {name} does not decode to itself"
        );
        gcma::run(&bytes);
        write("virtio_gcma", &name, &bytes);
        n += 1;
    }
    // Unused imports otherwise: the feature bits name what the seeds negotiate.
    let _ = VIRTIO_GCMA_F_FRONTSWAP;
    println!("wrote {n} seeds under seeds/");
}
