"""Integration-test harness: run the real promguard binary and the fake store, talk HTTP to them.

Stdlib only. The binaries come from the environment CMake sets for every integration test:
PROMGUARD_BIN, FAKESTORE_BIN (and PROMGUARD_SRC, PYTHONPATH=tests/lib).

    store = harness.FakeStore.start(self)            # stopped by addCleanup
    pg = harness.Promguard.start(self, store.url)    # config written to a temp dir
    resp = harness.post_read(pg.port, harness.read_body({"series": "10"}))
    metrics = pg.metrics()                           # {(name, frozenset(labels)): value}

Every process started here is registered with the test case's addCleanup, so nothing outlives a
test even when it fails; Promguard.stop() also asserts the exit code and dumps the log on failure.
All traffic goes to 127.0.0.1.
"""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import urllib.parse

import promrr

HOST = "127.0.0.1"

# Headers Prometheus 2.42 sends with every remote read (protocol.md 2.2).
PROM_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "Accept-Encoding": "snappy",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Remote-Read-Version": "0.1.0",
}

STREAMED_CONTENT_TYPE = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"

SAMPLES = 0
STREAMED_XOR_CHUNKS = 1


def _env_bin(name):
    path = os.environ.get(name)
    if not path:
        raise RuntimeError(f"{name} is not set (run the integration tests through ctest)")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name}={path} is not an executable")
    return path


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (promguard does not take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll <pred> until it returns a true value; return it, or raise AssertionError after <timeout> s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# request bodies

def selector(labels=None, name="fake"):
    """Equality matchers for a fake-store query: {"series": "10", "mode": "hang"} and __name__."""
    m = {"__name__": name} if name is not None else {}
    m.update({k: str(v) for k, v in (labels or {}).items()})
    return m


def read_body(labels=None, start_ms=1_700_000_000_000, end_ms=1_700_003_600_000, streamed=False,
              queries=None, accepted=None):
    """Snappy-compressed ReadRequest for the fake store.

    <labels> are the behaviour labels of one query (see tests/integration/README.md); <queries>
    is a list of such dicts for a multi-query request. <streamed> asks for
    [STREAMED_XOR_CHUNKS, SAMPLES] like Prometheus >= 2.55; <accepted> overrides the list.
    """
    return promrr.snappy_encode(read_request_raw(labels, start_ms, end_ms, streamed, queries, accepted))


def read_request_raw(labels=None, start_ms=1_700_000_000_000, end_ms=1_700_003_600_000, streamed=False,
                     queries=None, accepted=None):
    """The uncompressed ReadRequest protobuf that read_body() sends."""
    qs = queries if queries is not None else [labels or {}]
    if accepted is None:
        accepted = [STREAMED_XOR_CHUNKS, SAMPLES] if streamed else []
    return promrr.encode_read_request(
        [{"start": start_ms, "end": end_ms, "matchers": [(promrr.EQ, k, v) for k, v in selector(q).items()]}
         for q in qs],
        accepted=accepted)


def snappy(data):
    """Snappy block encoding of <data>."""
    return promrr.snappy_encode(data)


def uvarint(n):
    return promrr.uvarint(n)


def samples_counts(body):
    """[(series, samples)] per QueryResult of a snappy SAMPLES body."""
    return [(c["series"], c["samples"]) for c in promrr.read_response_counts(promrr.snappy_decode(body))]


def stream_counts(body):
    """{query_index: frames} of a whole STREAMED_XOR_CHUNKS body, every CRC checked (small bodies)."""
    return {qi: c["frames"] for qi, c in promrr.parse_chunked_stream(body).items()}


class FrameWalker:
    """Incremental frame-boundary walker for large streams: counts frames and bytes from the
    length prefixes alone (no CRC, so 300 MB stay cheap in Python; byte identity is checked with
    a hash). feed() raises ValueError on a malformed length; finish() says whether the body ended
    at a frame boundary."""

    def __init__(self):
        self.frames = 0
        self.bytes = 0
        self._need = 0          # payload bytes (CRC + message) still to skip
        self._hdr = bytearray() # partial varint

    def feed(self, data):
        self.bytes += len(data)
        mv = memoryview(data)
        i, n = 0, len(mv)
        while i < n:
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                continue
            b = mv[i]
            i += 1
            self._hdr.append(b)
            if len(self._hdr) > 10:
                raise ValueError("frame length varint too long")
            if not b & 0x80:
                length = 0
                for k, x in enumerate(self._hdr):
                    length |= (x & 0x7F) << (7 * k)
                self._hdr.clear()
                self._need = 4 + length
                self.frames += 1

    def finish(self):
        return self._need == 0 and not self._hdr


# --------------------------------------------------------------------------------------------
# HTTP

class Response:
    """A finished HTTP exchange: status, headers (case-insensitive get), body bytes."""

    def __init__(self, status, headers, body, complete=True):
        self.status = status
        self.header_list = headers            # [(name, value)] as received
        self.body = body
        self.complete = complete              # False when the body ended early (connection cut)

    def header(self, name, default=None):
        for k, v in self.header_list:
            if k.lower() == name.lower():
                return v
        return default

    def headers_all(self, name):
        return [v for k, v in self.header_list if k.lower() == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.header_list} {self.body[:200]!r}>"


def http_request(port, method, path, body=None, headers=None, timeout=10, conn=None):
    """One request with http.client. Pass <conn> (an HTTPConnection) to reuse a keep-alive connection."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        complete = True
        try:
            data = r.read()
        except http.client.IncompleteRead as e:
            data, complete = e.partial, False
        return Response(r.status, r.getheaders(), data, complete)
    finally:
        if own:
            conn.close()


def post_read(port, body, headers=None, path="/api/v1/read", timeout=10, conn=None):
    """POST a remote-read body with Prometheus' headers (plus/overridden by <headers>)."""
    h = dict(PROM_HEADERS)
    h.update(headers or {})
    return http_request(port, "POST", path, body=body, headers=h, timeout=timeout, conn=conn)


def get(port, path, timeout=10):
    return http_request(port, "GET", path, timeout=timeout)


class RawResponse(Response):
    """Response read by raw_request(): also says how the body ended."""

    def __init__(self, status, headers, body, complete, clean_eof, chunked):
        super().__init__(status, headers, body, complete)
        self.clean_eof = clean_eof    # the chunked terminator (or the full Content-Length) arrived
        self.chunked = chunked


def raw_request(port, method, path, body=b"", headers=None, timeout=15, rcvbuf=None, read_size=65536,
                pause=0.0, on_data=None, sock=None):
    """A request on a raw socket, reading the response by hand.

    Unlike http.client this reports exactly how the body ended: clean_eof is True only when the
    chunked terminator `0\\r\\n\\r\\n` (or all Content-Length bytes) arrived. <rcvbuf> sets
    SO_RCVBUF before connecting and <pause> sleeps between reads of <read_size> bytes, making a slow
    client. <on_data>(bytes) receives body bytes as they are decoded; the returned body is then b""
    so large streams are never held in memory.
    """
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        if sock is None:
            s.connect((HOST, port))
        h = {"Host": f"{HOST}:{port}", "Content-Length": str(len(body))}
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}  # None removes a header
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        s.sendall(req.encode() + body)

        buf = bytearray()
        eof = False

        def fill():
            nonlocal eof
            if eof:
                return False
            if pause:
                time.sleep(pause)
            try:
                d = s.recv(read_size)
            except (ConnectionResetError, BrokenPipeError):
                d = b""
            if not d:
                eof = True
                return False
            buf.extend(d)
            return True

        while b"\r\n\r\n" not in buf:
            if not fill():
                raise ConnectionError(f"connection closed before response headers ({bytes(buf)!r})")
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs.append((k.strip(), v.strip()))
        lower = {k.lower(): v for k, v in hdrs}
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        out = bytearray()

        def emit(d):
            if on_data:
                on_data(bytes(d))
            else:
                out.extend(d)

        clean = False
        if chunked:
            while True:
                while b"\r\n" not in buf:
                    if not fill():
                        break
                if b"\r\n" not in buf:
                    break
                line, _, rest = bytes(buf).partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                buf = bytearray(rest)
                if size == 0:
                    while not (buf.startswith(b"\r\n") or b"\r\n\r\n" in buf):
                        if not fill():
                            break
                    clean = buf.startswith(b"\r\n") or b"\r\n\r\n" in buf
                    break
                remaining = size
                while remaining > 0:
                    if not buf and not fill():
                        break
                    take = min(len(buf), remaining)
                    emit(buf[:take])
                    del buf[:take]
                    remaining -= take
                if remaining > 0:
                    break
                while len(buf) < 2 and fill():
                    pass
                if bytes(buf[:2]) != b"\r\n":
                    break
                del buf[:2]
        elif "content-length" in lower:
            want = int(lower["content-length"])
            got = 0
            while True:
                take = min(len(buf), want - got)
                if take:
                    emit(buf[:take])
                    got += take
                    del buf[:take]
                if got >= want or not fill():
                    break
            clean = got == want
        else:
            while True:
                emit(buf)
                buf = bytearray()
                if not fill():
                    break
            clean = False
        return RawResponse(status, hdrs, bytes(out), clean, clean, chunked)
    finally:
        if sock is None:
            s.close()


def connect_refused(port, timeout=2):
    """True when nothing accepts on 127.0.0.1:<port>."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return True


# --------------------------------------------------------------------------------------------
# /metrics

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return v.replace('\\n', '\n').replace('\\"', '"').replace('\\\\', '\\')


def parse_metrics(text, strict=True):
    """Parse text exposition 0.0.4 into {(name, frozenset(labels.items())): float}.

    With <strict>, also check the format: every line is a comment, blank, or a valid sample; each
    sample belongs to a family declared by a preceding `# TYPE` (histograms: _bucket/_sum/_count);
    no family is declared twice and no series appears twice. Raises ValueError naming the line.
    """
    out = {}
    types = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                if strict and parts[2] in types:
                    raise ValueError(f"line {n}: family {parts[2]} declared twice")
                if strict and (len(parts) < 4 or parts[3] not in
                               ("counter", "gauge", "histogram", "summary", "untyped")):
                    raise ValueError(f"line {n}: bad TYPE line {line!r}")
                types[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"line {n}: not a sample: {line!r}")
        name, _, lbl, val = m.group(1), m.group(2), m.group(3), m.group(4)
        labels = {}
        if lbl:
            pos = 0
            while pos < len(lbl):
                lm = _LABEL_RE.match(lbl, pos)
                if not lm or lm.end() == pos:
                    raise ValueError(f"line {n}: bad labels {lbl!r}")
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        try:
            v = float(val)  # accepts NaN, +Inf, -Inf
        except ValueError:
            raise ValueError(f"line {n}: bad value {val!r}") from None
        if strict:
            family = name
            if name not in types:
                for suf in ("_bucket", "_sum", "_count"):
                    if name.endswith(suf) and types.get(name[: -len(suf)]) in ("histogram", "summary"):
                        family = name[: -len(suf)]
            if family not in types:
                raise ValueError(f"line {n}: sample {name} has no preceding # TYPE")
        key = (name, frozenset(labels.items()))
        if strict and key in out:
            raise ValueError(f"line {n}: duplicate series {line!r}")
        out[key] = v
    return out


def metric(metrics, name, **labels):
    """Value of one series (0.0 when absent): metric(m, "promguard_requests_total", code="200")."""
    return metrics.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def metric_sum(metrics, name, **labels):
    """Sum over every series of <name> whose labels include <labels>."""
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


def metric_names(metrics):
    return {n for n, _ in metrics}


# --------------------------------------------------------------------------------------------
# /proc

def proc_status(pid, field):
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def sanitized(pid):
    """True when <pid> runs with ASan (its quarantine and shadow memory make RSS meaningless)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("libasan" in line or "libtsan" in line for line in f)
    except OSError:
        return False


def valgrind():
    """True when promguard runs under valgrind (env PROMGUARD_VALGRIND=1, see Promguard): it is then
    20-50x slower and its RSS is valgrind's, so tests scale timing bounds (scaled()) or skip."""
    return os.environ.get("PROMGUARD_VALGRIND") == "1"


# How much longer waits on promguard may take under valgrind (startup, exit with the leak check,
# requests): a generous factor, applied only to deadlines (the time a test may wait), never to
# what it asserts a lower bound of.
VALGRIND_SLOWDOWN = 10


def scaled(seconds, by=VALGRIND_SLOWDOWN):
    """<seconds> as a deadline for something promguard does: multiplied by VALGRIND_SLOWDOWN (or
    <by>, for a latency bound that must stay below what it guards against) under valgrind,
    unchanged otherwise."""
    return seconds * by if valgrind() else seconds


def cpu_seconds(pid):
    """utime + stime of <pid> (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    return proc_status(pid, "VmRSS")


def peak_rss_bytes(pid):
    return proc_status(pid, "VmHWM")


# --------------------------------------------------------------------------------------------
# YAML

def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))  # a JSON string is a valid double-quoted YAML scalar


def to_yaml(d, indent=0):
    """Block-style YAML for nested dicts of scalars, lists of scalars and lists of dicts
    (rules[]: `- name: x` blocks)."""
    pad = "  " * indent
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            if v:
                out.append(f"{pad}{k}:")
                out.append(to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}{k}: {{}}")
        elif isinstance(v, list):
            if not v:
                out.append(f"{pad}{k}: []")
                continue
            out.append(f"{pad}{k}:")
            for x in v:
                if isinstance(x, dict):
                    body = to_yaml(x, indent + 2).split("\n")
                    out.append(f"{pad}  - " + body[0].lstrip())
                    out.extend(body[1:])
                else:
                    out.append(f"{pad}  - {_yaml_scalar(x)}")
        else:
            out.append(f"{pad}{k}: {_yaml_scalar(v)}")
    return "\n".join(out)


def tag():
    """A fresh value for the fake store's `tag` label: tells this test's requests apart in /stats."""
    return uuid.uuid4().hex[:12]


def merge(a, b):
    """Deep-merge dict <b> into a copy of <a>; a None value in <b> deletes the key."""
    r = dict(a)
    for k, v in b.items():
        if v is None:
            r.pop(k, None)
        elif isinstance(v, dict) and isinstance(r.get(k), dict):
            r[k] = merge(r[k], v)
        else:
            r[k] = v
    return r


# --------------------------------------------------------------------------------------------
# processes

def _register_cleanup(testcase, fn):
    if testcase is None:
        return
    if isinstance(testcase, type):
        testcase.addClassCleanup(fn)
    else:
        testcase.addCleanup(fn)


def _tail(path, n=80):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


class FakeStore:
    """The fake remote-read store (tests/integration/fakestore.c) on an ephemeral port."""

    def __init__(self, proc, port, logdir):
        self.proc = proc
        self.port = port
        self.logdir = logdir
        self.url = f"http://{HOST}:{port}/api/v1/read"

    @classmethod
    def start(cls, testcase=None, timeout=5, port=0):
        """Start a store (on <port>, 0 = any); with <testcase> (a TestCase, or a TestCase class
        from setUpClass), stop it in its cleanups."""
        logdir = tempfile.mkdtemp(prefix="fakestore-")
        err = open(os.path.join(logdir, "stderr"), "wb")
        proc = subprocess.Popen([_env_bin("FAKESTORE_BIN"), "--listen", f"{HOST}:{port}"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        store = None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline().decode() if ready else ""
            m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
            if not m:
                raise RuntimeError(f"fakestore did not start: {line!r} {_tail(os.path.join(logdir, 'stderr'))}")
            store = cls(proc, int(m.group(1)), logdir)
        finally:
            if store is None:
                proc.kill()
                proc.wait()
        _register_cleanup(testcase, store.stop)
        return store

    def stats(self):
        r = get(self.port, "/stats")
        if r.status != 200:
            raise AssertionError(f"fakestore /stats: {r}")
        return json.loads(r.body)

    def reads(self):
        """POSTs to /api/v1/read received so far."""
        return self.stats()["requests"].get("/api/v1/read", 0)

    def tag(self, tag):
        """{"count": n, "headers": {...last request's headers...}} for requests carrying tag="<tag>"."""
        return self.stats()["tags"].get(tag, {"count": 0, "headers": {}})

    def tag_stats(self, tag):
        """Everything /stats keeps for tag="<tag>": count, first_seq/last_seq (arrival numbers among
        all reads), first_ms/last_ms (arrival, CLOCK_MONOTONIC ms), done/done_ms (responses written
        out or abandoned), headers. All zero when the tag never arrived."""
        return self.stats()["tags"].get(tag, {"count": 0, "first_seq": 0, "last_seq": 0, "first_ms": 0,
                                              "last_ms": 0, "done": 0, "done_ms": 0, "headers": {}})

    def kill(self):
        """SIGKILL: the store crashes (open connections are reset by the kernel). Quiet: the exit
        code -9 is expected, so nothing is dumped. Idempotent; stop() afterwards is a no-op."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        err_path = os.path.join(self.logdir, "stderr")
        if os.path.isdir(self.logdir) and os.path.getsize(err_path) > 0:
            sys.stderr.write(f"\n===== fakestore killed; stderr ({err_path}):\n{_tail(err_path)}\n=====\n")
        else:
            shutil.rmtree(self.logdir, ignore_errors=True)

    def stop(self):
        """SIGTERM (SIGKILL after 5 s). Its stderr is printed when it is not empty (sanitizer
        reports) or the exit code is not 0; otherwise its temp dir is removed. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        err_path = os.path.join(self.logdir, "stderr")
        if not os.path.isdir(self.logdir):
            return
        if self.proc.returncode != 0 or os.path.getsize(err_path) > 0:
            sys.stderr.write(f"\n===== fakestore exited with {self.proc.returncode}; stderr ({err_path}):\n"
                             f"{_tail(err_path)}\n=====\n")
        else:
            shutil.rmtree(self.logdir, ignore_errors=True)


class _PortTaken(Exception):
    pass


class Promguard:
    """The real promguard binary with a generated config.

    Promguard.start(testcase, upstream_url, config={...}) picks free ports, writes the YAML to a
    temp dir, starts `$PROMGUARD_BIN -c <file>` with stderr to a file and waits until
    GET /-/healthy on admin_listen answers 200. stop() sends SIGTERM and asserts exit code 0.
    """

    def __init__(self, cfg, cfg_path, logdir):
        self.cfg = cfg
        self.cfg_path = cfg_path
        self.logdir = logdir
        self.log_path = os.path.join(logdir, "stderr")
        self.proc = None
        self.stopped = False
        self.term_sent = False  # SIGTERM/SIGINT already sent: a second one may mean "exit now"
        self.dumped = False
        self.nofile = None      # RLIMIT_NOFILE (soft and hard) for the process, None: inherited
        self.valgrind_log = os.path.join(logdir, "valgrind.log") if valgrind() else None
        self.valgrind_printed = False
        self.valgrind_checked = False
        host, _, port = cfg["listen"].rpartition(":")
        self.port = int(port)
        self.admin_port = int(cfg["admin_listen"].rpartition(":")[2])

    @staticmethod
    def default_config(upstream_url):
        return {
            "listen": f"{HOST}:{free_port()}",
            "admin_listen": f"{HOST}:{free_port()}",
            "read_path": "/api/v1/read",
            "log_level": "info",
            "shutdown_grace": "5s",
            "upstream": {"url": upstream_url, "timeout": "10s"},
            "limits": {"max_request_bytes": "4MiB"},
        }

    @classmethod
    def start(cls, testcase, upstream_url, config=None, timeout=10, wait_ready=False, nofile=None):
        """Start promguard; <config> is deep-merged over default_config() (None deletes a key).
        <nofile> sets the process's RLIMIT_NOFILE (soft and hard) before it starts. Under valgrind
        (PROMGUARD_VALGRIND=1) the startup <timeout> is scaled()."""
        timeout = scaled(timeout)
        for attempt in range(3):
            try:
                return cls._start_once(testcase, upstream_url, config, timeout, wait_ready, nofile)
            except _PortTaken:
                # a port free_port() picked was taken before promguard bound it: pick again,
                # unless the test chose the ports itself
                if config and ("listen" in config or "admin_listen" in config):
                    raise AssertionError("promguard could not bind the configured port") from None
        raise AssertionError("promguard could not bind free ports three times")

    @classmethod
    def _start_once(cls, testcase, upstream_url, config, timeout, wait_ready, nofile=None):
        cfg = merge(cls.default_config(upstream_url), config or {})
        logdir = tempfile.mkdtemp(prefix="promguard-")
        cfg_path = os.path.join(logdir, "promguard.yml")
        with open(cfg_path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        pg = cls(cfg, cfg_path, logdir)
        pg.nofile = nofile
        pg._spawn()
        _register_cleanup(testcase, lambda: pg.stop(testcase=testcase))
        try:
            pg.wait_healthy(timeout)
            if wait_ready:
                wait_until(lambda: pg.admin_get("/-/ready").status == 200, timeout, 0.1, "/-/ready 200")
        except BaseException:
            if pg.proc.poll() is not None and "Address already in use" in pg.log():
                pg.stopped = True
                raise _PortTaken() from None
            pg.dump("did not become healthy")
            pg.kill()
            raise
        return pg

    def _spawn(self):
        self._popen(None)

    def _argv(self):
        """The command line: the binary, or valgrind running it (PROMGUARD_VALGRIND=1)."""
        argv = [_env_bin("PROMGUARD_BIN"), "-c", self.cfg_path]
        if self.valgrind_log:
            argv = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                    "--show-leak-kinds=definite,indirect", "--errors-for-leak-kinds=definite,indirect",
                    f"--log-file={self.valgrind_log}"] + argv
        return argv

    def _popen(self, env):
        """Start the process (stderr and stdout to the log), with <env> (None: the test's own) and
        the RLIMIT_NOFILE of self.nofile."""
        nofile = self.nofile

        def preexec():
            if nofile is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        err = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self._argv(), stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=preexec if nofile is not None else None)
        err.close()

    def valgrind_report(self):
        """What valgrind wrote (errors, leaks), "" when nothing or not under valgrind."""
        if not self.valgrind_log:
            return ""
        try:
            with open(self.valgrind_log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def assert_valgrind_clean(self):
        """Under valgrind, once the process has exited: its report must be empty. Checked once."""
        if not self.valgrind_log or self.valgrind_checked or self.proc is None or self.proc.poll() is None:
            return
        self.valgrind_checked = True
        if self.print_valgrind_report():
            self.dumped = True  # keep the log dir
            raise AssertionError(f"valgrind reported problems (above; {self.valgrind_log})")

    def print_valgrind_report(self):
        """Print valgrind's report to stderr (once) when there is one; returns it."""
        report = self.valgrind_report()
        if report and not self.valgrind_printed:
            self.valgrind_printed = True
            sys.stderr.write(f"\n===== valgrind report ({self.valgrind_log}):\n{report}\n=====\n")
        return report

    @property
    def pid(self):
        return self.proc.pid

    def wait_healthy(self, timeout=10):
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"promguard exited with {self.proc.returncode} during startup")
            try:
                return get(self.admin_port, "/-/healthy", timeout=1).status == 200
            except OSError:
                return False
        wait_until(ok, timeout, 0.05, "GET /-/healthy == 200")

    def admin_get(self, path, timeout=10):
        return get(self.admin_port, path, timeout=timeout)

    def metrics_text(self):
        r = self.admin_get("/metrics")
        if r.status != 200:
            raise AssertionError(f"/metrics: {r}")
        return r.text

    def metrics(self, strict=True):
        return parse_metrics(self.metrics_text(), strict=strict)

    def post_read(self, body, **kw):
        kw.setdefault("path", self.cfg.get("read_path", "/api/v1/read"))
        return post_read(self.port, body, **kw)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self, msg=None):
        lines = self.log().splitlines()
        if msg is not None:
            lines = [ln for ln in lines if f'msg="{msg}"' in ln]
        return lines

    def dump(self, why):
        sys.stderr.write(f"\n===== promguard {why}: config {self.cfg_path}\n{_tail(self.cfg_path, 200)}\n"
                         f"===== promguard stderr ({self.log_path}):\n{_tail(self.log_path)}\n=====\n")

    def signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.term_sent = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Wait for the process to exit; returns the exit code (the log is dumped when it is not 0)
        or None on timeout."""
        try:
            code = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            return None
        if code != 0 and not self.dumped:
            self.dumped = True
            self.dump(f"exited with {code}")
        self.print_valgrind_report()
        return code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopped = True

    def stop(self, timeout=None, testcase=None):
        """SIGTERM; assert exit code 0 within shutdown_grace (+5 s). Idempotent. With <testcase>
        (from the cleanup), the log is also dumped when that test failed."""
        if self.stopped:
            self.assert_valgrind_clean()  # a test may have stopped it itself (wait_exit)
            return
        self.stopped = True
        if _test_failed(testcase) and not self.dumped:
            self.dumped = True
            self.dump("log of a failed test")
        if timeout is None:
            timeout = _grace_seconds(self.cfg.get("shutdown_grace", "30s")) + 5  # scaled() by wait_exit
        if self.proc.poll() is None and not self.term_sent:
            self.signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.dump(f"did not exit within {timeout}s of SIGTERM")
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"promguard did not exit within {timeout}s of SIGTERM")
        if code != 0:
            if self.valgrind_report():
                self.valgrind_checked = True  # printed by wait_exit(); fail once, here
                self.dumped = True
            raise AssertionError(f"promguard exited with code {code}, want 0"
                                 + (" (99: valgrind found errors, see its report above)" if code == 99 else ""))
        self.assert_valgrind_clean()
        if not self.dumped:
            shutil.rmtree(self.logdir, ignore_errors=True)


def _test_failed(testcase):
    """Best effort: has <testcase> (a TestCase instance) already recorded a failure or error?"""
    result = getattr(getattr(testcase, "_outcome", None), "result", None)
    if result is None:
        return False
    return any(t is testcase for t, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])))


def _grace_seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s))
    if not m:
        return 30
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


# --------------------------------------------------------------------------------------------
# assertions shared by the test modules

ERROR_LINE_RE = re.compile(r"^promguard: [^\n]*\n$")


def decision(resp):
    """Parse X-Promguard-Decision into ("admit"|..., {"reason":..., "estimate":..., "source":...})."""
    v = resp.header("X-Promguard-Decision")
    if v is None:
        return None, {}
    parts = [p.strip() for p in v.split(";")]
    kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0], kv


def url_query(**params):
    return urllib.parse.urlencode(params, doseq=True)


# --------------------------------------------------------------------------------------------
# admission (limits, rules, estimator): config with rules[], arbitrary matchers, 422 lines, logs

# to_yaml() handles rules[] (lists of dicts) too; the old name stays for existing callers
to_yaml_any = to_yaml


class AdmissionPromguard(Promguard):
    """Promguard whose config may hold rules[] (lists of dicts), with reload helpers.

    Everything but the reload and rule helpers is Promguard's.
    """

    def rewrite_config(self, changes=None, text=None):
        """Write a new config file: <changes> deep-merged over the running one, or raw <text>."""
        if text is None:
            self.cfg = merge(self.cfg, changes or {})
            text = to_yaml_any(self.cfg) + "\n"
        with open(self.cfg_path, "w") as f:
            f.write(text)

    def reload(self, timeout=10):
        """POST /-/reload on the admin listener."""
        return http_request(self.admin_port, "POST", "/-/reload", body=b"", timeout=timeout)

    def explain(self, selector, start=None, end=None, tenant=None, timeout=10):
        """GET /api/v1/explain; returns the Response (JSON in .body when 200)."""
        params = {"match[]": selector}
        if start is not None:
            params["start"] = start
        if end is not None:
            params["end"] = end
        if tenant is not None:
            params["tenant"] = tenant
        return self.admin_get("/api/v1/explain?" + url_query(**params), timeout=timeout)


def probes(store, tag):
    """GET /api/v1/series requests the fake store received whose match[] carries tag="<tag>"."""
    return store.stats().get("probe_tags", {}).get(tag, {"count": 0, "path": ""})


def series_api_requests(store):
    return store.stats()["requests"].get("/api/v1/series", 0)


def read_body_matchers(matchers, start_ms=1_700_000_000_000, end_ms=1_700_003_600_000, accepted=None,
                       queries=None):
    """Snappy ReadRequest with arbitrary matchers: [(promrr.EQ|NEQ|RE|NRE, name, value)], one query
    (or <queries>: a list of such matcher lists)."""
    qs = queries if queries is not None else [matchers]
    return promrr.snappy_encode(promrr.encode_read_request(
        [{"start": start_ms, "end": end_ms, "matchers": list(m)} for m in qs], accepted=accepted or []))


# `promguard: query rejected: <what> for <selector> [<start>,<end>] tenant=<t> (source=<s>)`
REJECTION_RE = re.compile(
    r"^promguard: query rejected: (?P<what>.+?) for (?P<selector>.+) "
    r"\[(?P<start>[^,\]]+),(?P<end>[^\]]+)\] tenant=(?P<tenant>\S+) \(source=(?P<source>[a-z]+)\)\n$")
_LIMIT_WHAT_RE = re.compile(r"^(?P<key>[A-Za-z0-9_.\-]+)=(?P<limit>\S+) (?P<kind>estimated|actual) (?P<value>\S+)$")


def parse_rejection(body):
    """Split a 422 body into its parts; None when it does not have the contract's shape.

    Keys: what, selector, start, end, tenant, source, and for `<key>=<limit> <kind> <n>` also key,
    limit, kind, value.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    m = REJECTION_RE.match(text)
    if not m:
        return None
    d = m.groupdict()
    lm = _LIMIT_WHAT_RE.match(d["what"])
    if lm:
        d.update(lm.groupdict())
    return d


_LOGKV_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line):
    """key=value pairs of one log line; quoted values are unquoted (\\" and \\\\ unescaped)."""
    out = {}
    for k, v in _LOGKV_RE.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[k] = v
    return out


class MetricsDelta:
    """Snapshot of /metrics; .delta(name, **labels) is the change of metric_sum since the snapshot."""

    def __init__(self, pg):
        self.pg = pg
        self.before = pg.metrics()

    def delta(self, name, **labels):
        return metric_sum(self.pg.metrics(), name, **labels) - metric_sum(self.before, name, **labels)


def assert_rejected(tc, resp, reason, *, key=None, limit=None, kind=None, value=None, what=None, source=None,
                    tenant="default", selector=None, status=422):
    """Assert <resp> is promguard's one-line 422 with the X-Promguard-Decision reject header.

    Checks every part given: <key>, <limit>, <kind> (estimated|actual), <value> (str or int, or a
    callable taking the printed value), <what> (the whole text before ` for `), <source>, <tenant>,
    <selector>. The header's source must equal the line's. Returns parse_rejection()'s dict.
    """
    tc.assertEqual(resp.status, status, f"want {status}, got {resp.status}: {resp.text[:300]!r} "
                                        f"({resp.header('X-Promguard-Decision')})")
    tc.assertRegex(resp.text, ERROR_LINE_RE, "not one line")
    parts = parse_rejection(resp.body)
    tc.assertIsNotNone(parts, f"422 line has not the contract's shape: {resp.text!r}")
    verdict, kv = decision(resp)
    tc.assertEqual(verdict, "reject", resp.header("X-Promguard-Decision"))
    tc.assertEqual(kv.get("reason"), reason, resp.header("X-Promguard-Decision"))
    tc.assertIn("estimate", kv, resp.header("X-Promguard-Decision"))
    tc.assertEqual(kv.get("source"), parts["source"], "header source differs from the 422 line's")
    checks = {"key": key, "limit": limit, "kind": kind, "what": what, "source": source, "tenant": tenant,
              "selector": selector}
    for name, want in checks.items():
        if want is not None:
            tc.assertEqual(parts.get(name), str(want), f"{name} in {resp.text!r}")
    if value is not None:
        if callable(value):
            tc.assertTrue(value(parts.get("value")), f"value {parts.get('value')!r} in {resp.text!r}")
        else:
            tc.assertEqual(parts.get("value"), str(value), f"value in {resp.text!r}")
    return parts


def assert_admitted(tc, resp, *, source=None, estimate=None, status=200):
    """Assert <resp> is the store's answer with `admit; reason=none; estimate=<n>; source=<s>`."""
    tc.assertEqual(resp.status, status, f"want {status}: {resp.text[:300]!r} ({resp.header('X-Promguard-Decision')})")
    verdict, kv = decision(resp)
    tc.assertEqual(verdict, "admit", resp.header("X-Promguard-Decision"))
    tc.assertEqual(kv.get("reason"), "none", resp.header("X-Promguard-Decision"))
    if source is not None:
        tc.assertEqual(kv.get("source"), source, resp.header("X-Promguard-Decision"))
    if estimate is not None:
        tc.assertEqual(kv.get("estimate"), str(estimate), resp.header("X-Promguard-Decision"))
    return kv


# --------------------------------------------------------------------------------------------
# extra environment for promguard (debug settings: PROMGUARD_POOL_FAIL_RATE, PROMGUARD_POOL_POISON)

class EnvPromguard(Promguard):
    """Promguard whose process gets extra environment variables on top of the test's own:

        pg = H.EnvPromguard.start(self, store.url, config, env={"PROMGUARD_POOL_FAIL_RATE": "0.3"})

    Everything else is Promguard's (a value of None removes that variable)."""

    env = {}

    @classmethod
    def start(cls, testcase, upstream_url, config=None, timeout=10, wait_ready=False, env=None, nofile=None):
        bound = type(cls.__name__, (cls,), {"env": dict(cls.env, **(env or {}))})
        return super(EnvPromguard, bound).start(testcase, upstream_url, config, timeout, wait_ready, nofile)

    def _spawn(self):
        environ = dict(os.environ)
        for k, v in self.env.items():
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = str(v)
        self._popen(environ)


# --------------------------------------------------------------------------------------------
# the deferral queue (issue 5)

def queue_status(pg):
    """The "queue" object of promguard's /api/v1/status: length, limit, delayed_retries, deferred,
    refused, exits{done,rejected,timeout,cancelled}, backoff{tracked_keys,max_tracked_keys,
    evictions,forgotten}, tenants{name: queued}."""
    r = pg.admin_get("/api/v1/status")
    if r.status != 200:
        raise AssertionError(f"/api/v1/status: {r}")
    return json.loads(r.body)["queue"]


def retry_after_seconds(resp):
    """Retry-After of <resp> as an int, or None when absent or not a non-negative integer."""
    v = resp.header("Retry-After")
    if v is None or not re.fullmatch(r"\d+", v.strip()):
        return None
    return int(v)


class Sampler:
    """Calls <fn>() every <interval> s in a thread until stop(); keeps every value (.values) and
    the largest (.max). Exceptions from <fn> are counted in .errors, not raised.

        with H.Sampler(lambda: H.metric(pg.metrics(), "promguard_queue_tenants")) as s:
            ...
        s.max
    """

    def __init__(self, fn, interval=0.01):
        import threading
        self.fn = fn
        self.interval = interval
        self.values = []
        self.errors = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.values.append(self.fn())
            except Exception:
                self.errors += 1
            self._stop.wait(self.interval)

    @property
    def max(self):
        return max(self.values) if self.values else None

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
