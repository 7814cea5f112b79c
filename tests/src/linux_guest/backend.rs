//! "A disk to swap on": the seam benchmarks and tests use to run the same guest against several
//! block backends. A new backend (a daemon with a policy, say) is one more implementation.

use std::path::Path;

use super::{image, Disk, GuestError, QsdExport, QsdOptions};

/// Something that must live while the guest uses the disk, stopped after the run.
pub trait DiskGuard: Send {
    /// Stops whatever serves the disk and returns figures for the report (name, value).
    fn stop(self: Box<Self>) -> Result<Vec<(String, String)>, GuestError>;
}

/// No guard: QEMU serves the disk itself.
impl DiskGuard for () {
    fn stop(self: Box<Self>) -> Result<Vec<(String, String)>, GuestError> {
        Ok(Vec::new())
    }
}

impl DiskGuard for QsdExport {
    fn stop(self: Box<Self>) -> Result<Vec<(String, String)>, GuestError> {
        let status = (*self).stop()?;
        Ok(vec![("qsd_exit".into(), status.to_string())])
    }
}

/// A disk ready for a guest, and what keeps it served.
pub struct AttachedDisk {
    /// How QEMU attaches it.
    pub disk: Disk,
    /// Stopped by the caller after the guest exits.
    pub guard: Box<dyn DiskGuard>,
}

/// A block backend that can give a guest an empty disk to swap on.
pub trait SwapBackend {
    /// Short name for tables (`qsd`, `virtio-blk`, ...).
    fn name(&self) -> String;

    /// Sets up an empty disk of `size_bytes`, with its files in `dir`.
    fn attach(&self, dir: &Path, size_bytes: u64) -> Result<AttachedDisk, GuestError>;
}

/// `qemu-storage-daemon`'s vhost-user-blk export of a sparse file.
#[derive(Debug, Clone, Default)]
pub struct QsdBackend {
    /// Options of the export.
    pub options: QsdOptions,
}

impl SwapBackend for QsdBackend {
    fn name(&self) -> String {
        "qsd".into()
    }

    fn attach(&self, dir: &Path, size_bytes: u64) -> Result<AttachedDisk, GuestError> {
        let img = dir.join("qsd-swap.img");
        image::sparse(&img, size_bytes)?;
        let qsd = QsdExport::start_with(&img, &dir.join("qsd.sock"), &self.options)?;
        Ok(AttachedDisk {
            disk: Disk::vhost_user_blk(qsd.socket()),
            guard: Box::new(qsd),
        })
    }
}

/// QEMU's own virtio-blk over a sparse file.
#[derive(Debug, Clone, Default)]
pub struct FileBackend;

impl SwapBackend for FileBackend {
    fn name(&self) -> String {
        "virtio-blk".into()
    }

    fn attach(&self, dir: &Path, size_bytes: u64) -> Result<AttachedDisk, GuestError> {
        let img = dir.join("file-swap.img");
        image::sparse(&img, size_bytes)?;
        Ok(AttachedDisk {
            disk: Disk::file(img),
            guard: Box::new(()),
        })
    }
}
