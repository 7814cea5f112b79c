//! gcma-hostd: a disk's accept thread (`gcma-host/hostd/src/serve.rs`) and the
//! `vhost-user-backend` threads it spawns: the vhost-user message handler (memory tables as
//! fds, mapped here; vring kick/call eventfds) and one vring worker per queue, which serves
//! virtio-blk requests against swap and cache disks (`swap_disk.rs`, `cache_disk.rs`); and the
//! virtio-gcma accept thread (`gcma_dev.rs`), the connection and worker threads it spawns, and
//! the reaper that releases a dead VMM's pages.

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // The listening socket, the frontend's connection and its fd-passing messages.
    any(libc::SYS_accept4),
    any(libc::SYS_accept),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendmsg),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendto),
    any(libc::SYS_shutdown),
    any(libc::SYS_getsockopt),
    // Vring workers: epoll over kick eventfds and the exit event.
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_eventfd2),
    // Duplicating fds the frontend passed (vring eventfds, memory regions).
    any(libc::SYS_dup),
    any(libc::SYS_fcntl),
    any(libc::SYS_fstat),
    any(libc::SYS_newfstatat),
    any(libc::SYS_statx),
    any(libc::SYS_lseek),
    // Disk I/O: swap disk backing files, cache disk images, pool pages.
    any(libc::SYS_pread64),
    any(libc::SYS_pwrite64),
    any(libc::SYS_preadv),
    any(libc::SYS_pwritev),
    any(libc::SYS_fdatasync),
    any(libc::SYS_fsync),
    any(libc::SYS_fallocate),
    any(libc::SYS_ftruncate),
    // virtio-gcma: the peer's identity (`SO_PEERPIDFD`, else `SO_PEERCRED` + `pidfd_open`) and
    // the reaper's and liveness checks' poll on pidfds.
    any(libc::SYS_pidfd_open),
    any(libc::SYS_poll),
    any(libc::SYS_ppoll),
    // VHOST_USER_GET_INFLIGHT_FD / backend requests.
    any(libc::SYS_memfd_create),
    any(libc::SYS_ioctl),
];
