//! The driver's error type (`no_std`: `Display` and `core::error::Error` by hand).

use core::fmt;

use gcma_proto::gcma::{status, Response};

/// What went wrong talking to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `MagicValue` or `Version` is not virtio-mmio version 2.
    NotVirtioMmio {
        /// `MagicValue` read.
        magic: u32,
        /// `Version` read.
        version: u32,
    },
    /// The device is not virtio-gcma.
    WrongDevice(u32),
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    LegacyDevice,
    /// The device cleared `FEATURES_OK`: it refused the features.
    FeaturesRefused(u64),
    /// A queue is missing, already live, or too small.
    QueueUnavailable(u16),
    /// The HAL ran out of DMA memory.
    DmaExhausted(usize),
    /// The device set `DEVICE_NEEDS_RESET`; call [`crate::GcmaDriver::recover`].
    DeviceNeedsReset,
    /// The device was reset under the driver (status lost `DRIVER_OK`); everything it held for
    /// this guest is gone. Call [`crate::GcmaDriver::recover`].
    DeviceReset,
    /// The device did not return a request within the poll budget.
    Timeout,
    /// A previous failure left the queues in an unknown state; call
    /// [`crate::GcmaDriver::recover`].
    NotReady,
    /// The device returned a chain without a response, a used element naming no request, or a
    /// grant outside its window.
    Protocol,
    /// A page buffer is not exactly one page, or a stats buffer not a multiple of 16 bytes.
    BadBuffer,
    /// The device answered with a failure status.
    Status(Response),
    /// A frontswap page the device accepted is missing on load (the device broke its promise).
    FrontswapLost {
        /// Swap area.
        area: u32,
        /// Page offset.
        offset: u64,
    },
    /// A frontswap offset beyond what the client tracks ([`crate::clients::MAX_SWAP_OFFSET`]).
    OffsetTooLarge(u64),
    /// The device was reset since these frontswap pages were stored: they are gone.
    FrontswapReset {
        /// Pages the client had stored.
        lost_pages: u64,
    },
}

impl Error {
    /// The device status code, if this is a status error.
    pub fn status(&self) -> Option<u32> {
        match self {
            Error::Status(r) => Some(r.status),
            _ => None,
        }
    }

    /// Whether the driver must [`recover`](crate::GcmaDriver::recover) before the next request.
    pub fn needs_recovery(&self) -> bool {
        matches!(
            self,
            Error::DeviceNeedsReset
                | Error::DeviceReset
                | Error::Timeout
                | Error::NotReady
                | Error::Protocol
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotVirtioMmio { magic, version } => {
                write!(
                    f,
                    "not virtio-mmio v2 (magic {magic:#x}, version {version})"
                )
            }
            Error::WrongDevice(id) => write!(f, "device id {id:#x} is not virtio-gcma"),
            Error::LegacyDevice => f.write_str("device does not offer VIRTIO_F_VERSION_1"),
            Error::FeaturesRefused(x) => write!(f, "device refused features {x:#x}"),
            Error::QueueUnavailable(q) => write!(f, "queue {q} unavailable"),
            Error::DmaExhausted(p) => write!(f, "no DMA memory for {p} pages"),
            Error::DeviceNeedsReset => f.write_str("device needs a reset"),
            Error::DeviceReset => f.write_str("device was reset"),
            Error::Timeout => f.write_str("device did not answer"),
            Error::NotReady => f.write_str("driver must recover first"),
            Error::Protocol => f.write_str("device broke the protocol"),
            Error::BadBuffer => f.write_str("buffer of the wrong size"),
            Error::Status(r) => write!(
                f,
                "device answered {} ({}, {})",
                status::name(r.status),
                r.value0,
                r.value1
            ),
            Error::FrontswapLost { area, offset } => {
                write!(f, "frontswap page {area}:{offset} lost by the device")
            }
            Error::OffsetTooLarge(o) => write!(f, "frontswap offset {o} too large"),
            Error::FrontswapReset { lost_pages } => {
                write!(f, "device reset dropped {lost_pages} frontswap pages")
            }
        }
    }
}

impl core::error::Error for Error {}
