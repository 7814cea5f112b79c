//! Devices the VMM places on the MMIO bus itself.
//!
//! * [`serial`]: a 16550 UART (`vm-superio`) reached by MMIO.
//! * [`exit`]: a one-register device the payload writes its exit code to.
//! * [`mailbox`]: parameters in, `(tag, value)` events out, for the demo payload.
//! * [`console`]: a batched console printing whole guest buffers in one exit.
//! * [`output`]: where console bytes go, capped per VM ([`OutputLimits`]), with what was dropped
//!   counted.
//! * [`virtio`]: virtio-mmio devices from the `balloon` crate, reachable on the bus.

pub mod console;
pub mod exit;
pub mod mailbox;
pub mod output;
pub mod serial;
pub mod virtio;

pub use console::ConsoleDevice;
pub use exit::{ExitDevice, ExitLatch};
pub use output::{OutputCounters, OutputLimits, OutputStats, SharedBuffer, SharedWriter};
pub use serial::SerialDevice;
pub use virtio::{PolledIrq, VirtioSlot};
