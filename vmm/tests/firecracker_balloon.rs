//! A Firecracker client's balloon calls against a running `vmm run`: the request bodies are the
//! ones in Firecracker's `docs/ballooning.md`, byte for byte as its curl examples send them (the
//! shell joins the `\`-continued lines), and the answers must read back as Firecracker's do.

mod support;

use serde_json::{json, Value};
use support::api::{fault, Vmm};

/// What the shell makes of a double-quoted `-d "..."` argument in the docs: `\"` is `"`, a
/// backslash-newline disappears, and `$name` is replaced.
fn shell_body(quoted: &str, vars: &[(&str, &str)]) -> String {
    let mut s = quoted.replace("\\\"", "\"").replace("\\\n", "");
    // Longest names first, so that `$amount_mib` is not cut by a shorter name.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in vars {
        s = s.replace(&format!("${k}"), v);
    }
    s
}

// From Firecracker's docs/ballooning.md ("Installing the balloon device", "Operating the
// traditional balloon device", "Virtio balloon statistics", "free page reporting/hinting").
const DOC_PUT: &str = r#"{
        \"amount_mib\": $amount_mib, \
        \"deflate_on_oom\": $deflate_on_oom, \
        \"stats_polling_interval_s\": $polling_interval \
    }"#;
const DOC_CONFIG_FILE: &str = r#"{
    "amount_mib": 0,
    "deflate_on_oom": false,
    "stats_polling_interval_s": 1
}"#;
const DOC_PATCH: &str = r#"{
        \"amount_mib\": $amount_mib, \
        \"stats_polling_interval_s\": $polling_interval \
    }"#;
const DOC_PATCH_STATS: &str = r#"{ \"stats_polling_interval_s\": $polling_interval }"#;
const DOC_PUT_REPORTING: &str = r#"{
        \"amount_mib\": $amount_mib, \
        \"deflate_on_oom\": $deflate_on_oom, \
        \"stats_polling_interval_s\": $polling_interval, \
        \"free_page_reporting\": true \
    }"#;
const DOC_PUT_HINTING: &str = r#"{
        \"amount_mib\": $amount_mib, \
        \"deflate_on_oom\": $deflate_on_oom, \
        \"stats_polling_interval_s\": $polling_interval, \
        \"free_page_hinting\": true \
    }"#;

/// Field names of Firecracker's `BalloonStats` (src/firecracker/swagger/firecracker.yaml).
const FC_BALLOON_STATS: [&str; 20] = [
    "target_pages",
    "actual_pages",
    "target_mib",
    "actual_mib",
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
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

fn get(vmm: &Vmm, path: &str) -> Value {
    let (status, body) = vmm.request("GET", path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn ok(vmm: &Vmm, method: &str, path: &str, body: &str) {
    let (status, answer) = vmm.request(method, path, body);
    assert_eq!(status, 204, "{method} {path} {body}: {answer}");
    assert!(answer.is_empty(), "{answer}");
}

/// GET /balloon answers "a JSON object of the same structure as the one used to configure the
/// device": the fields sent, plus the optional ones at their values.
fn assert_config(vmm: &Vmm, sent: &str, reporting: bool) {
    let mut want: Value = serde_json::from_str(sent).unwrap();
    let w = want.as_object_mut().unwrap();
    w.entry("free_page_hinting").or_insert(json!(false));
    w.insert("free_page_reporting".into(), json!(reporting));
    assert_eq!(get(vmm, "/balloon"), want);
}

#[test]
fn firecracker_balloon_bodies_round_trip() {
    if support::hypervisor_or_skip("firecracker balloon").is_none() {
        return;
    }
    let mut vmm = Vmm::start(
        "fc-balloon",
        &[
            "--payload",
            "spin",
            "--mem-mib",
            "64",
            "--balloon-pages",
            "0",
            "--balloon-stats-interval-s",
            "0",
        ],
    );

    // Statistics off (interval 0): refused as Firecracker refuses them.
    let (status, body) = vmm.request("GET", "/balloon/statistics", "");
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("not enabled"));

    // The configuration-file object, then the curl example.
    ok(&vmm, "PUT", "/balloon", DOC_CONFIG_FILE);
    assert_config(&vmm, DOC_CONFIG_FILE, false);
    let put = shell_body(
        DOC_PUT,
        &[
            ("amount_mib", "16"),
            ("deflate_on_oom", "true"),
            ("polling_interval", "2"),
        ],
    );
    assert!(
        put.contains("\"amount_mib\": 16,         \"deflate_on_oom\""),
        "{put}"
    );
    ok(&vmm, "PUT", "/balloon", &put);
    assert_config(&vmm, &put, false);

    let stats = get(&vmm, "/balloon/statistics");
    for (k, _) in stats.as_object().unwrap() {
        assert!(
            FC_BALLOON_STATS.contains(&k.as_str()),
            "{k} is not Firecracker's"
        );
    }
    assert_eq!(
        (&stats["target_mib"], &stats["target_pages"]),
        (&json!(16), &json!(4096))
    );
    assert_eq!(
        (&stats["actual_mib"], &stats["actual_pages"]),
        (&json!(0), &json!(0))
    );

    // PATCH /balloon as the docs show it (with the polling interval, which Firecracker's own
    // parser refuses there; README.md lists that we take it).
    let patch = shell_body(DOC_PATCH, &[("amount_mib", "8"), ("polling_interval", "3")]);
    ok(&vmm, "PATCH", "/balloon", &patch);
    let stats = get(&vmm, "/balloon/statistics");
    assert_eq!(
        (&stats["target_mib"], &stats["target_pages"]),
        (&json!(8), &json!(2048))
    );
    assert_eq!(get(&vmm, "/balloon")["stats_polling_interval_s"], 3);
    // Firecracker's BalloonUpdate alone.
    ok(&vmm, "PATCH", "/balloon", r#"{"amount_mib": 9}"#);
    assert_eq!(get(&vmm, "/balloon")["amount_mib"], 9);

    // The statistics interval (the docs' text says /balloon/statistics; its curl line has a
    // typo and names /balloon, where Firecracker would refuse the body for lack of amount_mib).
    let patch_stats = shell_body(DOC_PATCH_STATS, &[("polling_interval", "5")]);
    ok(&vmm, "PATCH", "/balloon/statistics", &patch_stats);
    assert_eq!(get(&vmm, "/balloon")["stats_polling_interval_s"], 5);
    let (status, body) = vmm.request("PATCH", "/balloon", &patch_stats);
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("amount_mib"), "{body}");

    // Free page reporting is offered; hinting is not, and is refused with nothing changed.
    let vars = [
        ("amount_mib", "12"),
        ("deflate_on_oom", "false"),
        ("polling_interval", "5"),
    ];
    let reporting = shell_body(DOC_PUT_REPORTING, &vars);
    ok(&vmm, "PUT", "/balloon", &reporting);
    assert_config(&vmm, &reporting, true);
    let (status, body) = vmm.request("PUT", "/balloon", &shell_body(DOC_PUT_HINTING, &vars));
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("free_page_hinting"));
    assert_config(&vmm, &reporting, true);

    // Bodies Firecracker's own parser tests refuse are refused here too, with its error shape.
    for (method, bad) in [
        ("PATCH", r#"{"amount_mib": "bar", "foo": "bar"}"#),
        (
            "PATCH",
            r#"{"amount_mib": 1000, "stats_polling_interval_s": "false"}"#,
        ),
        (
            "PATCH",
            r#"{"amount_mib": -1000, "stats_polling_interval_s": true}"#,
        ),
        ("PATCH", r#"{"stats_polling_interval_s": 0}"#),
        ("PATCH", r#"{"fields": "dummy_field"}"#),
        ("PUT", "invalid_payload"),
    ] {
        let (status, body) = vmm.request(method, "/balloon", bad);
        assert_eq!(status, 400, "{method} {bad}: {body}");
        fault(&body);
    }
    let (status, body) = vmm.request("PATCH", "/balloon/hinting/start", "");
    assert_eq!(status, 404, "{body}");
    fault(&body);
    assert_config(&vmm, &reporting, true);
    assert!(vmm.running());
}
