//! Shared by the KVM integration tests: open KVM or explain why the test is skipped.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod api;
pub mod hostd;
pub mod linux;
pub mod ping;

use vmm::Hypervisor;

/// Opens `/dev/kvm`. When it is unusable, prints `SKIPPED: <reason>` and returns `None`, except
/// under `CI=true`, where KVM is expected and the test fails instead.
///
/// It also installs the VMM's seccomp filters in the test process ([`filters_on`]), so that
/// every thread a KVM test starts through the library (device thread, zeroer, HTTP servers) and
/// every guest run through [`run`] or [`run_vcpu`] is filtered as in `vmm run`.
pub fn hypervisor_or_skip(test: &str) -> Option<Hypervisor> {
    filters_on();
    Hypervisor::open()
        .map_err(|e| e2e_tests::skip(test, format_args!("/dev/kvm unusable: {e}")))
        .ok()
}

/// Installs the `vmm` process's seccomp policy once per test process (`vmm::seccomp::install`).
/// Only threads that enter a filter are filtered: the test harness's threads are not. A
/// violation ends the whole test binary with a line naming the thread kind and the system call
/// (exit status 159).
pub fn filters_on() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        vmm::seccomp::install("vmm (test)").expect("installing the seccomp filters");
    });
}

/// Runs `vm` on a `vcpu0` thread under the vCPU filter, as `vmm run` does, without a watchdog
/// (for tests that stop the guest themselves).
pub fn run_vcpu(vm: &mut vmm::MicroVm) -> vmm::Result<vmm::VmOutcome> {
    filters_on();
    vmm::seccomp::run_vcpu(vm)
}

/// How long a test guest may run before the watchdog stops it.
pub const GUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `vm` with a watchdog, so that a guest that never exits fails the test instead of hanging
/// the test run; the guest runs under the vCPU filter ([`run_vcpu`]).
pub fn run(vm: &mut vmm::MicroVm) -> vmm::Result<vmm::VmOutcome> {
    let stop = vm.stop_handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let fired = done_rx.recv_timeout(GUEST_TIMEOUT).is_err();
        if fired {
            stop.stop();
        }
        fired
    });
    let outcome = run_vcpu(vm);
    let _ = done_tx.send(());
    let fired = watchdog.join().expect("watchdog thread");
    assert!(!fired, "the guest did not finish within {GUEST_TIMEOUT:?}");
    outcome
}

/// A memfd of `bytes` standing in for the pool's.
pub fn pool_memfd(bytes: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"test-pool".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is fresh and owned by the File from here on.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(bytes).unwrap();
    file
}

/// A grant of client 1 at pool page `first_page`.
pub fn grant(first_page: u64, nr_pages: u64) -> gcma_host::api::ContigGrant {
    gcma_host::api::ContigGrant {
        client: gcma_host::api::ClientId(1),
        first_page,
        nr_pages,
    }
}
