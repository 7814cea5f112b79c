//! virtio device models for the GCMA memory service.
//!
//! Without the default `device` feature only the `no_std` gcma wire format is built.
//!
//! Map of the host side (feature `device`):
//! - [`transport`]: the [`transport::VirtioDevice`] trait, interrupts, strict descriptor-chain
//!   walking and the virtio-mmio v2 transport ([`transport::MmioTransport`]).
//! - [`error`]: the crate's error types.
//! - `testing` (feature `test-utils`): a guest-driver stand-in acting only through MMIO registers
//!   and guest memory.

#![cfg_attr(not(feature = "device"), no_std)]

#[cfg(feature = "device")]
pub mod error;
pub mod gcma;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(feature = "device")]
pub mod transport;
