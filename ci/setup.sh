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

# Huge-page tests (--hugepages; gcma-host/tests/pool_huge.rs, vmm/tests/hugepages.rs, balloon's
# huge-block tests) need 2 MiB hugetlb pages and shmem THP at `advise`. 256 pages (512 MiB) cover
# the most one test binary holds at once: a 64 MiB hugetlb pool (32) and a 64 MiB guest (32) in the
# vmm test, pools of 2-16 MiB and guests of 8-32 MiB elsewhere, with room for the demo's
# `--hugepages hugetlb` (a 256 MiB pool + 3 guests of 64 MiB = 224). Only ever raised here.
HUGEPAGES_NEEDED=256
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
thp_off=
[ -e "$thp" ] && grep -q '\[\(never\|deny\)\]' "$thp" && thp_off=1
if [ "$have" -lt "$HUGEPAGES_NEEDED" ] || [ -n "$thp_off" ]; then
    if [ "$(id -u)" = 0 ]; then
        if [ "$have" -lt "$HUGEPAGES_NEEDED" ]; then
            echo "$HUGEPAGES_NEEDED" > /proc/sys/vm/nr_hugepages || true
            echo "setup: reserved 2 MiB hugetlb pages for the huge-page tests: /proc/sys/vm/nr_hugepages $have -> $(cat /proc/sys/vm/nr_hugepages) (HugePages_Free $(awk '/HugePages_Free/ {print $2}' /proc/meminfo))"
        fi
        if [ -n "$thp_off" ]; then
            echo advise > "$thp" || true
            echo "setup: shmem transparent huge pages for the huge-page tests: $thp is now $(cat "$thp")"
        fi
    else
        echo "setup: the huge-page tests need $HUGEPAGES_NEEDED pages in /proc/sys/vm/nr_hugepages and advise in $thp (as root); without them they skip, and fail under CI" >&2
    fi
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

# The Linux guest tests (tests/linux-guest/README.md) boot Debian's cloud kernel under QEMU:
# qemu-system-x86 (which brings qemu-storage-daemon), busybox-static and cpio for the initramfs,
# e2fsprogs for ext2 images, acpica-tools (iasl) to decompile the ACPI tables the VMM gives a
# Linux guest (vmm/tests/linux_acpi.rs, linux_boot.rs); tests/linux-guest/build-kit.sh downloads
# the kernel package with apt-get, so apt's package lists must be present.
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common)
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v mke2fs >/dev/null 2>&1 || [ -x /usr/sbin/mke2fs ] || [ -x /sbin/mke2fs ] || need+=(e2fsprogs)
command -v iasl >/dev/null 2>&1 || need+=(acpica-tools)
lists_present() { compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; }
if [ "${#need[@]}" -gt 0 ] || ! lists_present; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: the Linux guest tests need: ${need[*]:-apt lists} (as root: apt-get update && apt-get install ${need[*]})" >&2
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: no apt-get; the Linux guest tests need Debian's ${need[*]}" >&2
    else
        log=$(mktemp)
        # Update only when the lists are missing or do not know a package we need.
        if ! lists_present || ! apt-cache show "${need[@]}" >/dev/null 2>&1; then
            apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; echo "setup: apt-get update failed" >&2; }
        fi
        if [ "${#need[@]}" -gt 0 ]; then
            echo "setup: installing ${need[*]}" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$log" 2>&1 \
                || { cat "$log" >&2; echo "setup: apt-get install ${need[*]} failed; the Linux guest tests will fail under CI" >&2; }
        fi
        rm -f "$log"
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
