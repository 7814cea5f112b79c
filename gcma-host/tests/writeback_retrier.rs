//! The write-back retry timer (`WritebackRetrier`) alone brings pages whose write-back failed
//! into the backing file once it works again: nobody calls `retry_writebacks` here.
//!
//! As in `write_back_retry.rs`, the failure is real (`RLIMIT_FSIZE` of this process set to zero,
//! `SIGXFSZ` ignored); one test in this binary, since the limit is process-wide.

#[path = "support/failing_backing.rs"]
mod failing_backing;

use std::time::Duration;

use failing_backing::{full_write_back_pool, key, page, set_file_size_limit, until};
use gcma_host::api::{GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolStats, WritebackRetrier};

/// Waits until `done` holds (nothing here retries but the timer).
fn wait_for(p: &Pool, what: &str, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    until(p, what, |_| {}, done)
}

#[test]
fn the_retry_timer_writes_failed_write_backs_once_the_file_works() {
    const PAGES: u64 = 8;
    let (p, c) = full_write_back_pool(PAGES);
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
        assert!(p.frontswap_load(c, key(i), &mut out).unwrap());
        assert_eq!(out, page(i));
    }
    p.free_contig(c, g.first_page).unwrap();
}
