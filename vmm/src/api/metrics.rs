//! Prometheus metrics of the VMM: per-VM families labelled `vm="<name>"` (vCPU exits by reason,
//! balloon target/actual/guest statistics, virtio-gcma requests by queue and status) next to the
//! pool's own `gcma_*` families.
//!
//! Devices and VMs own plain counters; this module only reads them when `/metrics` is scraped
//! ([`VmmMetrics::render`]), so metrics cost the run loops nothing.

use std::sync::{Arc, Mutex};

use balloon::gcma::proto::{self, status};
use balloon::gcma::GcmaCounters;
use balloon::virtio_balloon::{BalloonStatus, NR_STAT_TAGS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::kvm::vm::ExitStats;

/// What one microVM contributes to `/metrics`. Implementations read live counters.
pub trait VmMetricsSource: Send + Sync {
    /// The VM's name (the `vm` label).
    fn vm_name(&self) -> String;
    /// vCPU exits so far.
    fn exits(&self) -> ExitStats;
    /// The balloon's state, if the VM has a balloon.
    fn balloon(&self) -> Option<BalloonStatus>;
    /// The gcma device's counters, if the VM has one.
    fn gcma(&self) -> Option<GcmaCounters>;
}

/// The set of VMs whose metrics are exported, plus the registry they are encoded with.
pub struct VmmMetrics {
    vms: Arc<Mutex<Vec<Arc<dyn VmMetricsSource>>>>,
    registry: Registry,
}

impl std::fmt::Debug for VmmMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmMetrics").finish_non_exhaustive()
    }
}

impl Default for VmmMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl VmmMetrics {
    /// An empty set; add the pool with [`Self::registry_mut`] (`Pool::register_metrics`).
    pub fn new() -> Self {
        let vms: Arc<Mutex<Vec<Arc<dyn VmMetricsSource>>>> = Arc::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(VmCollector { vms: vms.clone() }));
        VmmMetrics { vms, registry }
    }

    /// The registry, to register more collectors (the pool's) before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Starts exporting a VM.
    pub fn add_vm(&self, vm: Arc<dyn VmMetricsSource>) {
        self.lock().push(vm);
    }

    /// Stops exporting the VM called `name`.
    pub fn remove_vm(&self, name: &str) {
        self.lock().retain(|v| v.vm_name() != name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn VmMetricsSource>>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything in OpenMetrics text, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::error!("encoding metrics failed: {e}");
        }
        out
    }
}

#[derive(Debug)]
struct VmCollector {
    vms: Arc<Mutex<Vec<Arc<dyn VmMetricsSource>>>>,
}

impl std::fmt::Debug for dyn VmMetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VmMetricsSource({})", self.vm_name())
    }
}

/// One sample: label pairs and a value.
type Sample = (Vec<(&'static str, String)>, u64);

fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: &[Sample],
) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut f = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => f.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            _ => f.encode_gauge(&i64::try_from(*v).unwrap_or(i64::MAX))?,
        }
    }
    Ok(())
}

const QUEUE_NAMES: [&str; proto::NUM_QUEUES] = ["control", "cleancache", "frontswap"];

/// A balloon statistic's family, the family's help, and its label (name, value).
type GuestStat = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// Where each balloon statistic goes, in virtio tag order (`STAT_NAMES`): family, its help, and
/// the label that tells the statistics of one family apart. Units are in the family names.
const GUEST_STATS: [GuestStat; NR_STAT_TAGS] = [
    (SWAPPED, SWAPPED_HELP, Some(("direction", "in"))),
    (SWAPPED, SWAPPED_HELP, Some(("direction", "out"))),
    (FAULTS, FAULTS_HELP, Some(("type", "major"))),
    (FAULTS, FAULTS_HELP, Some(("type", "minor"))),
    (MEMORY, MEMORY_HELP, Some(("kind", "free"))),
    (MEMORY, MEMORY_HELP, Some(("kind", "total"))),
    (MEMORY, MEMORY_HELP, Some(("kind", "available"))),
    (MEMORY, MEMORY_HELP, Some(("kind", "disk_caches"))),
    (HUGETLB, HUGETLB_HELP, Some(("result", "ok"))),
    (HUGETLB, HUGETLB_HELP, Some(("result", "failed"))),
    (
        "vmm_balloon_guest_oom_kills",
        "OOM killer invocations the guest reports.",
        None,
    ),
    (
        "vmm_balloon_guest_alloc_stalls",
        "Allocations that entered the slow path, as the guest reports.",
        None,
    ),
    (SCANNED, SCANNED_HELP, Some(("mode", "async"))),
    (SCANNED, SCANNED_HELP, Some(("mode", "direct"))),
    (RECLAIMED, RECLAIMED_HELP, Some(("mode", "async"))),
    (RECLAIMED, RECLAIMED_HELP, Some(("mode", "direct"))),
];
const SWAPPED: &str = "vmm_balloon_guest_swapped_bytes";
const SWAPPED_HELP: &str = "Memory the guest reports swapped in and out since it booted.";
const FAULTS: &str = "vmm_balloon_guest_page_faults";
const FAULTS_HELP: &str = "Page faults the guest reports since it booted.";
const MEMORY: &str = "vmm_balloon_guest_memory_bytes";
const MEMORY_HELP: &str =
    "Guest memory as the guest reports it: free, total, available, disk caches.";
const HUGETLB: &str = "vmm_balloon_guest_hugetlb_allocations";
const HUGETLB_HELP: &str = "Hugetlb page allocations the guest reports, by result.";
const SCANNED: &str = "vmm_balloon_guest_scanned_pages";
const SCANNED_HELP: &str = "Pages the guest's reclaim scanned, background (async) or direct.";
const RECLAIMED: &str = "vmm_balloon_guest_reclaimed_pages";
const RECLAIMED_HELP: &str = "Pages the guest's reclaim freed, background (async) or direct.";

impl Collector for VmCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vms: Vec<Arc<dyn VmMetricsSource>> =
            self.vms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let e = &mut e;
        let mut exits = Vec::new();
        let (mut target, mut actual, mut inflated, mut released) = (vec![], vec![], vec![], vec![]);
        let (mut bad_pfns, mut malformed) = (vec![], vec![]);
        let mut guest_stats: Vec<(&str, Sample)> = Vec::new();
        let (mut requests, mut unanswerable, mut grants, mut granted_pages) =
            (vec![], vec![], vec![], vec![]);
        let (mut stuck_grants, mut stuck_pages) = (vec![], vec![]);
        for vm in &vms {
            let name = vm.vm_name();
            let l = |extra: &[(&'static str, &str)]| {
                let mut v = vec![("vm", name.clone())];
                v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
                v
            };
            let x = vm.exits();
            for (reason, n) in [
                ("mmio_read", x.mmio_reads),
                ("mmio_write", x.mmio_writes),
                ("mmio_unclaimed", x.mmio_unclaimed),
                ("port_io", x.port_io),
                ("interrupted", x.interrupted),
            ] {
                exits.push((l(&[("reason", reason)]), n));
            }
            if let Some(b) = vm.balloon() {
                target.push((l(&[]), u64::from(b.target_pages) * 4096));
                actual.push((l(&[]), u64::from(b.actual_pages) * 4096));
                inflated.push((l(&[]), b.inflated_pages * 4096));
                released.push((l(&[]), b.counters.released_bytes));
                bad_pfns.push((l(&[]), b.counters.pfn_out_of_range));
                malformed.push((
                    l(&[]),
                    b.counters.malformed_chains + b.counters.rejected_chains,
                ));
                for (v, (family, _, label)) in b.stats.values.iter().zip(GUEST_STATS) {
                    if let Some(v) = v {
                        let labels = label.as_ref().map_or(l(&[]), |(k, x)| l(&[(k, x)]));
                        guest_stats.push((family, (labels, *v)));
                    }
                }
            }
            if let Some(g) = vm.gcma() {
                for (q, qname) in QUEUE_NAMES.iter().enumerate() {
                    for (s, n) in g.by_status[q].iter().enumerate() {
                        if *n > 0 {
                            requests.push((
                                l(&[("queue", qname), ("status", status::name(s as u32))]),
                                *n,
                            ));
                        }
                    }
                    unanswerable.push((l(&[("queue", qname)]), g.unanswerable[q]));
                }
                grants.push((l(&[]), g.grants));
                granted_pages.push((l(&[]), g.granted_pages));
                stuck_grants.push((l(&[]), g.stuck_grants));
                stuck_pages.push((l(&[]), g.stuck_pages));
            }
        }
        family(
            e,
            "vmm_vcpu_exits",
            "vCPU exits by reason.",
            MetricType::Counter,
            &exits,
        )?;
        family(
            e,
            "vmm_balloon_target_bytes",
            "Balloon target set by the host.",
            MetricType::Gauge,
            &target,
        )?;
        family(
            e,
            "vmm_balloon_actual_bytes",
            "Balloon size the guest driver reports.",
            MetricType::Gauge,
            &actual,
        )?;
        family(
            e,
            "vmm_balloon_inflated_bytes",
            "Guest memory in the balloon as the device counts it.",
            MetricType::Gauge,
            &inflated,
        )?;
        family(
            e,
            "vmm_balloon_released_bytes",
            "Host memory released for inflated or reported guest pages.",
            MetricType::Counter,
            &released,
        )?;
        family(
            e,
            "vmm_balloon_out_of_range_pages",
            "Page frame numbers outside guest memory that the balloon ignored.",
            MetricType::Counter,
            &bad_pfns,
        )?;
        family(
            e,
            "vmm_balloon_malformed_chains",
            "Balloon descriptor chains refused as malformed or outside guest memory.",
            MetricType::Counter,
            &malformed,
        )?;
        // Guest statistics are gauges even where the guest counts up: a guest reports whatever it
        // likes, and a rebooted one starts again from zero.
        let mut seen: Vec<&str> = Vec::new();
        for (family_name, help, _) in GUEST_STATS {
            if seen.contains(&family_name) {
                continue;
            }
            seen.push(family_name);
            let samples: Vec<Sample> = guest_stats
                .iter()
                .filter(|(f, _)| *f == family_name)
                .map(|(_, s)| s.clone())
                .collect();
            family(e, family_name, help, MetricType::Gauge, &samples)?;
        }
        family(
            e,
            "vmm_gcma_requests",
            "virtio-gcma requests answered, by queue and status.",
            MetricType::Counter,
            &requests,
        )?;
        family(
            e,
            "vmm_gcma_unanswerable_requests",
            "virtio-gcma chains returned without a response (no room for it).",
            MetricType::Counter,
            &unanswerable,
        )?;
        family(
            e,
            "vmm_gcma_grants",
            "Contiguous grants this VM holds.",
            MetricType::Gauge,
            &grants,
        )?;
        family(
            e,
            "vmm_gcma_granted_pages",
            "Pool pages granted to this VM.",
            MetricType::Gauge,
            &granted_pages,
        )?;
        family(
            e,
            "vmm_gcma_stuck_grants",
            "Grants whose unmapping from the guest failed: kept granted to this VM (never handed \
             to another guest) until a retried unmap succeeds.",
            MetricType::Gauge,
            &stuck_grants,
        )?;
        family(
            e,
            "vmm_gcma_stuck_pages",
            "Pool pages in this VM's stuck grants.",
            MetricType::Gauge,
            &stuck_pages,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl VmMetricsSource for Fake {
        fn vm_name(&self) -> String {
            "vm\"0".into()
        }
        fn exits(&self) -> ExitStats {
            ExitStats {
                mmio_writes: 7,
                ..ExitStats::default()
            }
        }
        fn balloon(&self) -> Option<BalloonStatus> {
            None
        }
        fn gcma(&self) -> Option<GcmaCounters> {
            let mut g = GcmaCounters::default();
            g.by_status[1][status::MISS as usize] = 3;
            g.grants = 2;
            g.stuck_grants = 1;
            g.stuck_pages = 16;
            Some(g)
        }
    }

    #[test]
    fn renders_labelled_families() {
        let m = VmmMetrics::new();
        m.add_vm(Arc::new(Fake));
        let text = m.render();
        assert!(
            text.contains(r#"vmm_vcpu_exits_total{vm="vm\"0",reason="mmio_write"} 7"#),
            "{text}"
        );
        assert!(text
            .contains(r#"vmm_gcma_requests_total{vm="vm\"0",queue="cleancache",status="miss"} 3"#));
        assert!(text.contains(r#"vmm_gcma_grants{vm="vm\"0"} 2"#));
        assert!(text.contains(r#"vmm_gcma_stuck_grants{vm="vm\"0"} 1"#));
        assert!(text.contains(r#"vmm_gcma_stuck_pages{vm="vm\"0"} 16"#));
        assert!(!text.contains("vmm_balloon_target_bytes{"));
        assert!(text.trim_end().ends_with("# EOF"));
        m.remove_vm("vm\"0");
        assert!(!m.render().contains("vmm_vcpu_exits_total{"));
    }
}
