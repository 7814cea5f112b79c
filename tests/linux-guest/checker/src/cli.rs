//! The checker's modes and options. The same definitions parse argv, parse the kernel command
//! line (through [`crate::cmdline`]) and, on the host, build that command line
//! ([`Mode::kernel_params`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cmdline::param;

/// Checks a Linux guest's swap and page cache end to end and prints one machine-readable
/// `GCMA-CHECK` line per event on the console.
///
/// In a test guest the initramfs's /init runs `guest-checker --kernel-cmdline /proc/cmdline`,
/// which takes the mode and options from `gcmatest.*` kernel parameters
/// (`gcmatest.mode=swap gcmatest.mib=160` is `guest-checker swap --mib 160`).
#[derive(Debug, Parser)]
#[command(
    name = "guest-checker",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Read the mode and options from the `gcmatest.*` parameters of this kernel command line
    /// file (normally /proc/cmdline) instead of from the arguments.
    #[arg(long, value_name = "FILE")]
    pub kernel_cmdline: Option<PathBuf>,

    /// What to check.
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

/// What the checker does.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Mode {
    /// Swap storm: mkswap + swapon the disk, write a per-page pattern over more anonymous memory
    /// than the guest has, verify every page (twice by default), unmap, swapoff.
    Swap(SwapArgs),
    /// Page-cache reads: mount a filesystem read-only and read one file several times with
    /// `drop_caches` before every read after the first, comparing SHA-256 digests.
    Cache(CacheArgs),
    /// Only report that userspace was reached (boot time, memory) and exit.
    Boot,
}

/// Options of the swap storm.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SwapArgs {
    /// Block device to swap on (it is overwritten by mkswap).
    #[arg(long, default_value = "/dev/vda")]
    pub disk: PathBuf,
    /// Anonymous memory to fill, in MiB (make it larger than the guest's RAM).
    #[arg(long, default_value_t = 160)]
    pub mib: u64,
    /// Seed of the page pattern; the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Discard policy passed to busybox `swapon -d[POLICY]`: none (no -d), once (whole area at
    /// swapon), pages (freed clusters), both (-d alone).
    #[arg(long, value_enum, default_value_t = Discard::None)]
    pub discard: Discard,
    /// How many times every page is read back and verified.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub verify_passes: u32,
    /// Print a progress line every this many MiB written or verified (0: never).
    #[arg(long, default_value_t = 0)]
    pub progress_mib: u64,
}

impl Default for SwapArgs {
    fn default() -> Self {
        Self {
            disk: PathBuf::from("/dev/vda"),
            mib: 160,
            seed: 1,
            discard: Discard::None,
            verify_passes: 2,
            progress_mib: 0,
        }
    }
}

/// busybox `swapon -d[POLICY]` spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discard {
    /// No `-d`.
    None,
    /// `-donce`: discard the whole swap area at swapon.
    Once,
    /// `-dpages`: discard swap clusters as they are freed.
    Pages,
    /// `-d`: both.
    Both,
}

impl Discard {
    /// The `swapon` argument, if any.
    pub fn swapon_flag(self) -> Option<&'static str> {
        match self {
            Discard::None => None,
            Discard::Once => Some("-donce"),
            Discard::Pages => Some("-dpages"),
            Discard::Both => Some("-d"),
        }
    }

    /// The value as clap spells it.
    pub fn name(self) -> &'static str {
        match self {
            Discard::None => "none",
            Discard::Once => "once",
            Discard::Pages => "pages",
            Discard::Both => "both",
        }
    }
}

/// Options of the page-cache reads.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CacheArgs {
    /// Block device holding the filesystem (mounted read-only).
    #[arg(long, default_value = "/dev/vda")]
    pub disk: PathBuf,
    /// Filesystem type given to mount.
    #[arg(long, default_value = "ext2")]
    pub fstype: String,
    /// File to read, relative to the filesystem's root.
    #[arg(long)]
    pub file: PathBuf,
    /// Expected SHA-256 of the file (64 hex digits); every read is compared with it.
    #[arg(long, value_parser = parse_sha256)]
    pub sha256: Option<String>,
    /// Number of reads (raised to the largest --pause-before).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub reads: u32,
    /// Before this read (2 or more), print `GCMA-CHECK event=waiting phase=N before_read=R` and
    /// wait for a line on the console, so the host can act between reads. Repeatable.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub pause_before: Vec<u32>,
}

impl CacheArgs {
    /// Reads to do: `--reads`, raised to the largest `--pause-before`.
    pub fn total_reads(&self) -> u32 {
        self.pause_before.iter().copied().fold(self.reads, u32::max)
    }

    /// The pause number (1-based, in read order) before `read`, if the host asked for one.
    pub fn pause_phase(&self, read: u32) -> Option<u32> {
        let mut pauses: Vec<u32> = self.pause_before.clone();
        pauses.sort_unstable();
        pauses.dedup();
        pauses.iter().position(|&r| r == read).map(|i| i as u32 + 1)
    }
}

fn parse_sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not 64 hex digits"))
    }
}

impl Mode {
    /// The mode's name on the kernel command line.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Swap(_) => "swap",
            Mode::Cache(_) => "cache",
            Mode::Boot => "boot",
        }
    }

    /// The `gcmatest.*` kernel parameters that select this mode with these options.
    pub fn kernel_params(&self) -> Vec<String> {
        let mut p = vec![param("mode", self.name())];
        match self {
            Mode::Swap(a) => {
                p.push(param("disk", a.disk.display()));
                p.push(param("mib", a.mib));
                p.push(param("seed", a.seed));
                p.push(param("discard", a.discard.name()));
                p.push(param("verify_passes", a.verify_passes));
                p.push(param("progress_mib", a.progress_mib));
            }
            Mode::Cache(a) => {
                p.push(param("disk", a.disk.display()));
                p.push(param("fstype", &a.fstype));
                p.push(param("file", a.file.display()));
                if let Some(sum) = &a.sha256 {
                    p.push(param("sha256", sum));
                }
                p.push(param("reads", a.reads));
                for r in &a.pause_before {
                    p.push(param("pause_before", r));
                }
            }
            Mode::Boot => {}
        }
        p
    }
}

impl Cli {
    /// Parses the checker's run from a kernel command line.
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Mode, String> {
        let args = crate::cmdline::to_args(cmdline).map_err(|e| e.to_string())?;
        let cli = Cli::try_parse_from(std::iter::once("guest-checker".to_string()).chain(args))
            .map_err(|e| {
                // clap's rendering spans lines; the console protocol wants one.
                e.to_string()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })?;
        cli.mode
            .ok_or_else(|| "the kernel command line selects no mode".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(mode: Mode) {
        let cmdline = format!("console=ttyS0 {}", mode.kernel_params().join(" "));
        assert_eq!(Cli::from_kernel_cmdline(&cmdline), Ok(mode), "{cmdline}");
    }

    #[test]
    fn kernel_params_roundtrip() {
        roundtrip(Mode::Boot);
        roundtrip(Mode::Swap(SwapArgs::default()));
        roundtrip(Mode::Swap(SwapArgs {
            disk: "/dev/vdb".into(),
            mib: 256,
            seed: u64::MAX,
            discard: Discard::Pages,
            verify_passes: 3,
            progress_mib: 16,
        }));
        roundtrip(Mode::Cache(CacheArgs {
            disk: "/dev/vdc".into(),
            fstype: "ext2".into(),
            file: "dir with space/data.bin".into(),
            sha256: Some("ab".repeat(32)),
            reads: 2,
            pause_before: vec![3, 5],
        }));
    }

    #[test]
    fn defaults_apply() {
        let Mode::Swap(a) = Cli::from_kernel_cmdline("gcmatest.mode=swap").unwrap() else {
            panic!("not swap");
        };
        assert_eq!(a, SwapArgs::default());
    }

    #[test]
    fn bad_input_is_one_line() {
        for bad in [
            "gcmatest.mode=swap gcmatest.mib=lots",
            "gcmatest.mode=dance",
            "gcmatest.mode=cache",
            "gcmatest.mode=cache gcmatest.file=x gcmatest.sha256=xyz",
            "gcmatest.mode=cache gcmatest.file=x gcmatest.pause_before=1",
            "gcmatest.mode=swap gcmatest.verify_passes=0",
            "quiet",
        ] {
            let e = Cli::from_kernel_cmdline(bad).unwrap_err();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e:?}");
        }
    }

    #[test]
    fn pauses_number_in_read_order() {
        let a = CacheArgs {
            disk: "/dev/vda".into(),
            fstype: "ext2".into(),
            file: "f".into(),
            sha256: None,
            reads: 2,
            pause_before: vec![5, 3, 3],
        };
        assert_eq!(a.total_reads(), 5);
        assert_eq!(a.pause_phase(3), Some(1));
        assert_eq!(a.pause_phase(5), Some(2));
        assert_eq!(a.pause_phase(2), None);
    }
}
