//! A guest that repeats a loggable event in a loop (here: its driver sets `FAILED` and resets the
//! device, 100,000 times) gets at most the log limiter's bound of lines into the host's log; the
//! rest are counted as suppressed.
//!
//! One test in this binary: it installs the process-wide logger that counts the lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use balloon::log_kinds;
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED};
use balloon::virtio_balloon::{Balloon, BalloonConfig};

/// Counts warning lines that contain a phrase.
struct CountingLogger {
    phrase: &'static str,
    lines: AtomicU64,
}

impl log::Log for CountingLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Warn && r.args().to_string().contains(self.phrase) {
            self.lines.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

static LOGGER: CountingLogger = CountingLogger {
    phrase: "driver set FAILED",
    lines: AtomicU64::new(0),
};

const CYCLES: u64 = 100_000;

#[test]
fn a_hundred_thousand_failed_cycles_log_at_most_the_limit() {
    log::set_logger(&LOGGER).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Warn);

    let mem = Arc::new(memfd_guest_memory(&[(0, 4 << 20)]).unwrap());
    let transport = MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        Arc::new(CountingIrq::default()),
    );
    let mut driver = Driver::new(transport, mem, (3 << 20)..(4 << 20));
    let t0 = Instant::now();
    for _ in 0..CYCLES {
        driver.set_status(STATUS_ACKNOWLEDGE);
        driver.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        driver.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED);
        assert_ne!(driver.status() & STATUS_FAILED, 0);
        driver.reset();
    }
    // The limiter counts in fixed one-second windows: a run touching `w` windows writes at most
    // 10 lines per window.
    let windows = t0.elapsed().as_secs() + 1;
    let lines = LOGGER.lines.load(Ordering::Relaxed);
    let bound = 10 * windows;
    assert!(
        lines <= bound,
        "{lines} lines for {CYCLES} FAILED cycles over {windows} windows; at most {bound} allowed"
    );
    assert!(lines > 0, "the first FAILED must still be logged");
    // What was not written was counted (the VMM exports this per kind).
    let suppressed = driver
        .bus()
        .log_limiter()
        .suppressed()
        .into_iter()
        .find(|(kind, _)| *kind == log_kinds::MMIO_DRIVER_FAILED)
        .map(|(_, n)| n);
    assert_eq!(suppressed, Some(CYCLES - lines));
}
