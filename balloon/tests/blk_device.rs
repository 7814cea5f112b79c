//! The virtio-blk device logic driven through a split virtqueue in guest memory, the way a
//! driver fills it: every request type, requests split over descriptors in any layout, unaligned
//! I/O, bounds and malformed requests, failing storage, completion order, and (property) that no
//! chain a guest can build panics the host or changes the disk outside a valid write.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use balloon::blk::testing::MemDisk;
use balloon::blk::{BlkMetrics, BlkQueue, ReqStatus, ReqType};
use balloon::transport::{GuestMemoryMmap, Queue, QueueT};
use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 64;
const MEM: u64 = 8 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Where request buffers go.
const DATA: u64 = 0x10_0000;
const DISK: u64 = 1 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A driver's view of one split queue in guest memory.
struct Ring {
    mem: GuestMemoryMmap,
    queue: Queue,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    alloc: u64,
    disk: Arc<MemDisk>,
    blk: BlkQueue<MemDisk>,
}

/// A buffer of a request: bytes the device reads, or room the device writes.
enum Buf {
    R(Vec<u8>),
    W(u32),
}

/// What the device answered.
#[derive(Debug)]
struct Answer {
    status: u8,
    used_len: u32,
    /// The writable buffers' contents after the answer (data, then the status byte).
    written: Vec<u8>,
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, nr: u32, flags: u32) -> Vec<u8> {
    let mut s = vec![0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&nr.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed ^ (i >> 9) as u8)
        .collect()
}

impl Ring {
    fn new(features: u64) -> Ring {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        let disk = Arc::new(MemDisk::new(DISK));
        let mut blk = BlkQueue::new(
            disk.clone(),
            Arc::new(BlkMetrics::default()),
            Arc::from("test"),
        );
        blk.set_features(features);
        Ring {
            mem,
            queue,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            alloc: DATA,
            disk,
            blk,
        }
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(i));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Places a chain of `bufs` and publishes it; returns the head and the writable buffers.
    fn submit(&mut self, bufs: &[Buf]) -> (u16, Vec<(u64, u32)>) {
        let head = self.next_desc;
        let mut writable = Vec::new();
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % QSIZE;
            let next = (i + 1) % QSIZE;
            let more = if k + 1 < bufs.len() { F_NEXT } else { 0 };
            let addr = self.alloc;
            let len = match b {
                Buf::R(bytes) => {
                    self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                    self.write_desc(i, addr, bytes.len() as u32, more, next);
                    bytes.len() as u32
                }
                Buf::W(len) => {
                    // Filled with a marker, so that untouched bytes show.
                    let junk = vec![0xa5u8; *len as usize];
                    self.mem.write_slice(&junk, GuestAddress(addr)).unwrap();
                    self.write_desc(i, addr, *len, more | F_WRITE, next);
                    writable.push((addr, *len));
                    *len
                }
            };
            self.alloc += u64::from(len).max(1).next_multiple_of(64);
            if self.alloc > MEM - (2 << 20) {
                self.alloc = DATA;
            }
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        self.publish(head);
        (head, writable)
    }

    fn used(&self, n: u16) -> (u32, u32) {
        let slot = u64::from(n % QSIZE);
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(USED + 4 + 8 * slot))
            .unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(USED + 8 + 8 * slot))
            .unwrap();
        (id, len)
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    fn process(&mut self) -> u32 {
        self.blk
            .process_queue(&mut self.queue, &self.mem, u32::from(QSIZE))
            .unwrap()
    }

    /// Submits one request, lets the device process it, and returns its answer.
    fn request(&mut self, bufs: &[Buf]) -> Answer {
        let (head, writable) = self.submit(bufs);
        assert_eq!(self.process(), 1);
        let (id, used_len) = self.used(self.used_seen);
        self.used_seen = self.used_seen.wrapping_add(1);
        assert_eq!(id, u32::from(head), "answers in order");
        let mut written = Vec::new();
        for (addr, len) in writable {
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            written.extend(b);
        }
        Answer {
            status: written.last().copied().unwrap_or(0xff),
            used_len,
            written,
        }
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Answer {
        self.request(&[
            Buf::R(header(VIRTIO_BLK_T_OUT, sector)),
            Buf::R(data.to_vec()),
            Buf::W(1),
        ])
    }

    fn read(&mut self, sector: u64, len: u32) -> Answer {
        self.request(&[
            Buf::R(header(VIRTIO_BLK_T_IN, sector)),
            Buf::W(len),
            Buf::W(1),
        ])
    }

    fn counters(&self) -> balloon::blk::BlkCounters {
        self.blk.metrics().snapshot()
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const ALL_FEATURES: u64 = 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;

#[test]
fn write_then_read_back() {
    let mut r = Ring::new(ALL_FEATURES);
    let data = pattern(1, 8192);
    let a = r.write(16, &data);
    assert_eq!((a.status, a.used_len), (OK, 1));
    assert_eq!(&r.disk.contents()[16 * 512..16 * 512 + 8192], &data[..]);
    let a = r.read(16, 8192);
    assert_eq!((a.status, a.used_len), (OK, 8193));
    assert_eq!(&a.written[..8192], &data[..]);
    let c = r.counters();
    assert_eq!(c.count(ReqType::Out, ReqStatus::Ok), 1);
    assert_eq!(c.count(ReqType::In, ReqStatus::Ok), 1);
    assert_eq!((c.bytes_written, c.bytes_read), (8192, 8192));
}

/// Descriptor boundaries carry no meaning: a header split in three, data split at odd places,
/// the status byte sharing a buffer with read data.
#[test]
fn any_layout() {
    let mut r = Ring::new(ALL_FEATURES);
    let data = pattern(2, 4096);
    let h = header(VIRTIO_BLK_T_OUT, 8);
    let a = r.request(&[
        Buf::R(h[..3].to_vec()),
        Buf::R(h[3..11].to_vec()),
        Buf::R([&h[11..], &data[..100]].concat()),
        Buf::R(data[100..3001].to_vec()),
        Buf::R(data[3001..].to_vec()),
        Buf::W(1),
    ]);
    assert_eq!(a.status, OK);
    let a = r.request(&[
        Buf::R(header(VIRTIO_BLK_T_IN, 8)),
        Buf::W(1000),
        Buf::W(3000),
        Buf::W(97),
    ]);
    assert_eq!((a.status, a.used_len), (OK, 4097));
    assert_eq!(&a.written[..4096], &data[..]);
}

#[test]
fn unaligned_sectors() {
    let mut r = Ring::new(ALL_FEATURES);
    let before = r.disk.contents();
    let data = pattern(3, 1536);
    assert_eq!(r.write(3, &data).status, OK);
    let after = r.disk.contents();
    assert_eq!(&after[3 * 512..3 * 512 + 1536], &data[..]);
    assert_eq!(&after[..3 * 512], &before[..3 * 512]);
    assert_eq!(&after[6 * 512..], &before[6 * 512..]);
    let a = r.read(4, 512);
    assert_eq!(&a.written[..512], &data[512..1024]);
}

/// Requests larger than the bounce buffer go through it in pieces.
#[test]
fn large_requests() {
    let mut r = Ring::new(ALL_FEATURES);
    let data = pattern(4, 512 * 1024);
    assert_eq!(r.write(1, &data).status, OK);
    let a = r.read(1, data.len() as u32);
    assert_eq!(a.status, OK);
    assert_eq!(&a.written[..data.len()], &data[..]);
}

#[test]
fn out_of_range_and_malformed_requests_are_ioerr() {
    let mut r = Ring::new(ALL_FEATURES);
    let last = DISK / 512 - 1;
    let before = r.disk.contents();
    // Past the end, partly or wholly, and sector numbers that overflow.
    assert_eq!(r.write(last, &[1u8; 1024]).status, IOERR);
    assert_eq!(r.read(last + 1, 512).status, IOERR);
    assert_eq!(r.write(u64::MAX / 512 + 1, &[1u8; 512]).status, IOERR);
    assert_eq!(r.read(u64::MAX, 512).status, IOERR);
    // Not whole sectors.
    assert_eq!(r.write(0, &[1u8; 100]).status, IOERR);
    assert_eq!(r.read(0, 513).status, IOERR);
    // A header that is too short.
    let a = r.request(&[Buf::R(vec![0u8; 10]), Buf::W(1)]);
    assert_eq!(a.status, IOERR);
    // The last sector itself is fine.
    assert_eq!(r.write(last, &[9u8; 512]).status, OK);
    let after = r.disk.contents();
    assert_eq!(
        &after[..last as usize * 512],
        &before[..last as usize * 512]
    );
    let c = r.counters();
    assert_eq!(c.guest_errors, 7);
    assert_eq!(c.count(ReqType::Out, ReqStatus::IoErr), 3);
}

#[test]
fn unknown_types_are_unsupp() {
    let mut r = Ring::new(0);
    for kind in [2, 10, 14, 99, u32::MAX] {
        let a = r.request(&[Buf::R(header(kind, 0)), Buf::W(512), Buf::W(1)]);
        assert_eq!(a.status, UNSUPP, "type {kind}");
        assert_eq!(a.used_len, 1);
    }
    // DISCARD and WRITE_ZEROES without the feature.
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let a = r.request(&[Buf::R(header(kind, 0)), Buf::R(segment(0, 8, 0)), Buf::W(1)]);
        assert_eq!(a.status, UNSUPP);
    }
    assert_eq!(r.counters().count(ReqType::Other, ReqStatus::Unsupp), 5);
}

#[test]
fn get_id_and_flush() {
    let mut r = Ring::new(0);
    let a = r.request(&[Buf::R(header(VIRTIO_BLK_T_GET_ID, 0)), Buf::W(21)]);
    assert_eq!((a.status, a.used_len), (OK, 21));
    assert_eq!(&a.written[..7], b"memdisk");
    // A short buffer gets what fits.
    let a = r.request(&[Buf::R(header(VIRTIO_BLK_T_GET_ID, 0)), Buf::W(5)]);
    assert_eq!((a.status, a.used_len), (OK, 5));
    assert_eq!(&a.written[..4], b"memd");
    let a = r.request(&[Buf::R(header(VIRTIO_BLK_T_FLUSH, 0)), Buf::W(1)]);
    assert_eq!(a.status, OK);
    assert_eq!(r.disk.flushes.load(Ordering::Relaxed), 1);
}

#[test]
fn discard_and_write_zeroes() {
    let mut r = Ring::new(ALL_FEATURES);
    assert_eq!(r.write(0, &pattern(5, 16384)).status, OK);
    let a = r.request(&[
        Buf::R(header(VIRTIO_BLK_T_DISCARD, 0)),
        Buf::R([segment(8, 8, 0), segment(24, 8, 0)].concat()),
        Buf::W(1),
    ]);
    assert_eq!(a.status, OK);
    assert_eq!(
        *r.disk.discards.lock().unwrap(),
        vec![(8 * 512, 4096), (24 * 512, 4096)]
    );
    // Write zeroes with unmap; a read shows zeroes, the rest is kept.
    let a = r.request(&[
        Buf::R(header(VIRTIO_BLK_T_WRITE_ZEROES, 0)),
        Buf::R(segment(2, 3, 1)),
        Buf::W(1),
    ]);
    assert_eq!(a.status, OK);
    let a = r.read(0, 4096);
    let want = pattern(5, 16384);
    assert_eq!(&a.written[..1024], &want[..1024]);
    assert!(a.written[1024..2560].iter().all(|&b| b == 0));
    assert_eq!(&a.written[2560..4096], &want[2560..4096]);
    // Bad segments: unknown flags (UNSUPP), the unmap flag on a discard (UNSUPP), one segment
    // out of range (IOERR, and no segment is executed), too many, and none at all.
    let discards_before = r.disk.discards.lock().unwrap().len();
    let cases: Vec<(u32, Vec<u8>, u8)> = vec![
        (VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 8, 2), UNSUPP),
        (VIRTIO_BLK_T_DISCARD, segment(0, 8, 1), UNSUPP),
        (
            VIRTIO_BLK_T_DISCARD,
            [segment(0, 8, 0), segment(DISK / 512, 8, 0)].concat(),
            IOERR,
        ),
        (VIRTIO_BLK_T_DISCARD, segment(0, u32::MAX, 0), IOERR),
        (VIRTIO_BLK_T_DISCARD, segment(0, 8, 0).repeat(33), IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![], IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![0u8; 15], IOERR),
    ];
    for (kind, segs, want) in cases {
        let mut bufs = vec![Buf::R(header(kind, 0))];
        if !segs.is_empty() {
            bufs.push(Buf::R(segs));
        }
        bufs.push(Buf::W(1));
        assert_eq!(r.request(&bufs).status, want);
    }
    assert_eq!(r.disk.discards.lock().unwrap().len(), discards_before);
}

#[test]
fn failing_storage_is_ioerr_not_a_guest_error() {
    let mut r = Ring::new(0);
    r.disk.fail.store(true, Ordering::Relaxed);
    assert_eq!(r.write(0, &[1u8; 512]).status, IOERR);
    assert_eq!(r.read(0, 512).status, IOERR);
    let c = r.counters();
    assert_eq!(c.guest_errors, 0);
    assert_eq!(c.count(ReqType::In, ReqStatus::IoErr), 1);
}

/// Chains that cannot be answered come back unused; the queue goes on.
#[test]
fn unanswerable_chains() {
    let mut r = Ring::new(0);
    // No writable byte at all.
    let a = r.request(&[Buf::R(header(VIRTIO_BLK_T_IN, 0))]);
    assert_eq!(a.used_len, 0);
    // Readable after writable.
    let a = r.request(&[
        Buf::R(header(VIRTIO_BLK_T_OUT, 0)),
        Buf::W(1),
        Buf::R(vec![1u8; 512]),
    ]);
    assert_eq!(a.used_len, 0);
    // A buffer outside guest memory.
    let head = r.next_desc;
    r.write_desc(head, MEM - 8, 16, F_NEXT, head + 1);
    r.write_desc(head + 1, DATA, 1, F_WRITE, 0);
    r.next_desc += 2;
    r.publish(head);
    assert_eq!(r.process(), 1);
    assert_eq!(r.used(r.used_seen), (u32::from(head), 0));
    r.used_seen += 1;
    assert_eq!(r.counters().unanswerable, 3);
    // And the next request works.
    assert_eq!(r.write(0, &[7u8; 512]).status, OK);
}

/// Answers go on the used ring in the order the chains were published.
#[test]
fn answers_in_order() {
    let mut r = Ring::new(0);
    let mut heads = Vec::new();
    for i in 0..10u64 {
        let (h, _) = r.submit(&[
            Buf::R(header(VIRTIO_BLK_T_OUT, i * 8)),
            Buf::R(pattern(i as u8, 4096)),
            Buf::W(1),
        ]);
        heads.push(h);
    }
    assert_eq!(r.process(), 10);
    assert_eq!(r.used_idx(), 10);
    for (n, h) in heads.iter().enumerate() {
        assert_eq!(r.used(n as u16), (u32::from(*h), 1));
    }
}

/// A turn answers at most its budget of chains, in order, and says so; the next turns answer
/// the rest.
#[test]
fn a_turn_stops_at_its_budget() {
    let mut r = Ring::new(0);
    for i in 0..10u64 {
        r.submit(&[
            Buf::R(header(VIRTIO_BLK_T_OUT, i * 8)),
            Buf::R(pattern(i as u8, 512)),
            Buf::W(1),
        ]);
    }
    let mut turns = Vec::new();
    loop {
        let n = r.blk.process_queue(&mut r.queue, &r.mem, 4).unwrap();
        turns.push(n);
        assert_eq!(r.used_idx(), turns.iter().sum::<u32>() as u16);
        if n < 4 {
            break;
        }
    }
    assert_eq!(turns, [4, 4, 2]);
    r.used_seen = 10;
    let c = r.counters();
    assert_eq!(c.budget_exhausted, 2);
    assert_eq!(c.count(ReqType::Out, ReqStatus::Ok), 10);
    for i in 0..10u64 {
        assert_eq!(r.read(i * 8, 512).written[..512], pattern(i as u8, 512)[..]);
    }
}

/// A broken ring (a descriptor loop) is an error for the transport, not a panic.
#[test]
fn a_descriptor_loop_breaks_the_ring() {
    let mut r = Ring::new(0);
    r.write_desc(0, DATA, 16, F_NEXT, 1);
    r.write_desc(1, DATA, 16, F_NEXT, 0);
    r.publish(0);
    assert!(r
        .blk
        .process_queue(&mut r.queue, &r.mem, u32::from(QSIZE))
        .is_err());
    assert_eq!(r.counters().broken_rings, 1);
}

fn raw_desc() -> impl Strategy<Value = (u64, u32, u16)> {
    (
        prop_oneof![DATA..MEM, any::<u64>(), (MEM - 64)..(MEM + 64)],
        prop_oneof![0u32..9000, any::<u32>()],
        prop_oneof![Just(0u16), Just(F_WRITE), Just(F_NEXT), any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random request bytes in well-formed chains: every chain is answered with one of the three
    /// statuses, in order; the disk changes only where a valid OUT or WRITE_ZEROES asked.
    #[test]
    fn random_requests_are_answered(
        reqs in prop::collection::vec(
            (prop_oneof![0u32..16, any::<u32>()], prop_oneof![0u64..(DISK / 512 + 4), any::<u64>()],
             prop::collection::vec(0usize..3000, 0..4), prop::collection::vec(1u32..3000, 0..3)),
            1..8),
    ) {
        let mut r = Ring::new(ALL_FEATURES);
        for (kind, sector, readable, writable) in reqs {
            let before = r.disk.contents();
            let mut body = header(kind, sector);
            for (i, n) in readable.iter().enumerate() {
                body.extend(pattern(i as u8, *n));
            }
            let data_out = body.len() - 16;
            let mut bufs = vec![Buf::R(body)];
            for w in &writable {
                bufs.push(Buf::W(*w));
            }
            bufs.push(Buf::W(1));
            let a = r.request(&bufs);
            prop_assert!([OK, IOERR, UNSUPP].contains(&a.status));
            let after = r.disk.contents();
            let changed = before != after;
            if changed {
                prop_assert!(kind == VIRTIO_BLK_T_OUT || kind == VIRTIO_BLK_T_WRITE_ZEROES);
                prop_assert_eq!(a.status, OK);
            }
            if kind == VIRTIO_BLK_T_OUT && a.status == OK {
                let off = sector as usize * 512;
                prop_assert_eq!(&after[off..off + data_out], &bufs_r(&bufs)[16..]);
            }
        }
    }

    /// Raw descriptor tables, heads and indexes: no panic, and either every published chain is
    /// answered or the ring is reported broken.
    #[test]
    fn raw_rings_never_panic(
        descs in prop::collection::vec(raw_desc(), QSIZE as usize),
        nexts in prop::collection::vec(prop_oneof![0u16..QSIZE, any::<u16>()], QSIZE as usize),
        heads in prop::collection::vec(prop_oneof![0u16..QSIZE, any::<u16>()], 1..10),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut r = Ring::new(ALL_FEATURES);
        for (i, (&(addr, len, flags), &next)) in descs.iter().zip(&nexts).enumerate() {
            r.write_desc(i as u16, addr, len, flags, next);
            if addr.checked_add(payload.len() as u64).is_some_and(|e| e <= MEM) && addr >= DATA {
                r.mem.write_slice(&payload, GuestAddress(addr)).unwrap();
            }
        }
        for &h in &heads {
            r.publish(h);
        }
        match r.blk.process_queue(&mut r.queue, &r.mem, u32::from(QSIZE)) {
            Ok(n) => prop_assert_eq!(n as usize, heads.len()),
            Err(_) => prop_assert!(r.counters().broken_rings == 1),
        }
    }
}

/// The readable bytes of a request, concatenated.
fn bufs_r(bufs: &[Buf]) -> Vec<u8> {
    bufs.iter()
        .filter_map(|b| match b {
            Buf::R(v) => Some(v.clone()),
            Buf::W(_) => None,
        })
        .flatten()
        .collect()
}
