//! The background zeroer: a thread that zeroes dirty free pool pages while the pool is quiet, so
//! that a later grant finds them known-zero and only has to mark them granted.
//!
//! * **Bounded CPU share.** It works in slices of at most [`SLICE`], timing each one, and after
//!   a slice of busy time `b` sleeps `b × (100 − pct) / pct`, so its duty cycle stays at or below
//!   `pct` percent of one core ([`ZeroerConfig::cpu_pct`], default
//!   [`DEFAULT_ZEROER_CPU_PCT`]). Busy time is wall time, so time it was preempted counts against
//!   it too.
//! * **Stepping aside.** Before each batch it checks that no grant and no tenant waits for the
//!   pool lock and only then *tries* the lock (it never waits for it); holding it, it checks again
//!   before every page, so a grant or tenant that arrives waits for at most one 4 KiB page being
//!   zeroed. After stepping aside it pauses ([`ZeroerConfig::step_aside_pause`], default
//!   [`STEP_ASIDE_PAUSE`]), so a busy pool sees it rarely.
//! * **Idle CPU only.** The thread runs in the `SCHED_IDLE` scheduling class, so whatever else
//!   wants a core (the thread mapping a grant, a tenant's vCPU) preempts it.
//! * **Idle.** With nothing left to zero it polls every [`ZeroerConfig::idle_poll`] (one
//!   uncontended `try_lock`).
//! * **Stopping.** Dropping the [`Zeroer`] wakes the thread and joins it; the thread holds only a
//!   weak reference to the pool, so it also ends on its own when the pool is gone.
//!
//! Pages it zeroes count in `gcma_idle_zeroed_pages`, its busy time in
//! `gcma_zeroer_busy_seconds`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::Counters;
use super::{Pool, ZERO_IDLE_BATCH_PAGES};
use crate::api::PoolError;

/// Default CPU share of the zeroer, in percent of one core.
pub const DEFAULT_ZEROER_CPU_PCT: u32 = 25;

/// Longest stretch of work between two of the zeroer's pauses.
pub const SLICE: Duration = Duration::from_millis(1);

/// How long the zeroer keeps off after a grant or tenant wanted the lock.
pub const STEP_ASIDE_PAUSE: Duration = Duration::from_millis(2);

/// How to run a [`Zeroer`].
#[derive(Clone, Debug)]
pub struct ZeroerConfig {
    /// Most CPU time it may use, in percent of one core (1 ..= 100).
    pub cpu_pct: u32,
    /// How often it looks for work when there was none.
    pub idle_poll: Duration,
    /// How long it keeps off after a grant or tenant wanted the lock.
    pub step_aside_pause: Duration,
}

impl ZeroerConfig {
    /// A zeroer using at most `cpu_pct` percent of one core, polling every 10 ms when idle and
    /// keeping off for [`STEP_ASIDE_PAUSE`] after stepping aside.
    pub fn new(cpu_pct: u32) -> Self {
        ZeroerConfig {
            cpu_pct,
            idle_poll: Duration::from_millis(10),
            step_aside_pause: STEP_ASIDE_PAUSE,
        }
    }
}

impl Default for ZeroerConfig {
    fn default() -> Self {
        ZeroerConfig::new(DEFAULT_ZEROER_CPU_PCT)
    }
}

/// How one batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    /// Zeroed a whole batch; there may be more.
    Full,
    /// No dirty free page is left.
    Idle,
    /// A grant or tenant wanted the lock (before or during the batch).
    SteppedAside,
}

impl Pool {
    /// One batch of the zeroer: at most [`ZERO_IDLE_BATCH_PAGES`] pages, only if nobody waits
    /// for the lock and it is free.
    fn zero_idle_batch(&self) -> Batch {
        let waiting = || {
            self.grants_waiting.load(Ordering::Relaxed) != 0
                || self.lock_waiters.load(Ordering::Relaxed) != 0
        };
        if waiting() {
            return Batch::SteppedAside;
        }
        let mut g = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Batch::SteppedAside,
        };
        let (n, stepped) = self.zero_dirty_locked(&mut g, ZERO_IDLE_BATCH_PAGES, true);
        drop(g);
        Counters::add(&self.counters.idle_zeroed_pages, n);
        if stepped {
            Batch::SteppedAside
        } else if n < ZERO_IDLE_BATCH_PAGES {
            Batch::Idle
        } else {
            Batch::Full
        }
    }
}

/// A running background zeroer (see the [module documentation](self)). Dropping it stops the
/// thread and waits for it (at most one batch, a few microseconds, plus a wake-up).
///
/// ```
/// use gcma_host::api::GcmaBackend;
/// use gcma_host::pool::{Pool, PoolConfig, Zeroer, ZeroerConfig};
///
/// let pool = Pool::new(PoolConfig::new(64)).unwrap();
/// let vm = pool.register_client("vm0");
/// let g = pool.alloc_contig(vm, 64, 1).unwrap();
/// pool.free_contig(vm, g.first_page).unwrap(); // 64 dirty free pages
/// let zeroer = Zeroer::start(&pool, ZeroerConfig::new(50)).unwrap();
/// while pool.stats().free_dirty_pages != 0 {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// drop(zeroer);
/// assert_eq!(pool.stats().free_zero_pages, 64);
/// ```
#[derive(Debug)]
pub struct Zeroer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Zeroer {
    /// Starts the zeroer thread on `pool`. Fails on a CPU share outside 1 ..= 100 percent or when
    /// the thread cannot be created.
    pub fn start(pool: &Arc<Pool>, cfg: ZeroerConfig) -> Result<Zeroer, PoolError> {
        if !(1..=100).contains(&cfg.cpu_pct) {
            return Err(PoolError::Invalid(
                "zeroer CPU share must be 1 to 100 percent",
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(pool);
        let thread = std::thread::Builder::new()
            .name("gcma-zeroer".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    idle_class();
                    gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Zeroer);
                    run(weak, cfg, &stop)
                }
            })
            .map_err(|e| PoolError::io("starting the zeroer thread", e))?;
        log::debug!("gcma pool: zeroer started");
        Ok(Zeroer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Zeroer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("gcma pool: the zeroer thread panicked");
            }
        }
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only on CPU time nothing else
/// wants. Zeroing ahead is an optimisation; it must not take a core from the work it speeds up
/// (on a host with few cores the zeroer otherwise shares one with the thread mapping a grant or
/// a tenant's vCPU). The duty-cycle cap still bounds it on an idle host.
fn idle_class() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` on the calling thread (pid 0) with a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        log::debug!(
            "gcma pool: zeroer stays in the normal scheduling class: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sleeps for `d` unless `stop` is set meanwhile (the owner unparks the thread when it sets it).
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::park_timeout(until - now);
    }
}

fn run(pool: Weak<Pool>, cfg: ZeroerConfig, stop: &AtomicBool) {
    let pct = u64::from(cfg.cpu_pct);
    while !stop.load(Ordering::Relaxed) {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let t = Instant::now();
        let mut outcome = pool.zero_idle_batch();
        while outcome == Batch::Full && t.elapsed() < SLICE && !stop.load(Ordering::Relaxed) {
            outcome = pool.zero_idle_batch();
        }
        let busy = t.elapsed();
        Counters::add(&pool.counters.zeroer_busy_ns, busy.as_nanos() as u64);
        drop(pool);
        // The rest that holds the duty cycle at `pct`: busy / (busy + rest) = pct / 100.
        let rest = busy.saturating_mul((100 - pct) as u32) / pct as u32;
        let d = match outcome {
            Batch::Full => rest,
            Batch::SteppedAside => rest.max(cfg.step_aside_pause),
            Batch::Idle => rest.max(cfg.idle_poll),
        };
        pause(d, stop);
    }
}
