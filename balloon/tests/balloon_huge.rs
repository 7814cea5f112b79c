//! The balloon on hugetlb guest RAM (a real `MFD_HUGETLB` memfd): a 2 MiB page goes back to the
//! host, in one punch, as soon as all 512 of its 4 KiB pieces are inflated, and not before; a
//! deflate of one piece takes the huge page back. Needs hugetlb pages reserved as `ci/setup.sh`
//! does; without them it prints `SKIPPED` (and fails under `CI=true`).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use balloon::testing::{huge_memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use gcma_host::huge::{self, HugePages, HUGE_PAGE_BYTES};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const PAGE: u64 = 4096;
const PER_HUGE: u32 = (HUGE_PAGE_BYTES / PAGE) as u32;

/// Bytes of host memory the guest RAM's memfd holds.
fn held(mem: &GuestMemoryMmap) -> u64 {
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let file = region.file_offset().unwrap().file();
    file.metadata().unwrap().blocks() * 512
}

fn send(d: &mut Driver<MmioTransport<Balloon>>, queue: u16, buf: u64, pfns: &[u32]) {
    for chunk in pfns.chunks(256) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
        d.write_mem(buf, &bytes).unwrap();
        d.add_chain(queue, &[(buf, bytes.len() as u32, false)])
            .unwrap();
        d.kick(queue);
        assert!(d.pop_used(queue).unwrap().is_some());
    }
}

#[test]
fn a_huge_page_goes_back_whole_once_every_piece_is_inflated() {
    let len = 4 * HUGE_PAGE_BYTES;
    if let Err(why) = huge::available(HugePages::Hugetlb, len) {
        e2e_tests::skip("balloon on hugetlb RAM", why);
        return;
    }
    let mem = Arc::new(huge_memfd_guest_memory(len as usize, HugePages::Hugetlb).unwrap());
    let irq = Arc::new(CountingIrq::default());
    let transport = MmioTransport::new(Balloon::new(BalloonConfig::default()), mem.clone(), irq);
    // Rings and buffers in the last huge page.
    let mut d = Driver::new(transport, mem.clone(), 3 * HUGE_PAGE_BYTES..len);
    d.init(0, 256).unwrap();
    let buf = d.alloc(1024, PAGE).unwrap();
    for hp in 0..3 {
        mem.write_slice(&[0xa5; 64], GuestAddress(hp * HUGE_PAGE_BYTES))
            .unwrap();
    }
    assert_eq!(held(&mem), len);

    // All but one piece of huge page 0, and half of huge page 1: nothing goes back.
    let mut pfns: Vec<u32> = (1..PER_HUGE).collect();
    pfns.extend(PER_HUGE..PER_HUGE + PER_HUGE / 2);
    send(&mut d, 0, buf, &pfns);
    let s = d.bus().device().status();
    assert_eq!(s.inflated_pages, pfns.len() as u64);
    assert_eq!(s.counters.released_bytes, 0);
    assert_eq!(held(&mem), len);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 0xa5);

    // The last piece of huge page 0: it goes, whole, in one release.
    send(&mut d, 0, buf, &[0]);
    let s = d.bus().device().status();
    assert_eq!(s.counters.released_bytes, HUGE_PAGE_BYTES);
    assert_eq!(s.counters.release_errors, 0);
    assert_eq!(held(&mem), len - HUGE_PAGE_BYTES);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(HUGE_PAGE_BYTES)).unwrap(),
        0xa5,
        "a partly inflated huge page keeps its data"
    );

    // Deflating one piece takes the huge page back (re-populated now, reads zero).
    send(&mut d, 1, buf, &[7]);
    let s = d.bus().device().status();
    assert_eq!(s.inflated_pages, PER_HUGE as u64 - 1 + PER_HUGE as u64 / 2);
    assert_eq!(s.counters.release_errors, 0);
    assert_eq!(held(&mem), len);
    mem.write_obj(0x5au8, GuestAddress(7 * PAGE)).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(7 * PAGE)).unwrap(), 0x5a);

    // The rest of huge page 1 in one buffer: one more huge page back.
    let rest: Vec<u32> = (PER_HUGE + PER_HUGE / 2..2 * PER_HUGE).collect();
    send(&mut d, 0, buf, &rest);
    let s = d.bus().device().status();
    assert_eq!(s.counters.released_bytes, 2 * HUGE_PAGE_BYTES);
    assert_eq!(held(&mem), len - HUGE_PAGE_BYTES);
}
