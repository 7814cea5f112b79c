//! Test support shared by the integration tests and the fuzz targets (`fuzz/`).

pub mod range_model;
