//! A small rust-vmm VMM that launches KVM microVMs.
//!
//! The layers, bottom up:
//! * [`kvm`]: opening `/dev/kvm` with clear errors ([`Hypervisor`]).
//! * [`memory`]: guest RAM backed by a memfd through `vm-memory`, so that pages can be released
//!   with `fallocate(PUNCH_HOLE)` ([`GuestRam`]).
//! * [`x86`]: the CPU and boot structures for the ring-3, 64-bit entry of kernel-less payloads.
//! * [`loader`]: a loader for static ELF payloads.
//! * [`bus`]: the MMIO bus the run loop dispatches exits to ([`MmioBus`], [`MmioDevice`]).
//! * [`devices`]: the MMIO 16550 serial console and the exit device.
//! * [`events`]: ioeventfd queue notifications on an `event-manager` thread, irqfd lines.
//! * [`grant`]: the grant window where contiguous pool grants are mapped ([`grant::KvmGrantMapper`]).
//! * [`vm`]: a microVM tying these together and its run loop ([`MicroVm`]).
//! * [`payloads`]: the built-in test payloads (built from `vmm/payloads` by `build.rs`).
//! * [`abi`]: the guest-physical layout payloads are built against.
//!
//! ```no_run
//! use vmm::{Hypervisor, MicroVm, VmConfig, VmOutcome, payloads::BuiltinPayload};
//!
//! let hv = Hypervisor::open()?;
//! let mut vm = MicroVm::new(&hv, &VmConfig::default())?;
//! vm.load_payload(BuiltinPayload::Hello.elf())?;
//! assert_eq!(vm.run()?, VmOutcome::Exited { code: 0 });
//! # Ok::<(), vmm::Error>(())
//! ```

#![deny(missing_docs)]

pub mod abi;
pub mod bus;
pub mod control;
pub mod demo;
pub mod devices;
mod error;
pub mod events;
pub mod grant;
pub mod http;
pub mod kvm;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod payloads;
pub mod report;
pub mod runtime;
pub mod vm;
pub mod x86;

pub use bus::{MmioBus, MmioDevice};
pub use error::{Error, Result};
pub use kvm::Hypervisor;
pub use memory::GuestRam;
pub use vm::{MicroVm, SerialOutput, StopHandle, VmConfig, VmOutcome};
