#!/usr/bin/env bash
# The project's whole test job: formatting, lints, every test in the workspace, a fuzz smoke.
# This is the command README.md shows and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing what the tests need"
ci/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check
# The guest payloads are a separate crate (built by vmm/build.rs with their own flags).
cargo fmt --manifest-path vmm/payloads/Cargo.toml -- --check
# The fuzz crates are workspaces of their own.
cargo fmt --manifest-path gcma-host/fuzz/Cargo.toml -- --check
cargo fmt --manifest-path balloon/fuzz/Cargo.toml -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz crates build with the pinned stable toolchain too (only running them needs nightly).
cargo clippy --manifest-path gcma-host/fuzz/Cargo.toml --all-targets --locked -- -D warnings
cargo clippy --manifest-path balloon/fuzz/Cargo.toml --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked
# The fuzz crates' own unit tests (their input encoders against their decoders).
cargo test --manifest-path gcma-host/fuzz/Cargo.toml --locked
cargo test --manifest-path balloon/fuzz/Cargo.toml --locked

step "fuzz smoke (every cargo-fuzz target for a few seconds)"
ci/fuzz-smoke.sh
