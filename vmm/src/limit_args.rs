//! The command-line flags that set what one guest may cost the host (`vmm run` and `vmm demo`
//! share them): see `vmm::limits` and ARCHITECTURE.md for what each bound protects.

use gcma_host::log_limit::LogLimit;
use vmm::devices::output::{DEFAULT_OUTPUT_BYTES_PER_S, DEFAULT_OUTPUT_MAX_BYTES};
use vmm::devices::OutputLimits;
use vmm::limits::GuestLimits;

/// Bounds on what a guest can make the host do.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Log lines a guest can trigger (a malformed request, a driver that sets FAILED, a broken
    /// console...) written per second and per kind of message; the rest are counted in
    /// vmm_guest_log_suppressed_lines_total (gcma_log_suppressed_lines_total for the pool).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub guest_log_lines_per_s: u32,
    /// Average bytes per second of guest console output (UART and batched console together)
    /// passed on to standard output or the serial file; bursts of one second's worth pass whole.
    /// The rest is dropped and counted in vmm_guest_output_dropped_bytes_total{reason="rate"}.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_BYTES_PER_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub guest_output_bytes_per_s: u64,
    /// Total bytes of guest console output passed on over the VM's life; past it, output is
    /// dropped (vmm_guest_output_dropped_bytes_total{reason="total"}) after one line saying so.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_MAX_BYTES)]
    pub guest_output_max_bytes: u64,
    /// Requests a virtio device serves per queue notification (default: the queue's size, one
    /// queue's worth). Requests beyond it are served on later turns without a new notification,
    /// so that a guest that keeps posting cannot hold the device's thread.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub requests_per_notify: Option<u16>,
    /// Nodes of the pool's free-run tree one contiguous grant may visit under the pool lock; a
    /// request that would need more is answered NO_SPACE (fragmented). Bounds the lock time one
    /// request can cost whatever shape a guest's grants give the pool.
    #[arg(long, default_value_t = gcma_host::range::DEFAULT_MAX_VISITS, value_parser = clap::value_parser!(u32).range(16..))]
    pub gcma_max_search_nodes: u32,
}

impl LimitArgs {
    /// The per-VM bounds.
    pub fn guest_limits(&self) -> GuestLimits {
        GuestLimits {
            log: self.log_limit(),
            output: OutputLimits {
                bytes_per_s: self.guest_output_bytes_per_s,
                max_bytes: self.guest_output_max_bytes,
            },
            requests_per_notify: self.requests_per_notify,
        }
    }

    /// The log limit (also the pool's, for the lines its clients provoke).
    pub fn log_limit(&self) -> LogLimit {
        LogLimit::per_second(self.guest_log_lines_per_s)
    }
}
