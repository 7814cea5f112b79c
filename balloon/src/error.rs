//! Error types of the host-side device models.

use vm_memory::GuestAddress;

/// Why a descriptor chain (or the ring that holds it) was rejected.
///
/// Structural faults (the ring itself is broken) make the device set `DEVICE_NEEDS_RESET`;
/// faults confined to one chain's buffers are answered by returning that chain unused.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index (head or `next`) is not below the queue size.
    #[error("descriptor index {index} out of range for queue size {size}")]
    IndexOutOfRange {
        /// The offending index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// Following `next` links visited more descriptors than the queue holds (a loop).
    #[error("descriptor chain longer than the queue size {size} (loop?)")]
    TooLong {
        /// The queue size.
        size: u16,
    },
    /// A descriptor uses `VIRTQ_DESC_F_INDIRECT`, which this device does not offer.
    #[error("indirect descriptor used but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BufferOutOfRange {
        /// Guest-physical start of the buffer.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// The ring memory itself could not be read or written.
    #[error("ring access at {0:?} failed")]
    RingAccess(GuestAddress),
    /// virtio-queue reported an error on the available or used ring.
    #[error("virtqueue error")]
    Queue(#[from] virtio_queue::Error),
    /// Signalling used buffers to the guest failed.
    #[error("interrupt delivery failed")]
    Interrupt(#[source] std::io::Error),
}

impl ChainError {
    /// Whether the fault breaks the ring as a whole (the device must ask for a reset) rather than
    /// just one chain.
    pub fn is_structural(&self) -> bool {
        !matches!(self, ChainError::BufferOutOfRange { .. })
    }
}

/// Errors a device reports to its transport. Any of them puts the device into
/// `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A queue the device requires was not set up by the driver.
    #[error("queue {0} is required but was not made ready")]
    QueueNotReady(u16),
    /// The driver handed the device fewer queues than the negotiated features need.
    #[error("device needs {needed} queues, driver set up {got}")]
    MissingQueues {
        /// How many queues the negotiated features require.
        needed: usize,
        /// How many were handed over.
        got: usize,
    },
    /// A queue index the device does not have.
    #[error("queue index {0} does not exist")]
    NoSuchQueue(u16),
    /// The device was notified before it was activated.
    #[error("device not activated")]
    NotActivated,
    /// The ring is broken beyond a single chain.
    #[error("broken virtqueue {queue}: {source}")]
    BrokenRing {
        /// Queue index.
        queue: u16,
        /// The underlying fault.
        #[source]
        source: ChainError,
    },
    /// Signalling the guest failed.
    #[error("interrupt delivery failed: {0}")]
    Interrupt(#[from] std::io::Error),
    /// The device's backend (another process serving it, e.g. over vhost-user) failed or is gone.
    #[error("device backend: {0}")]
    Backend(String),
}

/// Errors from releasing host memory behind guest pages.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The guest-physical range is not (entirely) inside one guest memory region.
    #[error("range {gpa:#x}+{len:#x} is not inside guest memory")]
    OutOfRange {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `madvise` or `fallocate` failed.
    #[error("{call} failed on {gpa:#x}+{len:#x}: {source}")]
    Syscall {
        /// Which call failed.
        call: &'static str,
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
