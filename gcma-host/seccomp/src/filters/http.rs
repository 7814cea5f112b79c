//! A `gcma-http` server thread (hyper on a single-threaded tokio runtime) and its blocking
//! handler threads (`gcma-host/http/src/serve.rs`): the VMM's control API and `/metrics`, the
//! daemon's control socket and `/metrics`. Handlers read counters, change the balloon target,
//! grant and free pool memory (daemon), and stop the VM (a signal to the vCPU thread).

use super::{any, when, Allow, ArgEq};

pub(crate) const ALLOW: &[Allow] = &[
    // tokio's reactor.
    any(libc::SYS_epoll_wait),
    any(libc::SYS_epoll_pwait),
    any(libc::SYS_epoll_ctl),
    // Accepting and serving connections (TCP and Unix).
    any(libc::SYS_accept4),
    any(libc::SYS_recvfrom),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_sendmsg),
    any(libc::SYS_shutdown),
    any(libc::SYS_getsockname),
    any(libc::SYS_getpeername),
    any(libc::SYS_setsockopt),
    any(libc::SYS_getsockopt),
    // tokio sets accepted sockets non-blocking: fcntl(F_SETFL) (F_GETFL/F_GETFD are common).
    when(
        libc::SYS_fcntl,
        &[ArgEq {
            index: 1,
            value: libc::F_SETFL as u64,
        }],
    ),
    any(libc::SYS_ioctl),
    // PUT /actions: pthread_kill of the vCPU thread (tgkill is common).
    any(libc::SYS_rt_sigqueueinfo),
    any(libc::SYS_rt_tgsigqueueinfo),
    // The daemon's grants: the pool's pages are mapped and zeroed (`madvise`, `fallocate`).
    any(libc::SYS_fallocate),
    any(libc::SYS_pwrite64),
    any(libc::SYS_pread64),
    // Shutting the server down removes its Unix socket.
    any(libc::SYS_statx),
    any(libc::SYS_newfstatat),
    any(libc::SYS_unlink),
    any(libc::SYS_unlinkat),
];
