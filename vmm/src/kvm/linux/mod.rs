//! The Linux guest kind: a stock kernel booted with the 64-bit boot protocol, ACPI-described
//! virtio-mmio devices, a 16550 at port 0x3f8 and KVM's in-kernel PC platform (PICs, IOAPIC,
//! local APIC, PIT).
//!
//! * [`layout`]: guest-physical layout, e820 map, initrd placement.
//! * [`boot`]: loading the bzImage or `vmlinux` with `linux-loader`, command line, zero page.
//! * [`cpu`]: the vCPU as the boot protocol expects it (CPUID, MSRs, page tables, GDT).
//! * [`acpi`]: RSDP, XSDT, FACP, DSDT, MADT with the `acpi_tables` crate.
//! * [`quirks`]: work-arounds for kvm-pvm hosts.
//! * [`irq`]: irqfd lines for the UART and the virtio slots.
//!
//! [`crate::MicroVm`] builds a Linux guest when [`crate::VmConfig::kind`] is
//! [`crate::kvm::vm::GuestKind::Linux`]: the platform and the port devices at creation, the
//! virtio devices as for payloads ([`crate::MicroVm::add_virtio_device`]), then
//! [`crate::MicroVm::load_linux`] writes the kernel, initrd, zero page and ACPI tables (which
//! describe the virtio devices added so far) and points the vCPU at the kernel.

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod irq;
pub mod layout;
pub mod quirks;

use gcma_host::log_limit::LogLimiter;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

pub use acpi::{AcpiTables, VirtioMmioDevice};
pub use boot::{KernelFormat, LinuxBoot, LinuxBootError, LoadedKernel};
pub use quirks::Quirks;

use crate::devices::power::{self, AcpiSleep};
use crate::devices::{ExitLatch, SerialDevice, SharedWriter};
use crate::error::{Error, Result};
use crate::kvm::bus::{MmioBus, SharedMmioDevice};
use crate::kvm::events::IrqfdLine;

/// Where KVM may put the three pages it needs for the real-mode TSS on Intel hosts: just below
/// the BIOS ROM area, clear of RAM, the MMIO window and the APICs.
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// A loaded Linux guest: what the VMM gave the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxGuest {
    /// The kernel, initrd, command line and e820 map.
    pub kernel: LoadedKernel,
    /// The ACPI tables in guest memory.
    pub acpi: AcpiTables,
    /// The host work-arounds applied.
    pub quirks: Quirks,
}

/// Creates the PC platform KVM emulates in the kernel, before any vCPU exists: the TSS area,
/// the irqchip (two 8259 PICs and an IOAPIC; each vCPU gets a local APIC) and the PIT (IRQ 0).
pub(crate) fn create_platform(vm: &VmFd) -> Result<()> {
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))
}

/// The port I/O devices of a Linux guest: COM1 at 0x3f8 raising IRQ 4 through an irqfd, and the
/// ACPI sleep registers (power-off latches exit code 0 in `latch`).
pub(crate) fn port_devices(
    vm: Arc<VmFd>,
    out: SharedWriter,
    latch: Arc<ExitLatch>,
    logs: Arc<LogLimiter>,
) -> Result<MmioBus> {
    let mut bus = MmioBus::new();
    let irq = IrqfdLine::new(vm, layout::COM1_IRQ)?;
    let com1: SharedMmioDevice = Arc::new(Mutex::new(SerialDevice::with_interrupt(
        irq,
        Box::new(out),
        logs,
    )));
    bus.insert(u64::from(layout::COM1_PORT), 8, com1)?;
    let sleep: SharedMmioDevice = Arc::new(Mutex::new(AcpiSleep::new(latch, acpi::S5_SLEEP_TYPE)));
    bus.insert(u64::from(layout::SLEEP_CONTROL_PORT), power::PORTS, sleep)?;
    Ok(bus)
}

/// Loads the kernel, initrd and command line, writes the zero page, the boot page tables and
/// GDT and the ACPI tables describing `devices`, and points `vcpu` at the 64-bit entry.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    vcpu: &VcpuFd,
    boot: &LinuxBoot,
    quirks: &Quirks,
    devices: &[VirtioMmioDevice],
) -> Result<LinuxGuest> {
    let acpi = AcpiTables::build(devices)?;
    let kernel = boot::load_kernel(
        mem,
        mem_bytes,
        boot,
        &quirks.extra_cmdline,
        acpi.rsdp_addr(),
    )?;
    // Written after the kernel, so that an image reaching below 1 MiB cannot clobber them.
    cpu::write_boot_structures(mem)?;
    acpi.write(mem)?;
    vcpu.set_regs(&cpu::entry_regs(kernel.entry))
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    Ok(LinuxGuest {
        kernel,
        acpi,
        quirks: quirks.clone(),
    })
}
