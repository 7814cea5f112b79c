//! Counters of one virtio-blk disk, owned by the disk (shared by its queues) and read by
//! exporters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A request type as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqType {
    /// `VIRTIO_BLK_T_IN`.
    In = 0,
    /// `VIRTIO_BLK_T_OUT`.
    Out = 1,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush = 2,
    /// `VIRTIO_BLK_T_GET_ID`.
    GetId = 3,
    /// `VIRTIO_BLK_T_DISCARD`.
    Discard = 4,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    WriteZeroes = 5,
    /// Anything else (answered `UNSUPP`), or a header too short to say.
    Other = 6,
}

impl ReqType {
    /// Every type, in counter order.
    pub const ALL: [ReqType; 7] = [
        ReqType::In,
        ReqType::Out,
        ReqType::Flush,
        ReqType::GetId,
        ReqType::Discard,
        ReqType::WriteZeroes,
        ReqType::Other,
    ];

    /// A short lower-case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ReqType::In => "in",
            ReqType::Out => "out",
            ReqType::Flush => "flush",
            ReqType::GetId => "get_id",
            ReqType::Discard => "discard",
            ReqType::WriteZeroes => "write_zeroes",
            ReqType::Other => "other",
        }
    }
}

/// The status a request was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqStatus {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupp = 2,
}

impl ReqStatus {
    /// Every status, in counter order.
    pub const ALL: [ReqStatus; 3] = [ReqStatus::Ok, ReqStatus::IoErr, ReqStatus::Unsupp];

    /// A short lower-case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ReqStatus::Ok => "ok",
            ReqStatus::IoErr => "ioerr",
            ReqStatus::Unsupp => "unsupp",
        }
    }
}

const NR_TYPES: usize = ReqType::ALL.len();
const NR_STATUS: usize = ReqStatus::ALL.len();

/// Live counters of one disk. All monotonic.
#[derive(Debug, Default)]
pub struct BlkMetrics {
    requests: [[AtomicU64; NR_STATUS]; NR_TYPES],
    busy_ns: [AtomicU64; NR_TYPES],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    bytes_discarded: AtomicU64,
    bytes_zeroed: AtomicU64,
    unanswerable: AtomicU64,
    broken_rings: AtomicU64,
    guest_errors: AtomicU64,
    budget_exhausted: AtomicU64,
}

/// A copy of [`BlkMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkCounters {
    /// Requests answered, `[type][status]` in [`ReqType::ALL`] and [`ReqStatus::ALL`] order.
    pub requests: [[u64; NR_STATUS]; NR_TYPES],
    /// Host time spent answering requests of each type, in nanoseconds (from taking the chain to
    /// having its answer ready).
    pub busy_ns: [u64; NR_TYPES],
    /// Bytes returned by successful reads.
    pub bytes_read: u64,
    /// Bytes taken by successful writes.
    pub bytes_written: u64,
    /// Bytes discarded.
    pub bytes_discarded: u64,
    /// Bytes zeroed by WRITE_ZEROES.
    pub bytes_zeroed: u64,
    /// Chains returned unused (a buffer outside guest memory, or no byte for the status).
    pub unanswerable: u64,
    /// Rings found broken (the device needs a reset).
    pub broken_rings: u64,
    /// Requests answered `IOERR` or `UNSUPP` because of what the guest sent (not because the
    /// storage failed).
    pub guest_errors: u64,
    /// Times a queue's worker stopped after its per-turn budget of chains with chains possibly
    /// left, and came back later (see [`super::BlkQueue::process_queue`]).
    pub budget_exhausted: u64,
}

impl BlkCounters {
    /// Requests of `ty` answered with any status.
    pub fn requests_of(&self, ty: ReqType) -> u64 {
        self.requests[ty as usize].iter().sum()
    }

    /// Requests of `ty` answered with `status`.
    pub fn count(&self, ty: ReqType, status: ReqStatus) -> u64 {
        self.requests[ty as usize][status as usize]
    }
}

impl BlkMetrics {
    /// A copy of every counter.
    pub fn snapshot(&self) -> BlkCounters {
        let g = |a: &AtomicU64| a.load(Relaxed);
        BlkCounters {
            requests: std::array::from_fn(|t| std::array::from_fn(|s| g(&self.requests[t][s]))),
            busy_ns: std::array::from_fn(|t| g(&self.busy_ns[t])),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            bytes_discarded: g(&self.bytes_discarded),
            bytes_zeroed: g(&self.bytes_zeroed),
            unanswerable: g(&self.unanswerable),
            broken_rings: g(&self.broken_rings),
            guest_errors: g(&self.guest_errors),
            budget_exhausted: g(&self.budget_exhausted),
        }
    }

    pub(super) fn record(&self, ty: ReqType, status: ReqStatus, took: Duration) {
        self.requests[ty as usize][status as usize].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns[ty as usize].fetch_add(ns, Relaxed);
    }

    pub(super) fn moved(&self, ty: ReqType, bytes: u64) {
        let c = match ty {
            ReqType::In => &self.bytes_read,
            ReqType::Out => &self.bytes_written,
            ReqType::Discard => &self.bytes_discarded,
            ReqType::WriteZeroes => &self.bytes_zeroed,
            _ => return,
        };
        c.fetch_add(bytes, Relaxed);
    }

    /// Counts a guest error; returns the new count (for rate-limited logging).
    pub(super) fn guest_error(&self) -> u64 {
        self.guest_errors.fetch_add(1, Relaxed) + 1
    }

    pub(super) fn unanswerable(&self) -> u64 {
        self.unanswerable.fetch_add(1, Relaxed) + 1
    }

    pub(super) fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Relaxed);
    }

    pub(super) fn broken_ring(&self) -> u64 {
        self.broken_rings.fetch_add(1, Relaxed) + 1
    }
}
