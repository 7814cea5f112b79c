//! The control API and /metrics of a running `vmm run`, over its Unix socket and TCP port: bad
//! input gets a 4xx and the VM keeps running; a shutdown action stops it and the VMM exits 0.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vmm\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// Checks an error body has Firecracker's shape and says something.
fn fault(body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let m = v["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message: {body}"));
    assert!(!m.is_empty());
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{body}");
}

#[test]
fn api_controls_a_running_vm() {
    if support::hypervisor_or_skip("api socket").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-api-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let port = e2e_tests::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "run",
            "--payload",
            "spin",
            "--mem-mib",
            "32",
            "--balloon-pages",
            "0",
        ])
        .args(["--gcma-pool-mib", "8", "--grant-window-mib", "8"])
        .arg("--api-sock")
        .arg(&sock)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        assert!(child.try_wait().unwrap().is_none(), "vmm exited early");
        std::thread::sleep(Duration::from_millis(20));
    }

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket's mode");

    let (st, body) = request(&sock, "GET", "/vm", "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["mem_mib"], 32);

    for bad in [
        "",
        "{",
        r#"{"amount_mib": -3}"#,
        r#"{"amount_mib": 33}"#,
        r#"{"target_mib": 4}"#,
        r#"{"x": 1}"#,
    ] {
        let (st, body) = request(&sock, "PATCH", "/balloon", bad);
        assert_eq!(st, 400, "{bad:?} -> {body}");
        fault(&body);
    }
    assert_eq!(
        request(&sock, "PATCH", "/balloon", r#"{"amount_mib": 4}"#).0,
        204
    );
    let (st, body) = request(&sock, "GET", "/balloon/statistics", "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["target_mib"].as_u64(), v["target_pages"].as_u64()),
        (Some(4), Some(1024))
    );
    let (st, body) = request(&sock, "GET", "/balloon", "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["amount_mib"], 4);
    assert_eq!(
        v["stats_polling_interval_s"], 5,
        "the --balloon-stats-interval-s default"
    );

    let (st, body) = request(&sock, "GET", "/gcma", "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pool"]["nr_pages"], 2048);
    assert_eq!(v["grants"].as_array().map(Vec::len), Some(0));

    for (method, path, body, status) in [
        ("DELETE", "/vm", "", 405),
        ("GET", "/nope", "", 404),
        ("PUT", "/actions", r#"{"action": "explode"}"#, 400),
        ("PUT", "/balloon", r#"{"target_mib": 4}"#, 400),
    ] {
        let (st, body) = request(&sock, method, path, body);
        assert_eq!(st, status, "{method} {path}: {body}");
        fault(&body);
    }
    // Still running after all that.
    assert!(child.try_wait().unwrap().is_none());

    let mut m = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    assert!(
        text.contains(r#"vmm_balloon_target_bytes{vm="vm0"} 4194304"#),
        "{text}"
    );
    assert!(text.contains("gcma_pool_capacity_pages 2048"), "{text}");

    assert_eq!(
        request(&sock, "PUT", "/actions", r#"{"action": "shutdown"}"#).0,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "vmm did not stop after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!sock.exists(), "socket left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}
