//! `--hugepages` of `vmm run` and `vmm demo`: how the pool and guest RAM are backed.

/// How the gcma pool and guest RAM are backed (see `gcma_host::huge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HugePagesArg {
    /// 4 KiB pages.
    Off,
    /// Shmem transparent huge pages (madvise MADV_HUGEPAGE); needs
    /// /sys/kernel/mm/transparent_hugepage/shmem_enabled at advise or always.
    Thp,
    /// Reserved 2 MiB hugetlb pages; needs that many free (/proc/sys/vm/nr_hugepages) and sizes
    /// that are multiples of 2 MiB.
    Hugetlb,
}

impl From<HugePagesArg> for gcma_host::huge::HugePages {
    fn from(a: HugePagesArg) -> Self {
        match a {
            HugePagesArg::Off => Self::Off,
            HugePagesArg::Thp => Self::Thp,
            HugePagesArg::Hugetlb => Self::Hugetlb,
        }
    }
}
