//! Under write-back, an evicted frontswap page whose backing-file write fails is kept in host
//! memory and written again later, with backoff, until it lands in the file: a backing file that
//! fails for a while neither loses pages nor leaves them in host memory for good.
//!
//! The failure is real: the file-size limit (`RLIMIT_FSIZE`) of this test process is set to zero,
//! so every write to the backing file fails with `EFBIG` (with `SIGXFSZ` ignored), then lifted.
//! One test in this binary, since the limit is process-wide.

use std::time::{Duration, Instant};

use gcma_host::api::{FrontswapKey, FrontswapPolicy, GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig, PoolStats};

fn key(offset: u64) -> FrontswapKey {
    FrontswapKey { area: 1, offset }
}

fn set_file_size_limit(bytes: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) }, 0);
    lim.rlim_cur = bytes.min(lim.rlim_max);
    // SAFETY: `lim` is a valid rlimit; lowering or restoring the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
}

/// Calls `retry_writebacks` until `done` holds; panics (with the last stats) after a generous
/// deadline, which only a missing retry reaches.
fn retry_until(p: &Pool, what: &str, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.retry_writebacks();
        let s = p.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never happened: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn failed_write_backs_are_retried_with_backoff_until_they_land() {
    // SAFETY: ignoring SIGXFSZ makes writes past the file-size limit fail with EFBIG instead of
    // killing the process; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    const PAGES: u64 = 8;
    let mut cfg = PoolConfig::new(PAGES);
    cfg.frontswap_policy = FrontswapPolicy::WriteBack;
    let p = Pool::new(cfg).unwrap();
    let c = p.register_client("vm");
    for i in 0..PAGES {
        p.frontswap_store(c, key(i), &[i as u8 + 1; PAGE_SIZE])
            .unwrap();
    }

    set_file_size_limit(0);
    // A grant of the whole pool evicts every frontswap page; their write-backs fail.
    let g = p.alloc_contig(c, PAGES, 1).unwrap();
    let s = p.stats();
    assert_eq!(s.written_back_pages, 0);
    assert_eq!(s.backing_write_errors, PAGES);
    assert_eq!(s.frontswap_host_pages, PAGES, "kept in host memory");
    assert_eq!(
        s.writebacks_waiting, PAGES,
        "every failed page waits for a retry"
    );
    // While the file still fails, retries fail too and stay queued (each waiting longer).
    let s = retry_until(&p, "a second failed round", |s| {
        s.writeback_retries >= 2 * PAGES
    });
    assert_eq!(s.written_back_pages, 0);
    assert_eq!(s.writebacks_waiting, PAGES);
    assert_eq!(s.backing_write_errors, PAGES + s.writeback_retries);

    // The file works again: the next retries write every page, and host memory is given back.
    set_file_size_limit(libc::RLIM_INFINITY);
    let s = retry_until(&p, "every page written back", |s| {
        s.written_back_pages == PAGES
    });
    assert_eq!(s.frontswap_host_pages, 0);
    assert_eq!(s.frontswap_backing_only_pages, PAGES);
    assert_eq!(s.writebacks_waiting, 0);
    assert_eq!(p.retry_writebacks(), 0, "nothing left to retry");
    let mut out = [0u8; PAGE_SIZE];
    for i in 0..PAGES {
        assert!(p.frontswap_load(c, key(i), &mut out).unwrap());
        assert_eq!(out, [i as u8 + 1; PAGE_SIZE]);
    }
    p.free_contig(c, g.first_page).unwrap();
    p.check_consistency().unwrap();
}
