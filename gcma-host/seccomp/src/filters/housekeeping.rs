//! gcma-hostd's housekeeping thread (`gcma-host/hostd/src/daemon.rs`): every tick, retries
//! failed write-backs (`Pool::retry_writebacks`), which writes pages to backing files.

use super::{any, Allow};

pub(crate) const ALLOW: &[Allow] = &[
    // The backing files of swap disks and the pool.
    any(libc::SYS_pwrite64),
    any(libc::SYS_pread64),
    any(libc::SYS_fdatasync),
    any(libc::SYS_fsync),
    any(libc::SYS_fallocate),
];
