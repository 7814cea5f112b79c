//! `gcma-hostd` for the vmm tests: the daemon binary is another package's, so it is built here
//! (`cargo build -p gcma-hostd`, a no-op when `cargo test --workspace` built it already) and
//! found in the target directory this test runs from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmm::multiproc::{metric, Hostd};

/// The `vmm` executable cargo built for these tests.
pub const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Builds `gcma-hostd` (once per test binary) and returns its path, or why not. `GCMA_HOSTD`
/// names another build of it to use instead.
pub fn hostd_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("GCMA_HOSTD") {
            return Ok(PathBuf::from(p));
        }
        let profile_dir = Path::new(VMM)
            .parent()
            .ok_or("no target directory")?
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--locked", "-p", "gcma-hostd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run cargo build -p gcma-hostd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build -p gcma-hostd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bin = profile_dir.join("gcma-hostd");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{} was not built", bin.display()))
        }
    })
    .clone()
}

/// A scratch directory for one test (removed at the start of the next run of the same test).
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-vhost-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Starts the daemon with a `pool_mib` pool in `dir`; `None` (after `SKIPPED`) when it cannot
/// be built here.
pub fn start(test: &str, dir: &Path, pool_mib: u64) -> Option<Hostd> {
    let bin = match hostd_binary() {
        Ok(b) => b,
        Err(e) => {
            e2e_tests::skip(test, e);
            return None;
        }
    };
    let extra = vec!["--backing-dir".to_string(), dir.display().to_string()];
    Some(Hostd::start(&bin, dir, pool_mib, &extra).expect("gcma-hostd starts"))
}

/// Polls the daemon's metric until `ok(value)` or `timeout`; returns the last value.
pub fn wait_metric(
    d: &Hostd,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(&d.metrics().unwrap_or_default(), name, labels);
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
