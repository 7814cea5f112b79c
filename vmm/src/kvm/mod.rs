//! The hypervisor core: everything that talks to KVM for one microVM.
//!
//! * [`hypervisor`]: opening `/dev/kvm` with clear errors ([`Hypervisor`]).
//! * [`memory`]: guest RAM backed by a memfd through `vm-memory` ([`GuestRam`]).
//! * [`x86`]: the CPU and boot structures for the ring-3, 64-bit entry of kernel-less payloads.
//! * [`loader`]: a loader for static ELF payloads.
//! * [`linux`]: the Linux guest kind: kernel loading, boot protocol, ACPI, kvm-pvm work-arounds.
//! * [`insn`]: reading the instruction at a vCPU's RIP (emulation-failure reports).
//! * [`bus`]: the bus the run loop dispatches MMIO (and, for Linux guests, port I/O) exits to
//!   ([`MmioBus`], [`MmioDevice`]).
//! * [`deferred`]: queue work a notification left, served a turn at a time between guest runs.
//! * [`events`]: ioeventfd queue notifications on an `event-manager` thread, irqfd lines.
//! * [`vm`]: a microVM tying these together and its run loop ([`MicroVm`]).

pub mod bus;
pub mod deferred;
pub mod events;
pub mod hypervisor;
pub mod insn;
pub mod linux;
pub mod loader;
pub mod memory;
pub mod vm;
pub mod x86;

pub use bus::{MmioBus, MmioDevice};
pub use hypervisor::Hypervisor;
pub use memory::GuestRam;
pub use vm::{GuestKind, MicroVm, SerialOutput, StopHandle, VmConfig, VmOutcome};
