//! The control plane: what operators and exporters see of running microVMs.
//!
//! * [`runtime`]: a running VM as the API and metrics see it ([`runtime::VmHandle`]).
//! * [`control`]: the control API's routes (HTTP/JSON on a Unix socket).
//! * [`metrics`]: the Prometheus registry of VM, device and pool metrics.
//! * [`http`]: the small HTTP server both are served with.

pub mod control;
pub mod http;
pub mod metrics;
pub mod runtime;
