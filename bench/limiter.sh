#!/usr/bin/env bash
# bench/limiter.sh: build and run bench_limiter (admission decision time, estimator memory,
# estimate accuracy), print its table with notes, and write them as the "## Limiter" section of
# bench/RESULTS.md. Only that section is replaced (or appended when missing); the rest of the
# file is left as it is. See bench/bench_limiter.c for what each line measures.
#
# Environment (all optional):
#   BUILD_DIR=/tmp/build-bench          CMake build directory (RelWithDebInfo)
#   LIMITER_BIN=...                     bench_limiter binary to run (default: the one built here)
#   LIMITER_SERIES=1000000              series learned, over metrics of 10 to 100,000 series
#   LIMITER_ITERATIONS=200000           timed decisions per request shape
#   LIMITER_PER_CLASS=12                accuracy selectors per class per metric
#   BENCH_RESULTS=bench/RESULTS.md      where the section goes ("" to skip writing it)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
SERIES=${LIMITER_SERIES:-1000000}
ITERATIONS=${LIMITER_ITERATIONS:-200000}
PER_CLASS=${LIMITER_PER_CLASS:-12}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SECTION="## Limiter"

log() { printf '%s limiter: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -z "${LIMITER_BIN:-}" ]; then
	log "building bench_limiter in $BUILD_DIR"
	cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$BUILD_DIR" -j"$(nproc)" --target bench_limiter >/dev/null
fi
BIN=${LIMITER_BIN:-$BUILD_DIR/bench/bench_limiter}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "running: $SERIES series, $ITERATIONS decisions per shape, $PER_CLASS selectors per class per metric"
TABLE=$("$BIN" --series "$SERIES" --iterations "$ITERATIONS" --per-class "$PER_CLASS")

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo " (working tree has uncommitted changes)" || true)
NOTES=$(cat <<EOF
- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1); commit $COMMIT$DIRTY; load average at start $LOAD_START; binary $BIN. One thread; figures are per decision on the event loop.
- Data: metrics of 10, 32, 100, ... 100,000 series (cycled up to $SERIES series), each series with instance (20 series per address), job (6 values, 50/20/12/8/6/4 %), namespace (2-25 values), code (5 values, 75/10/8/5/2 %) and pod (unique per series). Every series learned once with est_learn_series, tenant "bench"; no recall entries (each selector is new).
- Decision: one timed iteration = proto_request_decode of the snappy body + est_estimate + limiter_check_structure + limiter_check_estimate (config with two rules, one regex-based) + proto_request_free, after 10,000 warm-up iterations. Timer: CLOCK_MONOTONIC around each iteration.
- Accuracy: per metric and class, selectors with values drawn from the metric's own series; the true count is exact (every generated series matched with the same PCRE2 rules). Ratio = estimate / true, both floored at 1. Labels are independent of each other in this data (except instance and pod, never combined), which is what the estimator's product of shares assumes; correlated labels would do worse.
EOF
)

printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	write_section "$RESULTS" "$SECTION" "bench/limiter.sh" "$TABLE" "$NOTES"
	log "wrote the $SECTION section of $RESULTS"
fi
