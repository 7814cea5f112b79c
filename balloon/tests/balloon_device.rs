//! virtio-balloon through the virtio-mmio transport, driven only by the guest-driver harness.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use balloon::testing::{anon_guest_memory, memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::mmio::regs;
use balloon::transport::{
    GuestMemoryMmap, MmioTransport, INT_CONFIG_CHANGE, INT_USED_BUFFER, STATUS_DEVICE_NEEDS_RESET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use balloon::virtio_balloon::{
    Balloon, BalloonConfig, BalloonStatus, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_POISON_VAL,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_BALLOON_F_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_ID_BALLOON,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const ALL: u64 = VIRTIO_BALLOON_F_STATS_VQ
    | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    | VIRTIO_BALLOON_F_PAGE_POISON
    | VIRTIO_BALLOON_F_PAGE_REPORTING
    | VIRTIO_RING_F_EVENT_IDX;
const INFLATE: u16 = 0;
const DEFLATE: u16 = 1;
const MIB: u64 = 1 << 20;

type Shared = Arc<Mutex<MmioTransport<Balloon>>>;

struct Guest {
    d: Driver<Shared>,
    t: Shared,
    irq: Arc<CountingIrq>,
    /// Guest pages usable for ballooning: `[0, data_len)`; the driver's scratch sits above.
    data_len: u64,
}

fn guest_with(mem: GuestMemoryMmap, data_len: u64, scratch_len: u64) -> Guest {
    let mem = Arc::new(mem);
    let irq = Arc::new(CountingIrq::default());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        irq.clone(),
    )));
    let d = Driver::new(t.clone(), mem, data_len..data_len + scratch_len);
    Guest {
        d,
        t,
        irq,
        data_len,
    }
}

fn memfd_guest(data_len: u64) -> Guest {
    let scratch = 4 * MIB;
    let mem = memfd_guest_memory(&[(0, (data_len + scratch) as usize)]).unwrap();
    guest_with(mem, data_len, scratch)
}

impl Guest {
    fn status(&self) -> BalloonStatus {
        self.t.lock().unwrap().device().status()
    }

    /// Send `pfns` on `queue` in buffers of at most 256 PFNs, `batch` chains per kick, waiting for
    /// every buffer like the Linux driver does.
    fn send_pfns(&mut self, queue: u16, pfns: &[u32], bufs: &[u64]) {
        for group in pfns.chunks(256 * bufs.len()) {
            let mut n = 0;
            for (chunk, &buf) in group.chunks(256).zip(bufs) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
                self.d.write_mem(buf, &bytes).unwrap();
                self.d
                    .add_chain(queue, &[(buf, bytes.len() as u32, false)])
                    .unwrap();
                n += 1;
            }
            self.d.kick(queue);
            assert_eq!(self.d.drain_used(queue).unwrap().len(), n);
        }
    }

    fn pfn_bufs(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.d.alloc(1024, 4096).unwrap()).collect()
    }
}

/// Whether any byte of file range `[off, off + len)` holds data (not a hole).
fn has_data(file: &std::fs::File, off: u64, len: u64) -> bool {
    // SAFETY: plain lseek on a valid fd.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    r >= 0 && (r as u64) < off + len
}

fn backing_file(mem: &GuestMemoryMmap) -> std::fs::File {
    let r = mem.find_region(GuestAddress(0)).unwrap();
    r.file_offset().unwrap().file().try_clone().unwrap()
}

#[test]
fn negotiation_offers_and_numbers_queues_densely() {
    let mut g = memfd_guest(16 * MIB);
    assert_eq!(g.d.mmio_read(regs::DEVICE_ID), VIRTIO_ID_BALLOON);
    let offered = g.d.device_features();
    assert_eq!(offered & ALL, ALL);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);

    let f = g.d.init(ALL, 256).unwrap();
    assert_eq!(f, ALL | VIRTIO_F_VERSION_1);
    for q in 0..4 {
        assert_eq!(g.d.queue_max(q), 256, "queue {q}");
    }
    assert_eq!(g.d.queue_max(4), 0);
    assert!(g.status().activated);

    // Without STATS_VQ the reporting queue is queue 2 (Linux 6.x numbering).
    g.d.init(VIRTIO_BALLOON_F_PAGE_REPORTING, 64).unwrap();
    assert_eq!(g.d.queue_max(2), 256);
    assert_eq!(g.d.queue_max(3), 0);
    // Minimal driver: two queues.
    g.d.init(0, 64).unwrap();
    assert_eq!(g.d.queue_max(2), 0);
    assert_eq!(g.status().features, VIRTIO_F_VERSION_1);
}

#[test]
fn target_change_interrupts_and_actual_is_read_back() {
    let mut g = memfd_guest(16 * MIB);
    g.d.init(ALL, 64).unwrap();
    assert_eq!(g.d.config_read_u32(CONFIG_NUM_PAGES), 0);
    let gen0 = g.d.config_generation();
    let irqs = g.irq.count();
    g.t.lock()
        .unwrap()
        .device_mut()
        .set_target_pages(1024)
        .unwrap();
    assert_eq!(g.irq.count(), irqs + 1);
    assert_ne!(g.d.interrupt_status() & INT_CONFIG_CHANGE, 0);
    assert_ne!(g.d.config_generation(), gen0);
    assert_eq!(g.d.config_read_u32(CONFIG_NUM_PAGES), 1024);
    g.d.ack_interrupts(INT_CONFIG_CHANGE);
    // Same target: no interrupt.
    g.t.lock()
        .unwrap()
        .device_mut()
        .set_target_pages(1024)
        .unwrap();
    assert_eq!(g.irq.count(), irqs + 1);
    // The driver cannot write num_pages, but can write actual.
    g.d.config_write(CONFIG_NUM_PAGES, &7u32.to_le_bytes());
    g.d.config_write(CONFIG_ACTUAL, &512u32.to_le_bytes());
    assert_eq!(g.d.config_read_u32(CONFIG_NUM_PAGES), 1024);
    assert_eq!(g.d.config_read_u32(CONFIG_ACTUAL), 512);
    let s = g.status();
    assert_eq!((s.target_pages, s.actual_pages), (1024, 512));
}

#[test]
fn inflate_and_deflate_one_gib_returns_memory() {
    const GIB: u64 = 1 << 30;
    let mut g = memfd_guest(GIB);
    let file = backing_file(g.d.mem());
    g.d.init(ALL, 256).unwrap();
    // The guest touches one page in every 64 (16 MiB of real memory).
    for page in (0..GIB / 4096).step_by(64) {
        g.d.write_mem(page * 4096, &[0x5a; 64]).unwrap();
    }
    assert!(has_data(&file, 0, GIB));
    let bufs = g.pfn_bufs(64);
    // Interleave the order the way a fragmented guest would hand pages over.
    let pfns: Vec<u32> = (0..(GIB / 4096) as u32)
        .map(|i| (i % 2) * (1 << 17) + i / 2)
        .collect();
    g.send_pfns(INFLATE, &pfns, &bufs);
    let s = g.status();
    assert_eq!(s.inflated_pages, GIB / 4096);
    assert_eq!(s.counters.inflated_pfns, GIB / 4096);
    assert_eq!(s.counters.released_bytes, GIB);
    assert_eq!(s.counters.inflate_chains, GIB / 4096 / 256);
    assert_eq!(s.counters.release_errors, 0);
    assert!(!has_data(&file, 0, GIB), "inflated range still holds data");
    assert_eq!(g.d.read_mem(64 * 4096, 4).unwrap(), vec![0; 4]);
    // Inflating again is counted as duplicates and releases nothing more.
    g.send_pfns(INFLATE, &pfns[..512], &bufs);
    let s = g.status();
    assert_eq!(s.counters.duplicate_inflates, 512);
    assert_eq!(s.counters.released_bytes, GIB);

    g.send_pfns(DEFLATE, &pfns, &bufs);
    let s = g.status();
    assert_eq!(s.inflated_pages, 0);
    assert_eq!(s.counters.deflated_pfns, GIB / 4096);
    assert_eq!(s.counters.deflates_not_inflated, 0);
    // Deflated pages are usable again.
    g.d.write_mem(4096, b"back").unwrap();
    assert_eq!(g.d.read_mem(4096, 4).unwrap(), b"back");
    assert!(g.irq.count() > 0);
}

#[test]
fn a_driver_with_interrupts_off_gets_none_until_it_turns_them_on() {
    // Without EVENT_IDX the available ring's flags decide (virtio 1.2 §2.7.7.2): a polling driver
    // sets VIRTQ_AVAIL_F_NO_INTERRUPT and must not be interrupted per used buffer.
    let mut g = memfd_guest(16 * MIB);
    g.d.init(ALL & !VIRTIO_RING_F_EVENT_IDX, 16).unwrap();
    let avail = g.d.queue_layout(INFLATE).unwrap().avail;
    let bufs = g.pfn_bufs(1);
    let before = g.irq.count();
    g.d.write_mem(avail, &1u16.to_le_bytes()).unwrap();
    g.send_pfns(INFLATE, &[1, 2, 3], &bufs);
    g.send_pfns(INFLATE, &[4], &bufs);
    assert_eq!(g.irq.count(), before, "interrupted with NO_INTERRUPT set");
    assert_eq!(g.status().inflated_pages, 4);
    g.d.write_mem(avail, &0u16.to_le_bytes()).unwrap();
    g.send_pfns(INFLATE, &[5], &bufs);
    assert_eq!(g.irq.count(), before + 1);
}

#[test]
fn inflate_on_private_anonymous_memory_uses_dontneed() {
    let data = 8 * MIB;
    let mem = anon_guest_memory(&[(0, (data + 4 * MIB) as usize)]).unwrap();
    let mut g = guest_with(mem, data, 4 * MIB);
    g.d.init(0, 64).unwrap();
    g.d.write_mem(0x3000, &[0xee; 4096]).unwrap();
    let bufs = g.pfn_bufs(1);
    g.send_pfns(INFLATE, &[3], &bufs);
    assert_eq!(g.d.read_mem(0x3000, 8).unwrap(), vec![0; 8]);
    assert_eq!(g.status().counters.released_bytes, 4096);
}

#[test]
fn memory_in_two_regions_and_holes() {
    // Two regions with a hole between: PFNs in the hole are ignored and counted.
    let mem = memfd_guest_memory(&[(0, 4 << 20), (0x1_0000_0000, 8 << 20)]).unwrap();
    let mut g = guest_with(mem, 0, 4 * MIB);
    g.d.init(0, 64).unwrap();
    let bufs = g.pfn_bufs(1);
    let high = (0x1_0000_0000u64 / 4096) as u32;
    g.send_pfns(
        INFLATE,
        &[high, high + 1, 0x8000, u32::MAX, high + 2047, high + 2048],
        &bufs,
    );
    let s = g.status();
    assert_eq!(s.inflated_pages, 3);
    assert_eq!(s.counters.pfn_out_of_range, 3);
    let _ = g.data_len;
}

fn stats_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect()
}

#[test]
fn stats_buffer_is_held_and_returned_on_request() {
    let mut g = memfd_guest(16 * MIB);
    g.d.init(ALL, 64).unwrap();
    let stats_q = 2;
    let buf = g.d.alloc(4096, 4096).unwrap();
    let first = stats_entries(&[(4, 1000), (5, 4000), (15, 7), (99, 1)]);
    g.d.write_mem(buf, &first).unwrap();
    g.d.add_chain(stats_q, &[(buf, first.len() as u32, false)])
        .unwrap();
    g.d.kick(stats_q);
    assert!(
        g.d.pop_used(stats_q).unwrap().is_none(),
        "device keeps the buffer"
    );
    let s = g.status();
    assert!(s.stats_buffer_held);
    assert_eq!(s.stats.get("free_memory"), Some(1000));
    assert_eq!(s.stats.get("total_memory"), Some(4000));
    assert_eq!(
        s.stats.get("direct_reclaims"),
        Some(7),
        "Linux 6.12 tag 15 kept"
    );
    assert_eq!(s.stats.get("swap_in"), None);
    assert_eq!(s.counters.unknown_stat_tags, 1);
    assert_eq!(s.stats.generation, 1);

    // The VMM's polling interval fires: the buffer goes back, with an interrupt.
    g.d.ack_interrupts(INT_USED_BUFFER);
    let requested = g.t.lock().unwrap().device_mut().request_stats().unwrap();
    assert!(requested);
    assert_ne!(g.d.interrupt_status() & INT_USED_BUFFER, 0);
    assert!(g.d.pop_used(stats_q).unwrap().is_some());
    assert!(
        !g.t.lock().unwrap().device_mut().request_stats().unwrap(),
        "nothing held"
    );
    // The guest refills it.
    let second = stats_entries(&[(4, 900)]);
    g.d.write_mem(buf, &second).unwrap();
    g.d.add_chain(stats_q, &[(buf, second.len() as u32, false)])
        .unwrap();
    g.d.kick(stats_q);
    let s = g.status();
    assert_eq!(s.stats.get("free_memory"), Some(900));
    assert_eq!(s.stats.generation, 2);
    assert_eq!(s.counters.stats_requests, 1);
}

#[test]
fn free_page_reporting_releases_ranges_unless_poisoned() {
    let mut g = memfd_guest(16 * MIB);
    let file = backing_file(g.d.mem());
    g.d.init(ALL, 64).unwrap();
    let report_q = 3;
    g.d.write_mem(2 * MIB, &vec![1u8; 2 * MIB as usize])
        .unwrap();
    g.d.write_mem(6 * MIB, &vec![1u8; 2 * MIB as usize])
        .unwrap();
    assert!(has_data(&file, 2 * MIB, 2 * MIB));
    g.d.add_chain(report_q, &[(2 * MIB, 2 * MIB as u32, true)])
        .unwrap();
    g.d.kick(report_q);
    assert_eq!(g.d.drain_used(report_q).unwrap().len(), 1);
    assert!(!has_data(&file, 2 * MIB, 2 * MIB));
    let s = g.status();
    assert_eq!(s.counters.reported_bytes, 2 * MIB);
    assert_eq!(s.counters.released_bytes, 2 * MIB);

    // A guest that poisons free pages with a non-zero value keeps its pages.
    g.d.config_write(CONFIG_POISON_VAL, &0xaaaa_aaaau32.to_le_bytes());
    g.d.add_chain(report_q, &[(6 * MIB, 2 * MIB as u32, true)])
        .unwrap();
    g.d.kick(report_q);
    assert_eq!(g.d.drain_used(report_q).unwrap().len(), 1);
    assert!(has_data(&file, 6 * MIB, 2 * MIB));
    assert_eq!(g.status().counters.reports_kept_for_poison, 1);
}

#[test]
fn reset_empties_the_balloon_and_keeps_the_target() {
    let mut g = memfd_guest(16 * MIB);
    g.t.lock()
        .unwrap()
        .device_mut()
        .set_target_pages(10)
        .unwrap();
    g.d.init(0, 64).unwrap();
    let bufs = g.pfn_bufs(1);
    g.send_pfns(INFLATE, &[1, 2, 3], &bufs);
    assert_eq!(g.status().inflated_pages, 3);
    g.d.reset();
    let s = g.status();
    assert!(!s.activated);
    assert_eq!(s.inflated_pages, 0);
    assert_eq!(s.target_pages, 10);
    g.d.init(0, 64).unwrap();
    assert_eq!(g.d.config_read_u32(CONFIG_NUM_PAGES), 10);
    assert_eq!(g.d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn per_queue_reset_and_reenable() {
    use balloon::transport::VIRTIO_F_RING_RESET;
    let mut g = memfd_guest(16 * MIB);
    assert_ne!(g.d.device_features() & VIRTIO_F_RING_RESET, 0);
    g.d.init(ALL | VIRTIO_F_RING_RESET, 64).unwrap();
    let bufs = g.pfn_bufs(1);
    g.send_pfns(INFLATE, &[1], &bufs);
    // Hold a stats buffer, then reset the stats queue: the device drops it.
    let stats_q = 2;
    let sb = g.d.alloc(64, 8).unwrap();
    g.d.add_chain(stats_q, &[(sb, 10, false)]).unwrap();
    g.d.kick(stats_q);
    assert!(g.status().stats_buffer_held);
    assert_eq!(g.d.reset_queue(stats_q), 1);
    assert!(!g.status().stats_buffer_held);
    assert_eq!(g.d.mmio_read(regs::QUEUE_READY), 0);

    // Reset the inflate queue; a stale notification is ignored.
    assert_eq!(g.d.reset_queue(INFLATE), 1);
    g.d.kick(INFLATE);
    assert_eq!(g.d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // Deflate keeps running meanwhile.
    g.send_pfns(DEFLATE, &[1], &bufs);
    assert_eq!(g.status().inflated_pages, 0);
    // Re-enable on fresh rings: QueueReset reads 0 again and inflate works.
    g.d.setup_queue(INFLATE, 32).unwrap();
    assert_eq!(g.d.mmio_read(regs::QUEUE_RESET), 0);
    g.send_pfns(INFLATE, &[2, 3], &bufs);
    assert_eq!(g.status().inflated_pages, 2);
}

#[test]
fn queue_reset_without_the_feature_is_ignored() {
    let mut g = memfd_guest(16 * MIB);
    g.d.init(0, 64).unwrap();
    let before = g.t.lock().unwrap().counters().ignored_writes;
    assert_eq!(g.d.reset_queue(INFLATE), 0);
    assert_eq!(g.t.lock().unwrap().counters().ignored_writes, before + 1);
    assert_eq!(g.d.mmio_read(regs::QUEUE_READY), 1, "queue untouched");
}

#[test]
fn stats_buffer_kicked_before_driver_ok_is_picked_up() {
    // Linux's probe adds the first stats buffer and kicks before setting DRIVER_OK.
    let mut g = memfd_guest(16 * MIB);
    g.d.negotiate(VIRTIO_BALLOON_F_STATS_VQ).unwrap();
    for q in 0..3 {
        g.d.setup_queue(q, 64).unwrap();
    }
    let buf = g.d.alloc(64, 8).unwrap();
    let e = stats_entries(&[(6, 1234)]);
    g.d.write_mem(buf, &e).unwrap();
    g.d.add_chain(2, &[(buf, e.len() as u32, false)]).unwrap();
    g.d.kick(2);
    assert_eq!(g.t.lock().unwrap().counters().early_notifications, 1);
    assert_eq!(g.status().stats.generation, 0);
    g.d.driver_ok();
    let s = g.status();
    assert_eq!(s.stats.get("available_memory"), Some(1234));
    assert!(s.stats_buffer_held);
    assert_eq!(g.t.lock().unwrap().counters().ignored_writes, 0);
}
