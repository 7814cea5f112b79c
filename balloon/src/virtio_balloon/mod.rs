//! The standard virtio-balloon device (device id 5).
//!
//! - Queues: inflate (0), deflate (1), then stats, free-page-hint and reporting, numbered densely
//!   over the features the driver accepted (a Linux 6.x guest without `STATS_VQ` puts the
//!   reporting queue at index 2).
//! - Inflate releases the host memory behind each page through [`crate::memory_release`]
//!   (punch-hole for the VMM's memfd, `MADV_DONTNEED` for private anonymous memory); on hosts with
//!   huge pages a host page is only released once every 4 KiB piece of it is inflated (a bitmap
//!   per region tracks partly inflated huge pages exactly), with one punch for the whole 2 MiB;
//!   deflating a piece of a released huge page re-populates it (`fallocate`), so that a hugetlb
//!   page is taken back now rather than failing at the guest's next touch.
//! - Target: [`Balloon::set_target_pages`] updates `num_pages` and raises a config-change
//!   interrupt; the driver reports progress in `actual`.
//! - Stats: the device keeps the driver's one stats buffer and returns it when the VMM calls
//!   [`Balloon::request_stats`] (on its polling interval); tags 0–15 are kept, unknown ones counted
//!   and ignored.
//! - Free page reporting: reported ranges are released like inflated pages, except when the guest
//!   poisons free pages with a non-zero `poison_val` (zeroed pages would fail its poison check).
//! - Guest mistakes (PFNs outside guest memory, wrong-direction or oversized buffers) are counted
//!   and logged; broken rings put the device into `DEVICE_NEEDS_RESET`.

mod device;

pub use device::Balloon;

/// virtio device id of the balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// Feature: the host must be told before the guest reuses deflated pages.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
/// Feature: a statistics queue is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// Feature: the guest deflates when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature: free page hinting queue (not offered by this device).
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
/// Feature: the guest tells the value it poisons free pages with.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u64 = 1 << 4;
/// Feature: free page reporting queue.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u64 = 1 << 5;

/// Config offset of `num_pages` (le32, device-written target).
pub const CONFIG_NUM_PAGES: u64 = 0;
/// Config offset of `actual` (le32, driver-written).
pub const CONFIG_ACTUAL: u64 = 4;
/// Config offset of `free_page_hint_cmd_id` (le32).
pub const CONFIG_FREE_PAGE_HINT_CMD_ID: u64 = 8;
/// Config offset of `poison_val` (le32, driver-written).
pub const CONFIG_POISON_VAL: u64 = 12;
/// Size of the config space.
pub const CONFIG_LEN: u64 = 16;

/// Maximum PFNs the Linux driver puts in one inflate/deflate buffer.
pub const PFNS_PER_BUFFER: usize = 256;
/// Bytes of PFNs accepted in one chain; larger chains are rejected (and counted) to bound the work
/// one notification can cause.
pub const MAX_PFN_BYTES_PER_CHAIN: u64 = 256 * 1024;
/// Size of one stats entry on the wire: le16 tag + le64 value.
pub const STAT_ENTRY_LEN: usize = 10;
/// Number of stats tags kept (0–9 from the spec, 10–15 sent by Linux ≥ 6.12).
pub const NR_STAT_TAGS: usize = 16;

/// Names of stats tags 0–15, in tag order (also the metric names the VMM exports).
pub const STAT_NAMES: [&str; NR_STAT_TAGS] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];

/// Which balloon features the host offers (like Firecracker's `/balloon` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Offer `DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Offer `STATS_VQ`.
    pub stats: bool,
    /// Offer `PAGE_REPORTING`.
    pub free_page_reporting: bool,
    /// Offer `PAGE_POISON` (needed for reporting from guests that poison free pages).
    pub page_poison: bool,
    /// Queue size for every queue (power of two, ≥ 32 for reporting).
    pub queue_size: u16,
    /// Initial target in 4 KiB pages.
    pub target_pages: u32,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            deflate_on_oom: true,
            stats: true,
            free_page_reporting: true,
            page_poison: true,
            queue_size: 256,
            target_pages: 0,
        }
    }
}

/// The role of a balloon queue, given negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// PFNs the guest gives up.
    Inflate,
    /// PFNs the guest takes back.
    Deflate,
    /// The statistics buffer.
    Stats,
    /// Free page reporting.
    Reporting,
}

/// Queue roles in index order for `features` (dense numbering).
pub fn queue_kinds(features: u64) -> Vec<QueueKind> {
    let mut v = vec![QueueKind::Inflate, QueueKind::Deflate];
    if features & VIRTIO_BALLOON_F_STATS_VQ != 0 {
        v.push(QueueKind::Stats);
    }
    if features & VIRTIO_BALLOON_F_PAGE_REPORTING != 0 {
        v.push(QueueKind::Reporting);
    }
    v
}

/// Counters of everything the balloon did or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Inflate chains processed.
    pub inflate_chains: u64,
    /// PFNs inflated (duplicates included).
    pub inflated_pfns: u64,
    /// PFNs inflated that were already in the balloon.
    pub duplicate_inflates: u64,
    /// Deflate chains processed.
    pub deflate_chains: u64,
    /// PFNs deflated.
    pub deflated_pfns: u64,
    /// PFNs deflated that were not in the balloon.
    pub deflates_not_inflated: u64,
    /// PFNs outside guest memory (ignored).
    pub pfn_out_of_range: u64,
    /// Inflate/deflate chains that carried at least one PFN outside guest memory.
    pub chains_with_bad_pfns: u64,
    /// Bytes of host memory released (inflate and reporting).
    pub released_bytes: u64,
    /// Failed release calls (and failed re-populations of huge pages on deflate).
    pub release_errors: u64,
    /// Stats buffers parsed.
    pub stats_updates: u64,
    /// Stats refreshes requested (buffer returned to the guest).
    pub stats_requests: u64,
    /// Stats entries with a tag ≥ 16 (ignored).
    pub unknown_stat_tags: u64,
    /// Reporting chains processed.
    pub report_chains: u64,
    /// Bytes reported free by the guest.
    pub reported_bytes: u64,
    /// Reported ranges kept because the guest poisons free pages with a non-zero value.
    pub reports_kept_for_poison: u64,
    /// Chains with wrong-direction buffers, empty or oversized PFN lists, or partial PFNs.
    pub malformed_chains: u64,
    /// Chains returned unused because a buffer lay outside guest memory.
    pub rejected_chains: u64,
    /// Config-change interrupts raised for a new target.
    pub target_changes: u64,
}

/// The latest statistics the guest sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Value per tag 0–15 (`None`: the guest never sent it). See [`STAT_NAMES`].
    pub values: [Option<u64>; NR_STAT_TAGS],
    /// How many stats buffers have been parsed (0: none yet).
    pub generation: u64,
}

impl BalloonStats {
    /// The value of the stat called `name` (one of [`STAT_NAMES`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = STAT_NAMES.iter().position(|n| *n == name)?;
        self.values[i]
    }
}

/// What the VMM's API and metrics read: target, actual, stats and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonStatus {
    /// Target size in 4 KiB pages (`num_pages`).
    pub target_pages: u32,
    /// Size the driver reports (`actual`).
    pub actual_pages: u32,
    /// Distinct guest pages currently inflated, as seen by the device.
    pub inflated_pages: u64,
    /// Negotiated features (0 before negotiation).
    pub features: u64,
    /// Whether the driver activated the device.
    pub activated: bool,
    /// Whether the device holds a stats buffer (a refresh can be requested).
    pub stats_buffer_held: bool,
    /// Latest statistics.
    pub stats: BalloonStats,
    /// Counters.
    pub counters: BalloonCounters,
}
