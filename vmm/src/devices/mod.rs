//! Devices the VMM places on the MMIO bus itself.
//!
//! * [`serial`]: a 16550 UART (`vm-superio`) reached by MMIO.
//! * [`exit`]: a one-register device the payload writes its exit code to.

pub mod exit;
pub mod serial;

pub use exit::{ExitDevice, ExitLatch};
pub use serial::SerialDevice;
