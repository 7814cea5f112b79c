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

# Debian packages the tests need, installed when missing (as root; else say what to install).
apt_updated=
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install $* (Debian: apt-get install $*)" >&2
        return 1
    fi
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

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

# The control API is fuzzed by schemathesis (vmm/tests/schemathesis.rs), from a virtualenv under
# target/ so that nothing is installed into the system's Python.
VENV=target/ci-venv
SCHEMATHESIS_VERSION=4.32.5
if ! "$VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" >/dev/null 2>&1; then
    if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
        apt_install python3-venv || true
    fi
    rm -rf "$VENV"
    if python3 -m venv "$VENV" \
        && "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"; then
        :
    else
        echo "setup: could not install schemathesis in $VENV; the API fuzzing test will fail under CI" >&2
    fi
fi

# A real Prometheus scrapes the demo in vmm/tests/prometheus.rs. The test runs its own instance
# on loopback; the package's system service is neither started nor left enabled.
if ! command -v prometheus >/dev/null 2>&1; then
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ "$(id -u)" = 0 ] && [ ! -e "$policy" ]; then
        # Tells the package's maintainer scripts not to start services.
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt_install prometheus || echo "setup: could not install prometheus; the Prometheus test will fail under CI" >&2
    [ -n "$made_policy" ] && rm -f "$policy"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi
