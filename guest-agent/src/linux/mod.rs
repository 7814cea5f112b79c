//! The Linux userspace side of the guest agent (feature `std`, Linux only): what the
//! `guest-agent` binary needs to drive a virtio-gcma device from a root process in a real guest.
//!
//! * [`discovery`]: find virtio-mmio devices (`--device` flag, kernel command line, sysfs,
//!   `/proc/iomem`), as pure parsers plus a scan over a root directory;
//! * [`regs`]: the register window seam ([`regs::RegisterWindow`]), `/dev/mem` mapping, and the
//!   identity probe (magic "virt", version 2, device id `VIRTIO_ID_GCMA`);
//! * [`device`]: discovery + optional unbinding of the kernel driver + mapping, in one call;
//! * [`locate`]: map and probe each candidate, keep the gcma device or say what was found;
//! * [`dma`]: locked DMA memory (hugetlb first) translated with `/proc/self/pagemap`;
//! * [`hal`]: the driver core's `Hal` over a register window and a DMA page source;
//! * [`agent`]: what the subcommands do (alloc, free, stats, bench) over the driver core on
//!   any `Hal`, and a driver wrapper that resets the device when dropped;
//! * [`control`], [`serve`]: the line protocol and Unix-socket server of `guest-agent serve`.
//!
//! None of this runs inside a real Linux guest on the development machines (no Linux guest boots
//! under nested kvm-pvm); the repository README says what is verified where.

pub mod agent;
pub mod control;
pub mod device;
pub mod discovery;
pub mod dma;
pub mod hal;
pub mod locate;
pub mod regs;
pub mod serve;

pub use dma::page_size;
