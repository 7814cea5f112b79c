//! Serving virtio queues, shared by the vCPU (MMIO exits) and the device thread (ioeventfd
//! kicks): the devices of `balloon` and the pool behind them.

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // Frontswap backing files (write-through, write-back, put-back eviction) and their reads;
    // `FileBacking` pread/pwrite at page offsets.
    any(libc::SYS_pread64),
    any(libc::SYS_pwrite64),
    any(libc::SYS_fdatasync),
    any(libc::SYS_fsync),
    // Balloon: punching holes in memfd guest RAM (`memory_release`), and the fstatfs that
    // picks hole punching over MADV_DONTNEED.
    any(libc::SYS_fallocate),
    any(libc::SYS_fstatfs),
    // virtio-gcma served by gcma-hostd: the vhost-user messages a driver's activation and reset
    // send (`vmm/src/devices/vhost_gcma.rs`), and kick eventfd writes (in `common`).
    any(libc::SYS_sendmsg),
    any(libc::SYS_recvmsg),
    any(libc::SYS_sendto),
    any(libc::SYS_recvfrom),
    // Ioctls on KVM fds: grant window slot changes (KVM_SET_USER_MEMORY_REGION), interrupt
    // lines of the Linux platform (KVM_IRQ_LINE); the vCPU list adds its own.
    any(libc::SYS_ioctl),
];
