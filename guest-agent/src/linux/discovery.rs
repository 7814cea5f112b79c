//! Finding virtio-mmio devices in a Linux guest.
//!
//! Linux learns about virtio-mmio devices from three places, and each leaves a trace an agent in
//! userspace can read:
//!
//! * the kernel command line, `virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>]` (what
//!   Firecracker passes on x86), read from `/proc/cmdline`;
//! * ACPI (`LNRO0005` devices) or a device tree (`virtio,mmio` nodes), which show up as platform
//!   devices in `/sys/bus/platform/devices/` (names like `LNRO0005:00`, `a0000000.virtio_mmio`,
//!   or `virtio-mmio.0` for command-line devices), with `of_node/reg` for device-tree nodes;
//! * `/proc/iomem`, where every claimed MMIO range is listed with its owner
//!   (`a0000000-a00001ff : LNRO0005:00`). Addresses read as zeros without `CAP_SYS_ADMIN`.
//!
//! Every parser here is a pure function over text (or bytes) so it is tested with sample input;
//! [`scan`] reads the files under a root directory (`/` in production, a fixture tree in tests)
//! and merges what it finds, one [`Candidate`] per base address.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Register window size assumed when a source gives only a base address (the virtio-mmio
/// registers plus a small config space fit in 0x200 bytes; Linux's device trees use 0x200).
pub const DEFAULT_WINDOW_LEN: u64 = 0x200;

/// Where a candidate was seen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Given on the agent's command line.
    Flag,
    /// `virtio_mmio.device=` on the kernel command line.
    KernelCmdline,
    /// A line of `/proc/iomem` with this owner name.
    Iomem(String),
    /// A platform device in sysfs with this name.
    Sysfs(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => write!(f, "command-line flag"),
            Source::KernelCmdline => write!(f, "kernel command line"),
            Source::Iomem(n) => write!(f, "/proc/iomem ({n})"),
            Source::Sysfs(n) => write!(f, "sysfs ({n})"),
        }
    }
}

/// A virtio-mmio register window that may hold the gcma device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Guest-physical base address of the registers.
    pub base: u64,
    /// Window length in bytes.
    pub len_bytes: u64,
    /// Where it was seen (all sources, first one first).
    pub sources: Vec<Source>,
    /// The sysfs platform device name, when one matched (for unbinding a kernel driver).
    pub sysfs_name: Option<String>,
    /// Name of the kernel driver bound to the sysfs device, if any (`virtio-mmio` normally).
    pub bound_driver: Option<String>,
    /// The virtio device id the bound kernel driver reports (`<device>/virtio<N>/device`).
    pub kernel_device_id: Option<u32>,
}

impl Candidate {
    /// A candidate seen in one source.
    pub fn new(base: u64, len_bytes: u64, source: Source) -> Self {
        Candidate {
            base,
            len_bytes,
            sources: vec![source],
            sysfs_name: None,
            bound_driver: None,
            kernel_device_id: None,
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x} (from ", self.base, self.len_bytes)?;
        for (i, s) in self.sources.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{s}")?;
        }
        write!(f, ")")
    }
}

/// Why a piece of discovery text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A `--device`/`--mmio` argument is malformed.
    #[error("bad device address {0:?}: expected BASE[@SIZE] or SIZE@BASE, e.g. 0xd0000000@0x1000")]
    BadDeviceArg(String),
    /// `/proc/iomem` lists virtio-mmio owners but with all-zero addresses: the kernel hides them
    /// from readers without `CAP_SYS_ADMIN`.
    #[error(
        "/proc/iomem shows virtio-mmio ranges with zeroed addresses: run as root (CAP_SYS_ADMIN)"
    )]
    IomemHidden,
}

/// Parses a C-style integer as Linux's `memparse` does: `0x` hex, leading-`0` octal or decimal,
/// optionally followed by one of `K`, `M`, `G`, `T`, `P`, `E` (binary multiples, either case).
pub fn parse_memsize(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, c) if "kKmMgGtTpPeE".contains(c) && !is_hex_digit_in_hex(s, c) => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                _ => 60,
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let v = parse_c_int(num)?;
    v.checked_mul(1u64.checked_shl(shift)?)
        .filter(|r| shift == 0 || r >> shift == v)
}

/// `E` is a valid hex digit: "0x1E" is 30, not 1 EiB.
fn is_hex_digit_in_hex(s: &str, c: char) -> bool {
    (s.starts_with("0x") || s.starts_with("0X")) && c.is_ascii_hexdigit()
}

/// Parses `0x` hex, leading-`0` octal or decimal, as `%lli` does.
pub fn parse_c_int(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// Parses the agent's `--device` argument: `BASE`, `BASE@SIZE` or the kernel's `SIZE@BASE`
/// order (told apart by which side looks like an address: a size has a `K`/`M`/`G` suffix or is
/// smaller than the other side). `BASE` alone means a [`DEFAULT_WINDOW_LEN`] window.
pub fn parse_device_arg(s: &str) -> Result<Candidate, DiscoveryError> {
    let bad = || DiscoveryError::BadDeviceArg(s.to_string());
    let (base, len) = match s.split_once('@') {
        None => (parse_c_int(s).ok_or_else(bad)?, DEFAULT_WINDOW_LEN),
        Some((a, b)) => {
            let has_suffix = |t: &str| {
                t.trim()
                    .chars()
                    .last()
                    .is_some_and(|c| "kKmMgG".contains(c) && !is_hex_digit_in_hex(t.trim(), c))
            };
            let (x, y) = (
                parse_memsize(a).ok_or_else(bad)?,
                parse_memsize(b).ok_or_else(bad)?,
            );
            if has_suffix(a) || (!has_suffix(b) && x < y) {
                (y, x)
            } else {
                (x, y)
            }
        }
    };
    if len == 0 || base.checked_add(len).is_none() {
        return Err(bad());
    }
    Ok(Candidate::new(base, len, Source::Flag))
}

/// Every `virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>]` on a kernel command line
/// (`/proc/cmdline`). Malformed entries are skipped (the kernel rejects them too).
pub fn parse_cmdline(cmdline: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some(val) = word
            .strip_prefix("virtio_mmio.device=")
            .or_else(|| word.strip_prefix("virtio-mmio.device="))
        else {
            continue;
        };
        let Some((size, rest)) = val.split_once('@') else {
            continue;
        };
        let base = rest.split(':').next().unwrap_or("");
        if let (Some(len), Some(base)) = (parse_memsize(size), parse_c_int(base)) {
            if len > 0 && base.checked_add(len).is_some() {
                out.push(Candidate::new(base, len, Source::KernelCmdline));
            }
        }
    }
    out
}

/// Whether a resource owner or platform device name denotes a virtio-mmio device: ACPI
/// `LNRO0005:NN`, device-tree `<addr>.virtio_mmio`, command-line `virtio-mmio.N`, or the
/// driver's own `virtio-mmio` claim.
pub fn is_virtio_mmio_name(name: &str) -> bool {
    let n = name.trim();
    n.starts_with("LNRO0005:")
        || n.contains("virtio_mmio")
        || n == "virtio-mmio"
        || n.strip_prefix("virtio-mmio.")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Virtio-mmio ranges listed in `/proc/iomem` text (`start-end : owner`, nested entries
/// indented). A range is reported once even when both the platform device and the bound driver
/// claim it. Fails with [`DiscoveryError::IomemHidden`] when matching lines exist but all
/// addresses are zero (an unprivileged reader).
pub fn parse_iomem(text: &str) -> Result<Vec<Candidate>, DiscoveryError> {
    let mut by_base: BTreeMap<u64, Candidate> = BTreeMap::new();
    let mut hidden = false;
    for line in text.lines() {
        let Some((range, owner)) = line.split_once(" : ") else {
            continue;
        };
        if !is_virtio_mmio_name(owner) {
            continue;
        }
        let Some((s, e)) = range.trim().split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if start == 0 && end == 0 {
            hidden = true;
            continue;
        }
        if end < start {
            continue;
        }
        let owner = owner.trim().to_string();
        let len = end - start + 1;
        by_base
            .entry(start)
            .and_modify(|c| {
                // Prefer the platform device's name over the driver's generic claim.
                if owner != "virtio-mmio" {
                    c.sources.push(Source::Iomem(owner.clone()));
                }
            })
            .or_insert_with(|| Candidate::new(start, len, Source::Iomem(owner.clone())));
    }
    if hidden && by_base.is_empty() {
        return Err(DiscoveryError::IomemHidden);
    }
    Ok(by_base.into_values().collect())
}

/// The base address encoded in a device-tree platform device name, `<unit-address>.<node>`
/// (e.g. `a0000000.virtio_mmio` → `0xa0000000`). `None` for other names.
pub fn parse_sysfs_name(name: &str) -> Option<u64> {
    let (addr, node) = name.split_once('.')?;
    if !node.contains("virtio_mmio") && node != "virtio-mmio" && node != "virtio" {
        return None;
    }
    u64::from_str_radix(addr, 16).ok()
}

/// Decodes a device-tree `reg` property (big-endian cells): the first `(address, size)` pair,
/// trying `#address-cells = #size-cells = 2` for 16-byte values and `1`/`1` for 8-byte ones
/// (the two layouts virtio-mmio nodes use in practice).
pub fn parse_of_reg(reg: &[u8]) -> Option<(u64, u64)> {
    let cell = |i: usize| -> Option<u64> {
        let b: [u8; 4] = reg.get(i * 4..i * 4 + 4)?.try_into().ok()?;
        Some(u64::from(u32::from_be_bytes(b)))
    };
    match reg.len() {
        n if n >= 16 && n % 16 == 0 => {
            Some(((cell(0)? << 32) | cell(1)?, (cell(2)? << 32) | cell(3)?))
        }
        8 => Some((cell(0)?, cell(1)?)),
        _ => None,
    }
}

/// Memory ranges of a sysfs `resource` file in the PCI layout (`0xSTART 0xEND 0xFLAGS` per
/// line; unused lines are all zeros) or a PNP `resources` file (`mem 0xSTART-0xEND`).
pub fn parse_resource_file(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(r) = line.strip_prefix("mem ") {
            if let Some((s, e)) = r.trim().split_once('-') {
                if let (Some(s), Some(e)) = (parse_c_int(s), parse_c_int(e)) {
                    if e >= s {
                        out.push((s, e - s + 1));
                    }
                }
            }
            continue;
        }
        let f: Vec<_> = line.split_ascii_whitespace().collect();
        if f.len() == 3 {
            if let (Some(s), Some(e), Some(flags)) =
                (parse_c_int(f[0]), parse_c_int(f[1]), parse_c_int(f[2]))
            {
                // IORESOURCE_MEM = 0x200.
                if flags & 0x200 != 0 && e > s {
                    out.push((s, e - s + 1));
                }
            }
        }
    }
    out
}

/// What a sysfs scan found about one platform device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsDevice {
    /// Device name (the directory name).
    pub name: String,
    /// Register window, when the directory says where it is.
    pub window: Option<(u64, u64)>,
    /// Bound driver name.
    pub driver: Option<String>,
    /// Virtio device id from the `virtio<N>/device` child the kernel driver created.
    pub virtio_device_id: Option<u32>,
}

/// Reads the virtio-mmio platform devices under `<root>/sys/bus/platform/devices`. Devices are
/// recognised by name ([`is_virtio_mmio_name`]), `modalias` (`acpi:LNRO0005:`,
/// `of:...virtio,mmio`) or `of_node/compatible`; their window comes from `of_node/reg`, a
/// `resource(s)` file or the name's unit address, in that order.
pub fn scan_sysfs(root: &Path) -> Vec<SysfsDevice> {
    let dir = root.join("sys/bus/platform/devices");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let modalias = std::fs::read_to_string(path.join("modalias")).unwrap_or_default();
        let compatible = std::fs::read(path.join("of_node/compatible")).unwrap_or_default();
        let compat_hit = compatible.split(|b| *b == 0).any(|c| c == b"virtio,mmio");
        if !(is_virtio_mmio_name(&name)
            || modalias.starts_with("acpi:LNRO0005:")
            || modalias.contains("virtio,mmio")
            || compat_hit)
        {
            continue;
        }
        let window = std::fs::read(path.join("of_node/reg"))
            .ok()
            .and_then(|r| parse_of_reg(&r))
            .or_else(|| {
                ["resource", "resources", "firmware_node/resources"]
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(path.join(f)).ok())
                    .find_map(|t| parse_resource_file(&t).first().copied())
            })
            .or_else(|| parse_sysfs_name(&name).map(|b| (b, DEFAULT_WINDOW_LEN)));
        let driver = std::fs::read_link(path.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        let virtio_device_id = std::fs::read_dir(&path).ok().and_then(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                .find_map(|e| std::fs::read_to_string(e.path().join("device")).ok())
                .and_then(|t| parse_c_int(&t))
                .and_then(|v| u32::try_from(v).ok())
        });
        out.push(SysfsDevice {
            name,
            window,
            driver,
            virtio_device_id,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The merged result of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// One candidate per base address, in address order.
    pub candidates: Vec<Candidate>,
    /// Platform devices whose window could not be determined (named in error messages).
    pub unlocated: Vec<String>,
    /// Problems met on the way (unreadable files, hidden addresses), for the error message.
    pub notes: Vec<String>,
}

/// Scans `<root>/proc/cmdline`, `<root>/proc/iomem` and `<root>/sys/bus/platform/devices` and
/// merges the candidates by base address. A sysfs device with no window of its own takes the
/// window `/proc/iomem` lists under its name.
pub fn scan(root: &Path) -> ScanResult {
    let mut res = ScanResult::default();
    let mut by_base: BTreeMap<u64, Candidate> = BTreeMap::new();
    let add = |c: Candidate, by_base: &mut BTreeMap<u64, Candidate>| {
        by_base
            .entry(c.base)
            .and_modify(|old| {
                for s in &c.sources {
                    if !old.sources.contains(s) {
                        old.sources.push(s.clone());
                    }
                }
                if old.sysfs_name.is_none() {
                    old.sysfs_name.clone_from(&c.sysfs_name);
                    old.bound_driver.clone_from(&c.bound_driver);
                    old.kernel_device_id = c.kernel_device_id;
                }
            })
            .or_insert(c);
    };
    let read = |p: PathBuf, notes: &mut Vec<String>| match std::fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(e) => {
            notes.push(format!("{}: {e}", p.display()));
            None
        }
    };
    if let Some(t) = read(root.join("proc/cmdline"), &mut res.notes) {
        for c in parse_cmdline(&t) {
            add(c, &mut by_base);
        }
    }
    let mut iomem = Vec::new();
    if let Some(t) = read(root.join("proc/iomem"), &mut res.notes) {
        match parse_iomem(&t) {
            Ok(v) => iomem = v,
            Err(e) => res.notes.push(e.to_string()),
        }
    }
    for c in &iomem {
        add(c.clone(), &mut by_base);
    }
    for d in scan_sysfs(root) {
        let window = d.window.or_else(|| {
            iomem
                .iter()
                .find(|c| c.sources.contains(&Source::Iomem(d.name.clone())))
                .map(|c| (c.base, c.len_bytes))
        });
        match window {
            Some((base, len)) => {
                let mut c = Candidate::new(base, len, Source::Sysfs(d.name.clone()));
                c.sysfs_name = Some(d.name);
                c.bound_driver = d.driver;
                c.kernel_device_id = d.virtio_device_id;
                add(c, &mut by_base);
            }
            None => res.unlocated.push(d.name),
        }
    }
    // A name found only in iomem may still be the sysfs device: attach names for unbinding.
    for c in by_base.values_mut() {
        if c.sysfs_name.is_none() {
            if let Some(Source::Iomem(n)) = c
                .sources
                .iter()
                .find(|s| matches!(s, Source::Iomem(n) if n != "virtio-mmio"))
            {
                c.sysfs_name = Some(n.clone());
            }
        }
    }
    res.candidates = by_base.into_values().collect();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memsize_follows_memparse() {
        assert_eq!(parse_memsize("4K"), Some(4096));
        assert_eq!(parse_memsize("0x200"), Some(0x200));
        assert_eq!(parse_memsize("512"), Some(512));
        assert_eq!(parse_memsize("1M"), Some(1 << 20));
        assert_eq!(parse_memsize("0x1E"), Some(0x1e));
        assert_eq!(parse_memsize("010"), Some(8));
        assert_eq!(parse_memsize("16E"), None, "overflow must not wrap");
        assert_eq!(parse_memsize("x"), None);
        assert_eq!(parse_memsize(""), None);
    }

    #[test]
    fn device_arg_accepts_both_orders() {
        let c = parse_device_arg("0xd0000000@0x1000").unwrap();
        assert_eq!((c.base, c.len_bytes), (0xd000_0000, 0x1000));
        let c = parse_device_arg("4K@0xd0000000").unwrap();
        assert_eq!((c.base, c.len_bytes), (0xd000_0000, 0x1000));
        let c = parse_device_arg("0x200@0xa0000000").unwrap();
        assert_eq!((c.base, c.len_bytes), (0xa000_0000, 0x200));
        let c = parse_device_arg("0xa0000000").unwrap();
        assert_eq!((c.base, c.len_bytes), (0xa000_0000, DEFAULT_WINDOW_LEN));
        assert!(parse_device_arg("zz@1").is_err());
        assert!(parse_device_arg("0xffffffffffffffff@4K").is_err());
        assert!(parse_device_arg("0@0x1000").is_err());
    }

    #[test]
    fn cmdline_entries() {
        let t = "console=ttyS0 reboot=k panic=1 pci=off virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6:3 virtio_mmio.device=garbage root=/dev/vda\n";
        let v = parse_cmdline(t);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].base, v[0].len_bytes), (0xd000_0000, 4096));
        assert_eq!((v[1].base, v[1].len_bytes), (0xd000_1000, 4096));
        assert_eq!(v[0].sources, vec![Source::KernelCmdline]);
        assert!(parse_cmdline("quiet").is_empty());
    }

    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
000f0000-000fffff : Reserved
00100000-3fffffff : System RAM
  01000000-01ffffff : Kernel code
a0000000-a00001ff : LNRO0005:00
  a0000000-a00001ff : virtio-mmio
a0000200-a00003ff : LNRO0005:01
d0000000-d0000fff : virtio-mmio.0
0a000000-0a0001ff : a000000.virtio_mmio
feb00000-febfffff : PCI Bus 0000:00
";

    #[test]
    fn iomem_lists_each_virtio_range_once() {
        let v = parse_iomem(IOMEM).unwrap();
        let got: Vec<_> = v.iter().map(|c| (c.base, c.len_bytes)).collect();
        assert_eq!(
            got,
            vec![
                (0x0a00_0000, 0x200),
                (0xa000_0000, 0x200),
                (0xa000_0200, 0x200),
                (0xd000_0000, 0x1000)
            ]
        );
        assert_eq!(v[1].sources, vec![Source::Iomem("LNRO0005:00".into())]);
    }

    #[test]
    fn iomem_hidden_addresses_are_reported() {
        let t = "00000000-00000000 : System RAM\n00000000-00000000 : LNRO0005:00\n";
        assert_eq!(parse_iomem(t), Err(DiscoveryError::IomemHidden));
        assert_eq!(parse_iomem("00000000-00000000 : System RAM\n"), Ok(vec![]));
    }

    #[test]
    fn names() {
        assert!(is_virtio_mmio_name("LNRO0005:00"));
        assert!(is_virtio_mmio_name("a0000000.virtio_mmio"));
        assert!(is_virtio_mmio_name("virtio-mmio.3"));
        assert!(!is_virtio_mmio_name("virtio-mmio.x"));
        assert!(!is_virtio_mmio_name("serial8250"));
        assert_eq!(parse_sysfs_name("a0000000.virtio_mmio"), Some(0xa000_0000));
        assert_eq!(parse_sysfs_name("LNRO0005:00"), None);
        assert_eq!(parse_sysfs_name("9000000.pl011"), None);
    }

    #[test]
    fn of_reg_layouts() {
        let two_two = [0, 0, 0, 0, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0];
        assert_eq!(parse_of_reg(&two_two), Some((0xa000_0000, 0x200)));
        let one_one = [0x0a, 0, 0x02, 0, 0, 0, 2, 0];
        assert_eq!(parse_of_reg(&one_one), Some((0x0a00_0200, 0x200)));
        assert_eq!(parse_of_reg(&[1, 2, 3]), None);
    }

    #[test]
    fn resource_files() {
        let pci = "0x00000000a0000000 0x00000000a00001ff 0x0000000000000200\n\
                   0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        assert_eq!(parse_resource_file(pci), vec![(0xa000_0000, 0x200)]);
        let pnp = "state = active\nmem 0xd0000000-0xd0000fff\nirq 5\n";
        assert_eq!(parse_resource_file(pnp), vec![(0xd000_0000, 0x1000)]);
        let io_only = "0x0000000000000400 0x000000000000041f 0x0000000000000100\n";
        assert!(parse_resource_file(io_only).is_empty());
    }
}
