//! The write-back retry timer (`WritebackRetrier`) alone brings pages whose write-back failed
//! into the backing file once it works again: nobody calls `retry_writebacks` here.
//!
//! As in `write_back_retry.rs`, the failure is real (`RLIMIT_FSIZE` of this process set to zero,
//! `SIGXFSZ` ignored); one test in this binary, since the limit is process-wide.

use std::time::{Duration, Instant};

use gcma_host::api::{FrontswapKey, FrontswapPolicy, GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig, PoolStats, WritebackRetrier};

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

/// Waits until `done` holds; panics (with the last stats) after a generous deadline, which only
/// a timer that never retries reaches.
fn wait_for(p: &Pool, what: &str, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = p.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never happened: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_retry_timer_writes_failed_write_backs_once_the_file_works() {
    // SAFETY: ignoring SIGXFSZ makes writes past the file-size limit fail with EFBIG instead of
    // killing the process; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    const PAGES: u64 = 8;
    let mut cfg = PoolConfig::new(PAGES);
    cfg.frontswap_policy = FrontswapPolicy::WriteBack;
    let p = Pool::new(cfg).unwrap();
    let c = p.register_client("vm");
    for i in 0..PAGES {
        p.frontswap_store(
            c,
            FrontswapKey { area: 1, offset: i },
            &[i as u8 + 1; PAGE_SIZE],
        )
        .unwrap();
    }
    let retrier = WritebackRetrier::start(&p, Duration::from_millis(5)).unwrap();

    set_file_size_limit(0);
    let g = p.alloc_contig(c, PAGES, 1).unwrap();
    assert_eq!(p.stats().backing_write_errors, PAGES);
    // The timer retries while the file still fails: the retries fail and stay queued.
    let s = wait_for(&p, "a failed retry round", |s| s.writeback_retries >= PAGES);
    assert_eq!(s.written_back_pages, 0);
    assert_eq!(s.writebacks_waiting, PAGES);

    set_file_size_limit(libc::RLIM_INFINITY);
    let s = wait_for(&p, "every page written back by the timer", |s| {
        s.written_back_pages == PAGES
    });
    assert_eq!(s.frontswap_host_pages, 0);
    assert_eq!(s.writebacks_waiting, 0);
    drop(retrier);
    let mut out = [0u8; PAGE_SIZE];
    for i in 0..PAGES {
        assert!(p
            .frontswap_load(c, FrontswapKey { area: 1, offset: i }, &mut out)
            .unwrap());
        assert_eq!(out, [i as u8 + 1; PAGE_SIZE]);
    }
    p.free_contig(c, g.first_page).unwrap();
}
