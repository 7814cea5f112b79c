//! Hostile guests against virtio-balloon: every spec violation ends in an ignored request with a
//! counter, or in DEVICE_NEEDS_RESET, never in a host panic or a touch outside guest memory.

use std::sync::{Arc, Mutex};

use balloon::testing::{memfd_guest_memory, CountingIrq, Driver, QueueLayout};
use balloon::transport::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use balloon::transport::mmio::regs;
use balloon::transport::{MmioTransport, INT_CONFIG_CHANGE, STATUS_DEVICE_NEEDS_RESET};
use balloon::virtio_balloon::{
    Balloon, BalloonConfig, BalloonStatus, VIRTIO_BALLOON_F_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};

const MIB: u64 = 1 << 20;
const MEM: u64 = 8 * MIB;
const SCRATCH: u64 = 4 * MIB;
const INFLATE: u16 = 0;
const STATS: u16 = 2;
const REPORT: u16 = 3;

type Shared = Arc<Mutex<MmioTransport<Balloon>>>;

fn guest() -> (Driver<Shared>, Shared) {
    let mem = Arc::new(memfd_guest_memory(&[(0, MEM as usize)]).unwrap());
    let irq = Arc::new(CountingIrq::default());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        irq,
    )));
    let mut d = Driver::new(t.clone(), mem, SCRATCH..MEM);
    d.init(
        VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_PAGE_REPORTING,
        8,
    )
    .unwrap();
    (d, t)
}

fn status(t: &Shared) -> BalloonStatus {
    t.lock().unwrap().device().status()
}

fn needs_reset(d: &mut Driver<Shared>) -> bool {
    d.status() & STATUS_DEVICE_NEEDS_RESET != 0
}

fn pfn_buf(d: &mut Driver<Shared>, pfns: &[u32]) -> (u64, u32) {
    let b = d.alloc(4096, 4096).unwrap();
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    d.write_mem(b, &bytes).unwrap();
    (b, bytes.len() as u32)
}

#[test]
fn descriptor_loop_needs_reset() {
    let (mut d, t) = guest();
    let (b, len) = pfn_buf(&mut d, &[1, 2]);
    d.write_desc_raw(INFLATE, 0, b, len, VIRTQ_DESC_F_NEXT, 1)
        .unwrap();
    d.write_desc_raw(INFLATE, 1, b, len, VIRTQ_DESC_F_NEXT, 0)
        .unwrap();
    d.publish_raw(INFLATE, 0).unwrap();
    d.kick(INFLATE);
    assert!(needs_reset(&mut d));
    assert_ne!(d.interrupt_status() & INT_CONFIG_CHANGE, 0);
    assert_eq!(t.lock().unwrap().counters().needs_reset, 1);
    assert_eq!(
        status(&t).inflated_pages,
        0,
        "nothing inflated from a broken chain"
    );
    // A reset brings it back.
    d.init(0, 8).unwrap();
    assert!(!needs_reset(&mut d));
}

#[test]
fn chain_through_every_descriptor_and_beyond_needs_reset() {
    let (mut d, _) = guest();
    let (b, _) = pfn_buf(&mut d, &[1]);
    // 0 -> 1 -> ... -> 7 -> 0: longer than the queue.
    for i in 0..8u16 {
        d.write_desc_raw(INFLATE, i, b, 4, VIRTQ_DESC_F_NEXT, (i + 1) % 8)
            .unwrap();
    }
    d.publish_raw(INFLATE, 3).unwrap();
    d.kick(INFLATE);
    assert!(needs_reset(&mut d));
}

#[test]
fn next_index_out_of_range_needs_reset() {
    let (mut d, _) = guest();
    let (b, _) = pfn_buf(&mut d, &[1]);
    d.write_desc_raw(INFLATE, 0, b, 4, VIRTQ_DESC_F_NEXT, 500)
        .unwrap();
    d.publish_raw(INFLATE, 0).unwrap();
    d.kick(INFLATE);
    assert!(needs_reset(&mut d));
}

#[test]
fn head_index_out_of_range_needs_reset() {
    let (mut d, _) = guest();
    d.publish_raw(INFLATE, 9).unwrap();
    d.kick(INFLATE);
    assert!(needs_reset(&mut d));
}

#[test]
fn indirect_descriptor_needs_reset() {
    let (mut d, _) = guest();
    let (b, _) = pfn_buf(&mut d, &[1]);
    d.write_desc_raw(INFLATE, 0, b, 16, VIRTQ_DESC_F_INDIRECT, 0)
        .unwrap();
    d.publish_raw(INFLATE, 0).unwrap();
    d.kick(INFLATE);
    assert!(needs_reset(&mut d));
}

#[test]
fn buffer_outside_guest_memory_is_returned_unused() {
    let (mut d, t) = guest();
    for (addr, len) in [
        (MEM, 8),
        (MEM - 4, 8),
        (u64::MAX - 2, 8),
        (0x10_0000_0000, 4),
    ] {
        let head = d.add_chain(INFLATE, &[(addr, len, false)]).unwrap();
        d.kick(INFLATE);
        let u = d.pop_used(INFLATE).unwrap().unwrap();
        assert_eq!((u.head, u.len), (head, 0));
    }
    assert!(!needs_reset(&mut d));
    let s = status(&t);
    assert_eq!(s.counters.rejected_chains, 4);
    assert_eq!(s.inflated_pages, 0);
}

#[test]
fn wrong_direction_empty_short_and_huge_pfn_lists_are_counted() {
    let (mut d, t) = guest();
    let (b, len) = pfn_buf(&mut d, &[1, 2, 3]);
    // Device-writable PFN list.
    d.add_chain(INFLATE, &[(b, len, true)]).unwrap();
    // Readable then writable.
    d.add_chain(INFLATE, &[(b, len, false), (b, 4, true)])
        .unwrap();
    // Empty.
    d.add_chain(INFLATE, &[(b, 0, false)]).unwrap();
    // Larger than any sane PFN list (1 MiB, inside guest memory).
    d.add_chain(INFLATE, &[(0, MIB as u32, false)]).unwrap();
    d.kick(INFLATE);
    assert_eq!(d.drain_used(INFLATE).unwrap().len(), 4);
    let s = status(&t);
    assert_eq!(s.counters.malformed_chains, 4);
    assert_eq!(s.inflated_pages, 0);
    // Partial PFN: the whole ones count, the tail is reported.
    d.add_chain(INFLATE, &[(b, 6, false)]).unwrap();
    d.kick(INFLATE);
    d.drain_used(INFLATE).unwrap();
    let s = status(&t);
    assert_eq!(s.counters.malformed_chains, 5);
    assert_eq!(s.inflated_pages, 1);
    assert!(!needs_reset(&mut d));
}

#[test]
fn garbage_pfns_are_ignored_and_counted() {
    let (mut d, t) = guest();
    let mem_pages = (MEM / 4096) as u32;
    let garbage: Vec<u32> = (0..256u32)
        .map(|i| mem_pages + i.wrapping_mul(0x9e37_79b9) % (u32::MAX - mem_pages))
        .collect();
    let (b, len) = pfn_buf(&mut d, &garbage);
    d.add_chain(INFLATE, &[(b, len, false)]).unwrap();
    d.kick(INFLATE);
    d.drain_used(INFLATE).unwrap();
    let s = status(&t);
    assert_eq!(s.counters.pfn_out_of_range, 256);
    assert_eq!(s.counters.released_bytes, 0);
    assert_eq!(s.counters.release_errors, 0);
}

#[test]
fn queue_reconfiguration_while_running_is_ignored() {
    let (mut d, t) = guest();
    let before = d.queue_layout(INFLATE).unwrap();
    d.mmio_write(regs::QUEUE_SEL, u32::from(INFLATE));
    d.mmio_write(regs::QUEUE_READY, 0);
    d.program_queue(
        INFLATE,
        QueueLayout {
            size: 4,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        },
    );
    assert_eq!(d.mmio_read(regs::QUEUE_DESC_LOW), before.desc as u32);
    assert!(t.lock().unwrap().counters().ignored_writes >= 8);
    // Status bits cannot be cleared without a reset either.
    d.set_status(1);
    assert_eq!(d.status() & 4, 4);
    // And the running queue still works.
    let (b, len) = pfn_buf(&mut d, &[7]);
    d.add_chain(INFLATE, &[(b, len, false)]).unwrap();
    d.kick(INFLATE);
    assert_eq!(d.drain_used(INFLATE).unwrap().len(), 1);
    assert_eq!(status(&t).inflated_pages, 1);
}

#[test]
fn notify_of_missing_queue_is_ignored() {
    let (mut d, t) = guest();
    let before = t.lock().unwrap().counters().ignored_writes;
    d.kick(7);
    d.mmio_write(regs::QUEUE_NOTIFY, 0x1_0000);
    assert_eq!(t.lock().unwrap().counters().ignored_writes, before + 2);
    assert!(!needs_reset(&mut d));
}

#[test]
fn wrong_direction_stats_and_reports_are_counted() {
    let (mut d, t) = guest();
    let b = d.alloc(4096, 4096).unwrap();
    d.add_chain(STATS, &[(b, 20, true)]).unwrap();
    d.kick(STATS);
    assert_eq!(
        d.drain_used(STATS).unwrap().len(),
        1,
        "unusable stats buffer returned"
    );
    // Reporting with a device-readable buffer: ignored, chain returned.
    d.write_mem(0x20_0000, &[1u8; 4096]).unwrap();
    d.add_chain(REPORT, &[(0x20_0000, 0x1000, false)]).unwrap();
    d.kick(REPORT);
    assert_eq!(d.drain_used(REPORT).unwrap().len(), 1);
    assert_eq!(d.read_mem(0x20_0000, 1).unwrap(), vec![1]);
    let s = status(&t);
    assert_eq!(s.counters.malformed_chains, 2);
    assert_eq!(s.counters.released_bytes, 0);
    // A stats buffer that is not whole entries still parses the whole ones.
    let mut e = 4u16.to_le_bytes().to_vec();
    e.extend(77u64.to_le_bytes());
    e.extend([1, 2, 3]);
    d.write_mem(b, &e).unwrap();
    d.add_chain(STATS, &[(b, e.len() as u32, false)]).unwrap();
    d.kick(STATS);
    let s = status(&t);
    assert_eq!(s.stats.get("free_memory"), Some(77));
    assert_eq!(s.counters.malformed_chains, 3);
    assert!(!needs_reset(&mut d));
}
