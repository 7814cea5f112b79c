//! The daemon without guests: its command line (every flag explained, bad input refused in one
//! line), its control endpoint and metrics, SIGTERM, and the restart case on its swap disks (a
//! new daemon over the same backing directory reads back every acknowledged sector: after a
//! SIGTERM-style shutdown under every policy, and without one under write-through).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use gcma_hostd::cli::Cli;
use gcma_hostd::daemon::Daemon;
use support::{HostD, HOSTD};

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(HOSTD).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_flag() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let text = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(text.len() > 20, "--{long} has no real help: {text:?}");
        assert!(help.contains(&format!("--{long}")), "--help lacks --{long}");
    }
    for needle in ["write-through", "SIGTERM", "reconnect", "RUST_LOG", "SIZE"] {
        assert!(help.contains(needle), "--help does not mention {needle}");
    }
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sock = |n: &str| dir.path().join(n).display().to_string();
    let image = dir.path().join("img");
    std::fs::write(&image, vec![0u8; 8192]).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--swap-disk".into(), sock("a.sock")], "size"),
        (
            vec!["--swap-disk".into(), format!("{},size=1M", sock("a.sock"))],
            "--backing-dir",
        ),
        (
            vec![
                "--backing-dir".into(),
                format!("{d}/missing"),
                "--swap-disk".into(),
                format!("{},size=1M", sock("a.sock")),
            ],
            "not a directory",
        ),
        (vec!["--pool-mib".into(), "0".into()], "--pool-mib"),
        (
            vec!["--requests-per-kick".into(), "0".into()],
            "--requests-per-kick",
        ),
        (
            vec![
                "--backing-dir".into(),
                d.clone(),
                "--swap-disk".into(),
                format!("{},size=1M", sock("a.sock")),
                "--swap-disk".into(),
                format!("{},size=1M,name=a", sock("b.sock")),
            ],
            "named",
        ),
        (
            vec![
                "--cache-disk".into(),
                format!("{},image={d}/nope.img", sock("c.sock")),
            ],
            "nope.img",
        ),
        (
            vec![
                "--swap-disk".into(),
                format!("{},size=1M,speed=9", sock("a.sock")),
            ],
            "speed",
        ),
        (
            vec!["--frontswap-policy".into(), "sometimes".into()],
            "sometimes",
        ),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run(&a);
        assert_eq!(
            code,
            Some(
                if a.contains(&"--frontswap-policy")
                    || a.contains(&"--requests-per-kick")
                    || needle == "size"
                    || needle == "speed"
                {
                    2
                } else {
                    1
                }
            ),
            "{a:?}: {err}"
        );
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.contains(needle),
            "{a:?}: first line {first:?} does not name {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
        if code == Some(1) {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // Nothing was left behind by the refused starts.
    assert!(!dir.path().join("a.sock").exists());
}

fn tcp_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn control_endpoint_takes_and_returns_grants() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    let sock = dir.path().join("c.sock");
    let port = e2e_tests::free_port();
    let args: Vec<String> = [
        "--pool-mib",
        "8",
        "--cache-disk",
        &format!("{},image={}", sock.display(), image.display()),
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = HostD::start(dir.path(), "control", &args, std::slice::from_ref(&sock));
    assert_eq!(d.request("GET", "/grants", ""), (200, "[]".to_string()));
    for (body, status) in [
        ("", 400),
        ("{\"pages\": 0}", 400),
        ("{\"pages\": 4, \"align\": 3}", 400),
        ("{\"pages\": 4, \"colour\": 1}", 400),
        ("{\"pages\": 100000}", 409),
    ] {
        let (s, b) = d.request("POST", "/grants", body);
        assert_eq!(s, status, "{body}: {b}");
        assert!(b.contains("\"fault_message\""), "{b}");
    }
    let (s, b) = d.request("POST", "/grants", "{\"pages\": 512, \"align\": 512}");
    assert_eq!(s, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["nr_pages"], 512);
    assert_eq!(v["first_page"].as_u64().unwrap() % 512, 0);
    let id = v["id"].as_u64().unwrap();
    let (_, list) = d.request("GET", "/grants", "");
    assert!(list.contains(&format!("\"id\":{id}")), "{list}");
    assert_eq!(d.metric("gcma_live_grants", &[]), 1.0);
    assert_eq!(d.metric("gcma_pool_pages", &[("state", "granted")]), 512.0);
    assert_eq!(d.request("DELETE", &format!("/grants/{id}"), "").0, 200);
    assert_eq!(d.request("DELETE", &format!("/grants/{id}"), "").0, 404);
    assert_eq!(d.request("DELETE", "/grants/abc", "").0, 400);
    assert_eq!(d.request("PUT", "/grants", "").0, 405);
    assert_eq!(d.request("GET", "/nowhere", "").0, 404);
    assert_eq!(d.metric("gcma_live_grants", &[]), 0.0);
    // The TCP listener serves /metrics and nothing else.
    let (s, text) = tcp_get(port, "/metrics");
    assert_eq!(s, 200);
    assert!(text.contains("gcma_disk_requests_total"), "{text}");
    assert_eq!(tcp_get(port, "/grants").0, 404);
    let status = d.sigterm(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(!sock.exists(), "the disk's socket is removed at shutdown");
}

#[test]
fn metrics_parse_and_follow_the_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let args: Vec<String> = [
        "--pool-mib",
        "8",
        "--backing-dir",
        &dir.path().display().to_string(),
        "--swap-disk",
        &format!("{},size=1M,guest=vm7", sock.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let d = HostD::start(dir.path(), "metrics", &args, std::slice::from_ref(&sock));
    let text = d.metrics();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap(), it.next().unwrap());
            assert!(helped.contains(name), "{name} has no HELP");
            assert!(
                !(ty == "gauge" && name.ends_with("_total")),
                "gauge {name} ends in _total"
            );
        }
    }
    for family in [
        "gcma_disk_requests",
        "gcma_disk_bytes",
        "gcma_disk_request_seconds",
        "gcma_disk_pool_hits",
        "gcma_disk_pool_pages",
        "gcma_disk_cap_rejections",
        "gcma_disk_writeback_retries",
        "gcma_guest_pool_pages",
        "gcma_pool_pages",
        "gcma_evicted_pages",
        "gcma_writeback_retries",
    ] {
        assert!(helped.contains(family), "no family {family}");
    }
    assert_eq!(
        d.metric(
            "gcma_disk_cap_pages",
            &[("disk", "s"), ("guest", "vm7"), ("kind", "swap")]
        ),
        2048.0,
        "the default cap is the whole pool for one disk"
    );
    match e2e_tests::parse_openmetrics(&text) {
        Ok(names) => {
            assert!(
                names.iter().any(|n| n == "gcma_disk_requests_total"),
                "{names:?}"
            );
        }
        Err(e) => e2e_tests::skip("metrics parser", e),
    }
}

/// A cli for an in-process daemon with one swap disk named `disk0` served on `socket`.
fn cli(policy: &str, dir: &Path, socket: &str) -> Cli {
    Cli::parse_from([
        "gcma-hostd",
        "--pool-mib",
        "4",
        "--frontswap-policy",
        policy,
        "--backing-dir",
        &dir.display().to_string(),
        "--swap-disk",
        &format!("{}/{socket},size=4M,name=disk0,cap=1M", dir.display()),
    ])
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Writes through the disk's backend (what a guest's OUT requests reach): more pages than the
/// pool keeps, replacements, unaligned pieces, with a grant of the whole pool in the middle
/// (which evicts what the pool held); returns the disk's expected bytes. Afterwards some pages
/// live only in the pool (write-back) or in host memory (put-back).
fn fill(d: &Daemon) -> Vec<u8> {
    let disk = &d.disks[0];
    let mut model = vec![0u8; 4 << 20];
    let mut write = |n: usize, off: u64, len: usize| {
        let data = pattern(n as u8 + 1, len);
        disk.backend.write_at(off, &data).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    };
    write(0, 0, 2 << 20);
    write(1, 512, 1024);
    write(2, 4096 * 100 + 1536, 8192);
    let grant = |method: &str, path: &str, body: &[u8]| {
        d.control.handle(&gcma_http::Request {
            method: method.into(),
            path: path.into(),
            query: None,
            content_type: None,
            body: body.to_vec(),
        })
    };
    let r = grant("POST", "/grants", b"{\"pages\": 1024}");
    assert_eq!(r.status, 201);
    assert_eq!(grant("DELETE", "/grants/1", b"").status, 200);
    write(3, 4096 * 300, 4096 * 50);
    write(4, 4096 * 700 - 512, 512);
    write(5, 4096 * 2, 4096 * 8);
    model
}

fn read_back(d: &Daemon) -> Vec<u8> {
    let mut got = vec![0u8; 4 << 20];
    d.disks[0].backend.read_at(0, &mut got).unwrap();
    got
}

/// The restart case: after an orderly shutdown (what SIGTERM does), a new daemon over the same
/// backing directory reads back every acknowledged sector, under every policy.
#[test]
fn a_restarted_daemon_reads_back_every_acknowledged_sector() {
    for policy in ["write-through", "write-back", "put-back"] {
        let dir = tempfile::tempdir().unwrap();
        let first = Daemon::start(&cli(policy, dir.path(), "a.sock")).unwrap();
        let model = fill(&first);
        assert_eq!(read_back(&first), model, "{policy}");
        let written = first.shutdown().unwrap();
        if policy != "write-through" {
            assert!(written > 0, "{policy}: the shutdown wrote nothing");
        }
        let second = Daemon::start(&cli(policy, dir.path(), "b.sock")).unwrap();
        assert!(
            read_back(&second) == model,
            "{policy}: lost data over the restart"
        );
        second.shutdown().unwrap();
    }
}

/// Under write-through nothing is owed: a daemon that dies without a shutdown (here: dropped,
/// its pool gone) loses nothing either.
#[test]
fn write_through_needs_no_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(&cli("write-through", dir.path(), "a.sock")).unwrap();
    let model = fill(&first);
    drop(first);
    let second = Daemon::start(&cli("write-through", dir.path(), "b.sock")).unwrap();
    assert!(read_back(&second) == model);
    second.shutdown().unwrap();
}
