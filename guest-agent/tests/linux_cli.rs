//! The `guest-agent` binary's failure paths on the host: every failure is one clear
//! `guest-agent: error: ...` line on stderr and a non-zero exit status.

#![cfg(all(feature = "std", target_os = "linux"))]

use std::path::{Path, PathBuf};
use std::process::Output;

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("guest-agent-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("proc")).unwrap();
    p
}

fn run(root: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_guest-agent"))
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(root.join("agent.sock"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The single error line; fails the test unless there is exactly one and the exit status is 1.
fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("guest-agent: error: "))
        .collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    lines[0].to_string()
}

#[test]
fn no_device_anywhere() {
    let root = scratch("none");
    std::fs::write(root.join("proc/cmdline"), "console=ttyS0\n").unwrap();
    std::fs::write(root.join("proc/iomem"), "00100000-3fffffff : System RAM\n").unwrap();
    let l = error_line(&run(&root, &["stats"]));
    // Without CAP_SYS_ADMIN the DMA check fails first, which is just as clear.
    assert!(
        l.contains("no virtio-mmio devices found") || l.contains("CAP_SYS_ADMIN"),
        "{l}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_candidate_that_cannot_be_mapped_is_named() {
    let root = scratch("nomap");
    std::fs::write(
        root.join("proc/cmdline"),
        "virtio_mmio.device=4K@0xd0000000:5\n",
    )
    .unwrap();
    let l = error_line(&run(&root, &["stats"]));
    if !l.contains("CAP_SYS_ADMIN") {
        assert!(l.contains("no virtio-gcma device"), "{l}");
        assert!(l.contains("0xd0000000+0x1000"), "{l}");
        assert!(l.contains("kernel command line"), "{l}");
        // This host has no /dev/mem; a guest without access would say why.
        assert!(l.contains("/dev/mem"), "{l}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_arguments_and_free_without_a_server() {
    let root = scratch("args");
    let l = error_line(&run(&root, &["--device", "zz", "stats"]));
    assert!(l.contains("bad device address"), "{l}");
    let l = error_line(&run(&root, &["alloc", "--pages", "0"]));
    assert!(l.contains("--pages"), "{l}");
    let l = error_line(&run(&root, &["alloc", "--pages", "4", "--align", "3"]));
    assert!(l.contains("power of two"), "{l}");
    let l = error_line(&run(&root, &["free", "--gpa", "0x100000000"]));
    assert!(l.contains("no guest-agent server"), "{l}");
    assert!(l.contains("serve"), "{l}");
    // clap's own usage errors exit non-zero too.
    let o = run(&root, &["free", "--gpa", "nope"]);
    assert_ne!(o.status.code(), Some(0));
    std::fs::remove_dir_all(&root).unwrap();
}
