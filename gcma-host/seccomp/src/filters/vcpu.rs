//! A vCPU thread: `KVM_RUN`, the exits it serves (MMIO and port I/O on the bus; queue
//! notifications served on the vCPU path, see `common`/`virtio`), the deferred-work timer and
//! the kick signal (`vmm/src/kvm/vm.rs`, `vmm/src/kvm/deferred.rs`).

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // The kick signal's handler is installed when `run` starts (`rt_sigaction(SIGRTMIN)`).
    any(libc::SYS_rt_sigaction),
    // The POSIX timer that brings the vCPU back to leftover queue work (`deferred.rs`).
    any(libc::SYS_timer_create),
    any(libc::SYS_timer_settime),
    any(libc::SYS_timer_delete),
    // Serial console to a file (`--serial-file`) and output flushes.
    any(libc::SYS_fsync),
];
