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

# The metrics test checks /metrics output with the official Prometheus Python client's parser.
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
    if command -v python3 >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check "prometheus-client==0.26.0" \
            || echo "setup: could not install prometheus-client; the metrics parser test will fail under CI" >&2
    else
        echo "setup: python3 not found; the metrics parser test needs it (apt-get install python3 python3-pip)" >&2
    fi
fi

# The fuzz smoke (ci/fuzz-smoke.sh) runs cargo-fuzz targets with the nightly toolchain.
if ! rustup run nightly cargo --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal \
        || echo "setup: could not install the nightly toolchain; the fuzz smoke will be skipped (and fail under CI)" >&2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked \
        || echo "setup: could not install cargo-fuzz; the fuzz smoke will be skipped (and fail under CI)" >&2
fi
