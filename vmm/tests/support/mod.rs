//! Shared by the KVM integration tests: open KVM or explain why the test is skipped.

use vmm::Hypervisor;

/// Opens `/dev/kvm`. When it is unusable, prints `SKIPPED: <reason>` and returns `None`, except
/// under `CI=true`, where KVM is expected and the test fails instead.
pub fn hypervisor_or_skip(test: &str) -> Option<Hypervisor> {
    match Hypervisor::open() {
        Ok(hv) => Some(hv),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: /dev/kvm is required under CI=true but unusable: {e}")
        }
        Err(e) => {
            println!("SKIPPED: {test}: /dev/kvm unusable: {e}");
            None
        }
    }
}
