#!/usr/bin/env bash
# The project's whole test job: formatting, lints, every test in the workspace.
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

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked
