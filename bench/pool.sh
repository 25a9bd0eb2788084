#!/usr/bin/env bash
# bench/pool.sh: build and run bench_pool (Get/Put cost per class, and the M3 storm replayed
# against promguard's pool and against an allocate-on-empty pool in M3's style), print its table
# with notes, and write them as the "## Pool" section of bench/RESULTS.md. Only that section is
# replaced (or appended when missing); the rest of the file is left as it is. See
# bench/bench_pool.c for what each line measures.
#
# Environment (all optional):
#   BUILD_DIR=/tmp/build-bench          CMake build directory (RelWithDebInfo)
#   POOL_BIN=...                        bench_pool binary to run (default: the one built here)
#   POOL_STREAMS=1000                   concurrent streams in the storm
#   POOL_HOLD=16                        segments a stream may hold for its slow client
#   POOL_SEGMENTS=64                    64 KiB segments per stream's response
#   POOL_DRAIN=250                      segments the slow consumer sends per tick, in all
#   POOL_LIMIT_MIB=256                  promguard pool.memory_limit
#   POOL_BATCHES=2000                   timed batches of 1,000 Get/Put pairs per shape
#   BENCH_RESULTS=bench/RESULTS.md      where the section goes ("" to skip writing it)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
STREAMS=${POOL_STREAMS:-1000}
HOLD=${POOL_HOLD:-16}
SEGMENTS=${POOL_SEGMENTS:-64}
DRAIN=${POOL_DRAIN:-250}
LIMIT_MIB=${POOL_LIMIT_MIB:-256}
BATCHES=${POOL_BATCHES:-2000}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SECTION="## Pool"

log() { printf '%s pool: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -z "${POOL_BIN:-}" ]; then
	log "building bench_pool in $BUILD_DIR"
	cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$BUILD_DIR" -j"$(nproc)" --target bench_pool >/dev/null
fi
BIN=${POOL_BIN:-$BUILD_DIR/bench/bench_pool}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "running: $STREAMS streams x $SEGMENTS segments, hold $HOLD, drain $DRAIN/tick, limit $LIMIT_MIB MiB"
# bench_pool exits 1 when a storm loses a segment or leaves memory in use: keep the table anyway.
STATUS=0
TABLE=$("$BIN" --streams "$STREAMS" --hold "$HOLD" --segments "$SEGMENTS" --drain "$DRAIN" \
	--limit-mib "$LIMIT_MIB" --batches "$BATCHES") || STATUS=$?
[ -n "$TABLE" ] || { log "bench_pool failed (exit $STATUS)"; exit 1; }

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo " (working tree has uncommitted changes)" || true)
NOTES=$(cat <<NOTES_EOF
- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); commit $COMMIT$DIRTY; load average at start $LOAD_START; binary $BIN; exit status $STATUS. One thread.
- Get/Put: one timed batch = 1,000 pool_get + pool_put pairs (one byte written per buffer) on a pool with memory_limit $LIMIT_MIB MiB at its high watermark, after 200 warm-up batches; median of $BATCHES batches, CLOCK_MONOTONIC around each batch. The M3-style pair is the bench's own non-inlined free-list pop/push, for scale.
- Storm: $STREAMS streams each answer $SEGMENTS segments of 64 KiB ($((STREAMS * SEGMENTS / 16)) MiB in all); each tick a fast store writes up to 4 segments per stream (every byte, so pages are resident) while the stream holds fewer than $HOLD for its client, then one slow consumer sends $DRAIN segments round robin and puts them back. promguard: memory_limit $LIMIT_MIB MiB, a refused get registers a relay-priority waiter whose callback retries the get. M3-style (bench/bench_pool.c only, after m3 src/x/pool/object.go): get on empty mallocs, a refill from 30% to 60% of its size runs once per tick ("background"), put on full frees; its size is the promguard pool's segment target at this limit, so both have the same watermarks. Each variant runs in its own forked child with VmHWM reset (/proc/self/clear_refs = 5), so the two peaks are separate; "RSS at start" is what the child inherited.
- Reading it: the M3-style peak grows with streams x hold (its free list is bounded, the bytes out are not); promguard's stays at memory_limit plus a fixed overhead (16-byte buffer headers and malloc's own per-chunk header, outside the limit: 0.05% of a segment, 0.8% of a small buffer; the bench's stream table). Both deliver at the consumer's pace (same tick count), so waiting costs no throughput here.
NOTES_EOF
)

printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	write_section "$RESULTS" "$SECTION" "bench/pool.sh" "$TABLE" "$NOTES"
	log "wrote the $SECTION section of $RESULTS"
fi
exit "$STATUS"
