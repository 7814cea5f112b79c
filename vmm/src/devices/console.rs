//! A batched console: one MMIO write prints a whole string from guest memory.
//!
//! The UART costs one VM exit per byte (tens of microseconds each here); a payload printing a
//! table would spend most of its time exiting. This device takes a guest buffer instead: a
//! write of the 8-byte value `gpa | (len << 48)` to [`crate::abi::CONSOLE_REG_WRITE`] copies
//! `len` bytes at `gpa` to the same output as the UART.

use std::io::Write;
use std::sync::Arc;

use gcma_host::guest_warn;
use gcma_host::log_limit::LogLimiter;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use super::output::SharedWriter;

use crate::abi::{CONSOLE_LEN_SHIFT, CONSOLE_REG_WRITE};
use crate::kvm::bus::MmioDevice;

/// Log kind: writing the guest's console output failed.
pub const LOG_CONSOLE_OUTPUT: &str = "console_output_failed";

/// The batched console device.
pub struct ConsoleDevice {
    mem: GuestMemoryMmap,
    out: SharedWriter,
    logs: Arc<LogLimiter>,
    buf: Vec<u8>,
    /// Writes refused (bad register, width or buffer outside guest memory).
    refused: u64,
}

impl std::fmt::Debug for ConsoleDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleDevice")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl ConsoleDevice {
    /// A console reading guest buffers from `mem` and writing to `out` (which applies the VM's
    /// output limits); failures to write are logged through `logs`.
    pub fn new(mem: GuestMemoryMmap, out: SharedWriter, logs: Arc<LogLimiter>) -> Self {
        ConsoleDevice {
            mem,
            out,
            logs,
            buf: Vec::new(),
            refused: 0,
        }
    }

    /// Writes refused so far (malformed accesses or buffers outside guest RAM).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl MmioDevice for ConsoleDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(raw) = <[u8; 8]>::try_from(data) else {
            self.refused += 1;
            return;
        };
        if offset != CONSOLE_REG_WRITE {
            self.refused += 1;
            return;
        }
        let value = u64::from_le_bytes(raw);
        let gpa = value & ((1 << CONSOLE_LEN_SHIFT) - 1);
        let len = (value >> CONSOLE_LEN_SHIFT) as usize;
        self.buf.resize(len, 0);
        if self
            .mem
            .read_slice(&mut self.buf, GuestAddress(gpa))
            .is_err()
        {
            self.refused += 1;
            return;
        }
        if let Err(e) = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
        {
            guest_warn!(self.logs, LOG_CONSOLE_OUTPUT, "console output failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::output::SharedBuffer as Sink;

    #[test]
    fn copies_guest_buffers_and_refuses_bad_ones() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(b"hello, console", GuestAddress(0x1234))
            .unwrap();
        let sink = Sink::default();
        let mut dev = ConsoleDevice::new(
            mem,
            SharedWriter::new(Box::new(sink.clone())),
            Arc::new(LogLimiter::default()),
        );
        let req = |gpa: u64, len: u64| (gpa | (len << CONSOLE_LEN_SHIFT)).to_le_bytes();
        dev.write(CONSOLE_REG_WRITE, &req(0x1234, 5));
        dev.write(CONSOLE_REG_WRITE, &req(0x1234 + 5, 9));
        assert_eq!(sink.contents().as_slice(), b"hello, console");
        dev.write(CONSOLE_REG_WRITE, &req(0xfff0, 0x20)); // runs past the end of RAM
        dev.write(CONSOLE_REG_WRITE, &[1, 2, 3, 4]); // wrong width
        dev.write(8, &req(0x1234, 5)); // wrong register
        dev.write(CONSOLE_REG_WRITE, &u64::MAX.to_le_bytes());
        assert_eq!(dev.refused(), 4);
        assert_eq!(sink.contents().len(), 14);
    }
}
