//! What a filtered thread needs to start threads (which inherit its filter): tokio's blocking
//! pool under an HTTP server thread, `vhost-user-backend`'s threads under a disk's accept thread.

use super::{any, when, Allow, ArgEq};

pub(crate) const ALLOW: &[Allow] = &[
    // pthread_create (glibc 2.34+: clone3; older: clone).
    any(libc::SYS_clone3),
    any(libc::SYS_clone),
    // The new thread's start in glibc and std.
    any(libc::SYS_set_robust_list),
    any(libc::SYS_rseq),
    any(libc::SYS_sched_getaffinity),
    // std names the thread: prctl(PR_SET_NAME) only.
    when(
        libc::SYS_prctl,
        &[ArgEq {
            index: 0,
            value: libc::PR_SET_NAME as u64,
        }],
    ),
];
