#!/usr/bin/env bash
# bench/report.sh: one table comparing, in the same run, the client talking to the store directly,
# through promguard and through nginx (Debian's, proxy_pass with keep-alive upstreams): small
# SAMPLES requests (requests/s, p50, p99), a 1 GiB STREAMED_XOR_CHUNKS stream (GB/s), each proxy's
# peak RSS, and the admission, pool and storm figures of bench/limiter.sh, pool.sh and storm.sh.
# Prints the table and writes it as the "## Report: direct vs promguard vs nginx" section of
# bench/RESULTS.md (the other sections are kept). See bench/README.md, "Report".
#
# Environment (all optional):
#   BUILD_DIR=/tmp/build-bench          CMake build directory (RelWithDebInfo)
#   PROMGUARD_BIN=...                   promguard binary to measure (default: the one built here)
#   NGINX_BIN=nginx                     nginx binary (Debian's nginx-light)
#   REPORT_DURATION=8 REPORT_CONNS=32   small requests: measured seconds per run (after 1 s of
#                                       warmup), keep-alive connections
#   REPORT_ROUNDS=3                     small-request rounds per side, sides interleaved (median)
#   REPORT_STREAM_MIB=1024              size of the big stream (MiB, a multiple of 64)
#   REPORT_STREAM_ROUNDS=3              stream rounds per side, interleaved (best)
#   REPORT_NGINX_AUTO=1                 also measure nginx with worker_processes auto (0: skip)
#   REPORT_NGINX_STREAM_BUFFER=1m       nginx proxy_buffer_size for the stream (proxy_buffering off)
#   REPORT_PIN=split                    split: the client on CPU 0, the store and the proxy on CPU 1
#                                       (taskset; the same for every row); none: no pinning (what
#                                       run.sh does; placement then varies from run to run)
#   REPORT_QUIET=0.3 REPORT_QUIET_BUDGET=90
#                                       before each run, wait while processes this script did not
#                                       start use more than REPORT_QUIET cores (sampled over 1 s),
#                                       at most REPORT_QUIET_BUDGET seconds in all (0: never wait)
#   REPORT_SUBBENCH=quote               quote: take the admission, pool and storm figures from
#                                       their sections of RESULTS.md (with the date measured);
#                                       run: run limiter.sh, pool.sh and storm.sh now, at small size
#   BENCH_RESULTS=bench/RESULTS.md      where the section goes ("" to skip writing it)
# Every process started here is killed by its pid on exit. All traffic stays on 127.0.0.1.
# About 3 minutes with the defaults (3 rounds x 4 sides x 9 s of small requests, then the streams)
# on a quiet machine; up to REPORT_QUIET_BUDGET more when other work is running.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/build-bench}
NGINX=${NGINX_BIN:-nginx}
DUR=${REPORT_DURATION:-8}
CONNS=${REPORT_CONNS:-32}
ROUNDS=${REPORT_ROUNDS:-3}
STREAM_MIB=${REPORT_STREAM_MIB:-1024}
SROUNDS=${REPORT_STREAM_ROUNDS:-3}
NGINX_AUTO=${REPORT_NGINX_AUTO:-1}
NG_STREAM_BUF=${REPORT_NGINX_STREAM_BUFFER:-1m}
PIN=${REPORT_PIN:-split}
[ "$PIN" = split ] && [ "$(nproc)" -lt 2 ] && PIN=none
QUIET=${REPORT_QUIET:-0.3}
QUIET_BUDGET=${REPORT_QUIET_BUDGET:-90}
QUIET_WAITED=0
SUBBENCH=${REPORT_SUBBENCH:-quote}
RESULTS=${BENCH_RESULTS-$ROOT/bench/RESULTS.md}
SECTION="## Report: direct vs promguard vs nginx"
SEED_MIB=64   # frames saved from the fake store and replayed by replaysrv
STALL_S=15    # a stream that sends nothing for this long has stalled
HZ=$(getconf CLK_TCK)

log() { printf '%s report: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

command -v "$NGINX" >/dev/null || die "no $NGINX: install nginx-light (scripts/deps.sh)"
[ $((STREAM_MIB % SEED_MIB)) = 0 ] || die "REPORT_STREAM_MIB must be a multiple of $SEED_MIB"
case $PIN in
none) PIN_CLIENT=() PIN_SERVER=() ;;
split)
	[ "$(nproc)" -ge 2 ] || die "REPORT_PIN=split needs 2 CPUs"
	PIN_CLIENT=(taskset -c 0) PIN_SERVER=(taskset -c 1) ;;
*) die "REPORT_PIN must be none or split" ;;
esac

bench_build
bench_tmp report

# nginx in front of upstream port $2 with <workers> ($3: 1 or auto) and <mode> ($4: small or
# stream); sets PORT_<name> and PID_<name> (the workers' pids, space-separated).
start_nginx() {
	local name=$1 up=$2 workers=$3 mode=$4 dir=$TMP/$1 port user="" buffering
	port=$(free_port)
	mkdir -p "$dir/logs" "$dir/tmp"
	# run as the current user; as root nginx would switch its workers to nobody
	[ "$(id -u)" = 0 ] && user="user $(id -un) $(id -gn);"
	if [ "$mode" = small ]; then
		# SAMPLES answers are small (806 B here): buffer them whole in memory, never on disk
		buffering="proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_busy_buffers_size 16k;
      proxy_max_temp_file_size 0;"
	else
		# a stream is relayed as it arrives through one buffer of $NG_STREAM_BUF (promguard reads
		# up to 256 KiB per wakeup and pauses the store past 256 KiB queued for the client)
		buffering="proxy_buffering off; proxy_buffer_size $NG_STREAM_BUF; proxy_buffers 4 $NG_STREAM_BUF;
      proxy_busy_buffers_size $NG_STREAM_BUF;"
		[ "$mode" = stream-buffered ] &&
			buffering="proxy_buffering on; proxy_buffer_size 1m; proxy_buffers 16 1m; proxy_busy_buffers_size 2m;
      proxy_max_temp_file_size 0;"
	fi
	cat >"$dir/nginx.conf" <<EOF
$user
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream store {
    server 127.0.0.1:$up;
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$port;
    client_body_buffer_size 64k;
    location / {
      proxy_pass http://store;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 600s;
      $buffering
    }
  }
}
EOF
	"${PIN_SERVER[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/out" 2>&1 &
	local master=$!
	PIDS+=($master)
	wait_port "$port" || die "nginx ($name) did not start: $(cat "$dir/out" "$dir/logs/error.log" 2>/dev/null)"
	local w=""
	for _ in $(seq 20); do
		w=$(pgrep -P "$master" | tr '\n' ' ')
		[ "$(wc -w <<<"$w")" -ge "$([ "$workers" = auto ] && nproc || echo "$workers")" ] && break
		sleep 0.1
	done
	[ -n "$w" ] || die "nginx ($name): no worker process"
	for p in $w; do PIDS+=("$p"); done
	printf -v "PID_$name" '%s' "$w"
	printf -v "PORT_$name" '%s' "$port"
}

ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $s; }
hwm_kb() { local s=0 p; for p in "$@"; do s=$((s + $(awk '/VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $s; }
# busy time of the whole machine (user, nice, system, irq, softirq, steal): a tick spent in
# softirq is counted there and in the stime of the process it interrupted, so this matches the
# sum of the processes' own times when nothing else runs
machine_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
val() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
calc() { awk "BEGIN{printf \"%.${2:-2}f\", $1}"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
maxof() { tr ' ' '\n' | grep . | sort -g | tail -1; }

# Cores used over the last second by processes this script did not start.
other_now() {
	local m0 m1 o0 o1
	m0=$(machine_busy); o0=$(ticks "${PIDS[@]}")
	sleep 1
	m1=$(machine_busy); o1=$(ticks "${PIDS[@]}")
	calc "(($m1 - $m0) - ($o1 - $o0)) / $HZ" 2
}

# Wait (within the budget) until the rest of the machine is quiet: other work on 2 cores skews
# every figure, and more so the ones of whichever side happened to run alongside it.
wait_quiet() {
	local o
	[ "$QUIET_BUDGET" -gt 0 ] || return 0
	while [ "$QUIET_WAITED" -lt "$QUIET_BUDGET" ]; do
		o=$(other_now)
		awk -v o="$o" -v q="$QUIET" 'BEGIN{exit !(o <= q)}' && return 0
		QUIET_WAITED=$((QUIET_WAITED + 1))
		[ $((QUIET_WAITED % 10)) = 1 ] && log "  other processes use $o cores: waiting (${QUIET_WAITED}s of ${QUIET_BUDGET}s)"
	done
	return 0
}

# run_load PROXY_PIDS -- loadgen args: sets RES (the RESULT line), CPU_PROXY (seconds used by the
# given pids), CPU_OTHER (cores used by processes this script did not start, averaged), WALL.
run_load() {
	local watch=$1 p0 p1 own0=0 own1=0 m0 m1 t0 t1 out lg
	shift 2
	wait_quiet
	p0=$(ticks $watch)
	own0=$(ticks "${PIDS[@]}")
	m0=$(machine_busy)
	t0=$(date +%s.%N)
	out=$("${PIN_CLIENT[@]}" /usr/bin/time -f 'LGCPU %U %S' "$LOADGEN" -q "$@" 2>&1 || true)
	t1=$(date +%s.%N)
	m1=$(machine_busy)
	own1=$(ticks "${PIDS[@]}")
	p1=$(ticks $watch)
	WALL=$(calc "$t1 - $t0" 3)
	lg=$(awk '/^LGCPU/{print $2+$3}' <<<"$out")
	CPU_PROXY=$(calc "($p1 - $p0) / $HZ" 2)
	CPU_OTHER=$(calc "((($m1 - $m0) - ($own1 - $own0)) / $HZ - ${lg:-0}) / $WALL" 2)
	RES=$(grep '^RESULT' <<<"$out" || echo "RESULT mode=failed errors=1")
}

# --- start everything ----------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at start: $LOAD_START (other work on this machine skews every figure)"
start_listener fakestore "$FAKESTORE" --listen 127.0.0.1:0
FS_PORT=$PORT
"$MKREQ" -o "$TMP/small.req" __name__=fake series=10 samples=10
"$MKREQ" --streamed -o "$TMP/stream.req" __name__=fake series="$STREAM_MIB" samples=1048576
"$MKREQ" --streamed -o "$TMP/seed.req" __name__=fake series="$SEED_MIB" samples=1048576
log "saving a ${SEED_MIB} MiB stream from the fake store for replaysrv"
SEED=$("$LOADGEN" -q --url "http://127.0.0.1:$FS_PORT/api/v1/read" --body "$TMP/seed.req" --stream --check \
	--timeout "$STALL_S" --save "$TMP/seed.bin" || true)
[ "$(val "$SEED" errors)" = 0 ] || die "fake store stream failed: $SEED"
start_listener replaysrv "$REPLAY" --listen 127.0.0.1:0 --body "$TMP/seed.bin" --mode stream \
	--repeat $((STREAM_MIB / SEED_MIB))
RS_PORT=$PORT
STREAM_BYTES_WANT=$(($(stat -c %s "$TMP/seed.bin") * (STREAM_MIB / SEED_MIB)))

start_promguard pg_small "$FS_PORT"
start_promguard pg_stream "$RS_PORT"
start_nginx ng1_small "$FS_PORT" 1 small
start_nginx ng1_stream "$RS_PORT" 1 stream
start_nginx ng1_buffered "$RS_PORT" 1 stream-buffered
SIDES="direct pg ng1"
if [ "$NGINX_AUTO" = 1 ]; then
	start_nginx nga_small "$FS_PORT" auto small
	start_nginx nga_stream "$RS_PORT" auto stream
	SIDES="$SIDES nga"
fi
NGA_WORKERS=$(wc -w <<<"${PID_nga_small:-}")

# per side: the port and the proxy's pids for each phase
small_port() { case $1 in direct) echo "$FS_PORT" ;; pg) echo "$PORT_pg_small" ;; ng1) echo "$PORT_ng1_small" ;; nga) echo "$PORT_nga_small" ;; esac; }
small_pids() { case $1 in direct) echo "" ;; pg) echo "$PID_pg_small" ;; ng1) echo "$PID_ng1_small" ;; nga) echo "$PID_nga_small" ;; esac; }
stream_port() { case $1 in direct) echo "$RS_PORT" ;; pg) echo "$PORT_pg_stream" ;; ng1) echo "$PORT_ng1_stream" ;; ngb) echo "$PORT_ng1_buffered" ;; nga) echo "$PORT_nga_stream" ;; esac; }
stream_pids() { case $1 in direct) echo "" ;; pg) echo "$PID_pg_stream" ;; ng1) echo "$PID_ng1_stream" ;; ngb) echo "$PID_ng1_buffered" ;; nga) echo "$PID_nga_stream" ;; esac; }

# --- 1. small SAMPLES requests -------------------------------------------------------------
declare -A RPS P50 P99 ERR CPUREQ OTHER
for s in $SIDES; do RPS[$s]="" P50[$s]="" P99[$s]="" ERR[$s]=0 CPUREQ[$s]="" OTHER[$s]=""; done
for r in $(seq "$ROUNDS"); do
	for s in $SIDES; do
		log "small round $r/$ROUNDS: $s, $CONNS connections, ${DUR}s"
		run_load "$(small_pids "$s")" -- --url "http://127.0.0.1:$(small_port "$s")/api/v1/read" \
			--body "$TMP/small.req" -c "$CONNS" -d "$DUR" -w 1
		RPS[$s]="${RPS[$s]} $(val "$RES" rps)"
		P50[$s]="${P50[$s]} $(val "$RES" p50_ms)"
		P99[$s]="${P99[$s]} $(val "$RES" p99_ms)"
		ERR[$s]=$((ERR[$s] + $(val "$RES" errors)))
		OTHER[$s]="${OTHER[$s]} $CPU_OTHER"
		# proxy CPU over warmup + window, per request completed in the window (close enough)
		[ "$s" != direct ] && CPUREQ[$s]="${CPUREQ[$s]} $(calc "$CPU_PROXY * 1e6 / ($(val "$RES" requests) * ($DUR + 1) / $DUR + 1)" 1)"
		log "  $RES"
	done
done
HWM_SMALL_pg=$(hwm_kb $PID_pg_small)
HWM_SMALL_ng1=$(hwm_kb $PID_ng1_small)
[ "$NGINX_AUTO" = 1 ] && HWM_SMALL_nga=$(hwm_kb $PID_nga_small)

# --- 2. the 1 GiB stream ---------------------------------------------------------------------
STREAM_SIDES="$SIDES ngb"
declare -A GBS SCPU SOTHER SBAD
for s in $STREAM_SIDES; do GBS[$s]="" SCPU[$s]="" SOTHER[$s]="" SBAD[$s]=0; done
for r in $(seq "$SROUNDS"); do
	for s in $STREAM_SIDES; do
		log "stream round $r/$SROUNDS: $s, ${STREAM_MIB} MiB"
		run_load "$(stream_pids "$s")" -- --url "http://127.0.0.1:$(stream_port "$s")/api/v1/read" \
			--body "$TMP/stream.req" --stream --timeout "$STALL_S"
		SOTHER[$s]="${SOTHER[$s]} $CPU_OTHER"
		if [ "$(val "$RES" body_bytes)" != "$STREAM_BYTES_WANT" ] || [ "$(val "$RES" errors)" != 0 ]; then
			SBAD[$s]=$((SBAD[$s] + 1))
			log "  $s: incomplete stream: $RES"
			continue
		fi
		GBS[$s]="${GBS[$s]} $(calc "$(val "$RES" bytes_per_s) / 1e9" 3)"
		[ "$s" != direct ] && SCPU[$s]="${SCPU[$s]} $(calc "$CPU_PROXY / ($STREAM_BYTES_WANT / 1e9)" 2)"
		log "  $RES"
	done
done
HWM_STREAM_pg=$(hwm_kb $PID_pg_stream)
HWM_STREAM_ng1=$(hwm_kb $PID_ng1_stream)
HWM_STREAM_ngb=$(hwm_kb $PID_ng1_buffered)
[ "$NGINX_AUTO" = 1 ] && HWM_STREAM_nga=$(hwm_kb $PID_nga_stream)

# --- 3. admission, pool and storm figures ------------------------------------------------------
# sub_row FILE-OR-TEXT SECTION ROW-PREFIX: the figure column of the first row starting with the prefix
sub_row() { awk -v s="$2" -v p="$3" '$0 == s {in_s=1; next} in_s && /^## / {in_s=0} in_s && index($0, p) == 1 {split($0, f, "|"); gsub(/^ +| +$/, "", f[3]); print f[3]; exit}' "$1"; }
sub_verdict() { awk -v s="$2" -v p="$3" '$0 == s {in_s=1; next} in_s && /^## / {in_s=0} in_s && index($0, p) == 1 {n=split($0, f, "|"); gsub(/^ +| +$/, "", f[n-1]); print f[n-1]; exit}' "$1"; }
sub_date() { awk -v s="$2" '$0 == s {in_s=1; next} in_s && /^## / {in_s=0} in_s && /^- Date / {print $3; exit}' "$1" | tr -d ';'; }
if [ "$SUBBENCH" = run ]; then
	log "running limiter.sh, pool.sh and storm.sh at small size (their sections of RESULTS.md are not touched)"
	{
		echo "## Limiter"
		BENCH_RESULTS="" BUILD_DIR=$BUILD_DIR LIMITER_SERIES=100000 LIMITER_ITERATIONS=50000 LIMITER_PER_CLASS=1 \
			"$ROOT/bench/limiter.sh" 2>/dev/null || echo "| decision: decode + estimate + checks | limiter.sh failed | | |"
		echo "## Pool"
		BENCH_RESULTS="" BUILD_DIR=$BUILD_DIR POOL_STREAMS=200 POOL_BATCHES=300 \
			"$ROOT/bench/pool.sh" 2>/dev/null || echo "| Get/Put pair, small (4 KiB), median | pool.sh failed | | |"
		echo "## Storm"
		BENCH_RESULTS="" BUILD_DIR=$BUILD_DIR STREAMS=200 LIMIT=64MiB \
			"$ROOT/bench/storm.sh" 2>/dev/null || echo "| promguard peak RSS (VmHWM) | storm.sh failed | | |"
	} >"$TMP/sub.md"
	SUBSRC=$TMP/sub.md
	SUBWHEN="measured now, small size: limiter 100,000 series; pool 200-stream storm; storm 200 streams at 64 MiB"
	D_LIM="now" D_POOL="now" D_STORM="now"
	STORM_LABEL="storm.sh, 200 streams, pool.memory_limit 64 MiB"
else
	SUBSRC=$ROOT/bench/RESULTS.md
	[ -f "$SUBSRC" ] || SUBSRC=/dev/null
	D_LIM=$(sub_date "$SUBSRC" "## Limiter") D_POOL=$(sub_date "$SUBSRC" "## Pool") D_STORM=$(sub_date "$SUBSRC" "## Storm")
	SUBWHEN="quoted from their sections of bench/RESULTS.md, not measured in this run (dates in the rows)"
	STORM_LABEL="storm.sh, $(awk '$0 == "## Storm" {in_s=1; next} in_s && /^## / {in_s=0} in_s && /^\| storm: / {sub(/^\| storm: /, ""); sub(/ \|.*/, ""); print; exit}' "$SUBSRC")"
fi
LIM_FIG=$(sub_row "$SUBSRC" "## Limiter" "| decision: decode + estimate + checks")
LIM_OK=$(sub_verdict "$SUBSRC" "## Limiter" "| decision: decode + estimate + checks")
POOL_S=$(sub_row "$SUBSRC" "## Pool" "| Get/Put pair, small (4 KiB), median")
POOL_G=$(sub_row "$SUBSRC" "## Pool" "| Get/Put pair, segment (64 KiB), median")
POOL_OK=$(sub_verdict "$SUBSRC" "## Pool" "| Get/Put pair, small (4 KiB), median")
STORM_RSS=$(sub_row "$SUBSRC" "## Storm" "| promguard peak RSS (VmHWM)")
STORM_OK=$(sub_verdict "$SUBSRC" "## Storm" "| promguard peak RSS (VmHWM)")
STORM_ANS=$(sub_row "$SUBSRC" "## Storm" "| responses")

# --- the table -------------------------------------------------------------------------------
mib() { calc "$1 / 1024" 1; }
met() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN{ok = op == ">=" ? a >= b : a <= b; print ok ? "met" : "MISSED"}'; }
for s in $SIDES; do
	eval "m_rps_$s=$(median <<<"${RPS[$s]}")"
	eval "m_p50_$s=$(median <<<"${P50[$s]}")"
	eval "m_p99_$s=$(median <<<"${P99[$s]}")"
done
for s in $STREAM_SIDES; do eval "b_gbs_$s=$(maxof <<<"${GBS[$s]:-0}")"; done
# the CPU per GB of the best round is not tracked separately: report the median over rounds
cpu_gb() { [ -n "${SCPU[$1]}" ] && echo "$(median <<<"${SCPU[$1]}") s" || echo "n/a"; }
cpu_req() { echo "$(median <<<"${CPUREQ[$1]}") µs"; }
f1() { calc "$1" 1; }
f3() { calc "$1" 3; }
gb() {
	if [ "${SBAD[$2]}" -gt 0 ] && [ -z "${GBS[$2]}" ]; then
		echo "FAILED (${SBAD[$2]} of ${SROUNDS} streams incomplete)"
	else
		echo "$(f3 "$1") GB/s$([ "${SBAD[$2]}" -gt 0 ] && echo " (${SBAD[$2]} other streams incomplete)")"
	fi
}
rps_ratio=$(calc "$m_rps_pg / ($m_rps_ng1 > 0 ? $m_rps_ng1 : 1)" 3)
rps_vs_direct=$(calc "$m_rps_pg / ($m_rps_direct > 0 ? $m_rps_direct : 1)" 3)
ng_vs_direct=$(calc "$m_rps_ng1 / ($m_rps_direct > 0 ? $m_rps_direct : 1)" 3)
signed() { awk "BEGIN{printf \"%+.3f\", $1}"; }
add50_pg=$(signed "$m_p50_pg - $m_p50_direct") add50_ng=$(signed "$m_p50_ng1 - $m_p50_direct")
add99_pg=$(signed "$m_p99_pg - $m_p99_direct") add99_ng=$(signed "$m_p99_ng1 - $m_p99_direct")
stream_ratio=$(calc "$b_gbs_pg / ($b_gbs_ng1 > 0 ? $b_gbs_ng1 : 1)" 3)
stream_ratio_b=$(calc "$b_gbs_pg / ($b_gbs_ngb > 0 ? $b_gbs_ngb : 1)" 3)
ok_rps=$(met "$rps_ratio" 1 ">=")
ok_stream=$(met "$stream_ratio" 0.9 ">=")
[ "${SBAD[pg]}" -gt 0 ] && ok_stream="MISSED (${SBAD[pg]} stream(s) failed)"
ok_p99=$(met "$add99_pg" 1 "<=")
[ "${ERR[pg]}" -gt 0 ] && ok_rps="$ok_rps (but ${ERR[pg]} errors)"
if [ "$NGINX_AUTO" = 1 ]; then
	A_HEAD=" nginx, auto ($NGA_WORKERS workers) |"
	A_SEP="---|"
	a_rps=" $(f1 "$m_rps_nga") |" a_p50=" $(f3 "$m_p50_nga") |" a_p99=" $(f3 "$m_p99_nga") |" a_err=" ${ERR[nga]} |"
	a_cpu=" $(cpu_req nga) |" a_gbs=" $(gb "$b_gbs_nga" nga) |" a_cgb=" $(cpu_gb nga) |"
	a_hs=" $(mib "$HWM_SMALL_nga") MiB (sum of workers) |" a_hst=" $(mib "$HWM_STREAM_nga") MiB (sum of workers) |"
	a_blank=" |"
else
	A_HEAD="" A_SEP="" a_rps="" a_p50="" a_p99="" a_err="" a_cpu="" a_gbs="" a_cgb="" a_hs="" a_hst="" a_blank=""
fi

TABLE=$(cat <<EOF
| benchmark | direct to store | promguard | nginx, 1 worker |${A_HEAD} promguard vs nginx (1 worker) | target | |
|---|---|---|---|${A_SEP}---|---|---|
| small SAMPLES, ${CONNS} conns, ${DUR} s x ${ROUNDS} rounds: requests/s (median) | $(f1 "$m_rps_direct") | $(f1 "$m_rps_pg") | $(f1 "$m_rps_ng1") |${a_rps} ${rps_ratio}x (vs direct: promguard ${rps_vs_direct}, nginx ${ng_vs_direct}) | promguard >= nginx | ${ok_rps} |
| small SAMPLES: p50 latency, ms (median) | $(f3 "$m_p50_direct") | $(f3 "$m_p50_pg") | $(f3 "$m_p50_ng1") |${a_p50} added over direct: promguard ${add50_pg}, nginx ${add50_ng} | | |
| small SAMPLES: p99 latency, ms (median) | $(f3 "$m_p99_direct") | $(f3 "$m_p99_pg") | $(f3 "$m_p99_ng1") |${a_p99} added over direct: promguard ${add99_pg}, nginx ${add99_ng} | promguard <= +1 ms | ${ok_p99} |
| small SAMPLES: errors (all rounds) | ${ERR[direct]} | ${ERR[pg]} | ${ERR[ng1]} |${a_err} | 0 | |
| small SAMPLES: proxy CPU per request (median) | | $(cpu_req pg) | $(cpu_req ng1) |${a_cpu} | | |
| ${STREAM_MIB} MiB STREAMED_XOR_CHUNKS (replaysrv), best of ${SROUNDS}: GB/s | $(gb "$b_gbs_direct" direct) | $(gb "$b_gbs_pg" pg) | $(gb "$b_gbs_ng1" ng1) (proxy_buffering off, ${NG_STREAM_BUF} buffer) |${a_gbs} ${stream_ratio}x | promguard >= 0.9x nginx | ${ok_stream} |
| stream, for information: nginx 1 worker with proxy_buffering on, 16 x 1 MiB | | | $(gb "$b_gbs_ngb" ngb) |${a_blank} promguard ${stream_ratio_b}x | | |
| stream: proxy CPU per GB relayed (median) | | $(cpu_gb pg) | $(cpu_gb ng1) (buffered: $(cpu_gb ngb)) |${a_cgb} | | |
| peak RSS (VmHWM), small-request phase | | $(mib "$HWM_SMALL_pg") MiB | $(mib "$HWM_SMALL_ng1") MiB (worker) |${a_hs} | | |
| peak RSS (VmHWM), stream phase | | $(mib "$HWM_STREAM_pg") MiB | $(mib "$HWM_STREAM_ng1") MiB (worker; buffered: $(mib "$HWM_STREAM_ngb") MiB) |${a_hst} | | |
| admission decision, decode + estimate + checks, 1 query (limiter.sh, ${D_LIM:-never run}) | | ${LIM_FIG:-n/a} | |${a_blank} | median <= 10 µs | ${LIM_OK:-} |
| pool Get/Put pair, median, small / segment (pool.sh, ${D_POOL:-never run}) | | ${POOL_S:-n/a} / ${POOL_G:-n/a} | |${a_blank} | <= 50 ns | ${POOL_OK:-} |
| storm RSS bound (${STORM_LABEL}, ${D_STORM:-never run}) | | ${STORM_RSS:-n/a}; ${STORM_ANS:-} | |${a_blank} | growth within the limit | ${STORM_OK:-} |
EOF
)

spread() { tr ' ' '\n' | grep . | sort -g | awk 'NR==1{lo=$1} {hi=$1} END{printf "%s-%s", lo, hi}'; }
other() { local o; o=$(maxof <<<"$1"); calc "${o:-0}" 1; }
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo " (working tree has uncommitted changes)" || true)
NOTES=$(cat <<EOF
- Date $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); commit $COMMIT$DIRTY; promguard $PG; $("$NGINX" -v 2>&1 | sed 's/^nginx version: //').
- The machine has $(nproc) cores and the client (loadgen), the store and the proxy all compete for them: a proxy's CPU is taken from the store and the client, so the ratios measure CPU cost as much as latency. Pinning: $([ "$PIN" = split ] && echo "the client on CPU 0, the store and the proxy on CPU 1 (taskset), the same for every row, so each proxy's CPU is taken from the store in the same way and the rounds agree within a few percent (unpinned, where the scheduler put the three processes moved nginx's median between 10,000 and 17,500 requests/s from one run to the next); the direct row's store has CPU 1 to itself, and nginx's auto workers share CPU 1 too (REPORT_PIN=none: no pinning)" || echo "none (REPORT_PIN=split, the default, puts the client on CPU 0, the store and the proxy on CPU 1)").
- Load average at start: $LOAD_START. Waited ${QUIET_WAITED} s in all (of REPORT_QUIET_BUDGET=${QUIET_BUDGET}) for other processes to use at most ${QUIET} cores before a run. CPU used by processes this script did not start, most in any run (cores): small direct $(other "${OTHER[direct]}"), promguard $(other "${OTHER[pg]}"), nginx $(other "${OTHER[ng1]}")$([ "$NGINX_AUTO" = 1 ] && echo ", nginx auto $(other "${OTHER[nga]}")"); stream direct $(other "${SOTHER[direct]}"), promguard $(other "${SOTHER[pg]}"), nginx $(other "${SOTHER[ng1]}"). Anything above 0 means the figures are low by that share of the machine.
- Small SAMPLES: each side runs ${ROUNDS} times for 1 s warmup + ${DUR} s, sides interleaved (direct, promguard, nginx...), median of the rounds reported. Spread of requests/s over the rounds: direct $(spread <<<"${RPS[direct]}"), promguard $(spread <<<"${RPS[pg]}"), nginx $(spread <<<"${RPS[ng1]}"); p99 ms: direct $(spread <<<"${P99[direct]}"), promguard $(spread <<<"${P99[pg]}"), nginx $(spread <<<"${P99[ng1]}"). Request: $(wc -c <"$TMP/small.req") B snappy ReadRequest for \`fake{series="10",samples="10"}\`; the fake store answers 10 series x 10 samples (806 B, Content-Length).
- Stream: one request, one connection; bytes of body / (request sent to last byte). replaysrv replays ${SEED_MIB} MiB of frames saved from the fake store $((STREAM_MIB / SEED_MIB)) times, one HTTP chunk per 1 MiB frame. Best of ${SROUNDS} rounds per side, sides interleaved; all rounds (GB/s): promguard ${GBS[pg]:- none}, nginx ${GBS[ng1]:- none}, direct ${GBS[direct]:- none}.
- nginx: config generated per instance (worker_processes 1 or auto, an upstream block with keepalive 64, proxy_http_version 1.1, proxy_set_header Connection "", access_log off, keepalive_requests 1000000 both ways), run as $(id -un) with -p <tmp> -c <conf> -g 'daemon off;'. Small requests: proxy_buffering on, 8 x 16k buffers (the 806 B answer is buffered whole, never on disk). Stream: proxy_buffering off with a ${NG_STREAM_BUF} proxy_buffer_size (REPORT_NGINX_STREAM_BUFFER), the like-for-like row: promguard reads up to 256 KiB per wakeup and pauses the store when 256 KiB wait for the client; the "buffered" row holds up to 16 MiB per stream. nginx relays without looking at the bytes; promguard also checks every frame's CRC-32C and counts series.
- promguard: the bench config of run.sh (log_level warn, upstream.max_connections 64, limits.max_response_bytes 4GiB, everything else default: estimator.unknown probe, so the first request of the selector asks the store's series API and the rest are estimated from what was learned; the pool's default memory_limit). Peak RSS is VmHWM over the instance's life (one instance per phase), nginx's the worker's (master not counted).
- Admission, pool and storm rows: ${SUBWHEN}.
EOF
)

printf '\n%s\n\n%s\n' "$TABLE" "$NOTES"
if [ -n "$RESULTS" ]; then
	write_section "$RESULTS" "$SECTION" "bench/report.sh" "$TABLE" "$NOTES"
	log "wrote the $SECTION section of $RESULTS"
fi
