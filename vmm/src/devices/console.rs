//! A batched console: one MMIO write prints a whole string from guest memory.
//!
//! The UART costs one VM exit per byte (tens of microseconds each here); a payload printing a
//! table would spend most of its time exiting. This device takes a guest buffer instead: a
//! write of the 8-byte value `gpa | (len << 48)` to [`crate::abi::CONSOLE_REG_WRITE`] copies
//! `len` bytes at `gpa` to the same output as the UART.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::abi::{CONSOLE_LEN_SHIFT, CONSOLE_REG_WRITE};
use crate::kvm::bus::MmioDevice;

/// An output shared by the UART and the batched console, so their bytes interleave in order.
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedWriter {
    /// Shares `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        SharedWriter(Arc::new(Mutex::new(out)))
    }
}

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWriter").finish_non_exhaustive()
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// The batched console device.
pub struct ConsoleDevice {
    mem: GuestMemoryMmap,
    out: SharedWriter,
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
    /// A console reading guest buffers from `mem` and writing to `out`.
    pub fn new(mem: GuestMemoryMmap, out: SharedWriter) -> Self {
        ConsoleDevice {
            mem,
            out,
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
            log::warn!("console output failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kvm::vm::SharedBuffer as Sink;

    #[test]
    fn copies_guest_buffers_and_refuses_bad_ones() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(b"hello, console", GuestAddress(0x1234))
            .unwrap();
        let sink = Sink::default();
        let mut dev = ConsoleDevice::new(mem, SharedWriter::new(Box::new(sink.clone())));
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
