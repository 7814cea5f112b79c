//! Builds the kernel-less test payloads (`vmm/payloads`, a separate cargo project with its own
//! flags) for the host target and leaves the ELF images in `OUT_DIR/payloads/` for
//! `src/payloads.rs` to embed with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The payload binaries `src/payloads.rs` embeds.
const PAYLOADS: &[&str] = &[
    "hello", "exit", "crash", "balloon", "fill", "spin", "gcma", "agent",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let payload_dir = manifest_dir.join("payloads");
    for path in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            payload_dir.join(path).display()
        );
    }
    // Shared with the payloads by #[path], and the payloads' path dependencies (the gcma driver
    // core and the wire format it uses).
    for path in [
        "src/abi.rs",
        "../guest-agent/src",
        "../guest-agent/Cargo.toml",
        "../balloon/proto/src",
        "../balloon/proto/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(path).display()
        );
    }

    let target_dir = out_dir.join("payload-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&payload_dir)
        .args([
            "build",
            "--release",
            "--offline",
            "--locked",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The payloads take their flags from payloads/.cargo/config.toml; flags and wrappers meant for
    // the outer build (coverage, clippy-driver, a target triple) must not leak into this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the payloads: {e}"));
    assert!(
        status.success(),
        "building the payloads in {} failed ({status})",
        payload_dir.display()
    );

    let dest = out_dir.join("payloads");
    std::fs::create_dir_all(&dest).expect("create OUT_DIR/payloads");
    for name in PAYLOADS {
        let built = target_dir.join("release").join(name);
        copy(&built, &dest.join(name));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| {
        panic!(
            "copying payload {} to {}: {e}",
            from.display(),
            to.display()
        )
    });
}
