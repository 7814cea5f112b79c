//! The allow-lists, one file per thread kind, as data: each entry names a system call (and, where
//! cheap, the only argument values allowed) with a comment saying who makes it. `common` is what
//! every filtered thread makes; `spawn` what a thread needs to start threads that inherit its
//! filter; `virtio` the device work a vCPU and the device thread share.
//!
//! Derived from `strace -f` of `vmm demo` (every frontswap policy), `vmm run` (payloads with a
//! pool, a balloon, `--ioeventfd`, the API socket and `/metrics`; a Linux kernel), the vmm tests
//! and gcma-hostd's tests, then run with the filters on: a call missing here ends the process
//! with a message naming it. A new thread kind is a new file here and a `ThreadKind` variant.

use crate::ThreadKind;

mod common;
mod device;
mod housekeeping;
mod http;
mod spawn;
mod vcpu;
mod vhost;
mod vhost_frontend;
mod virtio;
mod zeroer;

/// One allowed system call: any arguments when `only` is empty, else only when every listed
/// argument (a 32-bit compare) has its value. Several entries for one call are alternatives.
#[derive(Debug)]
pub(crate) struct Allow {
    pub nr: i64,
    pub only: &'static [ArgEq],
}

/// Argument `index` (0-based) equals `value` (compared as 32 bits).
#[derive(Debug)]
pub(crate) struct ArgEq {
    pub index: u8,
    pub value: u64,
}

/// `nr` with any arguments.
pub(crate) const fn any(nr: libc::c_long) -> Allow {
    Allow { nr, only: &[] }
}

/// `nr` only when argument `index` equals `value`.
pub(crate) const fn when(nr: libc::c_long, only: &'static [ArgEq]) -> Allow {
    Allow { nr, only }
}

/// The lists a thread of `kind` is allowed.
pub(crate) fn allow_list(kind: ThreadKind) -> Vec<&'static [Allow]> {
    match kind {
        ThreadKind::Vcpu => vec![common::ALLOW, virtio::ALLOW, vcpu::ALLOW],
        ThreadKind::Device => vec![common::ALLOW, virtio::ALLOW, device::ALLOW],
        ThreadKind::Http => vec![common::ALLOW, spawn::ALLOW, http::ALLOW],
        ThreadKind::Zeroer => vec![common::ALLOW, zeroer::ALLOW],
        ThreadKind::Vhost => vec![common::ALLOW, spawn::ALLOW, vhost::ALLOW],
        ThreadKind::Housekeeping => vec![common::ALLOW, housekeeping::ALLOW],
        ThreadKind::VhostFrontend => vec![common::ALLOW, vhost_frontend::ALLOW],
    }
}
