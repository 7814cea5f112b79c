//! The control plane: what operators and exporters see of running microVMs.
//!
//! * [`runtime`]: a running VM as the API and metrics see it ([`runtime::VmHandle`]).
//! * [`control`]: the control API's routes (HTTP/JSON on a Unix socket, `vmm/api/openapi.yaml`).
//! * [`model`]: the control API's request and response bodies.
//! * [`metrics`]: the Prometheus registry of VM, device and pool metrics.
//! * [`http`]: the HTTP server both are served with (the `gcma-http` crate, shared with
//!   `gcma-hostd`).

pub mod control;
pub mod metrics;
pub mod model;
pub mod runtime;

pub use gcma_http as http;
