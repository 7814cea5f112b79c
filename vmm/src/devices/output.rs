//! Where a guest's console bytes go, and the caps on them.
//!
//! The UART and the batched console write to one [`SharedWriter`] per VM, so their bytes
//! interleave in order. A guest decides how much it prints: a payload can write its whole RAM to
//! the batched console in 64 KiB strings, one exit each. So the writer caps what reaches the sink
//! (standard output, `--serial-file`, or a [`SharedBuffer`]): at most [`OutputLimits::bytes_per_s`]
//! on average (a token bucket holding one second's worth, so short bursts pass whole) and at most
//! [`OutputLimits::max_bytes`] over the VM's life. Bytes over either cap are dropped and counted
//! in [`OutputCounters`] (exported as `vmm_guest_output_dropped_bytes_total`); the guest never
//! sees a difference. When the total cap is reached the sink gets one line saying so.
//!
//! A [`SharedBuffer`] (tests, the demo) has its own capacity on top, so that memory held for a
//! guest's output is bounded even under looser limits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Default average rate of guest console output: 64 KiB/s.
pub const DEFAULT_OUTPUT_BYTES_PER_S: u64 = 64 << 10;
/// Default total guest console output over a VM's life: 16 MiB.
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = 16 << 20;
/// Default capacity of a [`SharedBuffer`]: 1 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 1 << 20;

/// Caps on one VM's console output (UART and batched console together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    /// Average bytes per second written to the sink; bursts of up to one second's worth pass.
    pub bytes_per_s: u64,
    /// Bytes written to the sink over the VM's life.
    pub max_bytes: u64,
}

impl Default for OutputLimits {
    /// [`DEFAULT_OUTPUT_BYTES_PER_S`] and [`DEFAULT_OUTPUT_MAX_BYTES`].
    fn default() -> Self {
        OutputLimits {
            bytes_per_s: DEFAULT_OUTPUT_BYTES_PER_S,
            max_bytes: DEFAULT_OUTPUT_MAX_BYTES,
        }
    }
}

/// What one VM's guest output came to; shared with metrics exporters.
#[derive(Debug, Default)]
pub struct OutputCounters {
    written_bytes: AtomicU64,
    dropped_rate_bytes: AtomicU64,
    dropped_total_bytes: AtomicU64,
    mailbox_dropped_events: AtomicU64,
    /// The dropped-bytes counter of the VM's [`SharedBuffer`], if its output goes to one.
    buffer_dropped: Option<Arc<AtomicU64>>,
}

/// A copy of [`OutputCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Bytes the guest's console output put in the sink.
    pub written_bytes: u64,
    /// Bytes dropped because the guest printed faster than [`OutputLimits::bytes_per_s`].
    pub dropped_rate_bytes: u64,
    /// Bytes dropped because the guest had printed [`OutputLimits::max_bytes`] already.
    pub dropped_total_bytes: u64,
    /// Bytes a full [`SharedBuffer`] dropped.
    pub dropped_buffer_bytes: u64,
    /// Mailbox events dropped because the host's event channel was full
    /// ([`crate::devices::mailbox`]).
    pub mailbox_dropped_events: u64,
}

impl OutputCounters {
    /// Counters for a VM whose output goes to a [`SharedBuffer`] (`Some`) or elsewhere.
    pub fn new(buffer: Option<&SharedBuffer>) -> Self {
        OutputCounters {
            buffer_dropped: buffer.map(|b| Arc::clone(&b.dropped)),
            ..OutputCounters::default()
        }
    }

    /// Counts a mailbox event dropped because the host's channel was full.
    pub fn mailbox_event_dropped(&self) {
        self.mailbox_dropped_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> OutputStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OutputStats {
            written_bytes: g(&self.written_bytes),
            dropped_rate_bytes: g(&self.dropped_rate_bytes),
            dropped_total_bytes: g(&self.dropped_total_bytes),
            dropped_buffer_bytes: self.buffer_dropped.as_deref().map_or(0, g),
            mailbox_dropped_events: g(&self.mailbox_dropped_events),
        }
    }
}

struct Limited {
    sink: Box<dyn Write + Send>,
    limits: OutputLimits,
    counters: Arc<OutputCounters>,
    /// Bytes the bucket holds now (at most `limits.bytes_per_s`).
    tokens: u64,
    /// When `tokens` was last refilled.
    refilled: Instant,
    /// Bytes written so far.
    written: u64,
    /// The "limit reached" notice went to the sink.
    noticed: bool,
}

impl Limited {
    fn refill(&mut self) {
        let now = Instant::now();
        let ns = now.duration_since(self.refilled).as_nanos();
        let add = ns * u128::from(self.limits.bytes_per_s) / 1_000_000_000;
        if add > 0 {
            self.tokens = u64::try_from(u128::from(self.tokens) + add)
                .unwrap_or(u64::MAX)
                .min(self.limits.bytes_per_s);
            self.refilled = now;
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len() as u64;
        let left = self.limits.max_bytes.saturating_sub(self.written);
        let within_total = n.min(left);
        self.refill();
        let allowed = within_total.min(self.tokens);
        let c = &self.counters;
        c.dropped_total_bytes
            .fetch_add(n - within_total, Ordering::Relaxed);
        c.dropped_rate_bytes
            .fetch_add(within_total - allowed, Ordering::Relaxed);
        if allowed > 0 {
            // `allowed` is at most `buf.len()`.
            self.sink.write_all(&buf[..allowed as usize])?;
            self.tokens -= allowed;
            self.written += allowed;
            c.written_bytes.fetch_add(allowed, Ordering::Relaxed);
        }
        if within_total < n && !self.noticed {
            self.noticed = true;
            let note = format!(
                "\n[vmm: the guest's console output reached its limit of {} bytes; the rest is \
                 dropped]\n",
                self.limits.max_bytes
            );
            self.sink.write_all(note.as_bytes())?;
            self.sink.flush()?;
        }
        // The guest's bytes are consumed either way: dropping is the host's business.
        Ok(buf.len())
    }
}

/// The output one VM's UART and batched console share, with the VM's [`OutputLimits`] applied.
/// Cheap to clone (all clones write to the same sink).
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<Limited>>);

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWriter")
            .field("limits", &self.lock().limits)
            .finish_non_exhaustive()
    }
}

impl SharedWriter {
    /// Shares `out` under the default [`OutputLimits`], counting into fresh counters.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::limited(
            out,
            OutputLimits::default(),
            Arc::new(OutputCounters::default()),
        )
    }

    /// Shares `out` under `limits`, counting into `counters`.
    pub fn limited(
        out: Box<dyn Write + Send>,
        limits: OutputLimits,
        counters: Arc<OutputCounters>,
    ) -> Self {
        SharedWriter(Arc::new(Mutex::new(Limited {
            sink: out,
            limits,
            counters,
            tokens: limits.bytes_per_s,
            refilled: Instant::now(),
            written: 0,
            noticed: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Limited> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().sink.flush()
    }
}

/// A byte buffer shared between the serial console and whoever reads it (tests, the demo), with
/// a capacity: bytes beyond it are dropped and counted ([`SharedBuffer::dropped_bytes`]).
#[derive(Debug, Clone)]
pub struct SharedBuffer {
    data: Arc<Mutex<Vec<u8>>>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
}

impl Default for SharedBuffer {
    /// A buffer of [`DEFAULT_BUFFER_BYTES`].
    fn default() -> Self {
        Self::with_capacity(DEFAULT_BUFFER_BYTES)
    }
}

impl SharedBuffer {
    /// A buffer keeping at most `capacity` bytes (the first ones written).
    pub fn with_capacity(capacity: usize) -> Self {
        SharedBuffer {
            data: Arc::default(),
            capacity,
            dropped: Arc::default(),
        }
    }

    /// A copy of everything kept so far.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.capacity.saturating_sub(data.len());
        let keep = buf.len().min(room);
        data.extend_from_slice(&buf[..keep]);
        self.dropped
            .fetch_add((buf.len() - keep) as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_total_is_dropped_counted_and_noted_once() {
        let sink = SharedBuffer::with_capacity(1 << 20);
        let counters = Arc::new(OutputCounters::new(Some(&sink)));
        let limits = OutputLimits {
            bytes_per_s: 1 << 30,
            max_bytes: 100,
        };
        let mut w = SharedWriter::limited(Box::new(sink.clone()), limits, counters.clone());
        for _ in 0..10 {
            assert_eq!(w.write(&[b'x'; 30]).unwrap(), 30);
        }
        let s = counters.snapshot();
        assert_eq!(s.written_bytes, 100);
        assert_eq!(s.dropped_total_bytes, 200);
        let text = String::from_utf8(sink.contents()).unwrap();
        assert!(text.starts_with(&"x".repeat(100)), "{text}");
        assert_eq!(text.matches("reached its limit of 100 bytes").count(), 1);
    }

    #[test]
    fn output_faster_than_the_rate_is_dropped_beyond_one_second_of_burst() {
        let sink = SharedBuffer::with_capacity(1 << 20);
        let counters = Arc::new(OutputCounters::new(Some(&sink)));
        // A rate so low that the test cannot refill the bucket noticeably.
        let limits = OutputLimits {
            bytes_per_s: 1000,
            max_bytes: 1 << 20,
        };
        let t0 = Instant::now();
        let mut w = SharedWriter::limited(Box::new(sink.clone()), limits, counters.clone());
        for _ in 0..100 {
            w.write_all(&[b'y'; 100]).unwrap();
        }
        let elapsed_ms = t0.elapsed().as_millis() as u64;
        let s = counters.snapshot();
        assert_eq!(s.written_bytes + s.dropped_rate_bytes, 10_000);
        // One second's worth passes at once, then one byte per millisecond.
        assert!(s.written_bytes >= 1000, "{s:?}");
        assert!(
            s.written_bytes <= 1000 + elapsed_ms + 1,
            "{s:?} in {elapsed_ms} ms"
        );
        assert_eq!(sink.contents().len() as u64, s.written_bytes);
        assert_eq!(s.dropped_total_bytes, 0);
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let mut b = SharedBuffer::with_capacity(8);
        b.write_all(b"0123456789").unwrap();
        assert_eq!(b.contents(), b"01234567");
        assert_eq!(b.dropped_bytes(), 2);
        let counters = OutputCounters::new(Some(&b));
        assert_eq!(counters.snapshot().dropped_buffer_bytes, 2);
    }
}
