#!/bin/sh
# Produces BENCHMARKS.md end to end: builds the daemon and the bench examples
# once (release), runs every scenario of issue 7 RUNS times with callwarden
# and the baseline poller side by side, and writes the medians as markdown.
#
#   bench/report.sh [RUNS] [extra `bench report` options, e.g. --quick]
#
# RUNS defaults to 3 (about 1 h 45 min on two cores, 45 min of it the
# PostgreSQL scenarios). The per-run figures go
# to $CARGO_TARGET_DIR/bench-report.log. BENCHMARKS.md is replaced only when
# the whole report succeeded.
set -eu
cd "$(dirname "$0")/.."
runs=${1:-3}
[ $# -gt 0 ] && shift
target=${CARGO_TARGET_DIR:-target}
# The source as built, for the report's machine table: the tree may change
# while the report runs (an hour), and what is measured is what was built.
CALLWARDEN_BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
CALLWARDEN_BENCH_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -v 'BENCHMARKS.md$' | paste -sd, - || true)
export CALLWARDEN_BENCH_COMMIT CALLWARDEN_BENCH_DIRTY
cargo build --release --bin callwarden \
    --example bench --example baseline_poller --example api_load
log="$target/bench-report.log"
"$target/release/examples/bench" report --runs "$runs" "$@" > BENCHMARKS.md.new 2> "$log" || {
    echo "bench report failed; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1
}
mv BENCHMARKS.md.new BENCHMARKS.md
echo "wrote BENCHMARKS.md ($runs runs each; log in $log)"
