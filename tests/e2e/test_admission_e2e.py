"""Admission with real Prometheus 2.42 on both sides: what a user of the front sees.

Topology (real processes on 127.0.0.1, free ports, one temp dir):

    front A (tenant default)             --remote_read-->  promguard --> store (Prometheus 2.42)
    front T (X-Scope-OrgID: team-big)    --remote_read-->      "         backfilled demo data and
    front S (X-Scope-OrgID: team-small)  --remote_read-->      "         remote-write receiver
    front M (X-Scope-OrgID: team-mid)    --remote_read-->      "

Fronts T and S carry `headers: {X-Scope-OrgID: ...}` in their remote_read config, but Debian's
Prometheus 2.42.0+ds never sends configured headers (prometheus/prometheus#13030), so their reads
go through e2e_lib.HeaderRelay, which adds the header on the way to promguard.

promguard: max_series 10,000 (the 20,000-series demo_pod_memory_bytes is over it), team-big
50,000, team-small 100, team-mid 10,000; estimator.unknown probe against the store's real /api/v1/series, so the
20k estimate exists before the first read. "Before the store" is proved with the store's own
prometheus_http_requests_total{handler="/api/v1/read"}.

A rejected read shows in the front's answer as status success, no data, and one warning carrying
promguard's 422 line (protocol.md section 9).
"""
import os
import re
import shutil
import signal
import tempfile
import time
import unittest

import e2e_lib as lib

ENV = {}

MAX_SERIES = 10000

CONFIG = """
mode: {mode}
log_level: info
upstream:
  url: x
  timeout: 1m
limits:
  max_series: {max_series}
  require_metric_name: true
tenants:
  team-big:
    max_series: 50000
  team-small:
    max_series: 100
  team-mid:
    max_series: 10000
estimator:
  unknown: probe
  probe: series_api
"""


def pg_config(mode="enforce", max_series=MAX_SERIES):
    return CONFIG.format(mode=mode, max_series=max_series)


def setUpModule():
    work = tempfile.mkdtemp(prefix="promguard-e2e-adm-")
    ENV["work"] = work
    unittest.addModuleCleanup(_cleanup)
    procs = ENV["procs"] = []
    t0 = time.monotonic()
    # 20,000 pods over the last 20 minutes of a 1 h data set that ends 10 minutes ago.
    end = lib.make_store_blocks(os.path.join(work, "store-data"), end=time.time() - 600, hours=1.0,
                                pod_hours=0.34)
    ENV["end"] = end
    t_data = time.monotonic() - t0

    store_port = lib.free_port()
    procs.append(lib.start_prometheus("store", work, store_port, tsdb_dir=os.path.join(work, "store-data"),
                                      extra=["--web.enable-remote-write-receiver"]))
    store = "http://127.0.0.1:%d" % store_port
    pg, pg_port, admin_port = lib.start_promguard(work, store + "/api/v1/read", template=pg_config())
    procs.append(pg)
    pg_url = "http://127.0.0.1:%d/api/v1/read" % pg_port
    fronts, remote = {}, {}
    for key, tenant in (("a", None), ("t", "team-big"), ("s", "team-small"), ("m", "team-mid")):
        port = lib.free_port()
        url = pg_url
        if tenant:
            relay = lib.HeaderRelay(pg_url, {"X-Scope-OrgID": tenant})
            unittest.addModuleCleanup(relay.stop)
            url = relay.url
        procs.append(lib.start_prometheus(
            "front-" + key, work, port, remote_read_url=url,
            remote_read_headers={"X-Scope-OrgID": tenant} if tenant else None))
        fronts[key] = "http://127.0.0.1:%d" % port
        remote[key] = url
    ENV.update(store=store, admin="http://127.0.0.1:%d" % admin_port, pg_url=pg_url, promguard=pg, remote=remote,
               pg_ports=(pg_port, admin_port), cfg=os.path.join(work, "promguard.yml"), **fronts)
    print("\ne2e setup: data %.1fs, processes %.1fs (work dir %s)"
          % (t_data, time.monotonic() - t0 - t_data, work), flush=True)


def _cleanup():
    failed = []
    for p in reversed(ENV.get("procs", [])):
        rc = p.stop()
        if rc not in (0, -15):
            failed.append("%s exited %s:\n%s" % (p.name, rc, p.log_tail()))
    work = ENV.get("work")
    if work and not os.environ.get("PROMGUARD_KEEP_TMP"):
        shutil.rmtree(work, ignore_errors=True)
    elif work:
        print("kept %s" % work)
    if failed:
        raise AssertionError("\n\n".join(failed))


def write_config(text):
    listen, admin = ENV["pg_ports"]
    with open(ENV["cfg"], "w") as f:
        f.write(lib.render_config(text, "127.0.0.1:%d" % listen, "127.0.0.1:%d" % admin,
                                  ENV["store"] + "/api/v1/read"))


def reload(text):
    write_config(text)
    status, body = lib.reload_promguard(ENV["admin"])
    assert status == 200, "reload: %d %s" % (status, body)


def store_reads():
    """The store's own count of remote reads it served (every status code)."""
    return lib.metric_value(lib.get_text(ENV["store"] + "/metrics"), "prometheus_http_requests_total",
                            {"handler": "/api/v1/read"}) or 0


def store_series_api():
    return lib.metric_value(lib.get_text(ENV["store"] + "/metrics"), "prometheus_http_requests_total",
                            {"handler": "/api/v1/series"}) or 0


def wait_for(pred, what, timeout=3):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def pg_metrics():
    return lib.get_text(ENV["admin"] + "/metrics")


def pg_metric(text, name, **labels):
    return lib.metric_value(text, name, labels or None) or 0


WARNING_PREFIX = "remote_read: remote server %s returned HTTP status 422 Unprocessable Entity: "
LINE_RE = re.compile(r"^promguard: query rejected: (?P<what>.+?) for (?P<selector>.+) "
                     r"\[(?P<start>[^,\]]+),(?P<end>[^\]]+)\] tenant=(?P<tenant>\S+) \(source=(?P<source>[a-z]+)\)$")


class AdmissionE2E(unittest.TestCase):
    maxDiff = 4000

    def query(self, front, q, t=None):
        t = ENV["end"] - 300 if t is None else t
        return lib.api(ENV[front], "/api/v1/query", {"query": q, "time": t})

    def assert_rejected_warning(self, ans, tenant="default", front="a"):
        """The front's answer to a query whose read promguard rejected: success, no data, one
        warning with promguard's 422 line. Returns the parsed line."""
        self.assertEqual(ans.get("status"), "success", ans)
        warnings = ans.get("warnings") or []
        self.assertEqual(len(warnings), 1, ans)
        prefix = WARNING_PREFIX % ENV["remote"][front]
        self.assertTrue(warnings[0].startswith(prefix), warnings[0])
        line = warnings[0][len(prefix):]
        m = LINE_RE.match(line)
        self.assertIsNotNone(m, "not promguard's 422 line: %r" % line)
        self.assertEqual(m.group("tenant"), tenant, line)
        return m.groupdict()

    def assert_same_as_store(self, front, q, t=None):
        t = ENV["end"] - 300 if t is None else t
        via = self.query(front, q, t)
        direct = lib.api(ENV["store"], "/api/v1/query", {"query": q, "time": t})
        self.assertEqual(via.get("status"), "success", via)
        self.assertNotIn("warnings", via, "front %s: %s" % (front, via.get("warnings")))
        self.assertEqual(lib.canonical(via["data"]), lib.canonical(direct["data"]), q)
        return via

    def test_nameless_selector_is_rejected_before_the_store(self):
        before_reads, before = store_reads(), pg_metrics()
        ans = self.query("a", '{__name__=~".+"}')
        parts = self.assert_rejected_warning(ans)
        self.assertEqual(parts["what"],
                         "limits.require_metric_name=true: no __name__ equality or bounded __name__ regex")
        self.assertEqual(parts["selector"], '{__name__=~".+"}')
        self.assertEqual(store_reads(), before_reads, "the store served a read for a nameless selector")
        after = pg_metrics()
        self.assertEqual(pg_metric(after, "promguard_rejections_total", tenant="default", reason="metric_name")
                         - pg_metric(before, "promguard_rejections_total", tenant="default", reason="metric_name"), 1)

    def test_20k_series_selector_is_rejected_before_the_store(self):
        before_reads, before_probes, before = store_reads(), store_series_api(), pg_metrics()
        ans = self.query("a", "sum(demo_pod_memory_bytes)")
        parts = self.assert_rejected_warning(ans)
        m = re.match(r"^limits\.max_series=10000 estimated (\d+)$", parts["what"])
        self.assertIsNotNone(m, parts["what"])
        self.assertGreater(int(m.group(1)), MAX_SERIES)
        self.assertEqual(parts["selector"], "demo_pod_memory_bytes")
        self.assertIn(parts["source"], ("probe", "recall", "stats"))
        self.assertEqual(store_reads(), before_reads, "the store served the 20k read")
        after = pg_metrics()
        self.assertEqual(pg_metric(after, "promguard_rejections_total", tenant="default", reason="series")
                         - pg_metric(before, "promguard_rejections_total", tenant="default", reason="series"), 1)
        if parts["source"] == "probe":
            self.assertGreater(store_series_api(), before_probes, "source=probe but the store was not probed")
        # the repeat is rejected the same way, still without a read
        parts = self.assert_rejected_warning(self.query("a", "count(demo_pod_memory_bytes)"))
        self.assertTrue(parts["what"].startswith("limits.max_series=10000 estimated "), parts)
        self.assertEqual(store_reads(), before_reads)

    def test_small_queries_are_admitted_and_identical(self):
        before = pg_metrics()
        for q in ("demo_requests_total", "rate(demo_requests_total[5m])",
                  'demo_temperature_celsius{room=~"room-[12]"}',
                  'count(demo_pod_memory_bytes{namespace="ns-07"})',
                  'sum by (namespace) (demo_pod_memory_bytes{namespace=~"ns-0[1-3]"})'):
            with self.subTest(q):
                ans = self.assert_same_as_store("a", q)
                self.assertTrue(ans["data"]["result"], q)
        after = pg_metrics()
        self.assertGreaterEqual(pg_metric(after, "promguard_queries_total", tenant="default", decision="admitted")
                                - pg_metric(before, "promguard_queries_total", tenant="default",
                                            decision="admitted"), 5)

    def test_tenant_override_through_remote_read_headers(self):
        before = pg_metrics()
        ans = self.assert_same_as_store("t", "count(demo_pod_memory_bytes)")
        self.assertEqual(ans["data"]["result"][0]["value"][1], "20000")
        after = pg_metrics()
        self.assertEqual(pg_metric(after, "promguard_queries_total", tenant="team-big", decision="admitted")
                         - pg_metric(before, "promguard_queries_total", tenant="team-big", decision="admitted"), 1)
        # team-small (100) is stricter than the default (10,000)
        parts = self.assert_rejected_warning(self.query("s", 'count(demo_pod_memory_bytes{namespace="ns-07"})'),
                                             tenant="team-small", front="s")
        self.assertTrue(parts["what"].startswith("tenants.team-small.max_series=100 estimated "), parts)

    def test_dry_run_and_reload_on_a_running_promguard(self):
        try:
            # dry run (POST /-/reload): the 20k query is admitted, answered whole, and counted
            reload(pg_config(mode="dry_run"))
            before, reads = pg_metrics(), store_reads()
            ans = self.assert_same_as_store("a", "count(demo_pod_memory_bytes)")
            self.assertEqual(ans["data"]["result"][0]["value"][1], "20000")
            wait_for(lambda: store_reads() > reads, "the dry-run read at the store")
            after = pg_metrics()
            self.assertEqual(
                pg_metric(after, "promguard_shadow_rejections_total", tenant="default", reason="series")
                - pg_metric(before, "promguard_shadow_rejections_total", tenant="default", reason="series"), 1)
            self.assertEqual(
                pg_metric(after, "promguard_queries_total", tenant="default", decision="shadow_rejected")
                - pg_metric(before, "promguard_queries_total", tenant="default", decision="shadow_rejected"), 1)
            self.assertEqual(pg_metric(after, "promguard_rejections_total", tenant="default", reason="series"),
                             pg_metric(before, "promguard_rejections_total", tenant="default", reason="series"))
            # a higher limit (SIGHUP): admitted for real
            write_config(pg_config(max_series=30000))
            ENV["promguard"].p.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                ans = self.query("a", "max(demo_pod_memory_bytes)")
                if "warnings" not in ans or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self.assert_same_as_store("a", "max(demo_pod_memory_bytes)")
            # and back to 10,000: rejected again, before the store
            reload(pg_config())
            reads = store_reads()
            parts = self.assert_rejected_warning(self.query("a", "min(demo_pod_memory_bytes)"))
            self.assertTrue(parts["what"].startswith("limits.max_series=10000 estimated "), parts)
            self.assertEqual(store_reads(), reads)
            self.assertEqual(pg_metric(pg_metrics(), "promguard_config_last_reload_successful"), 1)
        finally:
            reload(pg_config())

    def test_20k_series_selector_after_a_partial_view_is_rejected_before_the_store(self):
        # team-mid (10,000 like the default) first reads 5 of the 20 namespaces: 5,000 series are
        # relayed and learned. The whole metric is 20,000 series, so it must still be rejected
        # before the store reads it (a probe says more than 10,000), not after.
        self.assert_same_as_store("m", 'sum by (namespace) (demo_pod_memory_bytes{namespace=~"ns-0[0-4]"})')
        reads = store_reads()
        parts = self.assert_rejected_warning(self.query("m", "sum(demo_pod_memory_bytes)"), tenant="team-mid",
                                             front="m")
        self.assertTrue(parts["what"].startswith("tenants.team-mid.max_series=10000 "), parts)
        self.assertEqual(store_reads(), reads,
                         "the store served the 20k read (%s, source=%s)" % (parts["what"], parts["source"]))

    def test_a_selector_learned_wrongly_is_caught_by_response_enforcement(self):
        # team-small may read 100 series. e2e_growing has 50 at first: probed, admitted, learned.
        now_ms = int(time.time() * 1000) - 5000
        lib.remote_write(ENV["store"], [({"__name__": "e2e_growing", "i": str(i)}, [(now_ms, i)])
                                        for i in range(50)])
        t = now_ms / 1000 + 1
        q = "count(e2e_growing)"
        first = self.query("s", q, t)
        self.assertNotIn("warnings", first, first)
        self.assertEqual(first["data"]["result"][0]["value"][1], "50")
        # the store grows to 250 series; promguard still believes 50 and admits the read
        lib.remote_write(ENV["store"], [({"__name__": "e2e_growing", "i": str(i)}, [(now_ms, i)])
                                        for i in range(50, 250)])
        before, reads = pg_metrics(), store_reads()
        parts = self.assert_rejected_warning(self.query("s", q, t), tenant="team-small", front="s")
        m = re.match(r"^tenants\.team-small\.max_series=100 actual (\d+)$", parts["what"])
        self.assertIsNotNone(m, parts)
        actual = int(m.group(1))
        self.assertTrue(100 < actual <= 250, parts)  # all 250, or counted until the limit broke
        self.assertEqual(parts["source"], "recall")
        wait_for(lambda: store_reads() == reads + 1, "the read to reach the store")
        after = pg_metrics()
        self.assertEqual(pg_metric(after, "promguard_rejections_total", tenant="team-small", reason="series")
                         - pg_metric(before, "promguard_rejections_total", tenant="team-small", reason="series"), 1)
        # learned from the response: the next identical read is rejected before the store
        parts = self.assert_rejected_warning(self.query("s", q, t), tenant="team-small", front="s")
        self.assertEqual(parts["what"], "tenants.team-small.max_series=100 estimated %d" % actual, parts)
        self.assertEqual(parts["source"], "recall")
        self.assertEqual(store_reads(), reads + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
