//! A rate limiter for log lines a guest can trigger at will.
//!
//! A guest decides how often a device sees a malformed chain, how often its driver sets `FAILED`,
//! how often its serial output fails: every such event may be worth a log line, but a guest that
//! repeats it in a loop must not flood the host's log (100,000 `FAILED` cycles took a fraction of
//! a second and wrote 100,000 lines before this limiter). Every line a guest can trigger goes
//! through one [`LogLimiter`] per VM (the pool, which serves many VMs, has its own for the host I/O
//! failures its clients' stores can provoke), with the [`guest_log!`](crate::guest_log) and
//! [`guest_warn!`](crate::guest_warn) macros.
//!
//! Lines are limited per *kind* (a short `&'static str` naming the message, such as
//! `"virtio_mmio_failed"`): at most [`LogLimit::lines_per_window`] lines of one kind per
//! [`LogLimit::window`] (10 per second by default). Lines over the limit are counted, never
//! formatted; the next line of that kind that is let through says how many were suppressed since
//! the previous one, and the per-kind totals are exported as a metric so that nothing is lost
//! from view. Windows are fixed (counted from the limiter's creation), so over any span of `t`
//! windows at most `lines_per_window * (t + 1)` lines of a kind are written.
//!
//! The limiter knows nothing about what it limits: no device, queue or VM type appears here, so
//! every crate of the workspace (`balloon`, `vmm`, the pool itself) can share it.
//!
//! ```
//! use gcma_host::log_limit::{LogLimit, LogLimiter};
//!
//! let limiter = LogLimiter::new(LogLimit::default());
//! for i in 0..1000 {
//!     gcma_host::guest_warn!(limiter, "example_kind", "event {i} happened");
//! }
//! // Ten lines were written (one window), the rest counted.
//! assert_eq!(limiter.suppressed_total(), 990);
//! assert_eq!(limiter.suppressed(), vec![("example_kind", 990)]);
//! ```

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default lines of one kind per window.
pub const DEFAULT_LINES_PER_WINDOW: u32 = 10;

/// Default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);

/// How many lines of one kind may be written per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimit {
    /// Lines of one kind written per window; the rest are counted and suppressed. Zero
    /// suppresses every line (they are still counted).
    pub lines_per_window: u32,
    /// The window (non-zero; a zero window is treated as one nanosecond).
    pub window: Duration,
}

impl Default for LogLimit {
    /// [`DEFAULT_LINES_PER_WINDOW`] lines per [`DEFAULT_WINDOW`]: 10 lines per second.
    fn default() -> Self {
        LogLimit {
            lines_per_window: DEFAULT_LINES_PER_WINDOW,
            window: DEFAULT_WINDOW,
        }
    }
}

impl LogLimit {
    /// `n` lines of a kind per second.
    pub fn per_second(n: u32) -> Self {
        LogLimit {
            lines_per_window: n,
            window: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
struct KindState {
    kind: &'static str,
    /// Index of the window `lines` counts in.
    window: u64,
    lines: u32,
    /// Lines suppressed since the last line written.
    pending: u64,
    /// Lines suppressed in all.
    suppressed: u64,
    /// Lines written in all.
    written: u64,
}

/// Limits log lines per kind. See the [module documentation](self). Shared by reference (`Arc`)
/// between the components of one VM; every method takes `&self`.
#[derive(Debug)]
pub struct LogLimiter {
    limit: LogLimit,
    epoch: Instant,
    /// Few kinds (one per message site), so a vector searched linearly.
    kinds: Mutex<Vec<KindState>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LogLimit::default())
    }
}

impl LogLimiter {
    /// A limiter applying `limit` to every kind.
    pub fn new(limit: LogLimit) -> Self {
        LogLimiter {
            limit,
            epoch: Instant::now(),
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> LogLimit {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, Vec<KindState>> {
        // A panic while holding this lock leaves counters behind, nothing unsafe.
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state<'a>(kinds: &'a mut Vec<KindState>, kind: &'static str) -> &'a mut KindState {
        let i = match kinds.iter().position(|k| k.kind == kind) {
            Some(i) => i,
            None => {
                kinds.push(KindState {
                    kind,
                    window: 0,
                    lines: 0,
                    pending: 0,
                    suppressed: 0,
                    written: 0,
                });
                kinds.len() - 1
            }
        };
        &mut kinds[i]
    }

    /// Makes `kind` known, so that [`Self::suppressed`] lists it (with zero) before any line of
    /// it was logged: metrics then show a stable set of series.
    pub fn declare(&self, kind: &'static str) {
        Self::state(&mut self.lock(), kind);
    }

    /// Declares every kind of `kinds` (see [`Self::declare`]).
    pub fn declare_all(&self, kinds: &[&'static str]) {
        let mut g = self.lock();
        for k in kinds {
            Self::state(&mut g, k);
        }
    }

    /// Asks whether a line of `kind` may be written now. `Some(n)`: write it, and say that `n`
    /// lines of this kind were suppressed since the previous one; `None`: it was counted as
    /// suppressed. The macros call this before formatting anything.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        let window_ns = self.limit.window.as_nanos().max(1);
        let now = (self.epoch.elapsed().as_nanos() / window_ns) as u64;
        let mut g = self.lock();
        let k = Self::state(&mut g, kind);
        if k.window != now {
            k.window = now;
            k.lines = 0;
        }
        if k.lines < self.limit.lines_per_window {
            k.lines += 1;
            k.written += 1;
            Some(std::mem::take(&mut k.pending))
        } else {
            k.pending += 1;
            k.suppressed += 1;
            None
        }
    }

    /// Lines suppressed so far, per kind, in the order kinds were first seen or declared.
    pub fn suppressed(&self) -> Vec<(&'static str, u64)> {
        self.lock().iter().map(|k| (k.kind, k.suppressed)).collect()
    }

    /// Lines suppressed so far, all kinds together.
    pub fn suppressed_total(&self) -> u64 {
        self.lock().iter().map(|k| k.suppressed).sum()
    }

    /// Lines let through so far, all kinds together.
    pub fn written_total(&self) -> u64 {
        self.lock().iter().map(|k| k.written).sum()
    }
}

/// Logs at `$level` through a [`LogLimiter`]: `guest_log!(limiter, "kind", log::Level::Warn,
/// "format", args...)`. Nothing is formatted when the line is suppressed; a line written after
/// suppressed ones ends with how many were suppressed.
#[macro_export]
macro_rules! guest_log {
    ($limiter:expr, $kind:expr, $level:expr, $($arg:tt)+) => {{
        if let Some(suppressed) = $crate::log_limit::LogLimiter::admit(&$limiter, $kind) {
            if suppressed == 0 {
                $crate::log_limit::__log::log!($level, $($arg)+);
            } else {
                $crate::log_limit::__log::log!(
                    $level,
                    "{} ({} similar lines suppressed)",
                    format_args!($($arg)+),
                    suppressed
                );
            }
        }
    }};
}

/// [`guest_log!`](crate::guest_log) at warning level: `guest_warn!(limiter, "kind", "format",
/// args...)`.
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr, $kind:expr, $($arg:tt)+) => {
        $crate::guest_log!($limiter, $kind, $crate::log_limit::__log::Level::Warn, $($arg)+)
    };
}

#[doc(hidden)]
pub use log as __log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_kind_and_reports_what_it_suppressed() {
        let l = LogLimiter::new(LogLimit {
            lines_per_window: 3,
            // Long enough that the test stays inside the first window.
            window: Duration::from_secs(3600),
        });
        let a: Vec<Option<u64>> = (0..5).map(|_| l.admit("a")).collect();
        assert_eq!(a, vec![Some(0), Some(0), Some(0), None, None]);
        // Another kind has its own allowance.
        assert_eq!(l.admit("b"), Some(0));
        assert_eq!(l.suppressed(), vec![("a", 2), ("b", 0)]);
        assert_eq!(l.suppressed_total(), 2);
        assert_eq!(l.written_total(), 4);
    }

    #[test]
    fn a_new_window_lets_lines_through_and_names_the_suppressed_count() {
        let l = LogLimiter::new(LogLimit {
            lines_per_window: 1,
            window: Duration::from_millis(1),
        });
        assert_eq!(l.admit("k"), Some(0));
        let mut suppressed = 0u64;
        // Spins until the window turns; the first line let through then carries the count.
        let reported = loop {
            match l.admit("k") {
                None => suppressed += 1,
                Some(n) => break n,
            }
        };
        assert_eq!(reported, suppressed);
        assert_eq!(l.suppressed_total(), suppressed);
        assert_eq!(l.written_total(), 2);
    }

    #[test]
    fn zero_lines_suppresses_everything_and_declared_kinds_are_listed() {
        let l = LogLimiter::new(LogLimit::per_second(0));
        l.declare_all(&["x", "y"]);
        assert_eq!(l.admit("x"), None);
        assert_eq!(l.suppressed(), vec![("x", 1), ("y", 0)]);
    }
}
