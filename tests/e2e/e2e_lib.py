"""Helpers for the e2e tier: real Prometheus 2.42 processes around a real promguard.

Everything here runs on 127.0.0.1 with ports picked at run time and files in a temp dir, so
tests can run next to the demo or each other. Nothing here depends on tests/lib.

Also a small CLI used by scripts/demo.sh, so the demo and the tests render the promguard
config the same way:

    python3 tests/e2e/e2e_lib.py render-config TEMPLATE OUT --listen A --admin B --upstream URL
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# tests/lib holds promrr; the demo imports this module without ctest's PYTHONPATH
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import promrr  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PROMGUARD_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
GENERATOR = os.path.join(HERE, "gen_openmetrics.py")


def promguard_bin():
    """Path of the promguard binary: $PROMGUARD_BIN (set by ctest) or build/promguard."""
    return os.environ.get("PROMGUARD_BIN") or os.path.join(SRC, "build", "promguard")


def need_tool(name):
    """Absolute path of <name> on PATH, or raise with a hint (never skip: CI must notice)."""
    path = shutil.which(name)
    if not path:
        raise RuntimeError("%s not found on PATH: run scripts/deps.sh" % name)
    return path


_PORTS_GIVEN = set()


def _ephemeral_low():
    """Start of the kernel's range for outgoing connections' source ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A TCP port free on 127.0.0.1 now, below the ephemeral range and not given out before.

    bind(0) hands out ports from the ephemeral range, where any outgoing connection (a test's
    own HTTP client, a Prometheus querying another) may take it as its source port before the
    server we start binds it; ports below that range are only taken by explicit binds.
    """
    low = max(1025, _ephemeral_low() - 12000)
    for _ in range(200):
        port = random.randrange(low, _ephemeral_low())
        if port in _PORTS_GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


# --- data ---------------------------------------------------------------------------------

def make_store_blocks(tsdb_dir, end=None, hours=3.0, pods=20000, step=15, pod_hours=None):
    """Generate the demo data set and backfill it as TSDB blocks into <tsdb_dir>.

    Runs tests/e2e/gen_openmetrics.py into a temporary .om file next to <tsdb_dir>, then
    `promtool tsdb create-blocks-from openmetrics --max-block-duration=24h` (one pass over
    the file per block; the default 2h would mean two or three), then deletes the text.
    Returns the aligned end time (Unix seconds) of the data.
    """
    os.makedirs(tsdb_dir, exist_ok=True)
    om = tsdb_dir.rstrip("/") + ".om"
    cmd = [sys.executable, GENERATOR, "--hours", str(hours), "--step", str(step),
           "--pods", str(pods)]
    if end is not None:
        cmd += ["--end", str(int(end))]
    if pod_hours is not None:
        cmd += ["--pod-hours", str(pod_hours)]
    try:
        out = subprocess.run(cmd + [om], check=True, stdout=subprocess.PIPE, text=True).stdout
        aligned_end = int(out.strip().splitlines()[-1])
        subprocess.run([need_tool("promtool"), "tsdb", "create-blocks-from", "openmetrics",
                        "--max-block-duration=24h", "--quiet", om, tsdb_dir],
                       check=True, stdout=subprocess.DEVNULL)
    finally:
        if os.path.exists(om):
            os.unlink(om)
    return aligned_end


# --- processes ----------------------------------------------------------------------------

class Proc:
    """A background process with its output in a log file; stop() is safe to call twice."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after <timeout> s. Returns the exit code."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if not self._log.closed:
            self._log.close()
        return self.p.returncode

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def wait_http_ok(url, proc=None, timeout=60):
    """Poll <url> until it answers 200; fail early if <proc> exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError("%s exited with %s before %s was ready:\n%s"
                               % (proc.name, proc.p.returncode, url, proc.log_tail()))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
                last = r.status
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError("%s not ready after %ds (last: %s)%s" % (
        url, timeout, last, "\n" + proc.log_tail() if proc is not None else ""))


def start_prometheus(name, workdir, port, tsdb_dir=None, remote_read_url=None, extra=(),
                     remote_read_headers=None):
    """Start Prometheus 2.42 on 127.0.0.1:<port> with no scrape targets.

    <tsdb_dir> defaults to an empty dir under <workdir>. With <remote_read_url> the config has
    one remote_read entry with read_recent: true (every query goes to the remote), sending
    <remote_read_headers> (a dict, e.g. {"X-Scope-OrgID": "team-a"}) with every read. Flags are
    passed explicitly: the Debian package reads /etc/default/prometheus only under systemd.
    """
    os.makedirs(workdir, exist_ok=True)
    cfg = os.path.join(workdir, name + ".yml")
    text = "global:\n  scrape_interval: 15s\n"
    if remote_read_url:
        text += "remote_read:\n  - url: %s\n    read_recent: true\n" % remote_read_url
        if remote_read_headers:
            text += "    headers:\n" + "".join("      %s: %s\n" % (k, json.dumps(v))
                                            for k, v in remote_read_headers.items())
    with open(cfg, "w") as f:
        f.write(text)
    if tsdb_dir is None:
        tsdb_dir = os.path.join(workdir, name + "-data")
    argv = [need_tool("prometheus"), "--config.file=" + cfg,
            "--storage.tsdb.path=" + tsdb_dir,
            "--storage.tsdb.retention.time=30d",
            "--web.listen-address=127.0.0.1:%d" % port,
            "--log.level=warn"] + list(extra)
    proc = Proc(name, argv, os.path.join(workdir, name + ".log"))
    wait_http_ok("http://127.0.0.1:%d/-/ready" % port, proc)
    return proc


# --- remote write (to make a store grow while it runs) -------------------------------------
# Needs the store started with extra=["--web.enable-remote-write-receiver"].

def _pb_len(field, payload):
    return promrr.uvarint(field << 3 | 2) + promrr.uvarint(len(payload)) + payload


def _snappy_literal(data):
    """Snappy block of literals only (valid for any decoder)."""
    out = bytearray(promrr.uvarint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + n.to_bytes(2, "little")
        out += chunk
    return bytes(out)


def encode_write_request(series):
    """prometheus.WriteRequest for <series>: [(labels dict incl. __name__, [(ts_ms, value)])]."""
    import struct
    body = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for k in sorted(labels):
            ts += _pb_len(1, _pb_len(1, k.encode()) + _pb_len(2, str(labels[k]).encode()))
        for t_ms, v in samples:
            sample = b"\x09" + struct.pack("<d", float(v)) + b"\x10" + promrr.uvarint(int(t_ms) & (2**64 - 1))
            ts += _pb_len(2, sample)
        body += _pb_len(1, bytes(ts))
    return bytes(body)


def remote_write(base, series, timeout=30):
    """POST <series> (see encode_write_request) to <base>/api/v1/write; raise unless 2xx."""
    data = _snappy_literal(encode_write_request(series))
    req = urllib.request.Request(base + "/api/v1/write", data=data, method="POST", headers={
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "promguard-e2e"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.status // 100 != 2:
            raise RuntimeError("remote write: HTTP %d" % r.status)


# --- header relay --------------------------------------------------------------------------

class HeaderRelay:
    """A small HTTP relay on 127.0.0.1 that adds fixed headers to every request it forwards.

    Prometheus 2.42 as packaged by Debian (2.42.0+ds) accepts `headers:` under remote_read and
    remote_write but never sends them (prometheus/prometheus#13030; checked here: a remote read
    arrives without the configured X-Scope-OrgID). A front that must read as a tenant points its
    remote_read at a relay instead: relay = HeaderRelay(promguard_read_url, {"X-Scope-OrgID": "a"}).
    Status, headers and body come back unchanged (the body re-framed with Content-Length).
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
           "proxy-connection", "content-length", "host"}

    def __init__(self, target_url, headers):
        import http.client
        import http.server
        import threading
        u = urllib.parse.urlsplit(target_url)
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                out = {k: v for k, v in self.headers.items() if k.lower() not in relay.HOP}
                out.update(headers)
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body, headers=out)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status, r.reason)
                    for k, v in r.getheaders():
                        if k.lower() not in relay.HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (OSError, http.client.HTTPException):
                    self.close_connection = True  # the client sees the connection drop, as with a cut
                finally:
                    conn.close()

            do_POST = do_GET = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d%s" % (self.port, u.path)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --- promguard config ---------------------------------------------------------------------

def render_config(template, listen, admin, upstream_url):
    """Return <template> (promguard YAML text) with listen, admin_listen and upstream.url set.

    Line-based, so the comments of conf/promguard.yml survive and no YAML library is needed:
    the top-level `listen:` / `admin_listen:` lines and the `url:` line of the top-level
    `upstream:` block are replaced; keys that are missing are added.
    """
    out = []
    seen = set()
    block = None  # current top-level key
    for line in template.splitlines():
        stripped = line.lstrip()
        top = line[:1] not in (" ", "\t", "#", "") and ":" in line
        if top:
            block = line.split(":", 1)[0].strip()
            if block == "listen":
                line = "listen: %s" % listen
                seen.add("listen")
            elif block == "admin_listen":
                line = "admin_listen: %s" % admin
                seen.add("admin_listen")
            elif block == "upstream" and line.split(":", 1)[1].strip() not in ("", "{}"):
                raise ValueError("upstream: written inline; expected a block")
        elif block == "upstream" and stripped.startswith("url:") and "url" not in seen:
            indent = line[:len(line) - len(stripped)]
            line = "%surl: %s" % (indent, upstream_url)
            seen.add("url")
        out.append(line)
    text = "\n".join(out) + "\n"
    if "url" not in seen:
        if any(l.startswith("upstream:") for l in out):
            text = text.replace("upstream:\n", "upstream:\n  url: %s\n" % upstream_url, 1)
            text = text.replace("upstream: {}\n", "upstream:\n  url: %s\n" % upstream_url, 1)
        else:
            text += "upstream:\n  url: %s\n" % upstream_url
    if "listen" not in seen:
        text = "listen: %s\n" % listen + text
    if "admin_listen" not in seen:
        text = "admin_listen: %s\n" % admin + text
    return text


def default_template():
    """conf/promguard.yml, or a minimal config when that file does not exist yet."""
    path = os.path.join(SRC, "conf", "promguard.yml")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    return "listen: 127.0.0.1:9201\nadmin_listen: 127.0.0.1:9202\nupstream:\n  url: x\n"


def start_promguard(workdir, store_read_url, template=None, name="promguard"):
    """Start promguard in front of <store_read_url>; wait for /-/ready on its admin port.

    The config is <workdir>/<name>.yml (write it again and call reload_promguard() to reload).
    Returns (proc, listen_port, admin_port).
    """
    listen, admin = free_port(), free_port()
    cfg = os.path.join(workdir, name + ".yml")
    with open(cfg, "w") as f:
        f.write(render_config(template or default_template(), "127.0.0.1:%d" % listen,
                              "127.0.0.1:%d" % admin, store_read_url))
    binary = promguard_bin()
    check = subprocess.run([binary, "-c", cfg, "--check-config"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    if check.returncode != 0:
        raise RuntimeError("promguard --check-config failed on %s:\n%s" % (cfg, check.stdout))
    proc = Proc(name, [binary, "-c", cfg], os.path.join(workdir, name + ".log"))
    wait_http_ok("http://127.0.0.1:%d/-/ready" % admin, proc)
    return proc, listen, admin


def reload_promguard(admin_base, timeout=10):
    """POST <admin_base>/-/reload; returns (status, body text)."""
    req = urllib.request.Request(admin_base + "/-/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


# --- the query API ------------------------------------------------------------------------

def api(base, path, params, timeout=120):
    """POST form <params> to <base><path>; return the parsed JSON envelope (any status)."""
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(base + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "http": e.code, "error": body.decode("utf-8", "replace")}


def get_text(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def canonical(data):
    """<data> of a query answer with its result list sorted by labels, for exact comparison."""
    if data is None:
        return None
    d = dict(data)
    if isinstance(d.get("result"), list):
        d["result"] = sorted(d["result"], key=lambda s: json.dumps(s.get("metric", {}),
                                                                   sort_keys=True))
    return d


def metric_value(exposition, name, labels=None):
    """Sum of the samples of <name> in Prometheus text <exposition> whose labels include
    <labels> (a dict); None when no sample matches."""
    total = None
    for line in exposition.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        lab = {}
        if rest.startswith("{"):
            body, rest = rest[1:].split("}", 1)
            for part in _split_labels(body):
                k, v = part.split("=", 1)
                lab[k.strip()] = v.strip().strip('"')
        if labels and any(lab.get(k) != v for k, v in labels.items()):
            continue
        total = (total or 0.0) + float(rest.split()[0])
    return total


def _split_labels(body):
    parts, cur, quoted, esc = [], "", False, False
    for ch in body:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


# --- CLI for scripts/demo.sh --------------------------------------------------------------

def _main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="e2e_lib.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render-config", help="write a promguard config for given addresses")
    r.add_argument("template", help="conf/promguard.yml, or - for a minimal config")
    r.add_argument("out")
    r.add_argument("--listen", required=True)
    r.add_argument("--admin", required=True)
    r.add_argument("--upstream", required=True)
    a = ap.parse_args(argv)
    if a.template == "-" or not os.path.exists(a.template):
        template = default_template() if a.template == "-" else \
            "listen: x\nadmin_listen: x\nupstream:\n  url: x\n"
    else:
        with open(a.template) as f:
            template = f.read()
    with open(a.out, "w") as f:
        f.write(render_config(template, a.listen, a.admin, a.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
