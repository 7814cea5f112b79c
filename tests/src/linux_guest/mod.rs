//! Stock Linux guests under QEMU, for tests and benchmarks of block devices that unmodified
//! kernels use (`tests/linux-guest/README.md`).
//!
//! - [`Kit`]: Debian's cloud kernel and our initramfs, built by `tests/linux-guest/build-kit.sh`
//!   and cached under `target/linux-guest/`.
//! - [`QemuGuest`]: one QEMU process (software emulation) with vhost-user-blk and virtio-blk
//!   disks, running the guest checker in the [`Mode`] asked for; [`RunningGuest`] talks to it
//!   while it runs, [`GuestRun`] is what it left.
//! - [`QsdExport`]: `qemu-storage-daemon` exporting a file as vhost-user-blk, the peer a QEMU user
//!   would pick.
//! - [`image`]: disk image files (sparse, filled, ext2 with a file of seeded random bytes).
//! - [`SwapBackend`]: "a disk to swap on", so benchmarks and tests compare backends in one list.
//!
//! ```no_run
//! use e2e_tests::linux_guest::{linux_guest_or_skip, Disk, Mode, QemuGuest, SwapArgs};
//! # use std::time::Duration;
//! let Some(kit) = linux_guest_or_skip("example") else { return };
//! let run = QemuGuest::new(&kit)
//!     .memory_mib(80)
//!     .disk(Disk::vhost_user_blk("/tmp/vu.sock").reconnect(1))
//!     .checker(Mode::Swap(SwapArgs { mib: 160, ..SwapArgs::default() }))
//!     .timeout(Duration::from_secs(300))
//!     .run()
//!     .unwrap();
//! assert!(run.clean_exit(), "{}", run.diagnostics());
//! assert_eq!(run.summary().unwrap().get_u64("corrupt"), Some(0));
//! ```

mod backend;
pub mod image;
mod kit;
mod qemu;
mod qsd;

pub use backend::{AttachedDisk, DiskGuard, FileBackend, QsdBackend, SwapBackend};
pub use guest_checker::cli::{CacheArgs, Discard, Mode, SwapArgs};
pub use guest_checker::report::Record;
pub use kit::Kit;
pub use qemu::{ConsoleRecord, Disk, GuestRun, QemuGuest, RunningGuest};
pub use qsd::{QsdExport, QsdOptions};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a Linux guest could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Something the guests need is missing on this machine (a package, a tool): tests skip.
    #[error("{0}")]
    Unavailable(String),
    /// `build-kit.sh` failed for another reason.
    #[error("build-kit.sh failed ({status}): {stderr}")]
    KitBuild { status: String, stderr: String },
    /// An I/O operation of the harness failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A host tool (mke2fs, qemu-storage-daemon, ...) failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    /// Waited too long for something.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// The guest (QEMU) was gone before the thing waited for happened.
    #[error("the guest exited before {0}")]
    Exited(String),
}

impl GuestError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
        let what = what.into();
        move |source| GuestError::Io { what, source }
    }
}

/// A host program by name: from `PATH`, else from `/usr/sbin` and `/sbin` (where Debian puts
/// mke2fs, which a non-root `PATH` may lack).
pub fn find_tool(name: &str) -> Result<PathBuf, GuestError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            GuestError::Unavailable(format!("{name} not found (ci/setup.sh installs it)"))
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Returns the value, or handles an error the way the KVM tests do: a [`GuestError::Unavailable`]
/// prints `SKIPPED: <test>: <reason>` and gives `None`, except under `CI=true`, where it panics;
/// any other error panics.
pub fn or_skip<T>(test: &str, r: Result<T, GuestError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(GuestError::Unavailable(why)) => {
            crate::skip(test, &why);
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The kit and QEMU, or `None` after printing `SKIPPED` (panics under `CI=true`; see [`or_skip`]).
pub fn linux_guest_or_skip(test: &str) -> Option<Kit> {
    or_skip(
        test,
        Kit::ensure().and_then(|kit| {
            QemuGuest::qemu_binary()?;
            Ok(kit)
        }),
    )
}
