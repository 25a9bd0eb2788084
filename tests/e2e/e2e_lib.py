"""Helpers for the e2e tier: real Prometheus 2.42 processes around a real promguard.

Everything here runs on 127.0.0.1 with ports picked at run time and files in a temp dir, so
tests can run next to the demo or each other. Nothing here depends on tests/lib.

Also a small CLI used by scripts/demo.sh, so the demo and the tests render the promguard
config the same way:

    python3 tests/e2e/e2e_lib.py render-config TEMPLATE OUT --listen A --admin B --upstream URL
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

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


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def start_prometheus(name, workdir, port, tsdb_dir=None, remote_read_url=None, extra=()):
    """Start Prometheus 2.42 on 127.0.0.1:<port> with no scrape targets.

    <tsdb_dir> defaults to an empty dir under <workdir>. With <remote_read_url> the config has
    one remote_read entry with read_recent: true (every query goes to the remote). Flags are
    passed explicitly: the Debian package reads /etc/default/prometheus only under systemd.
    """
    os.makedirs(workdir, exist_ok=True)
    cfg = os.path.join(workdir, name + ".yml")
    text = "global:\n  scrape_interval: 15s\n"
    if remote_read_url:
        text += "remote_read:\n  - url: %s\n    read_recent: true\n" % remote_read_url
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


def start_promguard(workdir, store_read_url, template=None):
    """Start promguard in front of <store_read_url>; wait for /-/ready on its admin port.

    Returns (proc, listen_port, admin_port).
    """
    listen, admin = free_port(), free_port()
    cfg = os.path.join(workdir, "promguard.yml")
    with open(cfg, "w") as f:
        f.write(render_config(template or default_template(), "127.0.0.1:%d" % listen,
                              "127.0.0.1:%d" % admin, store_read_url))
    binary = promguard_bin()
    check = subprocess.run([binary, "-c", cfg, "--check-config"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    if check.returncode != 0:
        raise RuntimeError("promguard --check-config failed on %s:\n%s" % (cfg, check.stdout))
    proc = Proc("promguard", [binary, "-c", cfg], os.path.join(workdir, "promguard.log"))
    wait_http_ok("http://127.0.0.1:%d/-/ready" % admin, proc)
    return proc, listen, admin


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
