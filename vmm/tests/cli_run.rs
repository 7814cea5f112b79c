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

/// Runs `vmm args`, failing the test if it has not ended within `limit` (killing it first).
fn vmm_bounded(args: &[&str], limit: std::time::Duration) -> (i32, String, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vmm");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for vmm") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// A vCPU thread making a system call its seccomp filter does not allow (the hidden test
/// trigger) ends the VMM at once with a message naming the call, not a hang; `--no-seccomp`
/// turns the filter off and the same run succeeds.
#[test]
fn a_disallowed_syscall_on_a_vcpu_ends_the_vmm_with_its_name() {
    if support::hypervisor_or_skip("seccomp violation").is_none() {
        return;
    }
    let limit = std::time::Duration::from_secs(60);
    let args = [
        "run",
        "--payload",
        "gcma",
        "--arg",
        "16",
        "--gcma-pool-mib",
        "16",
        "--grant-window-mib",
        "8",
        "--seccomp-selftest",
    ];
    let (code, out, err) = vmm_bounded(&args, limit);
    assert_eq!(code, 159, "{out}{err}");
    assert!(
        err.contains("vmm: seccomp: a vcpu thread made system call 121 (getpgid)"),
        "{err}"
    );
    assert!(!out.contains("gcma: granted"), "the guest never ran: {out}");
    let mut off = args.to_vec();
    off.push("--no-seccomp");
    let (code, out, err) = vmm_bounded(&off, limit);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gcma: granted 16 pages"), "{out}");
    assert!(err.contains("seccomp filters are off"), "{err}");
}
