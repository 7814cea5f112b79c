//! The ACPI sleep registers of a hardware-reduced ACPI platform (FADT `SLEEP_CONTROL_REG` and
//! `SLEEP_STATUS_REG`, one byte each on the port I/O bus): how a Linux guest powers off.
//!
//! Linux writes `SLP_TYP << 2 | SLP_EN` to the control register, with `SLP_TYP` taken from the
//! DSDT's `\_S5_` for soft-off. The device latches exit code 0, so the run loop ends with
//! `VmOutcome::Exited { code: 0 }`, as when a payload exits successfully. Other sleep states are
//! not supported: they are logged and ignored (the guest reads no wake status and carries on).

use std::sync::Arc;

use crate::devices::ExitLatch;
use crate::kvm::bus::MmioDevice;

/// `SLP_EN`: bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// Offset of the sleep control register in the device's range.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Size of the device's port range.
pub const PORTS: u64 = 2;

/// The sleep control and status registers.
#[derive(Debug)]
pub struct AcpiSleep {
    latch: Arc<ExitLatch>,
    s5_type: u8,
}

impl AcpiSleep {
    /// Registers whose S5 (sleep type `s5_type`, as in `\_S5_`) request latches exit code 0.
    pub fn new(latch: Arc<ExitLatch>, s5_type: u8) -> Self {
        AcpiSleep { latch, s5_type }
    }
}

impl MmioDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (SLEEP_CONTROL, Some(&v)) = (offset, data.first()) else {
            return;
        };
        if v & SLP_EN == 0 {
            return;
        }
        let sleep_type = (v >> 2) & 0x7;
        if sleep_type == self.s5_type {
            log::info!("guest powered off (ACPI S5)");
            self.latch.request(0);
        } else {
            log::warn!("guest asked for ACPI sleep type {sleep_type}, which is not supported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_enabled_s5_write_powers_off() {
        let latch = Arc::new(ExitLatch::default());
        let mut dev = AcpiSleep::new(latch.clone(), 5);
        dev.write(SLEEP_CONTROL, &[5 << 2]); // SLP_EN missing
        dev.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3
        dev.write(SLEEP_STATUS, &[(5 << 2) | SLP_EN]); // wrong register
        dev.write(SLEEP_CONTROL, &[]);
        assert_eq!(latch.take(), None);
        dev.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        assert_eq!(latch.take(), Some(0));
        let mut b = [0xff; 1];
        dev.read(SLEEP_STATUS, &mut b);
        assert_eq!(b, [0]);
    }
}
