//! virtio-gcma: arbitrary request streams on all three queues of two devices (two VMs) that are
//! clients of one real `gcma_host::pool::Pool` (small, not locked), checked against a model.
//!
//! An input sets up the pool (size, frontswap policy, put-back and per-client limits) and the two
//! VMs' grant windows, then runs steps: batches of requests on one queue of one VM (any request
//! type, well-formed or with a broken header, laid out in any of the ways the protocol allows or
//! forbids: headers and pages split over descriptors, merged buffers, wrong lengths, wrong
//! directions, readable after writable, buffers outside guest memory, responses too short),
//! guest writes into granted memory, device resets, re-initialisation with other features, and
//! broken rings.
//!
//! The oracle is the tmem/grant contract of `balloon/PROTOCOL.md`, kept per VM in [`Model`]:
//! * every chain is returned (unless the ring broke), answered when its response bytes are
//!   guest memory, with `BAD_REQUEST` exactly when the protocol says the chain is malformed and
//!   `UNSUPPORTED` when its feature was not negotiated; an unanswered request changes nothing;
//! * grants: a new grant reads as zero; afterwards every granted page holds exactly what its
//!   owner wrote into it (so no page granted to one VM ever holds the other's bytes, and no
//!   second-class data lands in a granted page); the device, the mapper and the model agree on
//!   the grants; grants of both VMs never share a pool page; a VM can never free the other's
//!   grant; the pool's own consistency check passes after every batch;
//! * cleancache: a hit returns the last page put under that key by that VM, never another's;
//!   pools are private (another VM's pool id is unknown);
//! * frontswap: once a store is accepted, a load returns exactly that page until it is
//!   invalidated or replaced; a rejected store leaves no copy. After the input, every page a VM
//!   may hold is loaded straight from the pool and compared.
//!
//! Everything that touches the device's construction and its grant mapper is in [`rig`].
//!
//! Kept as one unit although it is long: the input format, the driver, the protocol model and
//! the oracles of one target evolve together.

pub mod rig;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use balloon::gcma::proto::{
    self, status, DataDir, PageKey, Request, Response, SwapKey, PAGE_SIZE, REQUEST_HEADER_LEN,
    RESPONSE_LEN, STAT_ENTRY_LEN, VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG,
    VIRTIO_GCMA_F_FRONTSWAP,
};
use balloon::transport::STATUS_DEVICE_NEEDS_RESET;
use gcma_host::api::{CleancacheKey, FrontswapKey, FrontswapPolicy, GcmaBackend};
use gcma_host::pool::{Pool, PoolConfig};

use crate::input::{Enc, Src};
use rig::{Vm, GUEST_MEM, RINGS, WINDOW_GPA};

/// Most steps decoded from one input.
pub const MAX_STEPS: usize = 64;
/// Most requests in one batch.
pub const MAX_BATCH: usize = 8;
/// A guest-physical address outside guest memory.
const FAR: u64 = 1 << 40;
/// Request buffer slots: two pages each, after the rings.
const SLOT_LEN: u64 = 2 * PAGE_SIZE as u64;
const NR_SLOTS: u64 = (GUEST_MEM - RINGS.end) / SLOT_LEN;

/// How the pool and the VMs are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Pool pages: 8 + `pool % 57`.
    pub pool: u8,
    /// Frontswap policy: write-through, write-back, put-back.
    pub policy: u8,
    /// Put-back limit in pages.
    pub put_back_limit: u8,
    /// Per-client frontswap limit in pages (0: none).
    pub client_limit: u8,
    /// Grant window pages of each VM: 4 + `window % 61`.
    pub windows: [u8; 2],
}

/// Which cleancache pool a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSel {
    /// The `i`-th pool this VM created (pool 0 when it has none).
    Own(u8),
    /// The `i`-th pool the other VM created.
    Other(u8),
    /// Any id.
    Raw(u32),
}

/// Which grant a `FREE_CONTIG` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSel {
    /// The `i`-th grant this VM holds.
    Own(u8),
    /// The `i`-th grant the other VM holds (its gpa, in this VM's window).
    Other(u8),
    /// Any gpa.
    Raw(u64),
}

/// A request, as the guest means it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `ALLOC_CONTIG`.
    Alloc { nr: u64, align: u64 },
    /// `FREE_CONTIG`.
    Free(GrantSel),
    /// `STATS`.
    Stats,
    /// `NEW_POOL`.
    NewPool,
    /// `PUT` of a page made from `seed`.
    Put {
        pool: PoolSel,
        obj: u8,
        index: u8,
        seed: u8,
    },
    /// `GET`.
    Get { pool: PoolSel, obj: u8, index: u8 },
    /// `FLUSH_PAGE`.
    FlushPage { pool: PoolSel, obj: u8, index: u8 },
    /// `FLUSH_OBJECT`.
    FlushObject { pool: PoolSel, obj: u8 },
    /// `DESTROY_POOL`.
    DestroyPool(PoolSel),
    /// `STORE` of a page made from `seed`.
    Store { area: u8, offset: u8, seed: u8 },
    /// `LOAD`.
    Load { area: u8, offset: u8 },
    /// `INVALIDATE_PAGE`.
    Invalidate { area: u8, offset: u8 },
    /// `INVALIDATE_AREA`.
    InvalidateArea(u8),
    /// A raw header (usually malformed), with a data page made from `seed`.
    Raw { header: Vec<u8>, seed: u8 },
}

/// A deviation from the well-formed layout of a request's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    /// Split the header descriptor at `1 + a % 47`.
    SplitHeader(u16),
    /// Split the data page descriptor at `1 + a % 4095`.
    SplitPage(u16),
    /// Split the response descriptor at `1 + a % 23`.
    SplitResponse(u16),
    /// Header and data page in one readable descriptor.
    Merge,
    /// Header length `44 + a % 9` (48 is right).
    HeaderLen(u16),
    /// Data page length `4094 + a % 5` (4096 is right).
    PageLen(u16),
    /// Response length `a % 24` (too short).
    ResponseLen(u16),
    /// Flip the direction of descriptor `a % n`.
    Flip(u16),
    /// Move descriptor `a % n` outside guest memory.
    Far(u16),
    /// Add a data page to a request without one, or drop the one it has.
    ToggleData,
    /// Stats buffer of `a % 5000` bytes.
    StatsLen(u16),
    /// A readable descriptor after the writable ones.
    TrailingReadable,
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// What it asks.
    pub kind: Kind,
    /// How its chain deviates from the well-formed layout (usually not at all).
    pub devs: Vec<Dev>,
}

/// One step of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Requests on `queue` of VM `vm`, one notification.
    Batch { vm: u8, queue: u16, reqs: Vec<Req> },
    /// The guest writes page `page` of its `grant`-th grant with a pattern from `seed`.
    WriteGrant {
        vm: u8,
        grant: u8,
        page: u8,
        seed: u8,
    },
    /// Device reset.
    Reset(u8),
    /// Reset and initialise with `features` (gcma bits) and queues of `64 << size % 3 >> 2`.
    Init { vm: u8, features: u8, size: u8 },
    /// Break the ring of `queue`: a head out of range (`how` even) or an available index far
    /// ahead (`how` odd).
    BreakRing { vm: u8, queue: u16, how: u8 },
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Pool and VMs.
    pub setup: Setup,
    /// The steps.
    pub steps: Vec<Step>,
}

fn pool_sel(s: &mut Src) -> PoolSel {
    match s.below(8) {
        0..=5 => PoolSel::Own(s.u8()),
        6 => PoolSel::Other(s.u8()),
        _ => PoolSel::Raw(s.u32()),
    }
}

fn kind(s: &mut Src) -> Kind {
    match s.below(16) {
        0 | 1 => Kind::Alloc {
            nr: match s.below(8) {
                0..=5 => 1 + u64::from(s.u8() % 16),
                6 => 1 + u64::from(s.u16() % 128),
                _ => s.u64(),
            },
            align: match s.below(8) {
                0..=4 => 1,
                5 | 6 => 1 << (s.u8() % 8),
                _ => s.u64(),
            },
        },
        2 => Kind::Free(match s.below(8) {
            0..=5 => GrantSel::Own(s.u8()),
            6 => GrantSel::Other(s.u8()),
            _ => GrantSel::Raw(s.u64()),
        }),
        3 => Kind::Stats,
        4 => Kind::NewPool,
        5 => Kind::Put {
            pool: pool_sel(s),
            obj: s.u8(),
            index: s.u8(),
            seed: s.u8(),
        },
        6 => Kind::Get {
            pool: pool_sel(s),
            obj: s.u8(),
            index: s.u8(),
        },
        7 => Kind::FlushPage {
            pool: pool_sel(s),
            obj: s.u8(),
            index: s.u8(),
        },
        8 => Kind::FlushObject {
            pool: pool_sel(s),
            obj: s.u8(),
        },
        9 => Kind::DestroyPool(pool_sel(s)),
        10 | 11 => Kind::Store {
            area: s.u8(),
            offset: s.u8(),
            seed: s.u8(),
        },
        12 => Kind::Load {
            area: s.u8(),
            offset: s.u8(),
        },
        13 => Kind::Invalidate {
            area: s.u8(),
            offset: s.u8(),
        },
        14 => Kind::InvalidateArea(s.u8()),
        _ => Kind::Raw {
            header: s.bytes(REQUEST_HEADER_LEN),
            seed: s.u8(),
        },
    }
}

fn dev(s: &mut Src) -> Dev {
    let (tag, a) = (s.below(12), s.u16());
    match tag {
        0 => Dev::SplitHeader(a),
        1 => Dev::SplitPage(a),
        2 => Dev::SplitResponse(a),
        3 => Dev::Merge,
        4 => Dev::HeaderLen(a),
        5 => Dev::PageLen(a),
        6 => Dev::ResponseLen(a),
        7 => Dev::Flip(a),
        8 => Dev::Far(a),
        9 => Dev::ToggleData,
        10 => Dev::StatsLen(a),
        _ => Dev::TrailingReadable,
    }
}

fn step(s: &mut Src) -> Step {
    match s.below(16) {
        0..=10 => {
            let vm = s.below(2);
            let queue = u16::from(s.below(3));
            let n = usize::from(s.u8()) % MAX_BATCH + 1;
            let reqs = (0..n)
                .map(|_| {
                    let kind = kind(s);
                    let nd = [0, 0, 0, 0, 0, 1, 1, 2][usize::from(s.below(8))];
                    Req {
                        kind,
                        devs: (0..nd).map(|_| dev(s)).collect(),
                    }
                })
                .collect();
            Step::Batch { vm, queue, reqs }
        }
        11 | 12 => Step::WriteGrant {
            vm: s.below(2),
            grant: s.u8(),
            page: s.u8(),
            seed: s.u8(),
        },
        13 => Step::Reset(s.below(2)),
        14 => Step::Init {
            vm: s.below(2),
            features: s.u8(),
            size: s.u8(),
        },
        _ => Step::BreakRing {
            vm: s.below(2),
            queue: u16::from(s.below(3)),
            how: s.u8(),
        },
    }
}

/// Decodes an input.
pub fn decode(data: &[u8]) -> Input {
    let mut s = Src::new(data);
    let setup = Setup {
        pool: s.u8(),
        policy: s.u8(),
        put_back_limit: s.u8(),
        client_limit: s.u8(),
        windows: [s.u8(), s.u8()],
    };
    let mut steps = Vec::new();
    while !s.is_empty() && steps.len() < MAX_STEPS {
        steps.push(step(&mut s));
    }
    Input { setup, steps }
}

/// A page of bytes that depend on the VM and a seed (no two pairs give the same page).
pub fn pattern(vm: usize, seed: u8) -> Vec<u8> {
    let mut x = ((vm as u64 + 1) << 32 | u64::from(seed)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut page = Vec::with_capacity(PAGE_SIZE);
    for _ in 0..PAGE_SIZE / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        page.extend_from_slice(&x.to_le_bytes());
    }
    page
}

/// What a VM may observe, per the protocol.
#[derive(Debug, Default)]
struct Model {
    features: u64,
    /// Grants by gpa: the expected bytes of each page (`None`: zero).
    grants: BTreeMap<u64, Vec<Option<(usize, u8)>>>,
    /// Cleancache pools this VM created and has not destroyed.
    pools: BTreeSet<u32>,
    /// Cleancache pages that a `GET` may return.
    cc: HashMap<(u32, [u64; 3], u32), Vec<u8>>,
    /// Frontswap keys: what a load may return (`None`: a miss). Several candidates only after
    /// an outcome the guest could not observe.
    fs: HashMap<(u32, u64), Vec<Option<Vec<u8>>>>,
}

impl Model {
    fn clear(&mut self) {
        *self = Model::default();
    }
}

/// Cleancache object id of a small object number.
fn object(obj: u8) -> [u64; 3] {
    [u64::from(obj % 4), 0, 1]
}

/// The pieces of a chain before it is written as descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Header,
    Page,
    Response,
    Extra,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    role: Role,
    gpa: u64,
    len: u32,
    writable: bool,
}

struct World {
    pool: Arc<Pool>,
    vms: [Vm; 2],
    models: [Model; 2],
}

/// Runs one input; panics on the first broken property.
pub fn run(data: &[u8]) {
    let input = decode(data);
    let su = input.setup;
    let nr_pages = 8 + u64::from(su.pool % 57);
    let mut cfg = PoolConfig::new(nr_pages);
    cfg.frontswap_policy = match su.policy % 3 {
        0 => FrontswapPolicy::WriteThrough,
        1 => FrontswapPolicy::WriteBack,
        _ => FrontswapPolicy::PutBack,
    };
    cfg.put_back_limit_pages = u64::from(su.put_back_limit) % (nr_pages + 1);
    cfg.client_frontswap_limit_pages = match su.client_limit % 33 {
        0 => None,
        n => Some(u64::from(n)),
    };
    let pool = Pool::new(cfg).expect("pool");
    let backend: Arc<dyn GcmaBackend> = pool.clone();
    let vms = [
        Vm::new(
            backend.clone(),
            "fuzz-vm0",
            4 + u64::from(su.windows[0] % 61),
        ),
        Vm::new(backend, "fuzz-vm1", 4 + u64::from(su.windows[1] % 61)),
    ];
    let mut w = World {
        pool,
        vms,
        models: [Model::default(), Model::default()],
    };
    for vm in 0..2 {
        init(&mut w, vm, 0xff, 1);
    }
    for (i, st) in input.steps.iter().enumerate() {
        let ctx = format!("step {i} {st:?}");
        match st {
            Step::Batch { vm, queue, reqs } => batch(&mut w, usize::from(*vm), *queue, reqs, &ctx),
            Step::WriteGrant {
                vm,
                grant,
                page,
                seed,
            } => write_grant(&mut w, usize::from(*vm), *grant, *page, *seed),
            Step::Reset(vm) => {
                let v = &mut w.vms[usize::from(*vm)];
                v.d.reset();
                v.restart_driver();
                assert!(
                    v.mapped().is_empty() && v.device_grants().is_empty(),
                    "{ctx}: grants survived a device reset"
                );
                w.models[usize::from(*vm)].clear();
            }
            Step::Init { vm, features, size } => init(&mut w, usize::from(*vm), *features, *size),
            Step::BreakRing { vm, queue, how } => {
                let v = &mut w.vms[usize::from(*vm)];
                let ok = match v.d.queue_layout(*queue) {
                    Some(l) if how % 2 == 0 => v.d.publish_raw(*queue, l.size + u16::from(*how)),
                    Some(l) => v.d.set_avail_idx_raw(*queue, l.size.wrapping_mul(3)),
                    None => Ok(()),
                };
                ok.expect("guest memory");
                v.d.kick(*queue);
            }
        }
        check_grants(&w, &ctx);
    }
    sweep(&w);
}

fn init(w: &mut World, vm: usize, features: u8, size: u8) {
    let f = u64::from(features)
        & (VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP);
    let size = 64u16 << (size % 3) >> 2;
    let v = &mut w.vms[vm];
    v.restart_driver();
    let negotiated = v.d.init(f, size).expect("init");
    w.models[vm].clear();
    w.models[vm].features = negotiated;
    assert!(
        v.mapped().is_empty() && v.device_grants().is_empty(),
        "grants survived a device reset"
    );
}

fn write_grant(w: &mut World, vm: usize, grant: u8, page: u8, seed: u8) {
    let m = &mut w.models[vm];
    let n = m.grants.len().max(1);
    let Some((&gpa, pages)) = m.grants.iter_mut().nth(usize::from(grant) % n) else {
        return;
    };
    let p = usize::from(page) % pages.len();
    let at = gpa + (p * PAGE_SIZE) as u64;
    assert!(
        w.vms[vm].write_grant(at, &pattern(vm, seed)),
        "grant at {gpa:#x} of vm{vm} is not mapped"
    );
    pages[p] = Some((vm, seed));
}

/// Builds the pieces of a request's chain in `slot` and writes its buffers.
fn build(w: &World, vm: usize, slot: u64, req: &Req) -> (Vec<u8>, Vec<Piece>) {
    let m = &w.models[vm];
    let other = &w.models[1 - vm];
    let pool_id = |sel: PoolSel| -> u32 {
        let nth = |set: &BTreeSet<u32>, i: u8| {
            set.iter()
                .nth(usize::from(i) % set.len().max(1))
                .copied()
                .unwrap_or(0)
        };
        match sel {
            PoolSel::Own(i) => nth(&m.pools, i),
            PoolSel::Other(i) => nth(&other.pools, i),
            PoolSel::Raw(x) => x,
        }
    };
    let cc = |pool: PoolSel, obj: u8, index: u8| PageKey {
        pool: pool_id(pool),
        object: object(obj),
        index: u32::from(index % 8),
    };
    let fs = |area: u8, offset: u8| SwapKey {
        area: u32::from(area % 3),
        offset: u64::from(offset % 16),
    };
    let (header, seed): (Vec<u8>, u8) = match &req.kind {
        Kind::Raw { header, seed } => (header.clone(), *seed),
        k => {
            let (r, seed) = match *k {
                Kind::Alloc { nr, align } => (
                    Request::AllocContig {
                        nr_pages: nr,
                        align_pages: align,
                    },
                    0,
                ),
                Kind::Free(sel) => {
                    let nth = |g: &BTreeMap<u64, _>, i: u8| {
                        g.keys()
                            .nth(usize::from(i) % g.len().max(1))
                            .copied()
                            .unwrap_or(WINDOW_GPA)
                    };
                    // The model keys grants by guest-physical address; the wire carries the
                    // offset inside the window (a raw selector is sent as it is).
                    let offset = match sel {
                        GrantSel::Own(i) => nth(&m.grants, i).wrapping_sub(WINDOW_GPA),
                        GrantSel::Other(i) => nth(&other.grants, i).wrapping_sub(WINDOW_GPA),
                        GrantSel::Raw(g) => g,
                    };
                    (Request::FreeContig { offset }, 0)
                }
                Kind::Stats => (Request::Stats, 0),
                Kind::NewPool => (Request::NewPool, 0),
                Kind::Put {
                    pool,
                    obj,
                    index,
                    seed,
                } => (Request::Put(cc(pool, obj, index)), seed),
                Kind::Get { pool, obj, index } => (Request::Get(cc(pool, obj, index)), 0),
                Kind::FlushPage { pool, obj, index } => {
                    (Request::FlushPage(cc(pool, obj, index)), 0)
                }
                Kind::FlushObject { pool, obj } => (
                    Request::FlushObject {
                        pool: pool_id(pool),
                        object: object(obj),
                    },
                    0,
                ),
                Kind::DestroyPool(pool) => (
                    Request::DestroyPool {
                        pool: pool_id(pool),
                    },
                    0,
                ),
                Kind::Store { area, offset, seed } => (Request::Store(fs(area, offset)), seed),
                Kind::Load { area, offset } => (Request::Load(fs(area, offset)), 0),
                Kind::Invalidate { area, offset } => (Request::InvalidatePage(fs(area, offset)), 0),
                Kind::InvalidateArea(area) => (
                    Request::InvalidateArea {
                        area: u32::from(area % 3),
                    },
                    0,
                ),
                Kind::Raw { .. } => unreachable!("handled above"),
            };
            (r.encode().to_vec(), seed)
        }
    };
    // Slot layout: response at +64, header ending where the page starts at +4096.
    let resp_gpa = slot + 64;
    let hdr_gpa = slot + PAGE_SIZE as u64 - REQUEST_HEADER_LEN as u64;
    let page_gpa = slot + PAGE_SIZE as u64;
    let d = &w.vms[vm].d;
    let mut hdr = header.clone();
    hdr.resize(REQUEST_HEADER_LEN, 0);
    d.write_mem(hdr_gpa, &hdr).expect("guest memory");
    d.write_mem(resp_gpa, &[0xee; RESPONSE_LEN])
        .expect("guest memory");
    d.write_mem(page_gpa, &pattern(vm, seed))
        .expect("guest memory");
    let dir = Request::parse(&hdr)
        .map(|r| r.data())
        .unwrap_or(DataDir::None);
    let mut pieces = vec![Piece {
        role: Role::Header,
        gpa: hdr_gpa,
        len: REQUEST_HEADER_LEN as u32,
        writable: false,
    }];
    let page = |writable, len| Piece {
        role: Role::Page,
        gpa: page_gpa,
        len,
        writable,
    };
    let mut stats_len = PAGE_SIZE as u32;
    let mut data = match dir {
        DataDir::ToDevice => Some(page(false, PAGE_SIZE as u32)),
        DataDir::FromDevice => Some(page(true, PAGE_SIZE as u32)),
        DataDir::Stats => Some(page(true, stats_len)),
        DataDir::None => None,
    };
    let mut resp = Piece {
        role: Role::Response,
        gpa: resp_gpa,
        len: RESPONSE_LEN as u32,
        writable: true,
    };
    for dv in &req.devs {
        match *dv {
            Dev::HeaderLen(a) => pieces[0].len = 44 + u32::from(a % 9),
            Dev::PageLen(a) => {
                if let Some(p) = data.as_mut() {
                    p.len = 4094 + u32::from(a % 5);
                }
            }
            Dev::ResponseLen(a) => resp.len = u32::from(a % 24),
            Dev::ToggleData => {
                data = match data {
                    Some(_) => None,
                    None => Some(page(dir == DataDir::None, PAGE_SIZE as u32)),
                }
            }
            Dev::StatsLen(a) => {
                stats_len = u32::from(a % 5000);
                if let Some(p) = data.as_mut().filter(|_| dir == DataDir::Stats) {
                    p.len = stats_len;
                }
            }
            Dev::Merge => {
                if let Some(p) = data.filter(|p| !p.writable) {
                    pieces[0].len += p.len;
                    data = None;
                }
            }
            _ => {}
        }
    }
    // Readable data follows the header, writable data precedes the response: either way the
    // chain is [header, data?, response].
    pieces.extend(data);
    pieces.push(resp);
    for dv in &req.devs {
        let split = |pieces: &mut Vec<Piece>, role: Role, at: u32| {
            if let Some(i) = pieces.iter().position(|p| p.role == role) {
                let p = pieces[i];
                if at > 0 && at < p.len {
                    pieces[i].len = at;
                    pieces.insert(
                        i + 1,
                        Piece {
                            gpa: p.gpa + u64::from(at),
                            len: p.len - at,
                            ..p
                        },
                    );
                }
            }
        };
        match *dv {
            Dev::SplitHeader(a) => split(&mut pieces, Role::Header, 1 + u32::from(a % 47)),
            Dev::SplitPage(a) => split(&mut pieces, Role::Page, 1 + u32::from(a % 4095)),
            Dev::SplitResponse(a) => split(&mut pieces, Role::Response, 1 + u32::from(a % 23)),
            Dev::Flip(a) => {
                let i = usize::from(a) % pieces.len();
                pieces[i].writable = !pieces[i].writable;
            }
            Dev::Far(a) => {
                let i = usize::from(a) % pieces.len();
                pieces[i].gpa += FAR;
            }
            Dev::TrailingReadable => pieces.push(Piece {
                role: Role::Extra,
                gpa: page_gpa,
                len: 16,
                writable: false,
            }),
            _ => {}
        }
    }
    (hdr, pieces)
}

/// The bytes of the readable (or writable) stream of `pieces`, `None` where outside memory.
fn stream(w: &World, vm: usize, pieces: &[Piece], writable: bool) -> Vec<Option<u8>> {
    let d = &w.vms[vm].d;
    let mut out = Vec::new();
    for p in pieces.iter().filter(|p| p.writable == writable) {
        match d.read_mem(p.gpa, p.len as usize) {
            Ok(b) => out.extend(b.into_iter().map(Some)),
            Err(_) => out.extend(std::iter::repeat_n(None, p.len as usize)),
        }
    }
    out
}

fn bytes(s: &[Option<u8>]) -> Option<Vec<u8>> {
    s.iter().copied().collect()
}

/// Why the protocol makes a chain `BAD_REQUEST`, if it does (given it has room to answer).
fn malformed(pieces: &[Piece], readable: &[Option<u8>], queue: u16) -> Option<String> {
    let first_w = pieces
        .iter()
        .position(|p| p.writable)
        .unwrap_or(pieces.len());
    if pieces[first_w..].iter().any(|p| !p.writable) {
        return Some("readable after writable".into());
    }
    if pieces.iter().any(|p| p.len > 0 && p.gpa >= FAR) {
        return Some("buffer outside guest memory".into());
    }
    let w_len: u64 = pieces
        .iter()
        .filter(|p| p.writable)
        .map(|p| u64::from(p.len))
        .sum();
    let Some(head) = readable.get(..REQUEST_HEADER_LEN).and_then(bytes) else {
        return Some("short header".into());
    };
    let req = match Request::parse(&head) {
        Ok(r) => r,
        Err(e) => return Some(format!("header: {e:?}")),
    };
    if req.queue() != queue {
        return Some("wrong queue".into());
    }
    if readable.len() != req.readable_len() {
        return Some(format!("{} readable bytes", readable.len()));
    }
    if !req.writable_len_ok(w_len as usize) {
        return Some(format!("{w_len} writable bytes"));
    }
    None
}

fn batch(w: &mut World, vm: usize, queue: u16, reqs: &[Req], ctx: &str) {
    struct Sent {
        head: u16,
        pieces: Vec<Piece>,
        readable: Vec<Option<u8>>,
        req: Req,
    }
    let mut sent = Vec::new();
    for (i, req) in reqs.iter().enumerate().take(NR_SLOTS as usize) {
        let slot = RINGS.end + i as u64 * SLOT_LEN;
        let (_, pieces) = build(w, vm, slot, req);
        let readable = stream(w, vm, &pieces, false);
        let list: Vec<(u64, u32, bool)> =
            pieces.iter().map(|p| (p.gpa, p.len, p.writable)).collect();
        if let Ok(head) = w.vms[vm].d.add_chain(queue, &list) {
            sent.push(Sent {
                head,
                pieces,
                readable,
                req: req.clone(),
            });
        }
    }
    if sent.is_empty() {
        return;
    }
    w.vms[vm].d.kick(queue);
    let used = w.vms[vm].d.drain_used(queue).expect("used ring");
    let broken = w.vms[vm].d.status() & STATUS_DEVICE_NEEDS_RESET != 0;
    for s in &sent {
        let Some(u) = used.iter().find(|u| u.head == s.head) else {
            assert!(
                broken,
                "{ctx}: vm{vm}: chain {} ({:?}) was not returned",
                s.head, s.req
            );
            continue;
        };
        answer(w, vm, queue, s.pieces.as_slice(), &s.readable, u.len, ctx);
    }
    if let Err(e) = w.pool.check_consistency() {
        panic!("{ctx}: pool inconsistent: {e}");
    }
}

/// Checks one answered chain against the protocol and updates the model.
fn answer(
    w: &mut World,
    vm: usize,
    queue: u16,
    pieces: &[Piece],
    readable: &[Option<u8>],
    used_len: u32,
    ctx: &str,
) {
    let writable = stream(w, vm, pieces, true);
    let resp_bytes = writable
        .len()
        .checked_sub(RESPONSE_LEN)
        .and_then(|at| bytes(&writable[at..]));
    let ctx = format!("{ctx}: vm{vm} queue {queue} chain {pieces:x?}");
    let Some(resp_bytes) = resp_bytes else {
        assert_eq!(
            used_len, 0,
            "{ctx}: no room for a response, used length {used_len}"
        );
        return;
    };
    assert_ne!(
        used_len, 0,
        "{ctx}: the response bytes are guest memory but unanswered"
    );
    let resp = Response::decode(resp_bytes.as_slice().try_into().expect("24 bytes"));
    if let Some(why) = malformed(pieces, readable, queue) {
        assert_eq!(
            (resp.status, used_len),
            (status::BAD_REQUEST, RESPONSE_LEN as u32),
            "{ctx}: malformed ({why}) but answered {resp:?}"
        );
        return;
    }
    let head = bytes(&readable[..REQUEST_HEADER_LEN]).expect("checked by malformed");
    let req = Request::parse(&head).expect("checked by malformed");
    let m = &mut w.models[vm];
    if req.feature() & !m.features != 0 {
        assert_eq!(
            resp.status,
            status::UNSUPPORTED,
            "{ctx}: {req:?} without its feature"
        );
        assert_eq!(used_len, RESPONSE_LEN as u32, "{ctx}");
        return;
    }
    let data_in = || bytes(&readable[REQUEST_HEADER_LEN..]).expect("in memory");
    let data_out = bytes(&writable[..writable.len() - RESPONSE_LEN]).expect("in memory");
    let st = resp.status;
    let mut expect_len = RESPONSE_LEN as u32;
    match req {
        Request::AllocContig { nr_pages, .. } => {
            if st == status::OK {
                let offset = resp.value0;
                assert_eq!(resp.value1, nr_pages, "{ctx}: granted another size");
                let window = w.vms[vm].window_pages() * PAGE_SIZE as u64;
                assert!(
                    offset
                        .checked_add(nr_pages * PAGE_SIZE as u64)
                        .is_some_and(|end| end <= window),
                    "{ctx}: grant at window offset {offset:#x} outside the window"
                );
                let gpa = WINDOW_GPA + offset;
                assert!(
                    m.grants
                        .insert(gpa, vec![None; nr_pages as usize])
                        .is_none(),
                    "{ctx}: gpa {gpa:#x} granted twice"
                );
            } else {
                assert!(
                    matches!(
                        st,
                        status::NO_SPACE | status::BAD_REQUEST | status::MAP_FAILED
                    ),
                    "{ctx}: ALLOC_CONTIG answered {resp:?}"
                );
            }
        }
        Request::FreeContig { offset } => {
            // An offset that overflows past the window's base names no grant.
            let gpa = WINDOW_GPA.saturating_add(offset);
            let held = m.grants.get(&gpa).map(Vec::len);
            match (st, held) {
                (status::OK, Some(n)) => {
                    assert_eq!(resp.value0, n as u64, "{ctx}: freed another size");
                    m.grants.remove(&gpa);
                }
                (status::UNKNOWN_GRANT, None) => {}
                _ => panic!("{ctx}: FREE_CONTIG of {gpa:#x} (held: {held:?}) answered {resp:?}"),
            }
        }
        Request::Stats => {
            assert_eq!(st, status::OK, "{ctx}");
            let n = (data_out.len() / STAT_ENTRY_LEN).min(proto::stat::COUNT);
            assert_eq!(
                (resp.value0, resp.value1),
                (n as u64, proto::stat::COUNT as u64),
                "{ctx}"
            );
            expect_len += (n * STAT_ENTRY_LEN) as u32;
            let entries: Vec<proto::StatEntry> = data_out
                .chunks_exact(STAT_ENTRY_LEN)
                .take(n)
                .map(|e| proto::StatEntry::decode(e.try_into().expect("16 bytes")))
                .collect();
            let granted: u64 = m.grants.values().map(|g| g.len() as u64).sum();
            let want = [
                (proto::stat::POOL_NR_PAGES, w.pool.nr_pages()),
                (proto::stat::WINDOW_NR_PAGES, w.vms[vm].window_pages()),
                (proto::stat::GRANTS, m.grants.len() as u64),
                (proto::stat::GRANTED_PAGES, granted),
            ];
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.tag, i as u32, "{ctx}: stats entries out of order");
                if let Some(&(_, v)) = want.iter().find(|(t, _)| *t == e.tag) {
                    assert_eq!(e.value, v, "{ctx}: stat {}", e.tag);
                }
            }
        }
        Request::NewPool => {
            if st == status::OK {
                let id = u32::try_from(resp.value0).expect("pool ids are u32");
                assert!(m.pools.insert(id), "{ctx}: pool id {id} handed out twice");
            }
        }
        Request::Put(k) => {
            let key = (k.pool, k.object, k.index);
            match st {
                status::OK => {
                    assert!(
                        m.pools.contains(&k.pool),
                        "{ctx}: put into a pool vm{vm} lacks"
                    );
                    m.cc.insert(key, data_in());
                }
                status::NOT_STORED => {
                    m.cc.remove(&key);
                }
                status::UNKNOWN_POOL => assert!(!m.pools.contains(&k.pool), "{ctx}"),
                _ => panic!("{ctx}: PUT answered {resp:?}"),
            }
        }
        Request::Get(k) => {
            let key = (k.pool, k.object, k.index);
            match st {
                status::OK => {
                    let want = m.cc.remove(&key);
                    assert!(
                        want.as_deref() == Some(data_out.as_slice()),
                        "{ctx}: cleancache hit returned bytes vm{vm} did not put there last"
                    );
                    expect_len += PAGE_SIZE as u32;
                }
                status::MISS => {
                    assert!(m.pools.contains(&k.pool), "{ctx}: MISS on an unknown pool");
                    m.cc.remove(&key);
                }
                status::UNKNOWN_POOL => assert!(!m.pools.contains(&k.pool), "{ctx}"),
                _ => panic!("{ctx}: GET answered {resp:?}"),
            }
        }
        Request::FlushPage(k) => {
            let key = (k.pool, k.object, k.index);
            match st {
                status::OK => assert!(
                    m.cc.remove(&key).is_some(),
                    "{ctx}: flushed a page vm{vm} never put"
                ),
                status::MISS => {
                    m.cc.remove(&key);
                }
                status::UNKNOWN_POOL => assert!(!m.pools.contains(&k.pool), "{ctx}"),
                _ => panic!("{ctx}: FLUSH_PAGE answered {resp:?}"),
            }
        }
        Request::FlushObject { pool, object } => match st {
            status::OK => {
                let before = m.cc.len();
                m.cc.retain(|&(p, o, _), _| (p, o) != (pool, object));
                assert!(
                    resp.value0 <= (before - m.cc.len()) as u64,
                    "{ctx}: flushed {} pages of {} put",
                    resp.value0,
                    before - m.cc.len()
                );
            }
            status::UNKNOWN_POOL => assert!(!m.pools.contains(&pool), "{ctx}"),
            _ => panic!("{ctx}: FLUSH_OBJECT answered {resp:?}"),
        },
        Request::DestroyPool { pool } => match st {
            status::OK => {
                assert!(
                    m.pools.remove(&pool),
                    "{ctx}: destroyed a pool vm{vm} lacks"
                );
                m.cc.retain(|&(p, _, _), _| p != pool);
            }
            status::UNKNOWN_POOL => assert!(!m.pools.contains(&pool), "{ctx}"),
            _ => panic!("{ctx}: DESTROY_POOL answered {resp:?}"),
        },
        Request::Store(k) => {
            let key = (k.area, k.offset);
            match st {
                status::OK => {
                    m.fs.insert(key, vec![Some(data_in())]);
                }
                status::REJECTED => {
                    m.fs.insert(key, vec![None]);
                }
                _ => panic!("{ctx}: STORE answered {resp:?}"),
            }
        }
        Request::Load(k) => {
            let key = (k.area, k.offset);
            let may = m.fs.get(&key).cloned().unwrap_or_else(|| vec![None]);
            match st {
                status::OK => {
                    assert!(
                        may.contains(&Some(data_out.clone())),
                        "{ctx}: frontswap load returned bytes that were never accepted there"
                    );
                    m.fs.insert(key, vec![Some(data_out.clone())]);
                    expect_len += PAGE_SIZE as u32;
                }
                status::MISS => {
                    assert!(may.contains(&None), "{ctx}: accepted frontswap page lost");
                    m.fs.insert(key, vec![None]);
                }
                _ => panic!("{ctx}: LOAD answered {resp:?}"),
            }
        }
        Request::InvalidatePage(k) => {
            let key = (k.area, k.offset);
            let may = m.fs.get(&key).cloned().unwrap_or_else(|| vec![None]);
            match st {
                status::OK => assert!(
                    may.iter().any(Option::is_some),
                    "{ctx}: invalidated a page that was not stored"
                ),
                status::MISS => assert!(may.contains(&None), "{ctx}: accepted page lost"),
                _ => panic!("{ctx}: INVALIDATE_PAGE answered {resp:?}"),
            }
            m.fs.insert(key, vec![None]);
        }
        Request::InvalidateArea { area } => {
            assert_eq!(st, status::OK, "{ctx}");
            let keys: Vec<_> = m.fs.keys().filter(|k| k.0 == area).copied().collect();
            let sure = keys
                .iter()
                .filter(|k| m.fs[k].iter().all(Option::is_some))
                .count() as u64;
            let maybe = keys
                .iter()
                .filter(|k| m.fs[k].iter().any(Option::is_some))
                .count() as u64;
            assert!(
                (sure..=maybe).contains(&resp.value0),
                "{ctx}: invalidated {} pages, the model holds {sure}..={maybe}",
                resp.value0
            );
            for k in keys {
                m.fs.insert(k, vec![None]);
            }
        }
    }
    assert_eq!(used_len, expect_len, "{ctx}: used length for {resp:?}");
}

/// Grants: the device, the mapper and the model agree; contents are what the owner wrote; no
/// pool page is granted twice.
fn check_grants(w: &World, ctx: &str) {
    let mut pool_pages: Vec<(u64, u64, usize)> = Vec::new();
    for (vm, (v, m)) in w.vms.iter().zip(&w.models).enumerate() {
        let dev = v.device_grants();
        let mapped = v.mapped();
        let dev_gpas: Vec<(u64, u64)> = dev.iter().map(|(g, c)| (*g, c.nr_pages)).collect();
        let map_gpas: Vec<(u64, u64)> = mapped.iter().map(|(g, c)| (*g, c.nr_pages)).collect();
        let model: Vec<(u64, u64)> = m.grants.iter().map(|(g, p)| (*g, p.len() as u64)).collect();
        assert_eq!(
            dev_gpas, model,
            "{ctx}: vm{vm}: device grants differ from the model"
        );
        assert_eq!(
            map_gpas, model,
            "{ctx}: vm{vm}: mapped grants differ from the model"
        );
        for (gpa, c) in &dev {
            assert_eq!(
                c.client,
                v.client(),
                "{ctx}: vm{vm} holds a grant of another client"
            );
            pool_pages.push((c.first_page, c.nr_pages, vm));
            let pages = &m.grants[gpa];
            let mut buf = vec![0u8; PAGE_SIZE];
            for (i, want) in pages.iter().enumerate() {
                let at = gpa + (i * PAGE_SIZE) as u64;
                assert!(
                    v.read_grant(at, &mut buf),
                    "{ctx}: vm{vm}: grant page {at:#x} unmapped"
                );
                let ok = match want {
                    None => buf.iter().all(|&b| b == 0),
                    Some((owner, seed)) => buf == pattern(*owner, *seed),
                };
                assert!(
                    ok,
                    "{ctx}: vm{vm}: granted page {at:#x} (pool page {}) does not hold what its \
                     owner wrote ({want:?})",
                    c.first_page + i as u64
                );
            }
        }
    }
    pool_pages.sort_unstable();
    for pair in pool_pages.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "{ctx}: pool pages granted twice: {pair:?}"
        );
    }
    if let Some(last) = pool_pages.last() {
        assert!(
            last.0 + last.1 <= w.pool.nr_pages(),
            "{ctx}: grant past the pool"
        );
    }
}

/// After the input: every frontswap page each VM may hold is loaded from the pool and compared,
/// and every cleancache page it still holds is the last one it put.
fn sweep(w: &World) {
    let mut out = vec![0u8; PAGE_SIZE];
    for (vm, (v, m)) in w.vms.iter().zip(&w.models).enumerate() {
        let client = v.client();
        for (&(area, offset), may) in &m.fs {
            let hit = w
                .pool
                .frontswap_load(client, FrontswapKey { area, offset }, &mut out)
                .expect("frontswap load");
            if hit {
                assert!(
                    may.contains(&Some(out.clone())),
                    "vm{vm}: frontswap ({area}, {offset}) holds bytes never accepted there"
                );
            } else {
                assert!(
                    may.contains(&None),
                    "vm{vm}: frontswap ({area}, {offset}) lost"
                );
            }
        }
        for (&(pool, object, index), want) in &m.cc {
            let key = CleancacheKey {
                pool,
                object,
                index,
            };
            if w.pool.cleancache_get(client, key, &mut out) == Ok(true) {
                assert!(&out == want, "vm{vm}: cleancache {key:?} holds stale bytes");
            }
        }
    }
}

/// Writes the bytes that decode to `input` (for seeds).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut e = Enc::default();
    let s = input.setup;
    e.u8(s.pool)
        .u8(s.policy)
        .u8(s.put_back_limit)
        .u8(s.client_limit)
        .u8(s.windows[0])
        .u8(s.windows[1]);
    for st in &input.steps {
        match st {
            Step::Batch { vm, queue, reqs } => {
                e.u8(0).u8(*vm).u8(*queue as u8).u8((reqs.len() - 1) as u8);
                for r in reqs {
                    enc_kind(&mut e, &r.kind);
                    e.u8(match r.devs.len() {
                        0 => 0,
                        1 => 5,
                        _ => 7,
                    });
                    for d in &r.devs {
                        enc_dev(&mut e, *d);
                    }
                }
            }
            Step::WriteGrant {
                vm,
                grant,
                page,
                seed,
            } => {
                e.u8(11).u8(*vm).u8(*grant).u8(*page).u8(*seed);
            }
            Step::Reset(vm) => {
                e.u8(13).u8(*vm);
            }
            Step::Init { vm, features, size } => {
                e.u8(14).u8(*vm).u8(*features).u8(*size);
            }
            Step::BreakRing { vm, queue, how } => {
                e.u8(15).u8(*vm).u8(*queue as u8).u8(*how);
            }
        }
    }
    e.out
}

fn enc_pool(e: &mut Enc, p: PoolSel) {
    match p {
        PoolSel::Own(i) => e.u8(0).u8(i),
        PoolSel::Other(i) => e.u8(6).u8(i),
        PoolSel::Raw(x) => e.u8(7).u32(x),
    };
}

fn enc_kind(e: &mut Enc, k: &Kind) {
    match k {
        Kind::Alloc { nr, align } => {
            e.u8(0);
            match *nr {
                1..=16 => e.u8(0).u8((*nr - 1) as u8),
                _ => e.u8(7).u64(*nr),
            };
            match *align {
                1 => e.u8(0),
                a if a.is_power_of_two() && a < 256 => e.u8(5).u8(a.trailing_zeros() as u8),
                a => e.u8(7).u64(a),
            };
        }
        Kind::Free(g) => {
            e.u8(2);
            match *g {
                GrantSel::Own(i) => e.u8(0).u8(i),
                GrantSel::Other(i) => e.u8(6).u8(i),
                GrantSel::Raw(x) => e.u8(7).u64(x),
            };
        }
        Kind::Stats => {
            e.u8(3);
        }
        Kind::NewPool => {
            e.u8(4);
        }
        Kind::Put {
            pool,
            obj,
            index,
            seed,
        } => {
            e.u8(5);
            enc_pool(e, *pool);
            e.u8(*obj).u8(*index).u8(*seed);
        }
        Kind::Get { pool, obj, index } => {
            e.u8(6);
            enc_pool(e, *pool);
            e.u8(*obj).u8(*index);
        }
        Kind::FlushPage { pool, obj, index } => {
            e.u8(7);
            enc_pool(e, *pool);
            e.u8(*obj).u8(*index);
        }
        Kind::FlushObject { pool, obj } => {
            e.u8(8);
            enc_pool(e, *pool);
            e.u8(*obj);
        }
        Kind::DestroyPool(pool) => {
            e.u8(9);
            enc_pool(e, *pool);
        }
        Kind::Store { area, offset, seed } => {
            e.u8(10).u8(*area).u8(*offset).u8(*seed);
        }
        Kind::Load { area, offset } => {
            e.u8(12).u8(*area).u8(*offset);
        }
        Kind::Invalidate { area, offset } => {
            e.u8(13).u8(*area).u8(*offset);
        }
        Kind::InvalidateArea(area) => {
            e.u8(14).u8(*area);
        }
        Kind::Raw { header, seed } => {
            e.u8(15).bytes(header).u8(*seed);
        }
    }
}

fn enc_dev(e: &mut Enc, d: Dev) {
    let (tag, a) = match d {
        Dev::SplitHeader(a) => (0, a),
        Dev::SplitPage(a) => (1, a),
        Dev::SplitResponse(a) => (2, a),
        Dev::Merge => (3, 0),
        Dev::HeaderLen(a) => (4, a),
        Dev::PageLen(a) => (5, a),
        Dev::ResponseLen(a) => (6, a),
        Dev::Flip(a) => (7, a),
        Dev::Far(a) => (8, a),
        Dev::ToggleData => (9, 0),
        Dev::StatsLen(a) => (10, a),
        Dev::TrailingReadable => (11, 0),
    };
    e.u8(tag).u16(a);
}
