//! Cleancache put+get per 4 KiB page against `memcpy` of the same bytes.
//!
//! `cargo run --release -p gcma-host --example cleancache_bench`
//!
//! Each round puts a batch of pages (distinct keys, so every put takes a pool page) and gets them
//! all back (every get hits and frees its page). The baseline copies the same batch into an
//! equally prepared memfd mapping and back out, page by page, in the same order. Rounds alternate
//! so both see the same machine noise. Prints ns per page and bandwidth for both, and the ratio
//! (goal: pool bandwidth ≥ 0.5× memcpy; the RESULT line is the median of per-round ratios). A second table does the same with frontswap
//! (write-back policy, so a store is a pool copy and nothing else while the pool has room).

use std::hint::black_box;
use std::time::{Duration, Instant};

use gcma_host::api::{CleancacheKey, FrontswapKey, FrontswapPolicy, GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig};

const POOL_PAGES: u64 = 16384; // 64 MiB
const BATCH: u64 = 4096; // 16 MiB per round: larger than the caches
const ROUNDS: u32 = 40;

struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(nr_pages: u64) -> Region {
        let len = nr_pages as usize * PAGE_SIZE;
        // SAFETY: creating and mapping a fresh memfd; the mapping outlives the fd.
        unsafe {
            let fd = libc::memfd_create(c"cc-bench".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::close(fd);
            std::ptr::write_bytes(p.cast::<u8>(), 1, len);
            Region { ptr: p.cast(), len }
        }
    }

    fn page(&mut self, i: u64) -> &mut [u8] {
        assert!((i as usize + 1) * PAGE_SIZE <= self.len);
        // SAFETY: inside our mapping; `&mut self` makes the slice exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i as usize * PAGE_SIZE), PAGE_SIZE) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn report(name: &str, pool_t: Duration, base_t: Duration, pages: u64, median: f64) {
    let bytes = (pages * 2 * PAGE_SIZE as u64) as f64; // one copy in, one copy out
    let ns = |t: Duration| t.as_nanos() as f64 / pages as f64;
    let gbs = |t: Duration| bytes / t.as_secs_f64() / 1e9;
    let ratio = base_t.as_secs_f64() / pool_t.as_secs_f64();
    println!(
        "{name:<28} | {:>9.0} ns/page {:>6.2} GB/s | {:>9.0} ns/page {:>6.2} GB/s | {ratio:>6.2}x | {median:>12.2}x",
        ns(pool_t),
        gbs(pool_t),
        ns(base_t),
        gbs(base_t)
    );
}

fn main() {
    let mut cfg = PoolConfig::new(POOL_PAGES);
    cfg.frontswap_policy = FrontswapPolicy::WriteBack;
    let pool = Pool::new(cfg).expect("pool");
    let c = pool.register_client("bench");
    let ccp = pool.cleancache_new_pool(c).unwrap();
    // Source pages (the guest's) and destination pages for gets, like guest memory.
    let mut src = Region::new(BATCH);
    let mut dst = Region::new(BATCH);
    let mut base = Region::new(BATCH);
    for i in 0..BATCH {
        src.page(i).fill(i as u8 | 1);
    }
    let key = |i: u64| CleancacheKey {
        pool: ccp,
        object: [i / 128, 0, 0],
        index: (i % 128) as u32,
    };
    let (mut cc_t, mut fs_t, mut base_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut cc_ratios, mut fs_ratios) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS + 2 {
        let t = Instant::now();
        for i in 0..BATCH {
            assert!(pool.cleancache_put(c, key(i), src.page(i)).unwrap());
        }
        for i in 0..BATCH {
            assert!(pool.cleancache_get(c, key(i), dst.page(i)).unwrap());
        }
        let e_cc = t.elapsed();
        assert_eq!(dst.page(BATCH - 1)[0], (BATCH - 1) as u8 | 1);

        let t = Instant::now();
        for i in 0..BATCH {
            let k = FrontswapKey { area: 0, offset: i };
            pool.frontswap_store(c, k, src.page(i)).unwrap();
        }
        for i in 0..BATCH {
            let k = FrontswapKey { area: 0, offset: i };
            assert!(pool.frontswap_load(c, k, dst.page(i)).unwrap());
        }
        let e_fs = t.elapsed();
        pool.frontswap_invalidate_area(c, 0).unwrap();

        let t = Instant::now();
        for i in 0..BATCH {
            let s = src.page(i).as_ptr();
            // SAFETY: distinct mappings, one page each.
            unsafe { std::ptr::copy_nonoverlapping(s, base.page(i).as_mut_ptr(), PAGE_SIZE) };
        }
        for i in 0..BATCH {
            let s = base.page(i).as_ptr();
            // SAFETY: distinct mappings, one page each.
            unsafe { std::ptr::copy_nonoverlapping(s, dst.page(i).as_mut_ptr(), PAGE_SIZE) };
        }
        black_box(dst.page(0)[0]);
        let e_base = t.elapsed();
        if round >= 2 {
            // The first two rounds warm up.
            cc_t += e_cc;
            fs_t += e_fs;
            base_t += e_base;
            cc_ratios.push(e_base.as_secs_f64() / e_cc.as_secs_f64());
            fs_ratios.push(e_base.as_secs_f64() / e_fs.as_secs_f64());
        }
    }
    pool.check_consistency().expect("consistent pool");
    let pages = BATCH * ROUNDS as u64;
    println!(
        "{:<28} | {:>27} | {:>27} | {:>7} | {:>13}",
        "4 KiB pages, 1 thread", "pool", "memcpy (same bytes)", "ratio", "median round"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cc_med = median(&mut cc_ratios);
    report("cleancache put + get", cc_t, base_t, pages, cc_med);
    let fs_med = median(&mut fs_ratios);
    report("frontswap store + load (WB)", fs_t, base_t, pages, fs_med);
    println!(
        "(ratio = memcpy time / pool time for the same bytes, over all rounds; the median of \
         per-round ratios is less sensitive to other load on the machine: load average {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("RESULT cleancache_put_get_over_memcpy={cc_med:.2}");
}
