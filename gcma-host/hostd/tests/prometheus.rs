//! The operator's view of the daemon: a real Prometheus (Debian's package) scrapes
//! `gcma-hostd`'s `/metrics` on TCP, and the series read back through Prometheus's query API
//! equal what the daemon's control endpoint did (a grant taken and one returned) and what it
//! serves itself (per-disk caps, labelled by disk, guest and kind).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use e2e_tests::prometheus::{self, Prometheus};
use support::HostD;

#[test]
fn prometheus_scrapes_the_daemon() {
    if let Err(why) = prometheus::binary() {
        return e2e_tests::skip("hostd prometheus", why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (swap_a, swap_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let metrics: SocketAddr = format!("127.0.0.1:{}", e2e_tests::free_port())
        .parse()
        .unwrap();
    let args: Vec<String> = [
        "--pool-mib".to_string(),
        "16".into(),
        "--backing-dir".into(),
        dir.path().display().to_string(),
        "--swap-disk".into(),
        format!("{},size=8M,guest=vm-a", swap_a.display()),
        "--swap-disk".into(),
        format!("{},size=8M,guest=vm-b,cap=1M", swap_b.display()),
        "--metrics-addr".into(),
        metrics.to_string(),
    ]
    .to_vec();
    let d = HostD::start(dir.path(), "prometheus", &args, &[swap_a, swap_b]);

    // Two grants through the control socket, one of them returned.
    let (s, b) = d.request("POST", "/grants", r#"{"pages": 512, "align": 512}"#);
    assert_eq!(s, 201, "{b}");
    let (s, b) = d.request("POST", "/grants", r#"{"pages": 16}"#);
    assert_eq!(s, 201, "{b}");
    assert_eq!(d.request("DELETE", "/grants/2", "").0, 200);
    let acted_at = e2e_tests::now_s();

    let prom = Prometheus::start(&dir.path().join("prometheus"), &[("gcma-hostd", metrics)]);
    prom.wait_for_scrape_after(&["gcma-hostd"], acted_at);

    let up = prom.vector(r#"up{job="gcma-hostd"}"#);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0);
    assert_eq!(prom.scalar("gcma_grants_total"), 2.0);
    assert_eq!(prom.scalar("gcma_grant_frees_total"), 1.0);
    assert_eq!(prom.scalar("gcma_live_grants"), 1.0);
    assert_eq!(prom.scalar(r#"gcma_pool_pages{state="granted"}"#), 512.0);
    assert_eq!(prom.scalar("gcma_pool_capacity_pages"), 4096.0);

    // Per-disk series carry the disk's labels; the caps are what the daemon serves itself.
    let caps: BTreeMap<String, f64> = prom
        .vector("gcma_disk_cap_pages")
        .into_iter()
        .map(|(labels, v)| {
            let key = format!(
                "{}/{}",
                labels["guest"].as_str().unwrap(),
                labels["kind"].as_str().unwrap()
            );
            (key, v)
        })
        .collect();
    assert_eq!(caps.get("vm-b/swap"), Some(&256.0), "{caps:?}");
    assert_eq!(
        caps.get("vm-a/swap"),
        Some(&d.metric(
            "gcma_disk_cap_pages",
            &[("guest", "vm-a"), ("kind", "swap")]
        )),
        "{caps:?}"
    );
    assert_eq!(
        prom.vector(r#"gcma_disk_connected{guest="vm-a"}"#)
            .first()
            .map(|s| s.1),
        Some(0.0),
        "no frontend connected"
    );
}
