//! `/metrics` as a scraper sees it: served over TCP, parsed by the official Prometheus Python
//! client's OpenMetrics parser (installed by `ci/setup.sh`).

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;

use balloon::gcma::GcmaCounters;
use balloon::virtio_balloon::{BalloonCounters, BalloonStats, BalloonStatus, NR_STAT_TAGS};
use gcma_host::api::{CleancacheKey, GcmaBackend};
use gcma_host::pool::{Pool, PoolConfig};
use vmm::api::control::metrics_handler;
use vmm::api::http::HttpServer;
use vmm::api::metrics::{VmMetricsSource, VmmMetrics};
use vmm::kvm::vm::ExitStats;

struct FakeVm(&'static str);

impl VmMetricsSource for FakeVm {
    fn vm_name(&self) -> String {
        self.0.to_string()
    }
    fn exits(&self) -> ExitStats {
        ExitStats {
            mmio_reads: 3,
            mmio_writes: 5,
            ..ExitStats::default()
        }
    }
    fn balloon(&self) -> Option<BalloonStatus> {
        Some(BalloonStatus {
            target_pages: 1024,
            actual_pages: 512,
            inflated_pages: 512,
            features: 0,
            activated: true,
            stats_buffer_held: true,
            stats: BalloonStats {
                values: std::array::from_fn(|i| Some(i as u64 * 4096)),
                generation: 1,
            },
            counters: BalloonCounters::default(),
        })
    }
    fn gcma(&self) -> Option<GcmaCounters> {
        let mut g = GcmaCounters::default();
        g.by_status[0][0] = 4;
        Some(g)
    }
}

fn python_parser_available() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err("python module prometheus_client missing (run ci/setup.sh)".into())
    }
}

const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        names.append(s.name)
print("\n".join(sorted(set(names))))
"#;

#[test]
fn metrics_endpoint_output_parses() {
    if let Err(why) = python_parser_available() {
        if std::env::var_os("CI").is_some() {
            panic!("metrics parser unavailable under CI: {why}");
        }
        println!("SKIPPED: {why}");
        return;
    }
    let pool = Pool::new(PoolConfig::new(256)).unwrap();
    let c = pool.register_client("vm0");
    let key = CleancacheKey {
        pool: pool.cleancache_new_pool(c).unwrap(),
        object: [1, 2, 3],
        index: 0,
    };
    pool.cleancache_put(c, key, &[7u8; 4096]).unwrap();
    pool.alloc_contig(c, 8, 1).unwrap();

    let mut metrics = VmmMetrics::new();
    pool.register_metrics(metrics.registry_mut());
    metrics.add_vm(Arc::new(FakeVm("vm0")));
    metrics.add_vm(Arc::new(FakeVm("vm1")));
    let metrics = Arc::new(metrics);
    let m = metrics.clone();
    let server = HttpServer::tcp(
        "127.0.0.1:0".parse().unwrap(),
        "metrics",
        metrics_handler(Arc::new(move || m.render())),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();

    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();

    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser rejected /metrics: {}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout).unwrap();
    for want in [
        "gcma_pool_pages",
        "gcma_grants_total",
        "vmm_vcpu_exits_total",
        "vmm_gcma_requests_total",
    ] {
        assert!(names.lines().any(|l| l == want), "{want} missing: {names}");
    }
    assert!(body.contains(r#"vmm_vcpu_exits_total{vm="vm1",reason="mmio_write"} 5"#));
    assert!(
        body.contains(r#"gcma_pool_pages{state="granted"} 8"#),
        "{body}"
    );
}

/// Families whose value counts events or things that have no unit (requests, grants, exits...).
/// Every other family must carry its unit at the end of its name. A new family goes in one list
/// or the other on purpose.
const UNITLESS_COUNTS: &[&str] = &[
    "vmm_vcpu_exits",
    "vmm_balloon_malformed_chains",
    "vmm_balloon_guest_page_faults",
    "vmm_balloon_guest_hugetlb_allocations",
    "vmm_balloon_guest_oom_kills",
    "vmm_balloon_guest_alloc_stalls",
    "vmm_gcma_requests",
    "vmm_gcma_unanswerable_requests",
    "vmm_gcma_grants",
    "vmm_gcma_stuck_grants",
    "gcma_clients",
    "gcma_live_grants",
    "gcma_grants",
    "gcma_grant_failures",
    "gcma_grant_frees",
    "gcma_cleancache_puts",
    "gcma_cleancache_puts_dropped",
    "gcma_cleancache_gets",
    "gcma_frontswap_stores",
    "gcma_frontswap_rejects",
    "gcma_frontswap_loads",
    "gcma_backing_writes",
    "gcma_writeback_retries",
    "gcma_frontswap_cap_hits",
    "gcma_cleancache_cap_drops",
    "gcma_backing_write_errors",
];
const UNITS: &[&str] = &["_bytes", "_pages", "_seconds"];

#[test]
fn every_family_has_help_a_unit_and_a_name_that_fits_its_type() {
    let pool = Pool::new(PoolConfig::new(64)).unwrap();
    let mut metrics = VmmMetrics::new();
    pool.register_metrics(metrics.registry_mut());
    metrics.add_vm(Arc::new(FakeVm("vm0")));
    let text = metrics.render();
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.push((name.to_string(), kind.to_string()));
        }
    }
    // Every family this exporter can produce is here (the fake VM has every device and statistic).
    assert!(families.len() >= 40, "{families:?}");
    for s in [
        "vmm_balloon_guest_memory_bytes",
        "vmm_balloon_guest_scanned_pages",
    ] {
        assert!(families.iter().any(|(n, _)| n == s), "{s} missing:\n{text}");
    }
    assert_eq!(NR_STAT_TAGS, 16);
    for (name, kind) in &families {
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or("");
        assert!(help.trim().len() > 3, "{name} has no HELP text");
        if kind == "gauge" {
            assert!(!name.ends_with("_total"), "gauge {name} ends in _total");
        }
        if kind == "counter" {
            let clash = format!("{name}_total");
            assert!(
                families.iter().all(|(n, _)| *n != clash),
                "counter {name} collides with a family named {clash}"
            );
        }
        let unit = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            UNITS.iter().any(|u| unit.ends_with(u)) || UNITLESS_COUNTS.contains(&name.as_str()),
            "{name} ({kind}) names no unit; add one, or list it as a unitless count"
        );
        assert_eq!(
            families.iter().filter(|(n, _)| n == name).count(),
            1,
            "{name} appears twice"
        );
    }
    assert!(text.contains("gcma_pool_capacity_pages 64"), "{text}");
    assert!(!text.contains("gcma_pool_pages_total"));
}
