//! A small rust-vmm VMM that launches KVM microVMs.
//!
//! The library is laid out by concern:
//! * [`kvm`]: the hypervisor core: `/dev/kvm`, guest RAM, the x86 entry, the ELF loader, the MMIO
//!   bus, ioeventfd/irqfd plumbing and the vCPU run loop ([`MicroVm`]).
//! * [`devices`]: the devices the VMM places on the MMIO bus itself (serial, exit, console,
//!   mailbox) and the slots that put `balloon`'s virtio devices there.
//! * [`grant`]: the grant window where contiguous pool grants are mapped into a guest.
//! * [`api`]: the control plane: a running VM as operators see it, the control API, metrics.
//! * [`launch`]: assembling a VM with its devices ([`launch::VmBuilder`]).
//! * [`limits`]: the bounds on what one guest can make the host do ([`limits::GuestLimits`]).
//! * [`multiproc`]: one VMM process per guest: running `gcma-hostd` and `vmm agent` processes.
//! * [`payloads`]: the built-in test payloads (built from `vmm/payloads` by `build.rs`).
//! * [`seccomp`]: the thread kinds the VMM filters and the vCPU thread a guest runs on.
//! * [`abi`]: the guest-physical layout payloads are built against.
//!
//! The `vmm` binary adds the command line and the demo application (`vmm demo`), which are not
//! part of this library.
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
pub mod api;
pub mod devices;
mod error;
pub mod grant;
pub mod kvm;
pub mod launch;
pub mod limits;
pub mod multiproc;
pub mod payloads;
pub mod seccomp;

pub use error::{Error, Result};
pub use kvm::{GuestKind, SerialOutput, StopHandle, VmConfig, VmOutcome};
pub use kvm::{GuestRam, Hypervisor, MicroVm, MmioBus, MmioDevice};
