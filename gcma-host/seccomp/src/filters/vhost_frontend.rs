//! `vmm`: the vhost-user frontend thread of a virtio-gcma device served by `gcma-hostd`
//! (`vmm/src/devices/vhost_gcma.rs`, thread `vhost-gcma-<vm>`). It waits on the backend-request
//! socket, the call eventfds and the main socket, answers `SHMEM_MAP`/`SHMEM_UNMAP` by mapping
//! the daemon's pool fd into the grant window (`mmap`/`munmap` are in `common`), and on the
//! daemon's death unmaps every grant and raises the config interrupt.

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // The backend-request channel: messages with the pool fd attached, replies.
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendmsg),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendto),
    // Waiting on the channel, the call eventfds, the main socket and the stop eventfd.
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_poll),
    any(libc::SYS_ppoll),
    // Checking a mapped fd's length (`SHMEM_MAP` past the end of the pool fd is refused).
    any(libc::SYS_fstat),
    any(libc::SYS_newfstatat),
    any(libc::SYS_statx),
    any(libc::SYS_lseek),
    // Used-buffer and config interrupts through the VM's irqfds (Linux guests).
    any(libc::SYS_ioctl),
];
