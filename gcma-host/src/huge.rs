//! Huge-page backing for shared memory: the pool's memfd and a VMM's guest RAM.
//!
//! Two kinds of 2 MiB backing, chosen by [`HugePages`]:
//! * **hugetlb**: a `memfd_create(MFD_HUGETLB | MFD_HUGE_2MB)` file. Its pages come from the
//!   host's reserved hugetlb pool (`/proc/sys/vm/nr_hugepages`); sizes and mapping offsets are
//!   whole 2 MiB pages (a mapping at a 4 KiB offset fails with `EINVAL`). A shared mapping made
//!   without `MAP_NORESERVE` reserves every page of the file at `mmap` time, which is where a host
//!   with too few free huge pages is detected ([`HugePageError::HugetlbUnavailable`]) rather than
//!   as a `SIGBUS` at first touch.
//! * **thp**: an ordinary shmem memfd whose mappings are advised `MADV_HUGEPAGE`; the kernel
//!   backs 2 MiB-aligned parts with transparent huge pages when
//!   `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it (`advise` or `always`), and
//!   with 4 KiB pages otherwise. Nothing is reserved; the knob is checked up front
//!   ([`HugePageError::ThpDisabled`]).
//!
//! README.md ("Huge pages") says how to reserve pages on a host; `ci/setup.sh` does it for the
//! tests.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// Size of one huge page (x86-64 PMD) in bytes.
pub const HUGE_PAGE_BYTES: u64 = 2 << 20;

/// The sysctl that reserves 2 MiB hugetlb pages.
pub const NR_HUGEPAGES_KNOB: &str = "/proc/sys/vm/nr_hugepages";

/// The sysfs knob that lets shmem (memfd) use transparent huge pages.
pub const SHMEM_THP_KNOB: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// How a shared memory area is backed. With feature `clap` it is the value of the binaries'
/// `--hugepages` (the variant comments are its help).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    Off,
    /// Shmem transparent huge pages (madvise MADV_HUGEPAGE); needs
    /// /sys/kernel/mm/transparent_hugepage/shmem_enabled at advise or always.
    Thp,
    /// Reserved 2 MiB hugetlb pages (MFD_HUGETLB); needs that many free
    /// (/proc/sys/vm/nr_hugepages) and sizes that are multiples of 2 MiB.
    Hugetlb,
}

impl HugePages {
    /// The name the command lines use (`off`, `thp`, `hugetlb`).
    pub fn name(self) -> &'static str {
        match self {
            HugePages::Off => "off",
            HugePages::Thp => "thp",
            HugePages::Hugetlb => "hugetlb",
        }
    }

    /// Whether sizes and mapping offsets must be whole 2 MiB pages.
    pub fn is_hugetlb(self) -> bool {
        self == HugePages::Hugetlb
    }
}

impl std::fmt::Display for HugePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for HugePages {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(HugePages::Off),
            "thp" => Ok(HugePages::Thp),
            "hugetlb" => Ok(HugePages::Hugetlb),
            _ => Err(format!("{s:?} is not one of off, thp, hugetlb")),
        }
    }
}

/// Why huge-page backed memory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HugePageError {
    /// A hugetlb area must be a whole number of 2 MiB pages.
    #[error("{len_bytes} bytes is not a positive multiple of 2 MiB, as hugetlb backing needs")]
    NotHugeAligned {
        /// The size asked for.
        len_bytes: u64,
    },
    /// The host has fewer free hugetlb pages than the area needs.
    #[error(
        "cannot reserve {needed} hugetlb pages of 2 MiB (HugePages_Free on this host: {free}); \
         reserve more with `echo N > {NR_HUGEPAGES_KNOB}`"
    )]
    HugetlbUnavailable {
        /// Huge pages the area needs.
        needed: u64,
        /// `HugePages_Free` from `/proc/meminfo` (`unknown` if unreadable).
        free: String,
        /// The error of the reserving `mmap` (or `memfd_create`).
        #[source]
        source: std::io::Error,
    },
    /// Shmem transparent huge pages are turned off on this host.
    #[error(
        "shmem transparent huge pages are off on this host ({SHMEM_THP_KNOB} is {setting:?}); \
         `echo advise > {SHMEM_THP_KNOB}` turns them on"
    )]
    ThpDisabled {
        /// The knob's selected value (`never`, `deny`, or `missing`).
        setting: String,
    },
    /// A system call failed.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl HugePageError {
    /// The underlying OS error, or one made up for the kind of failure (for callers whose error
    /// types carry an `io::Error`).
    pub fn into_io(self) -> (String, std::io::Error) {
        let context = self.to_string();
        let source = match self {
            HugePageError::NotHugeAligned { .. } => {
                std::io::Error::from(std::io::ErrorKind::InvalidInput)
            }
            HugePageError::ThpDisabled { .. } => {
                std::io::Error::from(std::io::ErrorKind::Unsupported)
            }
            HugePageError::HugetlbUnavailable { source, .. } | HugePageError::Io { source, .. } => {
                source
            }
        };
        (context, source)
    }
}

/// `HugePages_Free` from `/proc/meminfo`: free 2 MiB hugetlb pages (of the default size).
pub fn free_hugetlb_pages() -> Option<u64> {
    meminfo_field("HugePages_Free:")
}

/// A `/proc/meminfo` field's number (the unit, if any, is dropped).
pub fn meminfo_field(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The selected value of [`SHMEM_THP_KNOB`] (the word in brackets), if the file exists.
pub fn shmem_thp_setting() -> Option<String> {
    let s = std::fs::read_to_string(SHMEM_THP_KNOB).ok()?;
    let open = s.find('[')?;
    let close = s[open..].find(']')? + open;
    Some(s[open + 1..close].to_string())
}

/// Whether shmem THP can back an `MADV_HUGEPAGE` mapping with this knob value.
fn thp_allows_advised(setting: &str) -> bool {
    matches!(setting, "advise" | "always" | "within_size" | "force")
}

fn hugetlb_unavailable(len_bytes: u64, source: std::io::Error) -> HugePageError {
    HugePageError::HugetlbUnavailable {
        needed: len_bytes.div_ceil(HUGE_PAGE_BYTES),
        free: free_hugetlb_pages().map_or_else(|| "unknown".into(), |n| n.to_string()),
        source,
    }
}

/// Creates a memfd called `name` of `len_bytes` backed as `huge` says, after checking that the
/// host can back it: a hugetlb size must be a positive multiple of 2 MiB, shmem THP must be
/// enabled for `thp`. Nothing is mapped or reserved yet (see [`map_shared`]).
pub fn create_memfd(name: &CStr, len_bytes: u64, huge: HugePages) -> Result<File, HugePageError> {
    // Sealable, so guest RAM can be sealed against shrinking before it is shared.
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    match huge {
        HugePages::Off => {}
        HugePages::Thp => {
            let setting = shmem_thp_setting().unwrap_or_else(|| "missing".into());
            if !thp_allows_advised(&setting) {
                return Err(HugePageError::ThpDisabled { setting });
            }
        }
        HugePages::Hugetlb => {
            if len_bytes == 0 || !len_bytes.is_multiple_of(HUGE_PAGE_BYTES) {
                return Err(HugePageError::NotHugeAligned { len_bytes });
            }
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
    }
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no memory effects.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if huge.is_hugetlb() {
            // No hugetlbfs for the default size on this kernel.
            hugetlb_unavailable(len_bytes, e)
        } else {
            HugePageError::Io {
                op: "memfd_create",
                source: e,
            }
        });
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len_bytes)
        .map_err(|source| HugePageError::Io {
            op: "sizing the memfd",
            source,
        })?;
    Ok(file)
}

/// Maps `len_bytes` of `file` (made by [`create_memfd`] with the same `huge`) shared and
/// writable at an address the kernel picks, and returns it.
///
/// hugetlb: mapped without `MAP_NORESERVE`, so every huge page is reserved now and a host short
/// of them fails here with [`HugePageError::HugetlbUnavailable`]; the pages themselves are
/// allocated at first touch. thp: the mapping is advised `MADV_HUGEPAGE`. off: nothing more.
/// `populate` also faults every page in (`MAP_POPULATE`).
pub fn map_shared(
    file: &File,
    len_bytes: u64,
    huge: HugePages,
    populate: bool,
) -> Result<*mut u8, HugePageError> {
    let len = usize::try_from(len_bytes).map_err(|_| HugePageError::Io {
        op: "mapping the memfd",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let mut flags = libc::MAP_SHARED;
    if populate {
        flags |= libc::MAP_POPULATE;
    }
    // SAFETY: a new mapping at an address the kernel picks (addr NULL) of a valid fd; nothing
    // else is affected. Checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Err(if huge.is_hugetlb() {
            hugetlb_unavailable(len_bytes, e)
        } else {
            HugePageError::Io {
                op: "mmap of the memfd",
                source: e,
            }
        });
    }
    if huge == HugePages::Thp {
        // SAFETY: `p..p+len` is the mapping just made; madvise only sets a hint on it.
        if let Err(e) = unsafe { advise_hugepage(p.cast(), len) } {
            // SAFETY: unmapping exactly the mapping made above, which nobody else has seen.
            unsafe { libc::munmap(p, len) };
            return Err(e);
        }
    }
    Ok(p.cast())
}

/// `madvise(MADV_HUGEPAGE)` on `[addr, addr + len)`: shmem THP (with the knob at `advise`)
/// backs the 2 MiB-aligned parts of it with huge pages as they are faulted.
///
/// # Safety
/// `addr..addr+len` is a mapping the caller owns.
pub unsafe fn advise_hugepage(addr: *mut u8, len: usize) -> Result<(), HugePageError> {
    // SAFETY: per the contract, the range is the caller's mapping; MADV_HUGEPAGE changes no data.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
        return Err(HugePageError::Io {
            op: "madvise(MADV_HUGEPAGE)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// What a test that needs huge pages can have on this host, and why not.
///
/// Tests print `SKIPPED: <reason>` (and fail under `CI=true`) when this returns an error.
pub fn available(huge: HugePages, len_bytes: u64) -> Result<(), String> {
    match huge {
        HugePages::Off => Ok(()),
        HugePages::Thp => match shmem_thp_setting() {
            Some(s) if thp_allows_advised(&s) => Ok(()),
            Some(s) => Err(format!(
                "shmem THP is {s:?} ({SHMEM_THP_KNOB}; ci/setup.sh sets advise)"
            )),
            None => Err(format!("no {SHMEM_THP_KNOB}")),
        },
        HugePages::Hugetlb => {
            let free = free_hugetlb_pages().unwrap_or(0);
            let needed = len_bytes.div_ceil(HUGE_PAGE_BYTES);
            if free >= needed {
                Ok(())
            } else {
                Err(format!(
                    "{needed} free 2 MiB hugetlb pages needed, {free} free \
                     ({NR_HUGEPAGES_KNOB}; ci/setup.sh reserves them)"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in [HugePages::Off, HugePages::Thp, HugePages::Hugetlb] {
            assert_eq!(h.name().parse::<HugePages>().unwrap(), h);
        }
        assert!("2m".parse::<HugePages>().is_err());
    }

    #[test]
    fn hugetlb_sizes_must_be_whole_huge_pages() {
        for len in [0, 4096, HUGE_PAGE_BYTES + 4096] {
            assert!(matches!(
                create_memfd(c"t", len, HugePages::Hugetlb),
                Err(HugePageError::NotHugeAligned { len_bytes }) if len_bytes == len
            ));
        }
    }

    #[test]
    fn unavailable_hugetlb_names_the_knob() {
        let e = hugetlb_unavailable(
            3 * HUGE_PAGE_BYTES,
            std::io::Error::from_raw_os_error(libc::ENOMEM),
        );
        let msg = e.to_string();
        assert!(msg.contains("3 hugetlb pages"), "{msg}");
        assert!(msg.contains(NR_HUGEPAGES_KNOB), "{msg}");
        let e = HugePageError::ThpDisabled {
            setting: "never".into(),
        };
        assert!(e.to_string().contains(SHMEM_THP_KNOB));
    }

    #[test]
    fn thp_knob_values() {
        assert!(thp_allows_advised("advise"));
        assert!(thp_allows_advised("always"));
        assert!(!thp_allows_advised("never"));
        assert!(!thp_allows_advised("deny"));
    }
}
