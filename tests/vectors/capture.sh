#!/bin/sh
# Regenerate the remote-read vectors in this directory from real Prometheus (Debian 2.42).
#
#   store: prometheus over a TSDB backfilled by promtool with 3 series x 240 samples (15s steps,
#          2026-11-21T00:00:00Z .. 00:59:45Z), no scraping; small read frame budget so that each
#          chunk gets its own streamed frame and every series is split across frames.
#   front: prometheus with remote_read pointing at a tiny python capture server (read_recent: true).
#   1. an instant query rate(promguard_vec_requests_total[1h]) at 01:00:00Z on the front makes it
#      send its ReadRequest to the capture server                      -> request.snappy
#   2. that body POSTed to the store's /api/v1/read                     -> samples_response.snappy
#   3. the same request with accepted_response_types=[STREAMED_XOR_CHUNKS] (bytes 12 01 01
#      appended to the decoded protobuf, re-compressed) POSTed again   -> streamed_response.bin
#
# Usage: tests/vectors/capture.sh [output dir]   (default: the directory of this script)
# Needs: prometheus, promtool, python3 (tests/lib/promrr.py for snappy and the counts).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
lib=$here/../lib
tmp=$(mktemp -d)
pids=""

cleanup() {
	for pid in $pids; do kill "$pid" 2>/dev/null || true; done
	for pid in $pids; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # url
	i=0
	until curl -fs "$1" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 300 ] || { echo "capture: $1 not ready" >&2; exit 1; }
		sleep 0.1
	done
}

t0=1795219200 # 2026-11-21T00:00:00Z
store_port=$(free_port)
front_port=$(free_port)
cap_port=$(free_port)

# --- backfilled store ----------------------------------------------------------------------
python3 - "$t0" >"$tmp/data.om" <<'EOF'
import sys
t0 = int(sys.argv[1])
print("# TYPE promguard_vec_requests counter")
for k, code in enumerate(("200", "404", "500")):
    for i in range(240):
        print('promguard_vec_requests_total{code="%s",job="vec"} %d %d' % (code, (k + 1) * i, t0 + 15 * i))
print("# EOF")
EOF
promtool tsdb create-blocks-from openmetrics -q "$tmp/data.om" "$tmp/store" >/dev/null
printf 'scrape_configs: []\n' >"$tmp/store.yml"
prometheus --config.file="$tmp/store.yml" --storage.tsdb.path="$tmp/store" \
	--web.listen-address="127.0.0.1:$store_port" --storage.remote.read-max-bytes-in-frame=64 \
	--log.level=warn >"$tmp/store.log" 2>&1 &
pids="$pids $!"

# --- capture server: records the front's request body, answers an empty ReadResponse --------
python3 - "$cap_port" "$tmp/request.snappy" >"$tmp/capture.log" 2>&1 <<'EOF' &
import http.server, os, sys
port, path = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # readiness probe for wait_ready
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(body)
            os.rename(path + ".tmp", path)
        empty = b"\x00"  # snappy block of a zero-length ReadResponse
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Encoding", "snappy")
        self.send_header("Content-Length", str(len(empty)))
        self.end_headers()
        self.wfile.write(empty)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
EOF
pids="$pids $!"

# --- front -------------------------------------------------------------------------------------
cat >"$tmp/front.yml" <<EOF
scrape_configs: []
remote_read:
  - url: http://127.0.0.1:$cap_port/api/v1/read
    read_recent: true
EOF
prometheus --config.file="$tmp/front.yml" --storage.tsdb.path="$tmp/front" \
	--web.listen-address="127.0.0.1:$front_port" --log.level=warn >"$tmp/front.log" 2>&1 &
pids="$pids $!"

wait_ready "http://127.0.0.1:$store_port/-/ready"
wait_ready "http://127.0.0.1:$cap_port/"
wait_ready "http://127.0.0.1:$front_port/-/ready"

# --- 1. the front's request ----------------------------------------------------------------------
curl -fsS -G "http://127.0.0.1:$front_port/api/v1/query" \
	--data-urlencode 'query=rate(promguard_vec_requests_total[1h])' \
	--data-urlencode "time=$((t0 + 3600))" >/dev/null
[ -s "$tmp/request.snappy" ] || { echo "capture: front sent no remote read" >&2; exit 1; }

# --- 2. SAMPLES and 3. STREAMED_XOR_CHUNKS from the store -------------------------------------------
read_store() { # body-file out-file
	curl -fsS -o "$2" -D "$2.headers" -H 'Content-Encoding: snappy' -H 'Accept-Encoding: snappy' \
		-H 'Content-Type: application/x-protobuf' -H 'X-Prometheus-Remote-Read-Version: 0.1.0' \
		--data-binary "@$1" "http://127.0.0.1:$store_port/api/v1/read"
}
read_store "$tmp/request.snappy" "$tmp/samples_response.snappy"
PYTHONPATH=$lib python3 -c '
import sys, promrr
raw = promrr.snappy_decode(open(sys.argv[1], "rb").read()) + bytes([0x12, 0x01, 0x01])
open(sys.argv[2], "wb").write(promrr.snappy_encode(raw))
' "$tmp/request.snappy" "$tmp/streamed_request.snappy"
read_store "$tmp/streamed_request.snappy" "$tmp/streamed_response.bin"
grep -qi 'x-streamed-protobuf' "$tmp/streamed_response.bin.headers" || {
	echo "capture: store did not stream" >&2; exit 1; }

cp "$tmp/request.snappy" "$tmp/samples_response.snappy" "$tmp/streamed_response.bin" "$out/"
PYTHONPATH=$lib python3 -c '
import os, sys, promrr
d = sys.argv[1]
def rd(n): return open(os.path.join(d, n), "rb").read()
req = promrr.decode_read_request(promrr.snappy_decode(rd("request.snappy")))
print("request.snappy:", len(rd("request.snappy")), "bytes", req)
print("samples_response.snappy:", len(rd("samples_response.snappy")), "bytes",
      promrr.read_response_counts(promrr.snappy_decode(rd("samples_response.snappy"))))
s = rd("streamed_response.bin")
print("streamed_response.bin:", len(s), "bytes", len(promrr.split_frames(s)), "frames",
      promrr.parse_chunked_stream(s))
' "$out"

# --- series_response.json (by hand; not part of the run above) --------------------------------------
# The series-probe answer comes from a Prometheus that scrapes itself, so its instance label (the
# port) differs on every capture and the file is not regenerated here. To refresh it, run
#   prometheus --config.file=self.yml --storage.tsdb.path=/tmp/self --web.listen-address=127.0.0.1:PORT
# with self.yml = `global: {scrape_interval: 1s}` plus one scrape job "prometheus" targeting
# 127.0.0.1:PORT, wait until /api/v1/series?match[]=up lists the job, two more seconds, then
#   curl -fsS -g "http://127.0.0.1:PORT/api/v1/series?match[]=up&match[]=go_gc_duration_seconds" \
#     -o tests/vectors/series_response.json
