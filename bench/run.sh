#!/usr/bin/env bash
# bench/run.sh: build the benchmark tools, start the stores and promguard on free loopback ports,
# measure, print one table and write it to bench/RESULTS.md. See bench/README.md.
#
# Environment (all optional):
#   BUILD_DIR=/tmp/build-bench        CMake build directory (RelWithDebInfo)
#   PROMGUARD_BIN=...                 promguard binary to measure (default: the one built here)
#   BENCH_DURATION=10 BENCH_CONNS=32  small-response phase: seconds per side, connections
#   BENCH_STREAM_MIB=1024             size of the big stream in MiB (1 MiB per series)
#   BENCH_SLOW_BPS=40M BENCH_SLOW_MIB=1024   slow-reader rate (bytes/s, k/M suffix) and size
#   BENCH_ROUNDS=2                    stream rounds per side (best one is reported)
#   BENCH_RESULTS=bench/RESULTS.md    where the table goes ("" to skip writing it)
# Every process started here is killed on exit. All traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
DUR=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-32}
STREAM_MIB=${BENCH_STREAM_MIB:-1024}
SLOW_BPS=${BENCH_SLOW_BPS:-40M}
SLOW_MIB=${BENCH_SLOW_MIB:-1024}
ROUNDS=${BENCH_ROUNDS:-2}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SEED_MIB=64            # frames saved from the fake store and replayed by replaysrv
STALL_S=15             # a stream that sends nothing for this long has stalled
HZ=$(getconf CLK_TCK)

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PIN_SERVER=() # run.sh does not pin
bench_build
bench_tmp bench

restart_promguard() {
	local name=$1 up=$2 pidvar="PID_$1"
	kill -9 "${!pidvar}" 2>/dev/null || true
	wait "${!pidvar}" 2>/dev/null || true
	start_promguard "$name" "$up"
}

ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
val() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
f1() { awk -v x="$1" 'BEGIN{printf "%.1f", x}'; }
f2() { awk -v x="$1" 'BEGIN{printf "%.2f", x}'; }
f3() { awk -v x="$1" 'BEGIN{printf "%.3f", x}'; }
calc() { awk "BEGIN{printf \"%.${2:-2}f\", $1}"; }

# Run loadgen; sets RES to its RESULT line, CPU_PG (promguard seconds, if $PG_WATCH is set),
# CPU_OTHER (machine CPU seconds not used by our processes), WALL.
run_load() {
	local watch=${PG_WATCH:-} pg0=0 pg1 m0 m1 t0 t1 own0 own1 out
	[ -n "$watch" ] && pg0=$(ticks "$watch")
	own0=0
	for p in "${PIDS[@]}"; do own0=$((own0 + $(ticks "$p"))); done
	m0=$(machine_busy)
	t0=$(date +%s.%N)
	out=$(/usr/bin/time -f 'LGCPU %U %S' "$LOADGEN" -q "$@" 2>&1 || true)
	t1=$(date +%s.%N)
	m1=$(machine_busy)
	own1=0
	for p in "${PIDS[@]}"; do own1=$((own1 + $(ticks "$p"))); done
	WALL=$(calc "$t1 - $t0" 3)
	local lg
	lg=$(awk '/^LGCPU/{print $2+$3}' <<<"$out")
	CPU_PG=0
	if [ -n "$watch" ]; then
		pg1=$(ticks "$watch")
		CPU_PG=$(calc "($pg1 - $pg0) / $HZ" 2)
	fi
	# background: busy CPU time of the machine minus our stores, promguards and loadgen
	CPU_OTHER=$(calc "(($m1 - $m0) - ($own1 - $own0)) / $HZ - ${lg:-0}" 2)
	RES=$(grep '^RESULT' <<<"$out" || echo "RESULT mode=failed errors=1")
}

# --- start the stores ----------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at start: $LOAD_START (other work on this machine skews every figure)"
start_listener fakestore "$FAKESTORE" --listen 127.0.0.1:0
FS_PORT=$PORT
"$MKREQ" -o "$TMP/small.req" __name__=fake series=10 samples=10
"$MKREQ" --streamed -o "$TMP/stream.req" __name__=fake series="$STREAM_MIB" samples=1048576
"$MKREQ" --streamed -o "$TMP/slow.req" __name__=fake series="$SLOW_MIB" samples=1048576
"$MKREQ" --streamed -o "$TMP/seed.req" __name__=fake series="$SEED_MIB" samples=1048576
log "saving a ${SEED_MIB} MiB stream from the fake store for replaysrv"
SEED=$("$LOADGEN" -q --url "http://127.0.0.1:$FS_PORT/api/v1/read" --body "$TMP/seed.req" --stream --check \
	--timeout "$STALL_S" --save "$TMP/seed.bin" || true)
FS_STREAM_BPS=$(val "$SEED" bytes_per_s)
[ "$(val "$SEED" errors)" = 0 ] || { log "fake store stream failed: $SEED"; exit 1; }
start_listener replaysrv "$REPLAY" --listen 127.0.0.1:0 --body "$TMP/seed.bin" --mode stream \
	--repeat $((STREAM_MIB / SEED_MIB))
RS_PORT=$PORT
start_promguard fs "$FS_PORT"
start_promguard rs "$RS_PORT"

# --- 1. small SAMPLES responses ----------------------------------------------------------
log "small SAMPLES (10 series x 10 samples): $CONNS connections, ${DUR}s each side"
SMALL_ARGS=(--body "$TMP/small.req" -c "$CONNS" -d "$DUR" -w 1)
run_load --url "http://127.0.0.1:$FS_PORT/api/v1/read" "${SMALL_ARGS[@]}"
S_DIRECT=$RES
S_DIRECT_OTHER=$CPU_OTHER
PG_WATCH=$PID_fs run_load --url "http://127.0.0.1:$PORT_fs/api/v1/read" "${SMALL_ARGS[@]}"
S_PROXY=$RES
S_PROXY_OTHER=$CPU_OTHER
S_PROXY_CPU=$CPU_PG
log "direct: $S_DIRECT"
log "proxy:  $S_PROXY"

# --- 2. one big STREAMED_XOR_CHUNKS response -----------------------------------------------
STREAM_BYTES_WANT=$(( $(stat -c %s "$TMP/seed.bin") * (STREAM_MIB / SEED_MIB) ))
best_d=0 best_p=0 p_cpu=0 p_stall="" d_other="" p_other=""
for r in $(seq "$ROUNDS"); do
	log "stream round $r/$ROUNDS: ${STREAM_MIB} MiB direct from replaysrv, then through promguard"
	run_load --url "http://127.0.0.1:$RS_PORT/api/v1/read" --body "$TMP/stream.req" --stream --timeout "$STALL_S"
	out=$RES
	bps=$(val "$out" bytes_per_s)
	d_other="$d_other $(f1 "$(calc "$CPU_OTHER / $WALL" 2)")"
	if [ "$(val "$out" body_bytes)" = "$STREAM_BYTES_WANT" ] && awk -v a="$bps" -v b="$best_d" 'BEGIN{exit !(a>b)}'; then
		best_d=$bps
	fi
	PG_WATCH=$PID_rs run_load --url "http://127.0.0.1:$PORT_rs/api/v1/read" --body "$TMP/stream.req" \
		--stream --timeout "$STALL_S"
	out=$RES
	p_other="$p_other $(f1 "$(calc "$CPU_OTHER / $WALL" 2)")"
	got=$(val "$out" body_bytes)
	bps=$(val "$out" bytes_per_s)
	if [ "$got" != "$STREAM_BYTES_WANT" ]; then
		# stalled or cut: note how far it got and whether promguard is spinning, then restart it
		t0=$(ticks "$PID_rs"); sleep 1; t1=$(ticks "$PID_rs")
		p_stall="STALLED after ${got:-0} of $STREAM_BYTES_WANT bytes (promguard CPU $(( (t1 - t0) * 100 / HZ ))% while idle)"
		log "through promguard: $p_stall; restarting it"
		restart_promguard rs "$RS_PORT"
		continue
	fi
	if awk -v a="$bps" -v b="$best_p" 'BEGIN{exit !(a>b)}'; then
		best_p=$bps
		p_cpu=$(calc "$CPU_PG / ($got / 1e9)" 2)
	fi
done

# --- 3. the stream to a slow reader: promguard's memory ------------------------------------
log "slow reader: ${SLOW_MIB} MiB from the fake store through promguard at $SLOW_BPS B/s"
echo 5 >"/proc/$PID_fs/clear_refs" 2>/dev/null || true # reset VmHWM to the current RSS
hwm_before=$(awk '/VmHWM/{print $2}' "/proc/$PID_fs/status")
"$LOADGEN" -q --url "http://127.0.0.1:$PORT_fs/api/v1/read" --body "$TMP/slow.req" --stream --check \
	--slow-read "$SLOW_BPS" --timeout "$STALL_S" --max-time 120 >"$TMP/slow.out" 2>&1 &
LG=$!
PIDS+=($LG)
rss_max=0
while kill -0 "$LG" 2>/dev/null; do
	rss=$(awk '/VmRSS/{print $2}' "/proc/$PID_fs/status" 2>/dev/null || echo 0)
	[ "${rss:-0}" -gt "$rss_max" ] && rss_max=$rss
	sleep 0.2
done
wait "$LG" || true
SLOW=$(grep '^RESULT' "$TMP/slow.out" || echo "RESULT mode=failed errors=1")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$PID_fs/status" 2>/dev/null || echo 0)
log "slow: $SLOW"

# --- the table -----------------------------------------------------------------------------
mib() { calc "$1 / 1024" 1; }
gbs() { calc "$1 / 1e9" 3; }
pass() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN{ok = op == ">=" ? a >= b : a < b; print ok ? "met" : "MISSED"}'; }

d_rps=$(val "$S_DIRECT" rps); p_rps=$(val "$S_PROXY" rps)
ratio_rps=$(calc "$p_rps / ($d_rps > 0 ? $d_rps : 1)" 3)
add50=$(calc "$(val "$S_PROXY" p50_ms) - $(val "$S_DIRECT" p50_ms)" 3)
add99=$(calc "$(val "$S_PROXY" p99_ms) - $(val "$S_DIRECT" p99_ms)" 3)
pg_us_req=$(calc "$S_PROXY_CPU * 1e6 / ($(val "$S_PROXY" rps) * $DUR + 1)" 1)
if [ -n "$p_stall" ] && [ "$best_p" = 0 ]; then
	stream_ratio="n/a"
	stream_p="$p_stall"
	stream_ok=MISSED
else
	stream_ratio=$(calc "$best_p / ($best_d > 0 ? $best_d : 1)" 3)
	stream_p="$(gbs "$best_p") GB/s${p_stall:+ (another round $p_stall)}"
	stream_ok=$(pass "$best_p" 1e9 ">=")
fi
if [ "$(val "$SLOW" errors)" = 0 ]; then
	slow_ok=$(pass "$hwm" 65536 "<")
	slow_row="$(val "$SLOW" body_bytes) bytes in $(f1 "$(val "$SLOW" seconds)") s, $(val "$SLOW" frames) frames CRC-checked, no errors"
else
	slow_ok="MISSED (stream failed)"
	slow_row="FAILED after $(val "$SLOW" body_bytes) bytes: $(sed -n 's/^errors *//p' "$TMP/slow.out")"
fi
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo " (working tree has uncommitted changes)" || true)

TABLE=$(cat <<EOF
| benchmark | direct to store | through promguard | ratio / added | target | |
|---|---|---|---|---|---|
| small SAMPLES, ${CONNS} conns, ${DUR} s: requests/s | $(f1 "$d_rps") | $(f1 "$p_rps") | $ratio_rps | ratio >= 0.8 | $(pass "$ratio_rps" 0.8 ">=") |
| small SAMPLES: p50 latency (ms) | $(f3 "$(val "$S_DIRECT" p50_ms)") | $(f3 "$(val "$S_PROXY" p50_ms)") | +$add50 ms | | |
| small SAMPLES: p99 latency (ms) | $(f3 "$(val "$S_DIRECT" p99_ms)") | $(f3 "$(val "$S_PROXY" p99_ms)") | +$add99 ms | | |
| small SAMPLES: p99.9 latency (ms) | $(f3 "$(val "$S_DIRECT" p999_ms)") | $(f3 "$(val "$S_PROXY" p999_ms)") | | | |
| small SAMPLES: errors | $(val "$S_DIRECT" errors) | $(val "$S_PROXY" errors) | | 0 | |
| small SAMPLES: promguard CPU per request | | ${pg_us_req} µs | | | |
| ${STREAM_MIB} MiB STREAMED_XOR_CHUNKS (replaysrv), best of ${ROUNDS} | $(gbs "$best_d") GB/s | $stream_p | $stream_ratio | >= 1 GB/s through promguard | $stream_ok |
| stream: promguard CPU per GB relayed | | ${p_cpu} s | | | |
| slow reader, ${SLOW_MIB} MiB from fakestore at ${SLOW_BPS} B/s: promguard peak RSS | | $(mib "$hwm") MiB (VmHWM; sampled VmRSS max $(mib "$rss_max") MiB; at start $(mib "${hwm_before:-0}") MiB) | | < 64 MiB | $slow_ok |
| slow reader: delivered | | $slow_row | | | |
EOF
)
NOTES=$(cat <<EOF
- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); commit $COMMIT$DIRTY; promguard binary $PG.
- Load average at start: $LOAD_START. CPU used by other processes during the runs (cores): small direct $(f1 "$(calc "$S_DIRECT_OTHER / ($DUR + 1)" 2)"), small proxied $(f1 "$(calc "$S_PROXY_OTHER / ($DUR + 1)" 2)"), stream direct${d_other}, stream proxied${p_other}. Anything above 0 means the figures are low by that share of the machine.
- The fake store itself streams at $(gbs "${FS_STREAM_BPS:-0}") GB/s (${SEED_MIB} MiB, CRC-checked), too slow for the 1 GB/s question, so the big stream comes from replaysrv replaying those ${SEED_MIB} MiB $((STREAM_MIB / SEED_MIB)) times (one HTTP chunk per frame, as Prometheus 2.42 sends).
- Small SAMPLES body: $(wc -c <"$TMP/small.req") B request, fake store answers 10 series x 10 samples with Content-Length.
EOF
)

printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	# this script owns the top of the file; sections other scripts write ("## ...") are kept
	kept=""
	[ -f "$RESULTS" ] && kept=$(awk '/^## /{keep=1} keep' "$RESULTS")
	{
		echo "# promguard benchmark results"
		echo
		echo "Written by \`bench/run.sh\`; see bench/README.md for what each line measures."
		echo
		echo "$TABLE"
		echo
		echo "$NOTES"
		if [ -n "$kept" ]; then
			echo
			echo "$kept"
		fi
	} >"$RESULTS.tmp"
	mv "$RESULTS.tmp" "$RESULTS"
	log "wrote $RESULTS"
fi
