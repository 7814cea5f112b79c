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

/// The committed seeds of every target pass (so does every input a crash was minimised to, once
/// fixed and added to the seeds): a regression shows in `cargo test` without nightly.
#[cfg(test)]
mod seeds {
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seeds directory") {
            run(&std::fs::read(entry.expect("seed").path()).expect("seed bytes"));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn gcma_proto() {
        replay("gcma_proto", super::proto::run);
    }

    #[test]
    fn mmio_transport() {
        replay("mmio_transport", super::mmio::run);
    }

    #[test]
    fn virtio_balloon() {
        replay("virtio_balloon", super::balloon::run);
    }

    #[test]
    fn virtio_gcma() {
        replay("virtio_gcma", super::gcma::run);
    }
}
