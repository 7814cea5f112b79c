//! Per-thread seccomp filters of the `vmm` and `gcma-hostd` processes.
//!
//! A guest that finds a bug in a device still runs inside the VMM (or the daemon) as root; these
//! filters shrink what such a bug can reach. Every thread that handles guest-controlled input, or
//! serves the control plane, runs under an allow-list of system calls made for what that kind of
//! thread does ([`ThreadKind`]; one file per kind under `src/filters/`, each entry saying who makes
//! the call). A call outside the list raises `SIGSYS` (`SECCOMP_RET_TRAP`); the handler writes one
//! line naming the thread kind and the system call (number and name) to standard error and ends
//! the process with status [`SIGSYS_EXIT_STATUS`].
//!
//! Why a crate of its own: the zeroer (`gcma-host`) and the HTTP server (`gcma-http`) are threads
//! that libraries spawn for both binaries, so the place a filter is applied is inside those
//! libraries, and the lists of the shared kinds are shared too.
//!
//! How it is used: a binary calls [`install`] once at start (unless the operator said
//! `--no-seccomp`), before it spawns threads. Code that spawns a thread of some kind calls
//! [`enter_or_exit`] (or [`enter`]) first thing in that thread. Without [`install`] (library
//! tests, `--no-seccomp`) `enter` does nothing. A filter applies to the calling thread and is
//! inherited by the threads it spawns later (tokio's blocking pool under the HTTP thread,
//! `vhost-user-backend`'s vring workers under a disk's accept thread), so a kind's list covers
//! its children too; a thread that spawns a thread of another kind must do so before it enters
//! its own filter, since filters only ever narrow.
//!
//! The lists are for x86-64 Linux (the only target the VMM supports); on another target
//! [`install`] fails with [`SeccompError::Unsupported`].

#![warn(missing_docs)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

mod filters;
mod names;
mod sigsys;

pub use sigsys::SIGSYS_EXIT_STATUS;

/// The kinds of threads that run filtered; each has its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// A vCPU: `KVM_RUN` and the exits it serves (MMIO, port I/O, queue notifications on the
    /// vCPU path: device work, pool operations, grant mapping). In `vmm run` the main thread
    /// becomes the vCPU once the VM is set up.
    Vcpu,
    /// The VMM's device thread (`event-manager` loop: ioeventfd kicks, irqfd signals, the same
    /// device work as a vCPU) and the balloon statistics poller.
    Device,
    /// A `gcma-http` server thread (the VMM's API socket and `/metrics`, the daemon's control
    /// socket and `/metrics`) and its handler threads.
    Http,
    /// The pool's background zeroer.
    Zeroer,
    /// `gcma-hostd`: a disk's accept thread and the `vhost-user-backend` threads it spawns (the
    /// vhost-user message handler and one vring worker per queue); the virtio-gcma accept,
    /// connection and worker threads and the reaper.
    Vhost,
    /// `gcma-hostd`: the housekeeping timer (write-back retries).
    Housekeeping,
    /// `vmm`: the vhost-user frontend thread of a virtio-gcma device served by `gcma-hostd`
    /// (`vhost-gcma-<vm>`: `SHMEM_MAP`/`UNMAP` into the grant window, call eventfds, daemon
    /// death).
    VhostFrontend,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Http,
        ThreadKind::Zeroer,
        ThreadKind::Vhost,
        ThreadKind::Housekeeping,
        ThreadKind::VhostFrontend,
    ];

    /// The kind's name, as the `SIGSYS` message prints it.
    pub const fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Http => "http",
            ThreadKind::Zeroer => "zeroer",
            ThreadKind::Vhost => "vhost-user",
            ThreadKind::Housekeeping => "housekeeping",
            ThreadKind::VhostFrontend => "vhost-user frontend",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why filters could not be compiled or applied.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The lists are written for x86-64 Linux.
    #[error("seccomp filters are only written for x86-64 Linux")]
    Unsupported,
    /// [`install`] was called twice.
    #[error("seccomp filters are already installed")]
    AlreadyInstalled,
    /// A list did not compile to BPF.
    #[error("compiling the {} filter", kind.name())]
    Compile {
        /// Which list.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("applying the {} filter", kind.name())]
    Apply {
        /// Which list.
        kind: ThreadKind,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// The `SIGSYS` handler could not be installed.
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The compiled filters of a process, one per kind it runs.
struct Policy {
    filters: [Option<seccompiler::BpfProgram>; ThreadKind::ALL.len()],
}

static POLICY: OnceLock<Policy> = OnceLock::new();

thread_local! {
    /// The kind of filter this thread entered (or inherited and said so with [`mark`]); read by
    /// the `SIGSYS` handler (a const-initialised `Cell` without destructor: a plain TLS load).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Compiles the filters of `kinds`, installs the `SIGSYS` handler and makes [`enter`] apply
/// them from now on. `program` prefixes the message a violation prints. Call it once, at start.
pub fn install(program: &'static str, kinds: &[ThreadKind]) -> Result<(), SeccompError> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(SeccompError::Unsupported);
    }
    let mut filters: [Option<seccompiler::BpfProgram>; ThreadKind::ALL.len()] = Default::default();
    for &kind in kinds {
        filters[kind.index()] = Some(compile(kind)?);
    }
    sigsys::install_handler(program).map_err(SeccompError::Handler)?;
    POLICY
        .set(Policy { filters })
        .map_err(|_| SeccompError::AlreadyInstalled)
}

/// Whether [`install`] ran: threads that [`enter`] are filtered.
pub fn installed() -> bool {
    POLICY.get().is_some()
}

/// Applies the filter of `kind` to the calling thread (and the threads it spawns from now on).
/// Does nothing when filters are off ([`install`] not called) or the process did not install
/// this kind.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filter) = POLICY.get().and_then(|p| p.filters[kind.index()].as_ref()) else {
        return Ok(());
    };
    seccompiler::apply_filter(filter).map_err(|source| SeccompError::Apply { kind, source })?;
    mark(kind);
    Ok(())
}

/// [`enter`], or, if the kernel refuses the filter, one line on standard error and exit status
/// 1: a thread of a filtered kind never runs unfiltered. For threads that libraries spawn, which
/// have no caller to return an error to.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        let mut line = format!("seccomp: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            line.push_str(&format!(": {s}"));
            source = s.source();
        }
        eprintln!("{line}");
        std::process::exit(1);
    }
}

/// Records that this thread runs under `kind`'s filter, inherited from the thread that spawned
/// it, so that a violation names the kind.
pub fn mark(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

fn current_kind() -> Option<ThreadKind> {
    KIND.with(Cell::get)
}

/// The BPF program of `kind`'s list.
fn compile(kind: ThreadKind) -> Result<seccompiler::BpfProgram, SeccompError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let err = |source| SeccompError::Compile { kind, source };
    // Per system call: `None` once an entry allows any arguments, else the alternatives.
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for allow in filters::allow_list(kind).iter().flat_map(|l| l.iter()) {
        let entry = rules.entry(allow.nr).or_insert_with(|| Some(Vec::new()));
        if allow.only.is_empty() {
            *entry = None;
            continue;
        }
        let conditions = allow
            .only
            .iter()
            .map(|a| {
                SeccompCondition::new(a.index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, a.value)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.into()))?;
        if let Some(alternatives) = entry {
            alternatives.push(SeccompRule::new(conditions).map_err(|e| err(e.into()))?);
        }
    }
    let rules = rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(|e| err(e.into()))?;
    seccompiler::BpfProgram::try_from(filter).map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_compiles() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind).unwrap();
            assert!(!prog.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn names_cover_the_lists() {
        for kind in ThreadKind::ALL {
            for allow in filters::allow_list(kind).iter().flat_map(|l| l.iter()) {
                assert!(
                    names::syscall_name(allow.nr).is_some(),
                    "{kind:?}: {} has no name",
                    allow.nr
                );
            }
        }
        assert_eq!(names::syscall_name(libc::SYS_getpgid), Some("getpgid"));
        assert_eq!(names::syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(names::syscall_name(100_000), None);
    }
}
