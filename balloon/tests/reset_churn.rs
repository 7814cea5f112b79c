//! A guest that resets its virtio-gcma device in a loop (two register writes: `Status = 1`, then
//! `Status = 0`) costs the host nothing that grows: a million resets through the real virtio-mmio
//! registers, on a device bound to a real pool and grant window, leave the heap and the resident
//! set where they were and the pool with one client.
//!
//! One test in this binary: it counts every heap allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use balloon::gcma::proto::{Request, PAGE_SIZE, VIRTIO_GCMA_F_CONTIG};
use balloon::gcma::{GcmaDevice, GrantWindow, HostWindow, PoolMapping, WindowRange};
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{MmioTransport, STATUS_ACKNOWLEDGE};
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};

/// The system allocator, counting live bytes and allocation calls.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the
// counters have no effect on what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (the caller upholds `alloc`'s contract).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (the caller upholds `dealloc`'s contract).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (the caller upholds `realloc`'s contract).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let resident: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages in statm");
    resident * PAGE_SIZE as u64
}

const RESETS: u64 = 1_000_000;
const WINDOW_GPA: u64 = 1 << 32;
const WINDOW_BYTES: u64 = 64 << 20;

#[test]
fn a_million_resets_through_the_registers_grow_nothing() {
    let pool = Pool::new(PoolConfig::new(1024)).unwrap();
    let host = Arc::new(HostWindow::reserve(WINDOW_BYTES).unwrap());
    let mapper = Arc::new(PoolMapping::new(host, pool.memfd()).unwrap());
    let window = Arc::new(
        GrantWindow::new(
            WindowRange {
                gpa: WINDOW_GPA,
                len_bytes: WINDOW_BYTES,
            },
            pool.clone(),
            mapper,
        )
        .unwrap(),
    );
    let device = GcmaDevice::new(window, "churn");
    let mem = Arc::new(memfd_guest_memory(&[(0, 4 << 20)]).unwrap());
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(CountingIrq::default()));
    let mut driver = Driver::new(transport, mem, 0x1000..(4 << 20));

    // Once through the whole life of a device, holding a grant at the reset: the reset must give
    // it back.
    driver.init(VIRTIO_GCMA_F_CONTIG, 16).unwrap();
    let hdr = driver.alloc(64, 64).unwrap();
    let resp = driver.alloc(64, 64).unwrap();
    let req = Request::AllocContig {
        nr_pages: 8,
        align_pages: 1,
    };
    driver.write_mem(hdr, &req.encode()).unwrap();
    driver
        .add_chain(0, &[(hdr, 48, false), (resp, 24, true)])
        .unwrap();
    driver.kick(0);
    assert!(driver.pop_used(0).unwrap().is_some());
    assert_eq!(pool.stats().granted_pages, 8);
    driver.reset();
    assert_eq!(pool.stats().granted_pages, 0);

    let cycle = |driver: &mut Driver<MmioTransport<GcmaDevice>>| {
        driver.set_status(STATUS_ACKNOWLEDGE);
        driver.set_status(0);
    };
    // Warm up: let every lazily grown table reach its steady size.
    for _ in 0..10_000 {
        cycle(&mut driver);
    }
    let resets0 = driver.bus().counters().resets;
    let (rss0, live0, allocs0) = (
        rss_bytes(),
        LIVE_BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    );
    for _ in 0..RESETS {
        cycle(&mut driver);
    }
    let (rss1, live1, allocs1) = (
        rss_bytes(),
        LIVE_BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    );
    let grown_rss = rss1.saturating_sub(rss0);
    let grown_heap = live1 - live0;
    let allocs_per_reset = (allocs1 - allocs0) as f64 / RESETS as f64;
    println!(
        "{RESETS} resets: RSS {rss0} -> {rss1} bytes (+{grown_rss}), live heap {live0} -> {live1} \
         bytes ({grown_heap:+}), {allocs_per_reset:.2} allocations per reset"
    );
    assert!(
        grown_rss <= 1 << 20,
        "RSS grew by {grown_rss} bytes over {RESETS} resets"
    );
    assert!(
        grown_heap <= 4096,
        "live heap grew by {grown_heap} bytes over {RESETS} resets"
    );
    let s = pool.stats();
    assert_eq!(s.clients, 1, "one device, one pool client");
    assert_eq!(s.live_grants, 0);
    assert_eq!(driver.bus().counters().resets - resets0, RESETS);
    // What a reset still allocates, each freed again before the next: the device's list of queue
    // sizes (`VirtioDevice::queue_max_sizes`), and in the pool the new client's name and the
    // retired one's copy for its log line. Anything more is new per-reset work to look at.
    assert!(
        allocs1 - allocs0 <= 3 * RESETS + 1000,
        "{} allocations for {RESETS} resets",
        allocs1 - allocs0
    );
}
