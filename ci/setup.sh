#!/usr/bin/env bash
# Installs what builds and tests need on a bare machine. Idempotent; quiet when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install rustup (https://rustup.rs), then re-run" >&2
    exit 1
fi
# The toolchain pinned by rust-toolchain.toml, with rustfmt and clippy.
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" --component rustfmt clippy

# KVM tests need /dev/kvm readable and writable by this user.
if [ -e /dev/kvm ] && [ ! -w /dev/kvm ]; then
    echo "setup: /dev/kvm exists but is not writable by $(id -un); add yourself to group kvm or run as root" >&2
fi
