//! virtio-balloon (`balloon::virtio_balloon::Balloon`) behind the virtio-mmio transport, with
//! arbitrary descriptor tables and buffers on every queue (inflate, deflate, stats, free page
//! reporting) over real memfd guest memory, so that releases really punch holes.
//!
//! Guest memory has three regions: data pages A (GPA 0, 32 pages) and B (GPA 512 KiB, 16 pages),
//! separated by a hole, and the rings region R (GPA 2 MiB, 32 pages) where the harness driver
//! puts its rings. Every data page starts out filled with a non-zero pattern. Buffers the input
//! places always lie in A or B, or outside guest memory; PFN lists may name any page, rings
//! included.
//!
//! Oracle, around every step that lets the device run (a notification, `DRIVER_OK`, a stats
//! request): guest memory is snapshotted before, and afterwards every byte that changed must be
//! either inside a used ring (the only thing the device writes) or zero on a page the guest
//! *named*: a PFN that some inflate-queue descriptor chain could carry, or a page under a
//! device-writable buffer of some reporting-queue chain. The named set is computed from the
//! snapshot independently of the device: every descriptor of every inflate and reporting queue
//! is tried as a chain head, and a PFN that straddles pages released during the same step is
//! tried with each of those pages zeroed. Also checked: the counters never go backwards, the
//! device runs exactly when the transport says so, the balloon never holds more pages than the
//! guest ever named for inflation, and after any input a reset and a clean inflate work.
//!
//! Kept as one unit although it is long: input format, driver and oracles of one target.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use balloon::testing::{memfd_guest_memory, CountingIrq, Driver, QueueLayout};
use balloon::transport::chain::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use balloon::transport::{MmioTransport, STATUS_DEVICE_NEEDS_RESET};
use balloon::transport::{VIRTIO_F_RING_RESET, VIRTIO_RING_F_EVENT_IDX};
use balloon::virtio_balloon::{
    queue_kinds, Balloon, BalloonConfig, BalloonCounters, QueueKind, CONFIG_LEN,
    MAX_PFN_BYTES_PER_CHAIN, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};

use vm_memory::{Bytes, GuestAddress};

use crate::input::{Enc, Src};

const PAGE: u64 = 4096;
/// Guest memory regions: (gpa, pages).
const REGIONS: [(u64, u64); 3] = [(0, 32), (512 << 10, 16), (2 << 20, 32)];
/// Data pages (regions A and B) addressable by a page selector.
const DATA_PAGES: u64 = 48;
/// The rings region: scratch of the harness driver.
const RINGS: std::ops::Range<u64> = (2 << 20)..(2 << 20) + 32 * PAGE;
/// Most steps decoded from one input.
pub const MAX_STEPS: usize = 128;
/// Most entries in one generated PFN list.
const MAX_PFNS: usize = 64;

type Shared = Arc<Mutex<MmioTransport<Balloon>>>;

/// GPA of data page `i` (0..48: A then B).
fn data_page(i: u64) -> u64 {
    let i = i % DATA_PAGES;
    if i < REGIONS[0].1 {
        i * PAGE
    } else {
        REGIONS[1].0 + (i - REGIONS[0].1) * PAGE
    }
}

/// Where a buffer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// Data page `page % 48` at byte `offset % 4096` (may run past the page).
    Data { page: u8, offset: u16 },
    /// The hole between regions A and B.
    Hole(u16),
    /// Far outside guest memory.
    Far(u32),
}

impl Addr {
    fn gpa(self) -> u64 {
        match self {
            Addr::Data { page, offset } => data_page(u64::from(page)) + u64::from(offset % 4096),
            Addr::Hole(o) => (128 << 10) + u64::from(o % (384 << 6)) * 16,
            Addr::Far(x) => (1 << 40) | u64::from(x),
        }
    }

    fn decode(s: &mut Src) -> Addr {
        match s.below(8) {
            0..=4 => Addr::Data {
                page: s.u8(),
                offset: s.u16(),
            },
            5 => Addr::Data {
                page: s.u8(),
                offset: 0,
            },
            6 => Addr::Hole(s.u16()),
            _ => Addr::Far(s.u32()),
        }
    }

    fn encode(self, e: &mut Enc) {
        match self {
            Addr::Data { page, offset: 0 } => e.u8(5).u8(page),
            Addr::Data { page, offset } => e.u8(0).u8(page).u16(offset),
            Addr::Hole(o) => e.u8(6).u16(o),
            Addr::Far(x) => e.u8(7).u32(x),
        };
    }
}

/// A PFN in a generated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pfn {
    /// Data page (0..48).
    Data(u8),
    /// A page of the rings region (0..32).
    Rings(u8),
    /// Any value.
    Raw(u32),
}

impl Pfn {
    fn value(self) -> u32 {
        match self {
            Pfn::Data(i) => (data_page(u64::from(i)) / PAGE) as u32,
            Pfn::Rings(i) => (RINGS.start / PAGE) as u32 + u32::from(i % 32),
            Pfn::Raw(v) => v,
        }
    }
}

/// Bytes written into guest memory at a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A PFN list (inflate, deflate).
    Pfns(Vec<Pfn>),
    /// Stats entries `(tag, value)`.
    Stats(Vec<(u16, u64)>),
    /// Anything.
    Raw(Vec<u8>),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Pfns(p) => p.iter().flat_map(|p| p.value().to_le_bytes()).collect(),
            Content::Stats(s) => s
                .iter()
                .flat_map(|&(t, v)| {
                    let mut b = t.to_le_bytes().to_vec();
                    b.extend_from_slice(&v.to_le_bytes());
                    b
                })
                .collect(),
            Content::Raw(b) => b.clone(),
        }
    }

    fn decode(s: &mut Src) -> Content {
        match s.below(3) {
            0 => {
                let n = usize::from(s.u8()) % MAX_PFNS + 1;
                Content::Pfns(
                    (0..n)
                        .map(|_| match s.below(4) {
                            0 | 1 => Pfn::Data(s.u8() % DATA_PAGES as u8),
                            2 => Pfn::Rings(s.u8() % 32),
                            _ => Pfn::Raw(s.u32()),
                        })
                        .collect(),
                )
            }
            1 => {
                let n = usize::from(s.below(20));
                Content::Stats((0..n).map(|_| (s.u16() % 20, s.u64())).collect())
            }
            _ => Content::Raw(s.bytes(512)),
        }
    }

    fn encode(&self, e: &mut Enc) {
        match self {
            Content::Pfns(p) => {
                e.u8(0).u8((p.len() - 1) as u8);
                for p in p {
                    match *p {
                        Pfn::Data(i) => e.u8(0).u8(i),
                        Pfn::Rings(i) => e.u8(2).u8(i),
                        Pfn::Raw(v) => e.u8(3).u32(v),
                    };
                }
            }
            Content::Stats(s) => {
                e.u8(1).u8(s.len() as u8);
                for &(t, v) in s {
                    e.u16(t).u64(v);
                }
            }
            Content::Raw(b) => {
                e.u8(2).bytes(b);
            }
        }
    }
}

/// How long a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// As long as the content written.
    Content,
    /// Up to 255 bytes.
    Short(u8),
    /// One page.
    Page,
    /// Anything.
    Raw(u32),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Where.
    pub addr: Addr,
    /// How long.
    pub len: Len,
    /// Device-writable.
    pub writable: bool,
}

/// One step of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Reset, negotiate `features` (`VERSION_1` added), set up every queue with `size` entries,
    /// `DRIVER_OK`.
    Init { features: u64, size: u16 },
    /// Reset and negotiate only (queues and `DRIVER_OK` come from later steps).
    Negotiate { features: u64 },
    /// Set up queue `index` with `size` entries.
    SetupQueue { index: u16, size: u16 },
    /// Set `DRIVER_OK`.
    DriverOk,
    /// Write `content` at the first buffer's address and put the chain on `queue`.
    Chain {
        queue: u16,
        content: Content,
        bufs: Vec<Buf>,
    },
    /// Write descriptor `id` of `queue` verbatim.
    RawDesc {
        queue: u16,
        id: u16,
        addr: Addr,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// Publish `head` on `queue`'s available ring.
    Publish { queue: u16, head: u16 },
    /// Overwrite `queue`'s available index.
    AvailIdx { queue: u16, idx: u16 },
    /// Notify `queue`.
    Kick(u16),
    /// Take the used buffers of `queue`.
    Drain(u16),
    /// Write config space (`actual`, `poison_val`, read-only fields).
    Config { offset: u8, data: Vec<u8> },
    /// The VMM sets a new target.
    Target(u32),
    /// The VMM asks for fresh statistics.
    RequestStats,
    /// Per-queue reset of `queue`, then set it up again with `size` entries if `size` > 0.
    QueueReset { queue: u16, size: u16 },
    /// Device reset.
    Reset,
    /// Write `content` into a data page.
    Write { addr: Addr, content: Content },
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Balloon features offered (bit 0 stats, 1 reporting, 2 poison, 3 deflate on OOM).
    pub offer: u8,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Feature bits from one byte: what a driver may ask for.
fn features(b: u8) -> u64 {
    let bits = [
        VIRTIO_BALLOON_F_STATS_VQ,
        VIRTIO_BALLOON_F_PAGE_REPORTING,
        VIRTIO_BALLOON_F_PAGE_POISON,
        VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_RING_RESET,
        balloon::virtio_balloon::VIRTIO_BALLOON_F_MUST_TELL_HOST,
    ];
    bits.iter()
        .enumerate()
        .filter(|(i, _)| b & (1 << i) != 0)
        .fold(0, |f, (_, &bit)| f | bit)
}

fn feature_byte(f: u64) -> u8 {
    (0..7u8)
        .filter(|&i| features(1 << i) & f != 0)
        .fold(0, |b, i| b | 1 << i)
}

fn queue_size(b: u8) -> u16 {
    1 << (b % 6)
}

fn step(s: &mut Src) -> Step {
    match s.below(20) {
        0 => Step::Init {
            features: features(s.u8()),
            size: queue_size(s.u8()),
        },
        1 => Step::Negotiate {
            features: features(s.u8()),
        },
        2 => Step::SetupQueue {
            index: u16::from(s.below(5)),
            size: queue_size(s.u8()),
        },
        3 => Step::DriverOk,
        4..=7 => {
            let queue = u16::from(s.below(5));
            let content = Content::decode(s);
            let n = usize::from(s.below(4)) + 1;
            let bufs = (0..n)
                .map(|_| Buf {
                    addr: Addr::decode(s),
                    len: match s.below(6) {
                        0..=2 => Len::Content,
                        3 => Len::Short(s.u8()),
                        4 => Len::Page,
                        _ => Len::Raw(s.u32()),
                    },
                    writable: s.below(4) == 0,
                })
                .collect();
            Step::Chain {
                queue,
                content,
                bufs,
            }
        }
        8 => Step::RawDesc {
            queue: u16::from(s.below(5)),
            id: u16::from(s.u8()),
            addr: Addr::decode(s),
            len: u32::from(s.u16()),
            flags: s.u16() % 8,
            next: u16::from(s.u8()),
        },
        9 => Step::Publish {
            queue: u16::from(s.below(5)),
            head: u16::from(s.u8()),
        },
        10 => Step::AvailIdx {
            queue: u16::from(s.below(5)),
            idx: s.u16(),
        },
        11..=13 => Step::Kick(u16::from(s.below(5))),
        14 => Step::Drain(u16::from(s.below(5))),
        15 => Step::Config {
            offset: s.u8() % (CONFIG_LEN as u8 + 4),
            data: s.bytes(8),
        },
        16 => match s.below(2) {
            0 => Step::Target(s.u32()),
            _ => Step::RequestStats,
        },
        17 => Step::QueueReset {
            queue: u16::from(s.below(5)),
            size: queue_size(s.u8()) * u16::from(s.below(4) != 0),
        },
        18 => Step::Reset,
        _ => Step::Write {
            addr: Addr::decode(s),
            content: Content::decode(s),
        },
    }
}

/// Decodes an input.
pub fn decode(data: &[u8]) -> Input {
    let mut s = Src::new(data);
    let offer = s.u8();
    let mut steps = Vec::new();
    while !s.is_empty() && steps.len() < MAX_STEPS {
        steps.push(step(&mut s));
    }
    Input { offer, steps }
}

/// The guest: its memory, the driver, and what it has named for release since the device
/// started.
struct Guest {
    t: Shared,
    mem: Arc<balloon::transport::GuestMemoryMmap>,
    d: Driver<Shared>,
    /// Pages named on an inflate queue since the last reset.
    inflate_named: HashSet<u64>,
    counters: BalloonCounters,
    /// Every (index, layout) of a queue the driver set up since the last reset.
    layouts: Vec<(u16, QueueLayout)>,
    /// Snapshot buffers, reused.
    before: Vec<Vec<u8>>,
    after: Vec<Vec<u8>>,
}

impl Guest {
    /// A fresh driver after a device reset: no queues, nothing inflated.
    fn new_driver(&mut self) {
        self.d = Driver::new(self.t.clone(), self.mem.clone(), RINGS);
        self.inflate_named.clear();
        self.layouts.clear();
    }

    /// Copies guest memory into `into` (one buffer per region, reused from step to step).
    fn snapshot(&self, into: &mut Vec<Vec<u8>>) {
        into.resize_with(REGIONS.len(), Vec::new);
        for (&(gpa, pages), buf) in REGIONS.iter().zip(into.iter_mut()) {
            buf.resize((pages * PAGE) as usize, 0);
            self.mem
                .read_slice(buf, GuestAddress(gpa))
                .expect("guest memory");
        }
    }

    /// Records the layouts of the queues the driver has set up now. The device keeps using a
    /// queue's first layout when the driver programs a live queue again (the transport ignores
    /// that), so every layout since the last reset counts.
    fn record_queues(&mut self) {
        for i in 0..8u16 {
            if let Some(l) = self.d.queue_layout(i) {
                if !self.layouts.contains(&(i, l)) {
                    self.layouts.push((i, l));
                }
            }
        }
    }

    /// Queues the device may process: (kind, layout) of every queue the driver set up.
    fn queues(&self) -> Vec<(QueueKind, QueueLayout)> {
        let features = self.t.lock().expect("transport").negotiated_features();
        let kinds = queue_kinds(features);
        self.layouts
            .iter()
            .filter_map(|&(i, l)| kinds.get(usize::from(i)).map(|&k| (k, l)))
            .collect()
    }

    /// Runs `f` (a step that may let the device process buffers) and checks what changed.
    fn device_step(&mut self, what: &Step, f: impl FnOnce(&mut Self)) {
        self.record_queues();
        let mut before = std::mem::take(&mut self.before);
        let mut after = std::mem::take(&mut self.after);
        self.snapshot(&mut before);
        let queues = self.queues();
        let named = named_pages(&before, &queues);
        for &(inflate, p) in &named {
            if inflate {
                self.inflate_named.insert(p);
            }
        }
        f(self);
        self.snapshot(&mut after);
        // Used rings the device may write: those of every queue set up since the last reset.
        let mut used: Vec<(u64, u64)> = self
            .layouts
            .iter()
            .map(|(_, l)| (l.used, l.used + 6 + 8 * u64::from(l.size)))
            .collect();
        used.sort_unstable();
        let named: HashSet<u64> = named.into_iter().map(|(_, p)| p).collect();
        for ((&(gpa, pages), b), a) in REGIONS.iter().zip(&before).zip(&after) {
            for p in 0..pages as usize {
                let range = p * PAGE as usize..(p + 1) * PAGE as usize;
                if b[range.clone()] == a[range.clone()] {
                    continue;
                }
                let page_gpa = gpa + (p as u64) * PAGE;
                for o in range.clone() {
                    if a[o] == b[o] {
                        continue;
                    }
                    let g = gpa + o as u64;
                    let in_used = used.iter().any(|&(s, e)| g >= s && g < e);
                    let released = named.contains(&(page_gpa / PAGE)) && a[o] == 0;
                    assert!(
                        in_used || released,
                        "{what:?}: guest byte {g:#x} changed {:#x} -> {:#x}; page {:#x} was not \
                         named for release and the byte is in no used ring",
                        b[o],
                        a[o],
                        page_gpa / PAGE
                    );
                }
            }
        }
        self.before = before;
        self.after = after;
        self.check_state(what);
    }

    fn check_state(&mut self, what: &Step) {
        let g = self.t.lock().expect("transport");
        let st = g.device().status();
        assert_eq!(
            st.activated,
            g.is_activated(),
            "{what:?}: device running {} but transport activated {}",
            st.activated,
            g.is_activated()
        );
        let named_in_memory = self
            .inflate_named
            .iter()
            .filter(|&&p| page_in_memory(p))
            .count() as u64;
        assert!(
            st.inflated_pages <= named_in_memory,
            "{what:?}: balloon holds {} pages, the guest named only {named_in_memory}",
            st.inflated_pages
        );
        let (old, new) = (counter_list(&self.counters), counter_list(&st.counters));
        for (i, (o, n)) in old.iter().zip(&new).enumerate() {
            assert!(n >= o, "{what:?}: counter {i} went back from {o} to {n}");
        }
        self.counters = st.counters;
    }
}

fn page_in_memory(pfn: u64) -> bool {
    REGIONS
        .iter()
        .any(|&(gpa, pages)| pfn >= gpa / PAGE && pfn < gpa / PAGE + pages)
}

fn counter_list(c: &BalloonCounters) -> [u64; 19] {
    [
        c.inflate_chains,
        c.inflated_pfns,
        c.duplicate_inflates,
        c.deflate_chains,
        c.deflated_pfns,
        c.deflates_not_inflated,
        c.pfn_out_of_range,
        c.chains_with_bad_pfns,
        c.released_bytes,
        c.release_errors,
        c.stats_updates,
        c.stats_requests,
        c.unknown_stat_tags,
        c.report_chains,
        c.reported_bytes,
        c.reports_kept_for_poison,
        c.malformed_chains,
        c.rejected_chains,
        c.target_changes,
    ]
}

/// Byte `gpa` of the snapshot and the page it lies on, if it is guest memory.
fn byte_at(snap: &[Vec<u8>], gpa: u64) -> Option<(u8, u64)> {
    REGIONS
        .iter()
        .zip(snap)
        .find(|(&(start, pages), _)| gpa >= start && gpa < start + pages * PAGE)
        .map(|(&(start, _), b)| (b[(gpa - start) as usize], gpa / PAGE))
}

fn read_u64(snap: &[Vec<u8>], gpa: u64, n: usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..n {
        let (b, _) = byte_at(snap, gpa.checked_add(i as u64)?)?;
        v |= u64::from(b) << (8 * i);
    }
    Some(v)
}

/// Every page the guest could have named for release in the step to come, with whether an
/// inflate queue (rather than a reporting queue) named it. Computed from the snapshot alone (see the module documentation).
fn named_pages(snap: &[Vec<u8>], queues: &[(QueueKind, QueueLayout)]) -> HashSet<(bool, u64)> {
    let mut named = HashSet::new();
    for &(kind, l) in queues {
        if kind != QueueKind::Inflate && kind != QueueKind::Reporting {
            continue;
        }
        // A released page reads as zero: PFN 0 can always come up.
        named.insert((kind == QueueKind::Inflate, 0));
        let mut seen = HashSet::new();
        for head in 0..l.size {
            // Walk the chain from `head` as the virtio spec defines it.
            let mut descs = Vec::new();
            let mut index = head;
            while index < l.size && descs.len() < usize::from(l.size) {
                let at = l.desc + 16 * u64::from(index);
                let (Some(addr), Some(len), Some(fl), Some(next)) = (
                    read_u64(snap, at, 8),
                    read_u64(snap, at + 8, 4),
                    read_u64(snap, at + 12, 2),
                    read_u64(snap, at + 14, 2),
                ) else {
                    break;
                };
                descs.push((addr, len, fl as u16 & VIRTQ_DESC_F_WRITE != 0));
                if fl as u16 & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                index = next as u16;
            }
            if !seen.insert(descs.clone()) {
                continue;
            }
            match kind {
                QueueKind::Inflate => inflate_named(snap, &descs, &mut named),
                _ => {
                    for &(addr, len, w) in &descs {
                        let end = addr.saturating_add(len);
                        if !w || len == 0 {
                            continue;
                        }
                        // Pages of guest memory under the buffer.
                        for &(start, pages) in &REGIONS {
                            let (lo, hi) = (addr.max(start), end.min(start + pages * PAGE));
                            for p in lo / PAGE..hi.div_ceil(PAGE) {
                                if lo < hi {
                                    named.insert((false, p));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    named
}

/// PFNs of an inflate chain: every 4-byte group of the readable stream, and for groups whose
/// bytes lie on several pages, every variant with some of those pages zeroed (released earlier
/// in the same step).
fn inflate_named(snap: &[Vec<u8>], descs: &[(u64, u64, bool)], named: &mut HashSet<(bool, u64)>) {
    let total: u64 = descs.iter().filter(|d| !d.2).map(|d| d.1).sum();
    if total == 0 || total > MAX_PFN_BYTES_PER_CHAIN {
        return;
    }
    let mut stream: Vec<(u8, u64)> = Vec::with_capacity(total as usize);
    for &(addr, len, w) in descs {
        if w || len == 0 {
            continue;
        }
        // The regions are not adjacent: a buffer lies inside one, or the device rejects the chain.
        let Some((start, bytes)) = REGIONS.iter().zip(snap).find_map(|(&(start, pages), b)| {
            let end = start + pages * PAGE;
            (addr >= start && addr.checked_add(len).is_some_and(|e| e <= end)).then_some((start, b))
        }) else {
            return;
        };
        let off = (addr - start) as usize;
        for (i, &b) in bytes[off..off + len as usize].iter().enumerate() {
            stream.push((b, (addr + i as u64) / PAGE));
        }
    }
    for g in stream.chunks_exact(4) {
        let mut pages: Vec<u64> = g.iter().map(|b| b.1).collect();
        pages.sort_unstable();
        pages.dedup();
        for mask in 0..(1u32 << pages.len()) {
            let mut v = [0u8; 4];
            for (i, &(b, p)) in g.iter().enumerate() {
                let zeroed = pages
                    .iter()
                    .position(|&q| q == p)
                    .is_some_and(|j| mask & (1 << j) != 0);
                v[i] = if zeroed { 0 } else { b };
            }
            let pfn = u64::from(u32::from_le_bytes(v));
            // Only guest pages can be released; the rest of the PFN space is not tracked.
            if page_in_memory(pfn) {
                named.insert((true, pfn));
            }
        }
    }
}

/// Runs one input; panics on the first broken property.
pub fn run(data: &[u8]) {
    let input = decode(data);
    let cfg = BalloonConfig {
        stats: input.offer & 1 == 0,
        free_page_reporting: input.offer & 2 == 0,
        page_poison: input.offer & 4 == 0,
        deflate_on_oom: input.offer & 8 == 0,
        queue_size: 32,
        target_pages: 0,
    };
    let ranges: Vec<(u64, usize)> = REGIONS
        .iter()
        .map(|&(g, p)| (g, (p * PAGE) as usize))
        .collect();
    let mem = Arc::new(memfd_guest_memory(&ranges).expect("guest memory"));
    // Data pages hold a pattern: a release shows as zeros. As PFNs the pattern is far outside
    // guest memory.
    for i in 0..DATA_PAGES {
        let fill = 0xa5 ^ (i as u8);
        mem_write(&mem, data_page(i), &[fill | 0x80; PAGE as usize]);
    }
    let t: Shared = Arc::new(Mutex::new(MmioTransport::new(
        Balloon::new(cfg),
        mem.clone(),
        Arc::new(CountingIrq::default()),
    )));
    let d = Driver::new(t.clone(), mem.clone(), RINGS);
    let mut g = Guest {
        t,
        mem,
        d,
        inflate_named: HashSet::new(),
        counters: BalloonCounters::default(),
        layouts: Vec::new(),
        before: Vec::new(),
        after: Vec::new(),
    };
    for st in &input.steps {
        apply(&mut g, st);
    }
    // The host side stays usable: a reset and a clean inflate work.
    g.new_driver();
    g.d.init(u64::MAX, 8).expect("init after the steps");
    let pfn_buf = data_page(0);
    g.d.write_mem(pfn_buf, &5u32.to_le_bytes())
        .expect("guest memory");
    g.d.add_chain(0, &[(pfn_buf, 4, false)]).expect("add chain");
    g.d.kick(0);
    assert_eq!(g.d.drain_used(0).expect("used ring").len(), 1);
    assert_eq!(g.d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

fn mem_write(mem: &balloon::transport::GuestMemoryMmap, gpa: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(gpa))
        .expect("guest memory");
}

fn apply(g: &mut Guest, st: &Step) {
    match st {
        Step::Init { features, size } => {
            // The reset this starts with drops every buffer: nothing for the device to process
            // (the driver's own writes of fresh rings are not device writes).
            g.new_driver();
            let _ = g.d.init(*features, *size);
            g.record_queues();
            g.check_state(st);
        }
        Step::Negotiate { features } => {
            g.new_driver();
            let _ = g.d.negotiate(*features);
            g.check_state(st);
        }
        Step::SetupQueue { index, size } => {
            let _ = g.d.setup_queue(*index, *size);
            g.record_queues();
        }
        Step::DriverOk => g.device_step(st, |g| g.d.driver_ok()),
        Step::Chain {
            queue,
            content,
            bufs,
        } => {
            let bytes = content.bytes();
            let Some(first) = bufs.first() else {
                return;
            };
            mem_write_guest(g, first.addr.gpa(), &bytes);
            let list: Vec<(u64, u32, bool)> = bufs
                .iter()
                .map(|b| {
                    let len = match b.len {
                        Len::Content => bytes.len() as u32,
                        Len::Short(n) => u32::from(n),
                        Len::Page => PAGE as u32,
                        Len::Raw(n) => n,
                    };
                    (b.addr.gpa(), len, b.writable)
                })
                .collect();
            let _ = g.d.add_chain(*queue, &list);
        }
        Step::RawDesc {
            queue,
            id,
            addr,
            len,
            flags,
            next,
        } => {
            // Only inside the table: a write past it would land on the rings the oracle trusts.
            let inside = g.d.queue_layout(*queue).is_some_and(|l| *id < l.size);
            if inside {
                let _ =
                    g.d.write_desc_raw(*queue, *id, addr.gpa(), *len, *flags, *next);
            }
        }
        Step::Publish { queue, head } => {
            let _ = g.d.publish_raw(*queue, *head);
        }
        Step::AvailIdx { queue, idx } => {
            let _ = g.d.set_avail_idx_raw(*queue, *idx);
        }
        Step::Kick(q) => {
            let q = *q;
            g.device_step(st, |g| g.d.kick(q));
        }
        Step::Drain(q) => {
            let _ = g.d.drain_used(*q);
        }
        Step::Config { offset, data } => {
            g.d.config_write(u64::from(*offset), data);
            g.check_state(st);
        }
        Step::Target(n) => {
            let _ =
                g.t.lock()
                    .expect("transport")
                    .device_mut()
                    .set_target_pages(*n);
            g.check_state(st);
        }
        Step::RequestStats => g.device_step(st, |g| {
            let mut t = g.t.lock().expect("transport");
            if t.device_mut().request_stats().is_err() {
                t.set_needs_reset("stats request failed");
            }
        }),
        Step::QueueReset { queue, size } => {
            g.d.reset_queue(*queue);
            if *size > 0 {
                let _ = g.d.setup_queue(*queue, *size);
                g.record_queues();
            }
            g.check_state(st);
        }
        Step::Reset => {
            g.d.reset();
            g.new_driver();
            g.check_state(st);
            let status = g.t.lock().expect("transport").device().status();
            assert_eq!(status.inflated_pages, 0, "a reset balloon holds pages");
            assert!(!status.activated, "device runs after a reset");
        }
        Step::Write { addr, content } => mem_write_guest(g, addr.gpa(), &content.bytes()),
    }
}

/// Writes guest memory where the input may: the data regions only (never the rings region),
/// clipped at the end of the region.
fn mem_write_guest(g: &Guest, gpa: u64, data: &[u8]) {
    for &(start, pages) in &REGIONS[..2] {
        let end = start + pages * PAGE;
        if gpa >= start && gpa < end {
            let n = data.len().min((end - gpa) as usize);
            let _ = g.d.write_mem(gpa, &data[..n]);
        }
    }
}

/// Writes the bytes that decode to `input` (for seeds).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(input.offer);
    for st in &input.steps {
        match st {
            Step::Init { features, size } => {
                e.u8(0)
                    .u8(feature_byte(*features))
                    .u8(size.trailing_zeros() as u8);
            }
            Step::Negotiate { features } => {
                e.u8(1).u8(feature_byte(*features));
            }
            Step::SetupQueue { index, size } => {
                e.u8(2).u8(*index as u8).u8(size.trailing_zeros() as u8);
            }
            Step::DriverOk => {
                e.u8(3);
            }
            Step::Chain {
                queue,
                content,
                bufs,
            } => {
                e.u8(4).u8(*queue as u8);
                content.encode(&mut e);
                e.u8((bufs.len() - 1) as u8);
                for b in bufs {
                    b.addr.encode(&mut e);
                    match b.len {
                        Len::Content => e.u8(0),
                        Len::Short(n) => e.u8(3).u8(n),
                        Len::Page => e.u8(4),
                        Len::Raw(n) => e.u8(5).u32(n),
                    };
                    e.u8(if b.writable { 0 } else { 1 });
                }
            }
            Step::RawDesc {
                queue,
                id,
                addr,
                len,
                flags,
                next,
            } => {
                e.u8(8).u8(*queue as u8).u8(*id as u8);
                addr.encode(&mut e);
                e.u16(*len as u16).u16(*flags).u8(*next as u8);
            }
            Step::Publish { queue, head } => {
                e.u8(9).u8(*queue as u8).u8(*head as u8);
            }
            Step::AvailIdx { queue, idx } => {
                e.u8(10).u8(*queue as u8).u16(*idx);
            }
            Step::Kick(q) => {
                e.u8(11).u8(*q as u8);
            }
            Step::Drain(q) => {
                e.u8(14).u8(*q as u8);
            }
            Step::Config { offset, data } => {
                e.u8(15).u8(*offset).bytes(data);
            }
            Step::Target(n) => {
                e.u8(16).u8(0).u32(*n);
            }
            Step::RequestStats => {
                e.u8(16).u8(1);
            }
            Step::QueueReset { queue, size } => {
                let (sz, keep) = if *size == 0 {
                    (0, 0)
                } else {
                    (size.trailing_zeros() as u8, 1)
                };
                e.u8(17).u8(*queue as u8).u8(sz).u8(keep);
            }
            Step::Reset => {
                e.u8(18);
            }
            Step::Write { addr, content } => {
                e.u8(19);
                addr.encode(&mut e);
                content.encode(&mut e);
            }
        }
    }
    e.out
}
