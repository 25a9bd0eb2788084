"""The operator files stay true to the binary: every metric that conf/grafana-dashboard.json and
conf/alerts.yml query is one promguard exports (`promguard --describe-metrics`), the alert rules
load in promtool, and conf/promguard.yml passes --check-config. A renamed metric breaks here
instead of in someone's Grafana."""

import json
import os
import re
import shutil
import subprocess
import unittest

SRC = os.environ.get("PROMGUARD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ["PROMGUARD_BIN"]
NAME_RE = re.compile(r"\b((?:promguard|process)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported():
    out = subprocess.run([BIN, "--describe-metrics"], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in out.splitlines():
        parts = line.split()
        if parts:
            names[parts[0]] = parts[1]
    return names


def queried(text):
    return set(NAME_RE.findall(text))


def known(name, names):
    if name in names:
        return True
    for suf in HISTOGRAM_SUFFIXES:
        if name.endswith(suf) and names.get(name[: -len(suf)]) == "histogram":
            return True
    return False


class ConfFilesTest(unittest.TestCase):
    def setUp(self):
        self.names = exported()

    def test_dashboard_queries_only_exported_metrics(self):
        with open(os.path.join(SRC, "conf", "grafana-dashboard.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
        self.assertGreater(len(exprs), 10)
        used = set().union(*(queried(e) for e in exprs))
        self.assertEqual(sorted(n for n in used if not known(n, self.names)), [])
        # the operator tunes by these: the dashboard must show them
        for must in ("promguard_rejections_total", "promguard_queue_length", "promguard_pool_bytes",
                     "promguard_upstream_retries_total", "promguard_backoff_tracked_keys"):
            self.assertIn(must, used)

    def test_alert_rules_query_only_exported_metrics_and_load(self):
        path = os.path.join(SRC, "conf", "alerts.yml")
        with open(path) as f:
            text = f.read()
        used = queried("\n".join(l for l in text.splitlines() if "expr:" in l or l.startswith("          ")))
        self.assertEqual(sorted(n for n in used if not known(n, self.names)), [])
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_example_config_passes_check_config(self):
        r = subprocess.run([BIN, "-c", os.path.join(SRC, "conf", "promguard.yml"), "--check-config"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("config ok"), r.stdout[:200])
        for key in ("queue.retry_rate", "admin.max_tenant_labels", "client.request_timeout"):
            self.assertIn(key, r.stdout)


if __name__ == "__main__":
    unittest.main()
