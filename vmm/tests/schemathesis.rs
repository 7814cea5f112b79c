//! The control API of a running `vmm run`, fuzzed by schemathesis from `vmm/api/openapi.yaml`
//! (vmm/tests/schemathesis_run.py, in the virtualenv ci/setup.sh makes), then the shutdown action,
//! which the fuzzing leaves out, on its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::api::{fault, Vmm};

/// The virtualenv's Python, if it has schemathesis (`GCMA_CI_VENV` overrides the place).
fn venv_python() -> Result<PathBuf, String> {
    let venv = std::env::var_os("GCMA_CI_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv"),
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import schemathesis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "no virtualenv with schemathesis at {} (ci/setup.sh makes it)",
            venv.display()
        ))
    }
}

#[test]
fn schemathesis_finds_no_fault_and_shutdown_works() {
    if support::hypervisor_or_skip("schemathesis").is_none() {
        return;
    }
    let py = match venv_python() {
        Ok(p) => p,
        Err(why) => return e2e_tests::skip("schemathesis", why),
    };
    let mut vmm = Vmm::start(
        "schemathesis",
        &[
            "--payload",
            "spin",
            "--mem-mib",
            "64",
            "--balloon-pages",
            "0",
            "--gcma-pool-mib",
            "8",
            "--grant-window-mib",
            "8",
        ],
    );
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(&py)
        .arg(format!("{dir}/tests/schemathesis_run.py"))
        .arg("--spec")
        .arg(format!("{dir}/api/openapi.yaml"))
        .arg("--socket")
        .arg(&vmm.sock)
        .args(["--examples", "50"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("python runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "schemathesis found faults:\n{report}");
    assert!(report.contains("no failures"), "{report}");
    assert!(vmm.running(), "the VM stopped during fuzzing");

    // The shutdown action: wrong bodies change nothing, the right one stops the VM.
    for bad in [
        "",
        "{}",
        r#"{"action": "Shutdown"}"#,
        r#"{"action": "shutdown", "now": true}"#,
        r#"{"action_type": "SendCtrlAltDel"}"#,
    ] {
        let (status, body) = vmm.request("PUT", "/actions", bad);
        assert_eq!(status, 400, "{bad:?}: {body}");
        fault(&body);
    }
    assert!(vmm.running());
    assert_eq!(
        vmm.request("PUT", "/actions", r#"{"action": "shutdown"}"#)
            .0,
        204
    );
    let status = vmm.wait();
    assert!(status.success(), "{status}: {}", vmm.stderr());
    assert!(!vmm.sock.exists(), "socket left behind");
}
