//! A write-back pool whose backing file really fails: `RLIMIT_FSIZE` of the test process set to
//! zero makes every write to it fail with `EFBIG` (with `SIGXFSZ` ignored), then lifted. The
//! limit is process-wide: one test per binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gcma_host::api::{ClientId, FrontswapKey, FrontswapPolicy, GcmaBackend, PAGE_SIZE};
use gcma_host::pool::{Pool, PoolConfig, PoolStats};

/// The frontswap key of page `offset` (area 1).
pub fn key(offset: u64) -> FrontswapKey {
    FrontswapKey { area: 1, offset }
}

/// The bytes page `i` was stored with.
pub fn page(i: u64) -> [u8; PAGE_SIZE] {
    [i as u8 + 1; PAGE_SIZE]
}

/// Sets the soft file-size limit of this process (at most the hard one).
pub fn set_file_size_limit(bytes: libc::rlim_t) {
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

/// A write-back pool of `pages` pages, full of one client's frontswap pages (`key(i)` holding
/// `page(i)`), with `SIGXFSZ` ignored so that a write past the file-size limit fails instead of
/// killing the process.
pub fn full_write_back_pool(pages: u64) -> (Arc<Pool>, ClientId) {
    // SAFETY: ignoring SIGXFSZ makes writes past the file-size limit fail with EFBIG instead of
    // killing the process; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut cfg = PoolConfig::new(pages);
    cfg.frontswap_policy = FrontswapPolicy::WriteBack;
    let p = Pool::new(cfg).unwrap();
    let c = p.register_client("vm");
    for i in 0..pages {
        p.frontswap_store(c, key(i), &page(i)).unwrap();
    }
    (p, c)
}

/// Runs `each` and reads the stats until `done` holds; panics (with the last stats) after a
/// generous deadline, which only a missing retry reaches.
pub fn until(
    p: &Pool,
    what: &str,
    each: impl Fn(&Pool),
    done: impl Fn(&PoolStats) -> bool,
) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        each(p);
        let s = p.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never happened: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
