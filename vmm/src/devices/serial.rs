//! A 16550 UART (`vm-superio`) on the MMIO bus or the port I/O bus.
//!
//! Each UART register is one byte at its usual register number from the device base. The
//! payloads poll and run with interrupts off, so their UART's interrupt line goes nowhere
//! ([`NoInterrupt`]); a Linux guest's COM1 at port 0x3f8 raises IRQ 4 through the in-kernel
//! irqchip ([`SerialDevice::with_interrupt`] with an irqfd line).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use gcma_host::guest_warn;
use gcma_host::log_limit::LogLimiter;
use vm_superio::{Serial, Trigger};

use crate::kvm::bus::MmioDevice;

/// The interrupt line of a UART nobody takes interrupts from.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Log kind: writing a byte the guest sent to the UART failed (one event per byte).
pub const LOG_SERIAL_OUTPUT: &str = "serial_output_failed";

/// The UART as a bus device; output goes to the writer given at creation.
pub struct SerialDevice<T: Trigger = NoInterrupt> {
    uart: Serial<T, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    logs: Arc<LogLimiter>,
}

impl<T: Trigger> std::fmt::Debug for SerialDevice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART whose transmitted bytes are written to `out`; failures to write (one per byte
    /// once the output is broken) are logged through `logs`.
    pub fn new(out: Box<dyn Write + Send>, logs: Arc<LogLimiter>) -> Self {
        SerialDevice {
            uart: Serial::new(NoInterrupt, out),
            logs,
        }
    }
}

impl<T: Trigger> SerialDevice<T> {
    /// A UART whose transmitted bytes are written to `out` and whose interrupt (transmitter
    /// empty, when the guest enables it in IER) fires `trigger`; write failures are logged
    /// through `logs`.
    pub fn with_interrupt(trigger: T, out: Box<dyn Write + Send>, logs: Arc<LogLimiter>) -> Self {
        SerialDevice {
            uart: Serial::new(trigger, out),
            logs,
        }
    }
}

impl<T: Trigger + Send> MmioDevice for SerialDevice<T>
where
    T::E: std::fmt::Display,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            if reg < 8 {
                *first = self.uart.read(reg);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if reg >= 8 {
            return;
        }
        if let Err(e) = self.uart.write(reg, value) {
            guest_warn!(
                self.logs,
                LOG_SERIAL_OUTPUT,
                "serial console output failed: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::output::SharedBuffer as Shared;

    #[test]
    fn transmits_bytes_written_to_thr_and_reports_an_empty_transmitter() {
        let out = Shared::default();
        let mut dev = SerialDevice::new(Box::new(out.clone()), Arc::new(LogLimiter::default()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        dev.write(100, b"x");
        assert_eq!(out.contents().as_slice(), b"hi\n");
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty bit must be set");
        let mut wide = [0xffu8; 4];
        dev.read(1 << 40, &mut wide);
        assert_eq!(wide, [0; 4]);
    }

    /// An output that always fails, as a closed standard output does.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_output_logs_at_the_limiters_rate_not_once_per_byte() {
        let logs = Arc::new(LogLimiter::default());
        let mut dev = SerialDevice::new(Box::new(Broken), logs.clone());
        let t0 = std::time::Instant::now();
        for _ in 0..10_000 {
            dev.write(0, b"x");
        }
        let windows = t0.elapsed().as_secs() + 1;
        let written = logs.written_total();
        assert!(written >= 1 && written <= 10 * windows, "{written} lines");
        assert_eq!(
            logs.suppressed(),
            vec![(LOG_SERIAL_OUTPUT, 10_000 - written)]
        );
    }
}
