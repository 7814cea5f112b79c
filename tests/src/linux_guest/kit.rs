//! The guest kit: kernel and initramfs built by `tests/linux-guest/build-kit.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::GuestError;

/// A built kit: what QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kit {
    /// Debian's cloud kernel (`vmlinuz`, a bzImage).
    pub kernel: PathBuf,
    /// The same kernel uncompressed (`vmlinux`, an ELF image cut out of the bzImage), for VMMs
    /// that boot it without the decompressor (ours; QEMU through its PVH entry).
    pub vmlinux: PathBuf,
    /// Our initramfs (busybox, virtio modules, guest-checker, /init).
    pub initrd: PathBuf,
    /// The kernel release (`6.1.0-<N>-cloud-amd64`).
    pub release: String,
}

static KIT: Mutex<Option<Kit>> = Mutex::new(None);

impl Kit {
    /// The workspace's root directory.
    pub fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests crate lives one level below the workspace root")
            .to_path_buf()
    }

    /// Where the kit is built: `$LINUX_GUEST_KIT_DIR`, else `target/linux-guest` in the workspace.
    pub fn dir() -> PathBuf {
        std::env::var_os("LINUX_GUEST_KIT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::workspace_root().join("target/linux-guest"))
    }

    /// Builds the kit, or finds it current (the script's stamp makes that a fraction of a
    /// second), once per process. [`GuestError::Unavailable`] when this machine lacks what the
    /// kit needs (no apt lists, no cpio, no busybox-static, ...).
    pub fn ensure() -> Result<Kit, GuestError> {
        let mut cached = KIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kit) = cached.as_ref() {
            return Ok(kit.clone());
        }
        let kit = Self::build()?;
        *cached = Some(kit.clone());
        Ok(kit)
    }

    fn build() -> Result<Kit, GuestError> {
        let script = Self::workspace_root().join("tests/linux-guest/build-kit.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("--out")
            .arg(Self::dir())
            .output()
            .map_err(GuestError::io(format!("run {}", script.display())))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.code() == Some(3) {
            let why = stderr.lines().last().unwrap_or("build-kit.sh: unavailable");
            return Err(GuestError::Unavailable(format!("Linux guest kit: {why}")));
        }
        if !out.status.success() {
            return Err(GuestError::KitBuild {
                status: out.status.to_string(),
                stderr,
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| GuestError::KitBuild {
                    status: out.status.to_string(),
                    stderr: format!("no {k}= line in its output: {stdout}"),
                })
        };
        Ok(Kit {
            kernel: field("kernel")?.into(),
            vmlinux: field("vmlinux")?.into(),
            initrd: field("initrd")?.into(),
            release: field("release")?,
        })
    }
}
