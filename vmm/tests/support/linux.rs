//! Linux guests in tests: a VM of the Linux kind, tiny hand-assembled "kernels" (ELF images
//! entered through the 64-bit boot protocol like a vmlinux), and the kvm-pvm check.

use std::path::{Path, PathBuf};

use vmm::kvm::linux::LinuxBoot;
use vmm::kvm::vm::SharedBuffer;
use vmm::{GuestKind, SerialOutput, VmConfig};

/// Where [`tiny_kernel`] images are linked and entered (a vmlinux's `startup_64` is there too).
pub const TINY_KERNEL_ENTRY: u64 = 0x100_0000;

/// Whether this host's KVM is kvm-pvm (what the VMM's work-arounds key on).
pub fn kvm_pvm() -> bool {
    Path::new(vmm::kvm::linux::quirks::KVM_PVM_SYSFS).exists()
}

/// A Linux-kind VM config with `mem_mib` of RAM whose serial output goes to `out`.
pub fn linux_config(mem_mib: u64, out: &SharedBuffer) -> VmConfig {
    VmConfig {
        mem_bytes: mem_mib << 20,
        serial: SerialOutput::Buffer(out.clone()),
        kind: GuestKind::Linux,
        ..VmConfig::default()
    }
}

/// A static ELF64 x86-64 executable with one loadable segment holding `code` at
/// [`TINY_KERNEL_ENTRY`] (physical = virtual), entered there.
pub fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    const PHOFF: u64 = 64;
    const CODE_OFF: u64 = 0x1000;
    let mut f = vec![0u8; CODE_OFF as usize];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // ELF version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&TINY_KERNEL_ENTRY.to_le_bytes());
    f[32..40].copy_from_slice(&PHOFF.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = PHOFF as usize;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    f[ph + 8..ph + 16].copy_from_slice(&CODE_OFF.to_le_bytes());
    f[ph + 16..ph + 24].copy_from_slice(&TINY_KERNEL_ENTRY.to_le_bytes());
    f[ph + 24..ph + 32].copy_from_slice(&TINY_KERNEL_ENTRY.to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// Writes `image` to a file named `name` in a per-process scratch directory and returns a boot
/// description for it. The file (and the directory, once empty) goes away when the returned
/// [`BootFile`] is dropped.
pub fn boot_file(name: &str, image: &[u8], cmdline: &str) -> BootFile {
    let dir = scratch_dir("tiny-kernels");
    let path = dir.join(name);
    std::fs::write(&path, image).unwrap();
    BootFile(LinuxBoot {
        kernel: path,
        initrd: None,
        cmdline: cmdline.into(),
    })
}

/// A boot description whose kernel file is removed on drop.
pub struct BootFile(LinuxBoot);

impl std::ops::Deref for BootFile {
    type Target = LinuxBoot;

    fn deref(&self) -> &LinuxBoot {
        &self.0
    }
}

impl Drop for BootFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0.kernel);
        if let Some(dir) = self.0.kernel.parent() {
            // Fails while another test's file is still there; the last one removes it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A directory under the system's temporary directory, unique to this process and `tag`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Linux-kind VM built the way `vmm run --kernel --gcma-pool-mib 16 --balloon-pages 0`
/// builds it: virtio-gcma in slot 0 (16 MiB pool, 64 MiB grant window), the balloon in slot 1.
pub fn linux_vm_with_devices(
    hv: &vmm::Hypervisor,
    mem_mib: u64,
    out: &SharedBuffer,
) -> vmm::launch::BuiltVm {
    let pool = gcma_host::pool::Pool::new(gcma_host::pool::PoolConfig::new(16 << 8)).unwrap();
    let config = VmConfig {
        grant_window_bytes: 64 << 20,
        ..linux_config(mem_mib, out)
    };
    vmm::launch::VmBuilder::new("linux-test", config, "test kernel")
        .gcma(pool)
        .balloon(balloon::virtio_balloon::BalloonConfig::default())
        .build(hv)
        .unwrap()
}

/// A virtio-mmio device as a decompiled DSDT describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsdtDevice {
    /// The AML device name (`VR00`).
    pub name: String,
    /// `_HID`.
    pub hid: String,
    /// `Memory32Fixed` base and length.
    pub window: (u64, u64),
    /// The `Interrupt` descriptor's GSI.
    pub gsi: u32,
}

fn hex_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let start = rest.find("0x")? + 2;
    let digits: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

/// The `Device (...)` blocks of `iasl -d` output that have a `Memory32Fixed` window and an
/// `Interrupt`, in order.
pub fn dsdt_devices(dsl: &str) -> Vec<DsdtDevice> {
    let mut out = Vec::new();
    let blocks: Vec<&str> = dsl.split("Device (").skip(1).collect();
    for b in blocks {
        let name: String = b.chars().take_while(|c| *c != ')').collect();
        let Some(base) = hex_after(b, "Memory32Fixed (ReadWrite,") else {
            continue;
        };
        let after_base = &b[b.find("Address Base").unwrap_or(0)..];
        let len = hex_after(after_base, "Address Base").unwrap_or(0);
        let gsi = hex_after(
            b,
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive",
        )
        .unwrap_or(u64::MAX) as u32;
        let hid = b
            .split("Name (_HID, \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        out.push(DsdtDevice {
            name,
            hid,
            window: (base, len),
            gsi,
        });
    }
    out
}

/// The `iasl` binary, or why it is missing.
pub fn iasl() -> Result<PathBuf, e2e_tests::linux_guest::GuestError> {
    e2e_tests::linux_guest::find_tool("iasl")
}

/// Runs `iasl -d` on `dir/<name>.dat` and returns the `.dsl` text, or iasl's output when it
/// failed or reported errors or warnings.
pub fn decompile(iasl: &Path, dir: &Path, name: &str) -> Result<String, String> {
    let out = std::process::Command::new(iasl)
        .arg("-d")
        .arg(format!("{name}.dat"))
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running iasl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let noisy = text
        .lines()
        .any(|l| l.contains("Error") || l.contains("Warning") || l.contains("Remark"));
    if !out.status.success() || noisy {
        return Err(format!("iasl -d {name}.dat ({}): {text}", out.status));
    }
    std::fs::read_to_string(dir.join(format!("{name}.dsl")))
        .map_err(|e| format!("reading {name}.dsl: {e}"))
}
