//! Opening KVM and checking that it offers what the VMM needs.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// The KVM API version this VMM is written for (`KVM_API_VERSION` in `<linux/kvm.h>`).
pub const KVM_API_VERSION: i32 = 12;

/// Default path of the KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities every microVM relies on, with the names used in error messages.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// An open, checked `/dev/kvm`. One is enough for any number of microVMs.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
    max_memslots: usize,
}

impl Hypervisor {
    /// Opens [`KVM_PATH`] and checks the API version and the capabilities the VMM needs.
    pub fn open() -> Result<Self> {
        Self::open_path(Path::new(KVM_PATH))
    }

    /// Opens the KVM device at `path` (useful for tests and unusual set-ups).
    pub fn open_path(path: &Path) -> Result<Self> {
        let display = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| match source.kind() {
                ErrorKind::NotFound => Error::KvmNotFound {
                    path: display.clone(),
                },
                ErrorKind::PermissionDenied => Error::KvmPermissionDenied {
                    path: display.clone(),
                },
                _ => Error::KvmOpen {
                    path: display.clone(),
                    source,
                },
            })?;
        // SAFETY: the descriptor was just opened (with O_CLOEXEC, std's default) and its ownership
        // moves to `Kvm`, which closes it on drop; no other owner remains.
        let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(Error::KvmApiVersion {
                found,
                expected: KVM_API_VERSION,
            });
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::KvmMissingCapability(name));
            }
        }
        let max_memslots = kvm.get_nr_memslots();
        log::debug!("opened {display}: API {found}, {max_memslots} memory slots");
        Ok(Hypervisor { kvm, max_memslots })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// How many memory slots a VM may use (`KVM_CAP_NR_MEMSLOTS`).
    pub fn max_memslots(&self) -> usize {
        self.max_memslots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_reported_as_not_found() {
        let err = Hypervisor::open_path(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, Error::KvmNotFound { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/kvm"));
    }

    #[test]
    fn non_kvm_device_is_rejected() {
        // /dev/null opens fine but is not KVM: the version ioctl fails (returns -1).
        let err = Hypervisor::open_path(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(err, Error::KvmApiVersion { found: -1, .. }),
            "{err}"
        );
    }
}
