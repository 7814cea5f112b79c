//! The VMM's seccomp filters (`gcma-host/seccomp`): which thread kinds the `vmm` process filters,
//! and the vCPU thread a guest runs on. `vmm run` and the in-process KVM tests share these, so
//! the tests run their guests under the same filters as the binary (ARCHITECTURE.md, "Seccomp:
//! what each thread may call").

use gcma_seccomp::ThreadKind;

use crate::{Error, MicroVm, Result, VmOutcome};

/// The kinds of threads a `vmm` process runs filtered: vCPUs, the device thread (and the
/// balloon statistics poller), the HTTP servers, the pool's zeroer and the vhost-user frontend
/// thread of a gcma device served by `gcma-hostd`.
pub const THREAD_KINDS: [ThreadKind; 5] = [
    ThreadKind::Vcpu,
    ThreadKind::Device,
    ThreadKind::Http,
    ThreadKind::Zeroer,
    ThreadKind::VhostFrontend,
];

/// Compiles the filters of [`THREAD_KINDS`] and installs the `SIGSYS` handler, whose message
/// starts with `program`: from now on every thread of those kinds enters its filter when it
/// starts. Call once, before any such thread is spawned.
pub fn install(program: &'static str) -> std::result::Result<(), gcma_seccomp::SeccompError> {
    gcma_seccomp::install(program, &THREAD_KINDS)
}

/// Runs `f` to its end on a new thread named `name` that first enters the vCPU filter (a no-op
/// unless [`install`] ran), and returns what `f` returned. The calling thread, which handles no
/// guest input, only waits.
pub fn on_vcpu_thread<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, || {
                gcma_seccomp::enter(ThreadKind::Vcpu)?;
                Ok(f())
            })
            .map_err(|source| Error::VcpuThread {
                name: name.to_string(),
                source,
            })?;
        thread
            .join()
            .map_err(|_| Error::VcpuPanicked {
                name: name.to_string(),
            })?
            .map_err(Error::Seccomp)
    })
}

/// Runs `vm` until its guest ends, on a vCPU thread `vcpu0` under the vCPU filter, as `vmm run`
/// does ([`on_vcpu_thread`]).
pub fn run_vcpu(vm: &mut MicroVm) -> Result<VmOutcome> {
    on_vcpu_thread("vcpu0", || vm.run())?
}
