//! `vmm run` as a user runs it: device options, the ioeventfd path, and clear failures.

mod support;

use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_work_with_notifications_on_ioeventfds() {
    if support::hypervisor_or_skip("cli ioeventfd").is_none() {
        return;
    }
    let (code, out, err) = vmm(&[
        "run",
        "--payload",
        "balloon",
        "--balloon-pages",
        "600",
        "--ioeventfd",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("balloon: inflated 600 pages"), "{out}");
    let (code, out, err) = vmm(&[
        "run",
        "--payload",
        "gcma",
        "--arg",
        "300",
        "--gcma-pool-mib",
        "16",
        "--grant-window-mib",
        "8",
        "--ioeventfd",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gcma: granted 300 pages at 0x") && out.contains("gcma: freed"),
        "{out}"
    );
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let (code, _, err) = vmm(&["run", "--payload", "/nonexistent/elf"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read payload /nonexistent/elf"),
        "{err}"
    );
    let (code, _, err) = vmm(&["run", "--payload", "hello", "--mem-mib", "1"]);
    assert_eq!(code, 2, "clap rejects out-of-range values: {err}");
    assert!(err.contains("--mem-mib"), "{err}");
    let (code, _, err) = vmm(&["demo", "--sizes", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid demo configuration"), "{err}");
}
