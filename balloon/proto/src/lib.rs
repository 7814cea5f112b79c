//! What the host and its guests must agree on, defined once: `no_std`, no dependencies, no
//! `unsafe`, so that the pool, the devices, the VMM, the guest agent and kernel-less payloads all
//! build on the same constants.
//!
//! * [`PAGE_SIZE`]: the page of the pool, of grants and of every cleancache/frontswap page.
//! * [`virtio_mmio`]: the virtio-mmio (version 2) register layout, status and feature bits.
//! * [`virtq`]: split-virtqueue descriptor and ring flags.
//! * [`gcma`]: the virtio-gcma wire format (`balloon/PROTOCOL.md` is its prose version).

#![no_std]
#![deny(missing_docs)]

/// Size of a pool page, of the unit of grants, and of every cleancache and frontswap page, in
/// bytes (the x86-64 base page).
pub const PAGE_SIZE: usize = 4096;

pub mod gcma;
pub mod virtio_mmio;
pub mod virtq;
