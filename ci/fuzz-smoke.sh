#!/usr/bin/env bash
# A short coverage-guided fuzzing run of every cargo-fuzz target (gcma-host/fuzz, balloon/fuzz),
# each for FUZZ_SECONDS (default 20) seconds, starting from its committed seeds. ci/test.sh calls
# it; balloon/fuzz/README.md gives the long-run command.
#
# Needs the nightly toolchain and cargo-fuzz (ci/setup.sh installs cargo-fuzz). Without them it
# prints `SKIPPED: <reason>` and succeeds, except under CI=true, where it fails.
#
# Targets run with debug assertions (overflow checks) and without a sanitizer: the code under
# test is safe Rust over mmap'd memory, which AddressSanitizer does not track, and the sanitizer
# would cost half the executions (see balloon/fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"

skip() {
    echo "SKIPPED: fuzz smoke: $*"
    if [ "${CI:-}" = "true" ]; then
        echo "fuzz smoke: required under CI=true" >&2
        exit 1
    fi
    exit 0
}

command -v rustup >/dev/null 2>&1 || skip "rustup not found (the nightly toolchain is needed)"
rustup run nightly cargo --version >/dev/null 2>&1 \
    || skip "no nightly toolchain (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 \
    || skip "cargo-fuzz not installed (cargo install cargo-fuzz --locked)"

for crate in gcma-host balloon; do
    targets=$(cd "$crate" && cargo +nightly fuzz list)
    for target in $targets; do
        echo "--- $crate/fuzz: $target (${seconds} s)"
        mkdir -p "$crate/fuzz/corpus/$target"
        log="$crate/fuzz/artifacts/$target-smoke.log"
        mkdir -p "$(dirname "$log")"
        # New corpus entries go to fuzz/corpus (ignored by git); the seeds are only read.
        if ! (cd "$crate" && cargo +nightly fuzz run --debug-assertions --sanitizer none \
            "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
            -- -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1; then
            tail -n 60 "$log"
            echo "fuzz smoke: $crate/fuzz $target failed; the input is under $crate/fuzz/artifacts/$target/" >&2
            exit 1
        fi
        # libFuzzer's last status line and final stats: executions, coverage, corpus.
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb):' "$log" || true
    done
done
