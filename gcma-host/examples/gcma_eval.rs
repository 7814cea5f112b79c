//! The GCMA paper's evaluation (LKML RFC v2, 2015), reproduced against our pool.
//!
//! `cargo run --release -p gcma-host --example gcma_eval`
//!
//! A 256 MiB pool is filled with cleancache and write-through frontswap pages; a background thread
//! keeps putting and getting (standing in for the paper's background kernel build); in the
//! foreground, contiguous grants of 1 … 32000 pages are taken 32 times per size (each freed after).
//! For each size it prints min/avg/max µs for: this pool; the physical limit measured in the same
//! run (memset of the same number of bytes in an equally prepared memfd mapping); and a CMA-style
//! baseline (the same range held by first-class movable data that must be migrated — each page
//! copied to a freshly taken page elsewhere and its owner's map updated — and then zeroed). The
//! paper's CMA and GCMA averages are printed beside ours, labelled as different hardware.
//!
//! The CMA-style baseline is a lower bound on real CMA: it has no page-table walks, no TLB
//! shootdowns, no pinned pages to retry, and never waits for writeback.
//!
//! The background's throughput is measured in alternating 200 ms windows: alone, during
//! back-to-back grants (the `RESULT`: the worst case, a grant always in progress), during grants
//! at a 10% duty cycle, and during memsets of the same sizes (what zeroing alone costs it).
//!
//! Zeroing ahead of time: first, with no background, the whole pool is dirtied and the background
//! zeroer (default share, 25% of one core) left to finish; then the largest grant is timed against
//! a memset of the same bytes (`RESULT grant_prezeroed_over_memset`). The zeroer keeps running
//! through the latency phase (the pool-full case, `RESULT grant_32000_full_over_memset`). Last,
//! its cost to the background: a grant of the largest size is taken and freed (leaving that many
//! dirty free pages), then the background's throughput is measured with the zeroer on until no
//! dirty page is left, and for as long again with it off after the same preparation
//! (`RESULT zeroer_tenant_slowdown_pct`).
//!
//! Environment: `GCMA_EVAL_REPS` (default 32) and `GCMA_EVAL_BG_SECS` (default 3, the length of
//! the alternating-window phase) shorten or lengthen a run. Ends with the `RESULT` lines.
//!
//! This machine is shared: other load shows up as outliers in max and average. The table also
//! gives the ratio of medians, which such outliers barely move.

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gcma_host::api::{
    CleancacheKey, ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PAGE_SIZE,
};
use gcma_host::pool::{Pool, PoolConfig, Zeroer, ZeroerConfig};

const POOL_PAGES: u64 = 65536; // 256 MiB
const SIZES: [u64; 8] = [1, 512, 1024, 2048, 4096, 8192, 16384, 32000];
/// The paper's averages (µs), ARMv7 4×1 GHz: (pages, CMA, GCMA).
const PAPER: [(u64, u64, u64); 6] = [
    (1, 684, 26),
    (512, 1_162, 2_002),
    (1024, 12_303, 3_495),
    (4096, 298_640, 13_091),
    (16384, 657_603, 30_474),
    (32000, 641_340, 44_675),
];
/// Keys the background thread cycles through: more than the pool holds, so it keeps evicting.
const BG_CC_KEYS: u64 = 48_000;
const BG_FS_KEYS: u64 = 24_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A prefaulted shared memfd mapping, prepared exactly like the pool's memory.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(nr_pages: u64) -> Region {
        let len = nr_pages as usize * PAGE_SIZE;
        // SAFETY: plain syscalls creating and mapping a fresh memfd; the fd is closed after
        // mapping (the mapping keeps the memory).
        unsafe {
            let fd = libc::memfd_create(c"gcma-eval".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0, "ftruncate");
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            libc::close(fd);
            let p = p.cast::<u8>();
            std::ptr::write_bytes(p, 0x5a, len);
            Region { ptr: p, len }
        }
    }

    fn page(&self, i: u64) -> *mut u8 {
        assert!((i as usize + 1) * PAGE_SIZE <= self.len);
        // SAFETY: checked to be inside the mapping.
        unsafe { self.ptr.add(i as usize * PAGE_SIZE) }
    }

    fn memset(&self, first: u64, nr: u64, byte: u8) {
        assert!(((first + nr) as usize) * PAGE_SIZE <= self.len);
        // SAFETY: inside the mapping, owned by this thread.
        unsafe { std::ptr::write_bytes(self.page(first), byte, nr as usize * PAGE_SIZE) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A second mapping of the pool's memfd, as a VMM would have; used only on granted pages.
struct PoolView {
    ptr: *mut u8,
    len: usize,
}

impl PoolView {
    fn new(pool: &Pool) -> PoolView {
        let len = pool.nr_pages() as usize * PAGE_SIZE;
        // SAFETY: a fresh shared mapping of the pool's memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool.memfd().as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the pool memfd");
        PoolView { ptr: p.cast(), len }
    }

    fn fill(&self, first: u64, nr: u64, byte: u8) {
        let (off, len) = (first as usize * PAGE_SIZE, nr as usize * PAGE_SIZE);
        assert!(off + len <= self.len);
        // SAFETY: inside the mapping; callers pass a grant they hold.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), byte, len) };
    }
}

impl Drop for PoolView {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// CMA-style baseline: `movable` holds first-class data owned through `owner_map` (page → where
/// its data lives); a contiguous request migrates each page of the range to a page taken from a
/// free list in `spare`, updates the owner's map, then zeroes the range.
struct CmaBaseline {
    movable: Region,
    spare: Region,
    spare_free: Vec<u32>,
    owner_map: Vec<u32>,
}

impl CmaBaseline {
    fn new(nr_pages: u64) -> Self {
        CmaBaseline {
            movable: Region::new(nr_pages),
            spare: Region::new(nr_pages),
            spare_free: (0..nr_pages as u32).rev().collect(),
            owner_map: vec![u32::MAX; nr_pages as usize],
        }
    }

    fn alloc(&mut self, nr: u64) {
        for p in 0..nr {
            let dst = self.spare_free.pop().expect("spare page");
            // SAFETY: two distinct pages inside our two mappings.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.movable.page(p),
                    self.spare.page(dst as u64),
                    PAGE_SIZE,
                )
            };
            self.owner_map[p as usize] = dst;
        }
        self.movable.memset(0, nr, 0);
    }

    /// Untimed: the range is taken by movable data again, the spare pages are returned.
    fn reset(&mut self, nr: u64) {
        for p in 0..nr {
            let d = std::mem::replace(&mut self.owner_map[p as usize], u32::MAX);
            self.spare_free.push(d);
        }
        self.movable.memset(0, nr, 0x5a);
    }
}

#[derive(Default, Clone)]
struct Lat {
    min: f64,
    sum: f64,
    max: f64,
    n: u32,
    samples: Vec<f64>,
}

impl Lat {
    fn add(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        if self.n == 0 || us < self.min {
            self.min = us;
        }
        self.max = self.max.max(us);
        self.sum += us;
        self.n += 1;
        self.samples.push(us);
    }
    fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    fn avg(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
}

fn page_data(tag: u64) -> Vec<u8> {
    let mut p = vec![(tag % 251) as u8; PAGE_SIZE];
    p[..8].copy_from_slice(&tag.to_le_bytes());
    p
}

fn fill(pool: &Pool, c: ClientId, cc_pool: u32) {
    // Half cleancache, half write-through frontswap, interleaved across the pool.
    for i in 0..POOL_PAGES / 2 {
        let key = CleancacheKey {
            pool: cc_pool,
            object: [i / 64, 0, 0],
            index: (i % 64) as u32,
        };
        pool.cleancache_put(c, key, &page_data(i))
            .expect("fill put");
        let key = FrontswapKey { area: 0, offset: i };
        pool.frontswap_store(c, key, &page_data(i))
            .expect("fill store");
    }
}

/// The background tenant: cleancache put+get and frontswap store+load over key spaces larger
/// than the pool, checking every hit. Counts iterations.
fn background(
    pool: Arc<Pool>,
    c: ClientId,
    cc_pool: u32,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = vec![0u8; PAGE_SIZE];
    let mut version = vec![0u8; BG_FS_KEYS as usize];
    while !stop.load(Ordering::Relaxed) {
        let i = rng.next() % BG_CC_KEYS;
        let key = CleancacheKey {
            pool: cc_pool,
            object: [i / 64, 1, 0],
            index: (i % 64) as u32,
        };
        let data = page_data(i);
        pool.cleancache_put(c, key, &data).expect("bg put");
        let j = rng.next() % BG_CC_KEYS;
        let key = CleancacheKey {
            pool: cc_pool,
            object: [j / 64, 1, 0],
            index: (j % 64) as u32,
        };
        if pool.cleancache_get(c, key, &mut out).expect("bg get") {
            assert_eq!(out, page_data(j), "cleancache returned wrong data");
        }
        let k = rng.next() % BG_FS_KEYS;
        let v = version[k as usize].wrapping_add(1);
        let key = FrontswapKey { area: 1, offset: k };
        let tag = k << 8 | v as u64;
        if pool.frontswap_store(c, key, &page_data(tag)).is_ok() {
            version[k as usize] = v;
        } else {
            version[k as usize] = 0;
        }
        let l = rng.next() % BG_FS_KEYS;
        let key = FrontswapKey { area: 1, offset: l };
        let hit = pool.frontswap_load(c, key, &mut out).expect("bg load");
        assert_eq!(hit, version[l as usize] != 0, "frontswap lost a page");
        if hit {
            assert_eq!(out, page_data(l << 8 | version[l as usize] as u64));
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until the pool has no dirty free page (the zeroer has finished).
fn wait_zeroed(pool: &Pool) {
    while pool.stats().free_dirty_pages != 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let reps = env_or("GCMA_EVAL_REPS", 32) as u32;
    let bg_secs = env_or("GCMA_EVAL_BG_SECS", 3);
    let mut cfg = PoolConfig::new(POOL_PAGES);
    cfg.frontswap_policy = FrontswapPolicy::WriteThrough;
    let pool = Pool::new(cfg).expect("pool");
    let bg_client = pool.register_client("background");
    let fg_client = pool.register_client("foreground");
    let cc_pool = pool.cleancache_new_pool(bg_client).unwrap();
    let t = Instant::now();
    fill(&pool, bg_client, cc_pool);
    let s = pool.stats();
    println!(
        "pool: {} MiB, filled in {:.2} s: {} cleancache + {} frontswap (write-through) pages, {} free",
        (POOL_PAGES * PAGE_SIZE as u64) >> 20,
        t.elapsed().as_secs_f64(),
        s.cleancache_pages,
        s.frontswap_pages,
        s.free_zero_pages + s.free_dirty_pages
    );

    let largest = *SIZES.iter().max().unwrap();
    let memset_region = Region::new(largest);
    let mut cma = CmaBaseline::new(largest);

    // Zeroing ahead of time, no background: dirty the whole pool, let the zeroer finish, then
    // the largest grant against a memset of the same bytes (both dirtied in between).
    let pool_view = PoolView::new(&pool);
    let prezeroed = {
        let s0 = pool.stats();
        let g = pool
            .alloc_contig(fg_client, POOL_PAGES, 1)
            .expect("whole-pool grant");
        pool_view.fill(g.first_page, g.nr_pages, 0x5a);
        pool.free_contig(fg_client, g.first_page).expect("free");
        let zeroer = Zeroer::start(&pool, ZeroerConfig::default()).expect("zeroer");
        let (t, busy0) = (Instant::now(), pool.stats().zeroer_busy_ns);
        wait_zeroed(&pool);
        let (wall, busy) = (
            t.elapsed().as_secs_f64(),
            (pool.stats().zeroer_busy_ns - busy0) as f64 / 1e9,
        );
        println!(
            "zeroer (default share): {POOL_PAGES} dirty pages zeroed in {wall:.2} s, busy {busy:.3} s ({:.1}% of one core), {:.1} GiB/s while busy",
            busy / wall * 100.0,
            (POOL_PAGES * PAGE_SIZE as u64) as f64 / busy / (1u64 << 30) as f64
        );
        let (mut grant, mut memset) = (Lat::default(), Lat::default());
        for r in 0..8u8 {
            memset_region.memset(0, largest, r | 1);
            let before = pool.stats().zeroed_pages;
            let t = Instant::now();
            let g = pool.alloc_contig(fg_client, largest, 1).expect("grant");
            grant.add(t.elapsed());
            assert_eq!(
                pool.stats().zeroed_pages,
                before,
                "a prezeroed grant zeroed pages"
            );
            pool_view.fill(g.first_page, g.nr_pages, r | 1);
            pool.free_contig(fg_client, g.first_page).expect("free");
            let t = Instant::now();
            memset_region.memset(0, largest, 0);
            memset.add(t.elapsed());
            wait_zeroed(&pool);
        }
        drop(zeroer);
        let s1 = pool.stats();
        println!(
            "prezeroed pool, {largest} pages x8: grant min/avg {:.0}/{:.0} µs, memset min/avg {:.0}/{:.0} µs; ratio of averages {:.3}, of medians {:.3} ({} pages zeroed ahead)",
            grant.min,
            grant.avg(),
            memset.min,
            memset.avg(),
            grant.avg() / memset.avg(),
            grant.median() / memset.median(),
            s1.idle_zeroed_pages - s0.idle_zeroed_pages
        );
        grant.avg() / memset.avg()
    };
    // Refill what the whole-pool grant evicted, and keep the zeroer on from here (as `vmm` and
    // `gcma-hostd` run by default) until the tenant-cost phase.
    fill(&pool, bg_client, cc_pool);
    let zeroer = Zeroer::start(&pool, ZeroerConfig::default()).expect("zeroer");

    // Phase 0: no background, the largest grant against memset, to show the intrinsic cost.
    let before = pool.stats();
    let (mut quiet_grant, mut quiet_memset, mut quiet_own) =
        (Lat::default(), Lat::default(), Lat::default());
    for r in 0..8u8 {
        let t = Instant::now();
        let g = pool.alloc_contig(fg_client, largest, 1).expect("grant");
        quiet_grant.add(t.elapsed());
        // The same pages, memset directly while we hold the grant: the pool memory's own speed.
        pool_view.fill(g.first_page, g.nr_pages, r | 1);
        let t = Instant::now();
        pool_view.fill(g.first_page, g.nr_pages, 0);
        quiet_own.add(t.elapsed());
        pool.free_contig(fg_client, g.first_page).expect("free");
        let t = Instant::now();
        memset_region.memset(0, largest, 0);
        quiet_memset.add(t.elapsed());
        memset_region.memset(0, largest, r | 1);
    }
    let quiet = pool.stats();
    println!(
        "quiet (no background), {largest} pages x8: grant min/avg {:.0}/{:.0} µs (lock held {:.0} µs avg, \
         zeroing unlocked {:.0} µs avg), memset min/avg {:.0}/{:.0} µs, memset of the granted \
         pages themselves min/avg {:.0}/{:.0} µs",
        quiet_grant.min,
        quiet_grant.avg(),
        (quiet.grant_locked_ns - before.grant_locked_ns) as f64 / 8e3,
        (quiet.grant_zero_unlocked_ns - before.grant_zero_unlocked_ns) as f64 / 8e3,
        quiet_memset.min,
        quiet_memset.avg(),
        quiet_own.min,
        quiet_own.avg()
    );
    // Refill what the quiet grants evicted.
    fill(&pool, bg_client, cc_pool);

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let bg = {
        let (pool, stop, ops) = (pool.clone(), stop.clone(), ops.clone());
        std::thread::spawn(move || background(pool, bg_client, cc_pool, stop, ops))
    };
    let rate = |f: &mut dyn FnMut()| {
        let (o, t) = (ops.load(Ordering::Relaxed), Instant::now());
        f();
        let secs = t.elapsed().as_secs_f64();
        ((ops.load(Ordering::Relaxed) - o) as f64 / secs, secs)
    };

    std::thread::sleep(Duration::from_millis(300));

    // Phase 2: latencies, background running. Grant, memset and CMA-style are interleaved per
    // repetition so that all three see the same machine noise.
    let mut grant: [Lat; SIZES.len()] = Default::default();
    let mut memset: [Lat; SIZES.len()] = Default::default();
    let mut cma_lat: [Lat; SIZES.len()] = Default::default();
    let mut own: [Lat; SIZES.len()] = Default::default();
    for (si, &n) in SIZES.iter().enumerate() {
        for r in 0..reps {
            // Dirty the memset region first, so that by its turn it is as far out of the caches
            // as the pages a grant zeroes (grant and CMA-style run in between).
            memset_region.memset(0, n, r as u8 | 1);
            let t = Instant::now();
            let g = pool.alloc_contig(fg_client, n, 1).expect("grant");
            grant[si].add(t.elapsed());
            // The very pages just granted, memset again while we hold them.
            let t = Instant::now();
            pool_view.fill(g.first_page, g.nr_pages, 0);
            own[si].add(t.elapsed());
            pool.free_contig(fg_client, g.first_page).expect("free");
            let t = Instant::now();
            cma.alloc(n);
            cma_lat[si].add(t.elapsed());
            cma.reset(n);
            let t = Instant::now();
            memset_region.memset(0, n, 0);
            memset[si].add(t.elapsed());
            black_box(memset_region.page(0));
        }
    }

    drop(zeroer);

    // Phase 3: background throughput alone, while grants run back to back (the RESULT), and
    // while the same bytes are only memset (what zeroing alone costs the background). The three
    // kinds of window alternate, so that other load on the machine hits them alike.
    let window = Duration::from_millis(200);
    let rounds = (bg_secs * 1000 / 800).max(1);
    let (mut alone, mut with, mut with_memset, mut with_duty) =
        ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
    let add = |acc: &mut (f64, f64), (r, secs): (f64, f64)| {
        acc.0 += r * secs;
        acc.1 += secs;
    };
    let s3 = pool.stats();
    let mut next = 0usize;
    for _ in 0..rounds {
        add(&mut alone, rate(&mut || std::thread::sleep(window)));
        add(
            &mut with,
            rate(&mut || {
                let t = Instant::now();
                while t.elapsed() < window {
                    let n = SIZES[next % SIZES.len()];
                    next += 1;
                    let g = pool.alloc_contig(fg_client, n, 1).expect("grant");
                    pool.free_contig(fg_client, g.first_page).expect("free");
                }
            }),
        );
        // Grants at a 10% duty cycle: each grant is followed by nine times its duration idle.
        add(
            &mut with_duty,
            rate(&mut || {
                let t = Instant::now();
                while t.elapsed() < window {
                    let n = SIZES[next % SIZES.len()];
                    next += 1;
                    let t1 = Instant::now();
                    let g = pool.alloc_contig(fg_client, n, 1).expect("grant");
                    pool.free_contig(fg_client, g.first_page).expect("free");
                    std::thread::sleep(t1.elapsed() * 9);
                }
            }),
        );
        let mut k = 0usize;
        add(
            &mut with_memset,
            rate(&mut || {
                let t = Instant::now();
                while t.elapsed() < window {
                    let n = SIZES[k % SIZES.len()];
                    k += 1;
                    memset_region.memset(0, n, k as u8);
                    black_box(memset_region.page(0));
                }
            }),
        );
    }
    let s4 = pool.stats();
    let (bg_alone, bg_with, bg_memset, bg_duty) = (
        alone.0 / alone.1,
        with.0 / with.1,
        with_memset.0 / with_memset.1,
        with_duty.0 / with_duty.1,
    );
    let (grant_secs, memset_secs) = (with.1, with_memset.1);

    // Phase 4: the zeroer's cost to the background. Each round leaves `largest` dirty free pages
    // (a grant taken and freed), then measures the background with the zeroer on until no dirty
    // page is left (at least 20 ms, at most 500 ms), then prepares the same way and measures it
    // for as long with the zeroer off. Both windows poll the pool's stats alike.
    let (mut z_on, mut z_off) = ((0.0, 0.0), (0.0, 0.0));
    let (z0, mut z_rounds) = (pool.stats(), 0);
    let dirty = || {
        let g = pool.alloc_contig(fg_client, largest, 1).expect("grant");
        pool.free_contig(fg_client, g.first_page).expect("free");
    };
    let watch = |until_clean: bool, d: Duration| {
        let t = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let clean = pool.stats().free_dirty_pages == 0;
            let e = t.elapsed();
            if (until_clean && clean && e >= Duration::from_millis(20))
                || e >= d.max(Duration::from_millis(20))
            {
                break;
            }
        }
    };
    while z_on.1 < bg_secs as f64 && z_rounds < 200 {
        dirty();
        let zeroer = Zeroer::start(&pool, ZeroerConfig::default()).expect("zeroer");
        let r = rate(&mut || watch(true, Duration::from_millis(500)));
        drop(zeroer);
        add(&mut z_on, r);
        dirty();
        add(
            &mut z_off,
            rate(&mut || watch(false, Duration::from_secs_f64(r.1))),
        );
        z_rounds += 1;
    }
    let z1 = pool.stats();
    let (bg_zon, bg_zoff) = (z_on.0 / z_on.1, z_off.0 / z_off.1);
    let zeroer_slowdown = (1.0 - bg_zon / bg_zoff) * 100.0;
    stop.store(true, Ordering::Relaxed);
    bg.join().expect("background thread");
    if let Err(e) = pool.check_consistency() {
        panic!("pool inconsistent after the run: {e}");
    }
    let st = pool.stats();

    println!();
    println!(
        "same pgs: avg µs of memset of the very pages just granted, while held (the pool memory's \
         own speed at that moment)"
    );
    println!(
        "Contiguous grant latency, µs (min / avg / max), {reps} per size, background running, \
         load average {}",
        loadavg()
    );
    println!(
        "{:>6} | {:>26} | {:>26} | {:>9} | {:>26} | {:>7} | {:>7} | {:>8} | {:>8} | paper (other hw): CMA / GCMA avg",
        "pages", "this pool", "memset (physical limit)", "same pgs", "CMA-style (migrate+zero)", "avg/ms", "med/ms", "avg/same", "cma/pool"
    );
    let mut worst_over_memset = 0f64;
    let mut worst_max_over_avg = 0f64;
    for (si, &n) in SIZES.iter().enumerate() {
        let (g, m, c, o) = (&grant[si], &memset[si], &cma_lat[si], &own[si]);
        let over = g.avg() / m.avg();
        worst_over_memset = worst_over_memset.max(over);
        worst_max_over_avg = worst_max_over_avg.max(g.max / g.avg());
        let paper = PAPER
            .iter()
            .find(|p| p.0 == n)
            .map_or("-".to_string(), |p| format!("{} / {}", p.1, p.2));
        println!(
            "{n:>6} | {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} | {:>9.1} | {:>8.1} {:>8.1} {:>8.1} | {:>6.2}x | {:>6.2}x | {:>7.2}x | {:>7.2}x | {paper}",
            g.min, g.avg(), g.max, m.min, m.avg(), m.max, o.avg(), c.min, c.avg(), c.max, over,
            g.median() / m.median(), g.avg() / o.avg(), c.avg() / g.avg()
        );
    }
    let slowdown = (1.0 - bg_with / bg_alone) * 100.0;
    let slowdown_memset = (1.0 - bg_memset / bg_alone) * 100.0;
    let slowdown_duty = (1.0 - bg_duty / bg_alone) * 100.0;
    println!();
    println!(
        "background tenant (cleancache put+get + frontswap store+load per iteration): {bg_alone:.0} it/s alone; \
         {bg_with:.0} it/s during back-to-back grants ({grant_secs:.2} s, slowdown {slowdown:.1}%); \
         {bg_memset:.0} it/s during memset of the same bytes ({memset_secs:.2} s, slowdown {slowdown_memset:.1}%)"
    );
    println!(
        "background with grants at a 10% duty cycle (each grant followed by 9x its time idle; the \
         paper's allocations took far less of its build's time): {bg_duty:.0} it/s, slowdown \
         {slowdown_duty:.1}%"
    );
    println!(
        "grant time split over the background phase's grants (both kinds of window): waiting for \
         the lock {:.0} ms, lock held (choosing, evicting, small zeroing) {:.0} ms, zeroing with \
         the lock released {:.0} ms; {:.0} ms of back-to-back grant windows",
        (s4.grant_lock_wait_ns - s3.grant_lock_wait_ns) as f64 / 1e6,
        (s4.grant_locked_ns - s3.grant_locked_ns) as f64 / 1e6,
        (s4.grant_zero_unlocked_ns - s3.grant_zero_unlocked_ns) as f64 / 1e6,
        grant_secs * 1e3
    );
    println!(
        "pool counters: {} grants, {} pages zeroed, evicted for grants {} cleancache + {} frontswap, \
         under pressure {} + {}, {} backing writes, {} loads from backing",
        st.grants,
        st.zeroed_pages,
        st.evictions_grant[0],
        st.evictions_grant[1],
        st.evictions_pressure[0],
        st.evictions_pressure[1],
        st.backing_writes,
        st.frontswap_loads_backing
    );
    println!(
        "background with the zeroer (default share) on: {bg_zon:.0} it/s over {:.2} s; off: {bg_zoff:.0} it/s over {:.2} s ({z_rounds} rounds of {largest} freed pages); slowdown {zeroer_slowdown:.1}%; meanwhile it zeroed {} pages, busy {:.3} s ({:.1}% of the on time)",
        z_on.1,
        z_off.1,
        z1.idle_zeroed_pages - z0.idle_zeroed_pages,
        (z1.zeroer_busy_ns - z0.zeroer_busy_ns) as f64 / 1e9,
        (z1.zeroer_busy_ns - z0.zeroer_busy_ns) as f64 / 1e9 / z_on.1 * 100.0
    );
    let i32k = SIZES.iter().position(|&s| s == 32000).unwrap();
    println!("RESULT grant_avg_over_memset_max={worst_over_memset:.2}");
    println!("RESULT grant_32000_avg_us={:.0}", grant[i32k].avg());
    println!("RESULT grant_max_over_avg_max={worst_max_over_avg:.2}");
    println!("RESULT background_slowdown_pct={slowdown:.1}");
    println!("RESULT grant_prezeroed_over_memset={prezeroed:.3}");
    println!(
        "RESULT grant_32000_full_over_memset={:.2}",
        grant[i32k].avg() / memset[i32k].avg()
    );
    println!("RESULT zeroer_tenant_slowdown_pct={zeroer_slowdown:.1}");
}
