//! The operator's view, end to end: a real Prometheus (Debian's package) scrapes a running
//! `vmm demo` and a `vmm run` whose balloon is driven through the control API. At the end of the
//! demo, the key series read through Prometheus's query API must equal what the demo's summary
//! says happened, and every panel of the Grafana dashboard (docs/grafana/gcma.json) must evaluate
//! without error and return series.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e_tests::prometheus::{self, Prometheus};
use serde_json::Value;
use support::api::Vmm;

/// How long the demo may take before the test calls it a hang.
const DEMO_GUARD: Duration = Duration::from_secs(900);

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The labels `key` of each sample, with its value.
fn by_label(samples: &[(Value, f64)], key: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|(m, v)| (m[key].as_str().unwrap_or("").to_string(), *v))
        .collect()
}

#[test]
fn prometheus_sees_the_final_state_and_every_dashboard_panel_has_data() {
    if support::hypervisor_or_skip("prometheus").is_none() {
        return;
    }
    if let Err(why) = prometheus::binary() {
        return e2e_tests::skip("prometheus", why);
    }
    let dir = std::env::temp_dir().join(format!("vmm-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let summary_path = dir.join("summary.json");

    // The demo in its short form; it keeps /metrics up after the run until killed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "demo",
            "--pool-mib",
            "32",
            "--tenants",
            "2",
            "--vm-mem-mib",
            "32",
            "--cc-pages",
            "1024",
            "--fs-pages",
            "2048",
            "--warmup-rounds",
            "2",
            "--sizes",
            "1,16,512,4096",
            "--reps",
            "3",
            "--frontswap-policy",
            "write-through",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-linger-s",
            "3600",
        ])
        .arg("--svg")
        .arg(dir.join("chart.svg"))
        .arg("--summary-json")
        .arg(&summary_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm demo runs");
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let demo = Demo(child);
    let mut output = Vec::new();
    let mut next_line = |what: &str| -> String {
        let line = rx.recv_timeout(DEMO_GUARD).unwrap_or_else(|_| {
            panic!("waiting for {what}; the demo said:\n{}", output.join("\n"))
        });
        output.push(line.clone());
        line
    };
    let demo_addr: SocketAddr = loop {
        let line = next_line("the metrics address");
        if let Some(rest) = line.strip_prefix("metrics: http://") {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };

    // A VM whose balloon an operator drives through the API (the demo's VMs have none).
    let run_addr: SocketAddr = format!("127.0.0.1:{}", e2e_tests::free_port())
        .parse()
        .unwrap();
    let vmm = Vmm::start(
        "prometheus",
        &[
            "--payload",
            "spin",
            "--mem-mib",
            "32",
            "--balloon-pages",
            "256",
            "--metrics-addr",
            &run_addr.to_string(),
        ],
    );
    assert_eq!(
        vmm.request("PATCH", "/balloon", r#"{"amount_mib": 4}"#).0,
        204
    );

    let prom = Prometheus::start(
        &dir.join("prometheus"),
        &[("vmm-demo", demo_addr), ("vmm-run", run_addr)],
    );

    let finished_at = loop {
        let line = next_line("the end of the demo");
        if line.starts_with("vmm: demo finished") {
            break e2e_tests::now_s();
        }
        assert!(
            !line.starts_with("vmm:") || !line.contains("error"),
            "{line}"
        );
    };
    prom.wait_for_scrape_after(&["vmm-demo", "vmm-run"], finished_at);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["passed"], true, "{summary:#}");
    let pool = &summary["pool"];
    let n = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));

    // Both targets are up.
    let up = by_label(&prom.vector("up"), "job");
    assert_eq!(up.get("vmm-demo"), Some(&1.0), "{up:?}");
    assert_eq!(up.get("vmm-run"), Some(&1.0), "{up:?}");

    // Grants: all the demo made, none held at the end.
    assert_eq!(prom.scalar("gcma_grants_total"), n(&summary["grants_ok"]));
    assert_eq!(prom.scalar("gcma_grants_total"), n(&pool["grants"]));
    assert_eq!(prom.scalar("gcma_live_grants"), 0.0);

    // Evictions by reason.
    let evicted = by_label(
        &prom.vector("sum by (reason) (gcma_evicted_pages_total)"),
        "reason",
    );
    let sum = |v: &Value| v.as_array().unwrap().iter().map(n).sum::<f64>();
    assert_eq!(evicted["grant"], n(&summary["evicted_by_grants"]));
    assert!(
        evicted["grant"] > 0.0,
        "a 4096-page grant evicts tenants' pages"
    );
    assert_eq!(evicted["pressure"], sum(&pool["evictions_pressure"]));

    // Cleancache hit ratio over the run.
    let ratio = prom.scalar(
        r#"sum(gcma_cleancache_gets_total{result="hit"}) / sum(gcma_cleancache_gets_total)"#,
    );
    let (hits, misses) = (n(&pool["cleancache_hits"]), n(&pool["cleancache_misses"]));
    assert!(hits > 0.0 && misses > 0.0, "{pool}");
    assert!((ratio - hits / (hits + misses)).abs() < 1e-9, "{ratio}");

    // Frontswap pages by policy.
    let by_policy = by_label(
        &prom.vector("sum by (policy) (gcma_frontswap_stored_pages)"),
        "policy",
    );
    let stored = n(&pool["frontswap_pages"])
        + n(&pool["frontswap_host_pages"])
        + n(&pool["frontswap_backing_only_pages"]);
    assert_eq!(
        by_policy,
        BTreeMap::from([("write_through".to_string(), stored)])
    );

    // Balloon size: the target set through the API; no driver runs in `spin`, so nothing inflated.
    assert_eq!(
        prom.scalar(r#"vmm_balloon_target_bytes{job="vmm-run"}"#),
        4.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        prom.scalar(r#"vmm_balloon_actual_bytes{job="vmm-run"}"#),
        0.0
    );

    // Every panel of the dashboard (rates need a few scrapes).
    prom.wait_for_scrapes(&["vmm-demo", "vmm-run"], 3);
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana/gcma.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no position");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let data = prom
                .query(expr)
                .unwrap_or_else(|e| panic!("panel {title:?}: {expr}: {e}"));
            let series = data["result"].as_array().map_or(0, Vec::len);
            assert!(series > 0, "panel {title:?}: {expr} returns no series");
        }
    }
    drop(demo);
    drop(vmm);
    let _ = std::fs::remove_dir_all(&dir);
}
