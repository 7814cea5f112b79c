//! The exit device: how a ring-3 payload ends its microVM.
//!
//! A ring-3 guest can neither `hlt` nor use port I/O (both fault), so the payload writes its exit
//! code (a little-endian `u32`, 1 to 8 bytes wide) to [`crate::abi::EXIT_REG_CODE`]. The device
//! latches it; the run loop checks the latch after every MMIO write and stops the vCPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::abi::EXIT_REG_CODE;
use crate::kvm::bus::MmioDevice;

/// Latched exit request: `u64::MAX` when none, else the exit code.
#[derive(Debug)]
pub struct ExitLatch(AtomicU64);

const NO_EXIT: u64 = u64::MAX;

impl Default for ExitLatch {
    fn default() -> Self {
        ExitLatch(AtomicU64::new(NO_EXIT))
    }
}

impl ExitLatch {
    /// Records an exit request with `code` (the first request wins until taken).
    pub fn request(&self, code: u32) {
        let _ = self.0.compare_exchange(
            NO_EXIT,
            u64::from(code),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Takes the pending exit request, if any.
    pub fn take(&self) -> Option<u32> {
        match self.0.swap(NO_EXIT, Ordering::AcqRel) {
            NO_EXIT => None,
            code => Some(code as u32),
        }
    }
}

/// The MMIO exit device.
#[derive(Debug, Default)]
pub struct ExitDevice {
    latch: Arc<ExitLatch>,
}

impl ExitDevice {
    /// A device that records exit requests in `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        ExitDevice { latch }
    }
}

impl MmioDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != EXIT_REG_CODE || data.is_empty() {
            log::debug!(
                "exit device: ignored write of {} bytes at {offset:#x}",
                data.len()
            );
            return;
        }
        let mut code = [0u8; 4];
        let n = data.len().min(4);
        code[..n].copy_from_slice(&data[..n]);
        self.latch.request(u32::from_le_bytes(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_the_code_written_to_the_register() {
        let latch = Arc::new(ExitLatch::default());
        let mut dev = ExitDevice::new(latch.clone());
        assert_eq!(latch.take(), None);
        dev.write(4, &[1, 0, 0, 0]);
        assert_eq!(latch.take(), None);
        dev.write(EXIT_REG_CODE, &7u32.to_le_bytes());
        dev.write(EXIT_REG_CODE, &9u32.to_le_bytes());
        assert_eq!(latch.take(), Some(7));
        assert_eq!(latch.take(), None);
        dev.write(EXIT_REG_CODE, &0x1_0000_0003u64.to_le_bytes());
        assert_eq!(latch.take(), Some(3));
        dev.write(EXIT_REG_CODE, &[0xff]);
        assert_eq!(latch.take(), Some(0xff));
    }
}
