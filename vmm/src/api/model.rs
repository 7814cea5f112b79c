//! The control API's request and response bodies, as Rust types.
//!
//! The balloon types carry Firecracker's field names and integer widths (its
//! `src/firecracker/swagger/firecracker.yaml`, definitions `Balloon`, `BalloonUpdate`,
//! `BalloonStats`, `BalloonStatsUpdate`, `Error`), so a Firecracker client's balloon code works
//! unchanged; README.md lists every difference. `vmm/api/openapi.yaml` describes the same types and
//! a test checks that its examples parse into them.
//!
//! Request bodies refuse unknown fields (`400`): a misspelt field is a mistake to report, not a
//! setting to ignore.

use serde::{Deserialize, Serialize};

/// `PUT /balloon` and `GET /balloon`: the balloon's settings (Firecracker's `Balloon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDeviceConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Whether the guest may deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 disables statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting (not offered by this balloon: `true` is refused).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`: a new target (Firecracker's `BalloonUpdate`), and optionally a new polling
/// interval, as Firecracker's balloon documentation shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// New seconds between statistics refreshes (same rules as `PATCH /balloon/statistics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u16>,
}

/// `PATCH /balloon/statistics` (Firecracker's `BalloonStatsUpdate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between statistics refreshes.
    pub stats_polling_interval_s: u16,
}

/// `GET /balloon/statistics` (Firecracker's `BalloonStats`): sizes from the device's config
/// space, then the guest's latest statistics; a statistic the guest never sent is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Target size in 4 KiB pages.
    pub target_pages: u32,
    /// Size the guest driver reports, in 4 KiB pages.
    pub actual_pages: u32,
    /// Target size in MiB.
    pub target_mib: u32,
    /// Size the guest driver reports, in MiB.
    pub actual_mib: u32,
    /// Memory swapped in, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Memory swapped out, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Memory not used for anything, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Total memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Memory available to new applications without swapping, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Memory reclaimable without I/O (page cache), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocations that entered the slow path (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Pages scanned by background reclaim (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Pages scanned by direct reclaim (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Pages reclaimed in the background (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Pages reclaimed directly (Linux ≥ 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// Fills the statistics from values in virtio tag order (tags 0–15, as
    /// `balloon::virtio_balloon::STAT_NAMES` lists them).
    pub fn set_guest_stats(&mut self, by_tag: &[Option<u64>]) {
        let fields: [&mut Option<u64>; 16] = [
            &mut self.swap_in,
            &mut self.swap_out,
            &mut self.major_faults,
            &mut self.minor_faults,
            &mut self.free_memory,
            &mut self.total_memory,
            &mut self.available_memory,
            &mut self.disk_caches,
            &mut self.hugetlb_allocations,
            &mut self.hugetlb_failures,
            &mut self.oom_kill,
            &mut self.alloc_stall,
            &mut self.async_scan,
            &mut self.direct_scan,
            &mut self.async_reclaim,
            &mut self.direct_reclaim,
        ];
        for (field, v) in fields.into_iter().zip(by_tag) {
            *field = *v;
        }
    }
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// What to do.
    pub action: Action,
}

/// Actions `PUT /actions` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop the VM; the VMM exits 0.
    Shutdown,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's name.
    pub id: String,
    /// `running`, `stopping`, or how the run ended.
    pub state: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The payload it runs.
    pub payload: String,
    /// Its virtio devices (`virtio-balloon`, `virtio-gcma`).
    pub devices: Vec<String>,
    /// vCPU exits so far, by reason.
    pub exits: VmExits,
}

/// vCPU exits by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExits {
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// MMIO accesses no device claimed.
    pub mmio_unclaimed: u64,
    /// Port I/O.
    pub port_io: u64,
    /// Runs interrupted (stop requests, signals).
    pub interrupted: u64,
}

/// `GET /gcma`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcmaInfo {
    /// Contiguous grants this VM holds.
    pub grants: Vec<GrantInfo>,
    /// Free bytes in the VM's grant window.
    pub window_free_bytes: u64,
    /// Grants whose unmap failed: kept granted, never given to another VM, retried.
    pub stuck_grants: u64,
    /// Pages of stuck grants.
    pub stuck_pages: u64,
    /// virtio-gcma requests answered, by queue.
    pub requests: GcmaRequests,
    /// The pool the VM draws from.
    pub pool: PoolInfo,
}

/// One grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in 4 KiB pages.
    pub nr_pages: u64,
    /// First pool page.
    pub pool_first_page: u64,
}

/// Requests answered per virtio-gcma queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcmaRequests {
    /// Control queue (grants).
    pub control: u64,
    /// Cleancache queue.
    pub cleancache: u64,
    /// Frontswap queue.
    pub frontswap: u64,
}

/// Pool usage in 4 KiB pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Pages in the pool.
    pub nr_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// Pages holding cleancache data.
    pub cleancache_pages: u64,
    /// Pages holding frontswap data.
    pub frontswap_pages: u64,
    /// Pages granted.
    pub granted_pages: u64,
}

/// Every error's body (Firecracker's `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong.
    pub fault_message: String,
}
