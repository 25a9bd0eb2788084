#!/usr/bin/env bash
# The M3 incident replayed at full size through the real binary: 1,000 concurrent streamed reads
# through promguard with pool.memory_limit 256MiB, from a fake store that answers as fast as it
# can. Reports promguard's peak RSS (VmHWM) against the limit, what every client got, and where
# the pool ended. Writes the "## Storm" section of bench/RESULTS.md. Loopback only; bounded in time.
#
#   BUILD_DIR=/tmp/build-bench   STREAMS=1000   SERIES=16 (x 64 KiB chunks per stream)
#   LIMIT=256MiB                 BENCH_RESULTS=bench/RESULTS.md ("" to skip writing)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
STREAMS=${STREAMS:-1000}
SERIES=${SERIES:-16}
LIMIT=${LIMIT:-256MiB}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SECTION="## Storm"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$TMP"; }
trap cleanup EXIT
log() { printf '%s storm: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status_of() { sed -n "s/^$2:\s*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }

ulimit -n 20000 # 1,000 clients and 1,000 store connections
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target promguard fakestore loadgen mkreq >/dev/null

"$BUILD_DIR/tests/fakestore" --listen 127.0.0.1:0 >"$TMP/fs.out" 2>"$TMP/fs.err" &
PIDS+=($!)
for _ in $(seq 50); do grep -q listening "$TMP/fs.out" 2>/dev/null && break; sleep 0.1; done
FS_PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$TMP/fs.out")
PG_PORT=$(free_port)
ADMIN_PORT=$(free_port)
cat >"$TMP/pg.yml" <<YAML
listen: 127.0.0.1:$PG_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
log_level: warn
upstream: {url: "http://127.0.0.1:$FS_PORT/api/v1/read", timeout: 10m, max_connections: $STREAMS}
limits: {max_inflight: $STREAMS, max_response_bytes: 4GiB}
estimator: {unknown: admit}
pool: {memory_limit: $LIMIT}
queue: {max_wait: 5m, max_queued: $STREAMS}
YAML
"$BUILD_DIR/promguard" -c "$TMP/pg.yml" 2>"$TMP/pg.err" &
PG=$!
PIDS+=($PG)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$ADMIN_PORT/-/healthy" >/dev/null && break; sleep 0.1; done
IDLE_KB=$(status_of "$PG" VmRSS)
"$BUILD_DIR/bench/mkreq" --streamed -o "$TMP/stream.req" __name__=fake series="$SERIES" samples=65536

log "$STREAMS concurrent streams of $SERIES x 64 KiB chunks through promguard, pool.memory_limit $LIMIT"
T0=$SECONDS
RES=$("$BUILD_DIR/bench/loadgen" -q --url "http://127.0.0.1:$PG_PORT/api/v1/read" --body "$TMP/stream.req" \
	-c "$STREAMS" -n "$STREAMS" --timeout 120 --max-time 300 | tail -1)
WALL=$((SECONDS - T0))
PEAK_KB=$(status_of "$PG" VmHWM)
METRICS=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
m() { awk -v n="$1" '$1 == n { print $2 }' <<<"$METRICS"; }
val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$RES"; }
LIMIT_B=$(m promguard_pool_limit_bytes)
PEAK_MIB=$(awk -v k="$PEAK_KB" 'BEGIN { printf "%.1f", k / 1024 }')
IDLE_MIB=$(awk -v k="$IDLE_KB" 'BEGIN { printf "%.1f", k / 1024 }')
LIMIT_MIB=$(awk -v b="$LIMIT_B" 'BEGIN { printf "%.0f", b / 1048576 }')
OVER=$(awk -v p="$PEAK_KB" -v l="$LIMIT_B" -v i="$IDLE_KB" 'BEGIN { printf "%.1f", (p - i) / 1024 - l / 1048576 }')
OK=$(awk -v p="$PEAK_KB" -v l="$LIMIT_B" -v i="$IDLE_KB" 'BEGIN { print ((p - i) * 1024 <= l) ? "met" : "MISSED" }')

TABLE=$(cat <<TABLE_EOF
| storm: $STREAMS concurrent streams ($SERIES x 64 KiB each), pool.memory_limit $LIMIT | figure | target | |
|---|---|---|---|
| promguard peak RSS (VmHWM) | $PEAK_MIB MiB (idle $IDLE_MIB MiB; growth $OVER MiB beyond the limit) | growth within the limit | $OK |
| responses | $(val requests) answered, $(val errors) errors, in ${WALL}s | all answered | $([ "$(val errors)" = 0 ] && echo met || echo MISSED) |
| pool peak in use | $(awk -v b="$(m promguard_pool_peak_in_use_bytes)" 'BEGIN { printf "%.1f MiB", b / 1048576 }') of $LIMIT_MIB MiB | <= limit | |
| pool after the storm: in use / reserved | $(m 'promguard_pool_bytes{state="in_use"}') / $(m promguard_pool_reserved_bytes) bytes | 0 / 0 | |
| pool waits (timeouts) | $(m promguard_pool_waits_total) ($(m promguard_pool_wait_timeouts_total)) | | |
TABLE_EOF
)
NOTES="- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs; commit $(git -C "$ROOT" rev-parse --short HEAD). Each stream reserves 2 MiB of the pool (its relay buffers) before the store is asked; past the limit, requests wait instead of allocating. The M3-style allocate-on-empty comparison at the same size is the \"## Pool\" section's storm (bench/pool.sh)."
printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	write_section "$RESULTS" "$SECTION" "bench/storm.sh" "$TABLE" "$NOTES"
	log "wrote the $SECTION section of $RESULTS"
fi
