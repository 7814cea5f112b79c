//! Loading a Linux kernel and filling its zero page, with `linux-loader`: the bzImage or ELF
//! `vmlinux` into guest RAM, the command line, the initrd at the top of RAM, and `boot_params`
//! (the setup header, e820 map, initrd and the ACPI root pointer) for the 64-bit boot protocol.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    e820_map, initrd_placement, E820Entry, CMDLINE_ADDR, CMDLINE_MAX_BYTES,
    DEFAULT_KERNEL_PREF_ADDR, HIMEM_START, ZERO_PAGE_ADDR,
};

/// What went wrong loading a Linux kernel.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// A file could not be opened or read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file (kernel, initrd).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `linux-loader` refused the kernel image (not a bzImage or ELF, does not fit in RAM...).
    #[error("cannot load the kernel {path}: {source}")]
    Kernel {
        /// The kernel's path.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit entry point (boot protocol before 2.12, or built without
    /// `XLF_KERNEL_64`).
    #[error("the bzImage {path} has no 64-bit entry point (boot protocol {version:#06x}, xloadflags {xloadflags:#x}); an x86-64 kernel of Linux 3.8 or later is needed")]
    No64BitEntry {
        /// The kernel's path.
        path: PathBuf,
        /// The boot protocol version in its header.
        version: u16,
        /// Its `xloadflags`.
        xloadflags: u16,
    },
    /// The command line is not acceptable to the kernel.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initrd does not fit above what the kernel occupies while it boots.
    #[error("the initrd ({len_bytes} bytes) does not fit in guest RAM of {mem_bytes} bytes above the kernel's {lowest:#x}; give the guest more memory (--mem-mib)")]
    InitrdTooLarge {
        /// Initrd size.
        len_bytes: u64,
        /// Guest RAM.
        mem_bytes: u64,
        /// Lowest address it may start at.
        lowest: u64,
    },
    /// The kernel needs more memory than the guest has just to boot.
    #[error("the kernel occupies guest memory up to {needed:#x} while it boots, beyond the guest's {mem_bytes} bytes; give the guest more memory (--mem-mib)")]
    TooLittleMemory {
        /// End of the kernel's footprint.
        needed: u64,
        /// Guest RAM.
        mem_bytes: u64,
    },
    /// Writing the boot parameters failed.
    #[error("writing the boot parameters: {0}")]
    BootParams(String),
}

type Result<T> = std::result::Result<T, LinuxBootError>;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    /// A bzImage (`vmlinuz`) or an uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// An initramfs (any format the kernel takes: cpio, compressed, concatenated).
    pub initrd: Option<PathBuf>,
    /// The kernel command line (the VMM may append work-arounds for the host).
    pub cmdline: String,
}

/// The kernel image formats the VMM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage; entered at its 64-bit entry point (load address + 0x200).
    BzImage {
        /// The boot protocol version in its setup header (e.g. 0x20f).
        protocol: u16,
    },
    /// An ELF `vmlinux`; entered at its ELF entry point (`startup_64`) with the 64-bit protocol.
    Elf,
}

/// A loaded kernel: what the VMM gave it, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The format of the image.
    pub format: KernelFormat,
    /// The 64-bit entry point (guest-physical).
    pub entry: u64,
    /// Where the image was loaded.
    pub kernel: Range<u64>,
    /// Where the initrd was loaded.
    pub initrd: Option<Range<u64>>,
    /// The command line as the kernel receives it.
    pub cmdline: String,
    /// The e820 map in the zero page.
    pub e820: Vec<E820Entry>,
}

/// `boot_params.hdr.type_of_loader`: "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from a bzImage's load address.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// x86's `COMMAND_LINE_SIZE`, the limit for kernels that do not say (ELF images).
const LINUX_COMMAND_LINE_SIZE: usize = 2048;
/// Alignment of a relocatable kernel when no header says (ELF images).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

fn read_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LinuxBootError {
    let path = path.to_path_buf();
    move |source| LinuxBootError::Read { what, path, source }
}

/// The end of what a bzImage occupies while it decompresses itself: the decompressor copies
/// itself and the kernel to `max(pref_address, load address aligned up to kernel_alignment)`
/// and needs `init_size` bytes there (boot.rst: "init_size"). An initrd below that would be
/// overwritten (with KASLR the decompressor avoids the initrd instead; this is the worst case).
fn bzimage_footprint_end(hdr: &setup_header, load: u64, image_end: u64) -> u64 {
    let (pref, init_size) = if hdr.version >= 0x20a {
        (hdr.pref_address, u64::from(hdr.init_size))
    } else {
        (DEFAULT_KERNEL_PREF_ADDR, 0)
    };
    let align = u64::from(hdr.kernel_alignment).max(1);
    let aligned_load = load.div_ceil(align).saturating_mul(align);
    pref.max(aligned_load)
        .saturating_add(init_size)
        .max(image_end)
}

/// The command line the kernel receives: `cmdline` then `extra` (words already in `cmdline`
/// are not repeated), checked against `max_bytes` (without the terminating NUL).
pub fn build_cmdline(cmdline: &str, extra: &[&str], max_bytes: usize) -> Result<String> {
    let mut c = Cmdline::new(max_bytes + 1).map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;
    let bad = |e: linux_loader::cmdline::Error| {
        LinuxBootError::Cmdline(format!(
            "{e} (at most {max_bytes} bytes of printable ASCII)"
        ))
    };
    if !cmdline.trim().is_empty() {
        c.insert_str(cmdline).map_err(bad)?;
    }
    for word in extra {
        if !cmdline.split_ascii_whitespace().any(|w| w == *word) {
            c.insert_str(word).map_err(bad)?;
        }
    }
    let s = c
        .as_cstring()
        .map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;
    Ok(s.to_string_lossy().into_owned())
}

/// Loads `boot.kernel` (and `boot.initrd`) into `mem` (`mem_bytes` of RAM from address 0),
/// writes the command line (with `extra_cmdline` appended) and the zero page with the e820 map
/// and `rsdp_addr`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    boot: &LinuxBoot,
    extra_cmdline: &[&str],
    rsdp_addr: u64,
) -> Result<LoadedKernel> {
    let mut file = File::open(&boot.kernel).map_err(read_error("kernel", &boot.kernel))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(read_error("kernel", &boot.kernel))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let kernel_err = |source| LinuxBootError::Kernel {
        path: boot.kernel.clone(),
        source,
    };
    let (format, loaded, entry, footprint_end, max_cmdline) = if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, himem).map_err(kernel_err)?;
        let entry = r.kernel_load.0;
        (
            KernelFormat::Elf,
            r,
            entry,
            r.kernel_end,
            LINUX_COMMAND_LINE_SIZE,
        )
    } else {
        let r = BzImage::load(mem, himem, &mut file, himem).map_err(kernel_err)?;
        let hdr = r.setup_header.unwrap_or_default();
        let (version, xloadflags) = (hdr.version, hdr.xloadflags);
        if version < 0x20c || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxBootError::No64BitEntry {
                path: boot.kernel.clone(),
                version,
                xloadflags,
            });
        }
        let load = r.kernel_load.0;
        let max = if version >= 0x206 {
            hdr.cmdline_size as usize
        } else {
            255
        };
        (
            KernelFormat::BzImage { protocol: version },
            r,
            load + BZIMAGE_ENTRY_64_OFFSET,
            bzimage_footprint_end(&hdr, load, r.kernel_end),
            max,
        )
    };
    if footprint_end > mem_bytes {
        return Err(LinuxBootError::TooLittleMemory {
            needed: footprint_end,
            mem_bytes,
        });
    }
    let cmdline = build_cmdline(
        &boot.cmdline,
        extra_cmdline,
        max_cmdline.min(CMDLINE_MAX_BYTES - 1),
    )?;
    let mut c =
        Cmdline::new(cmdline.len() + 1).map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        c.insert_str(&cmdline)
            .map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &c)
        .map_err(|e| LinuxBootError::Cmdline(e.to_string()))?;

    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if loaded.setup_header.is_none() {
        // A bzImage's cmdline_size is the kernel's limit, for the loader to read; a vmlinux
        // has no header, so the VMM states the length it wrote.
        params.hdr.cmdline_size = cmdline.len() as u32;
    }

    let initrd = match &boot.initrd {
        None => None,
        Some(path) => {
            let mut f = File::open(path).map_err(read_error("initrd", path))?;
            let len_bytes = f.metadata().map_err(read_error("initrd", path))?.len();
            let addr_max = match loaded.setup_header {
                Some(h) if h.version >= 0x203 => u64::from(h.initrd_addr_max),
                Some(_) => 0x37ff_ffff,
                // A vmlinux takes the initrd anywhere below 4 GiB (ramdisk_image is 32 bits).
                None => u64::from(u32::MAX),
            };
            let range = initrd_placement(mem_bytes, len_bytes, addr_max, footprint_end).ok_or(
                LinuxBootError::InitrdTooLarge {
                    len_bytes,
                    mem_bytes,
                    lowest: footprint_end,
                },
            )?;
            let len = usize::try_from(len_bytes).map_err(|_| LinuxBootError::InitrdTooLarge {
                len_bytes,
                mem_bytes,
                lowest: footprint_end,
            })?;
            mem.read_exact_volatile_from(GuestAddress(range.start), &mut f, len)
                .map_err(|e| LinuxBootError::Read {
                    what: "initrd",
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            // Both fit in 32 bits: the range lies below guest RAM's end, below 4 GiB.
            params.hdr.ramdisk_image = range.start as u32;
            params.hdr.ramdisk_size = len_bytes as u32;
            Some(range)
        }
    };

    let e820 = e820_map(mem_bytes);
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        };
    }
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = rsdp_addr;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| LinuxBootError::BootParams(e.to_string()))?;

    Ok(LoadedKernel {
        format,
        entry,
        kernel: loaded.kernel_load.0..loaded.kernel_end,
        initrd,
        cmdline,
        e820,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_the_extras_once_and_respects_the_limit() {
        assert_eq!(
            build_cmdline("console=ttyS0 quiet", &["noxsave"], 100).unwrap(),
            "console=ttyS0 quiet noxsave"
        );
        assert_eq!(
            build_cmdline("noxsave console=ttyS0", &["noxsave"], 100).unwrap(),
            "noxsave console=ttyS0"
        );
        assert_eq!(build_cmdline("", &["noxsave"], 100).unwrap(), "noxsave");
        assert_eq!(build_cmdline("  ", &[], 100).unwrap(), "");
        assert!(build_cmdline(&"x".repeat(101), &[], 100).is_err());
        assert!(build_cmdline(&"x".repeat(97), &["noxsave"], 100).is_err());
        assert!(build_cmdline("tab\there", &[], 100).is_err());
    }

    #[test]
    fn bzimage_footprint_covers_the_decompression_area() {
        let mut hdr = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x300_0000,
            ..Default::default()
        };
        assert_eq!(
            bzimage_footprint_end(&hdr, 0x10_0000, 0xf0_0000),
            0x400_0000
        );
        // Loaded above pref_address: counted from the aligned load address.
        assert_eq!(
            bzimage_footprint_end(&hdr, 0x210_0000, 0x300_0000),
            0x220_0000 + 0x300_0000
        );
        hdr.version = 0x209;
        assert_eq!(
            bzimage_footprint_end(&hdr, 0x10_0000, 0x20_0000),
            DEFAULT_KERNEL_PREF_ADDR
        );
    }

    #[test]
    fn garbage_kernels_are_refused_without_panicking() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-linux-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let boot = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            LinuxBoot {
                kernel: p,
                initrd: None,
                cmdline: String::new(),
            }
        };
        for (name, bytes) in [
            ("empty", &b""[..]),
            ("short", &b"\x7fELF"[..]),
            ("zeros", &[0u8; 4096][..]),
        ] {
            let e = load_kernel(&mem, 64 << 20, &boot(name, bytes), &[], 0).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = load_kernel(
            &mem,
            64 << 20,
            &LinuxBoot {
                kernel: dir.join("missing"),
                initrd: None,
                cmdline: String::new(),
            },
            &[],
            0,
        )
        .unwrap_err();
        assert!(
            matches!(e, LinuxBootError::Read { what: "kernel", .. }),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
