//! Cross-crate end-to-end tests live in `tests/tests/`. This library holds what they and the
//! other crates' integration tests share, including [`linux_guest`]: stock Linux guests under
//! QEMU for block-device tests, and [`prometheus`]: a real Prometheus server scraping the
//! processes under test. It depends on no workspace crate that uses it, so that every crate
//! can take it as a dev-dependency.

pub mod linux_guest;
pub mod prometheus;

/// A free TCP port on loopback (bound, read and released: another process could take it before
/// the caller binds it, which tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

/// Wall-clock time in seconds since the Unix epoch (what Prometheus stamps samples with).
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// Reports that `test` cannot run here because of `reason`: prints `SKIPPED: <test>: <reason>`
/// so that a skip is never silent, except under `CI=true`, where everything a test needs is
/// installed by `ci/setup.sh` and a missing piece fails the test instead.
pub fn skip(test: &str, reason: impl std::fmt::Display) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run under CI=true: {reason}");
    }
    println!("SKIPPED: {test}: {reason}");
}

/// Parses OpenMetrics text with the official Prometheus Python client and returns the sample
/// names, or why it could not (python3 or the module missing: `ci/setup.sh` installs it).
pub fn parse_openmetrics(text: &str) -> Result<Vec<String>, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = set()
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        names.add(s.name)
print("\n".join(sorted(names)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "parser failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
