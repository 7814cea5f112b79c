//! The balloon's device model.

use std::sync::Arc;

use gcma_host::guest_warn;
use gcma_host::log_limit::LogLimiter;
use log::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::{
    queue_kinds, BalloonConfig, BalloonCounters, BalloonStats, BalloonStatus, QueueKind,
    CONFIG_ACTUAL, CONFIG_LEN, CONFIG_NUM_PAGES, CONFIG_POISON_VAL, MAX_PFN_BYTES_PER_CHAIN,
    NR_STAT_TAGS, STAT_ENTRY_LEN, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_ID_BALLOON,
};
use crate::error::DeviceError;
use crate::log_kinds;
use crate::memory_release::{self, GUEST_PAGE_SIZE};
use crate::transport::chain::{self, ChainRef, Desc};
use crate::transport::drain::{drain_queue, Chain, Completion, Drained};
use crate::transport::{
    Activation, GuestMemoryMmap, InterruptHandle, VirtioDevice, VIRTIO_RING_F_EVENT_IDX,
};

/// Per guest-memory region: which 4 KiB pages are in the balloon.
struct RegionPages {
    start: u64,
    len: u64,
    host_page: u64,
    /// One bit per guest page, allocated on first inflate.
    bits: Vec<u64>,
    inflated: u64,
}

impl RegionPages {
    fn nr_pages(&self) -> u64 {
        self.len / GUEST_PAGE_SIZE
    }

    fn test(&self, page: u64) -> bool {
        self.bits
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Set a page's bit; `true` if it was clear.
    fn set(&mut self, page: u64) -> bool {
        if self.bits.is_empty() {
            self.bits = vec![0; self.nr_pages().div_ceil(64) as usize];
        }
        let Some(w) = self.bits.get_mut((page / 64) as usize) else {
            return false;
        };
        let m = 1 << (page % 64);
        let was_clear = *w & m == 0;
        *w |= m;
        self.inflated += u64::from(was_clear);
        was_clear
    }

    /// Clear a page's bit; `true` if it was set.
    fn clear(&mut self, page: u64) -> bool {
        let Some(w) = self.bits.get_mut((page / 64) as usize) else {
            return false;
        };
        let m = 1 << (page % 64);
        let was_set = *w & m != 0;
        *w &= !m;
        self.inflated -= u64::from(was_set);
        was_set
    }
}

struct Running {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<(QueueKind, Queue)>,
    interrupt: InterruptHandle,
    stats_head: Option<(usize, u16)>,
    regions: Vec<RegionPages>,
    /// The buffers of the chain being handled, reused from chain to chain.
    descs: Vec<Desc>,
}

/// The virtio-balloon device. Put it behind a transport; drive the target with
/// [`set_target_pages`](Self::set_target_pages), stats with
/// [`request_stats`](Self::request_stats), and read everything with [`status`](Self::status).
pub struct Balloon {
    cfg: BalloonConfig,
    target_pages: u32,
    actual_pages: u32,
    poison_val: u32,
    features: u64,
    running: Option<Running>,
    stats: BalloonStats,
    counters: BalloonCounters,
    /// Limits the log lines the guest can trigger (the transport's, see `set_log_limiter`).
    logs: Arc<LogLimiter>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("cfg", &self.cfg)
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .field("features", &self.features)
            .field("activated", &self.running.is_some())
            .finish()
    }
}

impl Balloon {
    /// A balloon offering the features in `cfg`. A `queue_size` that is not a power of two in
    /// 32..=32768 is rounded up into that range (reporting needs at least 32 entries).
    pub fn new(mut cfg: BalloonConfig) -> Self {
        cfg.queue_size = cfg.queue_size.clamp(32, 32768).next_power_of_two();
        Balloon {
            target_pages: cfg.target_pages,
            cfg,
            actual_pages: 0,
            poison_val: 0,
            features: 0,
            running: None,
            stats: BalloonStats::default(),
            counters: BalloonCounters::default(),
            logs: Arc::new(LogLimiter::default()),
        }
    }

    /// Set the target balloon size in 4 KiB pages (`num_pages`) and, if the driver is running,
    /// raise a config-change interrupt so it starts inflating or deflating.
    pub fn set_target_pages(&mut self, pages: u32) -> std::io::Result<()> {
        if pages == self.target_pages {
            return Ok(());
        }
        self.target_pages = pages;
        self.counters.target_changes += 1;
        if let Some(run) = &self.running {
            run.interrupt.signal_config_change()?;
        }
        Ok(())
    }

    /// Return the held stats buffer to the guest so it sends fresh statistics. Returns `false`
    /// when there is nothing to request (no stats queue, or the guest still holds the buffer).
    /// The VMM calls this on its stats polling interval.
    pub fn request_stats(&mut self) -> Result<bool, DeviceError> {
        let Some(run) = self.running.as_mut() else {
            return Ok(false);
        };
        let Some((qi, head)) = run.stats_head.take() else {
            return Ok(false);
        };
        let broken = |source| DeviceError::BrokenRing {
            queue: qi as u16,
            source,
        };
        let Some((_, q)) = run.queues.get_mut(qi) else {
            return Ok(false);
        };
        chain::add_used(q, &run.mem, head, 0).map_err(broken)?;
        chain::notify_used(q, &run.mem, &run.interrupt).map_err(broken)?;
        self.counters.stats_requests += 1;
        Ok(true)
    }

    /// The features this balloon offers (`target_pages` is the initial target; the current one
    /// is in [`status`](Self::status)).
    pub fn config(&self) -> BalloonConfig {
        self.cfg
    }

    /// Changes which optional features are offered. The driver reads the offer once, after it
    /// acknowledges the device, so the VMM calls this only while the transport's `Status`
    /// register is still 0 (no driver yet); a driver that already negotiated keeps what it got.
    pub fn set_offered_features(
        &mut self,
        deflate_on_oom: bool,
        stats: bool,
        free_page_reporting: bool,
    ) {
        self.cfg.deflate_on_oom = deflate_on_oom;
        self.cfg.stats = stats;
        self.cfg.free_page_reporting = free_page_reporting;
    }

    /// A snapshot for the VMM's API and metrics.
    pub fn status(&self) -> BalloonStatus {
        BalloonStatus {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            inflated_pages: self
                .running
                .as_ref()
                .map_or(0, |r| r.regions.iter().map(|p| p.inflated).sum()),
            features: self.features,
            activated: self.running.is_some(),
            stats_buffer_held: self
                .running
                .as_ref()
                .is_some_and(|r| r.stats_head.is_some()),
            stats: self.stats,
            counters: self.counters,
        }
    }

    /// The counters alone.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN as usize] {
        let mut c = [0u8; CONFIG_LEN as usize];
        c[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        // free_page_hint_cmd_id stays 0: FREE_PAGE_HINT is not offered.
        c[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn device_features(&self) -> u64 {
        let mut f = VIRTIO_RING_F_EVENT_IDX;
        let c = &self.cfg;
        // VIRTIO_F_RING_RESET is added by the transport (see `supports_queue_reset`).
        for (on, bit) in [
            (c.stats, VIRTIO_BALLOON_F_STATS_VQ),
            (c.deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            (c.page_poison, VIRTIO_BALLOON_F_PAGE_POISON),
            (c.free_page_reporting, VIRTIO_BALLOON_F_PAGE_REPORTING),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    fn features_negotiated(&mut self, features: u64) -> bool {
        self.features = features;
        true
    }

    fn queue_max_sizes(&self, features: u64) -> Vec<u16> {
        vec![self.cfg.queue_size; queue_kinds(features).len()]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config_bytes();
        for (i, b) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64);
            let writable = (CONFIG_ACTUAL..CONFIG_ACTUAL + 4).contains(&o)
                || (CONFIG_POISON_VAL..CONFIG_POISON_VAL + 4).contains(&o);
            if writable {
                c[o as usize] = *b;
            } else if (CONFIG_NUM_PAGES..CONFIG_LEN).contains(&o) {
                debug!("virtio-balloon: driver write to read-only config byte {o} ignored");
            }
        }
        self.actual_pages = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.poison_val = u32::from_le_bytes([c[12], c[13], c[14], c[15]]);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        let kinds = queue_kinds(a.features);
        if a.queues.len() < kinds.len() {
            return Err(DeviceError::MissingQueues {
                needed: kinds.len(),
                got: a.queues.len(),
            });
        }
        for (i, q) in a.queues.iter().take(2).enumerate() {
            if !q.ready() {
                return Err(DeviceError::QueueNotReady(i as u16));
            }
        }
        let regions = a
            .mem
            .iter()
            .map(|r| RegionPages {
                start: r.start_addr().0,
                len: r.len(),
                host_page: memory_release::host_page_size(&a.mem, r.start_addr().0)
                    .unwrap_or(GUEST_PAGE_SIZE),
                bits: Vec::new(),
                inflated: 0,
            })
            .collect();
        self.features = a.features;
        self.running = Some(Running {
            mem: a.mem,
            queues: kinds.into_iter().zip(a.queues).collect(),
            interrupt: a.interrupt,
            stats_head: None,
            regions,
            descs: Vec::new(),
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError> {
        let features = self.features;
        let poison_val = self.poison_val;
        let counters = &mut self.counters;
        let stats = &mut self.stats;
        let logs: &LogLimiter = &self.logs;
        let run = self.running.as_mut().ok_or(DeviceError::NotActivated)?;
        let qi = usize::from(index);
        let Running {
            mem,
            queues,
            interrupt,
            stats_head,
            regions,
            descs,
        } = run;
        let (kind, queue) = queues.get_mut(qi).ok_or(DeviceError::NoSuchQueue(index))?;
        let kind = *kind;
        if !queue.ready() {
            debug!("virtio-balloon: notify of queue {index} that was never made ready, ignored");
            return Ok(Drained::default());
        }
        let drained = drain_queue(queue, mem, interrupt, descs, budget, |chain| {
            let c = match chain {
                Chain::Valid(c) => c,
                Chain::Rejected { chain, error } => {
                    counters.rejected_chains += 1;
                    guest_warn!(
                        logs,
                        log_kinds::BALLOON_REJECTED_CHAIN,
                        "virtio-balloon: queue {index}: chain {} rejected: {error}",
                        chain.head
                    );
                    return Completion::Used(0);
                }
            };
            match kind {
                QueueKind::Inflate | QueueKind::Deflate => {
                    if let Some(pfns) = read_pfns(mem, &c, index, counters, logs) {
                        if kind == QueueKind::Inflate {
                            counters.inflate_chains += 1;
                            inflate_pfns(mem, regions, &pfns, counters, logs);
                        } else {
                            counters.deflate_chains += 1;
                            deflate_pfns(mem, regions, &pfns, counters, logs);
                        }
                    }
                }
                QueueKind::Stats => {
                    if parse_stats(mem, &c, stats, counters, logs) {
                        // Keep the newest buffer; give an older one back.
                        let release = stats_head.replace((qi, c.head)).map(|(_, old)| old);
                        return Completion::Held { release };
                    }
                }
                QueueKind::Reporting => {
                    counters.report_chains += 1;
                    let poisoned = features & VIRTIO_BALLOON_F_PAGE_POISON != 0 && poison_val != 0;
                    report_free(mem, regions, &c, poisoned, counters, logs);
                }
            }
            Completion::Used(0)
        });
        drained.map_err(|source| DeviceError::BrokenRing {
            queue: index,
            source,
        })
    }

    fn supports_queue_reset(&self) -> bool {
        true
    }

    fn set_log_limiter(&mut self, limiter: Arc<LogLimiter>) {
        self.logs = limiter;
    }

    fn queue_reset(&mut self, index: u16) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        let qi = usize::from(index);
        if let Some((_, q)) = run.queues.get_mut(qi) {
            // A fresh, not-ready queue: notifications are ignored until it is re-enabled.
            if let Ok(fresh) = Queue::new(q.max_size()) {
                *q = fresh;
            }
        }
        if run.stats_head.is_some_and(|(i, _)| i == qi) {
            run.stats_head = None;
        }
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) -> Result<(), DeviceError> {
        let run = self.running.as_mut().ok_or(DeviceError::NotActivated)?;
        let (_, q) = run
            .queues
            .get_mut(usize::from(index))
            .ok_or(DeviceError::NoSuchQueue(index))?;
        *q = queue;
        Ok(())
    }

    fn reset(&mut self) {
        self.running = None;
        self.features = 0;
        self.actual_pages = 0;
        self.poison_val = 0;
    }
}

/// Read the PFN list of an inflate/deflate chain, or count it as malformed.
fn read_pfns(
    mem: &GuestMemoryMmap,
    c: &ChainRef<'_>,
    queue: u16,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) -> Option<Vec<u32>> {
    let total: u64 = c.readable().map(|d| u64::from(d.len)).sum();
    let why = if c.writable().next().is_some() {
        Some("device-writable buffer in a PFN list")
    } else if total == 0 {
        Some("empty PFN list")
    } else if total > MAX_PFN_BYTES_PER_CHAIN {
        Some("PFN list too long")
    } else {
        None
    };
    if let Some(why) = why {
        counters.malformed_chains += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_MALFORMED_CHAIN,
            "virtio-balloon: queue {queue}: chain {} ({total} bytes): {why}",
            c.head
        );
        return None;
    }
    if !total.is_multiple_of(4) {
        counters.malformed_chains += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_MALFORMED_CHAIN,
            "virtio-balloon: queue {queue}: chain {}: {total} bytes is not whole PFNs",
            c.head
        );
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for d in c.readable() {
        let start = bytes.len();
        bytes.resize(start + d.len as usize, 0);
        // The buffer was validated to lie in guest memory; a failure here is a race with memory
        // removal, treated as zeros.
        if mem.read_slice(&mut bytes[start..], d.addr).is_err() {
            guest_warn!(
                logs,
                log_kinds::BALLOON_MALFORMED_CHAIN,
                "virtio-balloon: queue {queue}: unreadable PFN buffer {:?}",
                d.addr
            );
        }
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Locate a PFN: (region index, page index within the region).
fn locate(regions: &[RegionPages], pfn: u32) -> Option<(usize, u64)> {
    let gpa = u64::from(pfn) * GUEST_PAGE_SIZE;
    let i = regions.partition_point(|r| r.start + r.len <= gpa);
    let r = regions.get(i)?;
    (gpa >= r.start && gpa + GUEST_PAGE_SIZE <= r.start + r.len)
        .then(|| (i, (gpa - r.start) / GUEST_PAGE_SIZE))
}

fn count_out_of_range(
    pfns: &[u32],
    bad: u64,
    first: Option<u32>,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    if bad > 0 {
        counters.pfn_out_of_range += bad;
        counters.chains_with_bad_pfns += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_BAD_PFNS,
            "virtio-balloon: {bad} of {} PFNs outside guest memory ignored (first {:#x})",
            pfns.len(),
            first.unwrap_or(0)
        );
    }
}

fn inflate_pfns(
    mem: &GuestMemoryMmap,
    regions: &mut [RegionPages],
    pfns: &[u32],
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    let mut fresh: Vec<(usize, u64)> = Vec::with_capacity(pfns.len());
    let (mut bad, mut first_bad) = (0u64, None);
    for &pfn in pfns {
        counters.inflated_pfns += 1;
        match locate(regions, pfn) {
            Some((ri, page)) => {
                if regions[ri].set(page) {
                    fresh.push((ri, page));
                } else {
                    counters.duplicate_inflates += 1;
                }
            }
            None => {
                bad += 1;
                first_bad.get_or_insert(pfn);
            }
        }
    }
    count_out_of_range(pfns, bad, first_bad, counters, logs);
    fresh.sort_unstable();
    // Coalesce consecutive pages into runs: one release call per run.
    let mut i = 0;
    while i < fresh.len() {
        let (ri, first) = fresh[i];
        let mut n = 1;
        while i + n < fresh.len() && fresh[i + n] == (ri, first + n as u64) {
            n += 1;
        }
        release_run(mem, &regions[ri], first, n as u64, counters, logs);
        i += n;
    }
}

/// Release pages `[first, first + n)` of a region; with huge host pages, release only the host
/// pages now entirely inflated.
fn release_run(
    mem: &GuestMemoryMmap,
    r: &RegionPages,
    first: u64,
    n: u64,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    let per_host = (r.host_page / GUEST_PAGE_SIZE).max(1);
    if per_host == 1 {
        release_counted(
            mem,
            r.start + first * GUEST_PAGE_SIZE,
            n * GUEST_PAGE_SIZE,
            counters,
            logs,
        );
        return;
    }
    let first_hp = first / per_host;
    let last_hp = (first + n - 1) / per_host;
    for hp in first_hp..=last_hp {
        let lo = hp * per_host;
        let hi = lo + per_host;
        if hi <= r.nr_pages() && (lo..hi).all(|p| r.test(p)) {
            release_counted(
                mem,
                r.start + lo * GUEST_PAGE_SIZE,
                r.host_page,
                counters,
                logs,
            );
        }
    }
}

fn release_counted(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    match memory_release::release(mem, gpa, len) {
        Ok(_) => counters.released_bytes += len,
        Err(e) => {
            counters.release_errors += 1;
            guest_warn!(
                logs,
                log_kinds::BALLOON_RELEASE_FAILED,
                "virtio-balloon: {e}"
            );
        }
    }
}

/// Takes pages out of the balloon. A huge host page that was released whole (all its pieces
/// inflated) and loses one of its pieces is re-populated (see [`memory_release::repopulate`]).
fn deflate_pfns(
    mem: &GuestMemoryMmap,
    regions: &mut [RegionPages],
    pfns: &[u32],
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    let (mut bad, mut first_bad) = (0u64, None);
    let mut located: Vec<(usize, u64)> = Vec::with_capacity(pfns.len());
    for &pfn in pfns {
        counters.deflated_pfns += 1;
        match locate(regions, pfn) {
            Some(at) => located.push(at),
            None => {
                bad += 1;
                first_bad.get_or_insert(pfn);
            }
        }
    }
    // Huge host pages wholly in the balloon (so released) before this deflate: checked once per
    // huge page the buffer touches, before any of its pieces is cleared.
    let mut released: Vec<(usize, u64)> = Vec::new();
    for &(ri, page) in &located {
        let per_host = (regions[ri].host_page / GUEST_PAGE_SIZE).max(1);
        if per_host == 1 {
            continue;
        }
        let hp = page / per_host;
        if released.contains(&(ri, hp)) {
            continue;
        }
        let (lo, hi) = (hp * per_host, hp * per_host + per_host);
        if hi <= regions[ri].nr_pages() && (lo..hi).all(|p| regions[ri].test(p)) {
            released.push((ri, hp));
        }
    }
    for (ri, page) in located {
        if !regions[ri].clear(page) {
            counters.deflates_not_inflated += 1;
        }
    }
    for (ri, hp) in released {
        let r = &regions[ri];
        let gpa = r.start + hp * r.host_page;
        if let Err(e) = memory_release::repopulate(mem, gpa, r.host_page) {
            counters.release_errors += 1;
            guest_warn!(
                logs,
                log_kinds::BALLOON_RELEASE_FAILED,
                "virtio-balloon: {e}"
            );
        }
    }
    count_out_of_range(pfns, bad, first_bad, counters, logs);
}

/// Parse a stats buffer into `stats`; `false` if the chain is unusable (return it at once).
fn parse_stats(
    mem: &GuestMemoryMmap,
    c: &ChainRef<'_>,
    stats: &mut BalloonStats,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) -> bool {
    if c.writable().next().is_some() {
        counters.malformed_chains += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_MALFORMED_CHAIN,
            "virtio-balloon: stats chain {} has device-writable buffers",
            c.head
        );
        return false;
    }
    // More than a page of stats is nonsense (16 tags are 160 bytes); read at most that.
    let mut bytes = Vec::new();
    for d in c.readable() {
        let room = 4096usize.saturating_sub(bytes.len());
        let n = (d.len as usize).min(room);
        let start = bytes.len();
        bytes.resize(start + n, 0);
        if mem.read_slice(&mut bytes[start..], d.addr).is_err() {
            bytes.truncate(start);
        }
    }
    if bytes.len() % STAT_ENTRY_LEN != 0 {
        counters.malformed_chains += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_MALFORMED_CHAIN,
            "virtio-balloon: stats buffer of {} bytes is not whole entries",
            bytes.len()
        );
    }
    for e in bytes.chunks_exact(STAT_ENTRY_LEN) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let val = u64::from_le_bytes([e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]]);
        match stats.values.get_mut(usize::from(tag)) {
            Some(slot) if usize::from(tag) < NR_STAT_TAGS => *slot = Some(val),
            _ => counters.unknown_stat_tags += 1,
        }
    }
    stats.generation += 1;
    counters.stats_updates += 1;
    true
}

fn report_free(
    mem: &GuestMemoryMmap,
    regions: &[RegionPages],
    c: &ChainRef<'_>,
    poisoned: bool,
    counters: &mut BalloonCounters,
    logs: &LogLimiter,
) {
    if c.readable().next().is_some() {
        counters.malformed_chains += 1;
        guest_warn!(
            logs,
            log_kinds::BALLOON_MALFORMED_CHAIN,
            "virtio-balloon: report chain {} has device-readable buffers; they are ignored",
            c.head
        );
    }
    for d in c.writable() {
        counters.reported_bytes += u64::from(d.len);
        if poisoned {
            counters.reports_kept_for_poison += 1;
            continue;
        }
        let (mut cur, end) = (d.addr.0, d.addr.0 + u64::from(d.len));
        while cur < end {
            let Some(r) = regions
                .iter()
                .find(|r| cur >= r.start && cur < r.start + r.len)
            else {
                break;
            };
            let stop = end.min(r.start + r.len);
            // Round inward to host pages: a partial host page stays.
            let lo = (cur - r.start).next_multiple_of(r.host_page) + r.start;
            let hi = (stop - r.start) / r.host_page * r.host_page + r.start;
            if hi > lo {
                release_counted(mem, lo, hi - lo, counters, logs);
            }
            cur = stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn region(mem: &GuestMemoryMmap, host_page: u64) -> Vec<RegionPages> {
        mem.iter()
            .map(|r| RegionPages {
                start: r.start_addr().0,
                len: r.len(),
                host_page,
                bits: Vec::new(),
                inflated: 0,
            })
            .collect()
    }

    #[test]
    fn huge_host_page_is_released_only_when_every_piece_is_inflated() {
        const HUGE: u64 = 2 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 * HUGE as usize)]).unwrap();
        mem.write_slice(&[7u8; 64], GuestAddress(0)).unwrap();
        let mut regions = region(&mem, HUGE);
        let mut c = BalloonCounters::default();
        let logs = LogLimiter::default();
        let per_huge = (HUGE / GUEST_PAGE_SIZE) as u32;
        // All but the last 4 KiB piece of the first huge page: nothing released.
        let most: Vec<u32> = (0..per_huge - 1).collect();
        inflate_pfns(&mem, &mut regions, &most, &mut c, &logs);
        assert_eq!(c.released_bytes, 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 7);
        // The last piece completes it: the whole huge page goes.
        inflate_pfns(&mem, &mut regions, &[per_huge - 1], &mut c, &logs);
        assert_eq!(c.released_bytes, HUGE);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 0);
        // Deflating a piece and inflating it again releases the huge page again, once.
        deflate_pfns(&mem, &mut regions, &[3], &mut c, &logs);
        inflate_pfns(&mem, &mut regions, &[3], &mut c, &logs);
        assert_eq!(c.released_bytes, 2 * HUGE);
        assert_eq!(regions[0].inflated, u64::from(per_huge));
    }

    #[test]
    fn locate_rejects_pages_straddling_or_outside_regions() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let regions = region(&mem, GUEST_PAGE_SIZE);
        assert_eq!(locate(&regions, 3), Some((0, 3)));
        assert_eq!(locate(&regions, 4), None);
        assert_eq!(locate(&regions, 0x100), Some((1, 0)));
        assert_eq!(locate(&regions, 0x102), None);
        assert_eq!(locate(&regions, u32::MAX), None);
    }
}
