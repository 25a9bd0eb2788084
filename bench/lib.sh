# Shared by the bench/*.sh scripts that each own one "## Section" of bench/RESULTS.md.

# write_section FILE SECTION SCRIPT TABLE NOTES: replace (or append) SECTION in FILE, keeping
# everything else; the section ends at the next "## " heading.
write_section() {
	local file=$1 section=$2 script=$3 table=$4 notes=$5 tmp
	tmp=$(mktemp "$file.XXXXXX")
	if [ -f "$file" ]; then
		awk -v s="$section" '$0 == s { skip = 1; next } skip && /^## / { skip = 0 } !skip' "$file" |
			sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$tmp"
	else
		printf '# promguard benchmark results\n' >"$tmp"
	fi
	printf '\n%s\n\nWritten by `%s`.\n\n%s\n\n%s\n' "$section" "$script" "$table" "$notes" >>"$tmp"
	chmod 644 "$tmp" # mktemp made it 0600
	mv "$tmp" "$file"
}

# --- shared by run.sh and report.sh ---------------------------------------------------------
# They define log (and PIN_SERVER, an array of the command prefix servers start under; empty:
# none) before calling these.

# bench_build: build the benchmark tools in $BUILD_DIR from $ROOT and set PG, FAKESTORE, LOADGEN,
# MKREQ and REPLAY.
bench_build() {
	log "building in $BUILD_DIR"
	cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$BUILD_DIR" -j"$(nproc)" --target promguard fakestore loadgen mkreq replaysrv >/dev/null
	PG=${PROMGUARD_BIN:-$BUILD_DIR/promguard}
	FAKESTORE=$BUILD_DIR/tests/fakestore
	LOADGEN=$BUILD_DIR/bench/loadgen
	MKREQ=$BUILD_DIR/bench/mkreq
	REPLAY=$BUILD_DIR/bench/replaysrv
}

# bench_tmp NAME: make TMP (/tmp/promguard-NAME.*) and PIDS; on exit every pid in PIDS is
# killed (SIGKILL after 0.5 s for what is left: nginx workers whose master is gone, a promguard
# spinning in a callback never reaches its signal handler) and TMP removed.
bench_tmp() {
	TMP=$(mktemp -d "/tmp/promguard-$1.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# wait_port PORT: 0 once something accepts on 127.0.0.1:PORT, 1 after 5 s.
wait_port() {
	for _ in $(seq 50); do
		python3 -c "import socket;socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# start_listener NAME CMD...: start CMD (under PIN_SERVER) in the background and wait for
# "listening on HOST:PORT" on its stdout; sets PORT. Not called in $(...): the pid must reach
# PIDS in the calling shell.
start_listener() {
	local name=$1 out=$TMP/$1.out
	shift
	"${PIN_SERVER[@]}" "$@" >"$out" 2>"$TMP/$name.err" &
	PIDS+=($!)
	for _ in $(seq 50); do
		if grep -q 'listening on' "$out"; then
			PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
			return
		fi
		sleep 0.1
	done
	log "$name did not start: $(cat "$TMP/$name.err")"
	exit 1
}

# start_promguard NAME UPSTREAM_PORT: promguard (under PIN_SERVER) with the bench config in front
# of the store on UPSTREAM_PORT; sets PORT_<name> and PID_<name>. The bench config: log_level
# warn, upstream.max_connections 64, limits.max_response_bytes 4GiB, everything else default.
start_promguard() {
	local name=$1 up=$2 port admin
	port=$(free_port)
	admin=$(free_port)
	cat >"$TMP/$name.yml" <<EOF
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
log_level: warn
upstream: {url: "http://127.0.0.1:$up/api/v1/read", timeout: 10m, max_connections: 64}
limits: {max_response_bytes: 4GiB}
EOF
	"${PIN_SERVER[@]}" "$PG" -c "$TMP/$name.yml" >"$TMP/$name.log" 2>&1 &
	PIDS+=($!)
	printf -v "PID_$name" '%s' $!
	printf -v "PORT_$name" '%s' "$port"
	wait_port "$port" && return
	log "promguard ($name) did not start: $(cat "$TMP/$name.log")"
	exit 1
}
