//! The virtio-mmio register window, and probing it for the gcma device.
//!
//! [`RegisterWindow`] is the seam: [`DevMemWindow`] maps real registers through `/dev/mem`,
//! [`VecWindow`] is a plain byte array for tests, and any other implementation (for instance one
//! over `balloon`'s test harness) can stand in. [`probe`] reads the identification registers
//! through it.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use gcma_proto::gcma::VIRTIO_ID_GCMA;

/// `MagicValue` register offset.
pub const REG_MAGIC_VALUE: usize = 0x000;
/// `Version` register offset.
pub const REG_VERSION: usize = 0x004;
/// `DeviceID` register offset.
pub const REG_DEVICE_ID: usize = 0x008;
/// `VendorID` register offset.
pub const REG_VENDOR_ID: usize = 0x00c;
/// `Status` register offset.
pub const REG_STATUS: usize = 0x070;
/// The value of `MagicValue`: "virt" read as a little-endian `u32`.
pub const VIRTIO_MMIO_MAGIC: u32 = 0x7472_6976;
/// Smallest window that holds every virtio-mmio version 2 register (config space starts here).
pub const MIN_WINDOW_LEN: usize = 0x100;

/// 32-bit access to one device's virtio-mmio registers.
///
/// Offsets are relative to the window's base. Accesses outside the window, or not 4-byte
/// aligned, read as all ones and are dropped on write, the way an unclaimed bus address behaves;
/// they never panic.
pub trait RegisterWindow {
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: usize, value: u32);
    /// Window length in bytes.
    fn len_bytes(&self) -> usize;
}

impl<W: RegisterWindow + ?Sized> RegisterWindow for &mut W {
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn len_bytes(&self) -> usize {
        (**self).len_bytes()
    }
}

impl<W: RegisterWindow + ?Sized> RegisterWindow for Box<W> {
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn len_bytes(&self) -> usize {
        (**self).len_bytes()
    }
}

fn in_window(offset: usize, len: usize) -> bool {
    offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|e| e <= len)
}

/// A register window over plain bytes (little-endian), for tests and fixtures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecWindow {
    /// The register bytes.
    pub bytes: Vec<u8>,
    /// Every write, in order: `(offset, value)`.
    pub writes: Vec<(usize, u32)>,
}

impl VecWindow {
    /// A zeroed window of `len_bytes`.
    pub fn new(len_bytes: usize) -> Self {
        VecWindow {
            bytes: vec![0; len_bytes],
            writes: Vec::new(),
        }
    }

    /// A window that identifies as a virtio-mmio version-`version` device with `device_id`.
    pub fn with_identity(len_bytes: usize, magic: u32, version: u32, device_id: u32) -> Self {
        let mut w = VecWindow::new(len_bytes);
        w.set(REG_MAGIC_VALUE, magic);
        w.set(REG_VERSION, version);
        w.set(REG_DEVICE_ID, device_id);
        w
    }

    /// Sets a register without recording a write.
    pub fn set(&mut self, offset: usize, value: u32) {
        if in_window(offset, self.bytes.len()) {
            self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
}

impl RegisterWindow for VecWindow {
    fn read32(&mut self, offset: usize) -> u32 {
        match self.bytes.get(offset..offset.saturating_add(4)) {
            Some(b) if offset.is_multiple_of(4) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => u32::MAX,
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.writes.push((offset, value));
        self.set(offset, value);
    }
    fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Why a register window could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The physical-memory device could not be opened.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// The device path (normally `/dev/mem`).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// `mmap` of the register range failed.
    #[error("cannot map {len:#x} bytes at {base:#x} from {path}: {source}{hint}")]
    Map {
        /// The device path.
        path: PathBuf,
        /// Physical base.
        base: u64,
        /// Length.
        len: usize,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The window is too small or does not fit the address space.
    #[error("register window {base:#x}+{len:#x} is invalid: it must be 4-byte aligned, hold at least {MIN_WINDOW_LEN:#x} bytes and fit the address space")]
    BadWindow {
        /// Physical base.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// Registers mapped from a physical-memory device file (`/dev/mem`, opened `O_SYNC` so the
/// mapping is uncached), with volatile 32-bit accesses.
#[derive(Debug)]
pub struct DevMemWindow {
    map: NonNull<u8>,
    map_len: usize,
    /// Offset of the register base inside the mapping (bases need not be page-aligned: device
    /// trees put virtio-mmio devices 0x200 apart).
    skew: usize,
    len: usize,
    base: u64,
}

// SAFETY: the mapping is owned by this value and only accessed through `&mut self`.
unsafe impl Send for DevMemWindow {}

impl DevMemWindow {
    /// Maps `len_bytes` of registers at physical address `base` from `/dev/mem`.
    pub fn open(base: u64, len_bytes: u64) -> Result<Self, MapError> {
        Self::open_path(Path::new("/dev/mem"), base, len_bytes)
    }

    /// Maps `len_bytes` at offset `base` of the file at `path` (a fake register file in tests).
    pub fn open_path(path: &Path, base: u64, len_bytes: u64) -> Result<Self, MapError> {
        let bad = MapError::BadWindow {
            base,
            len: len_bytes,
        };
        let len = usize::try_from(len_bytes).map_err(|_| MapError::BadWindow {
            base,
            len: len_bytes,
        })?;
        if len < MIN_WINDOW_LEN || !base.is_multiple_of(4) || base.checked_add(len_bytes).is_none()
        {
            return Err(bad);
        }
        let page = super::page_size() as u64;
        let aligned = base & !(page - 1);
        let skew = (base - aligned) as usize;
        let map_len = (skew + len).next_multiple_of(page as usize);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| MapError::Open {
                path: path.to_path_buf(),
                hint: match e.kind() {
                    std::io::ErrorKind::PermissionDenied => " (run as root)",
                    std::io::ErrorKind::NotFound => {
                        " (kernel built without CONFIG_DEVMEM, or not a Linux guest)"
                    }
                    _ => "",
                },
                source: e,
            })?;
        let off = libc::off_t::try_from(aligned).map_err(|_| MapError::BadWindow {
            base,
            len: len_bytes,
        })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint), of a file we opened;
        // no existing memory is affected. The result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(MapError::Map {
                path: path.to_path_buf(),
                base,
                len,
                hint: if e.raw_os_error() == Some(libc::EPERM) {
                    " (CONFIG_IO_STRICT_DEVMEM forbids mapping a range a kernel driver claimed: \
                     unbind the virtio-mmio driver from the device, e.g. with --unbind)"
                } else {
                    ""
                },
                source: e,
            });
        }
        // The mapping stays valid after the file is closed.
        drop(file);
        Ok(DevMemWindow {
            map: NonNull::new(p.cast()).ok_or(bad)?,
            map_len,
            skew,
            len,
            base,
        })
    }

    /// Physical base address of the registers.
    pub fn base(&self) -> u64 {
        self.base
    }
}

impl RegisterWindow for DevMemWindow {
    fn read32(&mut self, offset: usize) -> u32 {
        if !in_window(offset, self.len) {
            return u32::MAX;
        }
        // SAFETY: `skew + offset + 4 <= skew + len <= map_len` (checked above); the address is
        // 4-aligned (page-aligned mapping, `skew` and `offset` multiples of 4, checked in
        // `open_path` and `in_window`); the mapping lives as long as `self`.
        unsafe {
            self.map
                .as_ptr()
                .add(self.skew + offset)
                .cast::<u32>()
                .read_volatile()
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if !in_window(offset, self.len) {
            return;
        }
        // Ring and buffer writes must be visible to the device before a register write (e.g.
        // QueueNotify) is.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: as in `read32`: in bounds, aligned, mapping alive.
        unsafe {
            self.map
                .as_ptr()
                .add(self.skew + offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    fn len_bytes(&self) -> usize {
        self.len
    }
}

impl Drop for DevMemWindow {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` describe the mapping created in `open_path`, unmapped once.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// What the identification registers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `MagicValue`.
    pub magic: u32,
    /// `Version`.
    pub version: u32,
    /// `DeviceID`.
    pub device_id: u32,
    /// `VendorID`.
    pub vendor_id: u32,
}

impl Identity {
    /// Reads the identification registers.
    pub fn read<W: RegisterWindow + ?Sized>(w: &mut W) -> Identity {
        Identity {
            magic: w.read32(REG_MAGIC_VALUE),
            version: w.read32(REG_VERSION),
            device_id: w.read32(REG_DEVICE_ID),
            vendor_id: w.read32(REG_VENDOR_ID),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.magic != VIRTIO_MMIO_MAGIC {
            return write!(f, "no virtio-mmio device (magic {:#010x})", self.magic);
        }
        write!(
            f,
            "virtio-mmio v{} device id {} ({})",
            self.version,
            self.device_id,
            device_name(self.device_id)
        )
    }
}

/// A readable name for a virtio device id.
pub fn device_name(id: u32) -> &'static str {
    match id {
        0 => "placeholder, no device",
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "entropy",
        5 => "balloon",
        9 => "9p",
        16 => "gpu",
        18 => "input",
        19 => "vsock",
        24 => "mem",
        26 => "fs",
        VIRTIO_ID_GCMA => "gcma",
        _ => "other",
    }
}

/// Why a window does not hold a usable gcma device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// `MagicValue` is not "virt".
    #[error("magic value {0:#010x} is not \"virt\" (0x74726976): not a virtio-mmio device")]
    BadMagic(u32),
    /// A legacy (version 1) or unknown transport version.
    #[error("virtio-mmio version {0}, only version 2 (virtio 1.x) is supported")]
    BadVersion(u32),
    /// Some other virtio device.
    #[error("device id {0} ({name}) is not virtio-gcma ({VIRTIO_ID_GCMA:#x})", name = device_name(*.0))]
    NotGcma(u32),
    /// The window cannot hold the registers.
    #[error("register window of {0:#x} bytes is smaller than {MIN_WINDOW_LEN:#x}")]
    WindowTooSmall(usize),
}

/// Checks that `w` holds a virtio-mmio version 2 gcma device; returns what it read either way.
pub fn probe<W: RegisterWindow + ?Sized>(w: &mut W) -> (Identity, Result<(), ProbeError>) {
    if w.len_bytes() < MIN_WINDOW_LEN {
        let id = Identity {
            magic: 0,
            version: 0,
            device_id: 0,
            vendor_id: 0,
        };
        return (id, Err(ProbeError::WindowTooSmall(w.len_bytes())));
    }
    let id = Identity::read(w);
    let r = if id.magic != VIRTIO_MMIO_MAGIC {
        Err(ProbeError::BadMagic(id.magic))
    } else if id.version != 2 {
        Err(ProbeError::BadVersion(id.version))
    } else if id.device_id != VIRTIO_ID_GCMA {
        Err(ProbeError::NotGcma(id.device_id))
    } else {
        Ok(())
    };
    (id, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_accepts_only_a_v2_gcma_device() {
        let mut w = VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, VIRTIO_ID_GCMA);
        assert_eq!(probe(&mut w).1, Ok(()));
        let mut w = VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 1, VIRTIO_ID_GCMA);
        assert_eq!(probe(&mut w).1, Err(ProbeError::BadVersion(1)));
        let mut w = VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, 2);
        let (id, r) = probe(&mut w);
        assert_eq!(r, Err(ProbeError::NotGcma(2)));
        assert!(id.to_string().contains("block"), "{id}");
        assert!(r.unwrap_err().to_string().contains("block"));
        let mut w = VecWindow::with_identity(0x200, 0xffff_ffff, 2, VIRTIO_ID_GCMA);
        assert_eq!(probe(&mut w).1, Err(ProbeError::BadMagic(0xffff_ffff)));
        let mut w = VecWindow::with_identity(0x40, VIRTIO_MMIO_MAGIC, 2, VIRTIO_ID_GCMA);
        assert_eq!(probe(&mut w).1, Err(ProbeError::WindowTooSmall(0x40)));
    }

    #[test]
    fn out_of_window_accesses_are_inert() {
        let mut w = VecWindow::new(0x100);
        assert_eq!(w.read32(0x100), u32::MAX);
        assert_eq!(w.read32(0x2), u32::MAX);
        assert_eq!(w.read32(usize::MAX - 1), u32::MAX);
        w.write32(0x100, 7);
        w.write32(usize::MAX, 7);
        assert!(w.bytes.iter().all(|b| *b == 0));
    }
}
