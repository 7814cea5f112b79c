//! Under write-back, an evicted frontswap page whose backing-file write fails is kept in host
//! memory and written again later, with backoff, until it lands in the file: a backing file that
//! fails for a while neither loses pages nor leaves them in host memory for good.
//!
//! The failure is real: the file-size limit (`RLIMIT_FSIZE`) of this test process is set to zero,
//! so every write to the backing file fails with `EFBIG` (with `SIGXFSZ` ignored), then lifted.
//! One test in this binary, since the limit is process-wide.

#[path = "support/failing_backing.rs"]
mod failing_backing;

use failing_backing::{full_write_back_pool, key, page, set_file_size_limit, until};
use gcma_host::api::{GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolStats};

/// Calls `retry_writebacks` until `done` holds.
fn retry_until(p: &Pool, what: &str, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    until(
        p,
        what,
        |p| {
            p.retry_writebacks();
        },
        done,
    )
}

#[test]
fn failed_write_backs_are_retried_with_backoff_until_they_land() {
    const PAGES: u64 = 8;
    let (p, c) = full_write_back_pool(PAGES);

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
        assert_eq!(out, page(i));
    }
    p.free_contig(c, g.first_page).unwrap();
    p.check_consistency().unwrap();
}
