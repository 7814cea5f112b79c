//! The crate's error type.

use std::io;

use crate::kvm::bus::BusError;
use crate::kvm::loader::LoadError;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while setting up or running a microVM.
///
/// Guest misbehaviour (a fault, an exit code) is not an error: it is a [`crate::VmOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` does not exist.
    #[error("{path} does not exist: KVM is not available (load kvm_intel/kvm_amd or run on a host with virtualization)")]
    KvmNotFound {
        /// The device path tried.
        path: String,
    },
    /// `/dev/kvm` exists but may not be opened by this user.
    #[error("permission denied opening {path}: add this user to the group owning it (usually `kvm`) or adjust its mode")]
    KvmPermissionDenied {
        /// The device path tried.
        path: String,
    },
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open {path}: {source}")]
    KvmOpen {
        /// The device path tried.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel speaks a KVM API version this VMM does not.
    #[error("KVM API version {found} is not supported (expected {expected})")]
    KvmApiVersion {
        /// What `KVM_GET_API_VERSION` returned.
        found: i32,
        /// The version this VMM is written for.
        expected: i32,
    },
    /// A KVM capability the VMM relies on is missing.
    #[error("KVM lacks the required capability {0}")]
    KvmMissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation that failed.
        op: &'static str,
        /// The error the kernel returned.
        source: kvm_ioctls::Error,
    },
    /// The host cannot back memory with the huge pages asked for (names the host knob).
    #[error(transparent)]
    HugePages(#[from] gcma_host::huge::HugePageError),
    /// Guest memory could not be created or configured.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A host I/O operation failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The VM configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The payload image could not be loaded.
    #[error("loading the payload: {0}")]
    Load(#[from] LoadError),
    /// A Linux kernel could not be loaded.
    #[error(transparent)]
    Linux(#[from] crate::kvm::linux::LinuxBootError),
    /// A device could not be placed on the bus.
    #[error("MMIO bus: {0}")]
    Bus(#[from] BusError),
    /// Notification or interrupt plumbing (ioeventfd, irqfd, the device thread) failed.
    #[error("device events: {0}")]
    Events(#[from] crate::kvm::events::EventsError),
    /// The vhost-user gcma device (`gcma-hostd`) could not be attached.
    #[error("virtio-gcma over vhost-user")]
    VhostGcma(#[from] crate::devices::vhost_gcma::VhostGcmaError),
    /// `run` was called before a payload or kernel was loaded.
    #[error("no payload or kernel loaded")]
    NoPayload,
    /// The thread a vCPU runs on could not be started.
    #[error("cannot start the vCPU thread {name}")]
    VcpuThread {
        /// The thread's name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The thread a vCPU ran on panicked (the panic message was printed where it happened).
    #[error("the vCPU thread {name} panicked")]
    VcpuPanicked {
        /// The thread's name.
        name: String,
    },
    /// A thread could not enter its seccomp filter.
    #[error("seccomp")]
    Seccomp(#[source] gcma_seccomp::SeccompError),
    /// KVM reported an exit the VMM cannot continue from.
    #[error("vCPU stopped with an unhandled exit: {reason} (rip {rip:#x})")]
    UnhandledExit {
        /// The exit reason, as KVM named it.
        reason: String,
        /// Guest instruction pointer when it happened, if it could be read.
        rip: u64,
    },
}

impl Error {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}
