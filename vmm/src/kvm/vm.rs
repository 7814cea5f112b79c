//! A microVM: guest RAM, one vCPU, the MMIO bus with the built-in devices, and the run loop.
//!
//! Two guest kinds ([`GuestKind`]): kernel-less payloads entered in ring 3, and Linux kernels
//! ([`crate::kvm::linux`]) with the in-kernel irqchip, a port I/O bus and ACPI tables. Both take
//! the same virtio devices ([`MicroVm::add_virtio_device`]).

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use gcma_host::log_limit::LogLimiter;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use balloon::gcma::{GrantWindow, WindowRange};
use balloon::transport::mmio::MmioTransport;
use balloon::transport::VirtioDevice;
use gcma_host::api::GcmaBackend;

use crate::abi::{
    CONSOLE_BASE, CONSOLE_SIZE, EXIT_BASE, EXIT_SIZE, GRANT_WINDOW_BASE, MMIO_BASE, MMIO_SIZE,
    PAYLOAD_LOAD_ADDR, SERIAL_BASE, SERIAL_SIZE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::devices::{
    console, serial, ConsoleDevice, ExitDevice, ExitLatch, IrqDoorbell, OutputCounters, PolledIrq,
    SerialDevice, SharedWriter, VirtioSlot,
};
use crate::error::{Error, Result};
use crate::grant::slots::SlotPerGrant;
use crate::grant::KvmWindow;
use crate::kvm::bus::{MmioBus, SharedMmioDevice};
use crate::kvm::deferred::Deferred;
use crate::kvm::events::IrqfdLine;
use crate::kvm::insn::{self, InsnBytes};
use crate::kvm::linux::{self, LinuxBoot, LinuxGuest, Quirks, VirtioMmioDevice};
use crate::kvm::loader::{load_elf, LoadedImage};
use crate::kvm::memory::GuestRam;
use crate::kvm::x86;
use crate::kvm::Hypervisor;
use crate::limits::GuestLimits;

/// Smallest guest RAM accepted: boot area, a payload and its stack.
pub const MIN_MEM_BYTES: u64 = 8 << 20;
/// Space kept free for the payload's stack at the top of RAM (the loader refuses segments there).
pub const STACK_RESERVE_BYTES: u64 = 1 << 20;
/// Memory slot used for guest RAM.
const RAM_SLOT: u32 = 0;
/// Memory slot of the grant window (the first of the per-grant slots with
/// [`GrantMapping::SlotPerGrant`]).
const GRANT_WINDOW_SLOT: u32 = 1;
/// How many virtio-mmio devices one microVM can have.
pub const MAX_VIRTIO_DEVICES: u32 = 32;
/// Interrupt number of the first virtio device (the next ones count up), clear of the legacy ISA
/// lines a PC guest expects.
pub const FIRST_VIRTIO_GSI: u32 = 5;

/// Where the guest's serial console output goes.
#[derive(Debug, Clone, Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// An in-memory buffer the caller keeps a clone of (tests, benchmarks).
    Buffer(SharedBuffer),
    /// Discarded.
    Sink,
}

pub use crate::devices::output::SharedBuffer;

/// How to build a microVM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in bytes (a multiple of 4 KiB, at least [`MIN_MEM_BYTES`], below the MMIO
    /// window at [`MMIO_BASE`]).
    pub mem_bytes: u64,
    /// Value handed to the payload in `rsi` at entry.
    pub payload_arg: u64,
    /// Where serial console output goes.
    pub serial: SerialOutput,
    /// Size of the grant window at [`GRANT_WINDOW_BASE`] in bytes (a multiple of 2 MiB; 0 for
    /// none). Grants are mapped there by [`MicroVm::grant_mapper`].
    pub grant_window_bytes: u64,
    /// Create the in-kernel irqchip (before the vCPU), needed for irqfd interrupt lines
    /// ([`crate::kvm::events::IrqfdLine`]). Off by default: payloads poll with interrupts off.
    pub irqchip: bool,
    /// How grants are mapped into the grant window.
    pub grant_mapping: GrantMapping,
    /// What the guest may cost the host: log lines, console output, requests per notification.
    pub limits: GuestLimits,
    /// What the VM runs: a kernel-less payload or a Linux kernel.
    pub kind: GuestKind,
    /// How guest RAM is backed: 4 KiB pages, shmem THP, or 2 MiB hugetlb pages (then
    /// `mem_bytes` must be a multiple of 2 MiB). See [`GuestRam::with_huge_pages`].
    pub huge_pages: gcma_host::huge::HugePages,
}

/// The two kinds of guest a [`MicroVm`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestKind {
    /// A kernel-less payload entered in ring 3 ([`MicroVm::load_payload`]); devices on MMIO,
    /// interrupts off.
    #[default]
    Payload,
    /// A Linux kernel ([`MicroVm::load_linux`]): the in-kernel irqchip and PIT, COM1 and the
    /// ACPI sleep registers on the port I/O bus, virtio interrupts through irqfds, ACPI tables.
    /// The payload devices (MMIO serial, console, exit) are not there.
    Linux,
}

/// How contiguous grants are made visible in a VM's grant window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrantMapping {
    /// One memory slot over the whole window; grants are `mmap`ped into its host range.
    #[default]
    OneSlot,
    /// A memory slot per grant (the previous design, kept to measure against).
    SlotPerGrant,
}

/// The grant window's guest-physical space and how grants get into it.
#[derive(Debug)]
enum GrantSpace {
    OneSlot(KvmWindow),
    SlotPerGrant { range: WindowRange, first_slot: u32 },
}

impl GrantSpace {
    fn range(&self) -> WindowRange {
        match self {
            GrantSpace::OneSlot(w) => w.range(),
            GrantSpace::SlotPerGrant { range, .. } => *range,
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_bytes: 64 << 20,
            payload_arg: 0,
            serial: SerialOutput::Stdout,
            grant_window_bytes: 0,
            irqchip: false,
            grant_mapping: GrantMapping::OneSlot,
            limits: GuestLimits::default(),
            kind: GuestKind::Payload,
            huge_pages: gcma_host::huge::HugePages::Off,
        }
    }
}

/// How a guest run ended. Guest faults are outcomes, not VMM errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmOutcome {
    /// The payload wrote `code` to the exit device.
    Exited {
        /// The exit code (0 = success by convention).
        code: u32,
    },
    /// The guest faulted (with no IDT every exception becomes a triple fault: `KVM_EXIT_SHUTDOWN`).
    Shutdown {
        /// Guest instruction pointer after the fault (the faulting instruction).
        rip: u64,
    },
    /// The guest executed `hlt` in ring 0.
    Halted {
        /// Guest instruction pointer after the `hlt`.
        rip: u64,
    },
    /// [`StopHandle::stop`] interrupted the vCPU; `run` may be called again to resume.
    Stopped {
        /// Guest instruction pointer where it stopped.
        rip: u64,
    },
    /// The guest touched guest-physical memory that nothing backs: a part of its grant window
    /// where no grant is mapped (or memory KVM could not reach).
    MemoryFault {
        /// The guest-physical address, when KVM reported it.
        gpa: Option<u64>,
        /// Guest instruction pointer of the access.
        rip: u64,
    },
    /// KVM stopped the vCPU with an internal error (`KVM_EXIT_INTERNAL_ERROR`), most often
    /// because its instruction emulator cannot execute the guest's instruction (suberror 1,
    /// `KVM_INTERNAL_ERROR_EMULATION`). The VM cannot go on.
    EmulationFailure {
        /// KVM's suberror: 1 emulation, 2 exception while delivering an exception, 3 event
        /// delivery, 4 unexpected exit reason.
        suberror: u32,
        /// Guest instruction pointer of the instruction.
        rip: u64,
        /// The instruction's bytes, as KVM gave them or as read from guest memory at RIP.
        insn: InsnBytes,
    },
}

/// Counts of vCPU exits by reason (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// MMIO reads handled by a device.
    pub mmio_reads: u64,
    /// MMIO writes handled by a device.
    pub mmio_writes: u64,
    /// MMIO accesses no device claimed (reads return zeros, writes are dropped).
    pub mmio_unclaimed: u64,
    /// Port I/O exits (only ring-0 guests cause them: Linux guests' port devices; payloads
    /// have none).
    pub port_io: u64,
    /// `KVM_RUN` returns because of a signal.
    pub interrupted: u64,
}

/// Live exit counters, shared with metrics exporters while the vCPU runs
/// ([`MicroVm::exit_counters`]).
#[derive(Debug, Default)]
pub struct ExitCounters {
    mmio_reads: AtomicU64,
    mmio_writes: AtomicU64,
    mmio_unclaimed: AtomicU64,
    port_io: AtomicU64,
    interrupted: AtomicU64,
}

impl ExitCounters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> ExitStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitStats {
            mmio_reads: g(&self.mmio_reads),
            mmio_writes: g(&self.mmio_writes),
            mmio_unclaimed: g(&self.mmio_unclaimed),
            port_io: g(&self.port_io),
            interrupted: g(&self.interrupted),
        }
    }
}

/// A microVM with one vCPU running a kernel-less payload.
///
/// Dropping it releases everything: vCPU, VM, guest memory and its memfd.
pub struct MicroVm {
    // Field order is drop order: the vCPU first; then devices and grants (which may remove memory
    // slots); then the VM; the memory it maps last.
    vcpu: VcpuFd,
    bus: MmioBus,
    grant_space: Option<GrantSpace>,
    vm: Arc<VmFd>,
    ram: GuestRam,
    exit_latch: Arc<ExitLatch>,
    image: Option<LoadedImage>,
    payload_arg: u64,
    stats: Arc<ExitCounters>,
    virtio_devices: u32,
    run_state: Arc<RunState>,
    max_memslots: u32,
    limits: GuestLimits,
    logs: Arc<LogLimiter>,
    output: Arc<OutputCounters>,
    deferred: Deferred,
    /// Rung by every virtio device's interrupt; a payload's wait-for-interrupt sleeps on it.
    doorbell: Arc<IrqDoorbell>,
    kind: GuestKind,
    /// The port I/O bus (Linux guests; empty for payloads).
    pio: MmioBus,
    /// Register windows and GSIs of the virtio devices, for the ACPI tables.
    virtio_windows: Vec<VirtioMmioDevice>,
    quirks: Quirks,
    linux: Option<LinuxGuest>,
}

impl std::fmt::Debug for MicroVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroVm")
            .field("ram_bytes", &self.ram.size_bytes())
            .field("bus", &self.bus)
            .field("image", &self.image)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

fn serial_writer(out: &SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(path) => Box::new(File::create(path).map_err(|source| Error::Io {
            op: "creating the serial output file",
            source,
        })?),
        SerialOutput::Buffer(buf) => Box::new(buf.clone()),
        SerialOutput::Sink => Box::new(std::io::sink()),
    })
}

impl MicroVm {
    /// Creates the VM, its RAM, the boot structures, the vCPU and the built-in devices.
    pub fn new(hv: &Hypervisor, config: &VmConfig) -> Result<Self> {
        let mem_bytes = config.mem_bytes;
        if !(MIN_MEM_BYTES..=MMIO_BASE).contains(&mem_bytes) {
            return Err(Error::Config(format!(
                "guest RAM of {mem_bytes} bytes is outside [{MIN_MEM_BYTES}, {MMIO_BASE}]"
            )));
        }
        let window = config.grant_window_bytes;
        let max_window = x86::MAPPABLE_LIMIT - GRANT_WINDOW_BASE;
        if !window.is_multiple_of(2 << 20) || window > max_window {
            return Err(Error::Config(format!(
                "grant window of {window} bytes is not a multiple of 2 MiB up to {max_window}"
            )));
        }
        let vm = Arc::new(hv.kvm().create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
        let ram = GuestRam::with_huge_pages(mem_bytes, config.huge_pages)?;
        let region = kvm_userspace_memory_region {
            slot: RAM_SLOT,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_bytes,
            userspace_addr: ram.host_address()?,
        };
        // SAFETY: the region maps `ram`'s mapping of exactly `mem_bytes`; `ram` lives in the same
        // `MicroVm` and is dropped after the VM (field order), so the host memory outlives the slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        if config.kind == GuestKind::Payload {
            x86::write_boot_structures(
                ram.memory(),
                &[
                    0..mem_bytes,
                    MMIO_BASE..MMIO_BASE + MMIO_SIZE,
                    GRANT_WINDOW_BASE..GRANT_WINDOW_BASE + window,
                ],
            )?;
        }
        let range = WindowRange {
            gpa: GRANT_WINDOW_BASE,
            len_bytes: window,
        };
        let grant_space = match (window, config.grant_mapping) {
            (0, _) => None,
            (_, GrantMapping::OneSlot) => Some(GrantSpace::OneSlot(KvmWindow::new(
                vm.clone(),
                range,
                GRANT_WINDOW_SLOT,
            )?)),
            (_, GrantMapping::SlotPerGrant) => Some(GrantSpace::SlotPerGrant {
                range,
                first_slot: GRANT_WINDOW_SLOT,
            }),
        };
        let quirks = match config.kind {
            GuestKind::Payload => Quirks::default(),
            GuestKind::Linux => {
                linux::create_platform(&vm)?;
                Quirks::detect()
            }
        };
        if config.irqchip && config.kind == GuestKind::Payload {
            vm.create_irq_chip()
                .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;

        let exit_latch = Arc::new(ExitLatch::default());
        let mut bus = MmioBus::new();
        let limits = config.limits;
        let logs = Arc::new(LogLimiter::new(limits.log));
        logs.declare_all(&[serial::LOG_SERIAL_OUTPUT, console::LOG_CONSOLE_OUTPUT]);
        let output = Arc::new(OutputCounters::new(match &config.serial {
            SerialOutput::Buffer(b) => Some(b),
            _ => None,
        }));
        let out = SharedWriter::limited(
            serial_writer(&config.serial)?,
            limits.output,
            output.clone(),
        );
        let pio = match config.kind {
            GuestKind::Payload => {
                let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
                vcpu.set_sregs(&x86::long_mode_sregs(sregs))
                    .map_err(Error::kvm("KVM_SET_SREGS"))?;
                let serial: SharedMmioDevice = Arc::new(Mutex::new(SerialDevice::new(
                    Box::new(out.clone()),
                    logs.clone(),
                )));
                bus.insert(SERIAL_BASE, SERIAL_SIZE, serial)?;
                let console: SharedMmioDevice = Arc::new(Mutex::new(ConsoleDevice::new(
                    ram.memory().clone(),
                    out,
                    logs.clone(),
                )));
                bus.insert(CONSOLE_BASE, CONSOLE_SIZE, console)?;
                let exit: SharedMmioDevice =
                    Arc::new(Mutex::new(ExitDevice::new(exit_latch.clone())));
                bus.insert(EXIT_BASE, EXIT_SIZE, exit)?;
                MmioBus::new()
            }
            GuestKind::Linux => {
                if let Some(line) = quirks.describe() {
                    log::warn!("{line}");
                }
                linux::cpu::setup_vcpu(hv.kvm(), &vcpu, &quirks)?;
                linux::port_devices(vm.clone(), out, exit_latch.clone(), logs.clone())?
            }
        };

        let deferred = Deferred::new();
        let doorbell = Arc::new(IrqDoorbell::new(deferred.flag()));
        Ok(MicroVm {
            vcpu,
            bus,
            grant_space,
            max_memslots: u32::try_from(hv.max_memslots()).unwrap_or(u32::MAX),
            vm,
            ram,
            exit_latch,
            image: None,
            payload_arg: config.payload_arg,
            stats: Arc::default(),
            virtio_devices: 0,
            run_state: Arc::new(RunState::default()),
            limits,
            logs,
            output,
            deferred,
            doorbell,
            kind: config.kind,
            pio,
            virtio_windows: Vec::new(),
            quirks,
            linux: None,
        })
    }

    /// The doorbell every virtio device's interrupt rings (give it to the mailbox, whose
    /// wait-for-interrupt register sleeps on it).
    pub fn irq_doorbell(&self) -> &Arc<IrqDoorbell> {
        &self.doorbell
    }

    /// The limiter every log line this guest can trigger goes through (its devices' too).
    pub fn log_limiter(&self) -> &Arc<LogLimiter> {
        &self.logs
    }

    /// What the guest's console output and mailbox came to (written and dropped).
    pub fn output_counters(&self) -> &Arc<OutputCounters> {
        &self.output
    }

    /// The bounds the VM was built with.
    pub fn limits(&self) -> GuestLimits {
        self.limits
    }

    /// Which kind of guest this VM runs.
    pub fn kind(&self) -> GuestKind {
        self.kind
    }

    /// Loads a Linux kernel (bzImage or ELF `vmlinux`), its initrd and command line, writes the
    /// zero page and the ACPI tables (describing the virtio devices added so far: add them
    /// first), and points the vCPU at the kernel's 64-bit entry. Only for [`GuestKind::Linux`].
    pub fn load_linux(&mut self, boot: &LinuxBoot) -> Result<&LinuxGuest> {
        if self.kind != GuestKind::Linux {
            return Err(Error::Config(
                "a Linux kernel needs a VM built with GuestKind::Linux".into(),
            ));
        }
        let guest = linux::load(
            self.ram.memory(),
            self.ram.size_bytes(),
            &self.vcpu,
            boot,
            &self.quirks,
            &self.virtio_windows,
        )?;
        let k = &guest.kernel;
        log::info!(
            "linux: {:?} at [{:#x}, {:#x}), entry {:#x}, command line {:?}",
            k.format,
            k.kernel.start,
            k.kernel.end,
            k.entry,
            k.cmdline
        );
        if let Some(r) = &k.initrd {
            log::info!("linux: initrd at [{:#x}, {:#x})", r.start, r.end);
        }
        for e in &k.e820 {
            log::info!("linux: e820 {}", e.linux_line());
        }
        for (n, d) in self.virtio_windows.iter().enumerate() {
            log::info!(
                "linux: virtio-mmio device id {} as \\_SB_.{} at [{:#x}, {:#x}) gsi {}",
                d.device_id,
                VirtioMmioDevice::acpi_name(n),
                d.base,
                d.base + d.len_bytes,
                d.gsi
            );
        }
        Ok(self.linux.insert(guest))
    }

    /// The loaded Linux guest, if any.
    pub fn linux(&self) -> Option<&LinuxGuest> {
        self.linux.as_ref()
    }

    /// The ACPI tables a Linux guest gets for the virtio devices added so far (what
    /// [`Self::load_linux`] writes; for `vmm run --dump-acpi` and tests).
    pub fn acpi_tables(&self) -> Result<linux::AcpiTables> {
        linux::AcpiTables::build(&self.virtio_windows)
    }

    /// The virtio devices' register windows and interrupts, in slot order.
    pub fn virtio_windows(&self) -> &[VirtioMmioDevice] {
        &self.virtio_windows
    }

    /// The port I/O bus (Linux guests), to place more devices on it before running.
    pub fn pio_bus_mut(&mut self) -> &mut MmioBus {
        &mut self.pio
    }

    /// Loads a static ELF payload and points the vCPU at its entry.
    pub fn load_payload(&mut self, elf: &[u8]) -> Result<&LoadedImage> {
        let ram_end = self.ram.size_bytes();
        let image = load_elf(
            self.ram.memory(),
            elf,
            PAYLOAD_LOAD_ADDR..ram_end - STACK_RESERVE_BYTES,
        )?;
        let regs = x86::entry_regs(image.entry, ram_end, ram_end, self.payload_arg);
        self.vcpu
            .set_regs(&regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        log::debug!(
            "payload loaded: entry {:#x}, {} segments up to {:#x}",
            image.entry,
            image.segments.len(),
            image.end()
        );
        Ok(self.image.insert(image))
    }

    /// Changes the argument handed to the payload in `rsi` by the next [`Self::load_payload`]
    /// (e.g. an address known only after mapping a grant).
    pub fn set_payload_arg(&mut self, arg: u64) {
        self.payload_arg = arg;
    }

    /// The loaded payload, if any.
    pub fn image(&self) -> Option<&LoadedImage> {
        self.image.as_ref()
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM handle (for adding memory slots, ioeventfds, irqfds).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The KVM VM handle, shared (for irqfds and ioeventfds owned by other threads; drop them
    /// before or with the VM, or they keep it alive).
    pub fn shared_vm_fd(&self) -> Arc<VmFd> {
        self.vm.clone()
    }

    /// Where the grant window lies, if the VM has one.
    pub fn grant_window_range(&self) -> Option<WindowRange> {
        self.grant_space.as_ref().map(GrantSpace::range)
    }

    /// The grant window's host range, when grants are mapped into one memory slot
    /// ([`GrantMapping::OneSlot`]): where a vhost-user gcma device maps the daemon's grants.
    pub fn grant_host_window(&self) -> Option<Arc<balloon::gcma::HostWindow>> {
        match &self.grant_space {
            Some(GrantSpace::OneSlot(w)) => Some(w.host().clone()),
            _ => None,
        }
    }

    /// The grant window bound to `pool`, for this VM's virtio-gcma device: grants come from
    /// `pool` and appear in the window. Bind it once.
    pub fn bind_grant_window(&self, pool: Arc<dyn GcmaBackend>) -> Result<Arc<GrantWindow>> {
        match &self.grant_space {
            None => Err(Error::Config("the VM has no grant window".into())),
            Some(GrantSpace::OneSlot(w)) => w.bind(pool),
            Some(GrantSpace::SlotPerGrant { range, first_slot }) => {
                let mapper = SlotPerGrant::new(
                    self.vm.clone(),
                    *range,
                    pool.memfd(),
                    pool.nr_pages() * crate::abi::PAGE_SIZE,
                    *first_slot,
                    self.max_memslots,
                )
                .map_err(|source| Error::Io {
                    op: "mapping the pool for per-grant memory slots",
                    source,
                })?;
                let window = GrantWindow::new(*range, pool, Arc::new(mapper))
                    .map_err(|e| Error::Config(e.to_string()))?;
                Ok(Arc::new(window))
            }
        }
    }

    /// The MMIO bus, to place more devices on it before running.
    pub fn bus_mut(&mut self) -> &mut MmioBus {
        &mut self.bus
    }

    /// Places a virtio device behind a virtio-mmio transport in the next free slot: slot `n` has
    /// its registers at `VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE` and interrupt
    /// `FIRST_VIRTIO_GSI + n`. Payloads find devices by probing the slots for the magic value;
    /// a Linux guest from the DSDT, and its interrupts arrive through an irqfd on that GSI.
    pub fn add_virtio_device<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<VirtioSlot<D>> {
        let n = self.virtio_devices;
        if n >= MAX_VIRTIO_DEVICES {
            return Err(Error::Config(format!(
                "at most {MAX_VIRTIO_DEVICES} virtio devices per microVM"
            )));
        }
        let base = VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE;
        let gsi = FIRST_VIRTIO_GSI + n;
        let irq = Arc::new(PolledIrq::with_doorbell(gsi, self.doorbell.clone()));
        let device_id = device.device_id();
        let line: Arc<dyn balloon::transport::IrqLine> = match self.kind {
            GuestKind::Payload => irq.clone(),
            GuestKind::Linux => {
                if gsi >= linux::layout::IOAPIC_PINS {
                    return Err(Error::Config(format!(
                        "a Linux guest has interrupts for {} virtio devices (IOAPIC pins {FIRST_VIRTIO_GSI}-{})",
                        linux::layout::IOAPIC_PINS - FIRST_VIRTIO_GSI,
                        linux::layout::IOAPIC_PINS - 1
                    )));
                }
                let irqfd = IrqfdLine::new(self.vm.clone(), gsi)?;
                Arc::new(linux::irq::SlotIrq::new(irq.clone(), irqfd))
            }
        };
        let mem = Arc::new(self.ram.memory().clone());
        let mut transport = MmioTransport::new(device, mem, line);
        transport.set_log_limiter(self.logs.clone());
        transport.set_requests_per_notify(self.limits.requests_per_notify);
        transport.set_pending_signal(self.deferred.flag());
        let transport = Arc::new(Mutex::new(transport));
        self.deferred.add(transport.clone());
        let shared: SharedMmioDevice = transport.clone();
        self.bus.insert(base, VIRTIO_MMIO_SIZE, shared)?;
        self.virtio_devices += 1;
        self.virtio_windows.push(VirtioMmioDevice {
            base,
            len_bytes: VIRTIO_MMIO_SIZE,
            gsi,
            device_id,
        });
        log::debug!("virtio device in slot {n} at {base:#x}, gsi {}", irq.gsi());
        Ok(VirtioSlot {
            base,
            irq,
            transport,
        })
    }

    /// Exit counts so far.
    pub fn stats(&self) -> ExitStats {
        self.stats.snapshot()
    }

    /// The live exit counters, readable from other threads while [`Self::run`] runs.
    pub fn exit_counters(&self) -> Arc<ExitCounters> {
        self.stats.clone()
    }

    /// A handle that stops [`Self::run`] from another thread (control API, timeouts).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            state: self.run_state.clone(),
        }
    }

    /// Runs the vCPU on the calling thread until the guest exits (or powers off), faults or
    /// halts, KVM cannot go on, or a [`StopHandle`] stops it.
    pub fn run(&mut self) -> Result<VmOutcome> {
        if self.image.is_none() && self.linux.is_none() {
            return Err(Error::NoPayload);
        }
        install_kick_handler()?;
        let immediate_exit: *mut u8 = &mut self.vcpu.get_kvm_run().immediate_exit;
        KICK_TARGET.with(|t| t.set(immediate_exit));
        // SAFETY: pthread_self has no preconditions.
        *lock_state(&self.run_state) = Some(unsafe { libc::pthread_self() });
        let result = self.run_loop();
        self.deferred.finish();
        *lock_state(&self.run_state) = None;
        KICK_TARGET.with(|t| t.set(std::ptr::null_mut()));
        self.vcpu.set_kvm_immediate_exit(0);
        result
    }

    fn run_loop(&mut self) -> Result<VmOutcome> {
        let window = self.grant_window_range();
        loop {
            if self.run_state.stop.swap(false, Ordering::AcqRel) {
                return Ok(VmOutcome::Stopped { rip: self.rip()? });
            }
            self.deferred.before_run(kick_signal())?;
            let stop = {
                let exit = self.vcpu.run();
                match exit {
                    Ok(VcpuExit::MmioWrite(addr, _)) | Ok(VcpuExit::MmioRead(addr, _))
                        if window.is_some_and(|w| addr >= w.gpa && addr - w.gpa < w.len_bytes) =>
                    {
                        Some(Stop::MemoryFault(Some(addr)))
                    }
                    Ok(VcpuExit::MemoryFault { gpa, .. }) => Some(Stop::MemoryFault(Some(gpa))),
                    Ok(VcpuExit::MmioWrite(addr, data)) => {
                        if self.bus.write(addr, data) {
                            ExitCounters::bump(&self.stats.mmio_writes);
                        } else {
                            ExitCounters::bump(&self.stats.mmio_unclaimed);
                            log::debug!(
                                "unclaimed MMIO write of {} bytes at {addr:#x}",
                                data.len()
                            );
                        }
                        self.exit_latch
                            .take()
                            .map(|code| Stop::Outcome(VmOutcome::Exited { code }))
                    }
                    Ok(VcpuExit::MmioRead(addr, data)) => {
                        if self.bus.read(addr, data) {
                            ExitCounters::bump(&self.stats.mmio_reads);
                        } else {
                            ExitCounters::bump(&self.stats.mmio_unclaimed);
                            log::debug!("unclaimed MMIO read of {} bytes at {addr:#x}", data.len());
                        }
                        None
                    }
                    Ok(VcpuExit::IoOut(port, data)) => {
                        ExitCounters::bump(&self.stats.port_io);
                        log::trace!("port write {port:#x} {data:x?}");
                        for (at, chunk) in port_accesses(port, data.len()) {
                            self.pio.write(at, &data[chunk]);
                        }
                        self.exit_latch
                            .take()
                            .map(|code| Stop::Outcome(VmOutcome::Exited { code }))
                    }
                    Ok(VcpuExit::IoIn(port, data)) => {
                        ExitCounters::bump(&self.stats.port_io);
                        for (at, chunk) in port_accesses(port, data.len()) {
                            let d = &mut data[chunk];
                            if !self.pio.read(at, d) {
                                // Nothing decodes the port: the bus floats high, as on a PC.
                                d.fill(0xff);
                            }
                        }
                        log::trace!("port read {port:#x} -> {data:x?}");
                        None
                    }
                    Ok(VcpuExit::InternalError) => Some(Stop::InternalError),
                    Ok(VcpuExit::Intr) => Some(Stop::Interrupted),
                    Ok(VcpuExit::Hlt) => Some(Stop::Halt),
                    Ok(VcpuExit::Shutdown) => Some(Stop::Shutdown),
                    Ok(other) => Some(Stop::Unhandled(format!("{other:?}"))),
                    Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                        Some(Stop::Interrupted)
                    }
                    // Memory behind a slot that KVM could not fault in (an unmapped part of the
                    // grant window), reported without the address: kvm-pvm, and hardware KVM
                    // before 6.8 (KVM_CAP_MEMORY_FAULT_INFO).
                    Err(e) if e.errno() == libc::EFAULT => Some(Stop::MemoryFault(None)),
                    Err(source) => {
                        return Err(Error::Kvm {
                            op: "KVM_RUN",
                            source,
                        })
                    }
                }
            };
            let Some(stop) = stop else { continue };
            if let Stop::Interrupted = stop {
                // A signal (the kick, or any other) ended KVM_RUN; the kick handler may have set
                // immediate_exit, which must be cleared or every later KVM_RUN returns at once.
                ExitCounters::bump(&self.stats.interrupted);
                self.vcpu.set_kvm_immediate_exit(0);
                // The timer of leftover queue work (or any signal): serve its next turn.
                self.deferred.after_interrupt();
                continue;
            }
            return match stop {
                Stop::Outcome(outcome) => Ok(outcome),
                Stop::Halt => Ok(VmOutcome::Halted { rip: self.rip()? }),
                Stop::Shutdown => {
                    let rip = self.rip()?;
                    log::info!("guest fault (triple fault / shutdown) at rip {rip:#x}");
                    Ok(VmOutcome::Shutdown { rip })
                }
                Stop::Interrupted => continue,
                Stop::MemoryFault(gpa) => {
                    let rip = self.rip()?;
                    match gpa {
                        Some(gpa) => log::info!(
                            "guest touched unbacked memory at gpa {gpa:#x} (rip {rip:#x})"
                        ),
                        None => log::info!("guest touched unbacked memory (rip {rip:#x})"),
                    }
                    Ok(VmOutcome::MemoryFault { gpa, rip })
                }
                Stop::InternalError => {
                    let rip = self.rip()?;
                    let (suberror, kvm_insn) = self.internal_error();
                    let insn = kvm_insn
                        .unwrap_or_else(|| insn::bytes_at_rip(&self.vcpu, self.ram.memory(), rip));
                    log::info!(
                        "KVM internal error {suberror} at rip {rip:#x}, instruction bytes {insn}"
                    );
                    Ok(VmOutcome::EmulationFailure {
                        suberror,
                        rip,
                        insn,
                    })
                }
                Stop::Unhandled(reason) => Err(Error::UnhandledExit {
                    reason,
                    rip: self.rip().unwrap_or(0),
                }),
            };
        }
    }

    /// The suberror of the last `KVM_EXIT_INTERNAL_ERROR` and the instruction bytes, when KVM
    /// provided them (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`).
    fn internal_error(&mut self) -> (u32, Option<InsnBytes>) {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
        // `internal` member of the union; `emulation_failure` overlays it with the layout KVM
        // uses for suberror 1, and both are plain integers (any bit pattern is valid).
        let (suberror, ndata, flags, insn) = unsafe {
            let e = &run.__bindgen_anon_1.emulation_failure;
            let b = &e.__bindgen_anon_1.__bindgen_anon_1;
            (e.suberror, e.ndata, e.flags, (b.insn_size, b.insn_bytes))
        };
        let has_bytes = suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
            && ndata >= 3
            && flags & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                != 0
            && insn.0 > 0;
        let bytes =
            has_bytes.then(|| InsnBytes::new(&insn.1[..usize::from(insn.0).min(insn.1.len())]));
        (suberror, bytes)
    }

    fn rip(&self) -> Result<u64> {
        Ok(self
            .vcpu
            .get_regs()
            .map_err(Error::kvm("KVM_GET_REGS"))?
            .rip)
    }
}

enum Stop {
    Outcome(VmOutcome),
    Interrupted,
    Halt,
    Shutdown,
    MemoryFault(Option<u64>),
    InternalError,
    Unhandled(String),
}

/// Splits a port I/O exit of `len` bytes into device accesses: one access for 1, 2 or 4 bytes;
/// byte by byte for string I/O (`rep ins/outs`, where KVM hands over several items at once; the
/// port devices here are byte-wide).
fn port_accesses(port: u16, len: usize) -> Vec<(u64, std::ops::Range<usize>)> {
    match len {
        1 | 2 | 4 => vec![(u64::from(port), 0..len)],
        _ => (0..len).map(|i| (u64::from(port), i..i + 1)).collect(),
    }
}

/// Shared between a running [`MicroVm`] and its [`StopHandle`]s.
#[derive(Debug, Default)]
struct RunState {
    /// A stop was requested and not yet reported by `run`.
    stop: AtomicBool,
    /// The thread inside `run`, if any. Held locked while signalling it, so the thread cannot
    /// leave `run` (and possibly exit) in between.
    thread: Mutex<Option<libc::pthread_t>>,
}

fn lock_state(state: &RunState) -> MutexGuard<'_, Option<libc::pthread_t>> {
    state.thread.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops a [`MicroVm`]'s `run` from another thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct StopHandle {
    state: Arc<RunState>,
}

impl StopHandle {
    /// A handle tied to no VM: stopping it does nothing (for code that takes a handle, tested
    /// without a VM).
    pub fn detached() -> StopHandle {
        StopHandle {
            state: Arc::default(),
        }
    }

    /// Asks the VM to stop: `run` returns [`VmOutcome::Stopped`] promptly (at once if the guest
    /// is between exits, else after the kick signal interrupts `KVM_RUN`). When the VM is not
    /// running, its next `run` returns `Stopped` without entering the guest.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::Release);
        let thread = lock_state(&self.state);
        if let Some(tid) = *thread {
            // SAFETY: `tid` is the thread inside `run`; it cannot leave `run` while we hold the
            // lock, so it is alive. The kick signal's handler is installed before `run` records it.
            unsafe { libc::pthread_kill(tid, kick_signal()) };
        }
    }
}

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU this thread is running, for the kick handler.
    static KICK_TARGET: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Setting immediate_exit closes the race with a signal that lands just before KVM_RUN: the
    // ioctl then returns EINTR at once instead of entering the guest.
    KICK_TARGET.with(|t| {
        let p = t.get();
        if !p.is_null() {
            // SAFETY: set by `run` on this thread to its vCPU's kvm_run mapping, which lives at
            // least until `run` clears the pointer again.
            unsafe { p.write_volatile(1) };
        }
    });
}

fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<i32> = OnceLock::new();
    let rc = *INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; we fill handler and flags. No SA_RESTART, so
        // KVM_RUN returns EINTR. The handler only touches a const-initialised thread-local and
        // the kvm_run byte, which is async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = kick_handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(kick_signal(), &act, std::ptr::null_mut())
        }
    });
    if rc != 0 {
        return Err(Error::Io {
            op: "installing the vCPU kick signal handler",
            source: std::io::Error::other("sigaction failed"),
        });
    }
    Ok(())
}
