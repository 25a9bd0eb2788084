#!/usr/bin/env bash
# bench/backoff.sh: build and run bench_backoff (client-go's incident replayed: keys that fail
# and are never forgotten, against promguard's bounded backoff table and against an unbounded
# per-key map; and the cost of a when()+forget pair), print its tables with notes, and write them
# as the "## Backoff state (client-go incident)" section of bench/RESULTS.md. Only that section
# is replaced (or appended when missing); the rest of the file is left as it is. See
# bench/bench_backoff.c for what each line measures.
#
# Environment (all optional):
#   BUILD_DIR=/tmp/build-bench          CMake build directory (RelWithDebInfo)
#   BACKOFF_BIN=...                     bench_backoff binary to run (default: the one built here)
#   BACKOFF_KEYS=1000000                distinct keys that fail once and are never forgotten
#   BACKOFF_MAX_KEYS=10000              promguard queue.max_tracked_keys
#   BACKOFF_BATCHES=2000                timed batches of 1,000 when()+forget pairs per shape
#   BENCH_RESULTS=bench/RESULTS.md      where the section goes ("" to skip writing it)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
KEYS=${BACKOFF_KEYS:-1000000}
MAX_KEYS=${BACKOFF_MAX_KEYS:-10000}
BATCHES=${BACKOFF_BATCHES:-2000}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SECTION="## Backoff state (client-go incident)"

log() { printf '%s backoff: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -z "${BACKOFF_BIN:-}" ]; then
	log "building bench_backoff in $BUILD_DIR"
	cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$BUILD_DIR" -j"$(nproc)" --target bench_backoff >/dev/null
fi
BIN=${BACKOFF_BIN:-$BUILD_DIR/bench/bench_backoff}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "running: $KEYS keys never forgotten, max_keys $MAX_KEYS, $BATCHES batches of pairs"
# bench_backoff exits 1 when the table ever tracked more than max_keys: keep the table anyway.
STATUS=0
TABLE=$("$BIN" --keys "$KEYS" --max-keys "$MAX_KEYS" --batches "$BATCHES") || STATUS=$?
[ -n "$TABLE" ] || { log "bench_backoff failed (exit $STATUS)"; exit 1; }

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo " (working tree has uncommitted changes)" || true)
NOTES=$(cat <<NOTES_EOF
- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); commit $COMMIT$DIRTY; load average at start $LOAD_START; binary $BIN; exit status $STATUS. One thread.
- Incident (client-go's ItemExponentialFailureRateLimiter, whose failures map kept every item a controller never called Forget on, until the controller ran out of memory): $KEYS distinct 64-bit keys (splitmix64 of a counter, like the proxy's XXH3 fingerprints) each fail once (backoff_when with a fresh hold, the clock 1 ms further each time) and no hold is ever given back. promguard: backoff.h with max_keys $MAX_KEYS and the other queue.* defaults (base_delay 50ms, max_delay 5s, retry_rate 100, retry_burst 1000, jitter 0.2); the table is allocated whole at backoff_new, so its memory is in the RSS at 0 keys. Unbounded: the bench's own key -> failures map (bench/bench_backoff.c only), open addressing with 16-byte slots doubled at 3/4 full, leaner than Go's map of interface{} keys, so its figures are a floor for client-go's. Each variant runs in its own forked child; VmRSS from /proc/self/status at each checkpoint.
- The bound is checked after every failure (backoff_get_stats), not only at the checkpoints; that read is inside the timed incident loop. "New key on a full table" is the incident's own path: each failure evicts the least recently failed key.
- Pairs: one timed batch = 1,000 backoff_when + backoff_forget pairs, after 100 warm-up batches; median of $BATCHES batches, CLOCK_MONOTONIC around each batch. "New key": max_keys - 1 other keys held, so the new key takes the free slot and its forget frees it (a request that deferred once and then ended). "Already held": the key is one of those held, so the pair takes and gives back a second hold.
- Reading it: promguard's RSS stays flat whatever the number of keys (tracked stays at max_keys; the rest are evictions, whose holds go stale); the unbounded map grows with every key never forgotten, by doublings.
NOTES_EOF
)

printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	write_section "$RESULTS" "$SECTION" "bench/backoff.sh" "$TABLE" "$NOTES"
	log "wrote the $SECTION section of $RESULTS"
fi
exit "$STATUS"
