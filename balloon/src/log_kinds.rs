//! The kinds of log lines a guest can trigger in this crate. Each line goes through the VM's
//! [`LogLimiter`](gcma_host::log_limit::LogLimiter) under one of these kinds, so that a guest
//! repeating an event in a loop gets at most the limiter's rate of lines into the host's log; the
//! rest are counted per kind (the VMM exports them as `vmm_guest_log_suppressed_lines_total`).

/// The device entered `DEVICE_NEEDS_RESET` (broken ring, failed activation).
pub const MMIO_NEEDS_RESET: &str = "virtio_mmio_needs_reset";
/// The driver set `FAILED`.
pub const MMIO_DRIVER_FAILED: &str = "virtio_mmio_driver_failed";
/// `FEATURES_OK` was refused.
pub const MMIO_FEATURES_REFUSED: &str = "virtio_mmio_features_refused";
/// A register write broke the specification and was ignored.
pub const MMIO_IGNORED_WRITE: &str = "virtio_mmio_ignored_write";
/// A register access of the wrong size or to an unknown register.
pub const MMIO_BAD_ACCESS: &str = "virtio_mmio_bad_access";
/// Raising the guest's interrupt failed.
pub const MMIO_INTERRUPT_FAILED: &str = "virtio_mmio_interrupt_failed";
/// virtio-gcma: a chain with a buffer outside guest memory.
pub const GCMA_REJECTED_CHAIN: &str = "gcma_rejected_chain";
/// virtio-gcma: mapping or unmapping a grant failed.
pub const GCMA_MAP_FAILED: &str = "gcma_map_failed";
/// virtio-gcma: the pool failed a request with a host error.
pub const GCMA_POOL_ERROR: &str = "gcma_pool_error";
/// virtio-balloon: a chain with a buffer outside guest memory.
pub const BALLOON_REJECTED_CHAIN: &str = "balloon_rejected_chain";
/// virtio-balloon: a malformed PFN list, stats or report chain.
pub const BALLOON_MALFORMED_CHAIN: &str = "balloon_malformed_chain";
/// virtio-balloon: page frame numbers outside guest memory.
pub const BALLOON_BAD_PFNS: &str = "balloon_bad_pfns";
/// virtio-balloon: releasing host memory failed.
pub const BALLOON_RELEASE_FAILED: &str = "balloon_release_failed";

/// virtio-blk: a broken ring (the disk needs a reset).
pub const BLK_BROKEN_RING: &str = "blk_broken_ring";
/// virtio-blk: a chain that cannot be answered (no status byte, outside guest memory).
pub const BLK_UNANSWERABLE: &str = "blk_unanswerable_chain";
/// virtio-blk: a malformed or out-of-range request, answered with an error status.
pub const BLK_REFUSED: &str = "blk_request_refused";
/// virtio-blk: the storage failed a request.
pub const BLK_IO_FAILED: &str = "blk_io_failed";

/// The virtio-blk kinds, for a disk's limiter (`BlkQueue::set_log_limiter`).
pub const ALL_BLK: &[&str] = &[
    BLK_BROKEN_RING,
    BLK_UNANSWERABLE,
    BLK_REFUSED,
    BLK_IO_FAILED,
];

/// Every virtio-mmio, virtio-gcma and virtio-balloon kind above, to declare them with the limiter so that their counts show from the start.
pub const ALL: &[&str] = &[
    MMIO_NEEDS_RESET,
    MMIO_DRIVER_FAILED,
    MMIO_FEATURES_REFUSED,
    MMIO_IGNORED_WRITE,
    MMIO_BAD_ACCESS,
    MMIO_INTERRUPT_FAILED,
    GCMA_REJECTED_CHAIN,
    GCMA_MAP_FAILED,
    GCMA_POOL_ERROR,
    BALLOON_REJECTED_CHAIN,
    BALLOON_MALFORMED_CHAIN,
    BALLOON_BAD_PFNS,
    BALLOON_RELEASE_FAILED,
];
