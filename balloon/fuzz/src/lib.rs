//! Coverage-guided fuzz targets for the `balloon` crate (run with `cargo +nightly fuzz`; see
//! README.md).
//!
//! Each target in `fuzz_targets/` only calls `run` of its module here, so the seed generator
//! (`src/bin/gen_seeds.rs`) and the unit tests use the same decoding and checks:
//! * [`proto`]: the virtio-gcma wire format round trip;
//! * [`mmio`]: the virtio-mmio transport under arbitrary register traffic;
//! * [`balloon`]: virtio-balloon with arbitrary rings and buffers, and an oracle for releases;
//! * [`gcma`]: virtio-gcma, two VMs on one real pool, against a model of the protocol.
//!
//! Inputs are decoded with `arbitrary` ([`input`]); every module has an `encode` that writes the
//! bytes a given input decodes from, for seeds.

pub mod balloon;
pub mod gcma;
pub mod input;
pub mod mmio;
pub mod proto;
