//! Coverage-guided fuzz targets for `gcma-host` (run with `cargo +nightly fuzz`; see README.md).
//!
//! The targets in `fuzz_targets/` are thin: each decodes its input and checks it here, so the
//! seed generator (`src/bin/gen_seeds.rs`) and the unit tests use the same code.

pub mod range;
