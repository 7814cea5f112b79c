//! The VMM's device thread (`vmm/src/kvm/events.rs`): an `event-manager` epoll loop over
//! ioeventfds, serving queues as a vCPU would (see `virtio`), and the balloon statistics poller
//! (`vmm/src/api/runtime.rs`), which asks the device for statistics and sleeps.

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // The event manager: created in the thread, waits, (de)registers ioeventfds.
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
];
