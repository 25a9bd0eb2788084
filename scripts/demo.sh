#!/usr/bin/env bash
# promguard demo: a real Prometheus reads, through promguard, from a second Prometheus.
#
#   ./scripts/demo.sh        install deps, build, generate data, start everything, show it
#   ./scripts/demo.sh stop   stop the three processes
#
#   front Prometheus 127.0.0.1:19091 --remote_read--> promguard 127.0.0.1:9201 --> store 127.0.0.1:19090
#                                                     admin (/metrics) 127.0.0.1:9202
#
# Everything lives in _demo/ (data, configs, logs, pid files). Running it again stops the old
# processes first and starts over with fresh data.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/_demo

STORE_ADDR=127.0.0.1:19090
FRONT_ADDR=127.0.0.1:19091
PG_ADDR=127.0.0.1:9201
PG_ADMIN=127.0.0.1:9202

say() { printf '\n== %s\n' "$*"; }

# stop_one NAME: stop the process in _demo/NAME.pid if it is still the one we started.
stop_one() {
	local name=$1 pidfile=$DEMO/$1.pid pid
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$DEMO"; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "demo: $name (pid $pid) did not stop in 10s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		echo "demo: stopped $name (pid $pid)"
	fi
	rm -f "$pidfile"
}

stop_all() {
	# front first, so it stops sending reads; then promguard; then the store
	stop_one front
	stop_one promguard
	stop_one store
}

# port_busy HOST:PORT: true when something accepts connections there
port_busy() {
	(exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

# start NAME CMD...: run CMD in the background, log to _demo/NAME.log, pid to _demo/NAME.pid
start() {
	local name=$1
	shift
	nohup "$@" >"$DEMO/$name.log" 2>&1 </dev/null &
	echo $! >"$DEMO/$name.pid"
}

# wait_ready NAME URL: poll URL until 200 (60 s), failing early if NAME exited
wait_ready() {
	local name=$1 url=$2 pid
	pid=$(cat "$DEMO/$name.pid")
	for _ in $(seq 1 600); do
		if curl -sf -o /dev/null "$url"; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "demo: $name exited; last lines of $DEMO/$name.log:" >&2
			tail -n 20 "$DEMO/$name.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "demo: $name not ready at $url after 60s; see $DEMO/$name.log" >&2
	exit 1
}

if [ "${1:-start}" = stop ]; then
	stop_all
	exit 0
elif [ "${1:-start}" != start ]; then
	echo "usage: $0 [start|stop]" >&2
	exit 2
fi

mkdir -p "$DEMO"
stop_all
for addr in $STORE_ADDR $FRONT_ADDR $PG_ADDR $PG_ADMIN; do
	if port_busy "$addr"; then
		echo "demo: $addr is in use by another process; free it and run again" >&2
		exit 1
	fi
done

say "dependencies and build"
./scripts/deps.sh
BUILD_TARGET=promguard ./scripts/build.sh >"$DEMO/build.log" 2>&1 || {
	tail -n 30 "$DEMO/build.log" >&2
	exit 1
}
echo "build: ok (log in _demo/build.log)"

say "data for the store: 3 h at 15 s, 20,016 series (tests/e2e/gen_openmetrics.py + promtool)"
rm -rf "$DEMO/store" "$DEMO/front"
mkdir -p "$DEMO/store" "$DEMO/front"
t0=$SECONDS
# Data ends 5 minutes ago. The store scrapes nothing, so its head stays empty and the
# backfilled blocks never overlap it. --max-block-duration=24h makes promtool write one or two
# blocks instead of one per 2 h window (it re-reads the input once per block).
END=$(python3 tests/e2e/gen_openmetrics.py --end "$(($(date +%s) - 300))" "$DEMO/data.om" | tail -n 1)
promtool tsdb create-blocks-from openmetrics --max-block-duration=24h --quiet \
	"$DEMO/data.om" "$DEMO/store/data" >/dev/null
rm -f "$DEMO/data.om"
echo "blocks in _demo/store/data, $(date -u -d "@$((END - 10800))" +%H:%M)-$(date -u -d "@$END" +%H:%M) UTC ($((SECONDS - t0))s)"

say "starting store, promguard, front"
printf 'global:\n  scrape_interval: 15s\n' >"$DEMO/store.yml"
start store prometheus --config.file="$DEMO/store.yml" --storage.tsdb.path="$DEMO/store/data" \
	--storage.tsdb.retention.time=30d --web.listen-address=$STORE_ADDR --log.level=warn
wait_ready store "http://$STORE_ADDR/-/ready"
echo "store      http://$STORE_ADDR  (pid $(cat "$DEMO/store.pid"))"

python3 tests/e2e/e2e_lib.py render-config conf/promguard.yml "$DEMO/promguard.yml" \
	--listen $PG_ADDR --admin $PG_ADMIN --upstream "http://$STORE_ADDR/api/v1/read"
# The demo's limit: 10,000 series per query, so the 20,000-series demo_pod_memory_bytes is too big.
sed -i 's/^  max_series: 100000$/  max_series: 10000/' "$DEMO/promguard.yml"
grep -q '^  max_series: 10000$' "$DEMO/promguard.yml" || {
	echo "demo: could not set limits.max_series in $DEMO/promguard.yml" >&2
	exit 1
}
if ! build/promguard -c "$DEMO/promguard.yml" --check-config >"$DEMO/check-config.txt" 2>&1; then
	cat "$DEMO/check-config.txt" >&2
	exit 1
fi
start promguard "$ROOT/build/promguard" -c "$DEMO/promguard.yml"
wait_ready promguard "http://$PG_ADMIN/-/ready"
echo "promguard  http://$PG_ADDR/api/v1/read, admin http://$PG_ADMIN  (pid $(cat "$DEMO/promguard.pid"))"

cat >"$DEMO/front.yml" <<EOF
global:
  scrape_interval: 15s
remote_read:
  - url: http://$PG_ADDR/api/v1/read
    read_recent: true
EOF
start front prometheus --config.file="$DEMO/front.yml" --storage.tsdb.path="$DEMO/front/data" \
	--web.listen-address=$FRONT_ADDR --log.level=warn
wait_ready front "http://$FRONT_ADDR/-/ready"
echo "front      http://$FRONT_ADDR  (pid $(cat "$DEMO/front.pid"))"

# store_reads: remote reads the store has served (its own prometheus_http_requests_total)
store_reads() {
	curl -s "http://$STORE_ADDR/metrics" |
		awk '/^prometheus_http_requests_total\{.*handler="\/api\/v1\/read"/ { n += $NF } END { print n + 0 }'
}

T=$((END - 600))
Q='sum(demo_pod_memory_bytes)'
say "rejected: $Q  @ $(date -u -d "@$T" '+%F %T') UTC (20,000 series, over limits.max_series=10000)"
READS=$(store_reads)
curl -s "http://$FRONT_ADDR/api/v1/query" --data-urlencode "query=$Q" --data-urlencode "time=$T" |
	python3 -c '
import json, sys
r = json.load(sys.stdin)
res = (r.get("data") or {}).get("result") or []
print("status=%s, %d series; the front shows promguard\x27s 422 as a warning:" % (r.get("status"), len(res)))
for w in r.get("warnings") or ["(no warning: the query was not rejected)"]:
    print("  " + w)
'
echo "remote reads the store served for it: $(($(store_reads) - READS)) (the estimate came first; see source= above)"
curl -s "http://$PG_ADMIN/metrics" | grep -E '^promguard_(queries_total|rejections_total|probes_total)' ||
	echo "(no rejection counters found)"

Q='sum by (namespace) (demo_pod_memory_bytes{namespace=~"ns-0[0-4]"})'
say "admitted: $Q  @ $(date -u -d "@$T" '+%F %T') UTC (5 namespaces, 5,000 series: within limits.max_series=10000)"
curl -s "http://$FRONT_ADDR/api/v1/query" --data-urlencode "query=$Q" --data-urlencode "time=$T" |
	python3 -c '
import json, sys
r = json.load(sys.stdin)
res = (r.get("data") or {}).get("result") or []
print("status=%s, %d series, warnings=%s" % (r.get("status"), len(res), r.get("warnings", "none")))
for s in res[:5]:
    print("  %-30s %8.2f GiB" % (json.dumps(s["metric"], sort_keys=True), float(s["value"][1]) / 2**30))
if len(res) > 5:
    print("  ... %d more" % (len(res) - 5))
'

say "bad requests straight to promguard"
echo '$ curl http://'$PG_ADDR'/api/v1/read   (a GET)'
curl -s -o /dev/null -w '  -> HTTP %{http_code}\n' "http://$PG_ADDR/api/v1/read"
echo '$ curl --data-binary "hello" -H "Content-Encoding: snappy" http://'$PG_ADDR'/api/v1/read'
curl -s -D "$DEMO/bad.headers" -o "$DEMO/bad.body" -w '  -> HTTP %{http_code}: ' \
	-H 'Content-Type: application/x-protobuf' -H 'Content-Encoding: snappy' \
	--data-binary 'hello' "http://$PG_ADDR/api/v1/read"
head -n 1 "$DEMO/bad.body" | cut -c1-300
grep -i '^x-promguard-decision' "$DEMO/bad.headers" | sed 's/^/     /' || true

say "promguard metrics (http://$PG_ADMIN/metrics)"
curl -s "http://$PG_ADMIN/metrics" | grep -E '^(promguard_requests_total|promguard_queries_total|promguard_rejections_total|promguard_response_series_total|promguard_upstream_request_duration_seconds_count|promguard_inflight_queries)' ||
	echo "(none of the expected metrics found)"

say "running"
cat <<EOF
  front Prometheus  http://$FRONT_ADDR/graph   (try: sum by (namespace) (demo_pod_memory_bytes{namespace="ns-07"}),
                    and sum(demo_pod_memory_bytes), which promguard rejects: 20,000 series > 10,000)
  promguard         http://$PG_ADDR/api/v1/read   admin: http://$PG_ADMIN/metrics
  store Prometheus  http://$STORE_ADDR/graph
  logs              _demo/{store,promguard,front}.log
  stop with         ./scripts/demo.sh stop
EOF
