#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60): fuzz/run.sh [seconds]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); works on stable
# Rust through RUSTC_BOOTSTRAP=1, since cargo-fuzz passes -Z flags. Set
# SANITIZER=address for an ASan build (slower; callwarden itself forbids
# unsafe code, so the default is none). Corpora grow in fuzz/corpus/, crashes
# land in fuzz/artifacts/<target>/; both are ignored by git. Exits non-zero
# if any target found a failure.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
sanitizer="${SANITIZER:-none}"
targets=(config webhook_trtc webhook_acs duration provider_answer)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

# The config target starts from every config the project ships or keeps as
# a fixture, and from one with a marker in every secret place.
mkdir -p corpus/config
cp ../config/*.yaml ../tests/fixtures/config/valid/*.yaml ../tests/fixtures/config/invalid/*.yaml \
    seeds/config/*.yaml corpus/config/

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
    case "$target" in
        webhook_*) dict=dict/webhooks.dict ;;
        *) dict="dict/$target.dict" ;;
    esac
    mkdir -p "corpus/$target"
    echo "=== $target: ${seconds}s"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -dict="$dict" -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "failures in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s each without a failure"
