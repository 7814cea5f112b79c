//! Devices the VMM places on its buses itself (MMIO, and port I/O for Linux guests).
//!
//! * [`serial`]: a 16550 UART (`vm-superio`), reached by MMIO (payloads) or at port 0x3f8 with an
//!   interrupt (Linux guests).
//! * [`exit`]: a one-register device the payload writes its exit code to.
//! * [`mailbox`]: parameters in, `(tag, value)` events out, for the demo payload.
//! * [`console`]: a batched console printing whole guest buffers in one exit.
//! * [`output`]: where console bytes go, capped per VM ([`OutputLimits`]), with what was dropped
//!   counted.
//! * [`virtio`]: virtio-mmio devices from the `balloon` crate, reachable on the bus.
//! * [`power`]: the ACPI sleep registers through which a Linux guest powers off.
//! * [`vhost_gcma`]: virtio-gcma served by `gcma-hostd` over vhost-user (the VMM is the frontend).

pub mod console;
pub mod exit;
pub mod mailbox;
pub mod output;
pub mod power;
pub mod serial;
pub mod vhost_gcma;
pub mod virtio;

pub use console::ConsoleDevice;
pub use exit::{ExitDevice, ExitLatch};
pub use output::{OutputCounters, OutputLimits, OutputStats, SharedBuffer, SharedWriter};
pub use serial::SerialDevice;
pub use virtio::{IrqDoorbell, PolledIrq, VirtioSlot};
