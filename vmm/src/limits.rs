//! What one guest may cost the host, in one place: the bounds a VM is built with
//! ([`GuestLimits`], part of [`crate::VmConfig`]). ARCHITECTURE.md lists them with the pool's.
//!
//! | bound | default | past it |
//! |---|---|---|
//! | log lines a guest can trigger, per kind | 10 per second | counted, not written (`vmm_guest_log_suppressed_lines_total`) |
//! | console output (UART + batched console) | 64 KiB/s, 16 MiB in all | dropped, counted (`vmm_guest_output_dropped_bytes_total`) |
//! | requests a virtio device serves per notification | one queue's worth | served on a later turn, without a new notification |
//! | mailbox events waiting for the host | the channel's length | dropped, counted (`vmm_mailbox_dropped_events_total`) |

use gcma_host::log_limit::LogLimit;

use crate::devices::OutputLimits;

/// The per-VM bounds on what a guest can make the host do. See the [module documentation](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestLimits {
    /// Log lines a guest can trigger: per kind and window, shared by all the VM's devices.
    pub log: LogLimit,
    /// The guest's console output.
    pub output: OutputLimits,
    /// Requests a virtio device serves per notification; `None` for one queue's worth (the
    /// queue's size). Never more than the queue's size.
    pub requests_per_notify: Option<u16>,
}
