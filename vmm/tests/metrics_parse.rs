//! `/metrics` as a scraper sees it: served over TCP, parsed by the official Prometheus Python
//! client's OpenMetrics parser (installed by `ci/setup.sh`).

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;

use balloon::gcma::GcmaCounters;
use balloon::virtio_balloon::BalloonStatus;
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
        None
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
